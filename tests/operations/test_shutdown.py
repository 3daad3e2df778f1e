"""SIGTERM with watches open: the watch streams end at once, as etcd's do when it stops, instead of
holding the server for the whole grace period (kube-apiserver always has watches open); writes
under way when it arrives are finished, and every acknowledged one is kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd
from tests._servers import start_kubefabric

# Long enough that waiting it out could not pass for a prompt stop.
GRACE_PERIOD = "30s"


def test_sigterm_ends_open_watches_at_once_and_exits_within_a_second(tmp_path: Path) -> None:
    server = start_kubefabric(tmp_path, f"sqlite://{tmp_path}/state.db", "--shutdown-grace-period", GRACE_PERIOD)
    endings: list[grpc.RpcError] = []
    with Etcd(server.channel()) as client:
        revision = client.put(b"watched", b"v").header.revision
        streams = []
        for _ in range(3):
            client_done = threading.Event()
            requests = iter([rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"watched"))])
            responses = client.watch.Watch(_then_wait(requests, client_done))
            assert next(responses).created
            streams.append((responses, client_done))

        def drain(responses: Iterator[rpc_pb2.WatchResponse]) -> None:
            try:
                for _ in responses:
                    pass
            except grpc.RpcError as error:
                endings.append(error)

        readers = [threading.Thread(target=drain, args=(responses,)) for responses, _ in streams]
        for reader in readers:
            reader.start()

        started = time.monotonic()
        assert server.stop() == 0
        stopped_after = time.monotonic() - started
        for reader in readers:
            reader.join(10)
        for _, client_done in streams:
            client_done.set()

    assert stopped_after < 1.0, f"took {stopped_after:.2f}s to stop with watches open"
    assert [(error.code(), error.details()) for error in endings] == [
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
    ] * 3
    log = server.log.read_text()
    assert f"stopped at revision {revision}" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]


def _then_wait(requests: Iterator[rpc_pb2.WatchRequest], done: threading.Event) -> Iterator[rpc_pb2.WatchRequest]:
    """The requests, then keep the request stream open (as a watching client does) until `done`."""
    yield from requests
    done.wait()


def test_writes_under_way_at_sigterm_are_finished_and_every_acknowledged_one_is_kept(tmp_path: Path) -> None:
    endpoint = f"sqlite://{tmp_path}/state.db"
    server = start_kubefabric(tmp_path, endpoint)
    acknowledged: dict[bytes, int] = {}
    stop_writing = threading.Event()

    def write(writer: int) -> None:
        with Etcd(server.channel()) as client:
            for number in range(100_000):
                if stop_writing.is_set():
                    return
                key = b"w%d-%d" % (writer, number)
                try:
                    acknowledged[key] = client.put(key, b"v").header.revision
                except grpc.RpcError:
                    return  # refused once the server stops taking requests

    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(8)]
    for writer in writers:
        writer.start()
    time.sleep(1.0)
    assert server.stop() == 0
    stop_writing.set()
    for writer in writers:
        writer.join(10)

    assert acknowledged, "nothing was written before the signal"
    restarted = start_kubefabric(tmp_path, endpoint)
    try:
        with Etcd(restarted.channel()) as client:
            for key, revision in acknowledged.items():
                assert client.get(key).kvs[0].mod_revision == revision, key
    finally:
        restarted.stop()

"""kill -9 under concurrent write load: every acknowledged write survives, and no revision is reused.

A write counts as acknowledged once its response arrived; writes in flight at the kill may or may not
have happened, and the test accepts either. Automatic compaction is off so every acknowledged
revision stays readable in history: each write is checked at its own revision, not only the latest.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import rpc_pb2
from tests._client import Compare, Etcd, kv_tuple, put_op
from tests._servers import ServerProcess, start_kubefabric

WRITERS = 16
LOAD_SECONDS = 2.0
CRASHES = 2
# Writers get this long to notice the server is gone; a dead connection fails at once.
WRITERS_STOP_TIMEOUT = 15.0
# Reading back the whole history of a few thousand writes over one watch.
HISTORY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Ack:
    """An acknowledged write and the KeyValue it must have left at its revision."""

    key: bytes
    value: bytes
    create_revision: int
    revision: int
    version: int

    def expected_kv(self) -> tuple[bytes, bytes, int, int, int, int]:
        return (self.key, self.value, self.create_revision, self.revision, self.version, 0)


class Writer(threading.Thread):
    """Writes keys of its own until stopped or until a write fails (the server is gone).

    Alternates a create-only txn on a fresh key with a put that overwrites one key again and again,
    so both new keys and a key with a long history are checked.
    """

    def __init__(self, client: Etcd, prefix: bytes, stop_requested: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.prefix = prefix
        self.stop_requested = stop_requested
        self.acks: list[Ack] = []
        self.refused_creates: list[bytes] = []

    def run(self) -> None:
        overwritten = self.prefix + b"overwritten"
        first_put_revision = 0
        n = 0
        while not self.stop_requested.is_set():
            created, value = self.prefix + b"created/%d" % n, b"c%d" % n
            try:
                response = self.client.txn(
                    [Compare(key=created, target=Compare.CREATE, result=Compare.EQUAL, create_revision=0)],
                    [put_op(created, value)],
                )
            except grpc.RpcError:
                return
            if not response.succeeded:
                self.refused_creates.append(created)  # the key is fresh: the compare must hold
                return
            revision = response.header.revision
            self.acks.append(Ack(created, value, revision, revision, 1))

            try:
                revision = self.client.put(overwritten, b"p%d" % n).header.revision
            except grpc.RpcError:
                return
            first_put_revision = first_put_revision or revision
            self.acks.append(Ack(overwritten, b"p%d" % n, first_put_revision, revision, n + 1))
            n += 1


class RestartableServer:
    """kubefabric on one database that outlives the processes serving it."""

    def __init__(self, workdir: Path, endpoint: str) -> None:
        self.workdir = workdir
        self.endpoint = endpoint
        self.process: ServerProcess | None = None

    def start(self) -> ServerProcess:
        self.process = start_kubefabric(self.workdir, self.endpoint, "--compaction-interval", "0")
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def restartable(tmp_path: Path, store_endpoint: str) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path, store_endpoint)
    yield server
    server.stop()


def write_until_killed(server: ServerProcess, prefix: bytes) -> list[Ack]:
    """Load the server with concurrent writers, kill -9 it mid-load, and return what it acknowledged."""
    stop_requested = threading.Event()
    with Etcd(server.channel()) as client:
        writers = [Writer(client, prefix + b"%02d/" % i, stop_requested) for i in range(WRITERS)]
        for writer in writers:
            writer.start()
        time.sleep(LOAD_SECONDS)  # the load itself: there is nothing to poll for
        assert all(writer.is_alive() for writer in writers), "a writer stopped before the kill"
        server.kill()
        stop_requested.set()
        for writer in writers:
            writer.join(WRITERS_STOP_TIMEOUT)
        assert not any(writer.is_alive() for writer in writers), "a writer hangs on a killed server"
    assert not [key for writer in writers for key in writer.refused_creates], "a fresh key already existed"
    acks = [ack for writer in writers for ack in writer.acks]
    assert acks, "no write was acknowledged before the kill"
    return acks


def assert_survived(client: Etcd, acks: list[Ack]) -> None:
    """Each acknowledged write is in history at its revision, and each key is at least that new now."""

    def at_its_revision(ack: Ack) -> tuple[Ack, list[tuple[bytes, bytes, int, int, int, int]]]:
        return ack, [kv_tuple(kv) for kv in client.get(ack.key, revision=ack.revision).kvs]

    with ThreadPoolExecutor(8) as pool:
        lost = [(ack, found) for ack, found in pool.map(at_its_revision, acks) if found != [ack.expected_kv()]]
    assert not lost, f"{len(lost)} of {len(acks)} acknowledged writes lost or changed, e.g. {lost[:3]}"

    latest = {ack.key: ack for ack in sorted(acks, key=lambda ack: ack.revision)}
    for key, ack in latest.items():
        [kv] = client.get(key).kvs
        # A write in flight at the kill may have landed after the last acknowledged one.
        assert kv.mod_revision >= ack.revision, (key, kv.mod_revision, ack.revision)
        if kv.mod_revision == ack.revision:
            assert kv_tuple(kv) == ack.expected_kv()


def assert_one_write_per_revision(client: Etcd, head: int) -> None:
    """History from the first write to head has exactly one event per revision: none reused or skipped.

    Every write in this test changes one key, so a revision handed out twice (say, once before a crash
    and again after it) shows up as two events at one revision, even if only one was acknowledged.
    """
    finished = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        everything = rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=2)
        yield rpc_pb2.WatchRequest(create_request=everything)
        finished.wait()  # keep the stream open until the history is read

    revisions: list[int] = []
    responses = client.watch.Watch(requests(), timeout=HISTORY_TIMEOUT)
    try:
        for response in responses:
            revisions += [event.kv.mod_revision for event in response.events]
            if revisions and revisions[-1] >= head:
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        # The history ends short of head; the assertion below names what is missing.
    finally:
        finished.set()
        responses.cancel()
    reused = sorted(revision for revision, uses in Counter(revisions).items() if uses > 1)
    skipped = sorted(set(range(2, head + 1)) - set(revisions))
    assert revisions == list(range(2, head + 1)), f"reused: {reused[:10]}, skipped: {skipped[:10]}"


def test_acknowledged_writes_survive_kill_9_and_revisions_only_move_forward(restartable: RestartableServer) -> None:
    server = restartable.start()
    acks: list[Ack] = []
    for crash in range(CRASHES):
        acks += write_until_killed(server, b"/crash/%d/" % crash)
        newest_acknowledged = max(ack.revision for ack in acks)

        server = restartable.start()
        with Etcd(server.channel()) as client:
            revision = client.revision()
            assert revision >= newest_acknowledged, "the revision went back: acknowledged writes were lost"
            # Only the writes in flight at the kill (one per writer at most) can lie beyond the newest ack.
            assert revision <= newest_acknowledged + WRITERS
            assert_survived(client, acks)
            assert_one_write_per_revision(client, revision)

            probe = b"/crash/probe/%d" % crash
            probe_revision = client.put(probe, b"after restart").header.revision
            assert probe_revision > revision
            acks.append(Ack(probe, b"after restart", probe_revision, probe_revision, 1))

    reused = [revision for revision, uses in Counter(ack.revision for ack in acks).items() if uses > 1]
    assert not reused, f"revisions acknowledged to two writes: {reused[:10]}"

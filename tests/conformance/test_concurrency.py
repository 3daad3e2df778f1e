"""Concurrent writers on the same keys: the history they leave must be one consistent chain."""

from __future__ import annotations

import random
import threading

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd
from tests._servers import ServerProcess
from tests.conformance._support import RESPONSE_TIMEOUT

WRITERS = 16
OPERATIONS_PER_WRITER = 40
KEYS = (b"/contended/a", b"/contended/b")


def _write_concurrently(server: ServerProcess) -> None:
    def writer(seed: int) -> None:
        chooser = random.Random(seed)
        with Etcd(server.channel()) as etcd:
            for step in range(OPERATIONS_PER_WRITER):
                key = chooser.choice(KEYS)
                if chooser.random() < 0.3:
                    etcd.delete(key)
                else:
                    etcd.put(key, f"{seed}-{step}".encode())

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _history(client: Etcd, key: bytes) -> list[kv_pb2.Event]:
    """Every event of `key` from the first revision, ending with a final put made here."""
    final = client.put(key, b"final").header.revision
    create = rpc_pb2.WatchCreateRequest(key=key, start_revision=1, prev_kv=True)
    responses = client.watch.Watch(iter([rpc_pb2.WatchRequest(create_request=create)]), timeout=RESPONSE_TIMEOUT)
    events: list[kv_pb2.Event] = []
    for response in responses:
        events.extend(response.events)
        if events and events[-1].kv.mod_revision >= final:
            break
    responses.cancel()
    return events


def test_concurrent_writes_to_one_key_leave_a_consistent_version_chain(client: Etcd, server: ServerProcess) -> None:
    _write_concurrently(server)
    for key in KEYS:
        events = _history(client, key)
        assert events, f"no history for {key!r}"
        previous: kv_pb2.KeyValue | None = None  # the live version before each event; None: absent
        for event in events:
            where = f"{key!r} at revision {event.kv.mod_revision}"
            if previous is not None:
                assert event.prev_kv == previous, f"{where}: prev_kv is not the version it replaced"
            else:
                assert not event.HasField("prev_kv"), f"{where}: prev_kv for a key that did not exist"
            if event.type == kv_pb2.Event.DELETE:
                assert previous is not None, f"{where}: deleted a key that did not exist"
                previous = None
            elif previous is None:
                assert (event.kv.version, event.kv.create_revision) == (1, event.kv.mod_revision), where
                previous = event.kv
            else:
                assert event.kv.version == previous.version + 1, f"{where}: version does not follow"
                assert event.kv.create_revision == previous.create_revision, f"{where}: create revision changed"
                previous = event.kv
        assert previous is not None and previous.value == b"final", f"{key!r}: history ends before the final put"
        assert list(client.get(key).kvs) == [previous], f"{key!r}: the chain does not end where the key is now"

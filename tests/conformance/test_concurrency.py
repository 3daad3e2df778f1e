"""Concurrent writers on the same keys: the history they leave must be one consistent chain."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, mod_revision_is, put_op, range_op
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


COUNTERS = (b"/contended/counter-a", b"/contended/counter-b", b"/contended/counter-c")
INCREMENTS_PER_WRITER = 30
SLOTS = [b"/contended/slot-%02d" % number for number in range(24)]


def _run_writers(writer: Callable[[int, Etcd], None], server: ServerProcess) -> None:
    failures: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            with Etcd(server.channel()) as etcd:
                writer(seed, etcd)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


def test_compare_and_swap_increments_are_never_lost(client: Etcd, server: ServerProcess) -> None:
    """kube-apiserver's GuaranteedUpdate from many clients at once: read, then put guarded on the
    mod_revision read, else take the current version from the failed txn and try again. A write
    evaluated on an out-of-date version would let two increments of one value both succeed."""
    succeeded = {key: 0 for key in COUNTERS}
    lock = threading.Lock()

    def writer(seed: int, etcd: Etcd) -> None:
        chooser = random.Random(seed)
        known: dict[bytes, kv_pb2.KeyValue | None] = {}
        for _ in range(INCREMENTS_PER_WRITER):
            key = chooser.choice(COUNTERS)
            while True:
                if key not in known or chooser.random() < 0.5:
                    kvs = etcd.get(key).kvs
                    known[key] = kvs[0] if kvs else None
                current = known[key]
                value = int(current.value) if current else 0
                response = etcd.txn(
                    [mod_revision_is(key, current.mod_revision if current else 0)],
                    [put_op(key, b"%d" % (value + 1))],
                    [range_op(key)],
                )
                if response.succeeded:
                    known.pop(key)
                    with lock:
                        succeeded[key] += 1
                    break
                found = response.responses[0].response_range.kvs
                known[key] = found[0] if found else None

    _run_writers(writer, server)
    for key, count in succeeded.items():
        (kv,) = client.get(key).kvs
        assert (int(kv.value), kv.version) == (count, count), f"{key!r}: increments lost"


def test_racing_creates_of_one_key_have_one_winner(client: Etcd, server: ServerProcess) -> None:
    """Every writer tries to create every slot (guarded on mod_revision 0, as kube-apiserver creates),
    in its own order; exactly one create of each succeeds, and the slot holds the winner's value."""
    winners: dict[bytes, list[int]] = {slot: [] for slot in SLOTS}
    lock = threading.Lock()

    def writer(seed: int, etcd: Etcd) -> None:
        slots = list(SLOTS)
        random.Random(seed).shuffle(slots)
        for slot in slots:
            response = etcd.txn([mod_revision_is(slot, 0)], [put_op(slot, b"%d" % seed)], [range_op(slot)])
            if response.succeeded:
                with lock:
                    winners[slot].append(seed)
            else:
                assert response.responses[0].response_range.kvs, f"{slot!r}: create refused, yet no key"

    _run_writers(writer, server)
    for slot, seeds in winners.items():
        assert len(seeds) == 1, f"{slot!r} created by writers {seeds}"
        (kv,) = client.get(slot).kvs
        assert (kv.value, kv.version) == (b"%d" % seeds[0], 1)

"""One kubefabric over several real databases (multi:// with a topology file), through the real gRPC API.

The topology is multi_store's MULTI_TOPOLOGY (tests._targets): RBAC objects
in a real etcd, the kube-system namespace in MariaDB, pods in PostgreSQL, stable.example.com/shirts
in a SQLite file, the rest in the default SQLite file. Placement is checked by reading each database directly; everything else
through kubefabric's etcd API, against a real etcd fed the same writes where the answer is etcd's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, kv_tuple, prefix_end, put_op, range_op
from tests._databases import mysql_stopped, postgres_stopped
from tests._servers import REPO_ROOT, ServerProcess, free_port, start_kubefabric
from tests._targets import multi_store
from tests.conformance._support import WatchStream
from tests.topology._multi import MariadbRevisionLock, Multi

REGISTRY, REGISTRY_END = b"/registry/", b"/registry0"

# A realistic set of keys and the backend the rules send each to (first matching rule wins).
PLACEMENT: dict[bytes, str] = {
    b"/registry/configmaps/kube-system/coredns": "kube-system",
    b"/registry/pods/kube-system/coredns-5d78c9869d-x7k2p": "kube-system",  # namespace rule before pods
    b"/registry/secrets/kube-system/bootstrap-token-abcdef": "kube-system",
    b"/registry/events/kube-system/coredns.17a8": "kube-system",
    b"/registry/pods/default/web-0": "pods",
    b"/registry/pods/default/web-1": "pods",
    b"/registry/pods/team-a/api-7f9c": "pods",
    b"/registry/clusterroles/admin": "rbac",
    b"/registry/clusterrolebindings/cluster-admin": "rbac",
    b"/registry/rolebindings/default/edit": "rbac",
    b"/registry/rolebindings/kube-system/system:controller:bootstrap-signer": "rbac",  # rbac is rule 1
    b"/registry/serviceaccounts/kube-system/default": "rbac",
    b"/registry/stable.example.com/shirts/default/blue": "shirts",
    b"/registry/stable.example.com/shirts/team-a/red": "shirts",
    b"/registry/stable.example.com/shirtsizes/default/xl": "default",  # another resource of the group
    b"/registry/deployments/default/web": "default",
    b"/registry/deployments/kube-system/coredns": "kube-system",
    b"/registry/podtemplates/default/tpl": "default",  # `prefix pods` is pods/, not podtemplates
    b"/registry/namespaces/kube-system": "default",  # cluster-scoped
    b"/registry/namespaces/default": "default",
    b"/registry/apiregistration.k8s.io/apiservices/v1.apps": "default",
    b"compact_rev_key": "default",  # outside /registry/
}

# One key in each backend, to alternate writes between them.
ONE_PER_BACKEND = {
    "rbac": b"/registry/clusterroles/view",
    "kube-system": b"/registry/configmaps/kube-system/extension-apiserver-authentication",
    "pods": b"/registry/pods/default/nginx",
    "shirts": b"/registry/stable.example.com/shirts/default/green",
    "default": b"/registry/configmaps/default/kube-root-ca.crt",
}


@pytest.fixture
def multi(tmp_path: Path) -> Iterator[Multi]:
    endpoint, companions = multi_store(tmp_path)
    process = start_kubefabric(tmp_path, endpoint, "--compaction-interval", "0")
    process.companions = companions
    multi = Multi.of(process, tmp_path, endpoint)
    try:
        yield multi
    finally:
        multi.server.stop()  # the server running now: a test may have restarted it


@pytest.fixture
def client(multi: Multi) -> Iterator[Etcd]:
    with Etcd(multi.server.channel()) as etcd:
        yield etcd


@pytest.fixture
def oracle(etcd: ServerProcess) -> Iterator[Etcd]:
    with Etcd(etcd.channel()) as client:
        yield client


def rpc_error(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert isinstance(caught.value, grpc.Call)
    return caught.value


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def range_answer(response: rpc_pb2.RangeResponse) -> tuple[list[tuple[bytes, bytes, int, int, int, int]], int, bool]:
    return [kv_tuple(kv) for kv in response.kvs], response.count, response.more


# -- placement ----------------------------------------------------------------------------------


def test_every_key_is_stored_in_the_database_its_rule_names_and_nowhere_else(multi: Multi, client: Etcd) -> None:
    revisions = {key: client.put(key, b"value of " + key).header.revision for key in PLACEMENT}

    stored = multi.placement()
    expected = {backend: {key for key, where in PLACEMENT.items() if where == backend} for backend in multi.endpoints}
    assert stored == expected

    # `kubefabric route` agrees, and so does what kubefabric reads back.
    assert multi.route(*PLACEMENT) == PLACEMENT
    for key, revision in revisions.items():
        [kv] = client.get(key).kvs
        assert (kv.value, kv.mod_revision) == (b"value of " + key, revision)
    listed = client.get(b"\0", b"\0", keys_only=True)
    assert [kv.key for kv in listed.kvs] == sorted(PLACEMENT)


# -- one revision sequence ----------------------------------------------------------------------


def test_writes_to_different_backends_share_one_revision_sequence(client: Etcd) -> None:
    start = client.revision()
    written: list[tuple[bytes, int]] = []
    for round_ in range(3):
        for backend, key in ONE_PER_BACKEND.items():
            revision = client.put(key, f"{backend} {round_}".encode()).header.revision
            written.append((key, revision))
    assert [revision for _, revision in written] == list(range(start + 1, start + 1 + len(written)))
    latest = written[-1][1]

    for backend, key in ONE_PER_BACKEND.items():
        created = min(revision for k, revision in written if k == key)
        modified = max(revision for k, revision in written if k == key)
        response = client.get(key)
        [kv] = response.kvs
        assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (
            created,
            modified,
            3,
            f"{backend} 2".encode(),
        ), backend
        # Every read's header is the latest revision, whichever backend served it.
        assert response.header.revision == latest, backend
        assert client.get_prefix(key.rpartition(b"/")[0] + b"/").header.revision == latest, backend
    assert client.get(REGISTRY, REGISTRY_END, count_only=True).header.revision == latest

    # Deletes and txns take the next revisions too, in every backend.
    deleted = client.delete(ONE_PER_BACKEND["pods"]).header.revision
    txn = client.txn([], [put_op(ONE_PER_BACKEND["rbac"], b"txn")]).header.revision
    put = client.put(ONE_PER_BACKEND["shirts"], b"again").header.revision
    assert [deleted, txn, put] == [latest + 1, latest + 2, latest + 3]
    assert client.get(ONE_PER_BACKEND["default"]).header.revision == latest + 3
    assert client.status().header.revision == latest + 3


# -- transactions -------------------------------------------------------------------------------


def test_a_txn_writing_to_two_backends_is_refused_naming_both(client: Etcd) -> None:
    system_key, pod_key = b"/registry/configmaps/kube-system/a", b"/registry/pods/default/a"
    before = client.revision()

    error = rpc_error(lambda: client.txn([], [put_op(system_key, b"1"), put_op(pod_key, b"2")]))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "kube-system" in error.details() and "pods" in error.details(), error.details()
    assert client.revision() == before
    assert client.get(system_key).kvs == [] and client.get(pod_key).kvs == []


def test_a_txn_whose_taken_branch_writes_to_one_backend_works(client: Etcd) -> None:
    # kube-apiserver's shape: compare the object's mod revision, write it, read it back on failure.
    configmap, secret = b"/registry/configmaps/kube-system/a", b"/registry/secrets/kube-system/b"
    pod = b"/registry/pods/default/a"
    client.put(pod, b"pod")

    response = client.txn(
        [rpc_pb2.Compare(key=configmap, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0)],
        [put_op(configmap, b"1"), put_op(secret, b"2"), range_op(pod)],
        [range_op(configmap)],
    )

    assert response.succeeded
    revision = response.header.revision
    assert [kv.mod_revision for kv in client.get(REGISTRY, REGISTRY_END).kvs] == [revision, revision - 1, revision]
    # The untaken branch would write elsewhere: only what runs counts.
    response = client.txn(
        [rpc_pb2.Compare(key=pod, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=b"pod")],
        [put_op(pod, b"pod 2")],
        [put_op(configmap, b"never")],
    )
    assert response.succeeded and response.header.revision == revision + 1
    assert client.get(configmap).kvs[0].value == b"1"
    # Compares and reads may span backends; only the writes must stay in one.
    response = client.txn(
        [
            rpc_pb2.Compare(key=pod, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=b"pod 2"),
            rpc_pb2.Compare(key=configmap, target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=1),
        ],
        [put_op(secret, b"3"), range_op(REGISTRY, REGISTRY_END, keys_only=True)],
    )
    assert response.succeeded and response.header.revision == revision + 2
    assert [kv.key for kv in response.responses[1].response_range.kvs] == [configmap, pod, secret]


def test_a_delete_range_spanning_backends_is_refused_and_deletes_nothing(client: Etcd) -> None:
    pods = [b"/registry/pods/kube-system/a", b"/registry/pods/default/b"]
    for key in pods:
        client.put(key, b"v")
    before = client.revision()

    error = rpc_error(lambda: client.delete(b"/registry/pods/", prefix_end(b"/registry/pods/")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "kube-system" in error.details() and "pods" in error.details(), error.details()
    assert client.revision() == before and len(client.get_prefix(b"/registry/pods/").kvs) == 2
    # Within one backend it works.
    deleted = client.delete(b"/registry/pods/default/", prefix_end(b"/registry/pods/default/"))
    assert deleted.deleted == 1 and deleted.header.revision == before + 1


# -- ranges across backends ---------------------------------------------------------------------


def each(clients: tuple[Etcd, Etcd], start: bytes, end: bytes, **request: object) -> rpc_pb2.RangeResponse:
    """The same Range on kubefabric and the oracle etcd; asserts they answer the same; kubefabric's answer."""
    ours, etcds = (client.get(start, end, **request) for client in clients)
    assert range_answer(ours) == range_answer(etcds)
    assert ours.header.revision == etcds.header.revision
    return ours


def write_both(clients: tuple[Etcd, Etcd], key: bytes, value: bytes | None) -> int:
    """Put (or delete, for None) on both; the revisions must agree."""
    revisions = [
        (client.put(key, value) if value is not None else client.delete(key)).header.revision for client in clients
    ]
    assert revisions[0] == revisions[1], (key, revisions)
    return revisions[0]


def list_pages(
    client: Etcd, start: bytes, end: bytes, limit: int, between: Callable[[], object]
) -> tuple[int, list[kv_pb2.KeyValue]]:
    """List the way kube-apiserver pages: the first page at the head, each next one from just after the
    last key at the first page's revision; `between` writes between pages. The revision and the list."""
    first = client.get(start, end, limit=limit)
    revision, kvs, more = first.header.revision, list(first.kvs), first.more
    while more:
        between()
        page = client.get(kvs[-1].key + b"\0", end, limit=limit, revision=revision)
        assert page.kvs, page
        kvs.extend(page.kvs)
        more = page.more
    return revision, kvs


POD_NAMESPACES = (b"default", b"kube-system", b"team-a", b"kube-public")


def test_ranges_across_backends_answer_as_etcd_does(client: Etcd, oracle: Etcd) -> None:
    clients = (client, oracle)
    assert client.revision() == oracle.revision()
    # Pods in every namespace (kube-system's in MariaDB, the others in PostgreSQL), and one key in
    # every other backend, written interleaved.
    for i in range(4):
        for namespace in POD_NAMESPACES:
            write_both(clients, b"/registry/pods/%s/pod-%d" % (namespace, i), b"v1 %d" % i)
        for key in ONE_PER_BACKEND.values():
            write_both(clients, key + b"-%d" % i, b"v1")
    old = client.revision()
    old_state = client.get(b"\0", b"\0")
    # Later updates, deletes and creates, in every backend.
    for namespace in POD_NAMESPACES:
        write_both(clients, b"/registry/pods/%s/pod-1" % namespace, b"v2")
        write_both(clients, b"/registry/pods/%s/pod-2" % namespace, None)
        write_both(clients, b"/registry/pods/%s/pod-9" % namespace, b"new")
    for key in ONE_PER_BACKEND.values():
        write_both(clients, key + b"-0", None)
        write_both(clients, key + b"-3", b"v2")

    pods, pods_end = b"/registry/pods/", prefix_end(b"/registry/pods/")
    for start, end in [
        (pods, pods_end),
        (REGISTRY, REGISTRY_END),
        (b"\0", b"\0"),
        (b"/registry/pods/d", b"/registry/q"),
    ]:
        everything = each(clients, start, end)
        assert [kv.key for kv in everything.kvs] == sorted(kv.key for kv in everything.kvs)
        assert everything.count == len(everything.kvs) > 0 and not everything.more
        for limit in (1, 3, everything.count - 1, everything.count, everything.count + 1):
            page = each(clients, start, end, limit=limit)
            assert page.more == (limit < everything.count) and page.count == everything.count
        each(clients, start, end, keys_only=True)
        each(clients, start, end, keys_only=True, limit=2)
        counted = each(clients, start, end, count_only=True)
        assert counted.count == everything.count and not counted.kvs
        each(clients, start, end, limit=2, sort_order=rpc_pb2.RangeRequest.DESCEND)
        each(
            clients, start, end, sort_target=rpc_pb2.RangeRequest.MOD, sort_order=rpc_pb2.RangeRequest.DESCEND, limit=4
        )
        each(clients, start, end, min_mod_revision=old + 1)
        # At a past revision, across backends: the state before the updates and deletes.
        past = each(clients, start, end, revision=old)
        each(clients, start, end, revision=old, limit=3)
        each(clients, start, end, revision=old, count_only=True)
        each(clients, start, end, revision=5)
        assert [kv_tuple(kv) for kv in past.kvs] == [
            kv_tuple(kv) for kv in old_state.kvs if start <= kv.key and (end == b"\0" or kv.key < end)
        ]

    # Paging through every backend while writes go on between the first pages: every key exactly
    # once, as of the first page.
    written = iter(range(1000))
    for start, end in [(pods, pods_end), (REGISTRY, REGISTRY_END)]:
        for limit in (1, 2, 5):
            revision, kvs = list_pages(client, start, end, limit, writes_between_pages(clients, written))
            keys = [kv.key for kv in kvs]
            assert len(keys) == len(set(keys)) and kvs, (start, limit)
            assert revision < client.revision(), "no write between the pages"
            assert [kv_tuple(kv) for kv in kvs] == [
                kv_tuple(kv) for kv in oracle.get(start, end, revision=revision).kvs
            ]


def writes_between_pages(clients: tuple[Etcd, Etcd], written: Iterator[int], pages: int = 3) -> Callable[[], None]:
    """Writes to three backends after each of the first `pages` pages."""
    calls = iter(range(1_000_000))

    def more_writes() -> None:
        if next(calls) < pages:
            n = next(written)
            write_both(clients, b"/registry/pods/kube-system/late-%d" % n, b"late")
            write_both(clients, b"/registry/pods/default/late-%d" % n, b"late")
            write_both(clients, b"/registry/configmaps/default/late-%d" % n, b"late")

    return more_writes


def test_compaction_reaches_every_backend(client: Etcd, oracle: Etcd) -> None:
    clients = (client, oracle)
    for i in range(3):
        for key in ONE_PER_BACKEND.values():
            write_both(clients, key, b"v%d" % i)
    middle = client.revision() - 3
    for c in clients:
        c.compact(middle, physical=True)

    for c in clients:
        error = rpc_error(lambda c=c: c.get(REGISTRY, REGISTRY_END, revision=middle - 1))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
        )
    each(clients, REGISTRY, REGISTRY_END, revision=middle)
    each(clients, b"\0", b"\0")


# -- watches across backends --------------------------------------------------------------------

WATCH_TIMEOUT = 20.0


def event_tuple(event: kv_pb2.Event) -> tuple[object, ...]:
    prev = kv_tuple(event.prev_kv) if event.HasField("prev_kv") else None
    return (event.type, kv_tuple(event.kv), prev)


def collect(stream: WatchStream, watch_id: int, last: int, timeout: float = WATCH_TIMEOUT) -> list[kv_pb2.Event]:
    """Every event the watch sends up to revision `last`, checking each response on the way."""
    events: list[kv_pb2.Event] = []
    deadline = time.monotonic() + timeout
    while not events or events[-1].kv.mod_revision < last:
        assert time.monotonic() < deadline, f"events up to {last} not delivered; got {len(events)}"
        response = stream.next(max(0.1, deadline - time.monotonic()))
        assert response.watch_id == watch_id and not response.canceled, response
        if not response.events:
            continue  # a progress notification
        assert response.header.revision >= response.events[-1].kv.mod_revision, response
        # All events of one revision (one txn) come in one response.
        assert not events or response.events[0].kv.mod_revision > events[-1].kv.mod_revision, response
        events.extend(response.events)
    return events


def assert_history_is_consistent(events: list[kv_pb2.Event], before: dict[bytes, kv_pb2.KeyValue]) -> None:
    """Events in revision order, each prev_kv the key's state just before, starting from `before`."""
    state = dict(before)
    revisions = [event.kv.mod_revision for event in events]
    assert revisions == sorted(revisions)
    for event in events:
        key = event.kv.key
        previous = state.get(key)
        if previous is None:
            assert not event.HasField("prev_kv"), event
        else:
            assert kv_tuple(event.prev_kv) == kv_tuple(previous), event
        if event.type == kv_pb2.Event.PUT:
            expected_version = 1 if previous is None else previous.version + 1
            created = event.kv.mod_revision if previous is None else previous.create_revision
            assert (event.kv.version, event.kv.create_revision) == (expected_version, created), event
            state[key] = event.kv
        else:
            assert previous is not None, f"a delete of a missing key: {event}"
            del state[key]


class BackendWriter(threading.Thread):
    """Creates, updates and deletes keys below one prefix, recording each acknowledged revision."""

    def __init__(self, client: Etcd, prefix: bytes, writes: int) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix, self.writes = client, prefix, writes
        self.acks: dict[int, tuple[bytes, bytes | None]] = {}  # revision -> (key, value or None if deleted)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.writes):
                key = self.prefix + b"w-%d" % (n % 4)
                if n % 5 == 4:
                    response = self.client.delete(key)
                    if response.deleted:
                        self.acks[response.header.revision] = (key, None)
                else:
                    value = b"%d" % n
                    self.acks[self.client.put(key, value).header.revision] = (key, value)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error


WATCHED_PREFIXES = [
    b"/registry/pods/kube-system/",
    b"/registry/pods/default/",
    b"/registry/clusterroles/",
    b"/registry/stable.example.com/shirts/default/",
    b"/registry/configmaps/default/",
    b"/registry/secrets/kube-system/",
]


def test_a_watch_across_backends_sees_every_event_once_in_order_with_prev_kv(client: Etcd) -> None:
    for prefix in WATCHED_PREFIXES:
        client.put(prefix + b"seed", b"seed")
    start = client.revision() - 2  # from the past: the watch replays history first, then follows
    before = {kv.key: kv for kv in client.get(REGISTRY, REGISTRY_END, revision=start - 1).kvs}

    with WatchStream(client) as stream, WatchStream(client) as late_stream:
        watch_id = stream.create(REGISTRY, REGISTRY_END, start_revision=start, prev_kv=True)
        # Sequential writes hopping between backends: puts, updates, deletes, one-backend txns.
        acks: dict[int, tuple[bytes, bytes | None]] = {}
        for i, prefix in enumerate(WATCHED_PREFIXES * 2):
            key = prefix + b"seq-%d" % (i % 3)
            acks[client.put(key, b"s%d" % i).header.revision] = (key, b"s%d" % i)
        for prefix in WATCHED_PREFIXES:
            key = prefix + b"seq-%d" % (WATCHED_PREFIXES.index(prefix) % 3)
            deleted = client.delete(key)
            assert deleted.deleted == 1, key
            acks[deleted.header.revision] = (key, None)
        txn = client.txn(
            [], [put_op(b"/registry/configmaps/kube-system/a", b"t"), put_op(b"/registry/pods/kube-system/a", b"t")]
        )
        two_keys = txn.header.revision
        # Concurrent writers, one per backend prefix.
        writers = [BackendWriter(client, prefix, 25) for prefix in WATCHED_PREFIXES]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(30)
            assert not writer.is_alive() and writer.error is None, writer.error
            acks.update(writer.acks)
        last = client.revision()

        events = collect(stream, watch_id, last)

        assert all(event.kv.mod_revision >= start for event in events)
        # Every revision from the start is one write here (two events for the txn), each seen once.
        revisions = [event.kv.mod_revision for event in events]
        expected = sorted([*range(start, last + 1), two_keys])
        assert revisions == expected
        assert_history_is_consistent(events, before)
        by_revision = {event.kv.mod_revision: event for event in events if event.kv.mod_revision != two_keys}
        for revision, (key, value) in acks.items():
            event = by_revision[revision]
            assert event.kv.key == key, (revision, event)
            if value is None:
                assert event.type == kv_pb2.Event.DELETE, event
            else:
                assert (event.type, event.kv.value) == (kv_pb2.Event.PUT, value), event
        # What the events add up to is what a range reads now.
        state = {**before}
        for event in events:
            if event.type == kv_pb2.Event.PUT:
                state[event.kv.key] = event.kv
            else:
                del state[event.kv.key]
        now = client.get(REGISTRY, REGISTRY_END)
        assert [kv_tuple(kv) for kv in now.kvs] == [kv_tuple(state[key]) for key in sorted(state)]

        # A watch made now from the same old revision replays exactly the same events from history.
        late_id = late_stream.create(REGISTRY, REGISTRY_END, start_revision=start, prev_kv=True)
        replayed = collect(late_stream, late_id, last)
        assert [event_tuple(event) for event in replayed] == [event_tuple(event) for event in events]

        # Progress: the latest revision, nothing more.
        stream.request_progress()
        progress = stream.next()
        assert not progress.events and progress.header.revision == last == client.revision(), progress
        stream.assert_quiet()
        late_stream.assert_quiet()


def test_a_watch_replaying_long_history_across_backends_crosses_page_boundaries_without_gaps(client: Etcd) -> None:
    # Many events per revision (txns of up to 120 puts, each in one backend), unevenly spread, so that
    # every backend's history pages end at different revisions.
    start = client.revision() + 1
    sizes = [120, 1, 37, 90, 3, 110, 64, 7]
    expected: list[tuple[int, bytes]] = []
    for i in range(60):
        prefix = WATCHED_PREFIXES[i % len(WATCHED_PREFIXES)]
        size = sizes[i % len(sizes)]
        keys = [prefix + b"bulk-%03d" % n for n in range(size)]
        revision = client.txn([], [put_op(key, b"%d" % i) for key in keys]).header.revision
        expected.extend((revision, key) for key in keys)
    last = client.revision()
    assert len(expected) > 3000

    with WatchStream(client) as stream:
        watch_id = stream.create(REGISTRY, REGISTRY_END, start_revision=start, prev_kv=True)
        events = collect(stream, watch_id, last)

    assert [(event.kv.mod_revision, event.kv.key) for event in events] == expected
    assert_history_is_consistent(events, {})


# -- validation at start-up ---------------------------------------------------------------------

STARTUP_FAILURE_TIMEOUT = 30.0


def kubefabric_fails_to_start(workdir: Path, topology: str) -> str:
    """Start kubefabric on `topology`; it must exit non-zero by itself, soon, without a traceback. Its stderr."""
    (workdir / "topology.yaml").write_text(topology)
    clean_env = {name: value for name, value in os.environ.items() if not name.startswith(("KUBEFABRIC_", "TOPOLOGY_"))}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubefabric",
            "--listen-address",
            f"127.0.0.1:{free_port()}",
            "--metrics-address",
            "",
            "--endpoint",
            f"multi://sqlite://{workdir}/state.db",
            "--topology-config",
            str(workdir / "topology.yaml"),
            "--revision-mapper-endpoint",
            f"sqlite://{workdir}/revisions.db",
        ],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=REPO_ROOT,
        timeout=STARTUP_FAILURE_TIMEOUT,
    )
    assert result.returncode > 0, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 20, result.stderr
    return result.stderr


def sqlite_entry(workdir: Path, name: str, matcher: str) -> str:
    return f"- name: {name}\n  endpoint: sqlite://{workdir}/{name}.db\n{matcher}"


BAD_TOPOLOGIES: dict[str, tuple[str, list[str]]] = {
    # case: (the entries after a good first one, what the message must name)
    "unknown matcher": ("  glob:\n    pattern: pods/*\n", ["backends entry 2 ('broken')", "'glob'"]),
    "bad regexp": (
        "  regexp:\n    key: (pods|secrets\n",
        ["backends entry 2 ('broken')", "regexp.key", "(pods|secrets"],
    ),
    "duplicate name": ("  prefix:\n    prefix: secrets\n", ["backends entry 2 ('good')", "duplicate name 'good'"]),
}


@pytest.mark.parametrize("case", list(BAD_TOPOLOGIES))
def test_an_unusable_rule_stops_start_up_naming_the_entry(tmp_path: Path, case: str) -> None:
    matcher, fragments = BAD_TOPOLOGIES[case]
    name = "good" if case == "duplicate name" else "broken"
    topology = "backends:\n" + sqlite_entry(tmp_path, "good", "  prefix:\n    prefix: pods\n")
    topology += sqlite_entry(tmp_path, name, matcher).replace(f"{name}.db", "other.db")

    stderr = kubefabric_fails_to_start(tmp_path, topology)

    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    assert "topology.yaml" in stderr, stderr
    assert not (tmp_path / "state.db").exists(), "nothing may be created for a refused topology"


UNREACHABLE = {
    "postgres": "postgres://postgres:hunter2@127.0.0.1:1/kubernetes",
    "mysql": "mysql://root:hunter2@tcp(127.0.0.1:1)/kubernetes",
    "etcd": "http://127.0.0.1:1",
}


@pytest.mark.parametrize("database", list(UNREACHABLE))
def test_an_unreachable_backend_stops_start_up_naming_it(tmp_path: Path, database: str) -> None:
    topology = "backends:\n" + sqlite_entry(tmp_path, "shirts", "  customresource:\n    group: stable.example.com\n")
    topology += f"- name: faraway\n  endpoint: {UNREACHABLE[database]}\n  prefix:\n    prefix: pods\n"

    stderr = kubefabric_fails_to_start(tmp_path, topology)

    assert "'faraway'" in stderr and "127.0.0.1:1" in stderr, stderr
    assert "hunter2" not in stderr, stderr


# -- topology changes while running ---------------------------------------------------------------

CONFIGMAPS_RULE = """\
- name: configmaps
  endpoint: sqlite://{workdir}/configmaps.db
  prefix:
    prefix: configmaps
"""
FOLLOW_TIMEOUT = 5.0


def test_a_rule_appended_while_running_routes_new_keys_and_a_changed_rule_is_refused(
    multi: Multi, client: Etcd
) -> None:
    client.put(b"/registry/pods/default/before", b"1")
    log = multi.server.log
    with multi.topology.open("a") as topology:
        topology.write(CONFIGMAPS_RULE.format(workdir=multi.workdir))
    appended = time.monotonic()

    # Within seconds the server routes by it (it says so), and new configmaps (outside kube-system,
    # which an earlier rule takes) land in the new file.
    wait_for(lambda: "topology now routes by 5 rules" in log.read_text(), FOLLOW_TIMEOUT, "the new rule")
    print(f"appended rule applied after {time.monotonic() - appended:.2f}s")
    multi.endpoints["configmaps"] = f"sqlite://{multi.workdir}/configmaps.db"
    key = b"/registry/configmaps/default/after"
    fresh = [key + b"-new-%d" % i for i in range(3)]
    revisions = [client.put(k, b"new").header.revision for k in fresh]
    stored = multi.placement()
    assert set(fresh) <= stored["configmaps"] and not set(fresh) & stored["default"]
    assert {b"/registry/configmaps/kube-system/x"} - stored["configmaps"]
    client.put(b"/registry/configmaps/kube-system/x", b"still kube-system")
    assert b"/registry/configmaps/kube-system/x" in multi.keys_in("kube-system")
    # Read back through kubefabric, alone and merged with the other backends, and watched from history.
    assert [kv.mod_revision for kv in client.get(fresh[0], prefix_end(key)).kvs] == revisions
    listed = [kv.key for kv in client.get(REGISTRY, REGISTRY_END, keys_only=True).kvs]
    assert set(fresh) <= set(listed) and listed == sorted(listed)
    with WatchStream(client) as stream:
        watch_id = stream.create(
            b"/registry/configmaps/", prefix_end(b"/registry/configmaps/"), start_revision=revisions[0]
        )
        events = collect(stream, watch_id, client.revision())
        assert [event.kv.key for event in events] == [*fresh, b"/registry/configmaps/kube-system/x"]

    # Changing an existing rule is refused, and routing goes on by the rules in force.
    multi.topology.write_text(multi.topology.read_text().replace("prefix: pods", "prefix: podz"))
    wait_for(lambda: "refused" in log.read_text(), FOLLOW_TIMEOUT, "the change to be refused in the log")
    refusal = next(line for line in log.read_text().splitlines() if "refused" in line)
    assert "'pods'" in refusal, refusal
    client.put(b"/registry/pods/default/after", b"2")
    client.put(b"/registry/configmaps/default/after-refusal", b"3")
    stored = multi.placement()
    assert {b"/registry/pods/default/before", b"/registry/pods/default/after"} <= stored["pods"]
    assert b"/registry/configmaps/default/after-refusal" in stored["configmaps"]
    assert multi.server.process is not None and multi.server.process.poll() is None


# -- one database down, the others unaffected ---------------------------------------------------

FAIL_FAST_SECONDS = 3.0  # a request for the stopped database must fail within this
WORKS_SECONDS = 2.0  # a request for another database must succeed within this, the outage notwithstanding
RECOVERY_SECONDS = 20.0  # once the database is back, its keys must work again within this
OUTAGE_SECONDS = 2.0  # load goes on this long while the database is down


class Outage:
    """Which server is stopped, the backend it holds, keys it holds and keys held elsewhere."""

    def __init__(
        self,
        stopped: Callable[[], object],
        backend: str,
        down_keys: list[bytes],
        down_range: bytes,
        healthy_keys: list[bytes],
        healthy_ranges: list[bytes],
    ) -> None:
        self.stopped = stopped
        self.backend = backend
        self.down_keys = down_keys
        self.down_range = down_range
        self.healthy_keys = healthy_keys
        self.healthy_ranges = healthy_ranges


OUTAGES = {
    "mariadb": Outage(
        mysql_stopped,
        "kube-system",
        [b"/registry/configmaps/kube-system/coredns", b"/registry/pods/kube-system/coredns-1"],
        b"/registry/secrets/kube-system/",
        [
            b"/registry/configmaps/default/app",
            b"/registry/pods/default/web-0",
            b"/registry/pods/team-a/api-0",
            b"/registry/clusterroles/view",
            b"/registry/rolebindings/kube-system/edit",  # rbac takes it before kube-system
            b"/registry/stable.example.com/shirts/default/blue",
            b"/registry/deployments/default/web",
        ],
        [
            b"/registry/pods/default/",
            b"/registry/clusterroles/",
            b"/registry/stable.example.com/",
            b"/registry/deployments/default/",
        ],
    ),
    "postgresql": Outage(
        postgres_stopped,
        "pods",
        [b"/registry/pods/default/web-0", b"/registry/pods/team-a/api-0"],
        b"/registry/pods/default/",
        [
            b"/registry/configmaps/default/app",
            b"/registry/pods/kube-system/coredns-1",  # kube-system's pods are in MariaDB
            b"/registry/configmaps/kube-system/coredns",
            b"/registry/clusterroles/view",
            b"/registry/stable.example.com/shirts/default/blue",
            b"/registry/deployments/default/web",
        ],
        [
            b"/registry/pods/kube-system/",
            b"/registry/configmaps/",
            b"/registry/clusterroles/",
            b"/registry/stable.example.com/",
        ],
    ),
}


def timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def fails_fast_naming(call: Callable[[], object], backend: str) -> float:
    started = time.monotonic()
    error = rpc_error(call)
    seconds = time.monotonic() - started
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert f"backend {backend!r}" in error.details(), error.details()
    assert seconds < FAIL_FAST_SECONDS, (seconds, error.details())
    return seconds


class Hammer(threading.Thread):
    """Writes the keys over and over until stopped, recording every outcome."""

    def __init__(self, client: Etcd, keys: list[bytes], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.keys, self.stop = client, keys, stop
        self.acks: list[tuple[bytes, bytes, int]] = []
        self.failures: list[tuple[bytes, grpc.StatusCode, str, float, float]] = []  # ..., seconds, when

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = self.keys[n % len(self.keys)]
            value = b"hammer %d" % n
            n += 1
            started = time.monotonic()
            try:
                self.acks.append((key, value, self.client.put(key, value).header.revision))
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                failed = time.monotonic()
                self.failures.append((key, error.code(), error.details() or "", failed - started, failed))
                time.sleep(0.05)


@pytest.mark.stops_databases
@pytest.mark.parametrize("database", list(OUTAGES))
def test_a_stopped_database_takes_down_only_its_own_keys(multi: Multi, client: Etcd, database: str) -> None:
    outage = OUTAGES[database]
    assert multi.server.process is not None
    pid = multi.server.process.pid
    for key in outage.down_keys + outage.healthy_keys:
        client.put(key, b"before")
    watched = b"/registry/configmaps/default/"
    acks: list[tuple[bytes, bytes, int]] = []  # the writes of this thread
    timings: dict[str, float] = {}

    def put(key: bytes, value: bytes) -> int:
        revision = int(client.put(key, value).header.revision)
        acks.append((key, value, revision))
        return revision

    with WatchStream(client) as stream, WatchStream(client) as all_stream, WatchStream(client) as late_stream:
        first = client.revision() + 1
        before = {kv.key: kv for kv in client.get(watched, prefix_end(watched)).kvs}
        watch_id = stream.create(watched, prefix_end(watched), start_revision=first, prev_kv=True)
        all_id = all_stream.create(REGISTRY, REGISTRY_END, start_revision=first)
        # Load on every backend until after the outage: on the one about to stop from before it, so
        # that its writes are in flight when it goes, on the others from once it is down (see
        # test_a_write_queued_behind_a_failing_commit_of_another_backend_is_not_failed_with_it for what
        # goes wrong with writes to them that are in flight then).
        stop = threading.Event()
        healthy = [Hammer(client, [key], stop) for key in outage.healthy_keys]
        doomed = Hammer(client, outage.down_keys, stop)
        try:
            doomed.start()
            time.sleep(0.5)
            stopping = time.monotonic()
            with outage.stopped():  # type: ignore[attr-defined]
                down = time.monotonic()
                timings["stop"] = down - stopping
                for writer in healthy:
                    writer.start()
                # Its keys fail fast, naming the backend: writes, reads, txns, ranges that reach into it.
                for key in outage.down_keys:
                    timings[f"put {key.decode()}"] = fails_fast_naming(
                        partial(client.put, key, b"down"), outage.backend
                    )
                    timings[f"get {key.decode()}"] = fails_fast_naming(partial(client.get, key), outage.backend)
                fails_fast_naming(lambda: client.txn([], [put_op(outage.down_keys[0], b"txn")]), outage.backend)
                fails_fast_naming(lambda: client.get_prefix(outage.down_range), outage.backend)
                timings["list /registry/"] = fails_fast_naming(
                    lambda: client.get(REGISTRY, REGISTRY_END, limit=500), outage.backend
                )
                # Everything else works, each request promptly.
                for key in outage.healthy_keys:
                    assert timed(partial(put, key, b"during")) < WORKS_SECONDS, key
                    assert timed(partial(client.get, key)) < WORKS_SECONDS, key
                for prefix in outage.healthy_ranges:
                    assert timed(partial(client.get_prefix, prefix)) < WORKS_SECONDS, prefix
                    assert client.get_prefix(prefix).kvs, prefix
                # A watch made now, from now, follows the keys routed elsewhere.
                late_stream.send_create(watched, prefix_end(watched), prev_kv=True)
                created = late_stream.next()
                assert created.created and not created.canceled, created
                late_id, late_first = created.watch_id, created.header.revision + 1
                time.sleep(OUTAGE_SECONDS)
                put(watched + b"during-outage", b"x")
                assert all(writer.acks[-1][2] > late_first for writer in healthy), "a healthy writer stalled"
                restarting = time.monotonic()
                timings["outage"] = restarting - down
            back = time.monotonic()
            timings["restart"] = back - restarting

            # Without restarting kubefabric, its keys work again.
            def works_again() -> bool:
                return any(revision > late_first for _, _, revision in doomed.acks[-3:])

            wait_for(works_again, RECOVERY_SECONDS, f"the {outage.backend} keys to work again")
            timings["recovery"] = time.monotonic() - back
            time.sleep(0.3)
        finally:
            stop.set()
            for writer in [*healthy, doomed]:
                writer.join(15)
        assert not any(writer.is_alive() for writer in [*healthy, doomed])
        for key in outage.down_keys:
            put(key, b"after")
            assert client.get(key).kvs[0].value == b"after"
        assert multi.server.process.pid == pid and multi.server.process.poll() is None
        last = put(watched + b"after-outage", b"y")

        # The healthy writers never failed; the other one failed only while its database was down,
        # fast and naming it.
        for writer in healthy:
            assert writer.acks and not writer.failures, (writer.keys, len(writer.failures), writer.failures[:3])
        assert doomed.failures and doomed.acks
        for key, code, details, seconds, at in doomed.failures:
            assert code == grpc.StatusCode.UNAVAILABLE and f"backend {outage.backend!r}" in details, details
            assert seconds < FAIL_FAST_SECONDS, (key, seconds, details)
            assert stopping < at < back + RECOVERY_SECONDS, (at - stopping, details)
        timings["slowest failure"] = max(failure[3] for failure in doomed.failures)

        # The watches open during the outage got every event, once, in order, without gaps.
        everyone = sorted([*acks, *(ack for writer in [*healthy, doomed] for ack in writer.acks)], key=lambda a: a[2])
        events = collect(stream, watch_id, last)
        assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
            ack for ack in everyone if ack[0].startswith(watched)
        ]
        assert_history_is_consistent(events, before)
        late = collect(late_stream, late_id, last)
        assert [event_tuple(e) for e in late] == [event_tuple(e) for e in events if e.kv.mod_revision >= late_first]
        everything = collect(all_stream, all_id, last)
        assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in everything] == everyone
    print(
        f"{database}: {len(everyone)} writes, {len(doomed.failures)} failed; "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items())
    )


# A commit to one backend that hangs (a database that stops answering without closing the connection:
# a network partition, a server stuck on I/O or locks) and then fails. Reproduced with a row lock that
# holds up kubefabric's commits to MariaDB, then by killing the waiting connection.
HUNG_SECONDS = 3.0
KNOWN_LIMIT = (
    "known limit: the core commits one batch at a time for every backend, so a backend whose commit "
    "hangs holds up the others' writes until its own timeout fails it (10-15 s)"
)


def put_in_thread(client: Etcd, key: bytes, value: bytes) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def put() -> None:
        started = time.monotonic()
        try:
            outcome["revision"] = client.put(key, value).header.revision
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            outcome["error"] = (error.code(), error.details())
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    return thread, outcome


OTHER_BACKENDS_KEYS = [
    b"/registry/configmaps/default/app",  # default SQLite
    b"/registry/pods/default/web-0",  # PostgreSQL
    b"/registry/stable.example.com/shirts/default/blue",  # SQLite file
    b"/registry/clusterroles/view",  # etcd
]


@pytest.mark.xfail(strict=True, reason=KNOWN_LIMIT)
def test_a_hung_commit_in_one_backend_does_not_hold_up_writes_to_the_others(multi: Multi, client: Etcd) -> None:
    stuck_key = b"/registry/configmaps/kube-system/coredns"
    client.put(stuck_key, b"1")
    with MariadbRevisionLock(multi.endpoints["kube-system"]) as lock:
        stuck, stuck_outcome = put_in_thread(client, stuck_key, b"2")
        wait_for(lock.waiting, 5, "kubefabric's commit to wait for the lock")
        others = [put_in_thread(client, key, b"elsewhere") for key in OTHER_BACKENDS_KEYS]
        try:
            deadline = time.monotonic() + HUNG_SECONDS
            for thread, _ in others:
                thread.join(max(0.0, deadline - time.monotonic()))
            waiting = [key for key, (thread, _) in zip(OTHER_BACKENDS_KEYS, others, strict=True) if thread.is_alive()]
            assert not waiting, f"writes to other backends held up by the hung kube-system commit: {waiting}"
        finally:
            lock.kill_waiting()
            for thread, _ in [*others, (stuck, stuck_outcome)]:
                thread.join(15)


def test_a_write_queued_behind_a_failing_commit_of_another_backend_is_not_failed_with_it(
    multi: Multi, client: Etcd
) -> None:
    stuck_key = b"/registry/configmaps/kube-system/coredns"
    client.put(stuck_key, b"1")
    with MariadbRevisionLock(multi.endpoints["kube-system"]) as lock:
        stuck, stuck_outcome = put_in_thread(client, stuck_key, b"2")
        wait_for(lock.waiting, 5, "kubefabric's commit to wait for the lock")
        others = [put_in_thread(client, key, b"elsewhere") for key in OTHER_BACKENDS_KEYS]
        time.sleep(0.5)  # they are queued behind the stuck commit (see the test above)
        lock.kill_waiting()
        for thread, _ in [*others, (stuck, stuck_outcome)]:
            thread.join(15)
            assert not thread.is_alive()

    # The kube-system write failed, fast once its connection died, naming its backend...
    assert "error" in stuck_outcome, stuck_outcome
    code, details = stuck_outcome["error"]  # type: ignore[misc]
    assert code == grpc.StatusCode.UNAVAILABLE and "backend 'kube-system'" in str(details), stuck_outcome
    # ...and the writes to the other backends, whose databases never failed, were acknowledged and stored.
    failed = {key: outcome for key, (_, outcome) in zip(OTHER_BACKENDS_KEYS, others, strict=True) if "error" in outcome}
    assert not failed, f"writes to healthy backends failed with the kube-system commit: {failed}"
    for key in OTHER_BACKENDS_KEYS:
        assert client.get(key).kvs[0].value == b"elsewhere", key
    assert client.get(stuck_key).kvs[0].value == b"1"


@pytest.mark.stops_databases
def test_a_watch_replaying_history_of_keys_in_healthy_backends_works_while_another_database_is_down(
    client: Etcd,
) -> None:
    watched = b"/registry/configmaps/default/"
    first = client.put(watched + b"before", b"1").header.revision
    with mysql_stopped():
        during = client.put(watched + b"during", b"2").header.revision
        with WatchStream(client) as stream:
            watch_id = stream.create(watched, prefix_end(watched), start_revision=first)
            events = collect(stream, watch_id, during, timeout=5.0)
    assert [(event.kv.key, event.kv.mod_revision) for event in events] == [
        (watched + b"before", first),
        (watched + b"during", during),
    ]


# -- leases and restarts across backends -----------------------------------------------------------


def test_revoking_a_lease_deletes_its_keys_in_every_backend_in_one_revision(client: Etcd, oracle: Etcd) -> None:
    clients = (client, oracle)
    lease_id = 0x1234
    for c in clients:
        c.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60, ID=lease_id), timeout=10)
    leased = sorted([*ONE_PER_BACKEND.values(), b"/registry/pods/kube-system/leased"])
    for key in leased:
        revisions = [c.put(key, b"leased", lease=lease_id).header.revision for c in clients]
        assert revisions[0] == revisions[1]
    write_both(clients, b"/registry/pods/default/unleased", b"stays")
    start = client.revision() + 1

    for c in clients:
        live = c.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)
        assert sorted(live.keys) == leased, c
    with WatchStream(client) as stream:
        watch_id = stream.create(REGISTRY, REGISTRY_END, start_revision=start, prev_kv=True)
        for c in clients:
            c.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)
        revoked = client.revision()
        assert revoked == oracle.revision() == start
        events = collect(stream, watch_id, revoked)
    # One revision, one response, a DELETE with its prev_kv for every leased key, whatever its backend.
    assert [(event.type, event.kv.key, event.kv.mod_revision) for event in events] == [
        (kv_pb2.Event.DELETE, key, revoked) for key in leased
    ]
    assert all(event.prev_kv.lease == lease_id for event in events)
    each(clients, b"\0", b"\0")
    each(clients, REGISTRY, REGISTRY_END, revision=revoked - 1)
    for key in leased:
        assert key not in multi_live_keys(client)


def multi_live_keys(client: Etcd) -> set[bytes]:
    return {kv.key for kv in client.get(b"\0", b"\0", keys_only=True).kvs}


def test_a_restart_continues_the_one_revision_sequence_over_every_backend(multi: Multi, client: Etcd) -> None:
    for round_ in range(2):
        for key in ONE_PER_BACKEND.values():
            client.put(key, b"%d" % round_)
    # The latest revision is in the etcd backend only; the default SQLite file saw none of the last 4.
    last = client.put(ONE_PER_BACKEND["rbac"], b"last").header.revision
    before = client.get(b"\0", b"\0")
    history_start = last - 7
    with WatchStream(client) as stream:
        watch_id = stream.create(REGISTRY, REGISTRY_END, start_revision=history_start, prev_kv=True)
        history = [event_tuple(event) for event in collect(stream, watch_id, last)]

    companions, multi.server.companions = multi.server.companions, []  # the etcd backend keeps running
    assert multi.server.stop() == 0
    multi.server = start_kubefabric(multi.workdir, multi.endpoint, "--compaction-interval", "0")
    multi.server.companions = companions

    with Etcd(multi.server.channel()) as restarted:
        assert restarted.revision() == last
        after = restarted.get(b"\0", b"\0")
        assert range_answer(after) == range_answer(before)
        with WatchStream(restarted) as stream:
            watch_id = stream.create(REGISTRY, REGISTRY_END, start_revision=history_start, prev_kv=True)
            assert [event_tuple(event) for event in collect(stream, watch_id, last)] == history
        assert restarted.put(ONE_PER_BACKEND["default"], b"next").header.revision == last + 1
        assert restarted.put(ONE_PER_BACKEND["kube-system"], b"next").header.revision == last + 2

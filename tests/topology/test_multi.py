"""One kubefabric over several real databases (multi:// with a topology file), through the real gRPC API.

The topology is tests.conftest.MULTI_TOPOLOGY: RBAC objects in a real etcd, the kube-system
namespace in MariaDB, pods in PostgreSQL, stable.example.com/shirts in a SQLite file, the rest in
the default SQLite file. Placement is checked by reading each database directly; everything else
through kubefabric's etcd API, against a real etcd fed the same writes where the answer is etcd's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, kv_tuple, prefix_end, put_op, range_op
from tests._databases import mysql_stopped, postgres_stopped
from tests._servers import REPO_ROOT, ServerProcess, free_port, start_kubefabric
from tests.conformance._support import WatchStream
from tests.conftest import multi_store
from tests.topology._multi import Multi

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
    try:
        yield Multi.of(process, tmp_path, endpoint)
    finally:
        process.stop()


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


# -- 1. placement ----------------------------------------------------------------------------------


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


# -- 2. one revision sequence ----------------------------------------------------------------------


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


# -- 5. transactions -------------------------------------------------------------------------------


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


# -- 3. ranges across backends ---------------------------------------------------------------------


def each(clients: tuple[Etcd, Etcd], call: Callable[[Etcd], rpc_pb2.RangeResponse]) -> rpc_pb2.RangeResponse:
    """The same call on kubefabric and the oracle etcd; asserts they answer the same; kubefabric's answer."""
    ours, etcds = (call(client) for client in clients)
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
    for start, end in [(pods, pods_end), (REGISTRY, REGISTRY_END), (b"\0", b"\0"), (b"/registry/pods/d", b"/registry/q")]:
        everything = each(clients, lambda c: c.get(start, end))
        assert [kv.key for kv in everything.kvs] == sorted(kv.key for kv in everything.kvs)
        assert everything.count == len(everything.kvs) > 0 and not everything.more
        for limit in (1, 3, everything.count - 1, everything.count, everything.count + 1):
            page = each(clients, lambda c: c.get(start, end, limit=limit))
            assert page.more == (limit < everything.count) and page.count == everything.count
        each(clients, lambda c: c.get(start, end, keys_only=True))
        each(clients, lambda c: c.get(start, end, keys_only=True, limit=2))
        counted = each(clients, lambda c: c.get(start, end, count_only=True))
        assert counted.count == everything.count and not counted.kvs
        each(clients, lambda c: c.get(start, end, limit=2, sort_order=rpc_pb2.RangeRequest.DESCEND))
        each(
            clients,
            lambda c: c.get(
                start, end, sort_target=rpc_pb2.RangeRequest.MOD, sort_order=rpc_pb2.RangeRequest.DESCEND, limit=4
            ),
        )
        each(clients, lambda c: c.get(start, end, min_mod_revision=old + 1))
        # At a past revision, across backends: the state before the updates and deletes.
        past = each(clients, lambda c: c.get(start, end, revision=old))
        each(clients, lambda c: c.get(start, end, revision=old, limit=3))
        each(clients, lambda c: c.get(start, end, revision=old, count_only=True))
        each(clients, lambda c: c.get(start, end, revision=5))
        assert [kv_tuple(kv) for kv in past.kvs] == [
            kv_tuple(kv) for kv in old_state.kvs if start <= kv.key and (end == b"\0" or kv.key < end)
        ]

    # Paging through every backend while writes go on between pages: every key exactly once, as of
    # the first page.
    written = iter(range(1000))

    def more_writes() -> None:
        n = next(written)
        write_both(clients, b"/registry/pods/kube-system/late-%d" % n, b"late")
        write_both(clients, b"/registry/pods/default/late-%d" % n, b"late")
        write_both(clients, b"/registry/configmaps/default/late-%d" % n, b"late")

    for start, end in [(pods, pods_end), (REGISTRY, REGISTRY_END)]:
        for limit in (1, 2, 5):
            revision, kvs = list_pages(client, start, end, limit, more_writes)
            keys = [kv.key for kv in kvs]
            assert len(keys) == len(set(keys)) and kvs, (start, limit)
            assert revision < client.revision(), "no write between the pages"
            listed = [kv_tuple(kv) for kv in kvs]
            assert listed == [kv_tuple(kv) for kv in oracle.get(start, end, revision=revision).kvs]
            assert listed == [kv_tuple(kv) for kv in list_pages(oracle, start, end, limit, lambda: None)[1]] or (
                revision < oracle.revision()
            )


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
    each(clients, lambda c: c.get(REGISTRY, REGISTRY_END, revision=middle))
    each(clients, lambda c: c.get(b"\0", b"\0"))

"""Txn: compare targets and results, branches, revisions, nesting, and kube-apiserver's four txn shapes."""

from __future__ import annotations

import grpc

from kubefabric.etcdpb import rpc_pb2
from tests._client import Compare, Etcd, RequestOp, delete_op, kv_tuple, mod_revision_is, put_op, range_op
from tests.conformance._support import ERR_DUPLICATE_KEY, grant_lease, keys_of, raises_rpc_error

Target = rpc_pb2.Compare.CompareTarget
Result = rpc_pb2.Compare.CompareResult
TARGET_FIELD = {
    Compare.VERSION: "version",
    Compare.CREATE: "create_revision",
    Compare.MOD: "mod_revision",
    Compare.VALUE: "value",
    Compare.LEASE: "lease",
}
EQUAL, GREATER, LESS, NOT_EQUAL = Compare.EQUAL, Compare.GREATER, Compare.LESS, Compare.NOT_EQUAL


def compare(key: bytes, target: Target, result: Result, operand: int | bytes, range_end: bytes = b"") -> Compare:
    condition = Compare(key=key, range_end=range_end, target=target, result=result)
    setattr(condition, TARGET_FIELD[target], operand)
    return condition


def holds(client: Etcd, *compares: Compare) -> bool:
    return bool(client.txn(list(compares), []).succeeded)


def nested_txn_op(compares: list[Compare], success: list[RequestOp], failure: list[RequestOp]) -> rpc_pb2.RequestOp:
    return RequestOp(request_txn=rpc_pb2.TxnRequest(compare=compares, success=success, failure=failure))


def test_every_compare_target_and_result_on_an_existing_key(client: Etcd) -> None:
    lease = grant_lease(client, ttl=60)
    created = client.put(b"k", b"a", lease=lease).header.revision
    modified = client.put(b"k", b"b", lease=lease).header.revision
    before = client.revision()

    cases: list[tuple[Target, Result, int | bytes, bool]] = [
        (Compare.VERSION, EQUAL, 2, True),
        (Compare.VERSION, EQUAL, 1, False),
        (Compare.VERSION, NOT_EQUAL, 2, False),
        (Compare.VERSION, NOT_EQUAL, 3, True),
        (Compare.VERSION, GREATER, 1, True),
        (Compare.VERSION, GREATER, 2, False),
        (Compare.VERSION, LESS, 3, True),
        (Compare.VERSION, LESS, 2, False),
        (Compare.CREATE, EQUAL, created, True),
        (Compare.CREATE, GREATER, created, False),
        (Compare.CREATE, LESS, modified, True),
        (Compare.MOD, EQUAL, modified, True),
        (Compare.MOD, NOT_EQUAL, modified, False),
        (Compare.MOD, GREATER, created, True),
        (Compare.MOD, LESS, modified, False),
        (Compare.VALUE, EQUAL, b"b", True),
        (Compare.VALUE, EQUAL, b"a", False),
        (Compare.VALUE, NOT_EQUAL, b"a", True),
        (Compare.VALUE, GREATER, b"a", True),
        (Compare.VALUE, GREATER, b"b", False),
        (Compare.VALUE, LESS, b"ba", True),
        (Compare.VALUE, LESS, b"b", False),
        (Compare.LEASE, EQUAL, lease, True),
        (Compare.LEASE, NOT_EQUAL, 0, True),
        (Compare.LEASE, GREATER, lease, False),
        (Compare.LEASE, LESS, lease + 1, True),
    ]
    outcomes = [
        (target, result, operand, holds(client, compare(b"k", target, result, operand)))
        for target, result, operand, _ in cases
    ]
    assert outcomes == cases
    assert client.revision() == before


def test_compares_on_missing_keys_and_ranges(client: Etcd) -> None:
    # A missing key compares as zero fields, but has no value: every VALUE compare fails, even with b"".
    assert holds(client, compare(b"missing", Compare.VERSION, EQUAL, 0))
    assert holds(client, compare(b"missing", Compare.CREATE, EQUAL, 0))
    assert holds(client, compare(b"missing", Compare.MOD, EQUAL, 0))
    assert holds(client, compare(b"missing", Compare.MOD, LESS, 1))
    assert holds(client, compare(b"missing", Compare.LEASE, EQUAL, 0))
    assert not holds(client, compare(b"missing", Compare.VALUE, EQUAL, b""))
    assert not holds(client, compare(b"missing", Compare.VALUE, NOT_EQUAL, b"x"))

    # A range compare must hold for every key in [key, range_end); an empty range acts like a missing key.
    client.put(b"p/a", b"1")
    client.put(b"p/b", b"2")
    client.put(b"p/b", b"2")
    end = b"p0"
    assert holds(client, compare(b"p/", Compare.VERSION, GREATER, 0, end))
    assert not holds(client, compare(b"p/", Compare.VERSION, EQUAL, 1, end))
    assert holds(client, compare(b"p/", Compare.VALUE, LESS, b"3", end))
    assert holds(client, compare(b"p/", Compare.MOD, LESS, client.revision() + 1, end))
    assert holds(client, compare(b"\0", Compare.CREATE, GREATER, 0, b"\0"))
    assert holds(client, compare(b"q/", Compare.VERSION, EQUAL, 0, b"q0"))
    assert not holds(client, compare(b"q/", Compare.VALUE, EQUAL, b"", b"q0"))


def test_compares_are_a_conjunction_choosing_the_branch(client: Etcd) -> None:
    client.put(b"k", b"v")
    holding = compare(b"k", Compare.VERSION, EQUAL, 1)
    failing = compare(b"k", Compare.VERSION, EQUAL, 2)

    assert holds(client)  # No compares at all: success.
    assert holds(client, holding, holding)
    assert not holds(client, holding, failing)

    response = client.txn([holding, failing], [put_op(b"success")], [put_op(b"failure")])
    assert not response.succeeded
    assert [op.WhichOneof("response") for op in response.responses] == ["response_put"]
    assert keys_of(client.get(b"\0", b"\0")) == [b"failure", b"k"]


def test_writes_of_one_txn_share_one_revision_and_later_reads_see_them(client: Etcd) -> None:
    client.put(b"a", b"old")
    client.put(b"c", b"doomed")
    base = client.revision()

    response = client.txn(
        [],
        [put_op(b"a", b"new"), put_op(b"b", b"new"), delete_op(b"c"), range_op(b"a"), range_op(b"c")],
    )
    assert response.succeeded
    assert response.header.revision == base + 1
    put_a, put_b, delete_c, read_a, read_c = response.responses
    assert put_a.response_put.header.revision == base + 1
    assert put_b.response_put.header.revision == base + 1
    deleted = delete_c.response_delete_range
    assert (deleted.header.revision, deleted.deleted) == (base + 1, 1)
    assert [kv_tuple(kv) for kv in read_a.response_range.kvs] == [(b"a", b"new", base - 1, base + 1, 2, 0)]
    assert read_a.response_range.header.revision == base + 1
    assert (list(read_c.response_range.kvs), read_c.response_range.count) == ([], 0)

    assert [(kv.key, kv.mod_revision) for kv in client.get(b"\0", b"\0").kvs] == [
        (b"a", base + 1),
        (b"b", base + 1),
    ]


def test_txns_without_writes_do_not_create_a_revision(client: Etcd) -> None:
    client.put(b"k", b"v")
    before = client.revision()

    failed = client.txn([compare(b"k", Compare.VERSION, EQUAL, 9)], [put_op(b"k", b"lost")], [range_op(b"k")])
    assert (failed.succeeded, failed.header.revision) == (False, before)
    assert failed.responses[0].response_range.header.revision == before

    read_only = client.txn([compare(b"k", Compare.VERSION, EQUAL, 1)], [range_op(b"k")])
    assert (read_only.succeeded, read_only.header.revision) == (True, before)

    assert client.get(b"k").kvs[0].value == b"v"
    assert client.put(b"other").header.revision == before + 1


def test_nested_txn(client: Etcd) -> None:
    client.put(b"x", b"1")
    base = client.revision()

    response = client.txn(
        [compare(b"x", Compare.VERSION, EQUAL, 1)],
        [
            put_op(b"y", b"new"),
            nested_txn_op(
                # Every compare, nested ones included, is evaluated before any op runs: y is still missing.
                [compare(b"y", Compare.VERSION, EQUAL, 1)],
                [put_op(b"nested-success")],
                [put_op(b"nested-failure"), range_op(b"y")],
            ),
        ],
    )
    assert response.succeeded
    assert response.header.revision == base + 1
    put_y, nested = response.responses
    assert put_y.response_put.header.revision == base + 1
    assert not nested.response_txn.succeeded
    nested_put, nested_read = nested.response_txn.responses
    assert nested_put.response_put.header.revision == base + 1
    assert [(kv.key, kv.value, kv.mod_revision) for kv in nested_read.response_range.kvs] == [(b"y", b"new", base + 1)]
    assert keys_of(client.get(b"\0", b"\0")) == [b"nested-failure", b"x", b"y"]


def test_writing_a_key_twice_in_one_txn_is_rejected(client: Etcd) -> None:
    client.put(b"b", b"v")
    before = client.revision()

    conflicting = [
        [put_op(b"a", b"1"), put_op(b"a", b"2")],
        [put_op(b"b", b"1"), delete_op(b"b")],
        [put_op(b"b", b"1"), delete_op(b"a", b"c")],
        [put_op(b"a", b"1"), nested_txn_op([], [put_op(b"a", b"2")], [])],
        [put_op(b"a", b"1"), nested_txn_op([], [], [put_op(b"a", b"2")])],
    ]
    for ops in conflicting:
        with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_DUPLICATE_KEY):
            client.txn([], ops)
    assert client.revision() == before

    # The two branches of one txn never both run, so they may write the same key.
    assert client.txn([], [put_op(b"a", b"1")], [put_op(b"a", b"2")]).succeeded
    # Reads mixed with a write of the same key are fine.
    assert client.txn([], [range_op(b"a"), put_op(b"a", b"3"), range_op(b"a")]).succeeded


def test_kube_apiserver_create(client: Etcd) -> None:
    """Create: If(MOD(key) == 0) Then(Put)."""
    key = b"/registry/pods/p"
    lease = grant_lease(client, ttl=60)
    base = client.revision()

    created = client.txn([mod_revision_is(key, 0)], [put_op(key, b"v1", lease=lease)])
    assert (created.succeeded, created.header.revision) == (True, base + 1)
    assert created.responses[0].response_put.header.revision == base + 1
    assert not created.responses[0].response_put.HasField("prev_kv")
    stored = (key, b"v1", base + 1, base + 1, 1, lease)
    assert [kv_tuple(kv) for kv in client.get(key).kvs] == [stored]

    exists = client.txn([mod_revision_is(key, 0)], [put_op(key, b"v2")])
    assert (exists.succeeded, exists.header.revision, list(exists.responses)) == (False, base + 1, [])
    assert [kv_tuple(kv) for kv in client.get(key).kvs] == [stored]


def test_kube_apiserver_update(client: Etcd) -> None:
    """GuaranteedUpdate: If(MOD(key) == rev) Then(Put) Else(Range) — the Range returns the current object."""
    key = b"/registry/pods/p"
    created = client.put(key, b"v1").header.revision

    updated = client.txn([mod_revision_is(key, created)], [put_op(key, b"v2")], [range_op(key)])
    assert (updated.succeeded, updated.header.revision) == (True, created + 1)
    assert [op.WhichOneof("response") for op in updated.responses] == ["response_put"]
    assert updated.responses[0].response_put.header.revision == created + 1

    stale = client.txn([mod_revision_is(key, created)], [put_op(key, b"v3")], [range_op(key)])
    assert (stale.succeeded, stale.header.revision) == (False, created + 1)
    current = stale.responses[0].response_range
    assert [kv_tuple(kv) for kv in current.kvs] == [(key, b"v2", created, created + 1, 2, 0)]
    assert (current.count, current.more, current.header.revision) == (1, False, created + 1)


def test_kube_apiserver_delete(client: Etcd) -> None:
    """Delete: If(MOD(key) == rev) Then(DeleteRange) Else(Range)."""
    key = b"/registry/pods/p"
    created = client.put(key, b"v1").header.revision
    modified = client.put(key, b"v2").header.revision

    stale = client.txn([mod_revision_is(key, created)], [delete_op(key)], [range_op(key)])
    assert (stale.succeeded, stale.header.revision) == (False, modified)
    assert [kv_tuple(kv) for kv in stale.responses[0].response_range.kvs] == [(key, b"v2", created, modified, 2, 0)]

    deleted = client.txn([mod_revision_is(key, modified)], [delete_op(key)], [range_op(key)])
    assert (deleted.succeeded, deleted.header.revision) == (True, modified + 1)
    delete_response = deleted.responses[0].response_delete_range
    assert (delete_response.deleted, delete_response.header.revision) == (1, modified + 1)
    assert list(client.get(key).kvs) == []

    gone = client.txn([mod_revision_is(key, modified)], [delete_op(key)], [range_op(key)])
    assert (gone.succeeded, gone.header.revision) == (False, modified + 1)
    assert list(gone.responses[0].response_range.kvs) == []


def test_kube_apiserver_compaction_bookkeeping(client: Etcd) -> None:
    """The compactor: If(VERSION(compact_rev_key) == v) Then(Put(rev)) Else(Range), then Compact(rev)."""
    key = b"compact_rev_key"
    base = client.revision()

    first = client.txn([compare(key, Compare.VERSION, EQUAL, 0)], [put_op(key, b"%d" % base)], [range_op(key)])
    assert (first.succeeded, first.header.revision) == (True, base + 1)
    assert first.responses[0].response_put.header.revision == base + 1

    # Another apiserver won the race: it sees the key's current version in the Range and retries.
    lost = client.txn([compare(key, Compare.VERSION, EQUAL, 0)], [put_op(key, b"%d" % base)], [range_op(key)])
    assert (lost.succeeded, lost.header.revision) == (False, base + 1)
    assert [kv_tuple(kv) for kv in lost.responses[0].response_range.kvs] == [
        (key, b"%d" % base, base + 1, base + 1, 1, 0)
    ]

    second = client.txn([compare(key, Compare.VERSION, EQUAL, 1)], [put_op(key, b"%d" % (base + 1))], [range_op(key)])
    assert (second.succeeded, second.header.revision) == (True, base + 2)
    assert client.compact(base + 1).header.revision == base + 2
    assert client.get(key).kvs[0].version == 2

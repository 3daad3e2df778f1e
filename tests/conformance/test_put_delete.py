"""Put and DeleteRange: revisions and versions, prev_kv, leases, ignore_* flags and argument errors."""

from __future__ import annotations

import grpc

from tests._client import Compare, Etcd, delete_op, kv_tuple, put_op, range_op
from tests.conformance._support import (
    ERR_EMPTY_KEY,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_NOT_FOUND,
    grant_lease,
    keys_of,
    raises_rpc_error,
)


def test_put_creates_updates_and_recreates_a_key(client: Etcd) -> None:
    base = client.revision()

    created = client.put(b"a", b"v1", prev_kv=True)
    assert created.header.revision == base + 1
    assert not created.HasField("prev_kv")
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v1", base + 1, base + 1, 1, 0)]

    # Rewriting the same value is still a write: new revision, version bumped, create_revision kept.
    updated = client.put(b"a", b"v1", prev_kv=True)
    assert updated.header.revision == base + 2
    assert kv_tuple(updated.prev_kv) == (b"a", b"v1", base + 1, base + 1, 1, 0)
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v1", base + 1, base + 2, 2, 0)]

    # After a delete the key starts a new life: fresh create_revision, version back to 1.
    client.delete(b"a")
    recreated = client.put(b"a", b"v3").header.revision
    assert recreated == base + 4
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v3", recreated, recreated, 1, 0)]


def test_put_attaches_and_detaches_a_lease(client: Etcd) -> None:
    lease = grant_lease(client, ttl=60)

    client.put(b"a", b"v1", lease=lease)
    assert client.get(b"a").kvs[0].lease == lease

    # A put without a lease (and without ignore_lease) detaches the key from its lease.
    client.put(b"a", b"v2")
    assert client.get(b"a").kvs[0].lease == 0

    before = client.revision()
    with raises_rpc_error(grpc.StatusCode.NOT_FOUND, ERR_LEASE_NOT_FOUND):
        client.put(b"a", b"v3", lease=lease + 1)
    assert client.revision() == before


def test_ignore_value_and_ignore_lease_keep_the_current_fields(client: Etcd) -> None:
    lease = grant_lease(client, ttl=60)
    created = client.put(b"a", b"v1", lease=lease).header.revision

    kept_value = client.put(b"a", ignore_value=True, lease=lease).header.revision
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v1", created, kept_value, 2, lease)]

    kept_lease = client.put(b"a", b"v2", ignore_lease=True).header.revision
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v2", created, kept_lease, 3, lease)]

    both = client.put(b"a", ignore_value=True, ignore_lease=True, prev_kv=True)
    assert kv_tuple(both.prev_kv) == (b"a", b"v2", created, kept_lease, 3, lease)
    kept_both = both.header.revision
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"v2", created, kept_both, 4, lease)]


def test_ignore_flags_are_rejected_without_an_existing_key_or_with_a_conflicting_field(client: Etcd) -> None:
    client.put(b"present", b"v")
    before = client.revision()

    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_KEY_NOT_FOUND):
        client.put(b"missing", ignore_value=True)
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_KEY_NOT_FOUND):
        client.put(b"missing", b"v", ignore_lease=True)
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided"):
        client.put(b"present", b"v", ignore_value=True)
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided"):
        client.put(b"present", lease=1, ignore_lease=True)

    assert client.revision() == before
    assert list(client.get(b"missing").kvs) == []


def test_empty_key_is_rejected(client: Etcd) -> None:
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_EMPTY_KEY):
        client.put(b"", b"v")
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_EMPTY_KEY):
        client.get(b"")
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_EMPTY_KEY):
        client.delete(b"")
    for op in (put_op(b""), range_op(b""), delete_op(b"")):
        with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_EMPTY_KEY):
            client.txn([], [op])
    with raises_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, ERR_EMPTY_KEY):
        client.txn([Compare(key=b"", target=Compare.VERSION, version=0)], [])


def test_delete_single_keys_and_ranges(client: Etcd) -> None:
    for key in (b"a", b"b", b"c", b"d", b"e", b"f"):
        client.put(key, b"value of " + key)
    base = client.revision()

    single = client.delete(b"a")
    assert (single.header.revision, single.deleted, list(single.prev_kvs)) == (base + 1, 1, [])

    # A range delete removes every key in [key, range_end) at one revision, prev_kvs in key order.
    ranged = client.delete(b"b", b"d", prev_kv=True)
    assert (ranged.header.revision, ranged.deleted) == (base + 2, 2)
    assert [(kv.key, kv.value, kv.version) for kv in ranged.prev_kvs] == [
        (b"b", b"value of b", 1),
        (b"c", b"value of c", 1),
    ]

    from_key = client.delete(b"e", b"\0")
    assert (from_key.header.revision, from_key.deleted) == (base + 3, 2)

    assert keys_of(client.get(b"\0", b"\0")) == [b"d"]

    # Deleting nothing writes nothing, so it does not create a revision.
    for nothing in (client.delete(b"a"), client.delete(b"x", b"z", prev_kv=True)):
        assert (nothing.header.revision, nothing.deleted, list(nothing.prev_kvs)) == (base + 3, 0, [])
    assert client.put(b"z").header.revision == base + 4

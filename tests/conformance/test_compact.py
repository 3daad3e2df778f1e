"""Compact: what survives a compaction, which revisions it rejects, and watches below it."""

from __future__ import annotations

import grpc

from tests._client import Etcd, kv_tuple
from tests.conformance._support import ERR_COMPACTED, ERR_FUTURE_REV, WatchStream, keys_of, raises_rpc_error


def test_compaction_keeps_the_latest_version_of_each_key(client: Etcd) -> None:
    a_created = client.put(b"a", b"1").header.revision
    a_latest = client.put(b"a", b"2").header.revision
    client.put(b"b", b"1")
    client.delete(b"b")
    c_created = compacted_at = client.put(b"c", b"1").header.revision

    assert client.compact(compacted_at).header.revision == compacted_at

    at_compaction = client.get(b"\0", b"\0", revision=compacted_at)
    assert [kv_tuple(kv) for kv in at_compaction.kvs] == [
        (b"a", b"2", a_created, a_latest, 2, 0),
        (b"c", b"1", c_created, c_created, 1, 0),
    ]
    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.get(b"a", revision=compacted_at - 1)

    # Revisions keep counting, and version and create_revision carry on from before the compaction.
    after = client.put(b"a", b"3").header.revision
    assert after == compacted_at + 1
    assert [kv_tuple(kv) for kv in client.get(b"a").kvs] == [(b"a", b"3", a_created, after, 3, 0)]
    assert keys_of(client.get(b"\0", b"\0")) == [b"a", b"c"]


def test_physical_compaction(client: Etcd) -> None:
    client.put(b"a", b"1")
    latest = client.put(b"a", b"2").header.revision

    assert client.compact(latest, physical=True).header.revision == latest

    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.get(b"a", revision=latest - 1)
    assert client.get(b"a").kvs[0].value == b"2"


def test_compaction_rejects_future_and_already_compacted_revisions(client: Etcd) -> None:
    client.put(b"a", b"1")
    client.put(b"a", b"2")
    current = client.put(b"a", b"3").header.revision

    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_FUTURE_REV):
        client.compact(current + 1)

    client.compact(current - 1)
    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.compact(current - 1)
    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.compact(current - 2)
    assert client.compact(current).header.revision == current


def test_watch_below_the_compaction_is_canceled_but_at_it_replays(client: Etcd) -> None:
    client.put(b"k", b"1")
    compacted_at = client.put(b"k", b"2").header.revision
    client.compact(compacted_at)

    with WatchStream(client) as stream:
        stream.send_create(b"k", start_revision=compacted_at - 1)
        created = stream.next()
        assert created.created
        canceled = stream.next()
        assert (canceled.watch_id, canceled.canceled, canceled.compact_revision) == (
            created.watch_id,
            True,
            compacted_at,
        )
        assert list(canceled.events) == []

        replaying = stream.create(b"k", start_revision=compacted_at)
        [event] = stream.events(1, replaying)
        assert (event.kv.value, event.kv.mod_revision) == (b"2", compacted_at)

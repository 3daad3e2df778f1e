"""Range: key and interval selection, pagination, historical reads, filters and sorting."""

from __future__ import annotations

import grpc

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd, kv_tuple, prefix_end
from tests.conformance._support import ERR_COMPACTED, ERR_FUTURE_REV, keys_of, raises_rpc_error

RangeRequest = rpc_pb2.RangeRequest


def put_keys(client: Etcd, *keys: bytes) -> None:
    for key in keys:
        client.put(key, b"value of " + key)


def test_key_and_interval_selection(client: Etcd) -> None:
    base = client.revision()
    put_keys(client, b"a", b"ab", b"b", b"c", b"d")

    exact = client.get(b"a")
    assert [kv_tuple(kv) for kv in exact.kvs] == [(b"a", b"value of a", base + 1, base + 1, 1, 0)]
    assert (exact.count, exact.more) == (1, False)

    missing = client.get(b"zz")
    assert (list(missing.kvs), missing.count, missing.more) == ([], 0, False)

    # range_end is exclusive; b"\0" as range_end means "every key >= key".
    assert keys_of(client.get(b"ab", b"c")) == [b"ab", b"b"]
    assert keys_of(client.get(b"b", b"\0")) == [b"b", b"c", b"d"]
    assert keys_of(client.get(b"\0", b"\0")) == [b"a", b"ab", b"b", b"c", b"d"]
    assert client.get(b"\0", b"\0").header.revision == base + 5


def test_prefix_ranges(client: Etcd) -> None:
    put_keys(client, b"/registry/pods/a", b"/registry/pods/b", b"/registry/podsx", b"/registry/services/a")
    put_keys(client, b"p\xff", b"p\xff\x01", b"q")

    assert keys_of(client.get_prefix(b"/registry/pods/")) == [b"/registry/pods/a", b"/registry/pods/b"]
    assert keys_of(client.get_prefix(b"/registry/")) == [
        b"/registry/pods/a",
        b"/registry/pods/b",
        b"/registry/podsx",
        b"/registry/services/a",
    ]
    # A trailing 0xff byte carries into the previous byte: prefix b"p\xff" ends at b"q".
    assert keys_of(client.get_prefix(b"p\xff")) == [b"p\xff", b"p\xff\x01"]


def test_limit_count_only_and_keys_only(client: Etcd) -> None:
    base = client.revision()
    put_keys(client, b"k1", b"k2", b"k3", b"k4", b"k5")

    limited = client.get_prefix(b"k", limit=2)
    assert (keys_of(limited), limited.more, limited.count) == ([b"k1", b"k2"], True, 5)

    exactly_all = client.get_prefix(b"k", limit=5)
    assert (len(exactly_all.kvs), exactly_all.more, exactly_all.count) == (5, False, 5)

    unlimited = client.get_prefix(b"k", limit=0)
    assert (len(unlimited.kvs), unlimited.more, unlimited.count) == (5, False, 5)

    counted = client.get_prefix(b"k", count_only=True)
    assert (list(counted.kvs), counted.count, counted.more) == ([], 5, False)

    keys_only = client.get_prefix(b"k", keys_only=True, limit=2)
    assert [kv_tuple(kv) for kv in keys_only.kvs] == [
        (b"k1", b"", base + 1, base + 1, 1, 0),
        (b"k2", b"", base + 2, base + 2, 1, 0),
    ]


def test_pages_at_a_fixed_revision_form_a_consistent_snapshot(client: Etcd) -> None:
    """kube-apiserver paginates a LIST by re-reading at the first page's revision from last key + b"\\0"."""
    put_keys(client, b"k0", b"k1", b"k2", b"k3", b"k4")
    snapshot = client.revision()
    client.delete(b"k1")
    client.put(b"k2", b"changed later")
    client.put(b"k5", b"created later")
    current = client.revision()

    pages: list[rpc_pb2.RangeResponse] = []
    start = b"k"
    while True:
        page = client.get(start, prefix_end(b"k"), limit=2, revision=snapshot)
        pages.append(page)
        if not page.more:
            break
        start = page.kvs[-1].key + b"\0"

    assert [keys_of(page) for page in pages] == [[b"k0", b"k1"], [b"k2", b"k3"], [b"k4"]]
    assert [page.count for page in pages] == [5, 3, 1]
    assert pages[1].kvs[0].value == b"value of k2"
    assert all(page.header.revision == current for page in pages)


def test_reads_at_old_revisions_see_history(client: Etcd) -> None:
    first = client.put(b"a", b"1").header.revision
    second = client.put(b"a", b"2").header.revision
    with_b = client.put(b"b", b"1").header.revision
    deleted = client.delete(b"a").header.revision

    at_first = client.get(b"a", revision=first)
    assert [kv_tuple(kv) for kv in at_first.kvs] == [(b"a", b"1", first, first, 1, 0)]
    at_second = client.get(b"a", revision=second)
    assert [kv_tuple(kv) for kv in at_second.kvs] == [(b"a", b"2", first, second, 2, 0)]
    assert list(client.get(b"a", revision=deleted).kvs) == []
    assert keys_of(client.get(b"\0", b"\0", revision=first)) == [b"a"]
    assert keys_of(client.get(b"\0", b"\0", revision=with_b)) == [b"a", b"b"]
    assert keys_of(client.get(b"\0", b"\0", revision=0)) == [b"b"]

    # The header always carries the current revision, whatever revision was read.
    assert at_first.header.revision == deleted
    assert at_second.header.revision == deleted


def test_reads_outside_the_kept_history_fail(client: Etcd) -> None:
    client.put(b"a", b"1")
    compacted_at = client.put(b"a", b"2").header.revision
    current = client.put(b"a", b"3").header.revision
    client.compact(compacted_at)

    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_FUTURE_REV):
        client.get(b"a", revision=current + 1)
    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.get(b"a", revision=compacted_at - 1)

    assert client.get(b"a", revision=compacted_at).kvs[0].value == b"2"
    assert client.get(b"a", revision=current).kvs[0].value == b"3"


def test_mod_and_create_revision_filters(client: Etcd) -> None:
    a_created = client.put(b"a").header.revision
    b_created = client.put(b"b").header.revision
    c_created = client.put(b"c").header.revision
    client.put(b"a")

    def filtered(**filters: int) -> rpc_pb2.RangeResponse:
        return client.get(b"\0", b"\0", **filters)

    assert keys_of(filtered(min_mod_revision=c_created)) == [b"a", b"c"]
    assert keys_of(filtered(max_mod_revision=b_created)) == [b"b"]
    assert keys_of(filtered(min_create_revision=b_created)) == [b"b", b"c"]
    assert keys_of(filtered(max_create_revision=a_created)) == [b"a"]
    assert keys_of(filtered(min_mod_revision=b_created, max_mod_revision=c_created)) == [b"b", b"c"]

    # count ignores the filters; `more` and the limit apply to the filtered keys.
    limited = filtered(min_mod_revision=c_created, limit=1)
    assert (keys_of(limited), limited.more, limited.count) == ([b"a"], True, 3)


def test_sort_by_every_target_and_order(client: Etcd) -> None:
    # Chosen so that every sort target gives a different order, with no ties.
    client.put(b"c", b"m")
    client.put(b"a", b"z")
    client.put(b"b", b"a")
    client.put(b"c", b"m")
    client.put(b"c", b"m")
    client.put(b"a", b"z")
    # Now a: created 2nd, version 2, modified last, value z; b: created 3rd, version 1, value a;
    # c: created 1st, version 3, value m.
    ascending = {
        RangeRequest.KEY: [b"a", b"b", b"c"],
        RangeRequest.VERSION: [b"b", b"a", b"c"],
        RangeRequest.CREATE: [b"c", b"a", b"b"],
        RangeRequest.MOD: [b"b", b"c", b"a"],
        RangeRequest.VALUE: [b"b", b"c", b"a"],
    }

    def sorted_keys(target: int, order: int, limit: int = 0) -> list[bytes]:
        return keys_of(client.get(b"\0", b"\0", sort_target=target, sort_order=order, limit=limit))

    for target, expected in ascending.items():
        name = RangeRequest.SortTarget.Name(target)
        assert sorted_keys(target, RangeRequest.ASCEND) == expected, name
        assert sorted_keys(target, RangeRequest.DESCEND) == expected[::-1], name
        # No order with a target other than KEY still sorts ascending by that target.
        assert sorted_keys(target, RangeRequest.NONE) == expected, name

    # Sorting happens before the limit cuts the result.
    top = client.get(b"\0", b"\0", sort_target=RangeRequest.KEY, sort_order=RangeRequest.DESCEND, limit=2)
    assert (keys_of(top), top.more, top.count) == ([b"c", b"b"], True, 3)
    assert sorted_keys(RangeRequest.MOD, RangeRequest.DESCEND, limit=1) == [b"a"]


def test_keys_only_results_are_still_sorted_by_their_values(client: Etcd) -> None:
    client.put(b"/v/a", b"z")
    client.put(b"/v/ab", b"a")
    response = client.get_prefix(
        b"/v/", keys_only=True, sort_target=rpc_pb2.RangeRequest.VALUE, sort_order=rpc_pb2.RangeRequest.ASCEND
    )
    assert keys_of(response) == [b"/v/ab", b"/v/a"]
    assert [kv.value for kv in response.kvs] == [b"", b""]

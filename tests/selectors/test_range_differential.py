"""Range with label and field selectors: every answer compared with Kubernetes' own matching.

Each hypothesis example writes a population of Kubernetes objects under realistic keys (pods and secrets in JSON
and in protobuf, custom resources of a CRD with selectable fields, a few encrypted values), updates and deletes some
so that history exists, then asks many selectors across the grammar. For each selector the server's answer must
equal the reference model's (tests/selectors/_reference.py, from Kubernetes' source) on: every page of a list
continued the way kube-apiserver continues it (while another client writes), `count` and `more` on each page,
keys_only, count_only, single keys, and reads at earlier revisions, which select by the labels each key had then.

The plain tests after it pin the failure shapes other selector implementations shipped with.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd, prefix_end, range_op
from tests.selectors._generate import Draw, Population, populate, ranges, selectors
from tests.selectors._keyspace import Keyspace, Stored, keys, kv_tuple, select
from tests.selectors._reference import Encoding, Meta, Pod, Selector, encrypted, parse_selector

# Few examples, many selectors each: the population is the slow part to write, the reads are cheap. No
# shrinking: every step is a round trip, and a failure names its selector, range and revision already.
SETTINGS = settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)
SELECTORS_PER_EXAMPLE = 40

# --- the property ----------------------------------------------------------------------------------------------


def describe(keyspace: Keyspace, revision: int, start: bytes, end: bytes) -> str:
    live = keyspace.at(revision)
    lines = [f"  {key!r}: {live[key].selectable}" for key in sorted(live) if start <= key < (end or start + b"\0")]
    return f"keys live at {revision} in [{start!r}, {end!r}):\n" + "\n".join(lines)


def assert_page(
    response: rpc_pb2.RangeResponse, expected_rest: list[Stored], limit: int, keys_only: bool, context: str
) -> None:
    """One response: the first `limit` matches, `count` all matches in its range, `more` whether any remain."""
    page = expected_rest[:limit] if limit else expected_rest
    assert [kv_tuple(kv) for kv in response.kvs] == [s.as_tuple(keys_only) for s in page], context
    assert response.count == len(expected_rest), context
    assert response.more == (len(page) < len(expected_rest)), context


def check_list(
    population: Population, draw: Draw, label_selector: str, field_selector: str, selector: Selector
) -> None:
    """A paged list as kube-apiserver continues it: next key after the last, revision of the first page."""
    keyspace = population.keyspace
    start, end = draw(ranges(population))
    limit = draw(st.integers(1, 7), label="limit")
    keys_only = draw(st.booleans(), label="keys_only")
    interfere = draw(st.booleans(), label="write between pages")
    cursor, revision = start, 0
    while True:
        response = select(
            keyspace.client,
            label_selector,
            field_selector,
            cursor,
            end,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
        )
        if not revision:
            revision = int(response.header.revision)
            assert revision == keyspace.revision, "a read answers at the current revision"
            if interfere:
                population.change(draw)
        rest = keyspace.selected(selector, revision, cursor, end)
        context = (
            f"labelSelector={label_selector!r} fieldSelector={field_selector!r} limit={limit} page from {cursor!r}\n"
        )
        assert_page(response, rest, limit, keys_only, context + describe(keyspace, revision, start, end))
        if not response.more:
            return
        cursor = response.kvs[-1].key + b"\0"


def check_selector(
    population: Population, draw: Draw, label_selector: str, field_selector: str, selector: Selector
) -> None:
    keyspace, client = population.keyspace, population.keyspace.client
    check_list(population, draw, label_selector, field_selector, selector)
    context = f"labelSelector={label_selector!r} fieldSelector={field_selector!r}"

    start, end = draw(ranges(population))
    current = keyspace.revision
    expected = keyspace.selected(selector, current, start, end)
    counted = select(client, label_selector, field_selector, start, end, count_only=True)
    assert (list(counted.kvs), counted.count, counted.more) == ([], len(expected), False), (
        f"count_only {context}\n{describe(keyspace, current, start, end)}"
    )

    revision = keyspace.revision_of(draw(st.integers(0, len(keyspace.changes)), label="earlier revision"))
    start, end = draw(ranges(population))
    response = select(client, label_selector, field_selector, start, end, revision=revision)
    assert_page(
        response,
        keyspace.selected(selector, revision, start, end),
        0,
        False,
        f"{context} at {revision}\n{describe(keyspace, revision, start, end)}",
    )

    for key in draw(
        st.lists(
            st.sampled_from(sorted({*population.identities, b"/registry/pods/default/never"})), min_size=1, max_size=2
        )
    ):
        # 0 reads the current revision; the others are named by their place in the example, as the
        # numbers themselves differ from run to run.
        halfway = keyspace.revision_of(len(keyspace.changes) // 2)
        revision = draw(st.sampled_from((0, current, halfway)), label="single key revision")
        response = select(client, label_selector, field_selector, key, revision=revision)
        expected = keyspace.selected(selector, revision or current, key, b"")
        assert_page(
            response,
            expected,
            0,
            False,
            f"single key {key!r} {context} at {revision}\n{describe(keyspace, revision or current, key, b'')}",
        )


def test_selecting_reads_match_kubernetes(store_client: Etcd) -> None:
    keyspace = Keyspace(store_client)

    @SETTINGS
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        population = populate(keyspace, data.draw)
        for _ in range(SELECTORS_PER_EXAMPLE):
            label_selector, field_selector = data.draw(selectors(), label="selector")
            selector = parse_selector(label_selector, field_selector)
            check_selector(population, data.draw, label_selector, field_selector, selector)

    example()


# --- failure shapes of other implementations -------------------------------------------------------------------


def pod(name: str, labels: dict[str, str] | None = None, node_name: str = "", host_network: bool = False) -> Pod:
    meta = Meta(name, "shapes", labels or {}, annotations={"app": "annotated"})
    return Pod(meta, node_name=node_name, host_network=host_network)


TIERS = [
    pod("frontend", {"tier": "frontend"}),
    pod("backend", {"tier": "backend"}),
    pod("untiered", {"app": "web"}),
    pod("bare"),
]
APPS = [
    pod("web", {"app": "web"}),
    pod("db", {"app": "db"}),
    pod("cache", {"app": "cache"}),
    pod("appless", {"tier": "backend"}),
]
RANKS = [pod(f"rank-{value}", {"rank": value}) for value in ("10", "9", "007", "x1", "-3", "100")] + [pod("unranked")]
NODES_PODS = [pod("on-node1", node_name="node1"), pod("on-node10", node_name="node10"), pod("unscheduled")]
# Three matches spread among non-matches: lists that stop after their first page lose the rest.
SPREAD = [pod(f"pod-{i:02}", {"app": "web" if i in (2, 7, 11) else "db"}) for i in range(12)]


@dataclass(frozen=True)
class Shape:
    pods: list[Pod]
    label_selector: str
    field_selector: str
    expected: list[str]


SHAPES = {
    "!key with several labels": Shape(
        [
            pod("none"),
            pod("one", {"app": "web"}),
            pod("two", {"app": "web", "env": "prod"}),
            pod("tiered", {"tier": "frontend", "app": "web"}),
        ],
        "!tier",
        "",
        ["none", "one", "two"],
    ),
    "!= without the key": Shape(TIERS, "tier!=frontend", "", ["backend", "bare", "untiered"]),
    "notin without the key": Shape(TIERS, "tier notin (frontend)", "", ["backend", "bare", "untiered"]),
    "two != on one key": Shape(APPS, "app!=web,app!=db", "", ["appless", "cache"]),
    "two notin on one key": Shape(APPS, "app notin (web),app notin (cache)", "", ["appless", "db"]),
    "gt as integers": Shape(RANKS, "rank>9", "", ["rank-10", "rank-100"]),
    "lt as integers": Shape(RANKS, "rank<10", "", ["rank--3", "rank-007", "rank-9"]),
    "field = exact": Shape(NODES_PODS, "", "spec.nodeName=node1", ["on-node1"]),
    "field != exact": Shape(NODES_PODS, "", "spec.nodeName!=node1", ["on-node10", "unscheduled"]),
    "field = empty": Shape(NODES_PODS, "", "spec.nodeName=", ["unscheduled"]),
    "unset hostNetwork reads false": Shape(
        [pod("host", host_network=True), pod("plain")], "", "spec.hostNetwork=false", ["plain"]
    ),
    "matches beyond the first page": Shape(SPREAD, "app=web", "", ["pod-02", "pod-07", "pod-11"]),
}


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_failure_shapes_of_other_implementations(store_client: Etcd, shape: str, encoding: Encoding) -> None:
    case = SHAPES[shape]
    keyspace = Keyspace(store_client)
    keyspace.wipe()
    for p in case.pods:
        keyspace.put(p.key, p.encode(encoding), p.selectable())
    selector = parse_selector(case.label_selector, case.field_selector)
    prefix = b"/registry/pods/shapes/"
    expected = keyspace.selected(selector, keyspace.revision, prefix, prefix_end(prefix))
    assert keys(expected) == [pod(name).key for name in case.expected], "the reference model disagrees with the case"
    for limit in (0, 1, 2):
        listed, cursor, revision = [], prefix, 0
        while True:
            response = select(
                store_client,
                case.label_selector,
                case.field_selector,
                cursor,
                prefix_end(prefix),
                limit=limit,
                revision=revision,
            )
            revision = int(response.header.revision)
            listed += [kv.key for kv in response.kvs]
            if not response.more:
                break
            cursor = response.kvs[-1].key + b"\0"
        assert listed == keys(expected), f"limit {limit}"


def test_encrypted_values_are_never_filtered_out(store_client: Etcd) -> None:
    keyspace = Keyspace(store_client)
    keyspace.wipe()
    web, db = pod("web", {"app": "web"}), pod("db", {"app": "db"})
    for p in (web, db):
        keyspace.put(p.key, p.encode("protobuf"), p.selectable())
    sealed = b"/registry/pods/shapes/sealed"
    keyspace.put(sealed, encrypted(b"\x00\x01\x02 ciphertext"), None)
    response = select(
        store_client, "app=web", "spec.nodeName=node1", b"/registry/pods/", prefix_end(b"/registry/pods/")
    )
    assert [kv.key for kv in response.kvs] == [sealed]


def test_txn_range_selects_like_range(store_client: Etcd) -> None:
    """A RangeRequest means the same inside a Txn: a server ignoring the selector there would over-answer."""
    keyspace = Keyspace(store_client)
    keyspace.wipe()
    for p in APPS:
        keyspace.put(p.key, p.encode("json"), p.selectable())
    prefix = b"/registry/pods/shapes/"
    request = range_op(
        prefix, prefix_end(prefix), labelSelector="app in (web,cache)", fieldSelector="metadata.name!=cache"
    )
    response = store_client.txn([], [request])
    assert [kv.key for kv in response.responses[0].response_range.kvs] == [pod("web").key]

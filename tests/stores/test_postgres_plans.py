"""The PostgreSQL store's reads are index scans, never a sequential scan of kv.

A database is loaded with ~20k rows (live versions, superseded versions and tombstones) through the
store's own write API, and EXPLAIN shows the plan of each query the store sends, built by the store's
own code with the store's own session settings. Plans are checked twice: as loaded, before any
statistics exist, and after ANALYZE (what autovacuum keeps up to date).

A page (LIMIT 501) of a big prefix must come from an index in key order, so that it stops after 501
rows, once statistics tell the planner the prefix is big. Whole ranges and counts are checked on small
prefixes only: for a range holding half of the table a sequential scan is the cheaper plan, and
PostgreSQL rightly takes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from kubefabric.stores import Change, KeyValue, WriteBatch
from kubefabric.stores._postgres import (
    CHANGES,
    COMPACT_CHUNK,
    LATEST,
    POINT_READ,
    SERVER_SETTINGS,
    PostgresStore,
    range_queries,
)
from tests._client import prefix_end
from tests._databases import postgres_endpoint
from tests.stores._keyspace import key, prefix

# Key prefixes like Kubernetes resource types: one big (pods), many small. A page of a small prefix
# may be read whole and sorted (the planner finds that cheaper); a page of the big one must stop
# after its first 501 keys in index order.
OBJECTS = {0: 10_000, **dict.fromkeys(range(1, 11), 1000)}
BIG, SMALL = 0, 7
VALUE = b"v" * 256
LIMIT = 501  # kube-apiserver's page of 500, plus one to tell whether there is more


async def load(endpoint: str) -> tuple[int, int]:
    """Create every key, update every 4th, delete every 20th: (revision mid-way, head revision)."""
    store = PostgresStore(endpoint)
    await store.open()
    revision = 1
    live: dict[bytes, KeyValue] = {}

    async def commit(changes: list[Change]) -> None:
        await store.write(WriteBatch(changes[-1].kv.mod_revision, changes))

    for resource, objects in OBJECTS.items():
        for first in range(0, objects, 1000):
            changes = []
            for name in range(first, min(first + 1000, objects)):
                revision += 1
                kv = live[key(resource, name)] = KeyValue(key(resource, name), revision, revision, 1, VALUE, 0)
                changes.append(Change(kv, 0, None))
            await commit(changes)
    middle = revision
    keys = sorted(live)
    changes = []
    for k in keys[::4]:
        revision += 1
        prev = live[k]
        kv = live[k] = KeyValue(k, prev.create_revision, revision, prev.version + 1, VALUE, 0)
        changes.append(Change(kv, 0, prev))
    for k in keys[1::20]:
        revision += 1
        changes.append(Change(KeyValue(k, 0, revision, 0, b"", 0), 0, live.pop(k)))
    for start in range(0, len(changes), 1000):
        await commit(changes[start : start + 1000])
    await store.close()
    return middle + len(changes) // 2, revision


@dataclass(frozen=True)
class Loaded:
    endpoint: str
    past: int  # a revision between the first and the last write
    head: int
    analyzed: bool


@pytest.fixture(scope="module", params=["as loaded", "analyzed"])
def database(request: pytest.FixtureRequest) -> Loaded:
    endpoint = postgres_endpoint()
    past, head = asyncio.run(load(endpoint))
    analyzed = request.param == "analyzed"
    if analyzed:
        asyncio.run(execute(endpoint, "ANALYZE kv"))
    return Loaded(endpoint, past, head, analyzed)


async def execute(endpoint: str, statement: str) -> None:
    connection = await asyncpg.connect(endpoint)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def plan_of(endpoint: str, query: str, *params: object) -> dict[str, Any]:
    async def explain() -> dict[str, Any]:
        connection = await asyncpg.connect(endpoint, server_settings=SERVER_SETTINGS)
        try:
            return json.loads(await connection.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *params))[0]["Plan"]
        finally:
            await connection.close()

    return asyncio.run(explain())


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def assert_indexed(plan: dict[str, Any], ordered: bool = False) -> None:
    """No sequential scan of kv; `ordered`: rows come in key order from the index, no Sort first."""
    shown = json.dumps(plan, indent=1)
    for node in nodes(plan):
        assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "kv"), shown
        if ordered:
            assert node["Node Type"] not in ("Sort", "Incremental Sort"), shown


RANGES = {
    "a big prefix": (prefix(BIG), prefix_end(prefix(BIG))),
    "the rest of a big prefix": (key(BIG, 4500), prefix_end(prefix(BIG))),
    "from a key to the end of the keyspace": (key(BIG, 4500), b""),
    "a small prefix": (prefix(SMALL), prefix_end(prefix(SMALL))),
    "the rest of a small prefix": (key(SMALL, 450), prefix_end(prefix(SMALL))),
    "one key": (key(SMALL, 123), None),
}
BIG_RANGES = ["a big prefix", "the rest of a big prefix", "from a key to the end of the keyspace"]


@pytest.mark.parametrize("keys", RANGES)
@pytest.mark.parametrize("at", ["head", "past revision"])
def test_a_page_of_a_range_uses_an_index(database: Loaded, keys: str, at: str) -> None:
    start, end = RANGES[keys]
    select, _, params = range_queries(start, end, database.past if at == "past revision" else None, LIMIT, False)
    plan = plan_of(database.endpoint, select, *params)
    assert_indexed(plan, ordered=database.analyzed and keys in BIG_RANGES)


@pytest.mark.parametrize("keys", BIG_RANGES)
@pytest.mark.parametrize("at", ["head", "past revision"])
def test_a_later_page_of_a_list_uses_an_index(database: Loaded, keys: str, at: str) -> None:
    """Pages after a list's first read the versions at its revision (maybe still the head) in one
    statement that also reads the head revision."""
    start, end = RANGES[keys]
    revision = database.head if at == "head" else database.past
    select, _, params = range_queries(start, end, revision, LIMIT, False, head_column=True)
    assert_indexed(plan_of(database.endpoint, select, *params), ordered=database.analyzed)


@pytest.mark.parametrize("keys", [name for name in RANGES if name not in BIG_RANGES])
@pytest.mark.parametrize("at", ["head", "past revision"])
def test_whole_small_ranges_and_their_counts_use_an_index(database: Loaded, keys: str, at: str) -> None:
    start, end = RANGES[keys]
    select, count, params = range_queries(start, end, database.past if at == "past revision" else None, 0, False)
    assert_indexed(plan_of(database.endpoint, select, *params))
    assert_indexed(plan_of(database.endpoint, count, *params))


def test_a_keys_only_page_uses_an_index(database: Loaded) -> None:
    select, _, params = range_queries(prefix(BIG), prefix_end(prefix(BIG)), None, LIMIT, True)
    assert_indexed(plan_of(database.endpoint, select, *params), ordered=database.analyzed)


@pytest.mark.parametrize("after", ["recent", "oldest"])
def test_a_history_page_uses_an_index(database: Loaded, after: str) -> None:
    after_revision = database.past if after == "recent" else 0
    assert_indexed(plan_of(database.endpoint, CHANGES, after_revision, database.head, 1000))


def test_point_reads_and_compaction_use_an_index(database: Loaded) -> None:
    assert_indexed(plan_of(database.endpoint, LATEST, [key(SMALL, 123), key(SMALL, 125)]))
    assert_indexed(plan_of(database.endpoint, POINT_READ, key(SMALL, 123)))
    assert_indexed(plan_of(database.endpoint, COMPACT_CHUNK, database.past))

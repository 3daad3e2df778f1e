"""The MySQL store's reads walk an index in the order they return rows: no filesort, no temporary table.

A database is loaded with ~20k rows (live versions, superseded versions and tombstones) through the
store's own write API, its statistics are refreshed (ANALYZE TABLE), and EXPLAIN shows the plan of each
query the store sends, built by the store's own code and run on the store's own connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from kubefabric.stores import Change, KeyValue, WriteBatch
from kubefabric.stores._mysql import (
    CHANGES,
    COMPACT_CHUNK,
    COUNT_RANGE,
    LAST_REVISION_OF_PAGE,
    LATEST,
    POINT_READ,
    MysqlStore,
    range_rows,
    select_range,
)
from tests._client import prefix_end
from tests._databases import mysql_endpoint
from tests.stores._keyspace import key, prefix

# Key prefixes like Kubernetes resource types: one big (pods), a few small.
OBJECTS = {0: 10_000, **dict.fromkeys(range(1, 6), 1000)}
BIG, SMALL = 0, 3
VALUE = b"v" * 256
LIMIT = 501  # kube-apiserver's page of 500, plus one to tell whether there is more
BATCH = 1000


async def load(store: MysqlStore) -> tuple[int, int]:
    """Create every key, update every 3rd, delete every 20th: (revision mid-way, head revision)."""
    revision = (await store.open()).revision
    live: dict[bytes, KeyValue] = {}
    pending: list[Change] = []

    async def add(kv: KeyValue, prev: KeyValue | None) -> None:
        pending.append(Change(kv, 0, prev))
        if len(pending) == BATCH:
            await store.write(WriteBatch(revision, pending[:]))
            pending.clear()

    for resource, objects in OBJECTS.items():
        for name in range(objects):
            revision += 1
            kv = live[key(resource, name)] = KeyValue(key(resource, name), revision, revision, 1, VALUE, 0)
            await add(kv, None)
    middle = revision
    for index, k in enumerate(sorted(live)):
        prev = live[k]
        if index % 20 == 0:
            revision += 1
            await add(KeyValue(k, 0, revision, 0, b"", 0), prev)
        elif index % 3 == 0:
            revision += 1
            await add(prev._replace(mod_revision=revision, version=2), prev)
    if pending:
        await store.write(WriteBatch(revision, pending))
    return middle, revision


def statements(middle: int, head: int) -> dict[str, tuple[str, list[object]]]:
    """Every read the store sends, in the shapes it sends them."""
    big, small = prefix(BIG), prefix(SMALL)
    shapes: dict[str, tuple[str, list[object]]] = {}
    for label, revision in (("head", None), ("historical", middle)):
        ranges = {
            "big page": (big, prefix_end(big), LIMIT),
            "small whole": (small, prefix_end(small), 0),
            "open-ended page": (b"/registry/", b"", LIMIT),
            "one key": (key(SMALL, 7), None, 0),
        }
        for name, (start, end, limit) in ranges.items():
            rows, params = range_rows(start, end, revision)
            shapes[f"{label} range: {name}"] = (select_range(rows, False, limit), params)
            shapes[f"{label} range: {name}, keys only"] = (select_range(rows, True, limit), params)
        rows, params = range_rows(big, prefix_end(big), revision)
        shapes[f"{label} count"] = (COUNT_RANGE.format(rows=rows), params)
    # A list's later pages, at its revision (an older one, or still the head), with the head revision.
    for label, revision in (("older", middle), ("head", head)):
        rows, params = range_rows(big, prefix_end(big), revision)
        shapes[f"later page at the {label} revision"] = (select_range(rows, False, LIMIT, head_column=True), params)
    for label, after in (("from the start", 0), ("mid-way", middle)):
        shapes[f"changes page end, {label}"] = (LAST_REVISION_OF_PAGE, [after, head, 99])
        shapes[f"changes, {label}"] = (CHANGES, [after, after + 150])
    shapes["latest"] = (LATEST.format(keys="%s, %s"), [key(SMALL, 7), key(SMALL, 9)])
    shapes["point read"] = (POINT_READ, [key(SMALL, 7)])
    shapes["compaction chunk"] = (COMPACT_CHUNK, [middle, 1000])
    return shapes


async def explain_all() -> dict[str, list[dict[str, Any]]]:
    store = MysqlStore(mysql_endpoint())
    try:
        middle, head = await load(store)
        async with store._session("ANALYZE TABLE kv") as cursor:
            await cursor.fetchall()
        plans = {}
        for name, (sql, params) in statements(middle, head).items():
            async with store._session("EXPLAIN " + sql, params) as cursor:
                columns = [column[0] for column in cursor.description]
                plans[name] = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
        return plans
    finally:
        await store.close()


@pytest.fixture(scope="module")
def plans() -> Iterator[dict[str, list[dict[str, Any]]]]:
    yield asyncio.run(explain_all())


def statement_names() -> list[str]:
    return list(statements(0, 0))


@pytest.mark.parametrize("statement", statement_names())
def test_reads_walk_an_index_in_order(plans: dict[str, list[dict[str, Any]]], statement: str) -> None:
    for step in plans[statement]:
        extra = step["Extra"] or ""
        assert "Using filesort" not in extra, (statement, step)
        assert "Using temporary" not in extra, (statement, step)
        assert step["type"] != "ALL", (statement, step)
        assert step["key"], (statement, step)


def test_plans_use_the_intended_indexes(plans: dict[str, list[dict[str, Any]]]) -> None:
    def indexes(statement: str) -> list[str]:
        return [step["key"] for step in plans[statement]]

    assert indexes("head range: big page") == ["kv_live"]
    assert indexes("historical range: big page") == ["PRIMARY"]
    assert indexes("changes, mid-way") == ["kv_history", "kv_live"]
    assert indexes("changes page end, mid-way") == ["kv_history"]
    assert indexes("compaction chunk") == ["kv_live"]
    assert indexes("later page at the older revision") == ["PRIMARY", "PRIMARY"]  # kv in key order, then meta
    assert indexes("later page at the head revision") == ["PRIMARY", "PRIMARY"]
    assert indexes("point read") == ["PRIMARY", "kv_live"]

"""A selective label or field selection reads O(matches) rows, not O(objects), on every SQL store.

20,000 pods are written through each store's own write path, with the attributes the core computes
for them (tests/_pods.py): 100 values of `app` (one value selects 1%), 40 nodes (one selects 2.5%). The store's own
selection queries are then run with the database's own accounting of the rows they touched:
PostgreSQL's EXPLAIN ANALYZE and MariaDB's ANALYZE count rows per plan node; SQLite, which has no such
counts, is measured in virtual-machine steps, which a plan visiting every pod would far exceed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kubefabric.objects import parse_selector
from kubefabric.stores._mysql import DIALECT as MYSQL
from kubefabric.stores._mysql import MysqlStore
from kubefabric.stores._postgres import DIALECT as POSTGRES
from kubefabric.stores._postgres import SERVER_SETTINGS, PostgresStore
from kubefabric.stores._selection import Dialect, selection_queries
from kubefabric.stores._sqlite import DIALECT as SQLITE
from kubefabric.stores._sqlite import SqliteStore
from tests._client import prefix_end
from tests._databases import mysql_connect, mysql_endpoint, postgres_endpoint
from tests._pods import APPS, NODES, PODS, load_pods

OBJECTS = 20_000
PAGE = 500
# (label selector, field selector, rows the query may read in proportion to): the objects matching
# the requirements that need a row to exist. With two of them the query may walk either or both
# (app17 on node17: 100 pods, found among app17's 200 and node17's 500), never all pods.
SELECTIONS = {
    "one label value (1%)": ("app=app17", "", OBJECTS // APPS),
    "a label value and an absent label": ("app=app17,!canary", "", OBJECTS // APPS),
    "two label values (2%)": ("app in (app17,app42)", "", 2 * OBJECTS // APPS),
    "a field value (2.5%)": ("", "spec.nodeName=node7", OBJECTS // NODES),
    "a label and a field": ("app=app17", "spec.nodeName=node17", OBJECTS // APPS + OBJECTS // NODES),
}


def queries(dialect: Dialect, name: str) -> tuple[str, str, list[object], int]:
    labels, fields, candidates = SELECTIONS[name]
    select, count, params = selection_queries(
        dialect, parse_selector(labels, fields), PODS, prefix_end(PODS), None, PAGE, False
    )
    return select, count, params, candidates


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> str:
    endpoint = postgres_endpoint()
    asyncio.run(load_pods(PostgresStore(endpoint), OBJECTS))
    return endpoint


def postgres_plan(endpoint: str, query: str, params: list[object]) -> dict[str, Any]:
    async def explain() -> Any:
        connection = await asyncpg.connect(endpoint, server_settings=SERVER_SETTINGS)
        try:
            return json.loads(await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *params))
        finally:
            await connection.close()

    return dict(asyncio.run(explain())[0]["Plan"])


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The plan's reads of tables and indexes."""
    if "Relation Name" in plan or plan["Node Type"] == "Bitmap Index Scan":
        yield plan
    for child in plan.get("Plans", ()):
        yield from scans(child)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_postgres_reads_rows_in_proportion_to_the_matches(postgres: str, selection: str) -> None:
    select, count, params, candidates = queries(POSTGRES, selection)
    for query in (select, count):
        plan = postgres_plan(postgres, query, params)
        shown = json.dumps(plan, indent=1)
        for scan in scans(plan):
            # A scan either walks the attribute index by name (and value), or looks one version up per
            # entry found: nothing walks a key range of all objects or all their attributes. (A bitmap
            # heap scan reads what its bitmap index scan, checked on its own, found.)
            looked_up = re.search(r"= (a|d|kv)(_\d+)?\.", scan.get("Index Cond", "")) is not None
            by_name = scan.get("Index Name") in ("attribute_value", "attribute_opaque")
            assert looked_up or by_name or scan["Node Type"] == "Bitmap Heap Scan", shown
        # The matching index entries, then each one's version: a few rows per match, not per object.
        assert sum(int(scan["Actual Rows"]) * int(scan["Actual Loops"]) for scan in scans(plan)) <= 4 * candidates + 10


# -- MariaDB -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mysql() -> str:
    endpoint = mysql_endpoint()
    asyncio.run(load_pods(MysqlStore(endpoint), OBJECTS))
    return endpoint


def mysql_rows_read(endpoint: str, query: str, params: list[object]) -> int:

    async def analyze() -> Any:
        connection = await mysql_connect(endpoint)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(f"ANALYZE FORMAT=JSON {query}", params)
                (analyzed,) = await cursor.fetchone()
                return json.loads(analyzed)
        finally:
            connection.close()

    def tables(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "table_name" in node:
                yield node
            for child in node.values():
                yield from tables(child)
        elif isinstance(node, list):
            for child in node:
                yield from tables(child)

    read = 0
    for table in tables(asyncio.run(analyze())):
        read += round(float(table.get("r_loops", 0)) * float(table.get("r_rows", 0) or 0))
    return read


@pytest.mark.parametrize("selection", SELECTIONS)
def test_mariadb_reads_rows_in_proportion_to_the_matches(mysql: str, selection: str) -> None:
    select, count, params, matches = queries(MYSQL, selection)
    for query in (select, count):
        assert mysql_rows_read(mysql, query, params) <= 4 * matches + 10


# -- SQLite --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("selection-plans") / "state.db"
    asyncio.run(load_pods(SqliteStore(f"sqlite://{path}"), OBJECTS))
    return path


def sqlite_steps(path: Path, query: str, params: list[object]) -> int:
    connection = sqlite3.connect(path)
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    connection.set_progress_handler(step, 1)
    try:
        connection.execute(query, params).fetchall()
    finally:
        connection.close()
    return steps


@pytest.mark.parametrize("selection", SELECTIONS)
def test_sqlite_steps_grow_with_the_matches(sqlite: Path, selection: str) -> None:
    select, count, params, candidates = queries(SQLITE, selection)
    full_list = sqlite_steps(sqlite, "SELECT key, value FROM kv WHERE key >= ? AND key < ?", [PODS, prefix_end(PODS)])
    bound = 100 * candidates + 2000
    assert full_list > bound  # a plan that visits every pod, probing each, could not stay within the bound
    for query in (select, count):
        assert sqlite_steps(sqlite, query, params) <= bound

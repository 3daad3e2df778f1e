"""Finding live versions by their garbage collection rows (`u`, `o:<owner uid>`, `g`) on every store.

The same objects are written through the core (which adds each version's attribute rows) into SQLite,
PostgreSQL, MariaDB, a real etcd and a RoutedStore over two databases; every store must then return
what a model of the live objects says, each version once, in key order, never a superseded version or
a tombstone. The SQL stores answer from their attribute index, the etcd store by testing every live
key: both must give the same answer. A lookup reads in proportion to its matches, not to the objects stored,
by the databases' own accounting (as tests/stores/test_selection_plans.py measures selections).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubefabric.core import DeleteOp, Mvcc, PutOp, RoutedStore, Topology
from kubefabric.objects import COLLECTED_LABEL, FieldCatalog, decode
from kubefabric.stores import (
    Change,
    EtcdOptions,
    EtcdStore,
    KeyValue,
    Lookup,
    Store,
    WriteBatch,
    attributes,
    open_store,
)
from kubefabric.stores._mysql import DIALECT as MYSQL
from kubefabric.stores._mysql import MysqlStore
from kubefabric.stores._postgres import DIALECT as POSTGRES
from kubefabric.stores._postgres import PostgresStore
from kubefabric.stores._selection import MAX_NAME_BYTES, MAX_VALUE_BYTES, OPAQUE, lookup_queries
from kubefabric.stores._sqlite import DIALECT as SQLITE
from kubefabric.stores._sqlite import SqliteStore
from tests._databases import mysql_endpoint, postgres_endpoint
from tests._servers import ServerProcess, start_etcd
from tests.stores.test_selection_plans import mysql_rows_read, postgres_plan, scans, sqlite_steps

CONFIGMAPS = b"/registry/configmaps/gc/"
PODS = b"/registry/pods/gc/"  # the second backend's, in the routed store
TOPOLOGY = """\
backends:
- name: pods
  endpoint: {endpoint}
  prefix:
    prefix: pods
"""


@dataclass(frozen=True)
class Spec:
    """An object as the test writes it, and the rows the design gives it (worked out here on their own)."""

    key: bytes
    uid: str
    owners: tuple[tuple[str, bool], ...] = ()  # (owner uid, blockOwnerDeletion)
    collected: bool = True
    deleting: bool = False
    long_label: bool = False

    def value(self) -> bytes:
        labels = {COLLECTED_LABEL: "true"} if self.collected else {}
        if self.long_label:
            labels["note"] = "x" * (MAX_VALUE_BYTES + 1)  # indexed as opaque for selectors
        metadata: dict[str, object] = {
            "name": self.key.rsplit(b"/", 1)[1].decode(),
            "namespace": "gc",
            "uid": self.uid,
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid, "blockOwnerDeletion": block}
                for uid, block in self.owners
            ],
        }
        if self.deleting:
            metadata |= {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]}
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}).encode()

    def rows(self) -> set[tuple[str, str]]:
        rows = {("u", self.uid)}
        for uid, _ in self.owners:
            rows.add((f"o:{uid}", "b" if any(block for other, block in self.owners if other == uid) else ""))
        if self.collected and (self.owners or self.deleting):
            rows.add(("g", ""))
        return rows


def configmap(name: str, *owners: tuple[str, bool], **options: bool) -> Spec:
    return Spec(CONFIGMAPS + name.encode(), f"uid-{name}", owners, **options)


def pod(name: str, *owners: tuple[str, bool], **options: bool) -> Spec:
    return Spec(PODS + name.encode(), f"uid-{name}", owners, **options)


O1, O2, O3 = ("uid-o1", False), ("uid-o2", False), ("uid-o3", False)


def blocking(owner: tuple[str, bool]) -> tuple[str, bool]:
    return owner[0], True


# Written in this order; None deletes the key.
WRITES: list[tuple[bytes, Spec | None]] = [
    (spec.key, spec)
    for spec in [
        configmap("o1"),
        configmap("o2"),
        pod("o3", deleting=True),
        configmap("d1", blocking(O1)),
        pod("d2", O1, blocking(O2)),  # two owners: found once by both
        configmap("d3", O2, collected=False),
        configmap("d4", O3),
        configmap("d4", O2),  # its version owned by o3 is superseded
        pod("d5", blocking(O3)),
        configmap("d6", O3, blocking(O3)),  # one owner twice: one row, blocking
        configmap("long", O2, long_label=True),
        *(
            (configmap if number % 3 else pod)(f"c{number:02d}", blocking(O1) if number % 2 else O1)
            for number in range(24)
        ),
        Spec(CONFIGMAPS + b"o1", "uid-o1-again"),  # o1's key now holds another object
    ]
] + [(PODS + b"d5", None)]
RAW = (CONFIGMAPS + b"plain", b"not an object")  # no rows at all


def live_specs() -> dict[bytes, Spec]:
    live: dict[bytes, Spec] = {}
    for key, spec in WRITES:
        if spec is None:
            live.pop(key, None)
        else:
            live[key] = spec
    return live


def expected(names: tuple[str, ...], values: tuple[str, ...] = ()) -> list[bytes]:
    return sorted(
        key
        for key, spec in live_specs().items()
        if any(name in names and (not values or value in values) for name, value in spec.rows())
    )


def lookup(names: tuple[str, ...], values: tuple[str, ...] = ()) -> Lookup:
    """The lookup, with its test on one version as the attribute index would answer it."""
    catalog = FieldCatalog()

    def matches(kv: KeyValue) -> bool:
        rows = attributes(kv.key, kv.mod_revision, decode(kv.key, kv.value, catalog))
        return any(row.name in names and (not values or row.value in values) for row in rows)

    return Lookup(names, values, matches)


LOOKUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("o:uid-o1",), ()),
    (("o:uid-o3",), ()),
    (("o:uid-o1", "o:uid-o2", "o:uid-o3"), ()),
    (("o:uid-o1", "o:uid-o2"), ("b",)),
    (("o:uid-o2",), ("",)),
    (("u",), ("uid-o1", "uid-o1-again", "uid-o3", "uid-d4", "uid-d5", "uid-nobody")),
    (("g",), ()),
    (("g", "o:uid-o2"), ()),
    (("o:uid-nobody",), ()),
]

# -- the stores ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], ServerProcess]]:
    """Fresh etcd servers on demand, stopped with the module."""
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        started.append(start_etcd(tmp_path_factory.mktemp("etcd")))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def make_store(kind: str, workdir: Path, etcd: Callable[[], ServerProcess]) -> Store:
    if kind == "sqlite":
        return SqliteStore(f"sqlite://{workdir}/state.db")
    if kind == "postgres":
        return open_store(postgres_endpoint())
    if kind == "mysql":
        return open_store(mysql_endpoint())
    if kind == "etcd":
        return EtcdStore(f"http://{etcd().address}", EtcdOptions(mapper_endpoint=f"sqlite://{workdir}/revisions.db"))
    assert kind == "routed"
    topology = Topology.parse(TOPOLOGY.format(endpoint=postgres_endpoint()), f"sqlite://{workdir}/state.db", "t.yaml")
    return RoutedStore(topology, open_store)


async def loaded(store: Store) -> Mvcc:
    """The store opened through the core, WRITES and RAW written one revision each."""
    mvcc = Mvcc(store)
    await mvcc.open()
    for key, spec in WRITES:
        if spec is None:
            await mvcc.delete(DeleteOp(key))
        else:
            await mvcc.put(PutOp(key, spec.value()))
    await mvcc.put(PutOp(*RAW))
    return mvcc


@pytest.fixture(params=["sqlite", "postgres", "mysql", "etcd", "routed"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, etcd: Callable[[], ServerProcess]
) -> AsyncIterator[Store]:
    mvcc = await loaded(make_store(request.param, tmp_path, etcd))
    yield mvcc.store
    await mvcc.close()


# -- what every store answers ---------------------------------------------------------------------


@pytest.mark.parametrize(("names", "values"), LOOKUPS)
async def test_finds_the_live_versions_with_the_rows(
    store: Store, names: tuple[str, ...], values: tuple[str, ...]
) -> None:
    found = await store.find(lookup(names, values), b"", 0)
    assert [kv.key for kv in found] == expected(names, values)
    # Each is the key's live version, whole.
    latest = await store.latest([kv.key for kv in found])
    assert found == [latest[kv.key] for kv in found]


async def test_latest_reads_the_live_version_of_each_key_asked_at_once(store: Store) -> None:
    live = {**live_specs(), RAW[0]: None}
    # Deleted, and never written: left out of the answer. Enough keys for the etcd store's reads to go in
    # several rounds.
    asked = [*live, PODS + b"d5", *(CONFIGMAPS + b"never-written-%d" % number for number in range(100))]
    found = await store.latest(asked)
    assert sorted(found) == sorted(live)
    assert found[RAW[0]].value == RAW[1]
    assert found[CONFIGMAPS + b"d4"].version == 2
    # One at a time, the same.
    for key in asked:
        assert await store.latest([key]) == ({key: found[key]} if key in found else {})


async def test_later_pages_read_what_a_counted_read_at_their_revision_does(store: Store) -> None:
    """A list's pages after its first (their count known: `counted` False) are read another way on
    PostgreSQL and MariaDB; at every revision, from every start, they hold what a counted read of the
    range does, and name the head revision, an empty page included."""
    head = await store.revision()
    start, end = b"/registry/", b"/registry0"
    for revision in range(1, head + 1):
        whole = (await store.range(start, end, revision, 0, False, False)).kvs
        for after in (start, *(kv.key + b"\0" for kv in whole[::5])):
            expected = [kv for kv in whole if kv.key >= after][:4]
            page = await store.range(after, end, revision, 4, False, False, None, counted=False)
            assert (page.kvs, page.revision) == (expected, head), (revision, after)
            page = await store.range(after, end, revision, 4, True, False, None, counted=False)
            assert page.kvs == [kv._replace(value=b"") for kv in expected], (revision, after)
    empty = await store.range(end, b"/registry1", head, 4, False, False, None, counted=False)
    assert (empty.kvs, empty.revision) == ([], head)


async def test_superseded_and_deleted_versions_are_never_found(store: Store) -> None:
    # d4's first version (owned by o3) was replaced, d5 (owned by o3) deleted; o1's key holds another uid.
    assert [kv.key for kv in await store.find(lookup(("o:uid-o3",)), b"", 0)] == [CONFIGMAPS + b"d6"]
    found = await store.find(lookup(("u",), ("uid-o1", "uid-d5")), b"", 0)
    assert found == []
    assert [kv.key for kv in await store.find(lookup(("u",), ("uid-o1-again",)), b"", 0)] == [CONFIGMAPS + b"o1"]


async def test_a_version_with_two_of_the_names_is_found_once(store: Store) -> None:
    found = await store.find(lookup(("o:uid-o2", "o:uid-o1")), b"", 0)
    keys = [kv.key for kv in found]
    assert keys.count(PODS + b"d2") == 1
    assert keys == sorted(set(keys))


async def test_values_select_the_blocking_references(store: Store) -> None:
    found = await store.find(lookup(("o:uid-o1", "o:uid-o2", "o:uid-o3"), ("b",)), b"", 0)
    assert [kv.key for kv in found] == [
        *sorted(CONFIGMAPS + b"c%02d" % n for n in range(1, 24, 2) if n % 3),
        CONFIGMAPS + b"d1",
        CONFIGMAPS + b"d6",
        *sorted(PODS + b"c%02d" % n for n in range(1, 24, 2) if not n % 3),
        PODS + b"d2",
    ]


@pytest.mark.parametrize("page", [1, 4, 7, 100])
async def test_pages_after_a_key_add_up_to_the_whole(store: Store, page: int) -> None:
    names = ("o:uid-o1", "o:uid-o2")
    whole = await store.find(lookup(names), b"", 0)
    pages: list[KeyValue] = []
    after = b""
    while True:
        found = await store.find(lookup(names), after, page)
        assert len(found) <= page
        pages += found
        if len(found) < page:
            break
        after = found[-1].key
    assert pages == whole
    # `after` is exclusive, and needs not be a stored key.
    assert (
        await store.find(lookup(names), CONFIGMAPS + b"c05", 2)
        == [kv for kv in whole if kv.key > CONFIGMAPS + b"c05"][:2]
    )
    assert await store.find(lookup(names), CONFIGMAPS + b"c05!", 0) == [
        kv for kv in whole if kv.key > CONFIGMAPS + b"c05!"
    ]


# -- the etcd store's scan and the index agree -------------------------------------------------------


async def test_the_etcd_scan_answers_as_the_sql_index(tmp_path: Path, etcd: Callable[[], ServerProcess]) -> None:
    indexed = await loaded(make_store("sqlite", tmp_path, etcd))
    scanned = await loaded(make_store("etcd", tmp_path, etcd))
    try:
        for names, values in [*LOOKUPS, (("o:uid-o1", "o:uid-o2", "g", "u"), ("b", "uid-d3"))]:
            for after, limit in [(b"", 0), (b"", 3), (CONFIGMAPS + b"c10", 5), (PODS, 0)]:
                assert await scanned.store.find(lookup(names, values), after, limit) == await indexed.store.find(
                    lookup(names, values), after, limit
                ), (names, values, after, limit)
    finally:
        await indexed.close()
        await scanned.close()


async def test_long_name_and_value_lists_are_chunked(tmp_path: Path, etcd: Callable[[], ServerProcess]) -> None:
    """More names and values than one statement takes: answered in shares, merged, each version once."""
    mvcc = await loaded(make_store("sqlite", tmp_path, etcd))
    try:
        names = tuple(f"o:uid-x{number}" for number in range(1200)) + ("o:uid-o2", "o:uid-o1")
        values = tuple(f"v{number}" for number in range(700)) + ("b",)
        assert len(lookup_queries(SQLITE, names, values, b"", 0)) == 3 * 2
        found = await mvcc.store.find(lookup(names, values), b"", 0)
        assert [kv.key for kv in found] == expected(("o:uid-o1", "o:uid-o2"), ("b",))
        assert [kv.key for kv in await mvcc.store.find(lookup(names, values), b"", 5)] == [kv.key for kv in found][:5]
        uids = tuple(f"uid-c{number:02d}" for number in range(24)) + tuple(f"uid-x{number}" for number in range(999))
        assert [kv.key for kv in await mvcc.store.find(lookup(("u",), uids), b"", 0)] == expected(("u",), uids)
    finally:
        await mvcc.close()


# -- the rows -------------------------------------------------------------------------------------


def test_collection_rows_stay_with_an_opaque_version_and_too_long_ones_are_left_out() -> None:
    key = CONFIGMAPS + b"long"
    spec = Spec(key, "u" * (MAX_VALUE_BYTES + 1), (("o" * MAX_NAME_BYTES, True), ("uid-o1", False)), long_label=True)
    rows = attributes(key, 5, decode(key, spec.value(), FieldCatalog()))
    # The label too long to index makes the selector rows one opaque row; the uid is too long for a value, the
    # first owner's uid for a name: only those two are left out. The opaque row holds the object's name.
    assert {(row.name, row.value) for row in rows} == {(OPAQUE, "long"), ("o:uid-o1", ""), ("g", "")}
    assert attributes(key, 5, None) == [rows[0]]


# -- reads in proportion to the matches ----------------------------------------------------------------

OBJECTS = 10_000
OWNERS = 200  # each owns 50 of the objects
PLANNED = [
    (("o:owner7",), (), 50),
    (("o:owner7",), ("b",), 25),
    (("o:owner7", "o:owner8", "o:owner9"), (), 150),
    (("u",), ("uid-x17", "uid-x4242", "uid-nobody"), 2),
    (("g",), (), 0),
]


def owned_object(number: int) -> Spec:
    """Not collected: no `g` rows. Every other object of an owner blocks it."""
    owner = (f"owner{number % OWNERS}", number // OWNERS % 2 == 0)
    return Spec(CONFIGMAPS + b"x%06d" % number, f"uid-x{number}", (owner,), collected=False)


def load_owned(store: Store) -> None:
    """OBJECTS objects written straight through the store, with the rows the core would add."""

    async def load() -> None:
        await store.open()
        catalog = FieldCatalog()
        try:
            for first in range(0, OBJECTS, 1000):
                batch = WriteBatch(first + 1001)
                for number in range(first, first + 1000):
                    spec, revision = owned_object(number), number + 2
                    kv = KeyValue(spec.key, revision, revision, 1, spec.value(), 0)
                    batch.changes.append(Change(kv, 0, None))
                    batch.attributes += attributes(kv.key, revision, decode(kv.key, kv.value, catalog))
                await store.write(batch)
        finally:
            await store.close()

    asyncio.run(load())


@pytest.fixture(scope="module")
def sqlite_owned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("find-plans") / "state.db"
    load_owned(SqliteStore(f"sqlite://{path}"))
    return path


@pytest.fixture(scope="module")
def postgres_owned() -> str:
    endpoint = postgres_endpoint()
    load_owned(PostgresStore(endpoint))
    return endpoint


@pytest.fixture(scope="module")
def mysql_owned() -> str:
    endpoint = mysql_endpoint()
    load_owned(MysqlStore(endpoint))
    return endpoint


@pytest.mark.parametrize(("names", "values", "matches"), PLANNED)
def test_sqlite_lookups_read_in_proportion_to_the_matches(
    sqlite_owned: Path, names: tuple[str, ...], values: tuple[str, ...], matches: int
) -> None:
    full_list = sqlite_steps(sqlite_owned, "SELECT key, value FROM kv WHERE key >= ?", [CONFIGMAPS])
    bound = 100 * matches + 2000
    assert full_list > bound  # a plan that visits every object could not stay within the bound
    ((select, params),) = lookup_queries(SQLITE, names, values, b"", 0)
    assert sqlite_steps(sqlite_owned, select, params) <= bound
    connection = sqlite3.connect(sqlite_owned)
    try:
        assert len(connection.execute(select, params).fetchall()) == matches
    finally:
        connection.close()


@pytest.mark.parametrize(("names", "values", "matches"), PLANNED)
def test_postgres_lookups_walk_the_attribute_index(
    postgres_owned: str, names: tuple[str, ...], values: tuple[str, ...], matches: int
) -> None:
    ((select, params),) = lookup_queries(POSTGRES, names, values, b"", 0)
    plan = postgres_plan(postgres_owned, select, params)
    shown = json.dumps(plan, indent=1)
    for scan in scans(plan):
        # The entries of the names in the attribute index, then one probe of kv per entry found.
        looked_up = re.search(r"= d\.", scan.get("Index Cond", "")) is not None
        assert scan.get("Index Name") == "attribute_value" or looked_up or scan["Node Type"] == "Bitmap Heap Scan", (
            shown
        )
    assert sum(int(scan["Actual Rows"]) * int(scan["Actual Loops"]) for scan in scans(plan)) <= 4 * matches + 10


@pytest.mark.parametrize(("names", "values", "matches"), PLANNED)
def test_mariadb_lookups_read_in_proportion_to_the_matches(
    mysql_owned: str, names: tuple[str, ...], values: tuple[str, ...], matches: int
) -> None:
    ((select, params),) = lookup_queries(MYSQL, names, values, b"", 0)
    assert mysql_rows_read(mysql_owned, select, params) <= 4 * matches + 10

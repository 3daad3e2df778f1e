"""PostgreSQL store behaviour the gRPC suites cannot see: database and schema creation, the endpoint
grammar, what survives a restart, chunked compaction, and the snapshot a range reads from.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from kubefabric.stores import (
    LIVE,
    Change,
    EndpointError,
    KeyValue,
    OwnershipRefused,
    StoredState,
    WriteBatch,
    open_store,
)
from kubefabric.stores._postgres import (
    COMPACT_CHUNK_ROWS,
    SCHEMA_VERSION,
    PostgresSchemaError,
    PostgresStore,
    parse_endpoint,
)
from tests._databases import postgres_endpoint


@pytest.fixture
def endpoint() -> str:
    return postgres_endpoint()


@pytest.fixture
async def store(endpoint: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(endpoint)
    await store.open()
    yield store
    await store.close()


def put(key: bytes, revision: int, prev: KeyValue | None = None, lease: int = 0, sub: int = 0) -> Change:
    if prev is None:
        return Change(KeyValue(key, revision, revision, 1, b"v%d" % revision, lease), sub, None)
    return Change(KeyValue(key, prev.create_revision, revision, prev.version + 1, b"v%d" % revision, lease), sub, prev)


async def reopened(endpoint: str, running: PostgresStore) -> StoredState:
    """What a restarted server would find; `running` lets go of the database meanwhile, as if stopped."""
    await running.ownership.release()
    store = PostgresStore(endpoint)
    try:
        return await store.open()
    finally:
        await store.close()
        await running.ownership.acquire()


async def sql(endpoint: str, statement: str, *args: object) -> object:
    connection = await asyncpg.connect(endpoint)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


async def test_of_servers_starting_together_on_a_new_database_one_owns_it_and_the_others_are_refused(
    endpoint: str,
) -> None:
    stores = [PostgresStore(endpoint) for _ in range(4)]
    results = await asyncio.gather(*(store.open() for store in stores), return_exceptions=True)
    await asyncio.gather(*(store.close() for store in stores))
    states = [result for result in results if isinstance(result, StoredState)]
    refusals = [str(result) for result in results if isinstance(result, OwnershipRefused)]
    assert len(states) == 1 and len(refusals) == 3, results
    assert (states[0].revision, states[0].compact_revision) == (1, -1) and states[0].identity != 0
    assert all(f"in use by another kubefabric (pid {os.getpid()} on host " in refusal for refusal in refusals)


async def test_what_is_written_survives_a_restart(endpoint: str, store: PostgresStore) -> None:
    identity = (await reopened(endpoint, store)).identity
    await store.write(WriteBatch(2, [put(b"a", 2, lease=7), put(b"b", 2, sub=1)], granted_leases=[(7, 60), (8, 30)]))
    await store.write(WriteBatch(3, [], revoked_leases=[8], compact_revision=2))
    state = await reopened(endpoint, store)
    assert (state.revision, state.compact_revision, state.identity) == (3, 2, identity)
    assert state.leases == {7: 60}
    assert state.leased_keys == [(7, b"a")]


async def test_a_lease_granted_again_replaces_the_stored_one(endpoint: str, store: PostgresStore) -> None:
    # A revoke and a new grant of the same id in one batch reach the store as just the grant.
    await store.write(WriteBatch(1, [], granted_leases=[(5, 60)]))
    await store.write(WriteBatch(1, [], granted_leases=[(5, 120)]))
    assert (await reopened(endpoint, store)).leases == {5: 120}
    await store.write(WriteBatch(1, [], revoked_leases=[5]))
    assert (await reopened(endpoint, store)).leases == {}


async def test_a_newer_schema_is_refused_with_a_clear_message(endpoint: str, store: PostgresStore) -> None:
    await store.close()
    await sql(endpoint, "UPDATE meta SET value = $1 WHERE name = 'schema_version'", SCHEMA_VERSION + 1)
    with pytest.raises(PostgresSchemaError, match="newer than this kubefabric .*upgrade kubefabric"):
        await PostgresStore(endpoint).open()


async def test_a_range_reports_the_revision_of_the_snapshot_its_rows_come_from(store: PostgresStore) -> None:
    await store.write(WriteBatch(2, [put(b"a", 2)]))
    rows = await store.range(b"a", None, 0, 0, False, False)
    assert (rows.revision, [kv.key for kv in rows.kvs]) == (2, [b"a"])
    past = await store.range(b"a", b"b", 1, 0, False, False)
    assert (past.revision, past.kvs, past.count) == (2, [], 0)


async def test_compaction_deletes_every_invisible_version_in_bounded_chunks(
    endpoint: str, store: PostgresStore
) -> None:
    keys = [b"key%05d" % n for n in range(COMPACT_CHUNK_ROWS * 2 + 10)]
    created = [put(key, 2, sub=n) for n, key in enumerate(keys)]
    await store.write(WriteBatch(2, created))
    await store.write(WriteBatch(3, [put(c.kv.key, 3, c.kv, sub=n) for n, c in enumerate(created)]))
    await store.compact(3)
    assert await sql(endpoint, "SELECT count(*) FROM kv") == len(keys)
    assert await sql(endpoint, "SELECT count(*) FROM kv WHERE superseded = $1", LIVE) == len(keys)
    assert (await store.range(b"", b"", 0, 1, False, False)).count == len(keys)


def test_endpoint_grammar() -> None:
    store = open_store("postgresql://kube:s3cret@db.example:6543/etcd?sslmode=verify-full&sslrootcert=/ca.pem")
    assert repr(store) == "postgresql://kube:***@db.example:6543/etcd?sslmode=verify-full&sslrootcert=/ca.pem"
    assert repr(open_store("postgres://db.example")) == "postgres://db.example"
    with pytest.raises(EndpointError, match="unknown postgres endpoint option 'sslpassword'") as unknown:
        open_store("postgres://kube:s3cret@db.example/etcd?sslpassword=s3cret")
    assert "s3cret" not in str(unknown.value).replace("sslpassword", "")
    with pytest.raises(EndpointError, match="sslmode=sometimes: expected one of"):
        open_store("postgres://db.example/etcd?sslmode=sometimes")


def test_the_default_database_is_kubernetes() -> None:
    assert parse_endpoint("postgres://db.example")[1] == "kubernetes"


async def test_a_table_that_grows_fast_is_analyzed_without_waiting_for_autovacuum(
    endpoint: str, store: PostgresStore
) -> None:
    rows = 6000  # past the store's threshold
    await store.write(WriteBatch(rows + 1, [put(b"grow/%05d" % i, i + 2) for i in range(rows)]))
    deadline = time.monotonic() + 10
    while await sql(endpoint, "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'kv'") is None:
        assert time.monotonic() < deadline, "kv was not analyzed after a large batch"
        await asyncio.sleep(0.1)

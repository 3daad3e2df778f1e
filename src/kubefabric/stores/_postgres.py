"""PostgreSQL store: asyncpg with a connection pool.

Every write batch is one SQL statement (data-modifying CTEs over unnest()ed arrays), so a batch
costs one round trip and one commit, and no transaction is ever left open between statements.
Reads run in a REPEATABLE READ READ ONLY transaction, so the revision they report and the rows they
return come from one snapshot. Losing the server turns into StoreUnavailable within a bounded time,
and the pool replaces broken connections by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import asyncpg

from kubefabric.stores._base import (
    LIVE,
    ROW_COLUMNS,
    Change,
    KeyValue,
    Lookup,
    RangeRows,
    Selection,
    StoredState,
    StoreUnavailable,
    WriteBatch,
    point_rows,
    split_batch,
)
from kubefabric.stores._ownership import ConnectionLock, OwnershipLock, moment, this_process
from kubefabric.stores._selection import Dialect, lookup_queries, merge_found, selection_queries

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Version 2: the selector index (see _selection.py). Byte order ("C") for names and values, so
# equality is exact and nothing depends on the database's locale. Version 3: the same tables, the
# index also holding the rows garbage collection finds versions by.
ATTRIBUTE_SCHEMA = """
CREATE TABLE attribute (
    key bytea NOT NULL,
    mod_revision bigint NOT NULL,
    name text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    number bigint,
    PRIMARY KEY (key, mod_revision, name)
);
CREATE INDEX attribute_value ON attribute (name, value, key, mod_revision);
-- Opaque versions are few or none: without statistics (a fresh or fast-growing table) the planner
-- would look for them among every attribute of the range; this index holds only them.
CREATE INDEX attribute_opaque ON attribute (key, mod_revision) WHERE name = '';
"""
# Serializes schema creation between kubefabric processes starting on the same empty database.
SCHEMA_LOCK_ID = 0x6B75_6265_6661_62  # "kubefab"
SCHEMA = f"""
CREATE TABLE kv (
    key bytea NOT NULL,
    mod_revision bigint NOT NULL,
    sub integer NOT NULL,
    superseded bigint NOT NULL,
    create_revision bigint NOT NULL,
    version bigint NOT NULL,
    lease bigint NOT NULL,
    value bytea NOT NULL,
    -- `superseded` rides along so that reads at a past revision (every page of a paginated list
    -- after the first), counts included, are answered from this index alone.
    PRIMARY KEY (key, mod_revision) INCLUDE (superseded)
);
CREATE INDEX kv_live ON kv (superseded, key);
CREATE INDEX kv_history ON kv (mod_revision, sub);
CREATE TABLE lease (id bigint PRIMARY KEY, ttl bigint NOT NULL);
CREATE TABLE meta (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('revision', 1), ('compact_revision', -1),
    ('index_complete', 1);
{ATTRIBUTE_SCHEMA}
"""
# Both leave the index to be built on start-up (see StoredState.index_backlog).
UPGRADE_FROM_1 = f"""
{ATTRIBUTE_SCHEMA}
INSERT INTO meta VALUES ('index_complete', 0);
UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version';
"""
UPGRADE_FROM_2 = f"""
TRUNCATE attribute;
UPDATE meta SET value = 0 WHERE name = 'index_complete';
UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version';
"""
READ_SCHEMA_VERSION = "SELECT value FROM meta WHERE name = 'schema_version'"
LOCK_SCHEMA = f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})"
# The one writer's session-level lock (see PostgresOwnershipLock).
OWNER_LOCK_ID = 0x6B75_6265_6F77_6E  # "kubeown"
TRY_OWNER_LOCK = f"SELECT pg_try_advisory_lock({OWNER_LOCK_ID})"
UNLOCK_OWNER_LOCK = f"SELECT pg_advisory_unlock({OWNER_LOCK_ID})"
OWNER_LOCK_HELD = "SELECT true"  # a session lock lasts as long as its session
READ_OWNER_LOCK_HOLDER = """
SELECT a.application_name, a.backend_start, a.client_addr::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
SCHEMA_EXISTS = "SELECT to_regclass('meta') IS NOT NULL"
INSERT_IDENTITY = "INSERT INTO meta VALUES ('identity', $1)"
READ_META = "SELECT name, value FROM meta"
READ_LEASES = "SELECT id, ttl FROM lease"
READ_LEASED_KEYS = f"SELECT lease, key FROM kv WHERE superseded = {LIVE} AND lease != 0"
READ_REVISION = "SELECT value FROM meta WHERE name = 'revision'"
READ_SYNCHRONOUS_COMMIT = "SHOW synchronous_commit"
READ_SIZE = """
SELECT pg_total_relation_size('kv') + pg_total_relation_size('attribute') + pg_total_relation_size('lease')
    + pg_total_relation_size('meta')
"""

ANALYZE = "ANALYZE kv, attribute"
VACUUM = "VACUUM (ANALYZE)"  # every table of the database, which is kubefabric's alone
MAINTENANCE_TIMEOUT = 3600.0
ANALYZE_MIN_ROWS = 5000

# One statement per batch. The CTEs all see the snapshot from before the statement, which is safe
# because split_batch only supersedes rows that existed before the batch, and no lease id is both
# granted and revoked in one batch (grants are upserts: see WriteBatch).
WRITE_BATCH = f"""
WITH superseded AS (
    UPDATE kv SET superseded = u.superseded
    FROM unnest($1::bigint[], $2::bytea[], $3::bigint[]) AS u (superseded, key, mod_revision)
    WHERE kv.key = u.key AND kv.mod_revision = u.mod_revision
), inserted AS (
    INSERT INTO kv ({", ".join(ROW_COLUMNS)})
    SELECT * FROM unnest($4::bytea[], $5::bigint[], $6::integer[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bytea[])
), granted AS (
    INSERT INTO lease (id, ttl)
    SELECT * FROM unnest($12::bigint[], $13::bigint[]) AS g (id, ttl)
    ON CONFLICT (id) DO UPDATE SET ttl = EXCLUDED.ttl
), revoked AS (
    DELETE FROM lease WHERE id = ANY($14::bigint[])
), attributes AS (
    INSERT INTO attribute (key, mod_revision, name, value, number)
    SELECT * FROM unnest($17::bytea[], $18::bigint[], $19::text[], $20::text[], $21::bigint[])
)
UPDATE meta SET value = CASE name WHEN 'revision' THEN $15::bigint ELSE $16::bigint END
WHERE name = 'revision' OR (name = 'compact_revision' AND $16::bigint IS NOT NULL)
"""

# Chunks of bounded size, each its own transaction, so compaction never holds up writers for long.
# ORDER BY makes every chunk an index scan from the oldest superseded version.
COMPACT_CHUNK_ROWS = 2000
COMPACT_CHUNK = f"""
WITH chunk AS (
    SELECT ctid, key, mod_revision FROM kv WHERE superseded <= $1 ORDER BY superseded LIMIT {COMPACT_CHUNK_ROWS}
), attributes AS (
    DELETE FROM attribute a USING chunk WHERE a.key = chunk.key AND a.mod_revision = chunk.mod_revision
)
DELETE FROM kv WHERE ctid = ANY(ARRAY(SELECT ctid FROM chunk))
"""
# Versions whose attributes a batch replaces go first, in the batch's transaction: the statement
# that inserts the new ones sees the table as it was before it started.
DELETE_ATTRIBUTES = """
DELETE FROM attribute a USING unnest($1::bytea[], $2::bigint[]) AS r (key, mod_revision)
WHERE a.key = r.key AND a.mod_revision = r.mod_revision
"""
SET_INDEX_COMPLETE = "UPDATE meta SET value = 1 WHERE name = 'index_complete'"

KV_FIELDS = "key, create_revision, mod_revision, version, value, lease"
KV_KEYS_ONLY = "key, create_revision, mod_revision, version, ''::bytea, lease"
UNINDEXED = f"""
SELECT {KV_FIELDS} FROM kv WHERE (key, mod_revision) > ($1, $2) AND version > 0 ORDER BY key, mod_revision LIMIT $3
"""
DIALECT = Dialect(placeholder=lambda n: f"${n}", key="key", empty_value="''::bytea")
# One key at the head with the revision it was read at: one statement, so one snapshot.
POINT_READ = f"""
SELECT m.value, {", ".join("k." + field for field in KV_FIELDS.split(", "))}
FROM meta m LEFT JOIN kv k ON k.superseded = {LIVE} AND k.key = $1 WHERE m.name = 'revision'
"""
LATEST = f"SELECT {KV_FIELDS} FROM kv WHERE superseded = {LIVE} AND key = ANY($1::bytea[])"
# Which versions a range sees: the live ones, or those valid at revision ${n}.
LIVE_VERSIONS = f"superseded = {LIVE}"
VERSIONS_AT = "mod_revision <= ${n} AND superseded > ${n}"
# Which keys: exactly $1, [$1, $2), or [$1, end of keyspace).
ONE_KEY = "key = $1"
KEYS_BETWEEN = "key >= $1 AND key < $2"
# Leads the fields of a page read with its head revision, so that one statement (one snapshot) says both.
HEAD_COLUMN = "(SELECT value FROM meta WHERE name = 'revision'), "
KEYS_FROM = "key >= $1"
SELECT_RANGE = "SELECT {fields} FROM kv WHERE {versions} AND {keys} ORDER BY key"
COUNT_RANGE = "SELECT count(*) FROM kv WHERE {versions} AND {keys}"

# Changes with $1 < revision <= $2, at most $3 of them unless that would split a revision: the
# page ends at the revision of its $3-th change, so the events of one txn stay together.
# The LATERAL ... LIMIT 1 keeps the previous version one index probe per change; as a plain join
# the planner may merge-join against every superseded version still kept.
CHANGES = """
SELECT e.key, e.create_revision, e.mod_revision, e.version, e.value, e.lease, e.sub,
       p.key, p.create_revision, p.mod_revision, p.version, p.value, p.lease
FROM kv e LEFT JOIN LATERAL (
    SELECT * FROM kv p WHERE p.superseded = e.mod_revision AND p.key = e.key AND p.mod_revision < e.mod_revision LIMIT 1
) p ON true
WHERE e.mod_revision > $1 AND e.mod_revision <= coalesce((
    SELECT mod_revision FROM kv WHERE mod_revision > $1 AND mod_revision <= $2
    ORDER BY mod_revision, sub LIMIT 1 OFFSET $3 - 1
), $2)
ORDER BY e.mod_revision, e.sub
"""

# kubefabric's own notes (the topology its keys were placed by); outside the versioned schema.
CREATE_NOTES = "CREATE TABLE IF NOT EXISTS notes (name text PRIMARY KEY, value text NOT NULL)"
READ_NOTE = "SELECT value FROM notes WHERE name = $1"
WRITE_NOTE = "INSERT INTO notes (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
DELETE_NOTE = "DELETE FROM notes WHERE name = $1"
REMOVE_KEYS = """
WITH attributes AS (DELETE FROM attribute WHERE key = ANY($1::bytea[]))
DELETE FROM kv WHERE key = ANY($1::bytea[])
"""

CREATE_DATABASE = "CREATE DATABASE {name}"
MAINTENANCE_DATABASE = "postgres"
DEFAULT_DATABASE = "kubernetes"

# Query options of the postgres:// endpoint, as libpq spells them; anything else is refused
# rather than silently ignored.
KNOWN_OPTIONS = {"sslmode", "sslrootcert", "sslcert", "sslkey"}
SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

# Bounds that turn a dead or unreachable server into StoreUnavailable instead of a hang.
CONNECT_TIMEOUT = 5.0  # TCP + TLS + authentication of one new connection
COMMAND_TIMEOUT = 10.0  # one statement, and waiting for a free pooled connection
BULK_READ_TIMEOUT = 60.0  # range and history reads, whose size is the caller's choice
POOL_MAX_SIZE = 10
SERVER_SETTINGS = {
    "application_name": "kubefabric",
    # How many rows a key range holds varies by orders of magnitude (one key, a namespace, every
    # pod), so plan each statement for its own parameters: a generic plan for a prepared range
    # would sort a whole prefix to return its first 500 keys.
    "plan_cache_mode": "force_custom_plan",
    # Server side backstop: a session whose client vanished mid-transaction is ended.
    "idle_in_transaction_session_timeout": "60000",
}

# Failures that say the server cannot be used right now, rather than that a statement is wrong:
# class 08 (connection), 57 (shutdown, crash, cancel), 53 (too many connections, disk full), a
# read-only server (a replica after failover), and network errors and timeouts (OSError).
OUTAGES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    OSError,
)


class PostgresOptionError(ValueError):
    pass


class PostgresSchemaError(Exception):
    pass


def parse_endpoint(endpoint: str) -> tuple[str, str, str]:
    """-> (DSN for asyncpg, database name, the endpoint with its password masked for messages)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("postgres", "postgresql"):
        raise PostgresOptionError(f"not a postgres:// endpoint: {mask_password(endpoint)!r}")
    database = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in KNOWN_OPTIONS:
            raise PostgresOptionError(
                f"unknown postgres endpoint option {name!r} (known: {', '.join(sorted(KNOWN_OPTIONS))})"
            )
        if name == "sslmode" and value not in SSL_MODES:
            raise PostgresOptionError(f"sslmode={value}: expected one of {', '.join(sorted(SSL_MODES))}")
    dsn = urlunsplit(parts._replace(path="/" + quote(database)))
    return dsn, database, mask_password(endpoint)


def mask_password(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.password is None:
        return endpoint
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Pooled connections keep no session state, so skip asyncpg's RESET ALL round trip on release."""


class PostgresStore:
    """A Store in one PostgreSQL database."""

    def __init__(self, endpoint: str) -> None:
        self._dsn, self._database, self._endpoint = parse_endpoint(endpoint)
        self._pool: asyncpg.Pool | None = None
        self._rows_since_analyze = 0
        self._rows_at_analyze = 0
        self._analyzing: asyncio.Task[None] | None = None
        self.ownership: OwnershipLock = PostgresOwnershipLock(self._dsn, self._endpoint)

    def __repr__(self) -> str:
        return self._endpoint

    # -- connections ---------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        return _unavailable(self._endpoint, error)

    def _is_outage(self, error: BaseException, connection: asyncpg.Connection | None) -> bool:
        # asyncpg reports a closed connection or pool as InterfaceError; other InterfaceErrors are bugs.
        if isinstance(error, asyncpg.InterfaceError):
            return connection is None or _is_closed(connection)
        # A pooled connection the server terminated while idle, handed out before asyncpg noticed:
        # its protocol state machine refuses the next statement.
        if isinstance(error, asyncpg.exceptions.InternalClientError):
            return True
        return isinstance(error, OUTAGES)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an outage while using it becomes StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable(f"PostgreSQL store {self._endpoint} is not open")
        connection: asyncpg.Connection | None = None
        try:
            connection = await self._pool.acquire(timeout=COMMAND_TIMEOUT)
            yield connection
        except Exception as error:
            if not self._is_outage(error, connection):
                raise
            if connection is not None and not _is_closed(connection):
                # Its state is unknown (maybe mid-statement): drop it rather than wait on a rollback.
                connection.terminate()
            # Its idle siblings most likely point at the same dead server: replace them on next use.
            await self._pool.expire_connections()
            raise self._unavailable(error) from error
        finally:
            if connection is not None:
                await self._pool.release(connection)

    @asynccontextmanager
    async def _transaction(self, **options: Any) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on a pooled connection, committed unless the block raises."""
        async with self._connection() as connection:
            transaction = connection.transaction(**options)
            await transaction.start()
            try:
                yield connection
            except Exception as error:
                # After an outage the connection is dropped, which ends the transaction on the
                # server; a ROLLBACK would only wait on a server that may not answer.
                if not self._is_outage(error, connection):
                    await transaction.rollback()
                raise
            await transaction.commit()

    def _snapshot(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A read-only transaction whose statements all see one snapshot."""
        return self._transaction(isolation="repeatable_read", readonly=True)

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self._dsn,
            min_size=0,  # with a floor, asyncpg reconnects in the background and logs each failure
            max_size=POOL_MAX_SIZE,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings=SERVER_SETTINGS,
            reset=_no_reset,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> StoredState:
        self._pool = await self._create_pool()  # connects lazily, on first use
        try:
            try:
                await self.ownership.acquire()
            except asyncpg.InvalidCatalogNameError:
                await self._create_database()
                await self.ownership.acquire()
            await self._create_schema()
            return await self._read_state()
        except BaseException:
            await self.close()
            raise

    async def _create_database(self) -> None:
        """Create the endpoint's database from the maintenance database; a concurrent creator is fine."""
        log.info("creating database %s", self._endpoint)
        try:
            connection = await asyncpg.connect(
                self._dsn, database=MAINTENANCE_DATABASE, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
            )
            try:
                await connection.execute(CREATE_DATABASE.format(name=quote_identifier(self._database)))
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another process created it first
            finally:
                await connection.close()
        except OUTAGES as error:
            raise self._unavailable(error) from error

    async def _create_schema(self) -> None:
        async with self._transaction() as connection:
            await connection.execute(LOCK_SCHEMA)  # another kubefabric may be creating it right now
            if not await connection.fetchval(SCHEMA_EXISTS):
                log.info("creating schema version %d in %s", SCHEMA_VERSION, self._endpoint)
                await connection.execute(SCHEMA)
                await connection.execute(INSERT_IDENTITY, random.getrandbits(63))
            elif (version := await connection.fetchval(READ_SCHEMA_VERSION)) in (1, 2):
                log.info(
                    "upgrading %s to schema version %d: an index of selectors and owners",
                    self._endpoint,
                    SCHEMA_VERSION,
                )
                await connection.execute(UPGRADE_FROM_1 if version == 1 else UPGRADE_FROM_2)

    async def _read_state(self) -> StoredState:
        async with self._connection() as connection:
            meta = dict(await connection.fetch(READ_META))
            if meta["schema_version"] > SCHEMA_VERSION:
                raise PostgresSchemaError(
                    f"{self._endpoint} has schema version {meta['schema_version']}, newer than this "
                    f"kubefabric ({SCHEMA_VERSION}); upgrade kubefabric"
                )
            if await connection.fetchval(READ_SYNCHRONOUS_COMMIT) == "off":
                log.warning("%s has synchronous_commit=off: acknowledged writes may be lost", self._endpoint)
            return StoredState(
                revision=meta["revision"],
                compact_revision=meta["compact_revision"],
                leases=dict(await connection.fetch(READ_LEASES)),
                leased_keys=[(row[0], row[1]) for row in await connection.fetch(READ_LEASED_KEYS)],
                identity=meta["identity"],
                index_backlog=not meta["index_complete"],
            )

    async def close(self) -> None:
        if self._analyzing is not None:
            self._analyzing.cancel()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.ownership.release()

    async def revision(self) -> int:
        async with self._connection() as connection:
            return int(await connection.fetchval(READ_REVISION))

    # -- writes --------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        updates, inserts = split_batch(batch)
        granted_ids = [lease for lease, _ in batch.granted_leases]
        granted_ttls = [ttl for _, ttl in batch.granted_leases]
        await self.ownership.check()
        arguments = (
            *_columns(updates, 3),
            *_columns(inserts, len(ROW_COLUMNS)),
            granted_ids,
            granted_ttls,
            batch.revoked_leases,
            batch.revision,
            batch.compact_revision,
            *_columns(batch.attributes, 5),
        )
        if batch.reindexed or batch.index_complete:
            async with self._transaction() as connection:
                await connection.execute(DELETE_ATTRIBUTES, *_columns(batch.reindexed, 2))
                await connection.execute(WRITE_BATCH, *arguments)
                if batch.index_complete:
                    await connection.execute(SET_INDEX_COMPLETE)
        else:
            async with self._connection() as connection:
                await connection.execute(WRITE_BATCH, *arguments)
        self._keep_statistics_fresh(len(inserts))

    def _keep_statistics_fresh(self, inserted: int) -> None:
        """ANALYZE once the table has grown by a fifth since the planner last looked.

        Autovacuum gets there too, but up to a minute later; meanwhile a list of a prefix that just
        filled up is planned as if the table were small, and sorts the whole prefix for each page.
        """
        self._rows_since_analyze += inserted
        growth = max(ANALYZE_MIN_ROWS, self._rows_at_analyze // 5)
        if self._rows_since_analyze >= growth and (self._analyzing is None or self._analyzing.done()):
            self._rows_at_analyze += self._rows_since_analyze
            self._rows_since_analyze = 0
            self._analyzing = asyncio.create_task(self._analyze(), name="postgres-analyze")

    async def _analyze(self) -> None:
        try:
            async with self._connection() as connection:
                await connection.execute(ANALYZE)
        except StoreUnavailable as error:
            log.warning("ANALYZE of %s skipped: %s", self._endpoint, error)

    async def compact(self, revision: int) -> None:
        while True:
            async with self._connection() as connection:
                status = await connection.execute(COMPACT_CHUNK, revision)
            if status == "DELETE 0":
                return

    # -- reads ---------------------------------------------------------------------------------

    async def range(
        self,
        start: bytes,
        end: bytes | None,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        selection: Selection | None = None,
        counted: bool = True,
    ) -> RangeRows:
        if end is None and revision == 0 and selection is None:
            return await self._point_read(start, keys_only, count_only)
        if revision > 0 and not counted and not count_only and selection is None:
            return await self._page_at(start, end, revision, limit, keys_only)
        async with self._snapshot() as connection:
            head = await connection.fetchval(READ_REVISION)
            past = revision if 0 < revision < head else None
            if selection is None:
                select, count, params = range_queries(start, end, past, limit, keys_only)
            else:
                select, count, params = selection_queries(
                    DIALECT, selection.selector, start, end, past, limit, keys_only
                )
            if count_only:
                return RangeRows([], await connection.fetchval(count, *params, timeout=BULK_READ_TIMEOUT), head)
            rows = await connection.fetch(select, *params, timeout=BULK_READ_TIMEOUT)
            if limit <= 0 or len(rows) < limit or not counted:
                total = len(rows)
            else:
                total = await connection.fetchval(count, *params, timeout=BULK_READ_TIMEOUT)
        return RangeRows([KeyValue._make(row) for row in rows], total, head)

    async def _point_read(self, key: bytes, keys_only: bool, count_only: bool) -> RangeRows:
        """A read of one key at the head (kube-apiserver's Get): one round trip, not a transaction's four."""
        async with self._connection() as connection:
            head, *fields = await connection.fetchrow(POINT_READ, key)
        return point_rows(head, fields, keys_only, count_only)

    async def _page_at(self, start: bytes, end: bytes | None, revision: int, limit: int, keys_only: bool) -> RangeRows:
        """A page of a list after its first (at a fixed revision, its count known): one statement, not a
        transaction's four round trips. The versions valid at `revision` are the live ones when it is the head."""
        select, _, params = range_queries(start, end, revision, limit, keys_only, head_column=True)
        async with self._connection() as connection:
            rows = await connection.fetch(select, *params, timeout=BULK_READ_TIMEOUT)
            head = rows[0][0] if rows else await connection.fetchval(READ_REVISION)
        return RangeRows([KeyValue._make(row[1:]) for row in rows], len(rows), head)

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        async with self._snapshot() as connection:
            answers = [
                [KeyValue._make(row) for row in await connection.fetch(select, *params, timeout=BULK_READ_TIMEOUT)]
                for select, params in lookup_queries(DIALECT, lookup.names, lookup.values, after, limit)
            ]
        return merge_found(answers, limit)

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        async with self._connection() as connection:
            rows = await connection.fetch(UNINDEXED, *after, limit, timeout=BULK_READ_TIMEOUT)
        return [KeyValue._make(row) for row in rows]

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        async with self._connection() as connection:
            rows = await connection.fetch(LATEST, list(keys))
        return {row[0]: KeyValue._make(row) for row in rows}

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        # One statement, so one snapshot: no transaction needed.
        async with self._connection() as connection:
            rows = await connection.fetch(CHANGES, after, until, limit, timeout=BULK_READ_TIMEOUT)
        return [
            Change(KeyValue._make(row[:6]), row[6], None if row[7] is None else KeyValue._make(row[7:])) for row in rows
        ]

    async def size(self) -> int:
        async with self._connection() as connection:
            return int(await connection.fetchval(READ_SIZE))

    async def defragment(self) -> None:
        """Plain VACUUM of every table, not VACUUM FULL.

        VACUUM FULL would shrink the files most, but it rewrites each table under an ACCESS
        EXCLUSIVE lock: every read and write of kube-apiserver would stop for the whole rewrite.
        Plain VACUUM runs beside reads and writes: it makes the space of compacted rows reusable
        (Kubernetes rewrites objects constantly, so it is reused soon), gives the empty pages at
        the end of each table back to the file system, and refreshes the planner's statistics.
        """
        async with self._connection() as connection:
            await connection.execute(VACUUM, timeout=MAINTENANCE_TIMEOUT)

    # -- notes and moves ------------------------------------------------------------------------

    async def read_note(self, name: str) -> str | None:
        async with self._connection() as connection:
            await connection.execute(CREATE_NOTES)
            value = await connection.fetchval(READ_NOTE, name)
        return None if value is None else str(value)

    async def write_note(self, name: str, text: str | None) -> None:
        async with self._connection() as connection:
            await connection.execute(CREATE_NOTES)
            if text is None:
                await connection.execute(DELETE_NOTE, name)
            else:
                await connection.execute(WRITE_NOTE, name, text)

    async def remove_keys(self, keys: list[bytes]) -> None:
        async with self._connection() as connection:
            await connection.execute(REMOVE_KEYS, keys, timeout=BULK_READ_TIMEOUT)


def range_queries(
    start: bytes, end: bytes | None, past_revision: int | None, limit: int, keys_only: bool, head_column: bool = False
) -> tuple[str, str, list[object]]:
    """(select, count, parameters) for the keys in [start, end) at the head, or at a past revision;
    `head_column`: each row starts with the head revision."""
    params: list[object]
    if end is None:
        keys, params = ONE_KEY, [start]
    elif end:
        keys, params = KEYS_BETWEEN, [start, end]
    else:
        keys, params = KEYS_FROM, [start]
    if past_revision is None:
        versions = LIVE_VERSIONS
    else:
        versions = VERSIONS_AT.format(n=len(params) + 1)
        params.append(past_revision)
    fields = (HEAD_COLUMN if head_column else "") + (KV_KEYS_ONLY if keys_only else KV_FIELDS)
    select = SELECT_RANGE.format(fields=fields, versions=versions, keys=keys)
    if limit > 0:
        select += f" LIMIT {limit}"
    return select, COUNT_RANGE.format(versions=versions, keys=keys), params


def _unavailable(endpoint: str, error: BaseException) -> StoreUnavailable:
    if isinstance(error, TimeoutError):  # its text is empty
        reason = f"no answer within the timeout ({CONNECT_TIMEOUT:g} s to connect, {COMMAND_TIMEOUT:g} s per statement)"
    else:
        reason = str(error) or type(error).__name__
    return StoreUnavailable(f"PostgreSQL at {endpoint} is unavailable: {reason}")


def _is_closed(connection: asyncpg.Connection) -> bool:
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True  # closed under us, so asyncpg has already taken it back into the pool


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column, the shape unnest() takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


class PostgresOwnershipLock(ConnectionLock):
    """A session-level advisory lock on a dedicated connection, whose application_name and start
    time say who holds it (pg_locks joined with pg_stat_activity)."""

    def __init__(self, dsn: str, endpoint: str) -> None:
        super().__init__(endpoint)
        self._dsn = dsn
        self._connection: asyncpg.Connection | None = None

    async def _try_lock(self) -> bool:
        await self._drop()
        # application_name holds at most 63 bytes; the session's start says since when.
        name = f"kubefabric {this_process()}".encode()[:63]
        try:
            connection = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"application_name": name.decode(errors="ignore")},
            )
        except OUTAGES as error:
            raise _unavailable(self.database, error) from error
        try:
            locked = await connection.fetchval(TRY_OWNER_LOCK)
        except BaseException:
            connection.terminate()
            raise
        if not locked:
            await connection.close()
            return False
        connection.add_termination_listener(lambda _: self.mark_lost())
        self._connection = connection
        return True

    async def _still_held(self) -> bool:
        if self._connection is None or self._connection.is_closed():
            return False
        try:
            return bool(await self._connection.fetchval(OWNER_LOCK_HELD, timeout=CONNECT_TIMEOUT))
        except (*OUTAGES, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError):
            return False

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.terminate()  # no goodbye round trip: the server may be gone

    async def _unlock(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.execute(UNLOCK_OWNER_LOCK)

    async def holder(self) -> str | None:
        try:
            connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
        except OUTAGES as error:
            raise _unavailable(self.database, error) from error
        try:
            row = await connection.fetchrow(READ_OWNER_LOCK_HOLDER, OWNER_LOCK_ID >> 32, OWNER_LOCK_ID & 0xFFFF_FFFF)
        finally:
            await connection.close()
        if row is None:
            return None
        application, started, address = row
        who = application.removeprefix("kubefabric ") if application else f"a session from {address}"
        return f"{who} since {moment(started)}"

"""MySQL / MariaDB / TiDB store: asyncmy over a small connection pool of its own.

Same row model as the SQLite store, on InnoDB. Reads run in `START TRANSACTION WITH CONSISTENT
SNAPSHOT, READ ONLY` (REPEATABLE READ), so the revision they report and the rows they return come
from one snapshot. A write batch is one transaction of a few bulk statements; COMMIT returns once
InnoDB has flushed its redo log.

A database that cannot be reached raises StoreUnavailable quickly: connecting (TCP and handshake) is
bounded, so is silence from the server mid-query, and a connection that saw any error is closed, never
reused, so the server rolls back whatever it had open and the pool heals once the server is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import asyncmy
from asyncmy.connection import Connection
from asyncmy.cursors import Cursor
from asyncmy.errors import InterfaceError, OperationalError, ProgrammingError

from kubefabric.stores import redact
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
from kubefabric.stores._ownership import ConnectionLock, OwnershipLock, describe_this_process
from kubefabric.stores._selection import (
    MAX_NAME_BYTES,
    MAX_VALUE_BYTES,
    Dialect,
    lookup_queries,
    merge_found,
    selection_queries,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Keys are indexed in (superseded, key): InnoDB's 3072-byte index limit (DYNAMIC rows, 16 KiB pages)
# leaves room for this with margin on every MySQL-compatible server.
MAX_KEY_BYTES = 2048

CREATE_KV = f"""
CREATE TABLE IF NOT EXISTS kv (
    `key` VARBINARY({MAX_KEY_BYTES}) NOT NULL,
    mod_revision BIGINT NOT NULL,
    sub INT NOT NULL,
    superseded BIGINT NOT NULL,
    create_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value LONGBLOB NOT NULL,
    PRIMARY KEY (`key`, mod_revision),
    INDEX kv_live (superseded, `key`),
    INDEX kv_history (mod_revision, sub)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC
"""
# Version 2: the selector index (see _selection.py). Binary names and values compare exactly, and
# (name, value, key) fits InnoDB's 3072-byte index entries. Version 3: the same tables, the index also
# holding the rows garbage collection finds versions by.
CREATE_ATTRIBUTE = f"""
CREATE TABLE IF NOT EXISTS attribute (
    `key` VARBINARY({MAX_KEY_BYTES}) NOT NULL,
    mod_revision BIGINT NOT NULL,
    name VARBINARY({MAX_NAME_BYTES}) NOT NULL,
    value VARBINARY({MAX_VALUE_BYTES}) NOT NULL,
    number BIGINT NULL,
    PRIMARY KEY (`key`, mod_revision, name),
    INDEX attribute_value (name, value, `key`)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC
"""
CREATE_LEASE = "CREATE TABLE IF NOT EXISTS lease (id BIGINT PRIMARY KEY, ttl BIGINT NOT NULL) ENGINE = InnoDB"
CREATE_META = """
CREATE TABLE IF NOT EXISTS meta (name VARCHAR(64) CHARACTER SET ascii PRIMARY KEY, value BIGINT NOT NULL)
ENGINE = InnoDB
"""
# IGNORE: servers creating the schema at the same time all end up with the first one's rows.
INIT_META = """
INSERT IGNORE INTO meta (name, value)
VALUES ('schema_version', %s), ('revision', 1), ('compact_revision', -1), ('identity', %s), ('index_complete', 1)
"""
CREATE_DATABASE = "CREATE DATABASE IF NOT EXISTS {database}"
READ_META = "SELECT name, value FROM meta"
READ_SCHEMA_VERSION = "SELECT value FROM meta WHERE name = 'schema_version'"
READ_LEASES = "SELECT id, ttl FROM lease"
READ_LEASED_KEYS = f"SELECT lease, `key` FROM kv WHERE superseded = {LIVE} AND lease != 0"
READ_REVISION = "SELECT value FROM meta WHERE name = 'revision'"
READ_SIZE = """
SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables WHERE table_schema = DATABASE()
"""
READ_TABLES = """
SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'
"""

# The one writer's named lock (see MysqlOwnershipLock) and the table where its holder says who it is.
TRY_OWNER_LOCK = "SELECT GET_LOCK(%s, 0)"
UNLOCK_OWNER_LOCK = "SELECT RELEASE_LOCK(%s)"
OWNER_LOCK_HELD = "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()"
OWNER_LOCK_CONNECTION = "SELECT IS_USED_LOCK(%s)"
CREATE_OWNER = """
CREATE TABLE IF NOT EXISTS {database}.kubefabric_owner
(id TINYINT PRIMARY KEY, connection_id BIGINT NOT NULL, holder VARCHAR(1024) NOT NULL) ENGINE = InnoDB
"""
WRITE_OWNER = "REPLACE INTO {database}.kubefabric_owner VALUES (1, CONNECTION_ID(), %s)"
READ_OWNER = "SELECT holder FROM {database}.kubefabric_owner WHERE connection_id = %s"
PROCESS_HOST = "SELECT host FROM information_schema.PROCESSLIST WHERE id = %s"

# kubefabric's own notes (the topology its keys were placed by); outside the versioned schema.
CREATE_NOTES = """
CREATE TABLE IF NOT EXISTS notes (name VARCHAR(64) CHARACTER SET ascii PRIMARY KEY, value LONGTEXT NOT NULL)
ENGINE = InnoDB
"""
READ_NOTE = "SELECT value FROM notes WHERE name = %s"
WRITE_NOTE = "INSERT INTO notes (name, value) VALUES (%s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value)"
DELETE_NOTE = "DELETE FROM notes WHERE name = %s"
REMOVE_KEYS = "DELETE FROM {table} WHERE `key` IN ({keys})"

START_SNAPSHOT = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
START_WRITE = "START TRANSACTION"
COMMIT = "COMMIT"

# Each read names its index, so no plan depends on statistics: the live versions come from
# (superseded, key) in key order, the versions at a past revision from the primary key (key, mod_revision),
# in key order too, and history from (mod_revision, sub). None of them sorts.
KV_FIELDS = "`key`, create_revision, mod_revision, version, value, lease"
KV_KEYS_ONLY = "`key`, create_revision, mod_revision, version, x'', lease"
LIVE_ROWS = f"FROM kv FORCE INDEX (kv_live) WHERE superseded = {LIVE}"
ROWS_AT_REVISION = "FROM kv FORCE INDEX (PRIMARY) WHERE mod_revision <= %s AND superseded > %s"
ONE_KEY = " AND `key` = %s"
KEYS_FROM = " AND `key` >= %s"
KEYS_BEFORE = " AND `key` < %s"
SELECT_RANGE = "SELECT {fields} {rows} ORDER BY `key`"
# Leads the fields of a page read with its head revision, so that one statement (one consistent read) says both.
HEAD_COLUMN = "(SELECT value FROM meta WHERE name = 'revision'), "
COUNT_RANGE = "SELECT COUNT(*) {rows}"
# One key at the head with the revision it was read at: one statement, so one consistent read.
POINT_READ = f"""
SELECT m.value, {", ".join("k." + field for field in KV_FIELDS.split(", "))}
FROM meta m LEFT JOIN kv k FORCE INDEX (kv_live) ON k.superseded = {LIVE} AND k.`key` = %s WHERE m.name = 'revision'
"""
LATEST = f"SELECT {KV_FIELDS} {LIVE_ROWS} AND `key` IN ({{keys}})"
# A page ends with the revision of its `limit`-th change, all of it, so a txn's events are never split.
LAST_REVISION_OF_PAGE = """
SELECT mod_revision FROM kv FORCE INDEX (kv_history) WHERE mod_revision > %s AND mod_revision <= %s
ORDER BY mod_revision, sub LIMIT 1 OFFSET %s
"""
CHANGES = """
SELECT e.`key`, e.create_revision, e.mod_revision, e.version, e.value, e.lease, e.sub,
       p.`key`, p.create_revision, p.mod_revision, p.version, p.value, p.lease
FROM kv e FORCE INDEX (kv_history)
LEFT JOIN kv p FORCE INDEX (kv_live)
    ON p.superseded = e.mod_revision AND p.`key` = e.`key` AND p.mod_revision < e.mod_revision
WHERE e.mod_revision > %s AND e.mod_revision <= %s
ORDER BY e.mod_revision, e.sub
"""

INSERT_ROWS = (
    f"INSERT INTO kv ({', '.join(f'`{c}`' for c in ROW_COLUMNS)}) VALUES ({', '.join(['%s'] * len(ROW_COLUMNS))})"
)
# Supersede many rows in one statement (executemany would send one UPDATE per row).
SUPERSEDE = """
UPDATE kv JOIN ({rows}) AS superseding ON kv.`key` = superseding.`key` AND kv.mod_revision = superseding.mod_revision
SET kv.superseded = superseding.superseded
"""
SUPERSEDING_FIRST_ROW = "SELECT %s AS superseded, %s AS `key`, %s AS mod_revision"
SUPERSEDING_ROW = " UNION ALL SELECT %s, %s, %s"
SUPERSEDE_CHUNK_ROWS = 500
INSERT_LEASE = "INSERT INTO lease (id, ttl) VALUES (%s, %s) ON DUPLICATE KEY UPDATE ttl = VALUES(ttl)"
DELETE_LEASES = "DELETE FROM lease WHERE id IN ({ids})"
SET_META = "UPDATE meta SET value = %s WHERE name = %s"

# Compaction deletes only rows no writer touches; READ COMMITTED keeps its scans from taking gap locks
# that would make a concurrent write wait. The setting applies to the next statement only.
NEXT_STATEMENT_READ_COMMITTED = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
COMPACT_CHUNK = "SELECT `key`, mod_revision FROM kv WHERE superseded <= %s LIMIT %s"
VERSIONS = "(`key`, mod_revision) IN ({versions})"
INSERT_ATTRIBUTE = "INSERT INTO attribute (`key`, mod_revision, name, value, number) VALUES (%s, %s, %s, %s, %s)"
# Both leave the index to be built on start-up (see StoredState.index_backlog). DDL commits at once, so
# the version changes last: an upgrade cut short is done again.
UPGRADE_FROM_1 = (
    CREATE_ATTRIBUTE,
    "INSERT IGNORE INTO meta (name, value) VALUES ('index_complete', 0)",
    f"UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version'",
)
UPGRADE_FROM_2 = (
    "UPDATE meta SET value = 0 WHERE name = 'index_complete'",
    "TRUNCATE TABLE attribute",
    f"UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version'",
)
UNINDEXED = f"""
SELECT {KV_FIELDS} FROM kv FORCE INDEX (PRIMARY) WHERE (`key`, mod_revision) > (%s, %s) AND version > 0
ORDER BY `key`, mod_revision LIMIT %s
"""
DIALECT = Dialect(
    placeholder=lambda n: "%s",
    key="`key`",
    empty_value="x''",
    driven_join="attribute d FORCE INDEX (attribute_value) STRAIGHT_JOIN kv FORCE INDEX (PRIMARY)",
)
COMPACT_CHUNK_ROWS = 1000

POOL_SIZE = 16
CONNECT_TIMEOUT_SECONDS = 5.0
# A server silent this long in the middle of a statement is treated as gone. No statement of this store
# waits for locks or computes for long, so only a hung or unreachable server gets near it.
READ_TIMEOUT_SECONDS = 15
# Idle connections older than this are not reused: firewalls and NATs drop idle flows silently, and a
# statement on such a connection would wait out READ_TIMEOUT_SECONDS.
MAX_IDLE_SECONDS = 60.0
# Our escaping needs backslash escapes (no NO_BACKSLASH_ESCAPES); strict mode turns a too-long key into
# an error instead of a silently truncated one; no engine substitution keeps tables transactional.
SQL_MODE = "'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"  # quoted: asyncmy sends `SET sql_mode=` + this
# CONSISTENT SNAPSHOT means one snapshot per transaction only under REPEATABLE READ.
INIT_SESSION = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"

# Client and server error codes that mean the connection, not the statement, failed.
CONNECTION_FAILURES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1927,  # connection killed (MariaDB)
        2002,  # cannot connect through the socket
        2003,  # cannot connect to the host
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (TLS)
        4031,  # disconnected for inactivity (MySQL 8)
    }
)
ER_BAD_DB_ERROR = 1049
ER_NO_SUCH_TABLE = 1146

GO_DSN = re.compile(
    r"(?:(?P<user>[^:@]*)(?::(?P<password>.*))?@)?(?P<network>tcp|unix)\((?P<address>[^)]*)\)"
    r"/(?P<database>[^/?@]*)(?:\?(?P<query>.*))?",
    re.DOTALL,
)
URL_FORM = re.compile(
    r"(?:(?P<user>[^:@/]*)(?::(?P<password>.*))?@)?(?P<host>\[[^\]/]*\]|[^:@/?\[\]]+)(?::(?P<port>[0-9]+))?"
    r"/(?P<database>[^/?@]*)(?:\?(?P<query>.*))?",
    re.DOTALL,
)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 3306
DEFAULT_DATABASE = "kubernetes"
TLS_MODES = ("true", "skip-verify", "false")
KNOWN_OPTIONS = ("tls", "ssl-ca", "ssl-cert", "ssl-key")


class MysqlEndpointError(ValueError):
    """An endpoint this store cannot use; never quotes the password."""


@dataclass(frozen=True)
class MysqlEndpoint:
    """Where and how to connect; the password never appears in its repr."""

    user: str
    password: str = field(repr=False)
    database: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    unix_socket: str | None = None
    tls: ssl.SSLContext | None = None


def parse_endpoint(endpoint: str) -> MysqlEndpoint:
    """`mysql://user:pass@tcp(host:port)/db` (Go DSN, taken verbatim), `mysql://user:pass@unix(/path)/db`
    or `mysql://user:pass@host:port/db` (URL, percent-decoded); query `?tls=true|skip-verify|false` with
    `ssl-ca`, `ssl-cert`, `ssl-key` file paths."""
    rest = endpoint.removeprefix("mysql://")
    host, port, unix_socket = DEFAULT_HOST, DEFAULT_PORT, None
    if match := GO_DSN.fullmatch(rest):
        user, password, database = match["user"] or "", match["password"] or "", match["database"]
        if match["network"] == "unix":
            unix_socket = match["address"]
        else:
            host, port = _split_address(match["address"])
    elif match := URL_FORM.fullmatch(rest):
        user, password = unquote(match["user"] or ""), unquote(match["password"] or "")
        database = unquote(match["database"])
        host, port = match["host"].strip("[]"), int(match["port"] or DEFAULT_PORT)
    else:
        raise MysqlEndpointError(
            "expected mysql://user:password@tcp(host:port)/database, mysql://user:password@unix(/socket)/database "
            "or mysql://user:password@host:port/database"
        )
    return MysqlEndpoint(
        user=user,
        password=password,
        database=database or DEFAULT_DATABASE,
        host=host,
        port=port,
        unix_socket=unix_socket,
        tls=_tls_context(dict(parse_qsl(match["query"] or "", keep_blank_values=True))),
    )


def _split_address(address: str) -> tuple[str, int]:
    """The host and port of `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]")
        port = port.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if port and not port.isdigit():
        raise MysqlEndpointError(f"bad port {port!r} in tcp({address})")
    return host or DEFAULT_HOST, int(port) if port else DEFAULT_PORT


def _tls_context(options: dict[str, str]) -> ssl.SSLContext | None:
    unknown = set(options) - set(KNOWN_OPTIONS)
    if unknown:
        raise MysqlEndpointError(
            f"unknown mysql endpoint option {sorted(unknown)[0]!r} (known: {', '.join(KNOWN_OPTIONS)})"
        )
    files = {name: options[name] for name in ("ssl-ca", "ssl-cert", "ssl-key") if options.get(name)}
    mode = options.get("tls", "true" if files else "false").lower()
    if mode not in TLS_MODES:
        raise MysqlEndpointError(f"tls={mode}: expected one of {', '.join(TLS_MODES)}")
    if mode == "false":
        if files:
            raise MysqlEndpointError(f"{', '.join(files)} given with tls=false")
        return None
    if ("ssl-cert" in files) != ("ssl-key" in files):
        raise MysqlEndpointError("ssl-cert and ssl-key go together")
    try:
        context = ssl.create_default_context(cafile=files.get("ssl-ca"))
        if "ssl-cert" in files:
            context.load_cert_chain(files["ssl-cert"], files["ssl-key"])
    except (OSError, ssl.SSLError) as error:
        raise MysqlEndpointError(f"cannot load the TLS files {', '.join(files.values())}: {error}") from None
    if mode == "skip-verify":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@contextmanager
def _failures_as_unavailable(database: str) -> Iterator[None]:
    """Connection failures become StoreUnavailable naming the (redacted) database and what happened."""
    try:
        yield
    except Exception as error:
        if _is_connection_failure(error):
            reason = str(error) or type(error).__name__
            raise StoreUnavailable(f"cannot reach the database at {database}: {reason}") from error
        raise


def _is_connection_failure(error: BaseException) -> bool:
    if isinstance(error, OperationalError):
        return bool(error.args) and error.args[0] in CONNECTION_FAILURES
    return isinstance(error, InterfaceError | OSError)  # OSError: ConnectionError and TimeoutError too


class _ConnectionPool:
    """Up to `size` connections. Connections are opened in parallel, each attempt (TCP and handshake)
    bounded, so an unreachable server costs every caller one timeout, not a queue of them."""

    def __init__(self, endpoint: MysqlEndpoint, size: int) -> None:
        self._endpoint = endpoint
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[Connection, float]] = []  # (connection, idle since), most recent last
        self.closed = False

    async def take(self, fresh: bool) -> tuple[Connection, bool]:
        """A connection, and whether it was reused (it may have died while idle)."""
        await self._slots.acquire()
        try:
            while self._idle and not fresh:
                connection, since = self._idle.pop()
                if time.monotonic() - since < MAX_IDLE_SECONDS:
                    return connection, True
                await _quit(connection)
            return await self.connect(self._endpoint.database), False
        except BaseException:
            self._slots.release()
            raise

    def give_back(self, connection: Connection, reusable: bool) -> None:
        self._slots.release()
        if reusable and not self.closed:
            self._idle.append((connection, time.monotonic()))
        else:
            connection.close()

    async def connect(self, database: str | None) -> Connection:
        endpoint = self._endpoint
        where = endpoint.unix_socket or f"{endpoint.host}:{endpoint.port}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                return await self._connect(database)
        except TimeoutError:  # its own text is empty
            raise TimeoutError(f"timed out after {CONNECT_TIMEOUT_SECONDS:g} s connecting to {where}") from None

    async def _connect(self, database: str | None) -> Connection:
        endpoint = self._endpoint
        return await asyncmy.connect(
            host=endpoint.host,
            port=endpoint.port,
            unix_socket=endpoint.unix_socket,
            user=endpoint.user,
            password=endpoint.password,
            database=database,
            ssl=endpoint.tls,
            charset="utf8mb4",
            sql_mode=SQL_MODE,
            init_command=INIT_SESSION,
            autocommit=True,
            binary_prefix=True,  # bytes are sent as _binary'...': never read as text
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            program_name="kubefabric",
        )

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(connection) for connection, _ in idle))


async def _quit(connection: Connection) -> None:
    """Close with COM_QUIT, so the server does not log an aborted connection."""
    try:
        async with asyncio.timeout(1.0):
            await connection.ensure_closed()
    except OSError:  # TimeoutError included
        connection.close()


class MysqlStore:
    """A Store on one MySQL-compatible database."""

    def __init__(self, endpoint: str, pool_size: int = POOL_SIZE) -> None:
        self._endpoint = parse_endpoint(endpoint)
        self._redacted = redact(endpoint)
        self._pool = _ConnectionPool(self._endpoint, pool_size)
        self.ownership: OwnershipLock = MysqlOwnershipLock(self._pool, self._endpoint, self._redacted)

    def __repr__(self) -> str:
        return self._redacted

    # -- connections ---------------------------------------------------------------------------

    def _failures_as_unavailable(self) -> AbstractContextManager[None]:
        return _failures_as_unavailable(self._redacted)

    @asynccontextmanager
    async def _session(self, first_statement: str, args: Sequence[object] = ()) -> AsyncIterator[Cursor]:
        """A cursor on a pooled connection, `first_statement` already run; an error closes the connection."""
        if self._pool.closed:
            raise StoreUnavailable(f"the store for {self._redacted} is closed")
        with self._failures_as_unavailable():
            connection, cursor = await self._checkout(first_statement, args)
            try:
                yield cursor
            except BaseException:
                self._pool.give_back(connection, reusable=False)
                raise
            self._pool.give_back(connection, reusable=True)

    async def _checkout(self, first_statement: str, args: Sequence[object]) -> tuple[Connection, Cursor]:
        """A connection with `first_statement` run on it.

        A reused connection may have been closed by the server while idle (restart, wait_timeout); when
        the first statement fails on one, nothing has happened yet, so it runs again on a new connection.
        """
        connection, reused = await self._pool.take(fresh=False)
        while True:
            cursor = connection.cursor()
            try:
                await cursor.execute(first_statement, args or None)
                return connection, cursor
            except BaseException as error:
                self._pool.give_back(connection, reusable=False)
                if not (reused and _is_connection_failure(error)):
                    raise
            connection, reused = await self._pool.take(fresh=True)

    @asynccontextmanager
    async def _transaction(self, start: str) -> AsyncIterator[Cursor]:
        """`start`, the body, COMMIT; on any error the connection is closed, which rolls back."""
        async with self._session(start) as cursor:
            yield cursor
            await cursor.execute(COMMIT)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> StoredState:
        version = await self._schema_version()  # creates a missing database, where the lock's holder says who it is
        if version is not None and version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self._endpoint.database} has schema version {version}, newer than this kubefabric "
                f"({SCHEMA_VERSION}); upgrade kubefabric"
            )
        await self.ownership.acquire()
        try:
            if version is None:
                await self._create_schema()
            elif version in (1, 2):
                log.info(
                    "upgrading database %s to schema version %d: an index of selectors and owners",
                    self._endpoint.database,
                    SCHEMA_VERSION,
                )
                first, *rest = UPGRADE_FROM_1 if version == 1 else UPGRADE_FROM_2
                async with self._session(first) as cursor:
                    for statement in rest:
                        await cursor.execute(statement)
            async with self._transaction(START_SNAPSHOT) as cursor:
                await cursor.execute(READ_META)
                meta = dict(await cursor.fetchall())
                await cursor.execute(READ_LEASES)
                leases = dict(await cursor.fetchall())
                await cursor.execute(READ_LEASED_KEYS)
                leased_keys = list(await cursor.fetchall())
        except BaseException:
            await self.ownership.release()
            raise
        return StoredState(
            revision=meta["revision"],
            compact_revision=meta["compact_revision"],
            leases=leases,
            leased_keys=leased_keys,
            identity=meta["identity"],
            index_backlog=not meta["index_complete"],
        )

    async def _schema_version(self) -> int | None:
        """The schema version in the database; None if it has no schema yet (creating a missing database)."""
        try:
            async with self._session(READ_SCHEMA_VERSION) as cursor:
                row = await cursor.fetchone()
            return None if row is None else int(row[0])
        except ProgrammingError as error:
            if error.args[0] != ER_NO_SUCH_TABLE:
                raise
        except OperationalError as error:
            if error.args[0] != ER_BAD_DB_ERROR:
                raise
            log.info("creating database %s", self._endpoint.database)
            with self._failures_as_unavailable():
                connection = await self._pool.connect(database=None)
                try:
                    async with connection.cursor() as cursor:
                        await cursor.execute(
                            CREATE_DATABASE.format(database=_quote_identifier(self._endpoint.database))
                        )
                finally:
                    await _quit(connection)
        return None

    async def _create_schema(self) -> None:
        log.info("creating schema version %d in database %s", SCHEMA_VERSION, self._endpoint.database)
        # DDL commits implicitly, so each statement stands alone; all of them are idempotent.
        async with self._session(CREATE_KV) as cursor:
            await cursor.execute(CREATE_LEASE)
            await cursor.execute(CREATE_META)
            await cursor.execute(CREATE_ATTRIBUTE)
            await cursor.execute(INIT_META, (SCHEMA_VERSION, random.getrandbits(63)))

    async def close(self) -> None:
        await self._pool.close()
        await self.ownership.release()

    async def revision(self) -> int:
        async with self._session(READ_REVISION) as cursor:
            (revision,) = await cursor.fetchone()
        return int(revision)

    # -- writes --------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        updates, inserts = split_batch(batch)
        await self.ownership.check()
        async with self._transaction(START_WRITE) as cursor:
            for start in range(0, len(updates), SUPERSEDE_CHUNK_ROWS):
                chunk = updates[start : start + SUPERSEDE_CHUNK_ROWS]
                rows = SUPERSEDING_FIRST_ROW + SUPERSEDING_ROW * (len(chunk) - 1)
                changed = await cursor.execute(SUPERSEDE.format(rows=rows), [value for row in chunk for value in row])
                if changed != len(chunk):
                    raise RuntimeError(
                        f"{self._redacted}: {len(chunk) - changed} superseded versions were not in the database; "
                        "is another server writing to it?"
                    )
            # asyncmy turns this into multi-row INSERTs of up to ~1 MB each.
            await cursor.executemany(INSERT_ROWS, inserts)
            await cursor.executemany(INSERT_LEASE, batch.granted_leases)
            if batch.revoked_leases:
                ids = ", ".join(["%s"] * len(batch.revoked_leases))
                await cursor.execute(DELETE_LEASES.format(ids=ids), batch.revoked_leases)
            for start in range(0, len(batch.reindexed), SUPERSEDE_CHUNK_ROWS):
                await _delete_versions(cursor, "attribute", batch.reindexed[start : start + SUPERSEDE_CHUNK_ROWS])
            await cursor.executemany(INSERT_ATTRIBUTE, batch.attributes)
            await cursor.execute(SET_META, (batch.revision, "revision"))
            if batch.compact_revision is not None:
                await cursor.execute(SET_META, (batch.compact_revision, "compact_revision"))
            if batch.index_complete:
                await cursor.execute(SET_META, (1, "index_complete"))

    async def compact(self, revision: int) -> None:
        # Small chunks, each its own transaction, so writers are never held up for long.
        deleted = COMPACT_CHUNK_ROWS
        while deleted == COMPACT_CHUNK_ROWS:
            async with self._session(NEXT_STATEMENT_READ_COMMITTED) as cursor:
                await cursor.execute(START_WRITE)
                await cursor.execute(COMPACT_CHUNK, (revision, COMPACT_CHUNK_ROWS))
                versions = list(await cursor.fetchall())
                if versions:
                    await _delete_versions(cursor, "attribute", versions)
                    await _delete_versions(cursor, "kv", versions)
                await cursor.execute(COMMIT)
            deleted = len(versions)

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        async with self._session(UNINDEXED, (*after, limit)) as cursor:
            return [KeyValue._make(row) for row in await cursor.fetchall()]

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        answers = []
        async with self._transaction(START_SNAPSHOT) as cursor:
            for select, params in lookup_queries(DIALECT, lookup.names, lookup.values, after, limit):
                await cursor.execute(select, params)
                answers.append([KeyValue._make(row) for row in await cursor.fetchall()])
        return merge_found(answers, limit)

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
        async with self._transaction(START_SNAPSHOT) as cursor:
            await cursor.execute(READ_REVISION)
            (head,) = await cursor.fetchone()
            past = None if revision <= 0 or revision >= head else revision
            if selection is None:
                rows, params = range_rows(start, end, past)
                select, count = select_range(rows, keys_only, limit), COUNT_RANGE.format(rows=rows)
            else:
                select, count, params = selection_queries(
                    DIALECT, selection.selector, start, end, past, limit, keys_only
                )
            if count_only:
                return RangeRows([], await _count(cursor, count, params), head)
            await cursor.execute(select, params)
            kvs = [KeyValue._make(row) for row in await cursor.fetchall()]
            full = limit > 0 and len(kvs) >= limit
            total = await _count(cursor, count, params) if full and counted else len(kvs)
        return RangeRows(kvs, total, head)

    async def _page_at(self, start: bytes, end: bytes | None, revision: int, limit: int, keys_only: bool) -> RangeRows:
        """A page of a list after its first (at a fixed revision, its count known): one statement, not a
        transaction's four round trips. The versions valid at `revision` are the live ones when it is the head;
        the clustered primary key reads them in key order without a lookup per row."""
        rows, params = range_rows(start, end, revision)
        async with self._session(select_range(rows, keys_only, limit, head_column=True), params) as cursor:
            found = await cursor.fetchall()
            if not found:
                await cursor.execute(READ_REVISION)
                return RangeRows([], 0, (await cursor.fetchone())[0])
        return RangeRows([KeyValue._make(row[1:]) for row in found], len(found), found[0][0])

    async def _point_read(self, key: bytes, keys_only: bool, count_only: bool) -> RangeRows:
        """A read of one key at the head (kube-apiserver's Get): one statement, not a transaction's four."""
        async with self._session(POINT_READ, (key,)) as cursor:
            head, *fields = await cursor.fetchone()
        return point_rows(head, fields, keys_only, count_only)

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        wanted = list(keys)
        if not wanted:
            return {}
        async with self._session(LATEST.format(keys=", ".join(["%s"] * len(wanted))), wanted) as cursor:
            rows = await cursor.fetchall()
        return {row[0]: KeyValue._make(row) for row in rows}

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        async with self._transaction(START_SNAPSHOT) as cursor:
            await cursor.execute(LAST_REVISION_OF_PAGE, (after, until, limit - 1))
            last = await cursor.fetchone()
            await cursor.execute(CHANGES, (after, until if last is None else last[0]))
            rows = await cursor.fetchall()
        return [
            Change(KeyValue._make(row[:6]), row[6], None if row[7] is None else KeyValue._make(row[7:])) for row in rows
        ]

    async def size(self) -> int:
        async with self._session(READ_SIZE) as cursor:
            (size,) = await cursor.fetchone()
        return int(size)

    async def defragment(self) -> None:
        """OPTIMIZE TABLE on each table: InnoDB rebuilds it online (reads and writes go on, but for
        short locks at its start and end) and returns the freed space to the file system."""
        async with self._session(READ_TABLES) as cursor:
            tables = [name for (name,) in await cursor.fetchall()]
            for table in tables:
                await cursor.execute(f"OPTIMIZE TABLE {_quote_identifier(table)}")
                for _, _, kind, text in await cursor.fetchall():
                    if kind == "error":
                        raise RuntimeError(f"OPTIMIZE TABLE {table}: {text}")

    # -- notes and moves ------------------------------------------------------------------------

    async def read_note(self, name: str) -> str | None:
        async with self._session(CREATE_NOTES) as cursor:
            await cursor.execute(READ_NOTE, (name,))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def write_note(self, name: str, text: str | None) -> None:
        async with self._session(CREATE_NOTES) as cursor:
            if text is None:
                await cursor.execute(DELETE_NOTE, (name,))
            else:
                await cursor.execute(WRITE_NOTE, (name, text))

    async def remove_keys(self, keys: list[bytes]) -> None:
        if not keys:
            return
        async with self._transaction(START_WRITE) as cursor:
            for table in ("kv", "attribute"):
                await cursor.execute(REMOVE_KEYS.format(table=table, keys=", ".join(["%s"] * len(keys))), keys)


def range_rows(start: bytes, end: bytes | None, revision: int | None) -> tuple[str, list[object]]:
    """The FROM and WHERE of a range read and their parameters; `revision` None reads the live versions."""
    rows, params = (LIVE_ROWS, []) if revision is None else (ROWS_AT_REVISION, [revision, revision])
    if end is None:
        return rows + ONE_KEY, [*params, start]
    if not end:
        return rows + KEYS_FROM, [*params, start]
    return rows + KEYS_FROM + KEYS_BEFORE, [*params, start, end]


def select_range(rows: str, keys_only: bool, limit: int, head_column: bool = False) -> str:
    """`head_column`: each row starts with the head revision."""
    fields = (HEAD_COLUMN if head_column else "") + (KV_KEYS_ONLY if keys_only else KV_FIELDS)
    query = SELECT_RANGE.format(fields=fields, rows=rows)
    return query + (f" LIMIT {limit}" if limit > 0 else "")


async def _count(cursor: Cursor, count: str, params: list[object]) -> int:
    await cursor.execute(count, params)
    (total,) = await cursor.fetchone()
    return int(total)


async def _delete_versions(cursor: Cursor, table: str, versions: Sequence[tuple[bytes, int]]) -> None:
    """Delete the rows of these (key, mod_revision) versions from `table` in one statement."""
    where = VERSIONS.format(versions=", ".join(["(%s, %s)"] * len(versions)))
    await cursor.execute(f"DELETE FROM {table} WHERE {where}", [value for version in versions for value in version])


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MysqlOwnershipLock(ConnectionLock):
    """GET_LOCK on a dedicated connection; the holder writes who it is into `kubefabric_owner`."""

    def __init__(self, pool: _ConnectionPool, endpoint: MysqlEndpoint, redacted: str) -> None:
        super().__init__(redacted)
        self._pool = pool
        self._database = _quote_identifier(endpoint.database)
        # Named locks are server-wide and their names at most 64 characters long.
        name = f"kubefabric:{endpoint.database}"
        self._name = name if len(name) <= 64 else f"kubefabric:{hashlib.sha256(name.encode()).hexdigest()[:53]}"
        self._connection: Connection | None = None

    async def _try_lock(self) -> bool:
        await self._drop()
        with _failures_as_unavailable(self.database):
            connection = await self._pool.connect(database=None)
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(TRY_OWNER_LOCK, (self._name,))
                    (locked,) = await cursor.fetchone()
                    if locked == 1:
                        await self._announce(cursor)
            except BaseException:
                connection.close()
                raise
        if locked != 1:
            await _quit(connection)
            return False
        self._connection = connection
        return True

    async def _announce(self, cursor: Cursor) -> None:
        """Say who holds the lock, for the servers it refuses."""
        write = WRITE_OWNER.format(database=self._database)
        try:
            await cursor.execute(write, (describe_this_process(),))
        except ProgrammingError as error:
            if error.args[0] != ER_NO_SUCH_TABLE:
                raise
            await cursor.execute(CREATE_OWNER.format(database=self._database))
            await cursor.execute(write, (describe_this_process(),))

    async def _still_held(self) -> bool:
        if self._connection is None:
            return False
        try:
            async with self._connection.cursor() as cursor:
                await cursor.execute(OWNER_LOCK_HELD, (self._name,))
                (held,) = await cursor.fetchone()
            return bool(held == 1)
        except Exception as error:
            if _is_connection_failure(error):
                return False
            raise

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # no goodbye round trip: the server may be gone

    async def _unlock(self) -> None:
        if self._connection is not None:
            async with self._connection.cursor() as cursor:
                await cursor.execute(UNLOCK_OWNER_LOCK, (self._name,))

    async def holder(self) -> str | None:
        with _failures_as_unavailable(self.database):
            connection = await self._pool.connect(database=None)
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(OWNER_LOCK_CONNECTION, (self._name,))
                    (connection_id,) = await cursor.fetchone()
                    if connection_id is None:
                        return None
                    try:
                        await cursor.execute(READ_OWNER.format(database=self._database), (connection_id,))
                        row = await cursor.fetchone()
                    except ProgrammingError:  # no owner table yet
                        row = None
                    if row is not None:
                        return str(row[0])
                    await cursor.execute(PROCESS_HOST, (connection_id,))
                    host = await cursor.fetchone()
                    return f"connection {connection_id} from {host[0] if host else 'an unknown host'}"
            finally:
                await _quit(connection)

"""Embedded SQLite store: stdlib sqlite3 in WAL mode, one writer thread, a pool of reader threads.

Writes arrive already grouped (the core batches concurrent commits), so each batch is one
transaction and one fsync. Readers use their own connections and read WAL snapshots, so they
never wait for the writer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl

from kubefabric.stores._base import (
    LIVE,
    ROW_COLUMNS,
    Change,
    KeyValue,
    Lookup,
    RangeRows,
    Selection,
    StoredState,
    WriteBatch,
    split_batch,
)
from kubefabric.stores._ownership import FileOwnershipLock, OwnershipLock
from kubefabric.stores._selection import Dialect, lookup_queries, merge_found, selection_queries

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 3
# Version 2: the selector index (see _selection.py). Version 3: the same tables, the index also holding the
# rows garbage collection finds versions by.
ATTRIBUTE_SCHEMA = """
CREATE TABLE attribute (
    key BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    number INTEGER,
    PRIMARY KEY (key, mod_revision, name)
) WITHOUT ROWID;
CREATE INDEX attribute_value ON attribute (name, value, key, mod_revision);
"""
SCHEMA = f"""
CREATE TABLE kv (
    key BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    superseded INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL
);
-- Versions of a key in revision order, with `superseded` so that reads at a past revision are
-- answered, counted included, from this index alone.
CREATE INDEX kv_key ON kv (key, mod_revision, superseded);
CREATE INDEX kv_live ON kv (superseded, key);
CREATE INDEX kv_history ON kv (mod_revision, sub);
CREATE TABLE lease (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('revision', 1), ('compact_revision', -1),
    ('index_complete', 1);
{ATTRIBUTE_SCHEMA}
"""
# Both leave the index to be built on start-up (see StoredState.index_backlog).
UPGRADE_FROM_1 = f"""
BEGIN IMMEDIATE;
{ATTRIBUTE_SCHEMA}
INSERT INTO meta VALUES ('index_complete', 0);
UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version';
COMMIT;
"""
UPGRADE_FROM_2 = f"""
BEGIN IMMEDIATE;
DELETE FROM attribute;
UPDATE meta SET value = 0 WHERE name = 'index_complete';
UPDATE meta SET value = {SCHEMA_VERSION} WHERE name = 'schema_version';
COMMIT;
"""

KV_FIELDS = "key, create_revision, mod_revision, version, value, lease"
KV_KEYS_ONLY = "key, create_revision, mod_revision, version, x'', lease"
INSERT_ROW = f"INSERT INTO kv ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
SUPERSEDE = "UPDATE kv SET superseded = ? WHERE key = ? AND mod_revision = ?"
SET_META = "UPDATE meta SET value = ? WHERE name = ?"
READ_REVISION = "SELECT value FROM meta WHERE name = 'revision'"
READ_LATEST = f"SELECT {KV_FIELDS} FROM kv WHERE superseded = ? AND key IN ({{keys}})"
# Keys per statement of `latest`: SQLite's oldest limit on bound parameters is 999.
LATEST_CHUNK = 500
CHANGES = """
SELECT e.key, e.create_revision, e.mod_revision, e.version, e.value, e.lease, e.sub,
       p.key, p.create_revision, p.mod_revision, p.version, p.value, p.lease
FROM kv e LEFT JOIN kv p ON p.key = e.key AND p.superseded = e.mod_revision AND p.mod_revision < e.mod_revision
WHERE e.mod_revision > ? AND e.mod_revision <= ?
ORDER BY e.mod_revision, e.sub
"""
LAST_REVISION_OF_PAGE = "SELECT mod_revision FROM kv WHERE mod_revision > ? AND mod_revision <= ? ORDER BY mod_revision, sub LIMIT 1 OFFSET ?"
INSERT_ATTRIBUTE = "INSERT INTO attribute (key, mod_revision, name, value, number) VALUES (?, ?, ?, ?, ?)"
DELETE_ATTRIBUTES = "DELETE FROM attribute WHERE key = ? AND mod_revision = ?"
UNINDEXED = f"""
SELECT {KV_FIELDS} FROM kv WHERE (key, mod_revision) > (?, ?) AND version > 0 ORDER BY key, mod_revision LIMIT ?
"""
COMPACT_CHUNK = "SELECT rowid, key, mod_revision FROM kv WHERE superseded <= ? LIMIT 2000"
DIALECT = Dialect(
    placeholder=lambda n: "?",
    key="key",
    empty_value="x''",
    driven_join="attribute d INDEXED BY attribute_value CROSS JOIN kv INDEXED BY kv_key",
)

# kubefabric's own notes (the topology its keys were placed by); outside the versioned schema.
CREATE_NOTES = "CREATE TABLE IF NOT EXISTS notes (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

# The largest page of a list read on the event loop's own connection (see `range`): kube-apiserver's
# pages of 500, and the extra row that tells whether there are more.
INLINE_PAGE_ROWS = 1001

CHECKPOINT_SECONDS = 1.0
# Passive checkpoints in a row at most, each copying what commits added while the one before ran.
CHECKPOINT_ROUNDS = 4
# A WAL past this size is checkpointed and rewound at once (see _checkpoint); each rewind also cuts
# the file back to this size (journal_size_limit). Writes can add 50 MiB a second, so its size is
# looked at every WAL_CHECK_SECONDS, which keeps it far below 64 MiB.
WAL_REWIND_BYTES = 16 << 20
WAL_CHECK_SECONDS = 0.1
# How long a rewind may hold up the writer while readers of older snapshots finish.
WAL_REWIND_WAIT_MS = 100

# Query options of the sqlite:// endpoint, as the Go drivers spell them; each must keep the
# behaviour it names, so options that would change it are refused rather than ignored.
KNOWN_OPTIONS = {"_journal", "_journal_mode", "cache", "_busy_timeout", "_txlock", "_synchronous", "_fk"}


class SqliteOptionError(ValueError):
    pass


def parse_endpoint(endpoint: str) -> tuple[Path, int, str]:
    """`sqlite://./db/state.db?opt=v` or `sqlite:///abs/path.db` -> (path, busy timeout ms, synchronous)."""
    rest = endpoint.removeprefix("sqlite://")
    path_text, _, query = rest.partition("?")
    if not path_text:
        raise SqliteOptionError(f"sqlite endpoint has no file path: {endpoint!r}")
    busy_timeout_ms, synchronous = 30000, "FULL"
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in KNOWN_OPTIONS:
            raise SqliteOptionError(
                f"unknown sqlite endpoint option {name!r} (known: {', '.join(sorted(KNOWN_OPTIONS))})"
            )
        if name in ("_journal", "_journal_mode") and value.upper() != "WAL":
            raise SqliteOptionError(f"{name}={value}: kubefabric always runs SQLite in WAL mode")
        if name == "_txlock" and value.lower() != "immediate":
            raise SqliteOptionError(f"_txlock={value}: writes always take the lock immediately")
        if name == "_busy_timeout":
            busy_timeout_ms = int(value)
        if name == "_synchronous":
            if value.upper() not in ("FULL", "EXTRA"):
                raise SqliteOptionError(f"_synchronous={value}: only FULL or EXTRA keep acknowledged writes")
            synchronous = value.upper()
    return Path(path_text), busy_timeout_ms, synchronous


class SqliteStore:
    """A Store on one SQLite file."""

    def __init__(self, endpoint: str, readers: int = 4) -> None:
        self.path, self._busy_timeout_ms, self._synchronous = parse_endpoint(endpoint)
        # One thread owns the write connection, so writes are serial without any lock contention.
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_threads = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-reader")
        self._checkpoint_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._checkpointer: asyncio.Task[None] | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._loop_connection: sqlite3.Connection | None = None
        self.ownership: OwnershipLock = FileOwnershipLock(self.path)

    def __repr__(self) -> str:
        return f"sqlite://{self.path}"

    # -- connections ---------------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        # Checkpoints run on their own thread (see _checkpoint_forever), never inside a commit.
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        connection.execute(f"PRAGMA journal_size_limit = {WAL_REWIND_BYTES}")
        with self._connections_lock:
            self._connections.append(connection)
        return connection

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open_connection()
        return connection

    def _loop_db(self) -> sqlite3.Connection:
        """The event loop thread's own connection, for point reads."""
        if self._loop_connection is None:
            self._loop_connection = self._open_connection()
        return self._loop_connection

    async def _on_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_thread, lambda: work(self._connection()))

    async def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_threads, lambda: work(self._connection()))

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> StoredState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.ownership.acquire()
        try:
            state = await self._on_writer(self._open)
        except BaseException:
            await self.ownership.release()
            raise
        self._checkpointer = asyncio.create_task(self._checkpoint_forever(), name="sqlite-checkpoint")
        return state

    async def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database file in the background: once a second, and as soon as the
        WAL passes WAL_REWIND_BYTES.

        SQLite's automatic checkpoint would run inside whichever commit crosses the threshold and
        stall it, and every write waiting behind it, for the length of a database-file fsync. A
        passive checkpoint here waits for nobody and is waited for by nobody.
        """
        loop = asyncio.get_running_loop()
        last, pause = loop.time(), WAL_CHECK_SECONDS
        while True:
            await asyncio.sleep(pause)
            if loop.time() - last < CHECKPOINT_SECONDS and self._wal_bytes() <= WAL_REWIND_BYTES:
                continue
            last = loop.time()
            try:
                rewound = await loop.run_in_executor(
                    self._checkpoint_thread, lambda: self._checkpoint(self._connection())
                )
            except sqlite3.Error as error:
                log.warning("checkpoint of %s failed, will retry: %s", self.path, error)
                rewound = False
            # A reader that keeps an old snapshot for long would otherwise make every check hold
            # the writer up; give it a second.
            pause = WAL_CHECK_SECONDS if rewound else CHECKPOINT_SECONDS

    def _checkpoint(self, db: sqlite3.Connection) -> bool:
        """Passive checkpoints until the WAL is all copied, then a rewind of the WAL if it has grown
        large; False if readers kept it from rewinding.

        The WAL starts over only when a commit begins while all of it is copied and no reader uses
        it. A commit that lands while a checkpoint runs spoils that moment, and at a steady 200
        commits a second nearly every one did: the WAL grew to WAL_REWIND_BYTES every few seconds and
        each rewind held the writer up. So the checkpoint runs again, copying only what such commits
        added, until a round finds nothing new; the next commit then writes the WAL from its start.

        Readers of older snapshots (long lists under steady writes) still keep the moment from
        coming, and the WAL grew to hundreds of MiB. A RESTART checkpoint makes it: it takes the
        writer's lock, copies the little the passive ones left, and waits for those readers to
        finish, holding the writer up for at most WAL_REWIND_WAIT_MS.
        """
        previous = None
        for _ in range(CHECKPOINT_ROUNDS):
            _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames == previous or copied < frames:
                break  # nothing committed since the last round, or readers hold the rest back
            previous = frames
        # What the WAL holds since it last started over, not its file's size: a rewind just made by
        # a commit does not shrink the file at once, and a needless RESTART would hold the writer up.
        if frames * db.execute("PRAGMA page_size").fetchone()[0] <= WAL_REWIND_BYTES:
            return True
        db.execute(f"PRAGMA busy_timeout = {WAL_REWIND_WAIT_MS}")
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        return not busy

    def _wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def _open(self, db: sqlite3.Connection) -> StoredState:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            log.info("creating schema version %d in %s", SCHEMA_VERSION, self.path)
            db.execute("BEGIN IMMEDIATE")
            db.executescript(SCHEMA)  # executescript commits the open transaction first
            db.execute("INSERT INTO meta VALUES ('identity', ?)", (random.getrandbits(63),))
        meta = dict(db.execute("SELECT name, value FROM meta"))
        if meta["schema_version"] in (1, 2):
            log.info("upgrading %s to schema version %d: an index of selectors and owners", self.path, SCHEMA_VERSION)
            db.executescript(UPGRADE_FROM_1 if meta["schema_version"] == 1 else UPGRADE_FROM_2)
            meta = dict(db.execute("SELECT name, value FROM meta"))
        if meta["schema_version"] > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{self.path} has schema version {meta['schema_version']}, newer than this kubefabric "
                f"({SCHEMA_VERSION}); upgrade kubefabric"
            )
        return StoredState(
            revision=meta["revision"],
            compact_revision=meta["compact_revision"],
            leases=dict(db.execute("SELECT id, ttl FROM lease")),
            leased_keys=db.execute("SELECT lease, key FROM kv WHERE superseded = ? AND lease != 0", (LIVE,)).fetchall(),
            identity=meta["identity"],
            index_backlog=not meta["index_complete"],
        )

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        self._writer_thread.shutdown(wait=True)
        self._reader_threads.shutdown(wait=True)
        self._checkpoint_thread.shutdown(wait=True)
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        await self.ownership.release()

    async def revision(self) -> int:
        return await self._on_reader(lambda db: db.execute(READ_REVISION).fetchone()[0])

    # -- writes --------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        await self._on_writer(lambda db: self._write(db, batch))

    def _write(self, db: sqlite3.Connection, batch: WriteBatch) -> None:
        updates, inserts = split_batch(batch)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(SUPERSEDE, updates)
            db.executemany(INSERT_ROW, inserts)
            db.executemany(DELETE_ATTRIBUTES, batch.reindexed)
            db.executemany(INSERT_ATTRIBUTE, batch.attributes)
            if batch.index_complete:
                db.execute(SET_META, (1, "index_complete"))
            db.executemany("INSERT OR REPLACE INTO lease (id, ttl) VALUES (?, ?)", batch.granted_leases)
            db.executemany("DELETE FROM lease WHERE id = ?", [(lease,) for lease in batch.revoked_leases])
            db.execute(SET_META, (batch.revision, "revision"))
            if batch.compact_revision is not None:
                db.execute(SET_META, (batch.compact_revision, "compact_revision"))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def compact(self, revision: int) -> None:
        # Small chunks, each its own transaction, so writers are never held up for long.
        while await self._on_writer(lambda db: self._compact_chunk(db, revision)):
            pass

    def _compact_chunk(self, db: sqlite3.Connection, revision: int) -> int:
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(COMPACT_CHUNK, (revision,)).fetchall()
            db.executemany(DELETE_ATTRIBUTES, [(key, mod_revision) for _, key, mod_revision in rows])
            db.executemany("DELETE FROM kv WHERE rowid = ?", [(rowid,) for rowid, _, _ in rows])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        rows = await self._on_reader(lambda db: db.execute(UNINDEXED, (*after, limit)).fetchall())
        return list(map(KeyValue._make, rows))

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
        # One key takes microseconds, and a page whose count the caller knows about a millisecond, as
        # long as encoding its answer takes: no thread hop (see `latest`), whose handing of the GIL
        # back and forth would cost more. Counts and unlimited reads may take long: a reader thread.
        page = not counted and not count_only and 0 < limit <= INLINE_PAGE_ROWS
        if selection is None and (end is None or page):
            return self._range(self._loop_db(), start, end, revision, limit, keys_only, count_only, None, counted)
        return await self._on_reader(
            lambda db: self._range(db, start, end, revision, limit, keys_only, count_only, selection, counted)
        )

    def _range(
        self,
        db: sqlite3.Connection,
        start: bytes,
        end: bytes | None,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        selection: Selection | None,
        counted: bool,
    ) -> RangeRows:
        db.execute("BEGIN")
        try:
            head = db.execute(READ_REVISION).fetchone()[0]
            if selection is not None:
                past = revision if 0 < revision < head else None
                select, count_query, params = selection_queries(
                    DIALECT, selection.selector, start, end, past, limit, keys_only
                )
                return _answer(db, select, count_query, params, limit, count_only, counted, head)
            if revision <= 0 or revision >= head:
                table, where, params = "kv", "superseded = ?", [LIVE]
            else:
                # The planner cannot know that few rows have superseded > R; tell it the index.
                table, where, params = (
                    "kv INDEXED BY kv_key",
                    "mod_revision <= ? AND superseded > ?",
                    [revision, revision],
                )
            if end is None:
                where += " AND key = ?"
                params.append(start)
            else:
                where += " AND key >= ?"
                params.append(start)
                if end:
                    where += " AND key < ?"
                    params.append(end)
            fields = KV_KEYS_ONLY if keys_only else KV_FIELDS
            select = f"SELECT {fields} FROM {table} WHERE {where} ORDER BY key" + (
                f" LIMIT {limit}" if limit > 0 else ""
            )
            count_query = f"SELECT COUNT(*) FROM {table} WHERE {where}"
            return _answer(db, select, count_query, params, limit, count_only, counted, head)
        finally:
            db.execute("COMMIT")

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        # Point reads from a WAL snapshot take microseconds and never wait for the writer, so they
        # run on the event loop's own connection: a hop to a reader thread would cost ten times more.
        db = self._loop_db()
        wanted = list(keys)
        found: dict[bytes, KeyValue] = {}
        db.execute("BEGIN")  # one snapshot for every chunk
        try:
            for start in range(0, len(wanted), LATEST_CHUNK):
                chunk = wanted[start : start + LATEST_CHUNK]
                statement = READ_LATEST.format(keys=", ".join("?" * len(chunk)))
                found.update((row[0], KeyValue._make(row)) for row in db.execute(statement, (LIVE, *chunk)))
        finally:
            db.execute("COMMIT")
        return found

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        return await self._on_reader(lambda db: self._find(db, lookup, after, limit))

    def _find(self, db: sqlite3.Connection, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        db.execute("BEGIN")  # one snapshot for every statement
        try:
            answers = [
                list(map(KeyValue._make, db.execute(select, params)))
                for select, params in lookup_queries(DIALECT, lookup.names, lookup.values, after, limit)
            ]
        finally:
            db.execute("COMMIT")
        return merge_found(answers, limit)

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        return await self._on_reader(lambda db: self._changes(db, after, until, limit))

    def _changes(self, db: sqlite3.Connection, after: int, until: int, limit: int) -> list[Change]:
        db.execute("BEGIN")
        try:
            # Stop at a whole revision, so the events of one txn are never split between pages.
            last = db.execute(LAST_REVISION_OF_PAGE, (after, until, limit - 1)).fetchone()
            if last is not None:
                until = last[0]
            rows = db.execute(CHANGES, (after, until)).fetchall()
        finally:
            db.execute("COMMIT")
        return [
            Change(KeyValue._make(row[:6]), row[6], None if row[7] is None else KeyValue._make(row[7:])) for row in rows
        ]

    # -- notes and moves ------------------------------------------------------------------------

    async def read_note(self, name: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            db.execute(CREATE_NOTES)
            row = db.execute("SELECT value FROM notes WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._on_writer(read)

    async def write_note(self, name: str, text: str | None) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(CREATE_NOTES)
            if text is None:
                db.execute("DELETE FROM notes WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO notes (name, value) VALUES (?, ?)", (name, text))

        await self._on_writer(write)

    async def remove_keys(self, keys: list[bytes]) -> None:
        def remove(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in keys])
                db.executemany("DELETE FROM attribute WHERE key = ?", [(key,) for key in keys])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._on_writer(remove)

    async def size(self) -> int:
        # The database's pages as of the latest commit, wherever they are now: the WAL only holds
        # copies of pages on their way into the file, which would count them twice.
        db = self._loop_db()
        return int(db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0])

    async def defragment(self) -> None:
        """VACUUM rewrites the database without its free pages; the checkpoint then copies it from
        the WAL into the file, truncates the file to its new size and empties the WAL.

        The trade-off: VACUUM is one write transaction as long as the rewrite (seconds per GiB), so
        it runs on the writer thread and every write waits for it, as writes wait for etcd's own
        defragmentation. Reads go on from WAL snapshots; one still open when the checkpoint runs
        delays it (up to the busy timeout). VACUUM cannot run inside a transaction, and the writer
        connection holds none between batches.
        """

        def vacuum(db: sqlite3.Connection) -> None:
            db.execute("VACUUM")
            # The background checkpointer may be checkpointing right now, and a checkpoint under way
            # makes this one give up at once (busy) rather than wait: try again until it completes.
            deadline = time.monotonic() + self._busy_timeout_ms / 1000
            while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.01)

        await self._on_writer(vacuum)


def _answer(
    db: sqlite3.Connection,
    select: str,
    count: str,
    params: list[object],
    limit: int,
    count_only: bool,
    counted: bool,
    head: int,
) -> RangeRows:
    """Run a range's select (unless only its count is wanted), and its count only when the page is full
    and the caller does not know it."""
    if count_only:
        return RangeRows([], db.execute(count, params).fetchone()[0], head)
    rows = db.execute(select, params).fetchall()
    full = limit > 0 and len(rows) >= limit
    total = db.execute(count, params).fetchone()[0] if full and counted else len(rows)
    return RangeRows(list(map(KeyValue._make, rows)), total, head)

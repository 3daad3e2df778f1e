"""etcd's key-value semantics over a Store: revisions, transactions, compaction, durability.

Writes are evaluated one at a time under a lock, each against the state left by the writes before
it, and queued for the committer. The committer persists everything queued as one database
transaction (group commit), and only then acknowledges the writes and publishes their events.
So many clients share one fsync, yet no write is acknowledged, and no event or read shows a
revision, before it is durable.

Writes evaluated while earlier ones are still being committed read those through `_pending`, the
not-yet-durable latest version of each key they touched; the durable versions of the keys they read
are fetched before the lock, for many writes at once (`_read_ahead`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubefabric.core._errors import Compacted, CrossBackendTxn, FutureRevision, KeyNotFound, LeaseNotFound
from kubefabric.core._metrics import COMMIT_FAILURES, COMMIT_GROUP_SIZE, COMMIT_SECONDS
from kubefabric.core._objects import ObjectIndex
from kubefabric.core._ops import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    DeleteResult,
    Edit,
    Op,
    OpResult,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnOp,
    TxnResult,
    in_range,
    is_read_only,
)
from kubefabric.core._page_counts import PageCounts
from kubefabric.core._read_ahead import ReadAhead, Versions
from kubefabric.core._validate import check_key, check_put, check_txn
from kubefabric.stores import (
    Change,
    HistoryUnavailable,
    KeyValue,
    PartialWriteFailure,
    RangeRows,
    Selection,
    Store,
    StoredState,
    StoreUnavailable,
    WriteBatch,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


@dataclass(slots=True)
class Commit:
    """What one write request persists, and the future its caller awaits."""

    revision: int | None  # None for writes that do not move the revision (lease grants)
    changes: list[Change] = field(default_factory=list)
    granted_leases: list[tuple[int, int]] = field(default_factory=list)
    revoked_leases: list[int] = field(default_factory=list)
    compact_revision: int | None = None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


CommitListener = Callable[[Commit], None]


class Mvcc:
    """One revision sequence over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0  # last revision assigned to a write (may not be durable yet)
        self.durable_revision = 0  # last revision the store has made durable
        self.compact_revision = -1  # etcd's "never compacted": Compact(0) is then allowed once
        self.identity = 0
        self.known_leases: Container[int] = ()  # the lessor's granted leases; puts may name only these
        self.objects = ObjectIndex()
        self.page_counts = PageCounts()
        self._write_lock = asyncio.Lock()
        # key -> (revision, latest state or None if deleted) of writes not yet durable
        self._pending: dict[bytes, tuple[int, KeyValue | None]] = {}
        self._read_ahead = ReadAhead(store)
        self._queue: list[Commit] = []
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[CommitListener] = []
        self._resync_listeners: list[Callable[[int], None]] = []
        self._committer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._resync_needed = False
        self._failure: Exception | None = None  # why the last commit failed
        self._failures = 0  # failed commits so far
        # Held while history is read from a fixed compaction point (a snapshot); removals wait.
        self.history_lock = asyncio.Lock()
        # The backend of a key, when keys live in several databases: one transaction writes one.
        self.backend_of: Callable[[bytes], str] | None = None

    async def open(self) -> StoredState:
        state = await self.store.open()
        self.revision = self.durable_revision = state.revision
        self.compact_revision = state.compact_revision
        self.identity = state.identity
        await self.objects.open(self.store, state.revision, state.index_backlog)
        self._committer = asyncio.create_task(self._commit_forever(), name="committer")
        return state

    async def close(self) -> None:
        """Finish every queued commit, then stop."""
        await self._idle.wait()
        if self._committer is not None:
            self._committer.cancel()
        await self.store.close()

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener` with each commit once it is durable, in revision order."""
        self._listeners.append(listener)

    # -- reads ---------------------------------------------------------------------------------

    def check_revision(self, revision: int) -> None:
        if revision > self.durable_revision:
            raise FutureRevision()
        if 0 < revision < self.compact_revision:
            raise Compacted()

    async def range(self, op: RangeOp) -> RangeResult:
        check_key(op)
        self.check_revision(op.revision)
        result = await _execute_range(op, _StoreReader(self.store), None, self.objects, page_counts=self.page_counts)
        if result.revision > self.durable_revision:
            # The store read a batch it has made durable that the committer has not landed yet: answer once
            # it has, so that the revision reported can be read at (the next page of a list reads there).
            await self._durable(result.revision)
        return result

    # -- writes --------------------------------------------------------------------------------

    async def put(self, op: PutOp) -> PutResult:
        check_put(op)
        # A plain Put checks its lease before its key; inside a txn etcd checks the key first.
        if op.lease and op.lease not in self.known_leases:
            raise LeaseNotFound()
        result = await self._write(lambda txn: txn.put(op), (op.key,))
        assert isinstance(result, PutResult)
        return result

    async def delete(self, op: DeleteOp) -> DeleteResult:
        check_key(op)
        result = await self._write(lambda txn: txn.delete(op), () if op.end is not None else (op.key,))
        assert isinstance(result, DeleteResult)
        return result

    async def txn(self, op: TxnOp) -> TxnResult:
        check_txn(op)
        if is_read_only(op):
            # A consistent snapshot at one durable revision; no lock, no queue.
            reader = _StoreReader(self.store, revision=self.durable_revision)
            return await _Txn(self, reader, self.durable_revision).run(op)
        result = await self._write(lambda txn: txn.run(op), _keys_read(op))
        assert isinstance(result, TxnResult)
        return result

    async def apply_edits(self, edits: Sequence[Edit]) -> list[bool]:
        """Make, in one revision, each edit whose key still holds the version it was decided on; skip the
        others (their key changed meanwhile). Whether each was made."""
        return await self._write(lambda txn: txn.edit(edits), [edit.key for edit in edits])

    async def write(self, evaluate: Callable[[_Txn], Awaitable[T]], revoked_leases: tuple[int, ...] = ()) -> T:
        """Evaluate a write with every earlier write durable first (for lease revocation)."""
        return await self._write(evaluate, (), revoked_leases, drain_first=True)

    async def _write(
        self,
        evaluate: Callable[[_Txn], Awaitable[T]],
        keys: Collection[bytes],
        revoked_leases: tuple[int, ...] = (),
        drain_first: bool = False,
    ) -> T:
        """Evaluate a write under the lock and queue its commit; `keys`: the single keys it reads."""
        versions = await self._read_ahead.read(keys) if keys else None
        async with self._write_lock:
            if self._resync_needed:
                await self._resync()
            if drain_first:
                await self.drain()
            txn = _Txn(self, _PendingReader(self, versions), self.revision)
            failures = self._failures
            result = await evaluate(txn)
            if self.backend_of is not None and txn.changes and not revoked_leases:
                backends = sorted({self.backend_of(change.kv.key) for change in txn.changes})
                if len(backends) > 1:
                    raise CrossBackendTxn(backends)
            if self._failures != failures and self._depends_on_failure(txn.changes):
                # A commit failed while this write was evaluated, perhaps on top of it: drop this one too.
                raise StoreUnavailable(f"an earlier write this one depended on failed: {self._failure}")
            if txn.changes or revoked_leases:
                if txn.changes:
                    self.revision = txn.write_revision
                for change in txn.changes:
                    self._pending[change.kv.key] = (self.revision, None if change.is_delete else change.kv)
                commit = Commit(self.revision if txn.changes else None, txn.changes)
                commit.revoked_leases.extend(revoked_leases)
                done = self._enqueue(commit)
            else:
                done = self._durable(self.revision)
        await done
        return result

    async def record(self, commit: Commit) -> None:
        """Persist a commit that moves no revision (lease grant, revoke, compaction mark)."""
        async with self._write_lock:
            if self._resync_needed:
                await self._resync()
            done = self._enqueue(commit)
        await done

    async def drain(self) -> None:
        """Wait until everything assigned so far is durable (the caller holds the write lock)."""
        await self._durable(self.revision)

    async def locked(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` with writes held off, once every earlier write is durable."""
        async with self._write_lock:
            if self._resync_needed:
                await self._resync()
            await self.drain()
            return await work()

    # -- compaction ----------------------------------------------------------------------------

    async def compact(self, revision: int, physical: bool) -> int:
        """Mark `revision` compacted durably; remove old versions (waiting for it when physical)."""

        async def mark() -> None:
            if revision <= self.compact_revision:
                raise Compacted()
            if revision > self.revision:
                raise FutureRevision()
            self.compact_revision = revision
            commit = Commit(None, compact_revision=revision)
            await self._enqueue(commit)

        await self.locked(mark)
        log.info("compacted to revision %d", revision)
        removal = asyncio.create_task(self._remove_history(revision), name=f"compact-{revision}")
        self._background.add(removal)
        removal.add_done_callback(self._background.discard)
        if physical:
            await removal
        return self.revision

    async def _remove_history(self, revision: int) -> None:
        async with self.history_lock:
            await self.store.compact(revision)

    # -- commit pipeline -----------------------------------------------------------------------

    def _enqueue(self, commit: Commit) -> asyncio.Future[None]:
        self._queue.append(commit)
        self._idle.clear()
        self._queued.set()
        return commit.done

    def _durable(self, revision: int) -> asyncio.Future[None]:
        """A future that completes once `revision` is durable (or fails with the commit)."""
        if revision <= self.durable_revision:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return self._enqueue(Commit(None))

    async def _commit_forever(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                commits, self._queue = self._queue, []
                await self._commit(commits)
            self._idle.set()

    async def _commit(self, commits: list[Commit]) -> None:
        revision = max((c.revision for c in commits if c.revision is not None), default=self.durable_revision)
        batch = WriteBatch(revision)
        leases: dict[int, int | None] = {}  # the last word on each lease id: its ttl, or None if revoked
        for commit in commits:
            batch.changes.extend(commit.changes)
            leases.update(commit.granted_leases)
            leases.update((lease_id, None) for lease_id in commit.revoked_leases)
            if commit.compact_revision is not None:
                batch.compact_revision = commit.compact_revision
        batch.granted_leases = [(lease_id, ttl) for lease_id, ttl in leases.items() if ttl is not None]
        batch.revoked_leases = [lease_id for lease_id, ttl in leases.items() if ttl is None]
        started = time.perf_counter()
        try:
            if batch.changes:
                await self.objects.annotate(self.store, batch)
            if batch.changes or batch.granted_leases or batch.revoked_leases or batch.compact_revision:
                await self.store.write(batch)
        except PartialWriteFailure as error:
            self._fail_partly(commits, error)
            return
        except Exception as error:  # noqa: BLE001 - every failure must fail the waiting writers
            self._fail(commits, error)
            return
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        COMMIT_GROUP_SIZE.observe(len(commits))
        self.durable_revision = revision
        self._land(commits)

    def _land(self, commits: list[Commit]) -> None:
        """Acknowledge and announce durable commits, in revision order."""
        self._read_ahead.landed({change.kv.key for commit in commits for change in commit.changes})
        for commit in commits:
            self._forget_pending(commit)
            for listener in self._listeners:
                listener(commit)
            commit.done.set_result(None)

    def _forget_pending(self, commit: Commit) -> None:
        for change in commit.changes:
            # Only if no later write to the key is still pending.
            if self._pending.get(change.kv.key, (0, None))[0] == commit.revision:
                del self._pending[change.kv.key]

    def _depends_on_failure(self, changes: list[Change]) -> bool:
        """Whether a write evaluated while the last commit failed may rest on what failed."""
        if isinstance(self._failure, PartialWriteFailure):
            return any(self._failure.failed(change.kv.key) for change in changes)
        return True

    def _fail_partly(self, commits: list[Commit], error: PartialWriteFailure) -> None:
        """One database of several failed: fail the writes it holds and those queued on top of them;
        the rest are durable. Their revisions stay used (a gap clients never see)."""
        log.error("commit of revision %d failed in part: %s", commits[-1].revision or self.revision, error)
        COMMIT_FAILURES.inc()
        self._failure = error
        self._failures += 1

        def hit(commit: Commit) -> bool:
            if any(error.failed(change.kv.key) for change in commit.changes):
                return True
            return error.leases_failed and bool(
                commit.granted_leases or commit.revoked_leases or commit.compact_revision is not None
            )

        landed = [commit for commit in commits if not hit(commit)]
        lost = [commit for commit in commits if hit(commit)]
        queued_on_lost = [commit for commit in self._queue if hit(commit)]
        self._queue = [commit for commit in self._queue if not hit(commit)]
        self.durable_revision = max(
            (c.revision for c in commits if c.revision is not None), default=self.durable_revision
        )
        # Whether the lost ones reached their database is unknown.
        self._read_ahead.landed({change.kv.key for commit in lost + queued_on_lost for change in commit.changes})
        for commit in lost + queued_on_lost:
            for change in commit.changes:
                self._pending.pop(change.kv.key, None)
            if not commit.done.done():
                commit.done.set_exception(error)
        self._land(landed)

    def _fail(self, commits: list[Commit], error: Exception) -> None:
        """Undo every write not yet durable: they were evaluated on top of the failed ones."""
        log.error("commit of revision %d failed: %s", commits[-1].revision or self.revision, error)
        COMMIT_FAILURES.inc()
        failed = commits + self._queue
        self._queue = []
        self._pending.clear()
        self._read_ahead.forget()  # whether the failed commits reached the database is unknown
        self.revision = self.durable_revision
        self._resync_needed = True
        self._failure = error
        self._failures += 1
        for commit in failed:
            if not commit.done.done():
                commit.done.set_exception(error)

    async def _resync(self) -> None:
        """After a failed commit, learn whether it happened after all (its reply may have been lost)."""
        stored = await self.store.revision()
        if stored > self.durable_revision:
            log.warning("a commit reported as failed did reach the store: continuing from revision %d", stored)
            announced = self.durable_revision
            self.revision = self.durable_revision = stored
            self._read_ahead.forget()
            for listener in self._resync_listeners:
                listener(announced)
        self._resync_needed = False

    def on_resync(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last announced revision)` when later revisions became durable without
        passing through `on_commit`."""
        self._resync_listeners.append(listener)


# -- reading state -------------------------------------------------------------------------------


class _StoreReader:
    """Reads what is durable: at the head, or at one fixed revision for a consistent snapshot."""

    def __init__(self, store: Store, revision: int = 0) -> None:
        self.store = store
        self.revision = revision

    async def get(self, key: bytes) -> KeyValue | None:
        rows = await self.range(key, None, self.revision, 0, False, False, None)
        return rows.kvs[0] if rows.kvs else None

    async def range(
        self,
        start: bytes,
        end: bytes | None,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        selection: Selection | None,
        counted: bool = True,
    ) -> RangeRows:
        return await _read(
            self.store, start, end, revision or self.revision, limit, keys_only, count_only, selection, counted
        )


class _PendingReader:
    """Reads the latest state, writes not yet durable included, to evaluate the next write."""

    def __init__(self, mvcc: Mvcc, versions: Versions | None) -> None:
        self.mvcc = mvcc
        self.versions = versions  # read ahead of the lock

    async def get(self, key: bytes) -> KeyValue | None:
        pending = self.mvcc._pending.get(key)
        if pending is not None:
            return pending[1]
        if self.versions is not None:
            known, kv = self.versions.get(key)
            if known:
                return kv
        return (await self.mvcc.store.latest((key,))).get(key)

    async def range(
        self,
        start: bytes,
        end: bytes | None,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        selection: Selection | None,
        counted: bool = True,
    ) -> RangeRows:
        if end is None and revision == 0:
            kv = await self.get(start)
            if kv is not None and selection is not None and not selection.matches(kv):
                kv = None
            kvs = [] if kv is None else [kv._replace(value=b"") if keys_only else kv]
            return RangeRows([] if count_only else kvs, len(kvs), self.mvcc.revision)
        # Multi-key and historical reads come from the store alone: first let pending writes land.
        await self.mvcc.drain()
        return await _read(self.mvcc.store, start, end, revision, limit, keys_only, count_only, selection, counted)


Reader = _StoreReader | _PendingReader


async def _read(
    store: Store,
    start: bytes,
    end: bytes | None,
    revision: int,
    limit: int,
    keys_only: bool,
    count_only: bool,
    selection: Selection | None,
    counted: bool = True,
) -> RangeRows:
    try:
        return await store.range(start, end, revision, limit, keys_only, count_only, selection, counted)
    except HistoryUnavailable:
        raise Compacted() from None


async def _execute_range(
    op: RangeOp,
    reader: Reader,
    header_revision: int | None,
    objects: ObjectIndex,
    local: dict[bytes, KeyValue | None] | None = None,
    page_counts: PageCounts | None = None,
) -> RangeResult:
    """etcd's executeRange: fetch, filter by revision, sort, truncate.

    `local` holds a txn's own writes so far, which its reads at the head must see.
    `header_revision` None reports the revision of the snapshot the rows came from.
    `page_counts` carries the counts of paginated lists from page to page (plain Ranges only: a
    txn's reads are few, and its own writes would change what it counts).
    """
    default_order = op.sort_order == SortOrder.NONE or (
        op.sort_target == SortTarget.KEY and op.sort_order == SortOrder.ASCEND
    )
    has_filters = bool(op.min_mod_revision or op.max_mod_revision or op.min_create_revision or op.max_create_revision)
    touched = [key for key in local or () if in_range(key, op.key, op.end)] if op.revision == 0 else []
    fetch_limit = op.limit + 1 if op.limit > 0 and default_order and not has_filters and not touched else 0
    # Sorting by value needs the values even when the answer leaves them out.
    fetch_values = not op.keys_only or op.sort_target == SortTarget.VALUE
    selection = None if op.selector is None else objects.selection(op.selector)
    # A page of a list returns the first keys of its range in key order (fetch_limit: no sort, no
    # revision filters), so the count of the rest after it follows from its own. Only a fixed revision
    # keeps that count true.
    paged = op.end is not None and fetch_limit > 0 and not op.count_only
    pages = page_counts if paged else None
    known_count = None
    if pages is not None and op.revision > 0:
        known_count = pages.get(op.key, op.end, op.revision, op.selector)
    rows = await reader.range(
        op.key,
        op.end,
        op.revision,
        fetch_limit,
        not fetch_values,
        op.count_only and not touched,
        selection,
        counted=known_count is None,
    )
    kvs, count = rows.kvs, rows.count if known_count is None else known_count
    if touched:
        assert local is not None
        merged = {kv.key: kv for kv in kvs}
        for key in touched:
            kv = local[key]
            if kv is None or (selection is not None and not selection.matches(kv)):
                merged.pop(key, None)
            else:
                merged[key] = kv
        kvs = [] if op.count_only else [merged[key] for key in sorted(merged)]
        count = len(merged)
    if op.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= op.max_mod_revision]
    if op.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= op.min_mod_revision]
    if op.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= op.max_create_revision]
    if op.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= op.min_create_revision]
    order = op.sort_order
    if op.sort_target != SortTarget.KEY and order == SortOrder.NONE:
        order = SortOrder.ASCEND
    if order == SortOrder.DESCEND and op.sort_target == SortTarget.KEY:
        kvs.reverse()
    elif order != SortOrder.NONE and op.sort_target != SortTarget.KEY:
        # Stable, on key-ordered input: ties keep key order.
        kvs = sorted(kvs, key=_SORT_KEYS[op.sort_target], reverse=order == SortOrder.DESCEND)
    more = op.limit > 0 and len(kvs) > op.limit
    if more:
        kvs = kvs[: op.limit]
        if pages is not None:
            # A read at the head saw the state at the revision its answer reports: the next page reads there.
            revision = op.revision if op.revision > 0 else rows.revision
            pages.continue_after(kvs[-1].key, op.end, revision, op.selector, count - len(kvs))
    if op.keys_only and (fetch_values or touched):
        kvs = [kv._replace(value=b"") for kv in kvs]
    return RangeResult(rows.revision if header_revision is None else header_revision, kvs, count, more)


class _Txn:
    """One transaction's evaluation. Its reads see its own earlier writes, as etcd's do."""

    def __init__(self, mvcc: Mvcc, reader: Reader, revision: int) -> None:
        self.mvcc = mvcc
        self.reader = reader
        self.base_revision = revision
        self.write_revision = revision + 1
        self.local: dict[bytes, KeyValue | None] = {}  # this txn's writes
        self._read: dict[bytes, KeyValue | None] = {}  # keys read before this txn wrote them
        self.changes: list[Change] = []

    @property
    def current_revision(self) -> int:
        return self.write_revision if self.changes else self.base_revision

    async def keys_in(self, key: bytes, end: bytes | None) -> list[KeyValue]:
        if end is None:
            # Compares and writes of one txn often read the same key (a create: compare, then put).
            if key in self.local:
                kv = self.local[key]
            elif key in self._read:
                kv = self._read[key]
            else:
                kv = self._read[key] = await self.reader.get(key)
            return [] if kv is None else [kv]
        result = await _execute_range(
            RangeOp(key, end), self.reader, self.current_revision, self.mvcc.objects, self.local
        )
        return result.kvs

    async def put(self, op: PutOp) -> PutResult:
        found = await self.keys_in(op.key, None)
        prev = found[0] if found else None
        if (op.ignore_value or op.ignore_lease) and prev is None:
            raise KeyNotFound()
        if op.lease and op.lease not in self.mvcc.known_leases:
            raise LeaseNotFound()
        value = prev.value if op.ignore_value and prev else op.value
        lease = prev.lease if op.ignore_lease and prev else op.lease
        revision = self.write_revision
        if prev is None:
            kv = KeyValue(op.key, revision, revision, 1, value, lease)
        else:
            kv = KeyValue(op.key, prev.create_revision, revision, prev.version + 1, value, lease)
        self.local[op.key] = kv
        self.changes.append(Change(kv, len(self.changes), prev))
        return PutResult(revision, prev if op.prev_kv else None)

    async def delete(self, op: DeleteOp) -> DeleteResult:
        victims = await self.keys_in(op.key, op.end)
        for prev in victims:
            self.local[prev.key] = None
            tombstone = KeyValue(prev.key, 0, self.write_revision, 0, b"", 0)
            self.changes.append(Change(tombstone, len(self.changes), prev))
        return DeleteResult(self.current_revision, len(victims), victims if op.prev_kv else [])

    async def range(self, op: RangeOp) -> RangeResult:
        return await _execute_range(op, self.reader, self.current_revision, self.mvcc.objects, self.local)

    async def edit(self, edits: Sequence[Edit]) -> list[bool]:
        made = []
        for edit in edits:
            found = await self.keys_in(edit.key, None)
            current = found[0] if found else None
            if current is None or current.mod_revision != edit.mod_revision:
                made.append(False)
            elif edit.value is None:
                await self.delete(DeleteOp(edit.key))
                made.append(True)
            else:
                await self.put(PutOp(edit.key, edit.value, lease=current.lease))
                made.append(True)
        return made

    async def run(self, txn: TxnOp) -> TxnResult:
        # etcd evaluates every compare on the chosen path, nested ones too, then checks every put
        # on it, then every range, and only then runs any op.
        path = await self._path(txn)
        chosen = list(self._chosen_ops(txn, iter(path)))
        for op in chosen:
            if isinstance(op, PutOp):
                if (op.ignore_value or op.ignore_lease) and not await self.keys_in(op.key, None):
                    raise KeyNotFound()
                if op.lease and op.lease not in self.mvcc.known_leases:
                    raise LeaseNotFound()
        for op in chosen:
            if isinstance(op, RangeOp):
                # etcd's checkRange: any revision other than 0 below the compaction point is
                # compacted, negative ones included (a plain Range reads those at the head).
                if op.revision > self.base_revision:
                    raise FutureRevision()
                if op.revision != 0 and op.revision < self.mvcc.compact_revision:
                    raise Compacted()
        return await self._apply(txn, iter(path))

    def _chosen_ops(self, txn: TxnOp, path: Iterator[bool]) -> Iterator[Op]:
        """The ops the path runs, nested txns flattened, in the order they run."""
        for op in txn.success if next(path) else txn.failure:
            if isinstance(op, TxnOp):
                yield from self._chosen_ops(op, path)
            else:
                yield op

    async def _path(self, txn: TxnOp) -> list[bool]:
        succeeded = True
        for compare in txn.compare:
            if not await self._holds(compare):
                succeeded = False
                break
        path = [succeeded]
        for op in txn.success if succeeded else txn.failure:
            if isinstance(op, TxnOp):
                path.extend(await self._path(op))
        return path

    async def _apply(self, txn: TxnOp, path: Iterator[bool]) -> TxnResult:
        succeeded = next(path)
        responses: list[OpResult] = []
        for op in txn.success if succeeded else txn.failure:
            if isinstance(op, RangeOp):
                responses.append(await self.range(op))
            elif isinstance(op, PutOp):
                responses.append(await self.put(op))
            elif isinstance(op, DeleteOp):
                responses.append(await self.delete(op))
            else:
                responses.append(await self._apply(op, path))
        return TxnResult(self.current_revision, succeeded, responses)

    async def _holds(self, compare: Compare) -> bool:
        kvs = await self.keys_in(compare.key, compare.end)
        if not kvs:
            if compare.target == CompareTarget.VALUE:
                return False  # a missing key has no value to compare with
            return _compare(compare, KeyValue(compare.key, 0, 0, 0, b"", 0))
        return all(_compare(compare, kv) for kv in kvs)


def _keys_read(txn: TxnOp) -> set[bytes]:
    """The single keys a txn's compares and ops may read at the head, on either path."""
    keys = {compare.key for compare in txn.compare if compare.end is None}
    for op in (*txn.success, *txn.failure):
        if isinstance(op, TxnOp):
            keys |= _keys_read(op)
        elif isinstance(op, PutOp) or (op.end is None and (isinstance(op, DeleteOp) or op.revision == 0)):
            keys.add(op.key)
    return keys


def _compare(compare: Compare, kv: KeyValue) -> bool:
    actual: int | bytes
    expected: int | bytes
    if compare.target == CompareTarget.VALUE:
        actual = kv.value
        expected = compare.operand if isinstance(compare.operand, bytes) else b""
    else:
        actual = (kv.version, kv.create_revision, kv.mod_revision, 0, kv.lease)[compare.target]
        expected = compare.operand if isinstance(compare.operand, int) else 0
    outcome = (actual > expected) - (actual < expected)  # type: ignore[operator]
    if compare.result == CompareResult.EQUAL:
        return outcome == 0
    if compare.result == CompareResult.NOT_EQUAL:
        return outcome != 0
    if compare.result == CompareResult.GREATER:
        return outcome > 0
    return outcome < 0

"""The Store interface every database implements, and the rows it exchanges with the core.

A store persists what the core decides: it never picks revisions, evaluates compares or keeps
watchers. Each key version is one row valid for the revisions [mod_revision, superseded): the
live version has `superseded == LIVE`; a deletion is a tombstone row (version 0) whose interval is
empty. That makes "the state at revision R" one indexed predicate, `mod_revision <= R < superseded`,
and compaction one: delete rows with `superseded <= C`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kubefabric.objects import Selector

# `superseded` of a version nobody has replaced yet; larger than any revision.
LIVE = 1 << 62


class KeyValue(NamedTuple):
    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int


class Attribute(NamedTuple):
    """One selectable attribute of one key version, as the SQL stores index it (see _selection.py)."""

    key: bytes
    mod_revision: int
    name: str
    value: str
    number: int | None  # a label's value as `gt` and `lt` compare it


@dataclass(frozen=True, slots=True)
class Selection:
    """A Kubernetes label and field selector, for a store to answer in its database, and how to
    match one stored value against it directly, for a store that cannot."""

    selector: Selector
    matches: Callable[[KeyValue], bool]  # whether the object a version holds matches


@dataclass(frozen=True, slots=True)
class Lookup:
    """Live versions that have an attribute named one of `names` (with one of `values`, when given), for a
    store to find through its index, and the same test on one version, for a store that keeps no index."""

    names: tuple[str, ...]
    values: tuple[str, ...]
    matches: Callable[[KeyValue], bool]


class Change(NamedTuple):
    """One key written at one revision: a new version, or a tombstone when `kv.version == 0`."""

    kv: KeyValue
    sub: int  # position within its revision: events of one txn keep their order
    prev: KeyValue | None  # the version this one supersedes

    @property
    def is_delete(self) -> bool:
        return self.kv.version == 0


@dataclass(slots=True)
class WriteBatch:
    """Everything one durable database transaction must persist (several core commits, grouped)."""

    revision: int  # the store's revision once this batch is durable
    changes: list[Change] = field(default_factory=list)
    # No lease id is in both lists. A granted id may already be stored (revoked and granted again
    # within the batch), so stores write grants as upserts.
    granted_leases: list[tuple[int, int]] = field(default_factory=list)  # (lease id, ttl seconds)
    revoked_leases: list[int] = field(default_factory=list)
    compact_revision: int | None = None
    # The selectable attributes of the versions written. Versions named in `reindexed` were stored
    # before: their old attributes are replaced by those here (a CRD changed its selectable fields,
    # or the index of an older database is being built).
    attributes: list[Attribute] = field(default_factory=list)
    reindexed: list[tuple[bytes, int]] = field(default_factory=list)
    index_complete: bool = False  # the index now covers every stored version


@dataclass(slots=True)
class RangeRows:
    kvs: list[KeyValue]
    count: int
    revision: int  # the store's revision in the snapshot the rows were read from


def point_rows(head: int, fields: list[object], keys_only: bool, count_only: bool) -> RangeRows:
    """What a read of one key at the head returns, from the head revision and the key's live version
    (fields all None if it has none)."""
    if fields[0] is None:
        return RangeRows([], 0, head)
    kv = KeyValue._make(fields)
    return RangeRows([] if count_only else [kv._replace(value=b"") if keys_only else kv], 1, head)


def split_batch(batch: WriteBatch) -> tuple[list[tuple[int, bytes, int]], list[tuple[object, ...]]]:
    """Turn a batch into (supersede updates, inserts) that can run as two bulk statements.

    A version both written and superseded inside the batch is inserted with its final `superseded`,
    so the updates only touch rows that existed before the batch and order no longer matters.
    Updates are (superseded, key, mod_revision); inserts follow the column order of `ROW_COLUMNS`.
    """
    inserts: dict[tuple[bytes, int], list[object]] = {}
    updates: list[tuple[int, bytes, int]] = []
    for kv, sub, prev in batch.changes:
        if prev is not None:
            pending = inserts.get((prev.key, prev.mod_revision))
            if pending is None:
                updates.append((kv.mod_revision, prev.key, prev.mod_revision))
            else:
                pending[3] = kv.mod_revision
        superseded = kv.mod_revision if kv.version == 0 else LIVE
        inserts[(kv.key, kv.mod_revision)] = [
            kv.key,
            kv.mod_revision,
            sub,
            superseded,
            kv.create_revision,
            kv.version,
            kv.lease,
            kv.value,
        ]
    return updates, [tuple(row) for row in inserts.values()]


# Column order of an inserted row, shared by every SQL store.
ROW_COLUMNS = ("key", "mod_revision", "sub", "superseded", "create_revision", "version", "lease", "value")


@dataclass(slots=True)
class StoredState:
    """What a store remembers across restarts."""

    revision: int
    compact_revision: int
    leases: dict[int, int]  # lease id -> granted ttl
    leased_keys: list[tuple[int, bytes]]  # (lease id, key) of live keys that carry a lease
    identity: int  # random id made when the database was created: cluster and member id
    # Versions stored before this database had a selector index, which must be indexed before serving.
    index_backlog: bool = False


class StoreUnavailable(Exception):
    """The database cannot be reached; the request may succeed later."""


class PartialWriteFailure(StoreUnavailable):
    """Part of a batch is durable: what `failed(key)` names is not, nor, if `leases_failed`, the
    batch's leases and compaction mark. Stores that spread keys over several databases raise it."""

    def __init__(self, message: str, failed: Callable[[bytes], bool], leases_failed: bool) -> None:
        super().__init__(message)
        self.failed = failed
        self.leases_failed = leases_failed


class HistoryUnavailable(Exception):
    """The store can no longer read that far back: the revision reads as compacted."""

    def __init__(self, floor: int) -> None:
        super().__init__(f"revisions before {floor} are no longer kept")
        self.floor = floor  # the oldest revision still readable, as far as the store knows


class Store(Protocol):
    """A database that keeps etcd's key-value history."""

    async def open(self) -> StoredState:
        """Connect, create or migrate the schema, and return the persisted state."""

    async def close(self) -> None: ...

    async def revision(self) -> int:
        """The revision of the last durable batch, read from the database.

        After a failed write the core asks, because a commit whose acknowledgement was lost may
        still have happened.
        """

    async def write(self, batch: WriteBatch) -> None:
        """Persist the batch atomically; return only once it is durable."""

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
        """Keys in [start, end) (end None: only start; b"": no upper bound) as of `revision`, and
        only those whose objects `selection` matches.

        `count` is the number of such keys ignoring `limit`; `limit` 0 means no limit. With `counted`
        False the caller knows that number already: the store need not count, and `count` may be just
        the number of rows returned.
        """

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        """The live versions of `keys`, by key; a key that has none is left out."""

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        """The live versions (tombstones never) `lookup` selects whose key is > `after`, in key order, at most
        `limit` of them (0: all)."""

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        """Changes with after < revision <= until, in revision and sub order, `prev` filled in."""

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        """Up to `limit` versions after (key, mod_revision) `after`, in that order, tombstones left
        out: what building the selector index of an older database reads."""

    async def compact(self, revision: int) -> None:
        """Drop every version no read at revision >= `revision` can see."""

    async def size(self) -> int:
        """Bytes the database occupies."""

    async def defragment(self) -> None:
        """Give the space of removed rows back to the file system, as far as the database allows
        while it keeps serving."""

    async def read_note(self, name: str) -> str | None:
        """The text kubefabric noted under `name` in this database (its own bookkeeping, never a
        client's key), or None."""

    async def write_note(self, name: str, text: str | None) -> None:
        """Note `text` under `name` durably; None removes the note."""

    async def remove_keys(self, keys: list[bytes]) -> None:
        """Remove every stored version of these keys, leaving no event in the history: for keys
        moved to another database by a topology migration, never for clients' deletes."""

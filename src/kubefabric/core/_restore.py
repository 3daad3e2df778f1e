"""Loading a snapshot into an empty store, revisions and all."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kubefabric.core._objects import ObjectIndex
from kubefabric.snapshot import Snapshot, Version
from kubefabric.stores import Change, KeyValue, Store, WriteBatch

# Versions per database transaction: large enough to amortize commits, small enough to keep
# transactions short on every database.
BATCH_VERSIONS = 2000


class TargetNotEmpty(Exception):
    """The store already holds data a restore would mix with."""


async def restore_snapshot(store: Store, snapshot: Snapshot, progress: Callable[[int], None]) -> None:
    """Open the store, check that it is empty, and write every version of the snapshot into it,
    with its selector index; `progress(n)` after each n versions written. Leases go first (keys
    may name them), the compaction point last."""
    state = await store.open()
    try:
        if state.revision > 1 or state.leases:
            raise TargetNotEmpty(
                f"the target store is not empty (revision {state.revision}, {len(state.leases)} leases): "
                "restore into a new database"
            )
        objects = ObjectIndex()
        granted = sorted(snapshot.leases.items())
        for changes in _batches(snapshot.versions):
            batch = WriteBatch(changes[-1].kv.mod_revision, changes, granted_leases=granted)
            await objects.annotate(store, batch)
            await store.write(batch)
            granted = []
            progress(len(changes))
        compact = snapshot.compact_revision if snapshot.compact_revision > 0 else None
        await store.write(WriteBatch(snapshot.revision, granted_leases=granted, compact_revision=compact))
        if compact is not None:
            # An etcd snapshot taken while a compaction was under way still holds what it removes.
            await store.compact(compact)
    finally:
        await store.close()


def _batches(versions: list[Version]) -> Iterator[list[Change]]:
    """Changes with the version each one supersedes, whole revisions per batch."""
    latest: dict[bytes, KeyValue] = {}
    batch: list[Change] = []
    for kv, sub in versions:
        if len(batch) >= BATCH_VERSIONS and kv.mod_revision != batch[-1].kv.mod_revision:
            yield batch
            batch = []
        prev = latest.pop(kv.key, None)
        if kv.version:
            latest[kv.key] = kv
        batch.append(Change(kv, sub, prev))
    if batch:
        yield batch

"""Reading every version a store keeps, at one revision: what a snapshot holds."""

from __future__ import annotations

from itertools import groupby

from kubefabric.snapshot import Version
from kubefabric.stores import Store

PAGE = 1000


async def read_history(store: Store, revision: int, compact_revision: int) -> list[Version]:
    """The versions visible at the compaction point, then every change after it up to `revision`,
    in (mod_revision, sub) order. Compaction must not remove anything meanwhile."""
    versions: list[Version] = []
    if compact_revision > 0:
        visible = []
        start = b"\0"
        while True:
            rows = await store.range(start, b"", compact_revision, PAGE, False, False)
            visible.extend(rows.kvs)
            if len(rows.kvs) < PAGE:
                break
            start = rows.kvs[-1].key + b"\0"
        # A read at a revision does not give a version's position within its transaction: those of
        # one revision are numbered in key order. Only a watch starting exactly at the compaction
        # point could tell, for a transaction of several keys at that revision.
        visible.sort(key=lambda kv: (kv.mod_revision, kv.key))
        for _, same_revision in groupby(visible, key=lambda kv: kv.mod_revision):
            versions.extend(Version(kv, sub) for sub, kv in enumerate(same_revision))
    after = max(compact_revision, 0)
    while after < revision:
        changes = await store.changes(after, revision, PAGE)
        if not changes:
            break
        versions.extend(Version(change.kv, change.sub) for change in changes)
        after = changes[-1].kv.mod_revision
    return versions

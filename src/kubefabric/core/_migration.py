"""Moving the stored keys to the backends a new topology places them in, with kubefabric stopped.

Each key's live version is copied to its new backend with its revisions, version and lease, then
every version of it is removed from the old one, a page at a time, so an interrupted migration is
finished by running it again: a key found in both places with the same version is a copy whose
original was not removed yet. The history of moved keys is not copied, so once keys moved, reads and
watches before the migration's revision answer "compacted": the compaction mark is set there, and no
row of a key that did not move is removed.
"""

from __future__ import annotations

from typing import Protocol

from kubefabric.core._objects import ObjectIndex
from kubefabric.core._placement import (
    NOTE_MIGRATION,
    NOTE_TOPOLOGY,
    PAGE_KEYS,
    Misplaced,
    Moves,
    count_misplaced,
    misplaced,
)
from kubefabric.core._routed import RoutedStore
from kubefabric.core._topology import Topology
from kubefabric.stores import Change, Store, WriteBatch

ETCD_SCHEMES = ("http", "https")


class Progress(Protocol):
    def planned(self, moves: Moves) -> None:
        """The keys about to move, before any does."""

    def moved(self, count: int) -> None:
        """`count` more keys are in their new backend."""


class MigrationError(Exception):
    """A migration that cannot be done (nothing was changed) or finished; the message says why."""


async def migrate(routed: RoutedStore, progress: Progress, page: int = PAGE_KEYS) -> Moves:
    """Move every stored key to the backend the routed store's topology places it in, then record
    that topology. kubefabric must be stopped: nothing may write meanwhile. The moves made."""
    state = await routed.open_backends()
    try:
        return await _migrate(routed.topology, routed.stores, state.revision, state.compact_revision, progress, page)
    finally:
        await routed.close()


async def _migrate(
    topology: Topology,
    stores: dict[str, Store],
    revision: int,
    compact_revision: int,
    progress: Progress,
    page: int,
) -> Moves:
    default = stores[topology.backends[-1].name]
    current = topology.record()
    under_way = await default.read_note(NOTE_MIGRATION)
    if under_way is not None and under_way != current:
        raise MigrationError(
            f"{topology.source}: an interrupted migration to other rules is not finished; run it again with the "
            f"topology it was started with first (its rules: {under_way})"
        )
    recorded = await default.read_note(NOTE_TOPOLOGY)
    topology.suspect_ranges(recorded)  # refuses rules that leave a recorded backend out
    # After an interruption, copies may sit anywhere the new rules place keys: check every backend.
    moves = await count_misplaced(topology, stores, None if under_way else recorded)
    etcd = {backend.name for backend in topology.backends if backend.endpoint.partition("://")[0] in ETCD_SCHEMES}
    if blocked := [pair for pair in moves if etcd & set(pair)]:
        holder, target = blocked[0]
        raise MigrationError(
            f"{topology.source}: {moves[holder, target]} keys would move from {topology.describe(holder)} to "
            f"{topology.describe(target)}: keys cannot be moved into or out of an etcd backend (etcd gives the "
            "writes it receives its own revisions and versions, and keeps a deletion as an event)"
        )
    progress.planned(moves)
    if not moves and under_way is None:
        if recorded != current:
            await default.write_note(NOTE_TOPOLOGY, current)
        return moves
    await default.write_note(NOTE_MIGRATION, current)
    index = ObjectIndex()  # copies get their selector index rows, by the CRDs stored anywhere
    for store in stores.values():
        await index.open(store, revision, backlog=False)
    async for part in misplaced(topology, stores, None, keys_only=False, page=page):
        await _move(part, stores, revision, index)
        progress.moved(len(part.kvs))
    if revision > compact_revision:
        # The moved keys' history stayed behind: reads before now must answer "compacted".
        await default.write(WriteBatch(revision, compact_revision=revision))
    await default.write_note(NOTE_TOPOLOGY, current)
    await default.write_note(NOTE_MIGRATION, None)
    return moves


async def _move(part: Misplaced, stores: dict[str, Store], revision: int, index: ObjectIndex) -> None:
    """Copy the page's keys to their new backend (those not copied before an interruption), then
    remove them from the old one."""
    holder, target = stores[part.holder], stores[part.target]
    first, last = part.kvs[0].key, part.kvs[-1].key
    there = {kv.key: kv for kv in (await target.range(first, last + b"\0", 0, 0, True, False)).kvs}
    copies: list[Change] = []
    for kv in part.kvs:
        copy = there.get(kv.key)
        if copy is None:
            copies.append(Change(kv, 0, None))
        elif copy.mod_revision != kv.mod_revision:
            raise MigrationError(
                f"{kv.key!r} is stored both in {part.holder!r} (modified at revision {kv.mod_revision}) and in "
                f"{part.target!r} (at revision {copy.mod_revision}); was a server writing meanwhile? Keep the "
                "right one, remove the other by hand, and run the migration again"
            )
    if copies:
        batch = WriteBatch(revision, changes=copies)
        await index.annotate(target, batch)
        await target.write(batch)
    await holder.remove_keys([kv.key for kv in part.kvs])

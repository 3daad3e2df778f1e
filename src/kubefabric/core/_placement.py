"""Where the stored keys are, against where a topology places them.

The default backend keeps a note of the rules its keys were placed by. A topology whose rules would
place a stored key in another backend than the one holding it is refused, at start-up and when the
file changes while running: the key would be hidden (reads go where the rules say) and, written
again, duplicated. A migration (_migration.py) moves the keys instead, with kubefabric stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from kubefabric.core._topology import Topology, TopologyError
from kubefabric.stores import KeyValue, Store

log = logging.getLogger(__name__)

NOTE_TOPOLOGY = "topology"  # Topology.record() of the rules the stored keys were placed by
NOTE_MIGRATION = "topology-migration"  # Topology.record() of the rules a migration under way moves keys to
PAGE_KEYS = 500

Moves = Counter[tuple[str, str]]
"""Keys to move, by (backend holding them, backend the rules place them in)."""


@dataclass(frozen=True)
class Misplaced:
    holder: str
    target: str
    kvs: list[KeyValue]


async def misplaced(
    topology: Topology, stores: dict[str, Store], recorded: str | None, keys_only: bool, page: int = PAGE_KEYS
) -> AsyncIterator[Misplaced]:
    """The live keys held by a backend the topology does not place them in, a page at a time (see
    Topology.suspect_ranges for `recorded`). A page may be removed from its holder before the next."""
    for holder, intervals in topology.suspect_ranges(recorded).items():
        for low, high in intervals:
            start = low
            while True:
                rows = await stores[holder].range(start, high or b"", 0, page, keys_only, False)
                by_target: dict[str, list[KeyValue]] = {}
                for kv in rows.kvs:
                    target = topology.route(kv.key).name
                    if target != holder:
                        by_target.setdefault(target, []).append(kv)
                for target, kvs in by_target.items():
                    yield Misplaced(holder, target, kvs)
                if len(rows.kvs) < page:
                    break
                start = rows.kvs[-1].key + b"\0"


async def count_misplaced(topology: Topology, stores: dict[str, Store], recorded: str | None) -> Moves:
    moves: Moves = Counter()
    async for part in misplaced(topology, stores, recorded, keys_only=True):
        moves[part.holder, part.target] += len(part.kvs)
    return moves


def refusal(topology: Topology, moves: Moves) -> TopologyError:
    total = sum(moves.values())
    lines = [
        f"  {count} key{'' if count == 1 else 's'} stored in {topology.describe(holder)} would belong to "
        f"{topology.describe(target)}"
        for (holder, target), count in sorted(moves.items())
    ]
    return TopologyError(
        f"{topology.source}: refused: these rules would place {total} stored key{'' if total == 1 else 's'} in "
        "another backend than the one holding them, where reads would not find them; keys are never moved "
        "implicitly: undo the change, or stop kubefabric and run `kubefabric topology migrate`:\n" + "\n".join(lines)
    )


async def check_placement(topology: Topology, stores: dict[str, Store]) -> None:
    """Record the topology in the default backend if every stored key is where it places it;
    TopologyError naming the rules and the keys otherwise (the caller holds writes off)."""
    default = stores[topology.backends[-1].name]
    if await default.read_note(NOTE_MIGRATION) is not None:
        raise TopologyError(
            f"{topology.source}: a topology migration was interrupted, so keys may be in two backends; run "
            "`kubefabric topology migrate` again with the same rules to finish it"
        )
    recorded = await default.read_note(NOTE_TOPOLOGY)
    current = topology.record()
    if recorded == current:
        return
    moves = await count_misplaced(topology, stores, recorded)
    if moves:
        raise refusal(topology, moves)
    await default.write_note(NOTE_TOPOLOGY, current)
    log.info("topology recorded: %d rules", len(topology.backends) - 1)

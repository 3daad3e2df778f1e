"""What a snapshot holds, whatever file it came from or goes to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kubefabric.stores import KeyValue


class Version(NamedTuple):
    """One stored key version; a deletion is a tombstone (version 0, no value)."""

    kv: KeyValue
    sub: int  # its position within its revision's transaction


@dataclass(slots=True)
class Snapshot:
    """Every key version a store keeps at one revision, with its leases and compaction point.

    That is the versions visible at the compaction point plus every change after it, as etcd
    keeps them: older versions and older deletions are gone.
    """

    versions: list[Version]  # ascending (mod_revision, sub)
    leases: dict[int, int]  # lease id -> granted TTL in seconds
    compact_revision: int  # -1: never compacted

    def keys_created_before_compaction(self) -> list[bytes]:
        """Keys whose first version here is not their creation: the versions before it were
        compacted away, so only a store that takes version counts as given can restore them exactly."""
        seen: set[bytes] = set()
        found = []
        for kv, _ in self.versions:
            if kv.key not in seen:
                seen.add(kv.key)
                if kv.version > 1:
                    found.append(kv.key)
        return found

    @property
    def revision(self) -> int:
        """The revision of the snapshot, as etcd derives it: the last write, or the compaction point
        if that is later (a compaction right after deletions leaves no trace of them); at least 1."""
        last = self.versions[-1].kv.mod_revision if self.versions else 0
        return max(last, self.compact_revision, 1)

"""The counts of paginated lists, carried from each page to the next.

kube-apiserver lists a range in pages at one revision R: each page starts just after the last key of
the one before (that key + "\\0") and asks for etcd's `count` of the rest of the range. The state at
R never changes (compaction only makes it unreadable, and then the read fails), so the next page's
count is this page's count less the keys this page returned. Knowing it, the next page reads only
its own rows: counting the rest of the range on every page would make a full list cost the square
of its size.
"""

from __future__ import annotations

from kubefabric.objects import Selector

# Each list under way needs one entry at a time; the oldest are forgotten first (a page whose
# count is forgotten counts it in the database).
CAPACITY = 4096

PageKey = tuple[bytes, bytes | None, int, Selector | None]


class PageCounts:
    """Exact counts of ranges at fixed revisions: (start, end, revision, selector) -> keys in it."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._counts: dict[PageKey, int] = {}  # in insertion order: the oldest first

    def get(self, start: bytes, end: bytes | None, revision: int, selector: Selector | None) -> int | None:
        return self._counts.get((start, end, revision, selector))

    def continue_after(
        self, last_key: bytes, end: bytes | None, revision: int, selector: Selector | None, rest: int
    ) -> None:
        """Note that `rest` keys of [last_key + "\\0", end) match `selector` at `revision`."""
        page = (last_key + b"\0", end, revision, selector)
        self._counts.pop(page, None)
        self._counts[page] = rest
        if len(self._counts) > self._capacity:
            del self._counts[next(iter(self._counts))]

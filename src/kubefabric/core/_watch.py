"""Watchers: every event after a start revision, once, in order, whole transactions at a time.

A watcher is either synced, receiving each durable commit from `publish` into a bounded queue, or
catching up, reading history pages from the store. A synced watcher whose consumer falls behind
drops its queue and goes back to catching up from the store, so a slow watcher costs its own
latency, never the writers' or other watchers'.

A watcher whose history read fails (the database is down) keeps its place and tries again after a
bounded, doubling pause, so a database outage delays its events but never loses, repeats or cancels
them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubefabric.core._mvcc import Commit, Mvcc
from kubefabric.core._ops import in_range
from kubefabric.core._routed import RoutedStore
from kubefabric.objects import Selector
from kubefabric.stores import Change, HistoryUnavailable, Selection, StoreUnavailable

log = logging.getLogger(__name__)

# Events a synced watcher may hold undelivered before it falls back to reading the store.
QUEUE_LIMIT = 4096
# Changes read from the store per catch-up page.
PAGE_SIZE = 1000
# Pause before a watcher reads history again after a failed read: doubles from the first to the last.
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 2.0


@dataclass(slots=True)
class WatchBatch:
    """Events for one response, or the notice that the watcher's start was compacted away."""

    events: list[Change]
    revision: int  # every event up to this revision has been delivered
    compact_revision: int = 0


Deliver = Callable[[WatchBatch], Awaitable[None]]


class Watcher:
    def __init__(
        self,
        hub: WatchHub,
        key: bytes,
        end: bytes | None,
        start_revision: int,
        no_put: bool,
        no_delete: bool,
        selection: Selection | None,
    ) -> None:
        self._hub = hub
        self.key, self.end = key, end
        self._no_put, self._no_delete = no_put, no_delete
        self._selection = selection
        self.next_revision = start_revision if start_revision > 0 else hub.revision + 1
        self.synced = self.next_revision > hub.revision
        self._queue: deque[tuple[int, list[Change]]] = deque()
        self._queued_events = 0
        self._wakeup = asyncio.Event()
        self._delivering = False
        self._idle = asyncio.Event()
        self._retry_delay = 0.0  # the last pause after a failed history read; 0 once a read succeeds

    @property
    def idle(self) -> bool:
        """Synced with nothing left to deliver: every event up to the hub's revision is out."""
        return self.synced and not self._queue and not self._delivering

    async def wait_idle(self) -> None:
        while not self.idle:
            self._idle.clear()
            await self._idle.wait()

    def _matching(self, changes: list[Change]) -> list[Change]:
        return [
            change
            for change in changes
            if in_range(change.kv.key, self.key, self.end)
            and not (self._no_put and not change.is_delete)
            and not (self._no_delete and change.is_delete)
            and self._selected(change)
        ]

    def _selected(self, change: Change) -> bool:
        """With a selector, an event of an object that matches before or after it: the client sees
        it enter, change within, and leave the selection."""
        selection = self._selection
        if selection is None:
            return True
        if not change.is_delete and selection.matches(change.kv):
            return True
        return change.prev is not None and selection.matches(change.prev)

    def _offer(self, revision: int, changes: list[Change]) -> None:
        """A durable commit, from the hub, while synced."""
        if revision < self.next_revision:
            return  # a watch that starts in the future
        events = self._matching(changes)
        if not events:
            return
        if self._queued_events + len(events) > QUEUE_LIMIT:
            self.fall_behind(revision)
        else:
            self._queue.append((revision, events))
            self._queued_events += len(events)
        self._wakeup.set()

    def fall_behind(self, revision: int) -> None:
        """Forget the queue and read from the store, from the first revision not yet delivered
        (the oldest queued one, else `revision`)."""
        self.synced = False
        self.next_revision = self._queue[0][0] if self._queue else revision
        self._queue.clear()
        self._queued_events = 0
        self._wakeup.set()

    async def run(self, deliver: Deliver) -> None:
        """Deliver batches until cancelled or compacted away."""
        while True:
            if not self.synced:
                try:
                    batch = await self._catch_up()
                except Exception as error:  # noqa: BLE001 - read again later, from the same revision
                    await self._retry_later(error)
                    continue
                if self._retry_delay:
                    self._retry_delay = 0.0
                    self._hub.history_recovered()
                if batch is None:
                    continue
            elif self._queue:
                revision, events = self._queue.popleft()
                while self._queue and len(events) < PAGE_SIZE:
                    revision, more = self._queue.popleft()
                    events = events + more
                self._queued_events = sum(len(queued) for _, queued in self._queue)
                batch = WatchBatch(events, revision)
            else:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._delivering = True
            try:
                await deliver(batch)
            finally:
                self._delivering = False
            if batch.compact_revision:
                return
            if self.idle:
                self._idle.set()

    async def _retry_later(self, error: Exception) -> None:
        """Wait before reading history again: `next_revision` is unchanged, so nothing is skipped or repeated."""
        self._hub.history_failed(error)
        self._retry_delay = min(2 * self._retry_delay, RETRY_MAX_DELAY) if self._retry_delay else RETRY_FIRST_DELAY
        # Jittered, so that the watchers of one outage do not all return to the database at once.
        await asyncio.sleep(self._retry_delay * random.uniform(0.75, 1.0))

    async def _catch_up(self) -> WatchBatch | None:
        hub = self._hub
        if self.next_revision < hub.compact_revision:
            return WatchBatch([], hub.revision, compact_revision=hub.compact_revision)
        until = hub.revision
        try:
            changes = await hub.read_changes(self.key, self.end, self.next_revision - 1, until, PAGE_SIZE)
        except HistoryUnavailable as error:
            # The store no longer keeps that far back, which retrying will not change: it reads as compacted.
            return WatchBatch([], hub.revision, compact_revision=max(error.floor, hub.compact_revision))
        if self.next_revision < hub.compact_revision:
            # Compacted while reading: the page may have lost rows.
            return WatchBatch([], hub.revision, compact_revision=hub.compact_revision)
        if len(changes) >= PAGE_SIZE:
            until = changes[-1].kv.mod_revision
        self.next_revision = until + 1
        if self.next_revision > hub.revision:
            self.synced = True  # no await since reading hub.revision: nothing was missed
        events = self._matching(changes)
        return WatchBatch(events, until) if events else None


class WatchHub:
    """Fans durable commits out to watchers."""

    def __init__(self, mvcc: Mvcc) -> None:
        self.mvcc = mvcc
        store = mvcc.store
        # Over several databases, a watcher reads history only from those that may hold its keys.
        self.read_changes: Callable[[bytes, bytes | None, int, int, int], Awaitable[list[Change]]] = (
            store.changes_within
            if isinstance(store, RoutedStore)
            else lambda start, end, after, until, limit: store.changes(after, until, limit)
        )
        self._watchers: set[Watcher] = set()
        self._history_failing = False  # watchers are retrying failed history reads; logged once per outage
        mvcc.on_commit(self._publish)
        mvcc.on_resync(self._resync)

    @property
    def revision(self) -> int:
        return self.mvcc.durable_revision

    @property
    def compact_revision(self) -> int:
        return self.mvcc.compact_revision

    def watch(
        self,
        key: bytes,
        end: bytes | None,
        start_revision: int,
        no_put: bool,
        no_delete: bool,
        selector: Selector | None = None,
    ) -> Watcher:
        selection = None if selector is None else self.mvcc.objects.selection(selector)
        watcher = Watcher(self, key, end, start_revision, no_put, no_delete, selection)
        self._watchers.add(watcher)
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def __len__(self) -> int:
        return len(self._watchers)

    def history_failed(self, error: Exception) -> None:
        if not self._history_failing:
            self._history_failing = True
            # A database outage is expected and named by the error; anything else deserves its traceback.
            log.warning(
                "watchers cannot read history, retrying until the database answers: %s",
                error,
                exc_info=not isinstance(error, StoreUnavailable),
            )

    def history_recovered(self) -> None:
        if self._history_failing:
            self._history_failing = False
            log.info("watchers read history again")

    def _resync(self, announced: int) -> None:
        """Revisions after `announced` became durable unannounced: watchers read them from the store."""
        for watcher in self._watchers:
            if watcher.synced:
                watcher.fall_behind(max(announced + 1, watcher.next_revision))

    def _publish(self, commit: Commit) -> None:
        if commit.revision is None or not commit.changes:
            return
        for watcher in self._watchers:
            if watcher.synced:
                watcher._offer(commit.revision, commit.changes)

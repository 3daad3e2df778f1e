"""The core assembled: one revision sequence, its watchers, its leases and its retention."""

from __future__ import annotations

import asyncio
import logging

from kubefabric.core._collector import Collector
from kubefabric.core._history import read_history
from kubefabric.core._lease import Lessor
from kubefabric.core._metrics import COMPACT_REVISION, LEASES, REVISION, WATCHERS
from kubefabric.core._mvcc import Commit, Mvcc
from kubefabric.core._routed import RoutedStore
from kubefabric.core._watch import WatchHub
from kubefabric.snapshot import Snapshot
from kubefabric.stores import Store

log = logging.getLogger(__name__)


class Core:
    def __init__(
        self, store: Store, compaction_interval: float, compaction_retention: int, storage_gc: bool = True
    ) -> None:
        self.mvcc = Mvcc(store)
        if isinstance(store, RoutedStore):
            self.mvcc.backend_of = store.backend_of
        self.collector = Collector(self.mvcc) if storage_gc else None
        self.watches = WatchHub(self.mvcc)
        self.leases = Lessor(self.mvcc)
        self._compaction_interval = compaction_interval
        self._compaction_retention = compaction_retention
        self._compactor: asyncio.Task[None] | None = None
        self.mvcc.on_commit(self._observe)
        # Read at each scrape: watchers come and go, and leases expire, without any commit.
        WATCHERS.set_function(lambda: len(self.watches))
        LEASES.set_function(lambda: len(self.leases))

    @property
    def store(self) -> Store:
        return self.mvcc.store

    async def start(self) -> None:
        state = await self.mvcc.open()
        self.leases.restore(state)
        REVISION.set(state.revision)
        COMPACT_REVISION.set(state.compact_revision)
        if self._compaction_interval > 0:
            self._compactor = asyncio.create_task(self._compact_forever(), name="auto-compaction")
        if self.collector is not None:
            self.collector.start()

    async def stop(self) -> None:
        """Stop background work and finish every write already accepted."""
        if self._compactor is not None:
            self._compactor.cancel()
        if self.collector is not None:
            await self.collector.stop()
        self.leases.stop()
        await self.mvcc.close()

    async def snapshot(self) -> Snapshot:
        """Every version the store keeps at the current revision, with the leases and the compaction
        point. Writes go on meanwhile; compactions wait until it is read."""
        async with self.mvcc.history_lock:
            revision, compact_revision = self.mvcc.durable_revision, self.mvcc.compact_revision
            leases = self.leases.ttls()
            versions = await read_history(self.store, revision, compact_revision)
        return Snapshot(versions, leases, compact_revision)

    async def defragment(self) -> None:
        """Give the space of removed versions back to the file system, as far as the database can."""
        await self.store.defragment()

    def _observe(self, commit: Commit) -> None:
        REVISION.set(self.mvcc.durable_revision)
        COMPACT_REVISION.set(self.mvcc.compact_revision)

    async def _compact_forever(self) -> None:
        """Keep the last `retention` revisions, so history stays bounded without any client's help."""
        while True:
            await asyncio.sleep(self._compaction_interval)
            target = self.mvcc.durable_revision - self._compaction_retention
            if target > self.mvcc.compact_revision:
                try:
                    await self.mvcc.compact(target, physical=False)
                except Exception as error:  # noqa: BLE001 - tried again next interval
                    log.warning("automatic compaction to %d failed: %s", target, error)

"""Many databases under one revision sequence: a Store that routes each key by the topology.

The core's one revision clock and one commit pipeline stay as they are: this store splits each
durable batch by backend and writes the parts concurrently, reads a range from every backend that
may hold part of it at one revision and merges the answers by key, and merges history by
revision. A backend that fails takes down only its own part of a batch (PartialWriteFailure
names which keys), so writes routed elsewhere keep being acknowledged.

Leases and the compaction mark are kept by the default backend; an etcd backend grants a
lease itself when a key first uses it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from kubefabric.core._placement import check_placement
from kubefabric.core._topology import Backend, Topology, TopologyError
from kubefabric.stores import (
    Change,
    KeyValue,
    Lookup,
    PartialWriteFailure,
    RangeRows,
    Selection,
    Store,
    StoredState,
    StoreUnavailable,
    WriteBatch,
    redact,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class RoutedStore:
    """A Store over several stores, each holding the keys the topology routes to it."""

    def __init__(self, topology: Topology, make_store: Callable[[str], Store]) -> None:
        """`make_store` turns an endpoint into its (unopened) store, for start-up and appended rules."""
        self.topology = topology
        self._make_store = make_store
        self._stores: dict[str, Store] = {}
        for backend in topology.backends:
            log.info("backend %r (%s) at %s", backend.name, backend.rule, redact(backend.endpoint))
            self._stores[backend.name] = make_store(backend.endpoint)
        self._default = topology.backends[-1].name
        self._revision = 0  # revision of the last durable batch, in every backend's terms
        # Held by each write, and while a topology change is checked against the stored keys and applied.
        self._routing = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RoutedStore({', '.join(self._stores)})"

    async def _on(self, backend: str, work: Callable[[Store], Awaitable[T]]) -> T:
        """Run `work` on one backend; its outage names it."""
        try:
            return await work(self._stores[backend])
        except StoreUnavailable as error:
            raise StoreUnavailable(f"backend {backend!r}: {error}") from None

    async def _on_all(self, backends: list[str], work: Callable[[Store], Awaitable[T]]) -> list[T]:
        return await self._on_each({name: work for name in backends})

    async def _on_each(self, work: dict[str, Callable[[Store], Awaitable[T]]]) -> list[T]:
        """Run each backend's work at once; the first outage, by name, once all are done."""
        results = await asyncio.gather(*(self._on(name, job) for name, job in work.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def stores(self) -> dict[str, Store]:
        """Each backend's store, by backend name."""
        return self._stores

    async def open(self) -> StoredState:
        """Open every backend; refuse rules that would place a stored key elsewhere than where it is."""
        state = await self.open_backends()
        try:
            await check_placement(self.topology, self._stores)
        except BaseException:
            await self.close()
            raise
        return state

    async def open_backends(self) -> StoredState:
        """Open every backend, without checking where the stored keys are."""
        names = list(self._stores)
        states: list[StoredState] = []
        for name, result in zip(
            names,
            await asyncio.gather(*(self._stores[name].open() for name in names), return_exceptions=True),
            strict=True,
        ):
            if isinstance(result, BaseException):
                await self.close()
                endpoint = next(b.endpoint for b in self.topology.backends if b.name == name)
                raise RuntimeError(f"backend {name!r} ({redact(endpoint)}) cannot be opened: {result}") from result
            states.append(result)
        by_name = dict(zip(names, states, strict=True))
        default = by_name[self._default]
        self._revision = max(state.revision for state in states)
        return StoredState(
            revision=self._revision,
            compact_revision=max(state.compact_revision for state in states),
            leases=default.leases,
            leased_keys=[item for state in states for item in state.leased_keys],
            identity=default.identity,
            index_backlog=any(state.index_backlog for state in states),
        )

    async def close(self) -> None:
        await asyncio.gather(*(store.close() for store in self._stores.values()), return_exceptions=True)

    def backend_of(self, key: bytes) -> str:
        return self.topology.route(key).name

    async def follow(self, path: str, interval: float = 2.0) -> None:
        """Apply rules appended to the topology file while running, if they take no stored key;
        refuse any other change."""
        seen = _modified(path)
        while True:
            await asyncio.sleep(interval)
            modified = _modified(path)
            if modified == seen:
                continue
            seen = modified
            try:
                newer = self.topology.extended_by(Topology.load(path, self.topology.backends[-1].endpoint))
            except TopologyError as error:
                log.error("topology change refused, still routing by the previous rules: %s", error)
                continue
            added = [backend for backend in newer.backends if backend.name not in self._stores]
            try:
                stores = {backend.name: self._make_store(backend.endpoint) for backend in added}
                for name, store in stores.items():
                    await store.open()
                    log.info("backend %r opened", name)
            except Exception as error:  # noqa: BLE001 - a bad new rule must not stop the server
                log.error("topology change refused: a new backend cannot be opened: %s", error)
                continue
            try:
                async with self._routing:  # no key lands by the old rules once the check has looked
                    await check_placement(newer, {**self._stores, **stores})
                    self._stores = {**self._stores, **stores}
                    self.topology = newer
            except Exception as error:  # noqa: BLE001 - a refused or failed check must not stop the server
                await asyncio.gather(*(store.close() for store in stores.values()), return_exceptions=True)
                log.error("topology change refused, still routing by the previous rules: %s", error)
                continue
            log.info("topology now routes by %d rules (%s)", len(newer.backends) - 1, ", ".join(b.name for b in added))

    async def revision(self) -> int:
        results = await asyncio.gather(*(store.revision() for store in self._stores.values()), return_exceptions=True)
        known = [result for result in results if isinstance(result, int)]
        if not known:
            raise StoreUnavailable("no backend answers")
        self._revision = max(self._revision, *known)
        return self._revision

    # -- writing -----------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        async with self._routing:
            await self._write(batch)

    async def _write(self, batch: WriteBatch) -> None:
        parts: dict[str, WriteBatch] = {}

        def part(key: bytes) -> WriteBatch:
            return parts.setdefault(self.topology.route(key).name, WriteBatch(batch.revision))

        for change in batch.changes:
            part(change.kv.key).changes.append(change)
        for attribute in batch.attributes:
            part(attribute.key).attributes.append(attribute)
        for version in batch.reindexed:
            part(version[0]).reindexed.append(version)
        if batch.index_complete:
            for name in self._stores:
                parts.setdefault(name, WriteBatch(batch.revision)).index_complete = True
        if batch.granted_leases or batch.revoked_leases or batch.compact_revision is not None:
            own = parts.setdefault(self._default, WriteBatch(batch.revision))
            own.granted_leases = batch.granted_leases
            own.revoked_leases = batch.revoked_leases
            own.compact_revision = batch.compact_revision
        names = list(parts)
        results = await asyncio.gather(*(self._stores[n].write(parts[n]) for n in names), return_exceptions=True)
        failed = {
            name: result for name, result in zip(names, results, strict=True) if isinstance(result, BaseException)
        }
        if not failed:
            self._revision = batch.revision
            return
        message = "; ".join(f"backend {name!r}: {error}" for name, error in failed.items())
        if len(failed) < len(names):
            self._revision = batch.revision
        route = self.topology.route
        raise PartialWriteFailure(
            message,
            lambda key: route(key).name in failed,
            self._default in failed,
        )

    # -- reading -----------------------------------------------------------------------------------

    def _backends_for(self, start: bytes, end: bytes | None) -> list[Backend]:
        if end is None:
            return [self.topology.route(start)]
        return self.topology.backends_for_range(start, end)

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
        backends = self._backends_for(start, end)
        # Every backend has durably reached this revision before the read starts; writes landing during
        # the read must not raise the revision reported for rows read before them.
        reached = self._revision
        if len(backends) == 1:
            rows = await self._on(
                backends[0].name,
                lambda store: store.range(start, end, revision, limit, keys_only, count_only, selection, counted),
            )
            # The backend's own revision lags whenever the latest writes went elsewhere.
            rows.revision = max(rows.revision, reached)
            return rows
        # One snapshot for all: the head is read at the revision every backend has durably reached.
        at = revision if revision > 0 else reached
        answers = await self._on_all(
            [backend.name for backend in backends],
            lambda store: store.range(start, end, at, limit, keys_only, count_only, selection, counted),
        )
        kvs = list(heapq.merge(*(answer.kvs for answer in answers), key=lambda kv: kv.key))
        if limit:
            kvs = kvs[:limit]
        return RangeRows(kvs, sum(answer.count for answer in answers), max(at, reached))

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        by_backend: dict[str, list[bytes]] = {}
        for key in keys:
            by_backend.setdefault(self.topology.route(key).name, []).append(key)

        def read(wanted: list[bytes]) -> Callable[[Store], Awaitable[dict[bytes, KeyValue]]]:
            return lambda store: store.latest(wanted)

        answers = await self._on_each({name: read(wanted) for name, wanted in by_backend.items()})
        return {key: kv for found in answers for key, kv in found.items()}

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        """Every backend's finds, merged by key: a key lives in one backend, so each comes back once."""
        answers = await self._on_all(list(self._stores), lambda store: store.find(lookup, after, limit))
        merged = heapq.merge(*answers, key=lambda kv: kv.key)
        return list(itertools.islice(merged, limit) if limit else merged)

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        answers = await self._on_all(list(self._stores), lambda store: store.unindexed(after, limit))
        merged = heapq.merge(*answers, key=lambda kv: (kv.key, kv.mod_revision))
        return list(itertools.islice(merged, limit))

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        return await self._merged_changes(list(self._stores), after, until, limit)

    async def changes_within(self, start: bytes, end: bytes | None, after: int, until: int, limit: int) -> list[Change]:
        """Like `changes`, read only from the backends that may hold keys in [start, end) (a watch
        of healthy backends' keys replays its history while another database is down)."""
        names = [backend.name for backend in self._backends_for(start, end)]
        return await self._merged_changes(names, after, until, limit)

    async def _merged_changes(self, names: list[str], after: int, until: int, limit: int) -> list[Change]:
        answers = await self._on_all(names, lambda store: store.changes(after, until, limit))
        # A backend that filled its page may have more after its last revision: stop there.
        cut = min((answer[-1].kv.mod_revision for answer in answers if limit and len(answer) >= limit), default=until)
        merged = heapq.merge(*answers, key=lambda change: (change.kv.mod_revision, change.sub))
        return [change for change in merged if change.kv.mod_revision <= cut]

    # -- maintenance -------------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        names = list(self._stores)
        results = await asyncio.gather(*(self._stores[n].compact(revision) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("backend %r: compaction to %d failed, tried again next time: %s", name, revision, result)

    async def defragment(self) -> None:
        """Every backend at once; an outage names its backend."""
        await self._on_all(list(self._stores), lambda store: store.defragment())

    async def size(self) -> int:
        """The backends' total; one that is down counts as empty, so Status keeps answering."""
        sizes = await asyncio.gather(*(store.size() for store in self._stores.values()), return_exceptions=True)
        return sum(size for size in sizes if isinstance(size, int))

    async def read_note(self, name: str) -> str | None:
        return await self._on(self._default, lambda store: store.read_note(name))

    async def write_note(self, name: str, text: str | None) -> None:
        await self._on(self._default, lambda store: store.write_note(name, text))

    async def remove_keys(self, keys: list[bytes]) -> None:
        by_backend: dict[str, list[bytes]] = {}
        for key in keys:
            by_backend.setdefault(self.topology.route(key).name, []).append(key)
        for name, some in by_backend.items():
            await self._on(name, lambda store, some=some: store.remove_keys(some))  # type: ignore[misc]


def _modified(path: str) -> tuple[float, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime, stat.st_size

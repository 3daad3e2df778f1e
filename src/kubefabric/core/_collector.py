"""Garbage collection in storage: kubefabric collects the objects labelled skip-controller-manager-metadata-caching
itself, as Kubernetes' garbage collector would, so that kube-controller-manager need not cache them.

The decisions are those of pkg/controller/garbagecollector (attemptToDeleteItem, processDeletingDependentsItem,
orphanDependents); the deletions they ask for are carried out as kube-apiserver's registry.Store.Delete does with
a propagation policy: the policy's finalizer replaces `orphan` and `foregroundDeletion`, an object that keeps
finalizers is marked as being deleted, one without is deleted.

Work comes from durable commits. An object is gone when its key is deleted or now holds another uid: its
dependents are due. A labelled object written with owners or being deleted with the `orphan` finalizer, and any
object being deleted with the `foregroundDeletion` finalizer (its labelled dependents are the collector's), is
due itself, and so is an owner waiting for its dependents when one that blocked it goes.
Work is kept per backend, so an outage of one database delays only the collection of what lives there.

Every write is an Edit: made only if the key still holds the version the decision was made on. So a
kube-controller-manager collecting the same objects, or any client writing them, is never overwritten and nothing
is deleted twice; a key that changed is examined again. After a restart, nothing the collector was doing is
lost: every labelled object with owners or a deletion mark, and every object being deleted in the foreground
(those with a `g` attribute row), is examined anew.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubefabric.core._metrics import GC_COLLECTED, GC_FAILED, GC_PENDING
from kubefabric.core._mvcc import Commit, Mvcc
from kubefabric.core._ops import Edit
from kubefabric.core._routed import RoutedStore
from kubefabric.objects import (
    FOREGROUND_FINALIZER,
    ORPHAN_FINALIZER,
    ObjectInfo,
    OwnerReference,
    add_finalizer,
    mark_deleted,
    remove_finalizer,
    remove_owner_references,
)
from kubefabric.stores import BLOCKING, COLLECTING, OPAQUE, OWNER, UID, KeyValue, Lookup, Store

log = logging.getLogger(__name__)

# Edits made in one revision: enough to share commits, few enough not to hold other writers up.
EDITS_PER_REVISION = 64
PAGE = 1000  # versions read per lookup
RETRY_FIRST, RETRY_MAX = 0.25, 5.0  # seconds before a failed backend's work is tried again


@dataclass(slots=True)
class _Due:
    """The work waiting for one backend."""

    gone: set[str] = field(default_factory=set)  # uids whose dependents stored here are due
    released: set[str] = field(default_factory=set)  # uids of owners, stored here, one of whose blockers went
    keys: set[bytes] = field(default_factory=set)  # keys stored here that are due themselves
    rescan: bool = False  # every labelled object with owners or a deletion mark is due
    failures: int = 0
    retry_at: float = 0.0

    def __len__(self) -> int:
        return len(self.gone) + len(self.released) + len(self.keys)

    def take(self) -> _Due:
        taken = _Due(self.gone, self.released, self.keys, self.rescan)
        self.gone, self.released, self.keys, self.rescan = set(), set(), set(), False
        return taken

    def put_back(self, work: _Due) -> None:
        self.gone |= work.gone
        self.released |= work.released
        self.keys |= work.keys
        self.rescan |= work.rescan


class _Deferred(Exception):
    """Whether an owner is alive cannot be told now: a backend that may hold it is unreachable."""


@dataclass(slots=True)
class _Owners:
    """What one round of decisions knows of the owners it met, by uid: an owner in neither field is gone."""

    # None: an object kubefabric cannot read may be it, so it counts as alive (and not deleting).
    alive: dict[str, ObjectInfo | None] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # no answer: a backend is down


class Collector:
    def __init__(self, mvcc: Mvcc) -> None:
        self._mvcc = mvcc
        self._due: dict[str, _Due] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._working: dict[str, asyncio.Task[None]] = {}  # each backend's round of work in progress
        mvcc.on_commit(self._observe)
        GC_PENDING.set_function(lambda: sum(len(due) for due in self._due.values()))

    def start(self) -> None:
        """Collect from now on, starting with whatever a previous run left due."""
        for name in self._backends():
            self._due_in(name).rescan = True
        self._worker = asyncio.create_task(self._work_forever(), name="garbage-collector")
        self._wake.set()

    async def stop(self) -> None:
        tasks = [task for task in (self._worker, *self._working.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _backends(self) -> dict[str, Store]:
        """Each backend's store by name, as they are now: a topology may grow while serving."""
        store = self._mvcc.store
        return store.stores if isinstance(store, RoutedStore) else {"": store}

    def _due_in(self, backend: str) -> _Due:
        return self._due.setdefault(backend, _Due())

    def _backend_of(self, key: bytes) -> str:
        if self._mvcc.backend_of is not None:
            return self._mvcc.backend_of(key)
        (name,) = self._backends()
        return name

    # -- what commits make due -------------------------------------------------------------------

    def _observe(self, commit: Commit) -> None:
        info = self._mvcc.objects.info
        for change in commit.changes:
            before = info(change.prev) if change.prev is not None else None
            after = None if change.is_delete else info(change.kv)
            if before is not None and before.uid and (after is None or after.uid != before.uid):
                self._gone(before)
                before = None  # what is at the key now is another object
            if after is None:
                continue
            if before is not None:
                still_blocking = {ref.uid for ref in after.owner_references if ref.block_owner_deletion}
                self._released(
                    ref.uid
                    for ref in before.owner_references
                    if ref.block_owner_deletion and ref.uid not in still_blocking
                )
            if _newly_due(before, after):
                self._due_in(self._backend_of(change.kv.key)).keys.add(change.kv.key)
        self._wake.set()

    def _gone(self, obj: ObjectInfo) -> None:
        """`obj` is gone: its dependents are due wherever they are, and the owners it blocked may be released."""
        for name in self._backends():
            self._due_in(name).gone.add(obj.uid)
        self._released(ref.uid for ref in obj.owner_references if ref.block_owner_deletion)

    def _released(self, uids: Iterable[str]) -> None:
        uids = set(uids)
        if uids:
            for name in self._backends():
                self._due_in(name).released |= uids

    # -- the work loop ---------------------------------------------------------------------------

    async def _work_forever(self) -> None:
        """Hand each backend's due work to a task of its own: a slow or unreachable database holds up only the
        collection of what it stores."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            for name, due in list(self._due.items()):
                if name not in self._working and (len(due) or due.rescan) and due.retry_at <= now:
                    task = asyncio.create_task(self._work_on(name, due), name=f"garbage-collector-{name}")
                    self._working[name] = task
                    task.add_done_callback(functools.partial(self._done_working, name))
            waiting = [
                due.retry_at
                for name, due in self._due.items()
                if name not in self._working and (len(due) or due.rescan) and due.retry_at > now
            ]
            if waiting:
                asyncio.get_running_loop().call_later(max(0.0, min(waiting) - now), self._wake.set)

    def _done_working(self, backend: str, _: asyncio.Task[None]) -> None:
        del self._working[backend]
        self._wake.set()

    async def _work_on(self, name: str, due: _Due) -> None:
        store = self._backends().get(name)
        work = due.take()
        if store is None:
            return
        try:
            await self._do(store, work)
        except Exception as error:  # noqa: BLE001 - the work stays due and is tried again
            due.put_back(work)
            due.failures += 1
            due.retry_at = time.monotonic() + min(RETRY_MAX, RETRY_FIRST * 2 ** (due.failures - 1))
            GC_FAILED.inc()
            log.warning("garbage collection in backend %r failed, tried again later: %s", name, error)
        else:
            due.failures, due.retry_at = 0, 0.0

    async def _do(self, store: Store, work: _Due) -> None:
        if work.rescan:
            await self._each_page(store, self._mvcc.objects.lookup((COLLECTING,), ("",)), self._examine)
        if work.gone:
            uids = sorted(work.gone)
            names = tuple(OWNER + uid for uid in uids)
            gone = frozenset(uids)
            await self._each_page(store, self._mvcc.objects.lookup(names), lambda page: self._examine(page, gone))
        if work.released:
            owners = tuple(sorted(work.released))
            await self._each_page(store, self._mvcc.objects.lookup((UID,), owners), self._check_released)
        if work.keys:
            found = await store.latest(work.keys)
            await self._examine([found[key] for key in sorted(found)])

    async def _each_page(
        self, store: Store, lookup: Lookup, handle: Callable[[list[KeyValue]], Awaitable[None]]
    ) -> None:
        after = b""
        while True:
            page = await store.find(lookup, after, PAGE)
            await handle(page)
            if len(page) < PAGE:
                return
            after = page[-1].key

    # -- decisions -------------------------------------------------------------------------------

    async def _examine(self, versions: list[KeyValue], gone: frozenset[str] = frozenset()) -> None:
        """One round of decisions, all on the same state: each version as a dependent (attemptToDeleteItem), the
        dependents of those being deleted in the foreground with them, then the owners orphaning their dependents
        or done waiting for them. `gone`: uids of owners seen to go, which need no looking up (so no backend's
        outage holds their dependents up)."""
        objects = {kv.key: (kv, obj) for kv in versions if (obj := self._mvcc.objects.info(kv)) is not None}
        orphaning = [(kv, obj) for kv, obj in objects.values() if obj.collected and obj.orphaning]
        foreground = [(kv, obj) for kv, obj in objects.values() if obj.waiting_for_dependents]
        for _, owner in foreground:
            for kv in await self._everywhere(self._mvcc.objects.lookup((OWNER + owner.uid,))):
                if kv.key not in objects and (obj := self._mvcc.objects.info(kv)) is not None:
                    objects[kv.key] = (kv, obj)
        dependents = [(kv, obj) for kv, obj in objects.values() if obj.owner_references and not obj.deletion_timestamp]
        owners = await self._owners((ref for _, obj in dependents for ref in obj.owner_references), gone)
        edits: list[Edit] = []
        deferred: list[bytes] = []
        for kv, obj in dependents:
            try:
                edit = await self._attempt_to_delete(kv, obj, owners)
            except _Deferred:
                deferred.append(kv.key)
                continue
            except ValueError as error:  # its metadata can be read but not edited: nothing to do but say so
                log.warning("cannot collect %r: %s", kv.key, error)
                continue
            if edit is not None:
                edits.append(edit)
        await self._apply(edits)
        for kv, obj in orphaning:
            await self._orphan_dependents(kv, obj)
        for kv, obj in foreground:
            if obj.collected:  # an owner kube-controller-manager sees is released by it
                await self._release_if_unblocked(kv.key)
        if deferred:
            for key in deferred:
                self._due_in(self._backend_of(key)).keys.add(key)
            raise _Deferred(f"{len(deferred)} objects wait for a backend that may hold one of their owners")

    async def _attempt_to_delete(self, kv: KeyValue, obj: ObjectInfo, owners: _Owners) -> Edit | None:
        solid, dangling, waiting = [], [], []
        for ref in obj.owner_references:
            if ref.uid in owners.unknown:
                raise _Deferred(ref.uid)
            if ref.uid not in owners.alive:
                dangling.append(ref.uid)
            elif (owner := owners.alive[ref.uid]) is not None and owner.waiting_for_dependents:
                waiting.append(ref.uid)
            else:
                solid.append(ref.uid)
        waiting_on_collected = [uid for uid in waiting if (owner := owners.alive[uid]) and owner.collected]
        if not obj.collected and not waiting_on_collected:
            return None  # kube-controller-manager's: it sees this object and every owner deleting it
        if solid:
            # A live owner keeps it; the references to the owners gone or deleting it go.
            stale = set(dangling + waiting) if obj.collected else set(waiting_on_collected)
            return Edit(kv.key, kv.mod_revision, remove_owner_references(kv.value, stale)) if stale else None
        if not obj.collected:
            return self._delete(kv, obj, None)
        if waiting and await self._has_dependents(obj.uid):
            return self._delete(kv, obj, FOREGROUND_FINALIZER)
        if ORPHAN_FINALIZER in obj.finalizers:
            return self._delete(kv, obj, ORPHAN_FINALIZER)
        if FOREGROUND_FINALIZER in obj.finalizers:
            return self._delete(kv, obj, FOREGROUND_FINALIZER)
        return self._delete(kv, obj, None)

    def _delete(self, kv: KeyValue, obj: ObjectInfo, policy_finalizer: str | None) -> Edit:
        """kube-apiserver's delete with a propagation policy (None: background)."""
        kept = [f for f in obj.finalizers if f not in (ORPHAN_FINALIZER, FOREGROUND_FINALIZER)]
        if not kept and policy_finalizer is None:
            return Edit(kv.key, kv.mod_revision, None)
        value = mark_deleted(kv.value, datetime.now(UTC))
        for finalizer in (ORPHAN_FINALIZER, FOREGROUND_FINALIZER):
            if finalizer != policy_finalizer:
                value = remove_finalizer(value, finalizer)
        if policy_finalizer is not None:
            value = add_finalizer(value, policy_finalizer)
        return Edit(kv.key, kv.mod_revision, value)

    async def _orphan_dependents(self, kv: KeyValue, owner: ObjectInfo) -> None:
        """The owner's references go from every dependent, then its orphan finalizer goes."""
        dependents = await self._everywhere(self._mvcc.objects.lookup((OWNER + owner.uid,)))
        edits = [Edit(d.key, d.mod_revision, remove_owner_references(d.value, {owner.uid})) for d in dependents]
        if not all(await self._apply(edits)):
            return  # a dependent changed: the owner is examined again
        await self._apply([self._without_finalizer(kv, owner, ORPHAN_FINALIZER)])

    async def _check_released(self, versions: list[KeyValue]) -> None:
        for kv in versions:
            await self._release_if_unblocked(kv.key)

    async def _release_if_unblocked(self, key: bytes) -> None:
        """processDeletingDependentsItem: once no dependent blocks it, the owner loses foregroundDeletion."""
        kv = (await self._backends()[self._backend_of(key)].latest((key,))).get(key)
        owner = None if kv is None else self._mvcc.objects.info(kv)
        if kv is None or owner is None or not owner.collected:
            return
        if not owner.waiting_for_dependents:
            return
        blocking = self._mvcc.objects.lookup((OWNER + owner.uid,), (BLOCKING,))
        if await self._everywhere(blocking, limit=1):
            return
        await self._apply([self._without_finalizer(kv, owner, FOREGROUND_FINALIZER)])

    def _without_finalizer(self, kv: KeyValue, obj: ObjectInfo, finalizer: str) -> Edit:
        """An update that removes a finalizer; kube-apiserver deletes an object it leaves being deleted without any."""
        if not [f for f in obj.finalizers if f != finalizer]:
            return Edit(kv.key, kv.mod_revision, None)
        return Edit(kv.key, kv.mod_revision, remove_finalizer(kv.value, finalizer))

    # -- reads across backends -------------------------------------------------------------------

    async def _has_dependents(self, uid: str) -> bool:
        return bool(await self._everywhere(self._mvcc.objects.lookup((OWNER + uid,)), limit=1))

    async def _everywhere(self, lookup: Lookup, limit: int = 0) -> list[KeyValue]:
        """What `lookup` finds in every backend; a backend that cannot answer defers the decision."""
        found: list[KeyValue] = []
        for name, store in self._backends().items():
            try:
                after = b""
                while True:
                    page = await store.find(lookup, after, limit or PAGE)
                    found += page
                    if limit or len(page) < PAGE:
                        break
                    after = page[-1].key
            except Exception as error:  # noqa: BLE001 - any failure to read defers, never decides
                raise _Deferred(f"backend {name!r}: {error}") from error
            if limit and len(found) >= limit:
                break
        return found

    async def _owners(self, refs: Iterable[OwnerReference], gone: frozenset[str]) -> _Owners:
        """Which of these owners (OwnerReference) are alive, gone, or cannot be told now.

        An owner is found by its uid. One not found may still be an object whose value kubefabric cannot read
        (encrypted at rest): if such an object has the owner's name, the owner counts as alive, since it may be.
        """
        owners = _Owners()
        wanted = {ref.uid: ref for ref in refs if ref.uid not in gone}
        if not wanted:
            return owners
        for name, store in self._backends().items():
            try:
                uids = tuple(sorted(wanted))
                for kv in await store.find(self._mvcc.objects.lookup((UID,), uids), b"", 0):
                    obj = self._mvcc.objects.info(kv)
                    if obj is not None and obj.uid in wanted:
                        owners.alive[obj.uid] = obj
            except Exception as error:  # noqa: BLE001 - unknown, never gone
                log.warning("cannot look owners up in backend %r: %s", name, error)
                owners.unknown |= set(wanted)
        missing = {uid: ref for uid, ref in wanted.items() if uid not in owners.alive and uid not in owners.unknown}
        for uid in await self._maybe_unreadable(missing):
            owners.alive[uid] = None
        owners.unknown -= set(owners.alive)
        return owners

    async def _maybe_unreadable(self, missing: dict[str, OwnerReference]) -> set[str]:
        """The uids of `missing` owners that an unreadable stored object may be (see `_may_hold`)."""
        if not missing:
            return set()
        names = {ref.name for ref in missing.values()}
        unreadable = self._mvcc.objects.lookup((OPAQUE,), sorted(names))
        try:
            found = await self._everywhere(unreadable)
        except _Deferred:
            return set(missing)
        return {uid for uid, ref in missing.items() if any(_may_hold(kv.key, ref) for kv in found)}

    # -- writes ----------------------------------------------------------------------------------

    async def _apply(self, edits: Sequence[Edit]) -> list[bool]:
        """Make the edits, a backend's at a time; a key that changed meanwhile is examined again."""
        made: list[bool] = []
        by_backend: dict[str, list[Edit]] = {}
        for edit in edits:
            by_backend.setdefault(self._backend_of(edit.key), []).append(edit)
        for name, group in by_backend.items():
            for start in range(0, len(group), EDITS_PER_REVISION):
                chunk = group[start : start + EDITS_PER_REVISION]
                results = await self._mvcc.apply_edits(chunk)
                for edit, done in zip(chunk, results, strict=True):
                    if not done:
                        self._due_in(name).keys.add(edit.key)
                    elif edit.value is None:
                        GC_COLLECTED.inc()
                made += results
        if not all(made):
            self._wake.set()
        return made


def _newly_due(before: ObjectInfo | None, after: ObjectInfo) -> bool:
    """Whether a write makes its object due: a labelled one got owners (maybe gone already) or the label, or
    started orphaning its dependents; any started waiting for its dependents (its labelled ones are ours)."""
    if after.deletion_timestamp:
        deleting = after.waiting_for_dependents or (after.collected and after.orphaning)
        return deleting and (
            before is None
            or before.deletion_timestamp != after.deletion_timestamp
            or before.finalizers != after.finalizers
        )
    if not after.collected or not after.owner_references:
        return False  # an object kube-controller-manager sees is its to collect
    return before is None or before.owner_references != after.owner_references or before.collected != after.collected


def _may_hold(key: bytes, ref: OwnerReference) -> bool:
    """Whether the object at `key` may be the owner `ref` names: the key ends in its name, and a segment before
    it is a resource its kind may be stored as (kind Secret: secrets, Policy: policies, Ingress: ingresses)."""
    *path, name = key.decode(errors="replace").split("/")
    stem = ref.kind.lower()[:-1] or ref.kind.lower()
    return name == ref.name and any(segment.startswith(stem) for segment in path[2:])

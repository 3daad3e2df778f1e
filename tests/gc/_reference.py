"""Kubernetes' garbage collection semantics, written from Kubernetes' source for the tests alone.

Nothing here comes from kubefabric: the tests compare what the server's collector leaves in storage with this model.

Two parties act on stored objects:

- kube-apiserver, on a client's delete or update (k8s.io/apiserver registry/generic/registry/store.go: Delete,
  deletionFinalizersForGarbageCollection, markAsDeleting, and ShouldDeleteDuringUpdate on an update that empties
  the finalizers of an object being deleted);
- the garbage collector (pkg/controller/garbagecollector/garbagecollector.go: attemptToDeleteItem,
  classifyReferences, processDeletingDependentsItem, attemptToOrphanWorker/orphanDependents), here restricted to
  the objects kubefabric collects itself, those labelled `skip-controller-manager-metadata-caching`:
  - background: a labelled object whose owners are all gone (no object has their uid any more, e.g. its key was
    deleted or now holds an object with another uid) is deleted, with the propagation its own finalizers ask for;
    one that still has a live owner loses its references to the gone ones;
  - foreground: the dependents, labelled or not, of a labelled owner being deleted with the foregroundDeletion
    finalizer are deleted; once no dependent blocks the owner (blockOwnerDeletion), the finalizer is removed.
    A labelled dependent that has dependents itself is deleted in the foreground too (Kubernetes' cascade); an
    unlabelled one in the background, so that the collector never leaves a finalizer on an object it does not
    finish (what depends on an unlabelled dependent is collected only if labelled);
  - orphan: a labelled owner being deleted with the orphan finalizer is removed from its dependents' owner
    references, then the finalizer is removed;
  - a pair where neither the owner nor the dependent is labelled is left alone.

Deletion marks are modelled as a flag: kube-apiserver's markAsDeleting sets deletionTimestamp (now) and
deletionGracePeriodSeconds 0 together, and the collector only tests whether deletionTimestamp is set.

Where Kubernetes' collector races (its work queue has no order), the model works in waves that all see the same
state: first it handles every dependent due, then the orphaning owners, then the owners done waiting for their
dependents. So an object whose owner is alive when the wave starts keeps it as a live owner: with another owner
gone, or being deleted in the foreground, it only loses the reference to that one, even if its live owner is
collected in the same wave (as Kubernetes does when it handles the dependent first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

LABEL = "skip-controller-manager-metadata-caching"
ORPHAN = "orphan"  # metav1.FinalizerOrphanDependents
FOREGROUND = "foregroundDeletion"  # metav1.FinalizerDeleteDependents

Policy = Literal["background", "foreground", "orphan"]


@dataclass(frozen=True)
class OwnerRef:
    uid: str
    block_owner_deletion: bool = False


@dataclass(frozen=True)
class Obj:
    uid: str
    key: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[OwnerRef, ...] = ()
    finalizers: tuple[str, ...] = ()
    deleting: bool = False
    """metadata.deletionTimestamp is set (and deletionGracePeriodSeconds is 0)."""

    @property
    def labelled(self) -> bool:
        return LABEL in self.labels

    @property
    def waiting_for_dependents(self) -> bool:
        """Being deleted in the foreground: the collector's isDeletingDependents."""
        return self.deleting and FOREGROUND in self.finalizers

    @property
    def orphaning(self) -> bool:
        return self.deleting and ORPHAN in self.finalizers


@dataclass(frozen=True)
class Delete:
    """A client's delete of the object at `key`, with a propagation policy."""

    key: str
    policy: Policy = "background"


@dataclass(frozen=True)
class RemoveFinalizer:
    """A client's update of the object at `key` that removes `finalizer` (every occurrence)."""

    key: str
    finalizer: str


@dataclass(frozen=True)
class Put:
    """A write of `obj` at its key: a create, or a replacement (with another uid, the old object is gone)."""

    obj: Obj


Action = Delete | RemoveFinalizer | Put
State = dict[str, Obj]
"""The stored objects by key."""


class NotConverged(AssertionError):
    pass


def run(objects: Iterable[Obj], actions: Sequence[Action], *, max_steps: int = 10_000) -> State:
    """The stored objects once the collector has converged after each action in turn."""
    state: State = {}
    for obj in objects:
        _put(state, obj)
    converge(state, max_steps)
    for action in actions:
        apply(state, action)
        converge(state, max_steps)
    return state


def apply(state: State, action: Action) -> None:
    """A client's action as kube-apiserver carries it out (a missing object is a no-op: NotFound)."""
    if isinstance(action, Put):
        _put(state, action.obj)
    elif isinstance(action, Delete):
        if action.key in state:
            _delete(state, state[action.key], action.policy)
    elif action.key in state:
        obj = state[action.key]
        _update(state, dataclasses.replace(obj, finalizers=_without(obj.finalizers, action.finalizer)))


def converge(state: State, max_steps: int = 10_000) -> None:
    """Run the collector until it has nothing left to do."""
    for _ in range(max_steps):
        if not step(state):
            return
    raise NotConverged(f"the collector still acts after {max_steps} steps")


def step(state: State) -> bool:
    """One wave of the collector's work, False when it has none: every dependent due is handled, all seeing the
    same state (each changes only itself), else every orphaning owner, else every owner done waiting for its
    dependents."""
    snapshot = dict(state)
    acted = False
    for obj in snapshot.values():
        acted |= _attempt_to_delete(state, snapshot, obj)
    if acted:
        return True
    for obj in snapshot.values():
        if obj.labelled and obj.orphaning:
            _orphan_dependents(state, obj)
            acted = True
    if acted:
        return True
    for obj in snapshot.values():
        if obj.labelled and obj.waiting_for_dependents and not _blocking_dependents(snapshot, obj):
            _update(state, dataclasses.replace(obj, finalizers=_without(obj.finalizers, FOREGROUND)))
            acted = True
    return acted


# --- kube-apiserver ---------------------------------------------------------------------------------------------


def _put(state: State, obj: Obj) -> None:
    if obj.deleting and not obj.finalizers:
        raise ValueError(f"{obj.key}: an object being deleted without finalizers is deleted, not written")
    state[obj.key] = obj


def deletion_finalizers(finalizers: tuple[str, ...], policy: Policy) -> tuple[str, ...]:
    """registry.Store.Delete's deletionFinalizersForGarbageCollection: the policy's finalizer replaces orphan and
    foregroundDeletion."""
    kept = [f for f in finalizers if f not in (ORPHAN, FOREGROUND)]
    if policy == "orphan":
        kept.append(ORPHAN)
    elif policy == "foreground":
        kept.append(FOREGROUND)
    if set(kept) == set(finalizers):
        return finalizers  # no update of the finalizers: their order stays
    return tuple(kept)


def _delete(state: State, obj: Obj, policy: Policy) -> None:
    """registry.Store.Delete: with finalizers left (deletion_finalizers) the object is marked as being deleted
    (markAsDeleting), without any it is deleted."""
    finalizers = deletion_finalizers(obj.finalizers, policy)
    if finalizers:
        state[obj.key] = dataclasses.replace(obj, finalizers=finalizers, deleting=True)
    else:
        del state[obj.key]


def _update(state: State, obj: Obj) -> None:
    """An update; one that leaves an object being deleted without finalizers deletes it."""
    if obj.deleting and not obj.finalizers:
        del state[obj.key]
    else:
        state[obj.key] = obj


def _without(finalizers: tuple[str, ...], finalizer: str) -> tuple[str, ...]:
    return tuple(f for f in finalizers if f != finalizer)


# --- the garbage collector ---------------------------------------------------------------------------------------


def _dependents(state: State, owner: Obj) -> list[Obj]:
    return [obj for obj in state.values() if any(ref.uid == owner.uid for ref in obj.owners)]


def _blocking_dependents(state: State, owner: Obj) -> list[Obj]:
    return [obj for obj in state.values() if any(r.uid == owner.uid and r.block_owner_deletion for r in obj.owners)]


def _attempt_to_delete(state: State, snapshot: State, obj: Obj) -> bool:
    """attemptToDeleteItem for `obj` as a dependent, when it is the collector's, decided on `snapshot` and
    written to `state`; True when it acted."""
    if obj.deleting or not obj.owners:
        return False  # being deleted: the collector waits for the deletion (or finishes it as an owner)
    by_uid = {other.uid: other for other in snapshot.values()}
    solid, dangling, waiting = [], [], []
    for ref in obj.owners:
        owner = by_uid.get(ref.uid)
        if owner is None:
            dangling.append(ref)
        elif owner.waiting_for_dependents:
            waiting.append(ref)
        else:
            solid.append(ref)
    waiting_on_labelled = [ref for ref in waiting if by_uid[ref.uid].labelled]
    if not obj.labelled and not waiting_on_labelled:
        return False  # neither it nor an owner deleting it is the collector's
    if solid:
        # A live owner keeps it; the references to the gone and the deleting owners go (from an unlabelled object,
        # only those to the labelled owners deleting it).
        stale = {ref.uid for ref in (dangling + waiting if obj.labelled else waiting_on_labelled)}
        if not stale:
            return False
        _update(state, dataclasses.replace(obj, owners=tuple(r for r in obj.owners if r.uid not in stale)))
        return True
    if not obj.labelled:
        _delete(state, obj, "background")
    elif waiting and _dependents(snapshot, obj):
        _delete(state, obj, "foreground")
    elif ORPHAN in obj.finalizers:
        _delete(state, obj, "orphan")  # its own finalizers choose the propagation
    elif FOREGROUND in obj.finalizers:
        _delete(state, obj, "foreground")
    else:
        _delete(state, obj, "background")
    return True


def _orphan_dependents(state: State, owner: Obj) -> None:
    """attemptToOrphanWorker: the owner's references go from its dependents, then its orphan finalizer."""
    for dependent in _dependents(state, owner):
        owners = tuple(ref for ref in dependent.owners if ref.uid != owner.uid)
        _update(state, dataclasses.replace(dependent, owners=owners))
    current = state[owner.key]  # another orphaning owner of this wave may have orphaned it
    _update(state, dataclasses.replace(current, finalizers=_without(current.finalizers, ORPHAN)))

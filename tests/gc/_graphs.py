"""Ownership graphs and client actions on them, as hypothesis strategies, for the collector's randomized tests.

A graph is a DAG: an object's owners are objects created before it, or uids no object has (owners already gone).
Dependents are shared (several owners), references block their owner's deletion or not, objects carry the
collector's label or not and finalizers of their own (rarely the collector's orphan and foregroundDeletion).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis.strategies import DrawFn

from tests.gc._reference import FOREGROUND, LABEL, ORPHAN, Action, Delete, Obj, OwnerRef, Put, RemoveFinalizer

FINALIZERS = ("example.com/protect", "example.com/cleanup")
"""Finalizers only clients remove."""
POLICIES = ("background", "foreground", "orphan")


def key_of(index: int) -> str:
    return f"/registry/configmaps/default/object-{index}"


def uid_of(index: int, generation: int = 0) -> str:
    return f"uid-{index}" if generation == 0 else f"uid-{index}-{generation}"


@dataclass(frozen=True)
class Scenario:
    objects: tuple[Obj, ...]
    actions: tuple[Action, ...]


@st.composite
def ownership_graphs(draw: DrawFn, max_objects: int = 8) -> tuple[Obj, ...]:
    count = draw(st.integers(1, max_objects))
    objects: list[Obj] = []
    for index in range(count):
        candidates = [uid_of(i) for i in range(index)] + ["uid-gone"]
        owner_uids = draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True))
        owners = tuple(OwnerRef(uid, draw(st.booleans())) for uid in owner_uids)
        labelled = draw(st.integers(0, 3)) > 0  # mostly labelled: most of the graph is the collector's
        finalizers = draw(st.lists(st.sampled_from(FINALIZERS), max_size=2, unique=True))
        if draw(st.integers(0, 9)) == 0:
            finalizers.append(draw(st.sampled_from((ORPHAN, FOREGROUND))))  # chosen at creation by the client
        labels = {"app": "gc", **({LABEL: draw(st.sampled_from(("", "true")))} if labelled else {})}
        objects.append(Obj(uid_of(index), key_of(index), labels, owners, tuple(finalizers)))
    return tuple(objects)


@st.composite
def scenarios(draw: DrawFn, max_objects: int = 8, max_actions: int = 8) -> Scenario:
    objects = draw(ownership_graphs(max_objects))
    actions: list[Action] = []
    generations = [0] * len(objects)
    for _ in range(draw(st.integers(0, max_actions))):
        index = draw(st.integers(0, len(objects) - 1))
        kind = draw(st.sampled_from(("delete", "delete", "delete", "remove finalizer", "replace")))
        if kind == "delete":
            actions.append(Delete(key_of(index), draw(st.sampled_from(POLICIES))))
        elif kind == "remove finalizer":
            finalizer = draw(st.sampled_from(FINALIZERS + (ORPHAN, FOREGROUND)))
            actions.append(RemoveFinalizer(key_of(index), finalizer))
        else:  # the key now holds another object: the old uid is gone for its dependents
            generations[index] += 1
            original = objects[index]
            actions.append(Put(Obj(uid_of(index, generations[index]), original.key, original.labels)))
    return Scenario(objects, tuple(actions))

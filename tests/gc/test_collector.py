"""The collector end to end: kube-apiserver's deletes and updates over the etcd API, on every store and on a
multi:// topology (an object and the next one created live in different backends there), with values in JSON and
in protobuf; after each step the stored objects must be the model's (tests/gc/_reference.py) and stay so.

Each test also checks the collector's writes in history (deletes with prev_kv, updates as PUTs that change only
the metadata they must), label selectors over the rewritten objects, and kubefabric_gc_collected_total.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubefabric.etcdpb import kv_pb2
from tests._client import Etcd
from tests._servers import ServerProcess
from tests._targets import STORE_ENDPOINTS, start_store
from tests.gc._apiserver import Apiserver, metric, one_backend
from tests.gc._objects import ENCODINGS, PLACES, Encoding, metadata, new_case
from tests.gc._reference import FOREGROUND, LABEL, ORPHAN, Delete, Obj, OwnerRef, Put, RemoveFinalizer, State

KEEP = "example.com/keep"
COLLECTED = "kubefabric_gc_collected_total"
PENDING = "kubefabric_gc_pending"


class Graph:
    """Objects in the order they are created, each in the place after the one before: on the multi:// topology an
    object and the next one live in different backends."""

    def __init__(self) -> None:
        self.objects: list[Obj] = []

    def add(
        self,
        name: str,
        *owners: str,
        labelled: bool = True,
        blocking: tuple[str, ...] = (),
        finalizers: tuple[str, ...] = (),
    ) -> Obj:
        """An object named `name` owned by `owners` (those in `blocking` with blockOwnerDeletion)."""
        labels = {LABEL: "true", "app": "gc"} if labelled else {"app": "gc"}
        refs = tuple(OwnerRef(f"uid-{owner}", owner in blocking) for owner in owners)
        key = PLACES[len(self.objects) % len(PLACES)] + name
        self.objects.append(Obj(f"uid-{name}", key, labels, refs, finalizers))
        return self.objects[-1]

    def key(self, name: str) -> str:
        [obj] = [obj for obj in self.objects if obj.key.rsplit("/", 1)[1] == name]
        return obj.key


def names(state: State) -> set[str]:
    return {key.rsplit("/", 1)[1] for key in state}


@pytest.fixture(params=ENCODINGS)
def api(request: pytest.FixtureRequest, gc_server: ServerProcess, gc_client: Etcd) -> Apiserver:
    encoding: Encoding = request.param
    return Apiserver(gc_client, new_case(), encoding, one_backend=one_backend(gc_server))


def collected(api: Apiserver, server: ServerProcess, before: float) -> tuple[set[str], set[str]]:
    """The names of the objects the collector deleted and of those it updated, since the case began; its writes
    checked, and counted by kubefabric_gc_collected_total; nothing left pending."""
    events = api.collector_events()
    deleted = [event.kv.key for event in events if event.type == kv_pb2.Event.DELETE]
    assert metric(server, COLLECTED) - before == len(deleted)
    assert metric(server, PENDING) == 0
    assert len(set(deleted)) == len(deleted), "a key deleted twice"

    def name(key: bytes) -> str:
        return api.case.model_key(key.decode()).rsplit("/", 1)[1]

    updated = {name(event.kv.key) for event in events if event.type == kv_pb2.Event.PUT}
    return {name(key) for key in deleted}, updated


def stored_metadata(api: Apiserver, key: str) -> dict[str, object]:
    [kv] = api.client.get(api.case.key(key).encode()).kvs
    return metadata(kv.value)


# --- background ---------------------------------------------------------------------------------------------------


def test_background_collects_dependents_and_marks_those_with_finalizers(
    api: Apiserver, gc_server: ServerProcess
) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner")
    g.add("child", "owner")
    g.add("grandchild", "child")
    g.add("held", "owner", finalizers=(KEEP, "example.com/two"))
    g.add("held-child", "held")
    g.add("other")
    assert names(api.begin(g.objects)) == {"owner", "child", "grandchild", "held", "held-child", "other"}

    state = api.act(Delete(g.key("owner")))
    assert names(state) == {"held", "held-child", "other"}
    assert state[g.key("held")].deleting and state[g.key("held")].finalizers == (KEEP, "example.com/two")
    held = stored_metadata(api, g.key("held"))
    assert held["deletionGracePeriodSeconds"] == 0 and "deletionTimestamp" in held

    # The finalizers go one by one (kube-apiserver deletes the object with the last one); then its dependent goes.
    assert names(api.act(RemoveFinalizer(g.key("held"), KEEP))) == {"held", "held-child", "other"}
    assert names(api.act(RemoveFinalizer(g.key("held"), "example.com/two"))) == {"other"}
    assert collected(api, gc_server, before) == ({"child", "grandchild", "held-child"}, {"held"})


def test_a_key_that_now_holds_another_object_means_its_owner_is_gone(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    owner = g.add("owner")
    g.add("child", "owner")
    g.add("grandchild", "child")
    api.begin(g.objects)
    updated = Obj(owner.uid, owner.key, {**owner.labels, "new": "label"})  # the same object: nothing to collect
    assert names(api.act(Put(updated))) == {"owner", "child", "grandchild"}
    replacement = Obj("uid-owner-2", owner.key, owner.labels)
    assert api.act(Put(replacement)) == {owner.key: replacement}
    assert collected(api, gc_server, before) == ({"child", "grandchild"}, set())


def test_a_dependent_goes_only_when_none_of_its_owners_is_alive(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("a")
    g.add("b")
    g.add("shared", "a", "b", blocking=("b",))
    api.begin(g.objects)
    state = api.act(Delete(g.key("a")))
    assert names(state) == {"b", "shared"}
    assert state[g.key("shared")].owners == (OwnerRef("uid-b", True),)  # the gone owner's reference removed
    assert names(api.act(Delete(g.key("b")))) == set()
    assert collected(api, gc_server, before) == ({"shared"}, {"shared"})


def test_a_dependent_written_with_owners_that_never_existed(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("alive")
    g.add("orphaned", "never-existed")
    g.add("half", "never-existed", "alive")
    g.add("plain", "never-existed", labelled=False)
    state = api.begin(g.objects)
    assert names(state) == {"alive", "half", "plain"}
    assert state[g.key("half")].owners == (OwnerRef("uid-alive"),)
    assert state[g.key("plain")].owners == (OwnerRef("uid-never-existed"),)  # not the collector's
    assert collected(api, gc_server, before) == ({"orphaned"}, {"half"})


# --- foreground ---------------------------------------------------------------------------------------------------


def test_foreground_deletes_every_dependent_and_waits_for_the_blocking_ones(
    api: Apiserver, gc_server: ServerProcess
) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner")
    g.add("held", "owner", blocking=("owner",), finalizers=(KEEP,))
    g.add("plain", "owner", labelled=False)
    g.add("parent", "owner", blocking=("owner",))
    g.add("grandchild", "parent", blocking=("parent",))
    g.add("unrelated")
    api.begin(g.objects)

    state = api.act(Delete(g.key("owner"), "foreground"))
    assert names(state) == {"owner", "held", "unrelated"}
    assert state[g.key("owner")].finalizers == (FOREGROUND,) and state[g.key("owner")].deleting
    assert state[g.key("held")].finalizers == (KEEP,) and state[g.key("held")].deleting
    assert names(api.act(RemoveFinalizer(g.key("held"), KEEP))) == {"unrelated"}
    # The parent has dependents: deleted in the foreground too (marked, its finalizer added, then deleted).
    assert collected(api, gc_server, before) == ({"plain", "parent", "grandchild", "owner"}, {"held", "parent"})


def test_foreground_keeps_the_owners_other_finalizers(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner", finalizers=(KEEP,))
    g.add("child", "owner", blocking=("owner",))
    api.begin(g.objects)
    state = api.act(Delete(g.key("owner"), "foreground"))
    assert names(state) == {"owner"}
    assert state[g.key("owner")].finalizers == (KEEP,) and state[g.key("owner")].deleting
    assert api.act(RemoveFinalizer(g.key("owner"), KEEP)) == {}
    assert collected(api, gc_server, before) == ({"child"}, {"owner"})


def test_an_unlabelled_owner_deleted_in_the_foreground_loses_its_labelled_dependents(
    api: Apiserver, gc_server: ServerProcess
) -> None:
    # An owner being deleted in the foreground is no live owner of a labelled dependent; the owner itself, its
    # finalizer and its unlabelled dependents are left to kube-controller-manager.
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner", labelled=False)
    g.add("labelled", "owner", blocking=("owner",))
    g.add("plain", "owner", labelled=False, blocking=("owner",))
    api.begin(g.objects)
    state = api.act(Delete(g.key("owner"), "foreground"))
    assert names(state) == {"owner", "plain"}
    assert state[g.key("owner")].finalizers == (FOREGROUND,)
    assert collected(api, gc_server, before) == ({"labelled"}, set())


def test_a_dependent_loses_the_reference_to_an_owner_deleted_in_the_foreground_while_another_is_alive(
    api: Apiserver, gc_server: ServerProcess
) -> None:
    # The model's waves: the plain dependent sees `owner` waiting for its dependents while `child` is still a live
    # owner, and loses the reference to `owner`; `child` is deleted in the foreground only in the next wave (it first
    # loses its reference to the gone uid), and the plain dependent then goes (marked: it has a finalizer).
    if not api.one_backend:
        pytest.skip("the three objects must be written in one txn, which a topology spreading them refuses")
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner", "gone", finalizers=(FOREGROUND,))  # its own finalizer: deleted in the foreground at once
    g.add("child", "owner", "gone")
    g.add("plain", "owner", "child", labelled=False, finalizers=(KEEP,))
    state = api.begin(g.objects)
    assert state == {
        g.key("plain"): Obj("uid-plain", g.key("plain"), {"app": "gc"}, (OwnerRef("uid-child"),), (KEEP,), True)
    }
    assert collected(api, gc_server, before)[0] == {"owner", "child"}


# --- orphan -------------------------------------------------------------------------------------------------------


def test_orphan_removes_the_owner_from_every_dependent(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner")
    g.add("other")
    g.add("child", "owner", blocking=("owner",))
    g.add("plain", "owner", labelled=False)
    g.add("shared", "owner", "other")
    g.add("grandchild", "child")
    api.begin(g.objects)
    state = api.act(Delete(g.key("owner"), "orphan"))
    assert names(state) == {"other", "child", "plain", "shared", "grandchild"}
    assert [state[g.key(n)].owners for n in ("child", "plain", "shared")] == [(), (), (OwnerRef("uid-other"),)]
    assert collected(api, gc_server, before) == ({"owner"}, {"child", "plain", "shared"})


def test_orphan_keeps_the_owners_other_finalizers(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    g.add("owner", finalizers=(KEEP,))
    g.add("child", "owner")
    api.begin(g.objects)
    state = api.act(Delete(g.key("owner"), "orphan"))
    assert state[g.key("owner")].finalizers == (KEEP,) and state[g.key("owner")].deleting
    assert state[g.key("child")].owners == ()
    assert names(api.act(RemoveFinalizer(g.key("owner"), KEEP))) == {"child"}
    assert collected(api, gc_server, before) == (set(), {"owner", "child"})


# --- not the collector's ------------------------------------------------------------------------------------------


def test_pairs_where_neither_is_labelled_are_left_alone(api: Apiserver, gc_server: ServerProcess) -> None:
    before = metric(gc_server, COLLECTED)
    g = Graph()
    for owner in ("background", "foreground", "orphan"):
        g.add(owner, labelled=False)
        g.add(f"{owner}-child", owner, labelled=False, blocking=(owner,))
    api.begin(g.objects)
    api.act(Delete(g.key("background")))
    api.act(Delete(g.key("foreground"), "foreground"))
    state = api.act(Delete(g.key("orphan"), "orphan"))
    assert names(state) == {"foreground", "orphan", "background-child", "foreground-child", "orphan-child"}
    assert state[g.key("foreground")].finalizers == (FOREGROUND,)
    assert state[g.key("orphan")].finalizers == (ORPHAN,)
    assert [state[g.key(f"{owner}-child")] for owner in ("background", "foreground", "orphan")] == g.objects[1::2]
    assert collected(api, gc_server, before) == (set(), set())


@pytest.mark.parametrize("store", list(STORE_ENDPOINTS))
def test_storage_gc_false_collects_nothing(store: str, tmp_path: Path) -> None:
    server = start_store(store, tmp_path, "--compaction-interval", "0", "--storage-gc=false")
    try:
        with Etcd(server.channel()) as client:
            api = Apiserver(client, new_case(), "json", one_backend=one_backend(server))
            g = Graph()
            owner = g.add("owner")
            g.add("child", "owner")
            g.add("orphaned", "never-existed")
            waiting = g.add("waiting")
            g.add("blocker", "waiting", blocking=("waiting",))
            api.create(g.objects)
            api.delete(owner.key)
            api.delete(waiting.key, "foreground")
            expected = {obj.key: obj for obj in g.objects if obj is not owner}
            expected[waiting.key] = Obj(waiting.uid, waiting.key, waiting.labels, (), (FOREGROUND,), True)
            api.converge(expected, settle=1.0)  # long enough for a collector to act
            assert api.collector_events() == []
    finally:
        server.stop()

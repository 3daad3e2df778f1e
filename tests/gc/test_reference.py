"""The garbage collection model itself, on hand-made graphs, and the graphs the randomized tests draw."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import Phase, find, given, settings

from tests.gc._graphs import Scenario, ownership_graphs, scenarios
from tests.gc._reference import (
    FOREGROUND,
    LABEL,
    ORPHAN,
    Action,
    Delete,
    Obj,
    OwnerRef,
    Put,
    RemoveFinalizer,
    State,
    run,
    step,
)

KEEP = "example.com/keep"


def key(name: str) -> str:
    return f"/registry/configmaps/default/{name}"


def obj(
    name: str,
    *owners: str,
    labelled: bool = True,
    blocking: Sequence[str] = (),
    finalizers: tuple[str, ...] = (),
) -> Obj:
    """An object named `name` owned by `owners` (those in `blocking` with blockOwnerDeletion)."""
    labels = {LABEL: "true"} if labelled else {"app": "x"}
    refs = tuple(OwnerRef(f"uid-{owner}", owner in blocking) for owner in owners)
    return Obj(f"uid-{name}", key(name), labels, refs, finalizers)


def names(state: State) -> set[str]:
    return {k.rsplit("/", 1)[1] for k in state}


def final(objects: Sequence[Obj], *actions: Action) -> State:
    return run(objects, actions)


# --- background -------------------------------------------------------------------------------------------------


def test_deleting_an_owner_collects_its_labelled_dependents_and_theirs() -> None:
    graph = [obj("owner"), obj("child", "owner"), obj("grandchild", "child"), obj("other")]
    assert names(final(graph, Delete(key("owner")))) == {"other"}


def test_an_owner_gone_before_the_collector_looks_is_gone_all_the_same() -> None:
    assert names(final([obj("orphaned", "never-existed"), obj("root")])) == {"root"}


def test_the_owner_need_not_be_labelled_but_the_dependent_must() -> None:
    graph = [obj("owner", labelled=False), obj("labelled", "owner"), obj("plain", "owner", labelled=False)]
    state = final(graph, Delete(key("owner")))
    assert names(state) == {"plain"}
    assert state[key("plain")] == graph[2]  # neither labelled: left alone, its dangling reference too


def test_a_key_that_now_holds_another_object_means_the_owner_is_gone() -> None:
    graph = [obj("owner"), obj("child", "owner")]
    replacement = Obj("uid-owner-2", key("owner"), {LABEL: ""})
    state = final(graph, Put(replacement))
    assert state == {key("owner"): replacement}
    unchanged = Obj("uid-owner", key("owner"), {LABEL: "", "new": "label"})  # the same object, updated
    assert names(final(graph, Put(unchanged))) == {"owner", "child"}


def test_a_dependent_goes_only_when_none_of_its_owners_is_alive() -> None:
    graph = [obj("a"), obj("b"), obj("shared", "a", "b")]
    state = final(graph, Delete(key("a")))
    assert names(state) == {"b", "shared"}
    # The collector drops the reference to the gone owner (attemptToDeleteItem, solid and dangling owners).
    assert state[key("shared")].owners == (OwnerRef("uid-b"),)
    assert names(final(graph, Delete(key("a")), Delete(key("b")))) == set()


def test_a_dependent_with_finalizers_is_marked_and_goes_with_them() -> None:
    graph = [obj("owner"), obj("child", "owner", finalizers=(KEEP, "example.com/two")), obj("grandchild", "child")]
    state = final(graph, Delete(key("owner")))
    assert names(state) == {"child", "grandchild"}  # the grandchild's owner still exists
    assert state[key("child")] == Obj(
        "uid-child", key("child"), {LABEL: "true"}, (OwnerRef("uid-owner"),), (KEEP, "example.com/two"), True
    )
    state = final(graph, Delete(key("owner")), RemoveFinalizer(key("child"), KEEP))
    assert state[key("child")].finalizers == ("example.com/two",)
    gone = final(
        graph,
        Delete(key("owner")),
        RemoveFinalizer(key("child"), KEEP),
        RemoveFinalizer(key("child"), "example.com/two"),
    )
    assert gone == {}


def test_an_owner_with_finalizers_is_alive_until_they_are_gone() -> None:
    graph = [obj("owner", finalizers=(KEEP,)), obj("child", "owner")]
    state = final(graph, Delete(key("owner")))
    assert names(state) == {"owner", "child"}
    assert state[key("owner")].deleting
    assert final(graph, Delete(key("owner")), RemoveFinalizer(key("owner"), KEEP)) == {}


def test_a_dependent_with_its_own_orphan_finalizer_orphans_its_dependents() -> None:
    graph = [obj("owner"), obj("child", "owner", finalizers=(ORPHAN,)), obj("grandchild", "child")]
    state = final(graph, Delete(key("owner")))
    assert names(state) == {"grandchild"}  # the child is deleted with the orphan policy its finalizer asks for
    assert state[key("grandchild")].owners == ()


def test_a_grandchild_also_owned_by_the_deleted_owner_goes_with_its_parent() -> None:
    graph = [obj("owner"), obj("child", "owner"), obj("grandchild", "child", "owner")]
    assert final(graph, Delete(key("owner"))) == {}


def test_orphaning_owners_that_own_each_other() -> None:
    graph = [obj("a", finalizers=(ORPHAN,)), obj("b", "a", finalizers=(ORPHAN,)), obj("c", "a", "b")]
    state = final(graph, Delete(key("a"), "orphan"), Delete(key("b"), "orphan"))
    assert state == {key("c"): Obj("uid-c", key("c"), {LABEL: "true"})}


# --- foreground ---------------------------------------------------------------------------------------------------


def foreground_graph() -> list[Obj]:
    return [
        obj("owner"),
        obj("held", "owner", blocking=["owner"], finalizers=(KEEP,)),
        obj("plain", "owner", labelled=False),
        obj("parent", "owner", blocking=["owner"]),
        obj("grandchild", "parent", blocking=["parent"]),
        obj("unrelated"),
    ]


def test_foreground_deletes_every_dependent_and_waits_for_the_blocking_ones() -> None:
    state = final(foreground_graph(), Delete(key("owner"), "foreground"))
    assert names(state) == {"owner", "held", "unrelated"}
    assert state[key("owner")].finalizers == (FOREGROUND,) and state[key("owner")].deleting
    assert state[key("held")].deleting and state[key("held")].finalizers == (KEEP,)
    state = final(foreground_graph(), Delete(key("owner"), "foreground"), RemoveFinalizer(key("held"), KEEP))
    assert names(state) == {"unrelated"}


def test_foreground_does_not_wait_for_dependents_that_do_not_block() -> None:
    graph = [obj("owner"), obj("held", "owner", finalizers=(KEEP,))]
    state = final(graph, Delete(key("owner"), "foreground"))
    assert names(state) == {"held"}
    assert state[key("held")].deleting


def test_foreground_keeps_the_owners_other_finalizers() -> None:
    graph = [obj("owner", finalizers=(KEEP,)), obj("child", "owner", blocking=["owner"])]
    state = final(graph, Delete(key("owner"), "foreground"))
    assert names(state) == {"owner"}
    assert state[key("owner")].finalizers == (KEEP,) and state[key("owner")].deleting


def test_foreground_cascades_through_labelled_dependents() -> None:
    graph = [
        obj("owner"),
        obj("child", "owner", blocking=["owner"]),
        obj("grandchild", "child", blocking=["child"], finalizers=(KEEP,)),
    ]
    state = final(graph, Delete(key("owner"), "foreground"))
    # The child is deleted in the foreground: it waits for the grandchild, and the owner for the child.
    assert names(state) == {"owner", "child", "grandchild"}
    assert [state[key(n)].finalizers for n in ("owner", "child", "grandchild")] == [
        (FOREGROUND,),
        (FOREGROUND,),
        (KEEP,),
    ]
    assert final(graph, Delete(key("owner"), "foreground"), RemoveFinalizer(key("grandchild"), KEEP)) == {}


def test_foreground_deletes_an_unlabelled_dependent_in_the_background() -> None:
    graph = [
        obj("owner"),
        obj("middle", "owner", labelled=False, blocking=["owner"]),
        obj("labelled-leaf", "middle"),
        obj("plain-leaf", "middle", labelled=False),
    ]
    state = final(graph, Delete(key("owner"), "foreground"))
    assert names(state) == {"plain-leaf"}


def test_a_dependent_with_another_live_owner_survives_a_foreground_deletion() -> None:
    graph = [obj("owner"), obj("other"), obj("shared", "owner", "other", blocking=["owner"])]
    state = final(graph, Delete(key("owner"), "foreground"))
    assert names(state) == {"other", "shared"}
    assert state[key("shared")].owners == (OwnerRef("uid-other"),)


def test_an_unlabelled_owner_deleted_in_the_foreground_is_not_the_collectors() -> None:
    graph = [
        obj("owner", labelled=False),
        obj("labelled", "owner", blocking=["owner"]),
        obj("plain", "owner", labelled=False, blocking=["owner"]),
    ]
    state = final(graph, Delete(key("owner"), "foreground"))
    # Its labelled dependent is: an owner being deleted in the foreground is no live owner. Its finalizer and its
    # unlabelled dependent are left to Kubernetes' own collector.
    assert names(state) == {"owner", "plain"}
    assert state[key("owner")].finalizers == (FOREGROUND,)
    assert state[key("plain")] == graph[2]


def test_an_owner_written_as_deleting_in_the_foreground_is_collected() -> None:
    graph = [obj("owner"), obj("child", "owner", blocking=["owner"])]
    written = Obj("uid-owner", key("owner"), {LABEL: "x"}, (), (FOREGROUND,), True)
    assert final(graph, Put(written)) == {}


# --- orphan -------------------------------------------------------------------------------------------------------


def test_orphan_removes_the_owner_from_every_dependent() -> None:
    graph = [
        obj("owner"),
        obj("other"),
        obj("child", "owner", blocking=["owner"]),
        obj("plain", "owner", labelled=False),
        obj("shared", "owner", "other"),
        obj("grandchild", "child"),
    ]
    state = final(graph, Delete(key("owner"), "orphan"))
    assert names(state) == {"other", "child", "plain", "shared", "grandchild"}
    assert [state[key(n)].owners for n in ("child", "plain", "shared")] == [(), (), (OwnerRef("uid-other"),)]
    assert state[key("grandchild")] == graph[5]


def test_orphan_keeps_the_owners_other_finalizers() -> None:
    graph = [obj("owner", finalizers=(KEEP,)), obj("child", "owner")]
    state = final(graph, Delete(key("owner"), "orphan"))
    assert state[key("owner")].finalizers == (KEEP,) and state[key("owner")].deleting
    assert state[key("child")].owners == ()


def test_an_unlabelled_owner_is_not_orphaned_by_the_collector() -> None:
    graph = [obj("owner", labelled=False), obj("child", "owner")]
    state = final(graph, Delete(key("owner"), "orphan"))
    assert state[key("owner")].finalizers == (ORPHAN,)
    assert state[key("child")] == graph[1]


# --- the apiserver's part -------------------------------------------------------------------------------------------


def test_a_delete_replaces_the_collectors_finalizers_with_the_policys() -> None:
    graph = [obj("owner", labelled=False, finalizers=(ORPHAN, KEEP))]
    assert final(graph, Delete(key("owner"), "foreground"))[key("owner")].finalizers == (KEEP, FOREGROUND)
    assert final(graph, Delete(key("owner"), "background"))[key("owner")].finalizers == (KEEP,)
    assert final(graph, Delete(key("owner"), "orphan"))[key("owner")].finalizers == (ORPHAN, KEEP)


def test_actions_on_missing_objects_change_nothing() -> None:
    graph = [obj("a")]
    assert final(graph, Delete(key("missing")), RemoveFinalizer(key("missing"), KEEP)) == {key("a"): graph[0]}


def test_a_finalizer_removed_from_a_live_object_does_not_delete_it() -> None:
    graph = [obj("a", finalizers=(KEEP, KEEP, "x"))]
    assert final(graph, RemoveFinalizer(key("a"), KEEP))[key("a")].finalizers == ("x",)


def test_writing_an_object_being_deleted_without_finalizers_is_refused() -> None:
    with pytest.raises(ValueError, match="without finalizers"):
        final([Obj("u", key("a"), deleting=True)])


# --- generated graphs ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(ownership_graphs())
def test_generated_graphs_are_dags(objects: tuple[Obj, ...]) -> None:
    uids = [o.uid for o in objects]
    assert len(set(uids)) == len(uids) and len({o.key for o in objects}) == len(objects)
    position = {uid: i for i, uid in enumerate(uids)}
    for index, o in enumerate(objects):
        assert len({ref.uid for ref in o.owners}) == len(o.owners)
        # Owners come before their dependents, or are gone: no cycle.
        assert all(position.get(ref.uid, -1) < index for ref in o.owners)
        assert not o.deleting


def test_generated_graphs_have_the_shapes_the_collector_must_handle() -> None:
    def shared(objects: tuple[Obj, ...]) -> bool:
        live = {o.uid for o in objects}
        return any(sum(ref.uid in live for ref in o.owners) >= 2 for o in objects)

    def grandchildren(objects: tuple[Obj, ...]) -> bool:
        by_uid = {o.uid: o for o in objects}
        return any(by_uid[r.uid].owners for o in objects for r in o.owners if r.uid in by_uid)

    settings_ = settings(database=None, max_examples=2000, phases=[Phase.generate])  # found, not shrunk
    assert find(ownership_graphs(), shared, settings=settings_)
    assert find(ownership_graphs(), grandchildren, settings=settings_)
    assert find(
        ownership_graphs(), lambda g: any(r.block_owner_deletion for o in g for r in o.owners), settings=settings_
    )
    assert find(ownership_graphs(), lambda g: any(o.finalizers and not o.labelled for o in g), settings=settings_)
    assert find(scenarios(), lambda s: any(isinstance(a, Put) for a in s.actions), settings=settings_)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_model_converges_to_a_state_the_rules_leave_alone(scenario: Scenario) -> None:
    state = run(scenario.objects, scenario.actions)
    assert not step(dict(state))  # a fixpoint
    by_uid = {o.uid: o for o in state.values()}
    for o in state.values():
        alive = [ref for ref in o.owners if ref.uid in by_uid]
        if o.labelled and o.owners and not o.deleting:
            assert alive, f"{o.key}: every owner is gone yet it is not being deleted"
            assert len(alive) == len(o.owners), f"{o.key}: keeps a reference to a gone owner beside a live one"
        if o.labelled and o.deleting:
            assert ORPHAN not in o.finalizers
            if FOREGROUND in o.finalizers:  # waits only for a dependent that blocks it, itself being deleted
                blockers = [
                    d for d in state.values() if any(r.uid == o.uid and r.block_owner_deletion for r in d.owners)
                ]
                assert blockers and all(d.deleting for d in blockers)
        originals = {x.uid: x for x in scenario.objects}
        if o.uid in originals and not o.deleting:
            assert o.finalizers == originals[o.uid].finalizers or any(
                isinstance(a, RemoveFinalizer) and a.key == o.key for a in scenario.actions
            )

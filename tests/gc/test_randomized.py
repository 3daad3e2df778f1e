"""Generated ownership graphs and client actions (tests/gc/_graphs.py) against the server's collector, compared
with the model after the objects are created and after each action: the stored objects must converge to the
model's and stay so; every write of the collector is checked as in test_collector.

The objects are spread over the places of tests/gc/_objects.py (on the multi:// topology, over every backend),
in JSON or protobuf. Examples are derandomized, so a run is reproducible; no shrinking: each step is several
round trips and a wait, and the failing example is printed as generated.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests._client import Etcd
from tests._servers import ServerProcess
from tests.gc._apiserver import Apiserver, one_backend
from tests.gc._graphs import Scenario, scenarios
from tests.gc._objects import ENCODINGS, PLACES, Encoding, new_case
from tests.gc._reference import Action, Delete, Obj, Put, RemoveFinalizer


def place(key: str) -> str:
    """A generated key (`.../object-<index>`) in the place its index picks: neighbours live in different ones."""
    name = key.rsplit("/", 1)[1]
    return PLACES[int(name.rsplit("-", 1)[1]) % len(PLACES)] + name


def placed(scenario: Scenario) -> Scenario:
    def obj(o: Obj) -> Obj:
        return dataclasses.replace(o, key=place(o.key))

    def action(a: Action) -> Action:
        return Put(obj(a.obj)) if isinstance(a, Put) else dataclasses.replace(a, key=place(a.key))

    return Scenario(tuple(map(obj, scenario.objects)), tuple(map(action, scenario.actions)))


def check(client: Etcd, server: ServerProcess, scenario: Scenario, encoding: Encoding) -> None:
    scenario = placed(scenario)
    api = Apiserver(client, new_case(), encoding, one_backend=one_backend(server))
    api.begin(scenario.objects)
    for action in scenario.actions:
        api.act(action)
    api.collector_events()


SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)


@pytest.mark.parametrize("gc_server", ["sqlite"], indirect=True)
@settings(SETTINGS, max_examples=30)
@given(scenario=scenarios(), encoding=st.sampled_from(ENCODINGS))
def test_sqlite(gc_server: ServerProcess, gc_client: Etcd, scenario: Scenario, encoding: Encoding) -> None:
    check(gc_client, gc_server, scenario, encoding)


@pytest.mark.parametrize("gc_server", ["postgres", "mysql", "etcd", "multi"], indirect=True)
@settings(SETTINGS, max_examples=10)
@given(scenario=scenarios(), encoding=st.sampled_from(ENCODINGS))
def test_other_stores(gc_server: ServerProcess, gc_client: Etcd, scenario: Scenario, encoding: Encoding) -> None:
    check(gc_client, gc_server, scenario, encoding)


def test_placed_scenarios_keep_their_shape() -> None:
    scenario = Scenario(
        (Obj("uid-0", "/registry/configmaps/default/object-0"), Obj("uid-7", "/registry/configmaps/default/object-7")),
        (
            Delete("/registry/configmaps/default/object-7"),
            RemoveFinalizer("/registry/configmaps/default/object-0", "f"),
        ),
    )
    assert placed(scenario) == Scenario(
        (Obj("uid-0", PLACES[0] + "object-0"), Obj("uid-7", PLACES[2] + "object-7")),
        (Delete(PLACES[2] + "object-7"), RemoveFinalizer(PLACES[0] + "object-0", "f")),
    )

"""Watch with label and field selectors, on every store.

An event is delivered when the key's new version or its previous version matches: objects entering the selection,
staying in it and leaving it are seen (so a client's cache drops what left), deletes of matching objects too, and
changes to objects that never matched are not. History replayed from a past start_revision is filtered the same
way, progress notifications still come while every event is filtered out, and a selector that does not parse
refuses that one watch, not the stream. Last, the same rule on generated histories: watches with generated
selectors, live or replaying, against the reference model (tests/selectors/_reference.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kubefabric.etcdpb import kv_pb2
from tests._client import Etcd, prefix_end
from tests.conformance._support import RESPONSE_TIMEOUT, WatchStream
from tests.selectors._generate import PREFIXES, populate, selectors
from tests.selectors._keyspace import Keyspace, Stored
from tests.selectors._reference import Encoding, Meta, Pod, Selectable, Selector, encrypted, parse_selector

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


@dataclass(frozen=True)
class Write:
    name: str
    value: bytes | None  # None deletes the key
    selectable: Selectable | None = None


def pod_write(
    name: str, namespace: str, app: str, node: str = "", phase: str = "", encoding: Encoding = "json"
) -> Write:
    pod = Pod(Meta(name, namespace, {"app": app}, annotations={"app": "web"}), node_name=node, phase=phase)
    return Write(name, pod.encode(encoding), pod.selectable())


def script(namespace: str) -> list[Write]:
    """The story every watch test tells; comments say what it is to the selection "app=web"."""
    return [
        pod_write("p1", namespace, "web"),  # 1 enters
        pod_write("p2", namespace, "db", node="node1"),  # 2 never matched
        pod_write("p1", namespace, "web", node="node1", phase="Running"),  # 3 stays
        pod_write("p1", namespace, "db", node="node1", phase="Running"),  # 4 leaves
        pod_write("p1", namespace, "cache", node="node10"),  # 5 changes outside
        pod_write("p3", namespace, "web", node="node10", encoding="protobuf"),  # 6 enters
        Write("p4", encrypted(b"\x10sealed")),  # 7 undecodable: in every selection
        Write("p3", None),  # 8 matching, deleted
        Write("p1", None),  # 9 not matching, deleted
        Write("p2", None),  # 10 not matching, deleted
        Write("p4", None),  # 11 undecodable, deleted
    ]


# Selections, with the steps of the script each must see, worked out by hand from the rule.
SELECTIONS = {
    "everything": ("", "", list(range(1, 12))),
    "web": ("app=web", "", [1, 3, 4, 6, 7, 8, 11]),
    "on node1": ("", "spec.nodeName=node1", [2, 3, 4, 5, 7, 10, 11]),
    "running web": ("app in (web)", "status.phase=Running", [3, 4, 7, 11]),
}


@dataclass(frozen=True)
class Happened:
    step: int
    type: int
    key: bytes
    value: bytes
    revision: int
    previous: Write | None


def play(client: Etcd, namespace: str, writes: list[Write]) -> list[Happened]:
    prefix = f"/registry/pods/{namespace}/".encode()
    latest: dict[str, Write] = {}
    happened = []
    for step, write in enumerate(writes, start=1):
        key = prefix + write.name.encode()
        if write.value is None:
            revision = client.delete(key).header.revision
        else:
            revision = client.put(key, write.value).header.revision
        event_type = DELETE if write.value is None else PUT
        happened.append(Happened(step, event_type, key, write.value or b"", revision, latest.get(write.name)))
        latest[write.name] = write
    return happened


def delivered(label_selector: str, field_selector: str, happened: list[Happened], writes: list[Write]) -> list[int]:
    """The steps the reference rule delivers: the new or the previous version matches."""
    selector = parse_selector(label_selector, field_selector)
    steps = []
    for event in happened:
        new = writes[event.step - 1]
        if (new.value is not None and selector.matches(new.selectable)) or (
            event.previous is not None and selector.matches(event.previous.selectable)
        ):
            steps.append(event.step)
    return steps


def summary(event: kv_pb2.Event) -> tuple[int, bytes, bytes, int]:
    return (event.type, event.kv.key, event.kv.value, event.kv.mod_revision)


def expected_summary(event: Happened) -> tuple[int, bytes, bytes, int]:
    return (event.type, event.key, event.value, event.revision)


def test_the_steps_worked_out_by_hand_follow_the_rule() -> None:
    writes = script("any")
    latest: dict[str, Write] = {}
    happened = []
    for step, write in enumerate(writes, start=1):
        happened.append(Happened(step, PUT, b"", b"", step, latest.get(write.name)))
        latest[write.name] = write
    for label_selector, field_selector, steps in SELECTIONS.values():
        assert delivered(label_selector, field_selector, happened, writes) == steps


def test_events_enter_stay_and_leave_the_selection(store_client: Etcd) -> None:
    namespace = "watch-live"
    prefix = f"/registry/pods/{namespace}/".encode()
    writes = script(namespace)
    with WatchStream(store_client) as stream:
        watch_ids = {
            name: stream.create(prefix, prefix_end(prefix), labelSelector=labels, fieldSelector=fields, prev_kv=True)
            for name, (labels, fields, _) in SELECTIONS.items()
        }
        happened = play(store_client, namespace, writes)
        grouped = stream.events_by_watch(sum(len(steps) for _, _, steps in SELECTIONS.values()))
        stream.assert_quiet()
    for name, (_, _, steps) in SELECTIONS.items():
        events = grouped.get(watch_ids[name], [])
        assert [summary(e) for e in events] == [expected_summary(happened[s - 1]) for s in steps], name
        # prev_kv is the key's previous value, whichever side of the selection it was on.
        previous_values = [happened[s - 1].previous for s in steps]
        assert [e.prev_kv.value for e in events] == [p.value if p else b"" for p in previous_values], name


@pytest.mark.parametrize("from_step", [1, 5])
def test_history_replay_is_filtered_the_same_way(store_client: Etcd, from_step: int) -> None:
    """Replays from the first write, and from one whose previous versions lie before the replay starts."""
    namespace = f"watch-replay-{from_step}"
    prefix = f"/registry/pods/{namespace}/".encode()
    writes = script(namespace)
    happened = play(store_client, namespace, writes)
    start_revision = happened[from_step - 1].revision
    after = pod_write("late", namespace, "web", node="node1", phase="Running")  # in every selection
    assert after.value is not None
    replayed = {name: [s for s in steps if s >= from_step] for name, (_, _, steps) in SELECTIONS.items()}
    # A stream each: replayed events may come before the next create's confirmation on a shared stream.
    with contextlib.ExitStack() as streams:
        watches = {}
        for name, (labels, fields, _) in SELECTIONS.items():
            stream = streams.enter_context(WatchStream(store_client))
            watch_id = stream.create(
                prefix, prefix_end(prefix), start_revision=start_revision, labelSelector=labels, fieldSelector=fields
            )
            watches[name] = (stream, watch_id)
        live_revision = store_client.put(prefix + b"late", after.value).header.revision
        for name, steps in replayed.items():
            stream, watch_id = watches[name]
            expected = [expected_summary(happened[s - 1]) for s in steps]
            expected.append((PUT, prefix + b"late", after.value, live_revision))
            assert [summary(e) for e in stream.events(len(expected), watch_id)] == expected, name
            stream.assert_quiet(0.1)


def test_progress_is_reported_while_every_event_is_filtered_out(store_client: Etcd) -> None:
    namespace = "watch-progress"
    prefix = f"/registry/pods/{namespace}/".encode()
    with WatchStream(store_client) as stream:
        watch_id = stream.create(prefix, prefix_end(prefix), labelSelector="app=web", progress_notify=True)
        for name in ("a", "b", "c"):
            write = pod_write(name, namespace, "db")
            assert write.value is not None
            current = store_client.put(prefix + name.encode(), write.value).header.revision
        stream.request_progress()
        # The requested answer (watch ID -1) and a periodic one for this watch, in either order; no events.
        awaited = {-1, watch_id}
        deadline = time.monotonic() + 10 * RESPONSE_TIMEOUT
        while awaited:
            response = stream.next(timeout=max(deadline - time.monotonic(), 0.1))
            assert not response.events and not response.canceled, response
            if response.watch_id in awaited and response.header.revision == current:
                awaited.discard(response.watch_id)


def test_unparsable_selector_refuses_that_watch_only(store_client: Etcd) -> None:
    """etcd refuses a watch it cannot serve with one response, created and canceled at once, its reason in
    cancel_reason, and keeps the stream: kube-apiserver multiplexes many watches on one stream, so a gRPC error
    ending the stream would take every other watch down with the bad one."""
    namespace = "watch-refusal"
    prefix = f"/registry/pods/{namespace}/".encode()
    with WatchStream(store_client) as stream:
        kept = stream.create(prefix, prefix_end(prefix), labelSelector="app=web")
        for labels, fields, named in [("app in (web", "", "app in (web"), ("", "spec.nodeName", "spec.nodeName")]:
            stream.send_create(prefix, prefix_end(prefix), labelSelector=labels, fieldSelector=fields)
            refusal = stream.next()
            assert (refusal.created, refusal.canceled, list(refusal.events)) == (True, True, []), refusal
            assert named in refusal.cancel_reason, refusal
        added = stream.create(prefix, prefix_end(prefix), fieldSelector="spec.nodeName=node1")
        write = pod_write("p", namespace, "web", node="node1")
        assert write.value is not None
        revision = store_client.put(prefix + b"p", write.value).header.revision
        grouped = stream.events_by_watch(2)
        assert {watch_id: [e.kv.mod_revision for e in events] for watch_id, events in grouped.items()} == {
            kept: [revision],
            added: [revision],
        }


# --- the same rule on generated histories ----------------------------------------------------------------------

WATCH_SETTINGS = settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each step is a round trip
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)


@dataclass(frozen=True)
class Version:
    """A change a watch owes its client, with the version before it."""

    revision: int
    key: bytes
    stored: Stored | None  # None: a delete
    previous: Stored | None

    def summary(self) -> tuple[int, bytes, bytes, int, bytes]:
        value = self.stored.value if self.stored else b""
        return (
            DELETE if self.stored is None else PUT,
            self.key,
            value,
            self.revision,
            self.previous.value if self.previous else b"",
        )


def owed_events(keyspace: Keyspace, selector: Selector, start: bytes, end: bytes, first: int) -> list[Version]:
    """Every change in [start, end) from revision `first` on whose new or previous version matches."""
    latest: dict[bytes, Stored] = {}
    owed = []
    for revision, key, stored in keyspace.changes:
        previous = latest.pop(key, None)
        if stored is not None:
            latest[key] = stored
        in_range = start <= key < end
        new_matches = stored is not None and selector.matches(stored.selectable)
        if revision >= first and in_range and (new_matches or (previous and selector.matches(previous.selectable))):
            owed.append(Version(revision, key, stored, previous))
    return owed


def test_watches_deliver_what_kubernetes_would_select(store_client: Etcd) -> None:
    """Watches with generated selectors over generated objects, from now or replaying from a past revision."""
    keyspace = Keyspace(store_client)

    @WATCH_SETTINGS
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        population = populate(keyspace, data.draw)
        with contextlib.ExitStack() as streams:
            watches = []
            for _ in range(data.draw(st.integers(3, 6), label="watches")):
                label_selector, field_selector = data.draw(selectors(), label="selector")
                start = data.draw(st.sampled_from(PREFIXES), label="prefix")  # as kube-apiserver watches
                end = prefix_end(start)
                replay_from = data.draw(st.integers(0, len(keyspace.changes)), label="replay from change")
                start_revision = keyspace.revision_of(replay_from) if replay_from else 0
                stream = streams.enter_context(WatchStream(store_client))
                watch_id = stream.create(
                    start,
                    end,
                    start_revision=start_revision,
                    prev_kv=True,
                    labelSelector=label_selector,
                    fieldSelector=field_selector,
                )
                first = start_revision or keyspace.revision + 1
                watches.append((stream, watch_id, label_selector, field_selector, start, end, first))
            for _ in range(data.draw(st.integers(4, 16), label="changes while watched")):
                population.change(data.draw)
            for stream, watch_id, label_selector, field_selector, start, end, first in watches:
                selector = parse_selector(label_selector, field_selector)
                owed = [v.summary() for v in owed_events(keyspace, selector, start, end, first)]
                events = stream.events(len(owed), watch_id) if owed else []
                got = [(*summary(e), e.prev_kv.value) for e in events]
                assert got == owed, (
                    f"labelSelector={label_selector!r} fieldSelector={field_selector!r} [{start!r}, {end!r}) from {first}"
                )
                stream.assert_quiet(0.1)

    example()

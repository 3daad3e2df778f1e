"""kube-apiserver's part in garbage collection, played over the etcd API against a kubefabric server, and the checks
of what the server's collector did: the stored objects equal to the model's, its writes as history shows them.

The actions are those of `_reference.apply`, carried out as registry.Store does: a read, then a write conditional
on the version read (a txn comparing mod_revision), read again and retried when another writer (the collector)
came first; an update that would change nothing is not written.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import grpc

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, delete_op, mod_revision_is, put_op, range_op
from tests._servers import ServerProcess
from tests.gc._objects import CASE_LABEL, Case, Encoding, assert_only_metadata_edited, encode, read, with_finalizers
from tests.gc._reference import (
    LABEL,
    Action,
    Delete,
    Obj,
    Policy,
    Put,
    State,
    deletion_finalizers,
    run,
)

CONVERGE_TIMEOUT = 10.0
SETTLE = 0.3  # how long a converged state must stay as it is
POLL = 0.02
HISTORY_TIMEOUT = 30.0

_Change = Callable[[Obj], tuple[tuple[str, ...], bool]]
"""An object's new finalizers, and whether it is being deleted."""


class Apiserver:
    """kube-apiserver for one test case's objects (written in `encoding`) on one server."""

    def __init__(self, client: Etcd, case: Case, encoding: Encoding, *, one_backend: bool = True) -> None:
        self.client, self.case, self.encoding = client, case, encoding
        self.one_backend = one_backend  # False: a txn cannot write keys that live in different backends
        self.start = client.revision()
        self.keys: set[bytes] = set()  # every key the case wrote: the collector writes no other
        self.revisions: set[int] = set()  # the revisions of the case's own writes
        self.objects: tuple[Obj, ...] = ()
        self.actions: list[Action] = []

    # --- the scenario, checked against the model after each step -------------------------------------------------

    def begin(self, objects: Sequence[Obj]) -> State:
        """Create `objects`, then wait for the collector; the state the model expects.

        At once (one txn) when they can be; else one by one, as the model's Puts, waiting for the collector
        whenever the model has it act before the next one."""
        if self.one_backend:
            self.objects = tuple(objects)
            self.create(objects)
            return self._converged()
        for obj in objects:
            written = {**run(self.objects, self.actions), obj.key: obj}
            self.actions.append(Put(obj))
            self.put(obj)
            expected = run(self.objects, self.actions)
            if expected != written:
                self.converge(expected)
        return self._converged()

    def act(self, action: Action) -> State:
        """Carry out `action`, then wait for the collector; the state the model expects."""
        self.actions.append(action)
        self.apply(action)
        return self._converged()

    def _converged(self) -> State:
        expected = run(self.objects, self.actions)
        self.converge(expected)
        return expected

    # --- kube-apiserver's actions ---------------------------------------------------------------------------------

    def create(self, objects: Sequence[Obj]) -> None:
        """Write `objects`, in one txn when they can be."""
        if not self.one_backend:
            for obj in objects:
                self.put(obj)
            return
        self.keys |= {self._key(obj.key) for obj in objects}
        response = self.client.txn([], [put_op(self._key(obj.key), self._encode(obj)) for obj in objects])
        self.revisions.add(response.header.revision)

    def apply(self, action: Action) -> None:
        if isinstance(action, Put):
            self.put(action.obj)
        elif isinstance(action, Delete):
            self.delete(action.key, action.policy)
        else:
            self.remove_finalizer(action.key, action.finalizer)

    def put(self, obj: Obj) -> None:
        key = self._key(obj.key)
        self.keys.add(key)
        self.revisions.add(self.client.put(key, self._encode(obj)).header.revision)

    def delete(self, key: str, policy: Policy = "background") -> None:
        """registry.Store.Delete: the policy's finalizer replaces orphan and foregroundDeletion; with finalizers
        left the object is marked as being deleted, without any it is deleted."""

        def deletion(obj: Obj) -> tuple[tuple[str, ...], bool]:
            return deletion_finalizers(obj.finalizers, policy), True

        self._update(key, deletion)

    def remove_finalizer(self, key: str, finalizer: str) -> None:
        """An update removing `finalizer`; one that leaves an object being deleted without finalizers deletes it."""
        self._update(key, lambda obj: (tuple(f for f in obj.finalizers if f != finalizer), obj.deleting))

    def _update(self, key: str, change: _Change) -> None:
        stored = self._key(key)
        while True:
            kvs = self.client.get(stored).kvs
            if not kvs:
                return  # NotFound
            kv = kvs[0]
            finalizers, deleting = change(read(self.case, kv.key, kv.value))
            if deleting and not finalizers:
                op = delete_op(stored)
            else:
                value = with_finalizers(kv.value, finalizers, deleting, datetime.now(UTC))
                if value == kv.value:
                    return  # nothing to write
                op = put_op(stored, value)
            response = self.client.txn([mod_revision_is(stored, kv.mod_revision)], [op])
            if response.succeeded:
                self.revisions.add(response.header.revision)
                return

    def _key(self, key: str) -> bytes:
        return self.case.key(key).encode()

    def _encode(self, obj: Obj) -> bytes:
        return encode(obj, self.case, self.encoding)

    # --- what is stored -------------------------------------------------------------------------------------------

    def stored(self) -> tuple[int, dict[bytes, kv_pb2.KeyValue]]:
        """The revision read at, and the case's live keys then."""
        response = self.client.txn([], [range_op(key) for key in sorted(self.keys)])
        kvs = {kv.key: kv for op in response.responses for kv in op.response_range.kvs}
        return response.header.revision, kvs

    def state(self, kvs: dict[bytes, kv_pb2.KeyValue]) -> State:
        objects = (read(self.case, kv.key, kv.value) for kv in kvs.values())
        return {obj.key: obj for obj in objects}

    def converge(self, expected: State, timeout: float = CONVERGE_TIMEOUT, settle: float = SETTLE) -> None:
        """Wait until the stored objects are the `expected` ones, then check that nothing touches them for a while
        and that label selectors see them as stored."""
        deadline = time.monotonic() + timeout
        while True:
            revision, kvs = self.stored()
            state = self.state(kvs)
            if state == expected:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"not the model's state after {timeout}s:\n{difference(expected, state)}")
            time.sleep(POLL)
        versions = {key: kv.mod_revision for key, kv in kvs.items()}
        quiet_until = time.monotonic() + settle
        while time.monotonic() < quiet_until:
            time.sleep(POLL * 2)
            _, later = self.stored()
            if {key: kv.mod_revision for key, kv in later.items()} != versions:
                raise AssertionError(
                    f"changed after reaching the model's state:\n{difference(expected, self.state(later))}"
                )
        self.assert_selected(revision, kvs)

    def assert_selected(self, revision: int, kvs: dict[bytes, kv_pb2.KeyValue]) -> None:
        """A label selector Range sees each stored object with the labels it has (written by whoever)."""
        labelled = {key for key, kv in kvs.items() if LABEL in read(self.case, key, kv.value).labels}
        for selector, keys in (
            (f"{CASE_LABEL}={self.case.tag},{LABEL}", labelled),
            (f"{CASE_LABEL}={self.case.tag},!{LABEL}", kvs.keys() - labelled),
        ):
            response = self.client.get(b"/registry/", b"/registry0", labelSelector=selector, revision=revision)
            found = [(kv.key, kv.value, kv.mod_revision) for kv in response.kvs]
            assert found == [(key, kvs[key].value, kvs[key].mod_revision) for key in sorted(keys)], selector

    # --- the collector's writes -----------------------------------------------------------------------------------

    def collector_events(self) -> list[kv_pb2.Event]:
        """Every write to the case's keys since it began that is not its own, checked: deletes carry the version
        they deleted, updates are PUTs of an existing key that change only what the collector may change."""
        events = [
            event
            for event in history(self.client, self.start + 1)
            if self.case.owns(event.kv.key) and event.kv.mod_revision not in self.revisions
        ]
        for event in events:
            kv, previous = event.kv, event.prev_kv
            assert previous.key == kv.key and previous.value, f"{kv.key!r}: no prev_kv on the collector's write"
            if event.type == kv_pb2.Event.DELETE:
                continue
            assert event.type == kv_pb2.Event.PUT
            assert (kv.create_revision, kv.version) == (previous.create_revision, previous.version + 1), kv.key
            assert_only_metadata_edited(previous.value, kv.value)
        return events


def one_backend(server: ServerProcess) -> bool:
    """Whether every key of the server lives in one database (any store but a multi:// topology)."""
    return not server.command[server.command.index("--endpoint") + 1].startswith("multi://")


def history(client: Etcd, start_revision: int) -> list[kv_pb2.Event]:
    """Every event from `start_revision` to the head, with prev_kv, over one watch of the whole keyspace."""
    head = client.revision()
    if head < start_revision:
        return []
    finished = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        everything = rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=start_revision, prev_kv=True)
        yield rpc_pb2.WatchRequest(create_request=everything)
        finished.wait()

    events: list[kv_pb2.Event] = []
    responses = client.watch.Watch(requests(), timeout=HISTORY_TIMEOUT)
    try:
        for response in responses:
            events += response.events
            if events and events[-1].kv.mod_revision >= head:
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        raise AssertionError(f"history from {start_revision} ends short of {head}") from None
    finally:
        finished.set()
        responses.cancel()
    return events


def difference(expected: State, stored: State) -> str:
    lines = []
    for key in sorted(expected.keys() | stored.keys()):
        if expected.get(key) != stored.get(key):
            lines.append(f"{key}\n  model:  {expected.get(key)}\n  stored: {stored.get(key)}")
    return "\n".join(lines)


def metric(server: ServerProcess, name: str) -> float:
    """A metric of the server, its samples summed over their labels."""
    address = server.command[server.command.index("--metrics-address") + 1]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    assert samples, f"no {name} in /metrics"
    return sum(float(sample) for sample in samples)

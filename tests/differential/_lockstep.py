"""Driving the real etcd and the server under test in lockstep, and comparing what they answer.

Only what a client may rely on is compared: cluster_id, member_id and raft_term identify a cluster, not
its data, so they are dropped; everything else, revisions included, must agree exactly. The few fields
that etcd itself does not answer deterministically are canonicalized here, each with its reason.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd

# How long a watch stream may take to deliver a response before it counts as never arriving.
WATCH_RESPONSE_TIMEOUT = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """A call that ended in a gRPC error; code None means no answer arrived at all."""

    code: grpc.StatusCode | None
    details: str


Outcome: TypeAlias = Message | Failure


def invoke(etcd: Etcd, service: str, method: str, request: Message) -> Outcome:
    try:
        return getattr(getattr(etcd, service), method)(request, timeout=10)
    except grpc.RpcError as error:
        return Failure(error.code(), error.details())


def canonical(outcome: Outcome) -> Outcome:
    """A copy without cluster identity, with etcd's unordered collections put in order."""
    if isinstance(outcome, Failure):
        return outcome
    copy = type(outcome)()
    copy.CopyFrom(outcome)
    _drop_cluster_identity(copy)
    if isinstance(copy, rpc_pb2.LeaseLeasesResponse):
        # etcd lists leases by expiry, and leases granted with one TTL tie in Go map order.
        leases = sorted(copy.leases, key=lambda lease: lease.ID)
        del copy.leases[:]
        copy.leases.extend(leases)
    if isinstance(copy, rpc_pb2.LeaseTimeToLiveResponse):
        # etcd collects a lease's keys from a Go map: their order is random.
        keys = sorted(copy.keys)
        del copy.keys[:]
        copy.keys.extend(keys)
    return copy


def _drop_cluster_identity(message: Message) -> None:
    if isinstance(message, rpc_pb2.ResponseHeader):
        message.cluster_id = message.member_id = message.raft_term = 0
        return
    for field, value in message.ListFields():
        if field.message_type is not None:
            for child in value if field.is_repeated else [value]:
                _drop_cluster_identity(child)


def show(outcome: Outcome | list[Outcome] | list[Message]) -> str:
    if isinstance(outcome, Failure):
        return f"error {outcome.code.name if outcome.code else 'NO ANSWER'}: {outcome.details!r}"
    if isinstance(outcome, list):
        return "[" + ", ".join(f"{{{show(item)}}}" for item in outcome) + "]"
    return text_format.MessageToString(outcome, as_one_line=True) or "<empty>"


class Lockstep:
    """Sends every request to etcd (the oracle) and to the server under test, and insists they agree."""

    def __init__(self, oracle: Etcd, subject: Etcd) -> None:
        self.oracle = oracle
        self.subject = subject
        self.diverged = False
        # Everything compared since the current example began, to reproduce a divergence by hand: state
        # the subject keeps across examples can make hypothesis's own replay of it miss.
        self.transcript: list[str] = []

    def call(self, service: str, method: str, request: Message) -> Outcome:
        """The oracle's outcome, once the subject's has been found equal to it."""
        expected = invoke(self.oracle, service, method, request)
        actual = invoke(self.subject, service, method, request)
        self.check_same(method, request, expected, actual)
        return expected

    def check_same(
        self,
        operation: str,
        request: Message,
        expected: Outcome | list[Message],
        actual: Outcome | list[Message],
    ) -> None:
        oracle, subject = _canonical_all(expected), _canonical_all(actual)
        if not _same(oracle, subject):
            self.fail(
                f"{operation} diverged from etcd\n"
                f"  request:    {show(request)}\n"
                f"  etcd:       {show(oracle)}\n"
                f"  kubefabric: {show(subject)}"
            )
        self.transcript.append(f"{operation}: {show(request)}\n      -> {show(oracle)}")

    def fail(self, message: str) -> None:
        self.diverged = True
        so_far = "\n".join(f"    {line}" for line in self.transcript) or "    (nothing)"
        raise AssertionError(f"{message}\n  after this example's operations, as both answered them:\n{so_far}")


def _canonical_all(outcome: Outcome | list[Message]) -> Outcome | list[Outcome]:
    return [canonical(item) for item in outcome] if isinstance(outcome, list) else canonical(outcome)


def _same(expected: Outcome | list[Outcome], actual: Outcome | list[Outcome]) -> bool:
    if isinstance(expected, rpc_pb2.LeaseTimeToLiveResponse) and isinstance(actual, rpc_pb2.LeaseTimeToLiveResponse):
        # Remaining TTL is rounded up to whole seconds on servers granted a few milliseconds apart.
        if abs(expected.TTL - actual.TTL) <= 1:
            actual.TTL = expected.TTL
    return expected == actual


class WatchStream:
    """One bidirectional Watch stream; a background thread appends every response to a log."""

    def __init__(self, etcd: Etcd) -> None:
        self._requests: queue.SimpleQueue[rpc_pb2.WatchRequest | None] = queue.SimpleQueue()
        self._log: list[rpc_pb2.WatchResponse] = []
        self._end: Failure | None = None
        self._changed = threading.Condition()
        self._created_seen = 0  # created responses already handed out, in the order creates were sent
        self._call = etcd.watch.Watch(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    self._log.append(response)
                    self._changed.notify_all()
            end = Failure(grpc.StatusCode.OK, "the server closed the watch stream")
        except grpc.RpcError as error:
            end = Failure(error.code(), error.details())
        with self._changed:
            self._end = end
            self._changed.notify_all()

    def _await(self, found: Callable[[], T | None]) -> T | None:
        """found() once it returns something, or None when the stream ends or the timeout passes first."""
        deadline = time.monotonic() + WATCH_RESPONSE_TIMEOUT
        with self._changed:
            while (result := found()) is None and self._end is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return result

    def _silence(self, awaited: str) -> Failure:
        return self._end or Failure(None, f"no {awaited} within {WATCH_RESPONSE_TIMEOUT}s")

    def create(self, request: rpc_pb2.WatchCreateRequest) -> Outcome:
        """The created response to this create request (creates are answered in the order sent)."""
        self._requests.put(rpc_pb2.WatchRequest(create_request=request))
        wanted = self._created_seen + 1

        def created() -> rpc_pb2.WatchResponse | None:
            responses = [response for response in self._log if response.created]
            return responses[wanted - 1] if len(responses) >= wanted else None

        self._created_seen = wanted
        return self._await(created) or self._silence("created response")

    def cancel(self, watch_id: int) -> Outcome:
        with self._changed:
            start = len(self._log)
        self._requests.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))

        def canceled() -> rpc_pb2.WatchResponse | None:
            for response in self._log[start:]:
                if response.watch_id == watch_id and response.canceled and not response.created:
                    return response
            return None

        return self._await(canceled) or self._silence(f"cancel response for watch {watch_id}")

    def history(self, watch_id: int) -> list[rpc_pb2.WatchResponse]:
        """Every response for the watch after its created response."""
        with self._changed:
            return [response for response in self._log if response.watch_id == watch_id and not response.created]

    def await_delivery(self, watch_id: int, revision: int | None) -> None:
        """Wait until the watch is cancelled or has delivered an event at or after revision."""
        self._await(lambda: True if delivered(self.history(watch_id), revision) else None)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=WATCH_RESPONSE_TIMEOUT)


def watch_record(watch_id: int, responses: list[rpc_pb2.WatchResponse]) -> list[Message]:
    """What a watch delivered, independent of how etcd batched it: all its events as one response, then
    every response that carried more than events (a compaction cancel, a stray notification).

    Headers are dropped: etcd stamps a catch-up batch with whatever the revision was when its sync loop
    ran, so only its lower bound is checked (header_behind_events)."""
    events = rpc_pb2.WatchResponse(watch_id=watch_id, events=[event for r in responses for event in r.events])
    notices = []
    for response in responses:
        notice = rpc_pb2.WatchResponse()
        notice.CopyFrom(response)
        notice.ClearField("header")
        notice.ClearField("events")
        if notice != rpc_pb2.WatchResponse(watch_id=watch_id):
            notices.append(notice)
    return [events, *notices]


def header_behind_events(responses: list[rpc_pb2.WatchResponse]) -> rpc_pb2.WatchResponse | None:
    """The first response whose header revision is older than an event it carries, if any."""
    for response in responses:
        if response.events and response.header.revision < max(e.kv.mod_revision for e in response.events):
            return response
    return None


def delivered(responses: list[rpc_pb2.WatchResponse], revision: int | None) -> bool:
    """Whether the watch has been cancelled, or has delivered an event at or after revision."""
    return any(r.canceled for r in responses) or (
        revision is not None and any(event.kv.mod_revision >= revision for r in responses for event in r.events)
    )

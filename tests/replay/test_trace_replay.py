"""Replay the recorded Kubernetes traffic and demand etcd's recorded answers, field by field.

The trace (see shared/traces/README.md) holds every gRPC message a kube-apiserver and
kube-controller-manager exchanged with a fresh etcd 3.4.23. Its unary calls are replayed one at a time
against a fresh server and every answer must equal the recorded one. Only what belongs to one particular
etcd member rather than to the data is set aside: the header's cluster_id, member_id and raft_term, the
Status fields other than the header, and lease IDs, which the server picks (recorded IDs are mapped to
the granted ones, in requests and in answers).

Watch calls are replayed interleaved with the unary calls, each watch request at the point where its
recorded answer (created / canceled) sits in the revision order. Opening a watch only at the end would
change what it sees: by then compactions have removed the history a watch created early still received.
The collected created / event / canceled responses of every watch are compared with the recorded ones.
"""

from __future__ import annotations

import difflib
import gzip
import json
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from kubefabric.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests._servers import ServerProcess

# CI clones the repository with shared/ beside it.
TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
TRACE = TRACES / "kube-apiserver-1.24-workload.jsonl.gz"

CALL_TIMEOUT = 10.0
# How long a watch may take to deliver events that are already committed; a correct server needs
# milliseconds, so this only bounds how long a broken one makes the test wait.
WATCH_DELIVERY_TIMEOUT = 5.0

# Header fields that identify the etcd member, not the data.
MEMBER_HEADER_FIELDS = ("cluster_id", "member_id", "raft_term")

# Fields that hold a lease ID, by message type: recorded IDs become the ones this server granted.
LEASE_ID_FIELDS = {
    "etcdserverpb.PutRequest": "lease",
    "etcdserverpb.Compare": "lease",
    "etcdserverpb.LeaseGrantResponse": "ID",
    "etcdserverpb.LeaseRevokeRequest": "ID",
    "etcdserverpb.LeaseTimeToLiveRequest": "ID",
    "etcdserverpb.LeaseTimeToLiveResponse": "ID",
    "mvccpb.KeyValue": "lease",
}

WatchKey = tuple[int, int]  # (trace call id of the stream, watch_id)
TranscriptEntry = rpc_pb2.WatchResponse | kv_pb2.Event


class UnsupportedTrace(Exception):
    """The trace holds something this replay cannot reproduce deterministically."""


@dataclass(frozen=True)
class RecordedError:
    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class UnaryStep:
    """A unary call, replayed at the revision its recorded answer saw."""

    line: int
    call: int
    method: str
    request: Message
    response: Message | None
    error: RecordedError | None
    revision: int
    writes: bool


@dataclass(frozen=True)
class WatchStep:
    """A create or cancel sent on a Watch stream, replayed where the server answered it."""

    line: int
    call: int
    request: rpc_pb2.WatchRequest
    response: rpc_pb2.WatchResponse
    revision: int
    writes = False


Step = UnaryStep | WatchStep


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    watch_transcripts: dict[WatchKey, list[TranscriptEntry]]
    watch_creates: dict[WatchKey, rpc_pb2.WatchRequest]


def replay_order(step: Step) -> tuple[int, bool, int]:
    """Order by the revision each answer saw; the call that wrote a revision before those that read it.

    The README promises that the order of the answer lines reproduces etcd's revisions, but concurrent
    answers sometimes reached the proxy out of order (the Txn that wrote revision 8 answered before the
    one that wrote 7, a Range that saw 38 answered after the write of 39). Sorting by the revision each
    answer reports, writes first and answer line order otherwise, is the order etcd applied them in.
    """
    return (step.revision, not step.writes, step.line)


def find_method(name: str) -> MethodDescriptor:
    for service in rpc_pb2.DESCRIPTOR.services_by_name.values():
        if name in service.methods_by_name:
            return service.methods_by_name[name]
    raise UnsupportedTrace(f"no etcd v3 method named {name}")


def parse(message: dict[str, Any], into: type[Message]) -> Message:
    return ParseDict(message, into(), ignore_unknown_fields=False)


def status_code(recorded: str | int) -> grpc.StatusCode:
    """A recorded gRPC code, whether written as 11, OUT_OF_RANGE or Go's OutOfRange."""
    wanted = str(recorded).replace("_", "").lower()
    for code in grpc.StatusCode:
        if wanted in (str(code.value[0]), code.name.replace("_", "").lower()):
            return code
    raise UnsupportedTrace(f"unknown gRPC status code {recorded!r}")


def writes_revision(response: Message) -> bool:
    """Whether etcd gave this answer to a request that created a revision."""
    if isinstance(response, rpc_pb2.PutResponse):
        return True
    if isinstance(response, rpc_pb2.DeleteRangeResponse):
        return response.deleted > 0
    if isinstance(response, rpc_pb2.TxnResponse):
        answers = (getattr(op, kind) for op in response.responses if (kind := op.WhichOneof("response")))
        return any(writes_revision(answer) for answer in answers)
    return False


def watch_transcripts(responses: list[rpc_pb2.WatchResponse]) -> dict[int, list[TranscriptEntry]]:
    """Per watch: its created and canceled responses (without events) and its events, in stream order.

    Which events share a response, and the header revision of event responses, depend on timing (a
    catching-up watch batches history), so events are compared one by one, not response by response.
    Progress notifications depend on timing alone and are left out.
    """
    transcripts: dict[int, list[TranscriptEntry]] = defaultdict(list)
    for response in responses:
        transcript = transcripts[response.watch_id]
        if response.created or response.canceled:
            transcript.append(without_events(response))
        transcript.extend(response.events)
    return transcripts


def without_events(response: rpc_pb2.WatchResponse) -> rpc_pb2.WatchResponse:
    status = rpc_pb2.WatchResponse()
    status.CopyFrom(response)
    status.ClearField("events")
    return status


class TraceReader:
    """Turns the trace's lines into replay steps and the recorded watch transcripts."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.unary_requests: dict[int, Message] = {}
        self.pending_creates: dict[int, deque[rpc_pb2.WatchRequest]] = defaultdict(deque)
        self.pending_cancels: dict[WatchKey, rpc_pb2.WatchRequest] = {}
        self.stream_responses: dict[int, list[rpc_pb2.WatchResponse]] = defaultdict(list)
        self.watch_creates: dict[WatchKey, rpc_pb2.WatchRequest] = {}
        self.revision = 1  # the revision the latest answer saw: where a recorded error is replayed

    def read(self, path: Path) -> Plan:
        with gzip.open(path, "rt") as trace:
            for line, text in enumerate(trace, start=1):
                record = json.loads(text)
                if record["method"] == "Watch":
                    self.read_watch(line, record)
                else:
                    self.read_unary(line, record)
        unanswered = {
            *self.unary_requests,
            *(call for call, creates in self.pending_creates.items() if creates),
            *(call for call, _ in self.pending_cancels),
        }
        if unanswered:
            raise UnsupportedTrace(f"calls {sorted(unanswered)} have requests without a recorded answer")
        transcripts = {
            (call, watch_id): transcript
            for call, responses in self.stream_responses.items()
            for watch_id, transcript in watch_transcripts(responses).items()
        }
        return Plan(sorted(self.steps, key=replay_order), transcripts, self.watch_creates)

    def read_unary(self, line: int, record: dict[str, Any]) -> None:
        call, method, direction = record["call"], record["method"], record["dir"]
        descriptor = find_method(method)
        if descriptor.client_streaming or descriptor.server_streaming:
            raise UnsupportedTrace(f"line {line}: streaming method {method} is not replayed")
        if direction == "req":
            self.unary_requests[call] = parse(record["msg"], GetMessageClass(descriptor.input_type))
            return
        request = self.unary_requests.pop(call)
        if direction == "resp":
            response = parse(record["msg"], GetMessageClass(descriptor.output_type))
            self.revision = response.header.revision
            writes = writes_revision(response)
            self.steps.append(UnaryStep(line, call, method, request, response, None, self.revision, writes))
        else:
            error = RecordedError(status_code(record["code"]), record["details"])
            self.steps.append(UnaryStep(line, call, method, request, None, error, self.revision, False))

    def read_watch(self, line: int, record: dict[str, Any]) -> None:
        call, direction = record["call"], record["dir"]
        if direction == "req":
            request = parse(record["msg"], rpc_pb2.WatchRequest)
            kind = request.WhichOneof("request_union")
            if kind == "create_request":
                self.pending_creates[call].append(request)
            elif kind == "cancel_request":
                self.pending_cancels[(call, request.cancel_request.watch_id)] = request
            else:
                raise UnsupportedTrace(f"line {line}: a Watch {kind} is answered at a time-dependent point")
        elif direction == "resp":
            response = parse(record["msg"], rpc_pb2.WatchResponse)
            self.stream_responses[call].append(response)
            self.revision = response.header.revision
            key = (call, response.watch_id)
            # etcd answers the creates of one stream in the order it received them.
            if response.created:
                self.watch_creates[key] = self.pending_creates[call].popleft()
                self.steps.append(WatchStep(line, call, self.watch_creates[key], response, self.revision))
            elif response.canceled and key in self.pending_cancels:
                request = self.pending_cancels.pop(key)
                self.steps.append(WatchStep(line, call, request, response, self.revision))
        else:
            raise UnsupportedTrace(f"line {line}: a Watch stream that failed cannot be replayed")


def submessages(message: Message) -> Iterator[Message]:
    yield message
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                yield from submessages(item)


def normalized(message: Message, leases: dict[int, int] | None = None) -> Message:
    """A copy without what belongs to one etcd member, with recorded lease IDs mapped if leases is given."""
    copy = type(message)()
    copy.CopyFrom(message)
    for part in submessages(copy):
        if isinstance(part, rpc_pb2.ResponseHeader):
            for name in MEMBER_HEADER_FIELDS:
                part.ClearField(name)
        elif isinstance(part, rpc_pb2.StatusResponse):
            for field, _ in part.ListFields():
                if field.name != "header":
                    part.ClearField(field.name)
        lease_field = LEASE_ID_FIELDS.get(part.DESCRIPTOR.full_name)
        # Only IDs that were granted: setting a field of a oneof (Compare.lease) would clear its sibling.
        if leases and lease_field and getattr(part, lease_field) in leases:
            setattr(part, lease_field, leases[getattr(part, lease_field)])
    return copy


def readable(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON shows it, but with bytes as text so that diffs can be read."""

    def value_of(field: FieldDescriptor, value: Any) -> Any:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return readable(value)
        if field.type == FieldDescriptor.TYPE_BYTES:
            return value.decode("utf-8", "backslashreplace")
        if field.type == FieldDescriptor.TYPE_ENUM:
            return field.enum_type.values_by_number[value].name
        return value

    return {
        field.name: [value_of(field, item) for item in value] if field.is_repeated else value_of(field, value)
        for field, value in message.ListFields()
    }


def as_json(message: Message) -> str:
    return json.dumps(readable(message), indent=2)


def diff(recorded: Any, actual: Any) -> str:
    def lines(value: Any) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True).splitlines()

    return "\n".join(difflib.unified_diff(lines(recorded), lines(actual), "recorded", "actual", lineterm=""))


class WatchStream:
    """One recorded Watch call, replayed as one gRPC stream; a thread collects what the server sends."""

    def __init__(self, stub: rpc_pb2_grpc.WatchStub) -> None:
        self.responses: list[rpc_pb2.WatchResponse] = []
        self.error: grpc.RpcError | None = None
        self._outbox: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._changed = threading.Condition()
        self._ended = False
        self._closing = False
        self._call = stub.Watch(iter(self._outbox.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    self.responses.append(response)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            if not self._closing:
                self.error = error
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Wait for condition (checked under the lock that guards responses) until the deadline."""
        with self._changed:
            self._changed.wait_for(lambda: condition() or self._ended, max(0.0, deadline - time.monotonic()))
            return condition()

    def answer(self, request: rpc_pb2.WatchRequest, deadline: float) -> rpc_pb2.WatchResponse | None:
        """Send a create or a cancel and return the created or canceled response to it, if one comes."""

        def answers() -> list[rpc_pb2.WatchResponse]:
            if request.HasField("create_request"):
                return [r for r in self.responses if r.created]
            watch_id = request.cancel_request.watch_id
            return [r for r in self.responses if r.canceled and r.watch_id == watch_id]

        earlier = len(answers())
        self._outbox.put(request)
        if not self.wait_until(lambda: len(answers()) > earlier, deadline):
            return None
        return answers()[earlier]

    def events(self, watch_id: int) -> int:
        return sum(len(response.events) for response in self.responses if response.watch_id == watch_id)

    def close(self) -> None:
        self._closing = True
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)


class Replayer:
    """Runs a plan on one server: fails at the first answer unlike the recorded one, then checks watches."""

    def __init__(self, server: ServerProcess, channel: grpc.Channel, plan: Plan) -> None:
        self.server = server
        self.channel = channel
        self.plan = plan
        self.leases: dict[int, int] = {}  # recorded lease ID -> the one this server granted
        self.streams: dict[int, WatchStream] = {}
        self.watch_stub = rpc_pb2_grpc.WatchStub(channel)
        # How many events of each recorded watch have a revision up to a given one: what a watch must
        # have delivered before the replay may cancel it or compact away history it might still need.
        self.recorded_event_revisions = {
            key: [entry.kv.mod_revision for entry in transcript if isinstance(entry, kv_pb2.Event)]
            for key, transcript in plan.watch_transcripts.items()
        }

    def run(self) -> None:
        try:
            for index, step in enumerate(self.plan.steps, start=1):
                if isinstance(step, UnaryStep):
                    self.replay_unary(index, step)
                else:
                    self.replay_watch_request(index, step)
            self.await_watch_events(self.plan.steps[-1].revision)
        finally:
            for stream in self.streams.values():
                stream.close()
        self.compare_watches()

    def fail(self, index: int, step: Step, request: Message, what: str) -> NoReturn:
        pytest.fail(
            f"replay step {index}/{len(self.plan.steps)} (trace call {step.call}, line {step.line}), "
            f"{type(request).__name__}: {as_json(request)}\n{what}\nserver log: {self.server.log}"
        )

    def replay_unary(self, index: int, step: UnaryStep) -> None:
        if step.method == "Compact":
            self.await_watch_events(step.revision)
        method = find_method(step.method)
        invoke = self.channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=type(step.request).SerializeToString,
            response_deserializer=GetMessageClass(method.output_type).FromString,
        )
        request = normalized(step.request, self.leases)
        try:
            actual = invoke(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            actual_error = RecordedError(error.code(), error.details())
            if step.error != actual_error:
                recorded = step.error or as_json(step.response)
                self.fail(index, step, request, f"recorded: {recorded}\nactual: {actual_error}")
            return
        if step.response is None:
            self.fail(index, step, request, f"recorded: {step.error}\nactual: {as_json(actual)}")
        if isinstance(actual, rpc_pb2.LeaseGrantResponse) and step.request.ID == 0:
            if actual.ID == 0 or actual.ID in self.leases.values():
                self.fail(index, step, request, f"lease ID {actual.ID} is no lease, or was granted before")
            self.leases[step.response.ID] = actual.ID
        expected = normalized(step.response, self.leases)
        actual = normalized(actual)
        if actual != expected:
            self.fail(index, step, request, diff(readable(expected), readable(actual)))

    def replay_watch_request(self, index: int, step: WatchStep) -> None:
        if step.call not in self.streams:
            self.streams[step.call] = WatchStream(self.watch_stub)
        stream = self.streams[step.call]
        if step.request.HasField("cancel_request"):
            self.await_watch_events(step.revision, only=(step.call, step.request.cancel_request.watch_id))
        # Wait for each answer, so that the server handles the request at the revision etcd did.
        answer = stream.answer(step.request, self.delivery_deadline())
        if answer is None:
            self.fail(index, step, step.request, f"no answer; stream error: {stream.error}")
        expected = normalized(without_events(step.response))
        actual = normalized(without_events(answer))
        if actual != expected:
            self.fail(index, step, step.request, diff(readable(expected), readable(actual)))

    @staticmethod
    def delivery_deadline() -> float:
        return time.monotonic() + WATCH_DELIVERY_TIMEOUT

    def await_watch_events(self, revision: int, only: WatchKey | None = None) -> None:
        """Wait until every watch has delivered the recorded events up to revision (or time runs out).

        The replay runs ahead of watch delivery; without this a cancel or a compaction could overtake
        events that the recorded etcd had already delivered, and the result would depend on timing.
        """
        deadline = self.delivery_deadline()
        for (call, watch_id), revisions in self.recorded_event_revisions.items():
            if call not in self.streams or only not in (None, (call, watch_id)):
                continue
            stream = self.streams[call]
            due = sum(1 for event_revision in revisions if event_revision <= revision)
            stream.wait_until(lambda s=stream, w=watch_id, n=due: s.events(w) >= n, deadline)

    def compare_watches(self) -> None:
        divergences = []
        actual_transcripts = {
            (call, watch_id): transcript
            for call, stream in self.streams.items()
            for watch_id, transcript in watch_transcripts(stream.responses).items()
        }
        for key in sorted(self.plan.watch_transcripts.keys() | actual_transcripts.keys()):
            recorded = [normalized(entry, self.leases) for entry in self.plan.watch_transcripts.get(key, [])]
            actual = [normalized(entry) for entry in actual_transcripts.get(key, [])]
            if actual != recorded:
                call, watch_id = key
                create = self.plan.watch_creates.get(key)
                divergences.append(
                    f"watch {watch_id} on the stream of trace call {call}, created by "
                    f"{as_json(create) if create else 'no recorded request'}; stream error: "
                    f"{self.streams[call].error if call in self.streams else None}\n"
                    f"{diff([readable(e) for e in recorded], [readable(e) for e in actual])}"
                )
        if divergences:
            shown = "\n\n".join(divergences[:3])
            heading = f"{len(divergences)} watches saw other responses than recorded"
            pytest.fail(f"{heading} (server log: {self.server.log}); the first ones:\n{shown}")


def test_replayed_trace_answers_as_recorded(server: ServerProcess) -> None:
    if not TRACE.exists():
        pytest.skip(f"the recorded trace is not at {TRACE}")
    plan = TraceReader().read(TRACE)
    with server.channel() as channel:
        Replayer(server, channel, plan).run()

"""Differential test: hypothesis-driven operation sequences against the real etcd and kubefabric.

Both servers start once per test and receive the identical sequence of operations, so their revisions
stay in lockstep and are compared exactly, like every other field of every response and every error
(status code and message). Each hypothesis example works under its own key prefix and lease IDs;
prefixes increase, so a range open to the end of the keyspace never reaches an earlier example's keys.
Each example starts by compacting all history before it, and requests name revisions relative to that
start, the compaction and the current revision, so an example means the same whenever it is replayed.

After every operation the revision must have moved by exactly one if the operation wrote and not at
all otherwise: reads, errors and transactions whose taken branch wrote nothing leave it where it was.

Watches are opened at random points on one stream per example. At the end of the example a fence (one
txn putting every watched key, one deleting them) gives each watch a last event to wait for; then each
watch's events are compared, and each live watch is cancelled.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from kubefabric.etcdpb import rpc_pb2
from tests._client import Compare, Etcd, RequestOp, delete_op, prefix_end, put_op
from tests._servers import ServerProcess
from tests.differential._lockstep import (
    Failure,
    Lockstep,
    Outcome,
    WatchStream,
    header_behind_events,
    show,
    watch_record,
)

# Few keys, so operations collide. At most 12: etcd sorts with Go's unstable sort, which is an insertion
# sort (stable) below 13 elements, so ties stay in key order and a stable sort reproduces etcd exactly.
KEY_SUFFIXES = (b"a", b"ab", b"abc", b"b", b"ba", b"c", b"foo", b"foo/1", b"foo/2", b"foo0")
VALUES = (b"", b"x", b"y", b"xyz")
# Sorts before every example prefix (digits), so no example's range ever reaches it.
SCRATCH_KEY = b"!scratch"
LEASES_PER_EXAMPLE = 3
# Long enough that no lease expires during a run; the last is above etcd's maximum TTL and is refused.
LEASE_TTLS = (600, 3600, 86400, 9_000_000_001)
PUT_IGNORE_FLAGS = ("ignore_value", "ignore_lease")
RANGE_FLAGS = ("count_only", "keys_only", "serializable")
RANGE_SHAPES = ("one key", "key to end", "from key on", "prefix", "whole example")
REVISION_LANDMARKS = ("zero", "compacted", "example start", "current", "example history")
REVISION_BOUNDS = ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision")
SORT_ORDERS = tuple(rpc_pb2.RangeRequest.SortOrder.values())
SORT_TARGETS = tuple(rpc_pb2.RangeRequest.SortTarget.values())
COMPARE_TARGETS = tuple(Compare.CompareTarget.values())
COMPARE_RESULTS = tuple(Compare.CompareResult.values())
NOPUT, NODELETE = rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE
# Mostly 0 (the server picks the ID); small explicit IDs collide with the ones the server picked.
WATCH_IDS = (0, 0, 0, 2, 7)
# etcd catches lagging watches up every 100ms, and reads an event's prev_kv only when it sends the event:
# a compaction before either has happened would make what a watch sees depend on timing, so compactions
# wait this long while a watch may still be behind.
WATCH_SETTLE_SECONDS = 0.25

SETTINGS = settings(
    max_examples=60,
    report_multiple_bugs=False,
    stateful_step_count=50,
    deadline=None,
)


@dataclass(frozen=True)
class Moment:
    """Where an example stands: what its requests aim at."""

    prefix: bytes
    revision: int
    compacted: int
    example_start: int
    lease_ids: tuple[int, ...]


@st.composite
def keys(draw: st.DrawFn, moment: Moment, refusable: bool = False) -> bytes:
    """A key of this example; if refusable, now and then the empty key etcd refuses."""
    suffix = draw(st.sampled_from((*KEY_SUFFIXES, b"") if refusable else KEY_SUFFIXES))
    return moment.prefix + suffix if suffix else b""


@st.composite
def key_ranges(draw: st.DrawFn, moment: Moment, refusable: bool = False) -> tuple[bytes, bytes]:
    """(key, range_end) of every shape etcd tells apart: one key, [key, end) (empty when end <= key),
    everything from key on (end "\\0"), a prefix, the whole example; if refusable, now and then no key."""
    shape = draw(st.sampled_from((*RANGE_SHAPES, "no key") if refusable else RANGE_SHAPES))
    if shape == "whole example":
        return moment.prefix, prefix_end(moment.prefix)
    if shape == "no key":
        return b"", b""
    key = draw(keys(moment))
    if shape == "key to end":
        return key, draw(keys(moment))
    if shape == "from key on":
        return key, b"\0"
    if shape == "prefix":
        return key, prefix_end(key)
    return key, b""


@st.composite
def revisions(draw: st.DrawFn, moment: Moment) -> int:
    """Revisions to read, watch or compact at: near 0, the compaction boundary, the example's start and the
    current revision (just past it is the future), or anywhere in this example's history."""
    landmark = draw(st.sampled_from(REVISION_LANDMARKS))
    if landmark == "example history":
        return draw(example_revisions(moment))
    landmarks = {"zero": 0, "compacted": moment.compacted, "example start": moment.example_start}
    return landmarks.get(landmark, moment.revision) + draw(st.integers(-2, 2))


@st.composite
def example_revisions(draw: st.DrawFn, moment: Moment) -> int:
    """Revisions this example's keys can carry, from its start to one past the current revision.

    Drawn as a step folded into that span rather than as integers(start, end): hypothesis replays recorded
    choices and rejects a strategy whose bounds differ between runs, and revisions differ every run."""
    span = moment.revision + 2 - moment.example_start
    return moment.example_start + draw(st.integers(0, 63)) % span


@st.composite
def leases(draw: st.DrawFn, moment: Moment) -> int:
    """No lease, or one of the example's lease IDs, granted or not."""
    return draw(st.sampled_from((0, *moment.lease_ids)))


@st.composite
def put_requests(draw: st.DrawFn, moment: Moment, refusable: bool = False) -> rpc_pb2.PutRequest:
    """Mostly plain puts: leases that were never granted and the ignore flags make etcd refuse many."""
    plain = draw(st.booleans())
    return rpc_pb2.PutRequest(
        key=draw(keys(moment, refusable)),
        value=draw(st.sampled_from(VALUES)),
        prev_kv=draw(st.booleans()),
        lease=0 if plain else draw(leases(moment)),
        **dict.fromkeys(() if plain else draw(st.lists(st.sampled_from(PUT_IGNORE_FLAGS), unique=True)), True),
    )


@st.composite
def range_requests(draw: st.DrawFn, moment: Moment, refusable: bool = False) -> rpc_pb2.RangeRequest:
    key, range_end = draw(key_ranges(moment, refusable))
    at_revision = draw(st.booleans())
    request = rpc_pb2.RangeRequest(
        key=key,
        range_end=range_end,
        revision=draw(revisions(moment)) if at_revision else 0,
        limit=draw(st.sampled_from((0, 1, 2, 3))),
        sort_order=draw(st.sampled_from(SORT_ORDERS)),
        sort_target=draw(st.sampled_from(SORT_TARGETS)),
    )
    for flag in draw(st.lists(st.sampled_from(RANGE_FLAGS), unique=True, max_size=2)):
        setattr(request, flag, True)
    for bound in draw(st.lists(st.sampled_from(REVISION_BOUNDS), unique=True, max_size=2)):
        setattr(request, bound, draw(example_revisions(moment)))
    return request


@st.composite
def delete_requests(draw: st.DrawFn, moment: Moment) -> rpc_pb2.DeleteRangeRequest:
    key, range_end = draw(key_ranges(moment))
    return rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=draw(st.booleans()))


@st.composite
def compares(draw: st.DrawFn, moment: Moment) -> rpc_pb2.Compare:
    """Compares on one key (mostly) or a range, over every target and result."""
    single_key = draw(st.booleans())
    key, range_end = (draw(keys(moment)), b"") if single_key else draw(key_ranges(moment))
    target = draw(st.sampled_from(COMPARE_TARGETS))
    operands = {
        Compare.VERSION: ("version", st.integers(0, 3)),
        Compare.CREATE: ("create_revision", example_revisions(moment)),
        Compare.MOD: ("mod_revision", example_revisions(moment)),
        Compare.VALUE: ("value", st.sampled_from(VALUES)),
        Compare.LEASE: ("lease", leases(moment)),
    }
    compare = Compare(key=key, range_end=range_end, target=target, result=draw(st.sampled_from(COMPARE_RESULTS)))
    field, operand = operands[target]
    setattr(compare, field, draw(operand))
    return compare


@st.composite
def request_ops(draw: st.DrawFn, moment: Moment, nesting: int) -> rpc_pb2.RequestOp:
    kind = draw(st.sampled_from(("put", "range", "delete", "txn") if nesting else ("put", "range", "delete")))
    if kind == "put":
        return RequestOp(request_put=draw(put_requests(moment)))
    if kind == "range":
        return RequestOp(request_range=draw(range_requests(moment)))
    if kind == "delete":
        return RequestOp(request_delete_range=draw(delete_requests(moment)))
    return RequestOp(request_txn=draw(txn_requests(moment, nesting - 1)))


@st.composite
def txn_requests(draw: st.DrawFn, moment: Moment, nesting: int) -> rpc_pb2.TxnRequest:
    """Transactions nested up to nesting levels deep. Putting one key twice, or putting and deleting it,
    in one branch is frequent with so few keys: etcd refuses those, and so must the subject."""
    txn = rpc_pb2.TxnRequest(
        compare=draw(st.lists(compares(moment), max_size=3)),
        success=draw(st.lists(request_ops(moment, nesting), max_size=3)),
        failure=draw(st.lists(request_ops(moment, nesting), max_size=3)),
    )
    assume(not writes_a_key_twice(txn))
    return txn


def writes_a_key_twice(txn: rpc_pb2.TxnRequest) -> bool:
    """A txn that puts a key and also deletes it. etcd refuses that within one list of ops, but
    accepts it across nested txns or through a "from key on" delete (its overlap check misses the
    open end), and then records two events of one key at one revision; kubefabric's history keeps
    one version per key and revision, the final one (a known difference)."""
    puts: list[tuple[int, bytes]] = []  # (op list, key): etcd checks one list of ops at a time
    deletes: list[tuple[int, bytes, bytes]] = []
    lists = itertools.count()

    def collect(ops: Iterable[rpc_pb2.RequestOp]) -> None:
        level = next(lists)
        for op in ops:
            if op.HasField("request_put"):
                puts.append((level, op.request_put.key))
            elif op.HasField("request_delete_range"):
                deletes.append((level, op.request_delete_range.key, op.request_delete_range.range_end))
            elif op.HasField("request_txn"):
                collect(op.request_txn.success)
                collect(op.request_txn.failure)

    collect(txn.success)
    collect(txn.failure)
    return any(
        (put_level != delete_level or end == b"\0")
        and (put == start if not end else put >= start and (end == b"\0" or put < end))
        for put_level, put in puts
        for delete_level, start, end in deletes
    )


@st.composite
def watch_create_requests(draw: st.DrawFn, moment: Moment) -> rpc_pb2.WatchCreateRequest:
    """Watches whose range holds their own key, so that the fence reaches them."""
    key, range_end = draw(key_ranges(moment))
    if range_end == key:
        range_end = b""
    elif range_end not in (b"", b"\0") and range_end < key:
        key, range_end = range_end, key
    return rpc_pb2.WatchCreateRequest(
        key=key,
        range_end=range_end,
        start_revision=max(draw(revisions(moment)), 0),
        prev_kv=draw(st.booleans()),
        filters=draw(st.lists(st.sampled_from((NOPUT, NODELETE)), unique=True)),
        watch_id=draw(st.sampled_from(WATCH_IDS)),
    )


@st.composite
def compaction_requests(draw: st.DrawFn, moment: Moment) -> rpc_pb2.CompactionRequest:
    return rpc_pb2.CompactionRequest(revision=draw(revisions(moment)), physical=draw(st.booleans()))


def wrote(outcome: Outcome) -> bool:
    """Whether a successful KV operation changed the keyspace (and so took a new revision)."""
    if isinstance(outcome, rpc_pb2.PutResponse):
        return True
    if isinstance(outcome, rpc_pb2.DeleteRangeResponse):
        return outcome.deleted > 0
    if isinstance(outcome, rpc_pb2.TxnResponse):
        return any(wrote(getattr(response, response.WhichOneof("response"))) for response in outcome.responses)
    return False


@dataclass(frozen=True)
class OpenWatch:
    request: rpc_pb2.WatchCreateRequest
    watch_id: int
    created_at: int  # the store revision when it was created
    compacted_at_creation: int

    def last_fence_revision(self, put_revision: int, delete_revision: int) -> int | None:
        """The last fence event that passes this watch's filters and start revision, if any."""
        first = self.request.start_revision or self.created_at + 1
        for revision, filtered_by in ((delete_revision, NODELETE), (put_revision, NOPUT)):
            if filtered_by not in self.request.filters and first <= revision:
                return revision
        return None

    @property
    def outdated(self) -> bool:
        """Starts below the compacted revision: etcd cancels it once it tries to catch up."""
        return 0 < self.request.start_revision < self.compacted_at_creation


@dataclass
class Session:
    """What outlives a hypothesis example: the two servers and the keyspace-wide facts they share."""

    servers: Lockstep
    revision: int
    compacted: int = 0
    examples: int = 0


class SameAsEtcd(RuleBasedStateMachine):
    """One hypothesis example: a random operation sequence under a fresh key prefix."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.servers = session.servers
        if self.servers.diverged:
            self.realign()
        self.servers.transcript.clear()
        session.examples += 1
        self.prefix = b"%06d/" % session.examples
        self.lease_ids = tuple(LEASES_PER_EXAMPLE * session.examples + n for n in range(LEASES_PER_EXAMPLE))
        self.example_start = session.revision
        self.granted: set[int] = set()
        self.watches: list[OpenWatch] = []
        self.watch_may_lag = False
        self.streams: tuple[WatchStream, WatchStream] | None = None
        # Compacting away everything before the example makes it find the same state whenever it runs:
        # hypothesis shrinks a failure by replaying variations of it, long after it first ran.
        self.kv("Compact", rpc_pb2.CompactionRequest(revision=self.example_start))
        session.compacted = self.example_start

    def moment(self) -> Moment:
        return Moment(self.prefix, self.session.revision, self.session.compacted, self.example_start, self.lease_ids)

    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        self.kv("Put", data.draw(put_requests(self.moment(), refusable=True)))

    @rule(data=st.data())
    def range_read(self, data: st.DataObject) -> None:
        self.kv("Range", data.draw(range_requests(self.moment(), refusable=True)))

    @rule(data=st.data())
    def delete_range(self, data: st.DataObject) -> None:
        self.kv("DeleteRange", data.draw(delete_requests(self.moment())))

    @rule(data=st.data())
    def txn(self, data: st.DataObject) -> None:
        self.kv("Txn", data.draw(txn_requests(self.moment(), nesting=2)))

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        request = data.draw(compaction_requests(self.moment()))
        if self.watch_may_lag:
            time.sleep(WATCH_SETTLE_SECONDS)
            self.watch_may_lag = False
        if not isinstance(self.kv("Compact", request), Failure):
            self.session.compacted = request.revision

    @rule(data=st.data())
    def lease_grant(self, data: st.DataObject) -> None:
        lease_id, ttl = data.draw(st.sampled_from(self.lease_ids)), data.draw(st.sampled_from(LEASE_TTLS))
        request = rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=ttl)
        if not isinstance(self.lease("LeaseGrant", request), Failure):
            self.granted.add(request.ID)

    @rule(data=st.data())
    def lease_revoke(self, data: st.DataObject) -> None:
        request = rpc_pb2.LeaseRevokeRequest(ID=data.draw(st.sampled_from(self.lease_ids)))
        if not isinstance(self.lease("LeaseRevoke", request), Failure):
            self.granted.discard(request.ID)

    @rule(data=st.data())
    def lease_time_to_live(self, data: st.DataObject) -> None:
        lease_id, keys = data.draw(st.sampled_from(self.lease_ids)), data.draw(st.booleans())
        self.lease("LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))

    @rule()
    def leases(self) -> None:
        self.lease("LeaseLeases", rpc_pb2.LeaseLeasesRequest())

    @rule(data=st.data())
    def watch(self, data: st.DataObject) -> None:
        request = data.draw(watch_create_requests(self.moment()))
        oracle_stream, subject_stream = self.watch_streams()
        response = oracle_stream.create(request)
        self.servers.check_same("Watch create", request, response, subject_stream.create(request))
        self.advance("Watch create", request, response)
        if isinstance(response, rpc_pb2.WatchResponse) and not response.canceled:
            self.watches.append(OpenWatch(request, response.watch_id, self.session.revision, self.session.compacted))
            self.watch_may_lag |= 0 < request.start_revision <= self.session.revision

    def kv(self, method: str, request: Message) -> Outcome:
        outcome = self.servers.call("kv", method, request)
        self.advance(method, request, outcome)
        return outcome

    def lease(self, method: str, request: Message) -> Outcome:
        outcome = self.servers.call("lease", method, request)
        self.advance(method, request, outcome)
        return outcome

    def advance(self, operation: str, request: Message, outcome: Outcome) -> None:
        """Check the revision moved by one if the operation wrote and stayed put otherwise; remember it."""
        before = self.session.revision
        after = self.current_revision() if isinstance(outcome, Failure) else outcome.header.revision
        # Revoking a lease deletes its keys, if it has any: the revision may or may not move.
        if not isinstance(outcome, rpc_pb2.LeaseRevokeResponse):
            expected = before + 1 if wrote(outcome) else before
            if after != expected:
                self.servers.fail(
                    f"{operation} moved the revision from {before} to {after}, expected {expected}\n"
                    f"  request: {show(request)}\n"
                    f"  outcome: {show(outcome)}"
                )
        self.watch_may_lag |= after != before and any(watch.request.prev_kv for watch in self.watches)
        self.session.revision = after

    def current_revision(self) -> int:
        response = self.servers.call("kv", "Range", rpc_pb2.RangeRequest(key=SCRATCH_KEY, count_only=True))
        assert isinstance(response, rpc_pb2.RangeResponse), f"etcd refused a revision probe: {show(response)}"
        return int(response.header.revision)

    def watch_streams(self) -> tuple[WatchStream, WatchStream]:
        if self.streams is None:
            self.streams = (WatchStream(self.servers.oracle), WatchStream(self.servers.subject))
        return self.streams

    def teardown(self) -> None:
        try:
            if not self.servers.diverged:
                self.finish_watches()
                for lease_id in sorted(self.granted):
                    self.lease("LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        finally:
            if self.streams is not None:
                for stream in self.streams:
                    stream.close()
            if self.servers.diverged:
                self.forget_leases()

    def finish_watches(self) -> None:
        if not self.watches:
            return
        oracle_stream, subject_stream = self.watch_streams()
        put_revision, delete_revision = self.write_fences()
        for watch in self.watches:
            last = watch.last_fence_revision(put_revision, delete_revision)
            if last is not None or watch.outdated:
                for stream in (oracle_stream, subject_stream):
                    stream.await_delivery(watch.watch_id, last)
            expected, actual = oracle_stream.history(watch.watch_id), subject_stream.history(watch.watch_id)
            for server, responses in (("etcd", expected), ("kubefabric", actual)):
                if (stale := header_behind_events(responses)) is not None:
                    self.servers.fail(f"{server} sent watch events under an older header: {show(stale)}")
            record = f"Watch {watch.watch_id} history"
            self.servers.check_same(
                record,
                watch.request,
                watch_record(watch.watch_id, expected),
                watch_record(watch.watch_id, actual),
            )
        for watch in self.watches:
            if not any(response.canceled for response in oracle_stream.history(watch.watch_id)):
                request = rpc_pb2.WatchCancelRequest(watch_id=watch.watch_id)
                cancelled = oracle_stream.cancel(watch.watch_id)
                self.servers.check_same("Watch cancel", request, cancelled, subject_stream.cancel(watch.watch_id))

    def write_fences(self) -> tuple[int, int]:
        """Put, then delete, every watched key: the revisions of the two fence transactions."""
        watched = sorted({watch.request.key for watch in self.watches})
        self.kv("Txn", rpc_pb2.TxnRequest(success=[put_op(key, b"fence") for key in watched]))
        put_revision = self.session.revision
        self.kv("Txn", rpc_pb2.TxnRequest(success=[delete_op(key) for key in watched]))
        return put_revision, self.session.revision

    def forget_leases(self) -> None:
        """After a divergence neither server's leases can be trusted: revoke them all on both, quietly."""
        for etcd in (self.servers.oracle, self.servers.subject):
            for lease_id in self.lease_ids:
                with contextlib.suppress(grpc.RpcError):
                    etcd.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=10)

    def realign(self) -> None:
        """After a divergence, pad the server that is behind with writes until revisions agree again, so
        that the next examples (hypothesis shrinking the failure) start in lockstep."""
        revisions = {etcd: etcd.revision() for etcd in (self.servers.oracle, self.servers.subject)}
        behind: Etcd = min(revisions, key=revisions.__getitem__)
        for _ in range(max(revisions.values()) - revisions[behind]):
            behind.put(SCRATCH_KEY)
        self.session.revision = max(revisions.values())
        self.servers.diverged = False


def test_operation_sequences_match_etcd(etcd: ServerProcess, kubefabric: ServerProcess) -> None:
    with Etcd(etcd.channel()) as oracle, Etcd(kubefabric.channel()) as subject:
        servers = Lockstep(oracle, subject)
        start = servers.call("kv", "Range", rpc_pb2.RangeRequest(key=SCRATCH_KEY, count_only=True))
        assert isinstance(start, rpc_pb2.RangeResponse), f"etcd refused a revision probe: {show(start)}"
        session = Session(servers, revision=start.header.revision)
        run_state_machine_as_test(lambda: SameAsEtcd(session), settings=SETTINGS)

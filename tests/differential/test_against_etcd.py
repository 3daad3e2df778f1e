"""Differential test: hypothesis-driven operation sequences against the real etcd and kubefabric.

Both servers start once per test and receive the identical sequence of operations, so their revisions
stay in lockstep and are compared exactly, like every other field of every response and every error
(status code and message). Each hypothesis example works under its own key prefix and lease IDs;
prefixes increase, so a range open to the end of the keyspace never reaches an earlier example's keys.
Compaction is keyspace-wide, so the compacted revision is tracked across examples.

After every operation the revision must have moved by exactly one if the operation wrote and not at
all otherwise: reads, errors and transactions whose taken branch wrote nothing leave it where it was.

Watches are opened at random points on one stream per example. At the end of the example a fence (one
txn putting every watched key, one deleting them) gives each watch a last event to wait for; then each
watch's events are compared, and each live watch is cancelled.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from kubefabric.protocol.etcdpb import rpc_pb2
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
PUT_FLAGS = ("prev_kv", "ignore_value", "ignore_lease")
RANGE_FLAGS = ("count_only", "keys_only", "serializable")
REVISION_BOUNDS = ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision")
SORT_ORDERS = tuple(rpc_pb2.RangeRequest.SortOrder.values())
SORT_TARGETS = tuple(rpc_pb2.RangeRequest.SortTarget.values())
COMPARE_RESULTS = tuple(Compare.CompareResult.values())
NOPUT, NODELETE = rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE
# Mostly 0 (the server picks the ID); small explicit IDs collide with the ones the server picked.
WATCH_IDS = (0, 0, 0, 2, 7)
# etcd catches lagging watches up every 100ms and reads an event's prev_kv when it sends the event;
# a compaction before either has happened would make what a watch sees depend on timing.
WATCH_SETTLE_SECONDS = 0.25

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class Moment:
    """Where an example stands: what its requests aim at."""

    prefix: bytes
    revision: int
    compacted: int
    example_start: int
    lease_ids: tuple[int, ...]


def keys(moment: Moment) -> st.SearchStrategy[bytes]:
    return st.sampled_from([moment.prefix + suffix for suffix in KEY_SUFFIXES])


def keys_or_empty(moment: Moment) -> st.SearchStrategy[bytes]:
    """An example key, or now and then the empty key etcd refuses."""
    return st.sampled_from([b"", *(moment.prefix + suffix for suffix in KEY_SUFFIXES)])


def key_ranges(moment: Moment) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(key, range_end) of every shape etcd tells apart: one key, [key, end) (empty when end <= key),
    everything from key on ("\\0"), a prefix, the whole example."""
    return st.one_of(
        keys(moment).map(lambda key: (key, b"")),
        st.tuples(keys(moment), keys(moment)),
        keys(moment).map(lambda key: (key, b"\0")),
        keys(moment).map(lambda key: (key, prefix_end(key))),
        st.just((moment.prefix, prefix_end(moment.prefix))),
    )


def revisions(moment: Moment) -> st.SearchStrategy[int]:
    """Revisions to read, watch or compact at: near 0, the compaction boundary, the example's start and the
    current revision (just past it is the future), or anywhere in this example's history."""
    landmarks = {
        "zero": 0,
        "compacted": moment.compacted,
        "example start": moment.example_start,
        "current": moment.revision,
    }
    near_landmark = st.tuples(st.sampled_from(tuple(landmarks)), st.integers(-2, 2))
    return st.one_of(near_landmark.map(lambda near: landmarks[near[0]] + near[1]), example_revisions(moment))


def example_revisions(moment: Moment) -> st.SearchStrategy[int]:
    """Revisions this example's keys can carry, from its start to one past the current revision.

    Drawn as a step mapped into that span rather than as integers(start, end): hypothesis replays recorded
    choices and rejects a strategy whose bounds differ between runs, and revisions differ every run."""
    span = moment.revision + 2 - moment.example_start
    return st.integers(0, 63).map(lambda step: moment.example_start + step % span)


def leases(moment: Moment) -> st.SearchStrategy[int]:
    """No lease, or one of the example's lease IDs, granted or not."""
    return st.sampled_from((0, *moment.lease_ids))


def put_requests(
    moment: Moment, key_strategy: st.SearchStrategy[bytes]
) -> st.SearchStrategy[rpc_pb2.PutRequest]:
    def put(key: bytes, value: bytes, lease: int, flags: list[str]) -> rpc_pb2.PutRequest:
        return rpc_pb2.PutRequest(key=key, value=value, lease=lease, **dict.fromkeys(flags, True))

    # Mostly plain puts: the flags and leases mostly make etcd refuse the put.
    flags = st.one_of(st.just([]), st.lists(st.sampled_from(PUT_FLAGS), unique=True, max_size=2))
    lease = st.one_of(st.just(0), leases(moment))
    return st.builds(put, key_strategy, st.sampled_from(VALUES), lease, flags)


def range_requests(
    moment: Moment, key_range_strategy: st.SearchStrategy[tuple[bytes, bytes]]
) -> st.SearchStrategy[rpc_pb2.RangeRequest]:
    def range_request(
        key_range: tuple[bytes, bytes],
        revision: int,
        limit: int,
        sort: tuple[int, int],
        flags: list[str],
        bounds: list[tuple[str, int]],
    ) -> rpc_pb2.RangeRequest:
        return rpc_pb2.RangeRequest(
            key=key_range[0],
            range_end=key_range[1],
            revision=revision,
            limit=limit,
            sort_order=sort[0],
            sort_target=sort[1],
            **dict.fromkeys(flags, True),
            **dict(bounds),
        )

    return st.builds(
        range_request,
        key_range_strategy,
        st.one_of(st.just(0), revisions(moment)),
        st.sampled_from((0, 1, 2, 3)),
        st.tuples(st.sampled_from(SORT_ORDERS), st.sampled_from(SORT_TARGETS)),
        st.lists(st.sampled_from(RANGE_FLAGS), unique=True, max_size=2),
        st.lists(st.tuples(st.sampled_from(REVISION_BOUNDS), example_revisions(moment)), max_size=2),
    )


def delete_requests(
    key_range_strategy: st.SearchStrategy[tuple[bytes, bytes]],
) -> st.SearchStrategy[rpc_pb2.DeleteRangeRequest]:
    def delete(key_range: tuple[bytes, bytes], prev_kv: bool) -> rpc_pb2.DeleteRangeRequest:
        return rpc_pb2.DeleteRangeRequest(key=key_range[0], range_end=key_range[1], prev_kv=prev_kv)

    return st.builds(delete, key_range_strategy, st.booleans())


def compares(moment: Moment) -> st.SearchStrategy[rpc_pb2.Compare]:
    """Compares on one key or a range, over every target and result."""
    targets = st.one_of(
        st.integers(0, 3).map(lambda version: {"target": Compare.VERSION, "version": version}),
        example_revisions(moment).map(
            lambda revision: {"target": Compare.CREATE, "create_revision": revision}
        ),
        example_revisions(moment).map(lambda revision: {"target": Compare.MOD, "mod_revision": revision}),
        st.sampled_from(VALUES).map(lambda value: {"target": Compare.VALUE, "value": value}),
        leases(moment).map(lambda lease: {"target": Compare.LEASE, "lease": lease}),
    )

    def compare(key_range: tuple[bytes, bytes], result: int, target: dict[str, object]) -> rpc_pb2.Compare:
        return Compare(key=key_range[0], range_end=key_range[1], result=result, **target)

    key_range = st.one_of(keys(moment).map(lambda key: (key, b"")), key_ranges(moment))
    return st.builds(compare, key_range, st.sampled_from(COMPARE_RESULTS), targets)


def request_ops(moment: Moment, nesting: int) -> st.SearchStrategy[rpc_pb2.RequestOp]:
    ops = [
        put_requests(moment, keys(moment)).map(lambda request: RequestOp(request_put=request)),
        range_requests(moment, key_ranges(moment)).map(lambda request: RequestOp(request_range=request)),
        delete_requests(key_ranges(moment)).map(lambda request: RequestOp(request_delete_range=request)),
    ]
    if nesting:
        ops.append(txn_requests(moment, nesting - 1).map(lambda request: RequestOp(request_txn=request)))
    return st.one_of(ops)


def txn_requests(moment: Moment, nesting: int) -> st.SearchStrategy[rpc_pb2.TxnRequest]:
    """Transactions nested up to nesting levels deep. Putting one key twice, or putting and deleting it,
    in one branch is frequent with so few keys: etcd refuses those, and so must the subject."""

    def txn(
        compare: list[rpc_pb2.Compare], success: list[rpc_pb2.RequestOp], failure: list[rpc_pb2.RequestOp]
    ) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)

    ops = st.lists(request_ops(moment, nesting), max_size=3)
    return st.builds(txn, st.lists(compares(moment), max_size=3), ops, ops)


def watch_create_requests(moment: Moment) -> st.SearchStrategy[rpc_pb2.WatchCreateRequest]:
    """Watches whose range holds their own key, so that a put of that key reaches them."""

    def watch(
        key_range: tuple[bytes, bytes], start_revision: int, prev_kv: bool, filters: list[int], watch_id: int
    ) -> rpc_pb2.WatchCreateRequest:
        return rpc_pb2.WatchCreateRequest(
            key=key_range[0],
            range_end=key_range[1],
            start_revision=start_revision,
            prev_kv=prev_kv,
            filters=filters,
            watch_id=watch_id,
        )

    holding_their_key = key_ranges(moment).filter(lambda kr: kr[1] in (b"", b"\0") or kr[1] > kr[0])
    start_revisions = revisions(moment).map(lambda revision: max(revision, 0))
    filters = st.lists(st.sampled_from((NOPUT, NODELETE)), unique=True, max_size=2)
    return st.builds(
        watch, holding_their_key, start_revisions, st.booleans(), filters, st.sampled_from(WATCH_IDS)
    )


def wrote(outcome: Outcome) -> bool:
    """Whether a successful KV operation changed the keyspace (and so took a new revision)."""
    if isinstance(outcome, rpc_pb2.PutResponse):
        return True
    if isinstance(outcome, rpc_pb2.DeleteRangeResponse):
        return outcome.deleted > 0
    if isinstance(outcome, rpc_pb2.TxnResponse):
        return any(
            wrote(getattr(response, response.WhichOneof("response"))) for response in outcome.responses
        )
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
        session.examples += 1
        self.prefix = b"%06d/" % session.examples
        self.lease_ids = tuple(LEASES_PER_EXAMPLE * session.examples + n for n in range(LEASES_PER_EXAMPLE))
        self.example_start = session.revision
        self.granted: set[int] = set()
        self.watches: list[OpenWatch] = []
        self.streams: tuple[WatchStream, WatchStream] | None = None

    def moment(self) -> Moment:
        return Moment(
            self.prefix, self.session.revision, self.session.compacted, self.example_start, self.lease_ids
        )

    @rule(data=st.data())
    def put(self, data: st.DataObject) -> None:
        self.kv("Put", data.draw(put_requests(self.moment(), keys_or_empty(self.moment()))))

    @rule(data=st.data())
    def range_read(self, data: st.DataObject) -> None:
        refused = st.just((b"", b""))
        self.kv(
            "Range", data.draw(range_requests(self.moment(), st.one_of(key_ranges(self.moment()), refused)))
        )

    @rule(data=st.data())
    def delete_range(self, data: st.DataObject) -> None:
        self.kv("DeleteRange", data.draw(delete_requests(key_ranges(self.moment()))))

    @rule(data=st.data())
    def txn(self, data: st.DataObject) -> None:
        self.kv("Txn", data.draw(txn_requests(self.moment(), nesting=2)))

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        moment = self.moment()
        request = data.draw(
            st.builds(rpc_pb2.CompactionRequest, revision=revisions(moment), physical=st.booleans())
        )
        if self.watches:
            time.sleep(WATCH_SETTLE_SECONDS)
        if not isinstance(self.kv("Compact", request), Failure):
            self.session.compacted = request.revision

    @rule(data=st.data())
    def lease_grant(self, data: st.DataObject) -> None:
        ids, ttls = st.sampled_from(self.lease_ids), st.sampled_from(LEASE_TTLS)
        request = data.draw(st.builds(rpc_pb2.LeaseGrantRequest, ID=ids, TTL=ttls))
        if not isinstance(self.lease("LeaseGrant", request), Failure):
            self.granted.add(request.ID)

    @rule(data=st.data())
    def lease_revoke(self, data: st.DataObject) -> None:
        request = rpc_pb2.LeaseRevokeRequest(ID=data.draw(st.sampled_from(self.lease_ids)))
        if not isinstance(self.lease("LeaseRevoke", request), Failure):
            self.granted.discard(request.ID)

    @rule(data=st.data())
    def lease_time_to_live(self, data: st.DataObject) -> None:
        ids = st.sampled_from(self.lease_ids)
        self.lease(
            "LeaseTimeToLive",
            data.draw(st.builds(rpc_pb2.LeaseTimeToLiveRequest, ID=ids, keys=st.booleans())),
        )

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
            self.watches.append(
                OpenWatch(request, response.watch_id, self.session.revision, self.session.compacted)
            )

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
                self.servers.check_same(
                    "Watch cancel", request, cancelled, subject_stream.cancel(watch.watch_id)
                )

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

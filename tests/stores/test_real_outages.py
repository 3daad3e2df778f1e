"""The real database server stopped under load and started again, with kubefabric left running.

Unlike test_postgres_outages.py, which cuts a proxy in front of the database, these tests stop the
real PostgreSQL and MariaDB servers (shared with the other tests, so they are always started again):
requests must fail fast with UNAVAILABLE naming the database, the process must stay up and answer,
writes must succeed again by themselves once the server is back, no acknowledged write may be lost,
and every watch must deliver each event exactly once, in order, without being canceled, a watch
that has to read history while the database is down included.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Compare, Etcd, prefix_end, put_op
from tests._databases import mysql_endpoint, mysql_stopped, postgres_endpoint, postgres_stopped
from tests._servers import ServerProcess, start_kubefabric

# store -> (an endpoint on a fresh database, the real server stopped for a block)
OUTAGES: dict[str, tuple[Callable[[], str], Callable[[], AbstractContextManager[None]]]] = {
    "postgres": (postgres_endpoint, postgres_stopped),
    "mysql": (mysql_endpoint, mysql_stopped),
}

WRITERS = 8
LOAD_SECONDS = 1.5
# How long the database stays down once writes are seen failing: long enough for several failed
# writes per writer and several history-read retries of the watch made during the outage.
OUTAGE_SECONDS = 3.0
# A request to a stopped database must fail within this (the client gives up after 10 s).
FAIL_FAST_SECONDS = 3.0
# Once the database answers again, every writer must have had a write acknowledged within this.
RECOVERY_SECONDS = 20.0
# Watches delivering everything up to the last write, history read back after the outage included.
WATCH_TIMEOUT = 20.0
UNAVAILABLE_PREFIX = "kubefabric: database unavailable: "
HISTORY_FAILING = "watchers cannot read history"

PREFIX = b"/outage/"


@dataclass(frozen=True)
class Ack:
    """An acknowledged write: its key must hold `value` at `revision`."""

    key: bytes
    value: bytes
    revision: int
    created: bool  # a create-only txn on a fresh key: version 1, created at `revision`


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    details: str
    seconds: float  # how long the request took to fail
    at: float  # time.monotonic() when it failed


class Writer(threading.Thread):
    """Writes until stopped, never retrying a failed write, so that what was acknowledged is known.

    Alternates a create-only txn on a fresh key with a put on one key it overwrites again and again.
    A failed write may still have reached the database (its reply was lost); nothing assumes otherwise.
    """

    def __init__(self, client: Etcd, prefix: bytes, stop_requested: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.prefix = prefix
        self.stop_requested = stop_requested
        self.acks: list[Ack] = []
        self.acked_at: list[float] = []
        self.failures: list[Failure] = []
        self.refused_creates: list[bytes] = []

    def run(self) -> None:
        n = 0
        while not self.stop_requested.is_set():
            n += 1
            started = time.monotonic()
            try:
                ack = self._create(n) if n % 2 else self._overwrite(n)
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                failed = time.monotonic()
                self.failures.append(Failure(error.code(), error.details() or "", failed - started, failed))
                time.sleep(0.05)  # a database that is down is not hammered
                continue
            if ack is not None:
                self.acks.append(ack)
                self.acked_at.append(time.monotonic())

    def _create(self, n: int) -> Ack | None:
        key, value = self.prefix + b"created/%d" % n, b"c%d" % n
        response = self.client.txn(
            [Compare(key=key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=0)], [put_op(key, value)]
        )
        if not response.succeeded:
            self.refused_creates.append(key)  # every key is fresh: the compare must hold
            return None
        return Ack(key, value, response.header.revision, created=True)

    def _overwrite(self, n: int) -> Ack:
        key, value = self.prefix + b"overwritten", b"p%d" % n
        return Ack(key, value, self.client.put(key, value).header.revision, created=False)


@dataclass
class WatchRecorder:
    """One watch on its own stream; a thread records every response."""

    client: Etcd
    start_revision: int
    responses: list[rpc_pb2.WatchResponse] = field(default_factory=list)
    _requests: queue.Queue[rpc_pb2.WatchRequest | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        create = rpc_pb2.WatchCreateRequest(
            key=PREFIX, range_end=prefix_end(PREFIX), start_revision=self.start_revision
        )
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))
        self._call = self.client.watch.Watch(iter(self._requests.get, None))
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(5)

    @property
    def events(self) -> list[kv_pb2.Event]:
        return [event for response in list(self.responses) for event in response.events]

    def wait_created(self, timeout: float = 5.0) -> None:
        wait(lambda: bool(self.responses), timeout, "the watch to be created")
        first = self.responses[0]
        assert first.created and not first.canceled, first

    def wait_for_revision(self, revision: int, timeout: float) -> None:
        def delivered() -> bool:
            assert self.error is None, self.error
            assert not any(response.canceled for response in self.responses), self.responses
            events = self.events
            return bool(events) and events[-1].kv.mod_revision >= revision

        wait(delivered, timeout, f"watch events up to revision {revision}")


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def unavailable_quickly(call: Callable[[], object], database: str) -> float:
    """Assert `call` fails with UNAVAILABLE naming the database, fast; return how long it took."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        call()
    seconds = time.monotonic() - started
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert (error.details() or "").startswith(UNAVAILABLE_PREFIX) and database in (error.details() or ""), error
    assert seconds < FAIL_FAST_SECONDS, seconds
    return seconds


def event_tuple(event: kv_pb2.Event) -> tuple[int, bytes, bytes, int, int, int]:
    kv = event.kv
    return (event.type, kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


@pytest.fixture(params=list(OUTAGES))
def outage_store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def kubefabric_on_real_db(outage_store: str, tmp_path: Path) -> Iterator[ServerProcess]:
    endpoint = OUTAGES[outage_store][0]()
    # No automatic compaction: the whole history stays readable, so every ack is checked at its revision.
    process = start_kubefabric(tmp_path, endpoint, "--compaction-interval", "0")
    yield process
    process.stop()


@pytest.mark.stops_databases
def test_a_stopped_database_fails_requests_fast_and_loses_nothing_when_it_returns(
    outage_store: str, kubefabric_on_real_db: ServerProcess
) -> None:
    server = kubefabric_on_real_db
    assert server.process is not None
    endpoint = server.command[server.command.index("--endpoint") + 1]
    database = endpoint.rpartition("/")[2]  # the messages name the (redacted) endpoint, so its database
    stopped = OUTAGES[outage_store][1]
    timings: dict[str, float] = {}
    stop_requested = threading.Event()

    with Etcd(server.channel()) as client:
        first = client.revision() + 1
        synced = WatchRecorder(client, first)  # follows the writes live, through the outage
        synced.wait_created()
        writers = [Writer(client, PREFIX + b"%02d/" % i, stop_requested) for i in range(WRITERS)]
        replaying: WatchRecorder | None = None
        try:
            for writer in writers:
                writer.start()
            time.sleep(LOAD_SECONDS)  # the load itself: there is nothing to poll for
            assert all(writer.acks for writer in writers), "a writer had nothing acknowledged before the outage"

            started = time.monotonic()
            with stopped():
                down = time.monotonic()
                timings["stop"] = down - started
                # Every writer sees its writes fail, each fast (checked below with every failure).
                wait(
                    lambda: all(any(f.at > down for f in writer.failures) for writer in writers),
                    FAIL_FAST_SECONDS + 2,
                    "every writer to see a write fail",
                )
                timings["first failure of every writer"] = time.monotonic() - down
                # The process stays up and answers: with UNAVAILABLE for what needs the database...
                assert server.process.poll() is None, "kubefabric exited when its database stopped"
                timings["status"] = unavailable_quickly(client.status, database)
                timings["range"] = unavailable_quickly(lambda: client.get_prefix(PREFIX), database)
                # ...and at once for what does not.
                client.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=FAIL_FAST_SECONDS)
                # A watch that must replay history from the database while it is down: it waits for it.
                replaying = WatchRecorder(client, first)
                replaying.wait_created()
                time.sleep(OUTAGE_SECONDS)
                assert server.process.poll() is None
                assert replaying.error is None and not any(r.canceled for r in replaying.responses), replaying.responses
                restarting = time.monotonic()
            back = time.monotonic()
            timings["start"] = back - restarting

            # Writes succeed again without restarting kubefabric: every writer gets one acknowledged.
            wait(
                lambda: all(writer.acked_at and writer.acked_at[-1] > back for writer in writers),
                RECOVERY_SECONDS,
                "every writer to have a write acknowledged after the database came back",
            )
            timings["recovery of every writer"] = time.monotonic() - back
        finally:
            stop_requested.set()
            for writer in writers:
                writer.join(15)
        assert not any(writer.is_alive() for writer in writers), "a writer hangs"
        last = client.put(PREFIX + b"last", b"end").header.revision

        # Every failure was UNAVAILABLE, fast, and named the database.
        failures = [failure for writer in writers for failure in writer.failures]
        assert failures, "no write failed while the database was down"
        wrong = [
            f for f in failures if f.code != grpc.StatusCode.UNAVAILABLE or not f.details.startswith(UNAVAILABLE_PREFIX)
        ]
        assert not wrong, f"{len(wrong)} of {len(failures)} failures were not UNAVAILABLE, e.g. {wrong[:3]}"
        unnamed = [f for f in failures if database not in f.details]
        assert not unnamed, f"failures not naming the database, e.g. {unnamed[:3]}"
        slowest = max(failure.seconds for failure in failures)
        assert slowest < FAIL_FAST_SECONDS, f"a write took {slowest:.2f}s to fail"
        timings["slowest failure"] = slowest
        assert not [key for writer in writers for key in writer.refused_creates], "a fresh key already existed"

        # Every acknowledged write is in the database with its acknowledged revision.
        acks = [ack for writer in writers for ack in writer.acks]
        for ack in acks:
            [kv] = client.get(ack.key, revision=ack.revision).kvs
            assert (kv.value, kv.mod_revision) == (ack.value, ack.revision), (ack, kv)
            if ack.created:
                assert (kv.create_revision, kv.version) == (ack.revision, 1), (ack, kv)

        # Every watch delivered every event once, in order, without a cancel: the one that followed
        # the writes live, the one that replayed history during the outage, and one made now.
        assert replaying is not None
        fresh = WatchRecorder(client, first)
        watches = {"synced": synced, "replaying": replaying, "fresh": fresh}
        started = time.monotonic()
        for watch in watches.values():
            watch.wait_for_revision(last, WATCH_TIMEOUT)
        timings["watches caught up"] = time.monotonic() - started
        histories = {}
        for name, watch in watches.items():
            watch.close()
            for response in watch.responses:
                assert not response.canceled, (name, response)
                if response.events:
                    assert response.header.revision >= response.events[-1].kv.mod_revision, (name, response)
            histories[name] = [event_tuple(event) for event in watch.events]
        events = histories["fresh"]
        assert histories["synced"] == events, "the live watch's events differ from the history"
        assert histories["replaying"] == events, "the watch made during the outage differs from the history"
        # Each write here changes one key, and nothing else writes: one event per revision, no gap.
        assert [event[4] for event in events] == list(range(first, last + 1)), "revisions missing or repeated"
        by_revision = {event[4]: event for event in events}
        for ack in acks:
            assert by_revision[ack.revision][1:3] == (ack.key, ack.value), (ack, by_revision[ack.revision])

        # The events add up to the database's current contents.
        latest = {event[1]: event for event in events}
        current = client.get_prefix(PREFIX).kvs
        assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in current] == [
            latest[key][1:] for key in sorted(latest) if latest[key][0] == kv_pb2.Event.PUT
        ]

    assert server.process.poll() is None
    log = server.log.read_text()
    # The replaying watch retried its history reads quietly: one warning for the outage, not one per retry.
    assert log.count(HISTORY_FAILING) == 1, log[-4000:]
    print(
        f"{outage_store}: {len(acks)} writes acknowledged, {len(failures)} failed, {len(events)} events; "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items())
    )

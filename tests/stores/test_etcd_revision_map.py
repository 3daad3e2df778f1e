"""The etcd store's revision map, against real etcds: a map belongs to one etcd, each etcd store
has its own by default (an upgrade keeps the map it had), and reads never see etcd revisions the
map does not hold yet.

For the last, a gRPC proxy between kubefabric and the etcd forwards every call unchanged, but can hold the
transaction that writes a chosen kubefabric revision until the test releases it, and reports the
keys of the reads it forwards: so an exact interleaving of kubefabric's own etcd calls is driven
through the real gRPC API, deterministically.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import rpc_pb2
from kubefabric.stores._etcd import META_KEY
from tests._client import Etcd, kv_tuple, prefix_end
from tests._servers import ServerProcess, free_port, kubefabric_command, start_etcd, start_kubefabric

WAIT_SECONDS = 10.0
# Calls that stream both ways; every other etcd call is unary.
STREAMING = ("/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive")


def txn_of(revision: int) -> str:
    """Where the proxy can hold: before etcd sees the transaction writing kubefabric revision `revision`."""
    return f"the etcd transaction of kubefabric revision {revision}"


def answer_to(key: bytes) -> str:
    """Where the proxy can hold: after etcd answered a read of `key`, before kubefabric gets it."""
    return f"etcd's answer to a read of {key!r}"


class EtcdProxy(grpc.GenericRpcHandler):
    """Forwards every etcd call to the real etcd, holding it at the points the test names."""

    def __init__(self, etcd_address: str) -> None:
        self._upstream = grpc.insecure_channel(etcd_address, options=[("grpc.max_receive_message_length", -1)])
        self._changed = threading.Condition()
        self._released: dict[str, threading.Event] = {}
        self._holding: set[str] = set()  # points where a call waits now
        self.ranges: list[bytes] = []  # keys of the Range calls forwarded so far
        self._server = grpc.server(ThreadPoolExecutor(16), handlers=[self])
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def close(self) -> None:
        for released in self._released.values():
            released.set()
        self._server.stop(None)
        self._upstream.close()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in STREAMING:
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: iter(self._upstream.stream_stream(method)(requests))
            )
        return grpc.unary_unary_rpc_method_handler(lambda request, context: self._unary(method, request, context))

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        read = rpc_pb2.RangeRequest.FromString(request).key if method == "/etcdserverpb.KV/Range" else None
        if read is not None:
            with self._changed:
                self.ranges.append(read)
                self._changed.notify_all()
        if method == "/etcdserverpb.KV/Txn":
            txn = rpc_pb2.TxnRequest.FromString(request)
            self._hold(
                txn_of(next((int(op.request_put.value) for op in txn.success if op.request_put.key == META_KEY), 0))
            )
        try:
            answer: bytes = self._upstream.unary_unary(method)(request, timeout=context.time_remaining())
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            context.abort(error.code(), error.details() or "")
        if read is not None:
            self._hold(answer_to(read))
        return answer

    def _hold(self, point: str) -> None:
        released = self._released.get(point)
        if released is None:
            return
        with self._changed:
            self._holding.add(point)
            self._changed.notify_all()
        released.wait(WAIT_SECONDS)

    @contextmanager
    def holding(self, point: str) -> Iterator[threading.Event]:
        """Hold calls at `point` (txn_of, answer_to) until the event is set."""
        released = self._released[point] = threading.Event()
        try:
            yield released
        finally:
            released.set()

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, WAIT_SECONDS), f"kubefabric never {what}"

    def wait_held(self, point: str) -> None:
        self.wait_for(f"reached {point}", lambda: point in self._holding)

    def wait_read(self, key: bytes) -> None:
        self.wait_for(f"read {key!r} from etcd", lambda: key in self.ranges)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[EtcdProxy]:
    etcd = start_etcd(tmp_path)
    proxy = EtcdProxy(etcd.address)
    yield proxy
    proxy.close()
    etcd.stop()


# The etcd store alone, and as the backend of the roles in a topology whose default is SQLite.
ROLES_IN_ETCD = """\
backends:
- name: roles
  endpoint: http://{proxy}
  prefix:
    prefix: clusterroles
"""


@pytest.fixture(params=["etcd", "multi"])
def kubefabric(request: pytest.FixtureRequest, tmp_path: Path, proxy: EtcdProxy) -> Iterator[ServerProcess]:
    endpoint = f"http://{proxy.address}"
    if request.param == "multi":
        (tmp_path / "topology.yaml").write_text(ROLES_IN_ETCD.format(proxy=proxy.address))
        endpoint = f"multi://sqlite://{tmp_path}/state.db"
    server = start_kubefabric(tmp_path, endpoint)
    yield server
    server.stop()


def test_a_read_while_a_commit_is_half_written_to_etcd_sees_the_last_durable_revision(
    proxy: EtcdProxy, kubefabric: ServerProcess
) -> None:
    """One commit of several revisions is several etcd transactions: between two of them etcd
    already holds the first, which kubefabric has neither acknowledged nor mapped yet."""
    roles = b"/registry/clusterroles/"
    first, second, third, blocking = roles + b"a", roles + b"b", roles + b"c", roles + b"blocking"
    elsewhere = b"/registry/configmaps/default/x"  # in SQLite beside the etcd
    with Etcd(kubefabric.channel()) as client, ThreadPoolExecutor(4) as pool:
        client.put(elsewhere, b"x")
        client.put(first, b"old")
        before = client.get(first).kvs[0]
        durable = client.revision()
        with proxy.holding(txn_of(durable + 1)) as blocker, proxy.holding(txn_of(durable + 3)) as second_of_commit:
            # The commit of durable+1 waits in the proxy, so the next writes queue behind it and
            # are committed together. Writes are evaluated one at a time, each reading its key
            # from etcd first: once `third` is read, the writes of `first` and `second` are queued.
            writes = [pool.submit(client.put, blocking, b"x")]
            proxy.wait_held(txn_of(durable + 1))
            for key in (first, second, third):
                writes.append(pool.submit(client.put, key, b"new"))
                proxy.wait_read(key)
            blocker.set()
            # etcd now holds durable+2 (`first`'s new value); its commit is not done.
            proxy.wait_held(txn_of(durable + 3))
            during = client.get(first)
            listed = client.get(b"/registry/", b"/registry0")
            second_of_commit.set()
        assert [write.result().header.revision for write in writes] == [durable + i for i in range(1, 5)]
        assert during.header.revision == durable + 1
        assert [kv_tuple(kv) for kv in during.kvs] == [kv_tuple(before)]
        assert listed.header.revision == durable + 1
        assert [kv.key for kv in listed.kvs] == [first, blocking, elsewhere]
        after = client.get(first)
        assert after.header.revision == durable + 4
        assert (after.kvs[0].value, after.kvs[0].mod_revision) == (b"new", durable + 2)


def test_a_read_answered_while_the_map_drops_its_revision_reads_as_compacted(proxy: EtcdProxy, tmp_path: Path) -> None:
    """The map keeps rows for a while (REVISION_MAPPER_HISTORY); a compaction drops the older ones
    that nothing live names. A read etcd answered just before must not find them gone."""
    server = start_kubefabric(tmp_path, f"http://{proxy.address}", "--revision-mapper-history", "1s")
    key = b"/registry/a"
    try:
        with Etcd(server.channel()) as client, ThreadPoolExecutor(1) as pool:
            created = client.put(key, b"1").header.revision
            client.delete(key)
            latest = client.put(b"/registry/b", b"1").header.revision
            time.sleep(1.5)  # every row is past the map's history now
            with proxy.holding(answer_to(key)) as answered:
                read = pool.submit(client.get, key, revision=created)
                proxy.wait_held(answer_to(key))  # etcd has answered with the key as it was at `created`
                client.compact(latest, physical=True)
                answered.set()
                with pytest.raises(grpc.RpcError) as failed:
                    read.result()
    finally:
        server.stop()
    error = failed.value
    assert isinstance(error, grpc.Call)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    )


# -- which etcd a map belongs to -----------------------------------------------------------------


def etcd_in(workdir: Path) -> ServerProcess:
    workdir.mkdir()
    return start_etcd(workdir)


def ids(etcd: ServerProcess) -> tuple[str, str]:
    """The etcd's cluster and member ids, as the map and its messages spell them."""
    with Etcd(etcd.channel()) as client:
        header = client.status().header
    return f"{header.cluster_id:016x}", f"{header.member_id:016x}"


def refused_start(workdir: Path, endpoint: str) -> str:
    """kubefabric's log when it refuses to start on `endpoint`."""
    with pytest.raises(RuntimeError, match="server exited") as refused:
        start_kubefabric(workdir, endpoint).stop()
    return str(refused.value)


def test_a_map_refuses_another_etcd_naming_both(tmp_path: Path) -> None:
    first = etcd_in(tmp_path / "first")
    server = start_kubefabric(tmp_path, f"http://{first.address}")
    with Etcd(server.channel()) as client:
        client.put(b"/registry/a", b"1")
    server.stop()
    other = etcd_in(tmp_path / "other")
    try:
        log = refused_start(tmp_path, f"http://{other.address}")
        (mine, member), (its, its_member) = ids(first), ids(other)
        assert mine != its
        refusal = next(line for line in log.splitlines() if "belongs to etcd" in line)
        for named in (mine, member, its, its_member, other.address, "--revision-mapper-endpoint"):
            assert named in refusal, (named, refusal)
        # The map is untouched: its own etcd still reads through it.
        server = start_kubefabric(tmp_path, f"http://{first.address}")
        with Etcd(server.channel()) as client:
            assert client.get(b"/registry/a").kvs[0].value == b"1"
        server.stop()
    finally:
        other.stop()
        first.stop()


def test_a_fresh_etcd_with_the_same_ids_is_refused_until_its_map_is_removed(tmp_path: Path) -> None:
    etcd = etcd_in(tmp_path / "first")
    server = start_kubefabric(tmp_path, f"http://{etcd.address}")
    with Etcd(server.channel()) as client:
        client.put(b"/registry/a", b"1")
        client.put(b"/registry/a", b"2")
    server.stop()
    etcd.stop()
    # The same flags over an empty data directory: etcd derives the same cluster and member ids.
    command = list(etcd.command)
    command[command.index("--data-dir") + 1] = str(tmp_path / "fresh-data")
    fresh = ServerProcess(command, etcd.address, tmp_path / "fresh-etcd.log", etcd.env).start()
    try:
        assert ids(fresh) == ids(etcd)
        log = refused_start(tmp_path, f"http://{fresh.address}")
        map_file = tmp_path / "revisions.db"
        refusal = next(line for line in log.splitlines() if "no kubefabric revision" in line)
        for named in (*ids(fresh), f"remove {map_file}", "--revision-mapper-endpoint"):
            assert named in refusal, (named, refusal)
        map_file.unlink()
        server = start_kubefabric(tmp_path, f"http://{fresh.address}")
        with Etcd(server.channel()) as client:
            assert not client.get(b"/registry/a").kvs
            assert client.put(b"/registry/a", b"new").header.revision == client.revision()
        server.stop()
    finally:
        fresh.stop()


def start_in(workdir: Path, endpoint: str, *extra: str) -> ServerProcess:
    """kubefabric run from `workdir`, without --revision-mapper-endpoint: its default files land there."""
    address = f"127.0.0.1:{free_port()}"
    command = kubefabric_command(address, endpoint, "--metrics-address", f"127.0.0.1:{free_port()}", *extra)
    return ServerProcess(command, address, workdir / "kubefabric.log", cwd=workdir).start()


def map_owner(path: Path) -> tuple[str, str]:
    with sqlite3.connect(path) as db:
        cluster, member = db.execute("SELECT cluster, member FROM etcd").fetchone()
    return cluster, member


TWO_ETCDS = """\
backends:
- name: rbac
  endpoint: http://{rbac}
  prefix:
    prefix: clusterroles
- name: pods
  endpoint: http://{pods}
  prefix:
    prefix: pods
"""


def history(client: Etcd, start: bytes, end: bytes, first: int, last: int) -> list[tuple[bytes, bytes, int]]:
    """Every event in [start, end) from revision `first` to `last`, read back through a watch."""
    requests = iter(
        [
            rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=start, range_end=end, start_revision=first)
            )
        ]
    )
    events: list[tuple[bytes, bytes, int]] = []
    answers = client.watch.Watch(requests, timeout=WAIT_SECONDS)
    for answer in answers:
        events.extend((event.kv.key, event.kv.value, event.kv.mod_revision) for event in answer.events)
        if events and events[-1][2] >= last:
            answers.cancel()
            break
    return events


def test_each_etcd_backend_keeps_its_own_map_by_default(tmp_path: Path) -> None:
    rbac, pods = etcd_in(tmp_path / "rbac"), etcd_in(tmp_path / "pods")
    topology = tmp_path / "topology.yaml"
    topology.write_text(TWO_ETCDS.format(rbac=rbac.address, pods=pods.address))
    endpoint = ("multi://sqlite://./db/state.db", "--topology-config", str(topology))
    try:
        server = start_in(tmp_path, *endpoint)
        with Etcd(server.channel()) as client:
            written = [
                (key, value, int(client.put(key, value).header.revision))
                for key, value in [
                    (b"/registry/clusterroles/view", b"1"),
                    (b"/registry/pods/default/web", b"1"),
                    (b"/registry/clusterroles/view", b"2"),
                    (b"/registry/pods/default/web", b"2"),
                ]
            ]
        server.stop()
        maps = sorted((tmp_path / "db").glob("revisions*.db"))
        assert [path.name for path in maps] == sorted(
            f"revisions-{etcd.address.replace(':', '-')}.db" for etcd in (rbac, pods)
        )
        for etcd in (rbac, pods):
            assert map_owner(tmp_path / "db" / f"revisions-{etcd.address.replace(':', '-')}.db") == ids(etcd)
        # After a restart both translate their history through their own maps.
        server = start_in(tmp_path, *endpoint)
        with Etcd(server.channel()) as client:
            assert history(client, b"/registry/", prefix_end(b"/registry/"), 1, written[-1][2]) == written
        server.stop()
    finally:
        rbac.stop()
        pods.stop()


def test_an_upgrade_moves_the_shared_default_map_into_the_etcds_own(tmp_path: Path) -> None:
    etcd = etcd_in(tmp_path / "etcd")
    endpoint = f"http://{etcd.address}"
    shared = tmp_path / "db" / "revisions.db"
    try:
        # What earlier releases wrote by default: one map file for every etcd, without its owner.
        server = start_in(tmp_path, endpoint, "--revision-mapper-endpoint", "sqlite://./db/revisions.db")
        with Etcd(server.channel()) as client:
            written = [
                (b"/registry/a", value, int(client.put(b"/registry/a", value).header.revision))
                for value in (b"1", b"2", b"3")
            ]
        server.stop()
        with sqlite3.connect(shared) as db:
            db.execute("DROP TABLE etcd")
        server = start_in(tmp_path, endpoint)
        with Etcd(server.channel()) as client:
            # The history is all there, not "compacted": the map came along.
            assert history(client, b"/registry/a", b"/registry/b", written[0][2], written[-1][2]) == written
            assert client.put(b"/registry/a", b"4").header.revision == written[-1][2] + 1
        server.stop()
        own = tmp_path / "db" / f"revisions-{etcd.address.replace(':', '-')}.db"
        assert map_owner(own) == ids(etcd)
        assert "lacks its history" not in (tmp_path / "kubefabric.log").read_text()
        assert shared.exists()
    finally:
        etcd.stop()

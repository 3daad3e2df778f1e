"""Backups: `etcdctl snapshot save` against kubefabric, `kubefabric snapshot restore` into another kind
of store, the snapshot as a real etcd data directory and back, and `etcdctl defrag`.

Every comparison is between two real servers answering over gRPC: the one the snapshot was taken
from and the one restored from it, revisions, history, watches and leases included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd, put_op
from tests._databases import MYSQL_HOST, MYSQL_PORT
from tests._pods import PODS, pod, pod_key
from tests._servers import REPO_ROOT, ServerProcess, etcd_binary, free_port, start_etcd, start_kubefabric
from tests._targets import STORE_ENDPOINTS
from tests.conformance._support import ERR_COMPACTED, WatchStream, grant_lease, raises_rpc_error
from tests.etcdctl.test_etcdctl import Etcdctl, etcdctl_binary

COMMAND_TIMEOUT = 120.0
LEASE_TTL = 600
ALL_KEYS = {"key": b"\0", "range_end": b"\0"}

# Keys the test topology (tests/_targets.py MULTI_TOPOLOGY) spreads over all its backends.
CONFIGMAP = b"/registry/configmaps/default/"  # the default SQLite
POD = b"/registry/pods/default/p"  # PostgreSQL
SYSTEM_POD = b"/registry/pods/kube-system/k"  # MariaDB
ROLE = b"/registry/roles/default/r"  # etcd
SHIRT = b"/registry/stable.example.com/shirts/default/s"  # a second SQLite file


class Store:
    """A store endpoint in its own work directory, with the servers it needs."""

    def __init__(self, kind: str, workdir: Path) -> None:
        workdir.mkdir()
        self.workdir = workdir
        self.endpoint, self.companions = STORE_ENDPOINTS[kind](workdir)

    def flags(self) -> list[str]:
        """What start_kubefabric passes besides --endpoint, for the offline command."""
        flags = ["--endpoint", self.endpoint, "--revision-mapper-endpoint", f"sqlite://{self.workdir}/revisions.db"]
        if self.endpoint.startswith("multi://"):
            flags += ["--topology-config", str(self.workdir / "topology.yaml")]
        return flags

    def serve(self) -> ServerProcess:
        server = start_kubefabric(self.workdir, self.endpoint)
        server.companions, self.companions = self.companions, []
        return server

    def stop(self) -> None:
        for companion in self.companions:
            companion.stop()


@pytest.fixture
def stores() -> Iterator[list[Store]]:
    """Stores a test made; their servers are stopped at the end, passed or not."""
    made: list[Store] = []
    yield made
    for store in made:
        store.stop()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def restore(snapshot: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefabric", "snapshot", "restore", str(snapshot), *flags],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=COMMAND_TIMEOUT,
    )


def etcdctl_offline(*args: str) -> subprocess.CompletedProcess[str]:
    """etcdctl's commands on files (snapshot status, snapshot restore)."""
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run([etcdctl_binary(), *args], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)


def save_snapshot(server: ServerProcess, path: Path) -> None:
    assert Etcdctl(server)("snapshot", "save", str(path)).startswith("Snapshot saved at")


def write_history(client: Etcd, compact: bool = True) -> int:
    """Puts, updates, deletes, a two-key transaction and a leased key in every backend of the test
    topology, a physical compaction in the middle (unless not to `compact`), more writes after it;
    the compaction revision, 0 if none."""
    for key in (CONFIGMAP + b"a", CONFIGMAP + b"b", POD, SYSTEM_POD, ROLE, SHIRT):
        client.put(key, b"first " + key)
    client.put(CONFIGMAP + b"a", b"second")
    client.delete(CONFIGMAP + b"b")
    # Written in reverse key order: a restored watch must replay them as they were written.
    client.txn([], [put_op(CONFIGMAP + b"d", b"txn"), put_op(CONFIGMAP + b"c", b"txn")])
    lease = grant_lease(client, LEASE_TTL)
    client.put(CONFIGMAP + b"leased", b"with a lease", lease=lease)
    client.put(SYSTEM_POD, b"second")
    compacted = client.put(POD, b"second").header.revision if compact else 0
    if compact:
        client.compact(compacted, physical=True)
    else:
        client.put(POD, b"second")
    client.put(CONFIGMAP + b"a", b"third")
    client.delete(POD)
    client.put(CONFIGMAP + b"b", b"again")
    client.txn([], [put_op(CONFIGMAP + b"f", b"txn"), put_op(CONFIGMAP + b"e", b"txn")])
    client.put(ROLE, b"second", lease=lease)
    client.put(SHIRT, b"second")
    return compacted


def range_answer(response: rpc_pb2.RangeResponse) -> tuple[Any, ...]:
    return response.header.revision, response.count, response.more, [kv.SerializeToString() for kv in response.kvs]


def observe(client: Etcd, compacted: int) -> dict[str, Any]:
    """What a client can see of the whole history a snapshot holds."""
    head = client.revision()
    seen: dict[str, Any] = {"head": range_answer(client.get(**ALL_KEYS))}
    for revision in range(max(compacted, 1), head + 1):
        seen[f"range at {revision}"] = range_answer(client.get(**ALL_KEYS, revision=revision))
    if compacted:
        with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
            client.get(**ALL_KEYS, revision=compacted - 1)
    leases = client.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=10).leases
    seen["leases"] = sorted(
        (answer.ID, answer.grantedTTL, sorted(answer.keys))
        for answer in (
            client.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=10)
            for lease in leases
        )
    )
    with WatchStream(client) as watch:
        watch_id = watch.create(**ALL_KEYS, start_revision=compacted + 1, prev_kv=True)
        events = []
        while not events or events[-1].kv.mod_revision < head:
            response = watch.next()
            assert response.watch_id == watch_id and not response.canceled, response
            events.extend(response.events)
        watch.assert_quiet()
    seen["watch"] = [event.SerializeToString() for event in events]
    return seen


# Each kind of store is snapshotted once and restored into once. An etcd store takes no history
# compacted before (see test_an_etcd_store_takes_compacted_history_through_etcds_own_restore).
PAIRS = [
    ("sqlite", "postgres", True),
    ("postgres", "sqlite", True),
    ("mysql", "etcd", False),
    ("etcd", "multi", True),
    ("multi", "mysql", True),
]


@pytest.mark.parametrize(("source_kind", "target_kind", "compact"), PAIRS, ids=[f"{s}-to-{t}" for s, t, _ in PAIRS])
def test_snapshot_of_one_store_restores_into_another_with_its_history(
    source_kind: str,
    target_kind: str,
    compact: bool,
    tmp_path: Path,
    stores: list[Store],
    servers: list[ServerProcess],
) -> None:
    source_store, target_store = Store(source_kind, tmp_path / "source"), Store(target_kind, tmp_path / "target")
    stores += [source_store, target_store]
    source = source_store.serve()
    servers.append(source)
    with Etcd(source.channel()) as client:
        compacted = write_history(client, compact)
        expected = observe(client, compacted)
    snapshot = tmp_path / "backup.db"
    save_snapshot(source, snapshot)

    restored = restore(snapshot, *target_store.flags())
    assert restored.returncode == 0, restored.stderr
    compaction = f", compacted at {compacted}" if compact else ""
    assert f"key versions at revision {expected['head'][0]}{compaction}, 1 leases" in restored.stdout

    target = target_store.serve()
    servers.append(target)
    with Etcd(target.channel()) as client:
        assert observe(client, compacted) == expected
        # The restored store goes on from the snapshot's revision.
        assert client.put(CONFIGMAP + b"after", b"restore").header.revision == expected["head"][0] + 1


def test_a_restore_refuses_a_store_that_holds_data(tmp_path: Path, stores: list[Store]) -> None:
    source_store = Store("sqlite", tmp_path / "source")
    stores.append(source_store)
    source = source_store.serve()
    try:
        with Etcd(source.channel()) as client:
            client.put(b"/registry/a", b"kept")
        save_snapshot(source, tmp_path / "backup.db")
    finally:
        source.stop()

    refused = restore(tmp_path / "backup.db", *source_store.flags())
    assert refused.returncode == 1
    assert "the target store is not empty (revision 2, 0 leases): restore into a new database" in refused.stderr
    source = source_store.serve()
    try:
        with Etcd(source.channel()) as client:
            assert [kv.value for kv in client.get(b"/registry/a").kvs] == [b"kept"]
            assert client.revision() == 2
    finally:
        source.stop()


def test_damaged_files_are_refused_with_the_reason(tmp_path: Path, stores: list[Store]) -> None:
    source_store = Store("sqlite", tmp_path / "source")
    stores.append(source_store)
    source = source_store.serve()
    try:
        with Etcd(source.channel()) as client:
            for index in range(50):
                client.put(b"/registry/k%d" % index, b"v" * 200)
        good = tmp_path / "backup.db"
        save_snapshot(source, good)
    finally:
        source.stop()
    target = f"sqlite://{tmp_path}/target.db"
    data = good.read_bytes()

    flipped = tmp_path / "flipped.db"
    flipped.write_bytes(data[:9000] + bytes([data[9000] ^ 0xFF]) + data[9001:])
    refused = restore(flipped, "--endpoint", target)
    assert refused.returncode == 1
    assert f"{flipped}: sha256 mismatch, the file is damaged or incomplete" in refused.stderr
    # etcd's own tool agrees that the file is damaged.
    assert (
        "expected sha256"
        in etcdctl_offline("snapshot", "restore", str(flipped), "--data-dir", str(tmp_path / "d")).stderr
    )

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[:10000])
    refused = restore(truncated, "--endpoint", target)
    assert refused.returncode == 1
    assert f"{truncated}: no sha256 at its end (10000 bytes): an incomplete snapshot" in refused.stderr
    refused = restore(truncated, "--skip-hash-check", "--endpoint", target)
    assert refused.returncode == 1
    assert f"{truncated}: not an etcd snapshot: truncated: the database has" in refused.stderr

    not_a_snapshot = tmp_path / "notes.txt"
    not_a_snapshot.write_text("hello\n" * 1000)
    refused = restore(not_a_snapshot, "--endpoint", target)
    assert refused.returncode == 1
    assert f"{not_a_snapshot}: not an etcd snapshot: it does not start with a bbolt database" in refused.stderr

    refused = restore(tmp_path / "missing.db", "--endpoint", target)
    assert refused.returncode == 1
    assert f"{tmp_path / 'missing.db'}: No such file or directory" in refused.stderr
    assert not (tmp_path / "target.db").exists()  # nothing was touched on the way


def start_etcd_on(data_dir: Path, name: str, peer_port: int, log: Path) -> ServerProcess:
    address = f"127.0.0.1:{free_port()}"
    command = [
        etcd_binary(),
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", f"http://{address}",
        "--advertise-client-urls", f"http://{address}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--log-level", "error",
    ]  # fmt: skip
    env = {"ETCD_UNSUPPORTED_ARCH": os.uname().machine.replace("aarch64", "arm64").replace("x86_64", "amd64")}
    return ServerProcess(command, address, log, env).start()


def test_a_kubefabric_snapshot_is_a_real_etcd_data_directory(
    tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    source_store = Store("sqlite", tmp_path / "source")
    stores.append(source_store)
    source = source_store.serve()
    servers.append(source)
    with Etcd(source.channel()) as client:
        compacted = write_history(client)
        expected = observe(client, compacted)
    snapshot = tmp_path / "backup.db"
    save_snapshot(source, snapshot)
    status = etcdctl_offline("snapshot", "status", str(snapshot), "-w", "json")
    assert status.returncode == 0, status.stderr  # etcd's bbolt integrity check passed
    assert f'"revision":{expected["head"][0]}' in status.stdout

    peer_port = free_port()
    peer_url = f"http://127.0.0.1:{peer_port}"
    data_dir = tmp_path / "etcd-restored"
    restored = etcdctl_offline(
        "snapshot", "restore", str(snapshot), "--data-dir", str(data_dir),
        "--name", "restored", "--initial-cluster", f"restored={peer_url}", "--initial-advertise-peer-urls", peer_url,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    etcd = start_etcd_on(data_dir, "restored", peer_port, tmp_path / "etcd.log")
    servers.append(etcd)
    with Etcd(etcd.channel()) as client:
        assert observe(client, compacted) == expected
    # kubefabric adopts that etcd as its store, history included; leases granted before adoption
    # stay etcd's own (they expire there), so kubefabric does not list them, but keys keep them.
    adopted = start_kubefabric(tmp_path, f"http://{etcd.address}")
    servers.append(adopted)
    with Etcd(adopted.channel()) as client:
        seen = observe(client, compacted)
    assert seen.pop("leases") == []
    assert seen == {name: value for name, value in expected.items() if name != "leases"}


def test_an_etcd_store_takes_compacted_history_through_etcds_own_restore(
    tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    source_store = Store("sqlite", tmp_path / "source")
    stores.append(source_store)
    source = source_store.serve()
    servers.append(source)
    with Etcd(source.channel()) as client:
        write_history(client)
    snapshot = tmp_path / "backup.db"
    save_snapshot(source, snapshot)

    target_store = Store("etcd", tmp_path / "target")
    stores.append(target_store)
    refused = restore(snapshot, *target_store.flags())
    assert refused.returncode == 1
    assert (
        "3 keys for an etcd store (such as '/registry/configmaps/default/a') were created before the snapshot's "
        "compaction point, and etcd would count their versions from 1 again. Restore the snapshot into that "
        "etcd's data directory instead (etcdctl snapshot restore, then start etcd on it)"
    ) in refused.stderr
    target = target_store.serve()
    servers.append(target)
    with Etcd(target.channel()) as client:
        assert client.revision() == 1  # untouched


def test_a_real_etcd_snapshot_imports_with_its_revisions(
    tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    (tmp_path / "etcd").mkdir()
    etcd = start_etcd(tmp_path / "etcd")
    servers.append(etcd)
    with Etcd(etcd.channel()) as client:
        compacted = write_history(client)
        expected = observe(client, compacted)
    snapshot = tmp_path / "etcd-backup.db"
    save_snapshot(etcd, snapshot)

    target_store = Store("postgres", tmp_path / "target")
    stores.append(target_store)
    restored = restore(snapshot, *target_store.flags())
    assert restored.returncode == 0, restored.stderr
    target = target_store.serve()
    servers.append(target)
    with Etcd(target.channel()) as client:
        assert observe(client, compacted) == expected


def mysql_files_size(endpoint: str) -> int:
    """Bytes of the InnoDB files of the endpoint's database (information_schema.tables' sizes are
    statistics InnoDB refreshes only now and then)."""
    import asyncmy

    async def query() -> int:
        connection = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(
                    "SELECT SUM(file_size) FROM information_schema.innodb_sys_tablespaces WHERE name LIKE %s",
                    (endpoint.rpartition("/")[2] + "/%",),
                )
                (size,) = await cursor.fetchone()
                return int(size)
        finally:
            await connection.ensure_closed()

    return asyncio.run(query())


@pytest.mark.parametrize("store", list(STORE_ENDPOINTS))
def test_etcdctl_defrag_gives_back_the_space_of_compacted_versions(
    store: str, tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    target = Store(store, tmp_path / "store")
    stores.append(target)
    server = target.serve()
    servers.append(server)

    def size(client: Etcd) -> int:
        return mysql_files_size(target.endpoint) if store == "mysql" else int(client.status().dbSize)

    with Etcd(server.channel()) as client:
        for index in range(200):
            client.put(b"/registry/big/%04d" % index, os.urandom(16 * 1024))
        client.put(b"/registry/small", b"kept")
        client.delete(b"/registry/big/", b"/registry/big0")
        client.compact(client.revision(), physical=True)
        full = size(client)
        assert full > 3_000_000
        assert Etcdctl(server)("defrag") == f"Finished defragmenting etcd member[{server.address}]\n"
        assert size(client) < full / 4
        assert [kv.value for kv in client.get(b"/registry/", b"/registry0").kvs] == [b"kept"]
        assert client.put(b"/registry/small", b"still writable").header.revision == 204


def test_defrag_gives_back_the_space_of_compacted_sqlite_rows(tmp_path: Path, servers: list[ServerProcess]) -> None:
    database = tmp_path / "state.db"
    server = start_kubefabric(tmp_path, f"sqlite://{database}")
    servers.append(server)
    files = [database, database.with_name("state.db-wal")]

    def size() -> int:
        return sum(file.stat().st_size for file in files if file.exists())

    with Etcd(server.channel()) as client:
        for index in range(400):
            client.put(b"/registry/big/%04d" % index, os.urandom(16 * 1024))
        client.put(b"/registry/small", b"kept")
        client.delete(b"/registry/big/", b"/registry/big0")
        client.compact(client.revision(), physical=True)
        full = size()
        assert full > 6_000_000
        assert Etcdctl(server)("defrag") == f"Finished defragmenting etcd member[{server.address}]\n"
        assert size() < full / 10
        assert [kv.value for kv in client.get(b"/registry/", b"/registry0").kvs] == [b"kept"]


def test_a_snapshot_taken_during_writes_is_the_state_at_one_revision(
    tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    source_store, target_store = Store("sqlite", tmp_path / "source"), Store("postgres", tmp_path / "target")
    stores += [source_store, target_store]
    source = source_store.serve()
    servers.append(source)
    with Etcd(source.channel()) as client:
        for index in range(2000):
            client.put(b"/registry/configmaps/default/%04d" % index, b"v" * 512)
    stop = threading.Event()

    def write_meanwhile() -> None:
        with Etcd(source.channel()) as client:
            index = 0
            while not stop.is_set():
                client.put(b"/registry/configmaps/default/%04d" % (index % 2000), b"rewritten %d" % index)
                index += 1

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    try:
        snapshot = tmp_path / "backup.db"
        save_snapshot(source, snapshot)
    finally:
        stop.set()
        writer.join()
    with Etcd(source.channel()) as client:
        head = client.revision()
        status = etcdctl_offline("snapshot", "status", str(snapshot), "-w", "json")
        revision = int(status.stdout.split('"revision":')[1].split(",")[0])
        assert 2001 <= revision < head  # writes went on while it was taken
        expected = range_answer(client.get(**ALL_KEYS, revision=revision))[1:]

    assert restore(snapshot, *target_store.flags()).returncode == 0
    target = target_store.serve()
    servers.append(target)
    with Etcd(target.channel()) as client:
        assert client.revision() == revision
        assert range_answer(client.get(**ALL_KEYS))[1:] == expected


def test_a_restored_store_answers_label_selectors(
    tmp_path: Path, stores: list[Store], servers: list[ServerProcess]
) -> None:
    source_store, target_store = Store("sqlite", tmp_path / "source"), Store("mysql", tmp_path / "target")
    stores += [source_store, target_store]
    source = source_store.serve()
    servers.append(source)
    with Etcd(source.channel()) as client:
        for number in range(300):
            client.put(pod_key(number), pod(number))
        client.put(pod_key(100), pod(1))  # its label changes from app0 to app1
        assert [kv.key for kv in client.get_prefix(PODS, labelSelector="app=app0").kvs] == [pod_key(0), pod_key(200)]
    snapshot = tmp_path / "backup.db"
    save_snapshot(source, snapshot)

    assert restore(snapshot, *target_store.flags()).returncode == 0
    target = target_store.serve()
    servers.append(target)
    with Etcd(target.channel()) as client:
        assert [kv.key for kv in client.get_prefix(PODS, labelSelector="app=app0").kvs] == [pod_key(0), pod_key(200)]
        assert client.get_prefix(PODS, labelSelector="app=app1", count_only=True).count == 4

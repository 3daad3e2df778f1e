"""A running multi:// kubefabric over every kind of database, and what each database holds when
read directly, past kubefabric (multi_store's MULTI_TOPOLOGY: rbac in a real etcd, kube-system in
MariaDB, pods in PostgreSQL, stable.example.com/shirts in a SQLite file, the rest in the default
SQLite file)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncmy
import asyncpg
import grpc
import yaml

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._servers import REPO_ROOT, ServerProcess

# Bookkeeping of an etcd store, outside Kubernetes' /registry/ tree.
ETCD_META_KEY = b"/kubefabric/revision"
BACKENDS = ("rbac", "kube-system", "pods", "shirts", "default")


@dataclass
class Multi:
    """The server, its work directory and every backend's endpoint by name."""

    server: ServerProcess
    workdir: Path
    endpoint: str  # multi://...
    endpoints: dict[str, str]

    @property
    def topology(self) -> Path:
        return self.workdir / "topology.yaml"

    @classmethod
    def of(cls, server: ServerProcess, workdir: Path, endpoint: str) -> Multi:
        document = yaml.safe_load((workdir / "topology.yaml").read_text())
        endpoints = {entry["name"]: entry["endpoint"] for entry in document["backends"]}
        endpoints["default"] = endpoint.removeprefix("multi://")
        return cls(server, workdir, endpoint, endpoints)

    def keys_in(self, backend: str, live_only: bool = False) -> set[bytes]:
        """The keys the backend's database holds (every version, tombstones too, unless live_only)."""
        return stored_keys(self.endpoints[backend], live_only)

    def placement(self) -> dict[str, set[bytes]]:
        return {backend: self.keys_in(backend) for backend in self.endpoints}

    def route(self, *keys: bytes) -> dict[bytes, str]:
        """`kubefabric route` for each key: the name of its backend."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubefabric",
                "route",
                *(key.decode() for key in keys),
                "--topology-config",
                str(self.topology),
                "--endpoint",
                self.endpoint,
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        routed = {}
        for line in result.stdout.splitlines():
            key, _, rest = line.partition(" -> ")
            routed[key.encode()] = rest.split(" ", 1)[0]
        return routed


def stored_keys(endpoint: str, live_only: bool = False) -> set[bytes]:
    scheme = endpoint.partition("://")[0]
    if scheme == "sqlite":
        return _sqlite_keys(endpoint, live_only)
    if scheme == "postgres":
        return asyncio.run(_postgres_keys(endpoint, live_only))
    if scheme == "mysql":
        return asyncio.run(_mysql_keys(endpoint, live_only))
    assert scheme == "http", endpoint
    return _etcd_keys(endpoint)


# The live version of a key is the row valid up to LIVE (kubefabric.stores' LIVE, 1 << 62).
_LIVE = f" WHERE superseded = {1 << 62}"


def _sqlite_keys(endpoint: str, live_only: bool) -> set[bytes]:
    path = endpoint.removeprefix("sqlite://").partition("?")[0]
    if not Path(path).exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(f"SELECT DISTINCT key FROM kv{_LIVE if live_only else ''}").fetchall()
    finally:
        db.close()
    return {bytes(row[0]) for row in rows}


async def _postgres_keys(endpoint: str, live_only: bool) -> set[bytes]:
    connection = await asyncpg.connect(endpoint, timeout=10)
    try:
        rows = await connection.fetch(f"SELECT DISTINCT key FROM kv{_LIVE if live_only else ''}")
    finally:
        await connection.close()
    return {bytes(row[0]) for row in rows}


_MYSQL = re.compile(r"mysql://(?P<user>[^:@]*):(?P<password>[^@]*)@tcp\((?P<host>[^:]+):(?P<port>\d+)\)/(?P<db>\w+)")


async def _mysql_keys(endpoint: str, live_only: bool) -> set[bytes]:
    parts = _MYSQL.fullmatch(endpoint)
    assert parts is not None, endpoint
    connection = await asyncmy.connect(
        host=parts["host"],
        port=int(parts["port"]),
        user=parts["user"],
        password=parts["password"],
        database=parts["db"],
        connect_timeout=10,
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(f"SELECT DISTINCT `key` FROM kv{_LIVE if live_only else ''}")
            rows = await cursor.fetchall()
    finally:
        await connection.ensure_closed()
    return {bytes(row[0]) for row in rows}


def _etcd_keys(endpoint: str) -> set[bytes]:
    """Every live key of the etcd, its bookkeeping key left out (an etcd keeps no tombstones to list)."""
    with grpc.insecure_channel(endpoint.removeprefix("http://")) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        response = kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True), timeout=10)
    return {item.key for item in response.kvs} - {ETCD_META_KEY}


class MariadbRevisionLock:
    """Another session holding the row lock on the `revision` row of a kubefabric database's meta
    table: kubefabric's reads (consistent snapshots) go on, but every commit to that database waits,
    as it would on a hung database server, until the lock is released or the waiting connection dies."""

    def __init__(self, endpoint: str) -> None:
        parts = _MYSQL.fullmatch(endpoint)
        assert parts is not None, endpoint
        self._parts = parts
        self._loop = asyncio.new_event_loop()
        self._connection: asyncmy.Connection | None = None

    def __enter__(self) -> MariadbRevisionLock:
        async def lock() -> asyncmy.Connection:
            parts = self._parts
            connection = await asyncmy.connect(
                host=parts["host"],
                port=int(parts["port"]),
                user=parts["user"],
                password=parts["password"],
                database=parts["db"],
                autocommit=False,
                connect_timeout=10,
            )
            async with connection.cursor() as cursor:
                await cursor.execute("START TRANSACTION")
                await cursor.execute("SELECT value FROM meta WHERE name = 'revision' FOR UPDATE")
            return connection

        self._connection = self._loop.run_until_complete(lock())
        return self

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        async def query() -> list[tuple[object, ...]]:
            assert self._connection is not None
            async with self._connection.cursor() as cursor:
                await cursor.execute(sql, args or None)
                return list(await cursor.fetchall())

        return self._loop.run_until_complete(query())

    def waiting(self) -> list[int]:
        """The ids of kubefabric's connections waiting for the lock to commit."""
        rows = self._query(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND info LIKE 'UPDATE meta%%'",
            (self._parts["db"],),
        )
        return [int(str(row[0])) for row in rows]

    def kill_waiting(self) -> None:
        """The waiting connections die, as when the database server goes away under them."""
        for connection_id in self.waiting():
            self._query(f"KILL {connection_id}")

    def __exit__(self, *exc: object) -> None:
        try:
            if self._connection is not None:
                self._query("ROLLBACK")
                self._loop.run_until_complete(self._connection.ensure_closed())
        finally:
            self._loop.close()

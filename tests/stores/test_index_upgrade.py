"""A database written before the selector index existed (schema version 1), or before the index held the rows
garbage collection finds versions by (version 2), gets its full index on start-up.

An older database is made the way it was: kubefabric writes objects, stops, and what the older version
lacked is taken away again (the index and its meta row, or the garbage collection rows). The next start
must upgrade the schema, index every stored version (current and past), and answer selections at the head
and at past revisions, and lookups by uid and by owner, as if the index had always been there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from kubefabric.stores import KeyValue, Lookup, OwnershipRefused, open_store
from tests._client import Etcd, prefix_end
from tests._databases import mysql_connect, mysql_endpoint, postgres_endpoint
from tests._servers import start_kubefabric

PODS = b"/registry/pods/"
# What version 1 lacked: the attribute table and the meta row saying the index is complete.
TO_VERSION_1 = [
    "DROP TABLE attribute",
    "DELETE FROM meta WHERE name = 'index_complete'",
    "UPDATE meta SET value = 1 WHERE name = 'schema_version'",
]
# What version 2 lacked: the rows garbage collection finds versions by.
TO_VERSION_2 = [
    "DELETE FROM attribute WHERE name IN ('u', 'g') OR name LIKE 'o:%'",
    "UPDATE meta SET value = 2 WHERE name = 'schema_version'",
]


def pod(name: str, app: str, owner: str = "", blocking: bool = False) -> bytes:
    metadata: dict[str, object] = {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": {"app": app}}
    if owner:
        reference = {"apiVersion": "v1", "kind": "Pod", "name": owner, "uid": f"uid-{owner}"}
        metadata["ownerReferences"] = [reference | {"blockOwnerDeletion": blocking}]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {}}).encode()


def downgrade_sqlite(endpoint: str, statements: list[str]) -> None:
    connection = sqlite3.connect(endpoint.removeprefix("sqlite://"))
    with connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def downgrade_postgres(endpoint: str, statements: list[str]) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(endpoint)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def downgrade_mysql(endpoint: str, statements: list[str]) -> None:

    async def run() -> None:
        connection = await mysql_connect(endpoint)
        try:
            async with connection.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
            await connection.commit()
        finally:
            connection.close()

    asyncio.run(run())


STORES: dict[str, tuple[Callable[[Path], str], Callable[[str, list[str]], None]]] = {
    "sqlite": (lambda workdir: f"sqlite://{workdir}/state.db", downgrade_sqlite),
    "postgres": (lambda workdir: postgres_endpoint(), downgrade_postgres),
    "mysql": (lambda workdir: mysql_endpoint(), downgrade_mysql),
}


def selected(channel: object, selector: str, revision: int = 0) -> list[bytes]:
    kv = rpc_pb2_grpc.KVStub(channel)
    response = kv.Range(
        rpc_pb2.RangeRequest(key=PODS, range_end=prefix_end(PODS), revision=revision, labelSelector=selector)
    )
    assert response.count == len(response.kvs)
    return [item.key.removeprefix(PODS) for item in response.kvs]


def found(endpoint: str, names: tuple[str, ...], values: tuple[str, ...] = ()) -> list[bytes]:
    """What the store, opened on its own once the server has stopped, finds by its index."""

    def unused(kv: KeyValue) -> bool:
        raise AssertionError("a SQL store answers from its index")

    async def find() -> list[bytes]:
        store = open_store(endpoint)
        # The stopped server's session, and its lock on the database, may take the database a moment to end.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                await store.open()
                break
            except OwnershipRefused:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        try:
            return [kv.key.removeprefix(PODS) for kv in await store.find(Lookup(names, values, unused), b"", 0)]
        finally:
            await store.close()

    return asyncio.run(find())


@pytest.mark.parametrize("store", STORES)
def test_an_older_database_is_indexed_on_start_up(store: str, tmp_path: Path) -> None:
    make_endpoint, downgrade = STORES[store]
    endpoint = make_endpoint(tmp_path)
    server = start_kubefabric(tmp_path, endpoint)
    with Etcd(server.channel()) as etcd:
        for number in range(30):
            etcd.put(PODS + b"p%02d" % number, pod(f"p{number:02d}", "web" if number % 3 else "db"))
        before_relabel = etcd.revision()
        for number in range(0, 30, 2):
            etcd.put(PODS + b"p%02d" % number, pod(f"p{number:02d}", "api"))
        etcd.delete(PODS + b"p29")
    server.stop()
    downgrade(endpoint, TO_VERSION_1)

    server = start_kubefabric(tmp_path, endpoint)
    try:
        log = server.log.read_text()
        assert "upgrading" in log and "selector index built: 45 versions" in log, log
        with server.channel() as channel:
            assert selected(channel, "app=db") == [b"p03", b"p09", b"p15", b"p21", b"p27"]
            assert selected(channel, "app=api") == [b"p%02d" % n for n in range(0, 30, 2)]
            assert selected(channel, "app=db", before_relabel) == [b"p%02d" % n for n in range(0, 30, 3)]
            assert selected(channel, "app notin (api,web)", before_relabel) == [b"p%02d" % n for n in range(0, 30, 3)]
            rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=PODS + b"p99", value=pod("p99", "db")))
            assert selected(channel, "app=db")[-1] == b"p99"
    finally:
        server.stop()
    assert found(endpoint, ("u",), ("uid-p03", "uid-p29", "uid-p99")) == [b"p03", b"p99"]


@pytest.mark.parametrize("store", STORES)
def test_a_database_without_owner_rows_is_indexed_again_on_start_up(store: str, tmp_path: Path) -> None:
    make_endpoint, downgrade = STORES[store]
    endpoint = make_endpoint(tmp_path)
    server = start_kubefabric(tmp_path, endpoint)
    with Etcd(server.channel()) as etcd:
        etcd.put(PODS + b"owner", pod("owner", "web"))
        for number in range(10):
            etcd.put(PODS + b"d%d" % number, pod(f"d{number}", "db", "owner", blocking=number % 2 == 0))
        etcd.put(PODS + b"d9", pod("d9", "web"))  # no longer owned
        etcd.delete(PODS + b"d8")
    server.stop()
    downgrade(endpoint, TO_VERSION_2)

    server = start_kubefabric(tmp_path, endpoint)
    try:
        log = server.log.read_text()
        assert "upgrading" in log and "selector index built: 12 versions" in log, log
        with server.channel() as channel:
            assert selected(channel, "app=web") == [b"d9", b"owner"]
            assert selected(channel, "app=db") == [b"d%d" % n for n in range(8)]
    finally:
        server.stop()
    assert found(endpoint, ("u",), ("uid-owner", "uid-d3", "uid-d8")) == [b"d3", b"owner"]
    assert found(endpoint, ("o:uid-owner",)) == [b"d%d" % n for n in range(8)]
    assert found(endpoint, ("o:uid-owner", "o:uid-d3"), ("b",)) == [b"d0", b"d2", b"d4", b"d6"]

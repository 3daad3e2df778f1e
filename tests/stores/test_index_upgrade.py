"""A database written before the selector index existed (schema version 1) gets its index on start-up.

The version-1 database is made the way it was: kubefabric writes objects, stops, and the index and
its meta row are taken away again, leaving exactly the tables version 1 had. The next start must
upgrade the schema, index every stored version (current and past), and answer selections at the head
and at past revisions as if the index had always been there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import Etcd, prefix_end
from tests._databases import mysql_connect, mysql_endpoint, postgres_endpoint
from tests._servers import start_kubefabric

PODS = b"/registry/pods/"
# What version 1 lacked: the attribute table and the meta row saying the index is complete.
DOWNGRADE = [
    "DROP TABLE attribute",
    "DELETE FROM meta WHERE name = 'index_complete'",
    "UPDATE meta SET value = 1 WHERE name = 'schema_version'",
]


def pod(name: str, app: str) -> bytes:
    metadata = {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": {"app": app}}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {}}).encode()


def downgrade_sqlite(endpoint: str) -> None:
    connection = sqlite3.connect(endpoint.removeprefix("sqlite://"))
    with connection:
        for statement in DOWNGRADE:
            connection.execute(statement)
    connection.close()


def downgrade_postgres(endpoint: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(endpoint)
        try:
            for statement in DOWNGRADE:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


def downgrade_mysql(endpoint: str) -> None:

    async def run() -> None:
        connection = await mysql_connect(endpoint)
        try:
            async with connection.cursor() as cursor:
                for statement in DOWNGRADE:
                    await cursor.execute(statement)
            await connection.commit()
        finally:
            connection.close()

    asyncio.run(run())


STORES: dict[str, tuple[Callable[[Path], str], Callable[[str], None]]] = {
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
    downgrade(endpoint)

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

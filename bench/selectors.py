"""Selectors answered in the database: `python -m bench.selectors [--objects 100000] [--scale 10000,100000,1000000]`.

Each store is filled with pods (about 1 KiB, 100 values of `app`: one value selects 1%), written
through the store's own write path with the attributes the server computes, then a kubefabric
server on it answers, the way kube-apiserver asks (pages of 500, the revision pinned by the first):

- a full list of the pods,
- a list selected by one `app` value (1%),
- a list selected by a field that returns one pod (`metadata.name`, like `kubectl get --field-selector`).

Each is timed (median of several runs), with the bytes the server sent and the keys it returned.
`--scale` repeats the label-selected list at growing sizes on SQLite, to show its cost follows the
matches, not the objects. Finally, creates per second through the server with pods (indexed: a dozen
attribute rows each) against the same creates with opaque 1 KiB values (one row each) give the cost
of keeping the index in the write transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import grpc

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from kubefabric.stores import Store
from kubefabric.stores._mysql import MysqlStore
from kubefabric.stores._postgres import PostgresStore
from kubefabric.stores._sqlite import SqliteStore
from tests._client import prefix_end
from tests._databases import mysql_drop_databases, mysql_endpoint, postgres_drop_databases, postgres_endpoint
from tests._pods import APPS, PODS, load_pods, pod
from tests._servers import start_kubefabric

PAGE = 500
RUNS = 5
CREATE_CLIENTS = 64
CREATE_SECONDS = 8.0

STORES: dict[str, tuple[Callable[[Path], str], Callable[[str], Store]]] = {
    "sqlite": (lambda workdir: f"sqlite://{workdir}/state.db", SqliteStore),
    "postgres": (lambda workdir: postgres_endpoint(), PostgresStore),
    "mysql": (lambda workdir: mysql_endpoint(), MysqlStore),
}
SELECTIONS = {
    "full list": ("", ""),
    "label-selected list (1%)": ("app=app17", ""),
    "field-selected list (1 pod)": ("", "metadata.name=pod0000042"),
}


def paginated_list(channel: grpc.Channel, labels: str, fields: str) -> tuple[float, int, int]:
    """(seconds, bytes received, keys) for one list in pages, as kube-apiserver reads it."""
    kv = rpc_pb2_grpc.KVStub(channel)
    started = time.perf_counter()
    key, revision, received, keys = PODS, 0, 0, 0
    while True:
        response = kv.Range(
            rpc_pb2.RangeRequest(
                key=key,
                range_end=prefix_end(PODS),
                limit=PAGE,
                revision=revision,
                labelSelector=labels,
                fieldSelector=fields,
            )
        )
        received += response.ByteSize()
        keys += len(response.kvs)
        revision = revision or response.header.revision
        if not response.more:
            return time.perf_counter() - started, received, keys
        key = response.kvs[-1].key + b"\0"


def measure_lists(store: str, objects: int, workdir: Path, selections: dict[str, tuple[str, str]]) -> dict[str, str]:
    make_endpoint, store_class = STORES[store]
    endpoint = make_endpoint(workdir)
    asyncio.run(load_pods(store_class(endpoint), objects))
    if store == "postgres":
        # What autovacuum does a minute after such growth: the planner needs to know the table is big.
        asyncio.run(_analyze(endpoint))
    server = start_kubefabric(workdir, endpoint)
    results = {}
    try:
        with server.channel() as channel:
            for name, (labels, fields) in selections.items():
                runs = [paginated_list(channel, labels, fields) for _ in range(RUNS)]
                seconds = statistics.median(run[0] for run in runs)
                _, received, keys = runs[0]
                results[name] = f"{seconds * 1000:,.1f} ms, {keys:,} keys, {received / 1024:,.0f} KiB"
                results[name + " (ms)"] = f"{seconds * 1000:.2f}"
    finally:
        server.stop()
    return results


async def _analyze(endpoint: str) -> None:
    connection = await asyncpg.connect(endpoint)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def creates_per_second(address: str, value_of: Callable[[int], bytes]) -> float:
    """kube-apiserver's create (a txn that puts only if the key does not exist), from many clients."""
    async with grpc.aio.insecure_channel(address) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        deadline = time.perf_counter() + CREATE_SECONDS
        done = 0

        async def client(number: int) -> None:
            nonlocal done
            sequence = 0
            while time.perf_counter() < deadline:
                key = PODS + b"c%03d-%07d" % (number, sequence)
                await kv.Txn(
                    rpc_pb2.TxnRequest(
                        compare=[
                            rpc_pb2.Compare(
                                key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0
                            )
                        ],
                        success=[
                            rpc_pb2.RequestOp(
                                request_put=rpc_pb2.PutRequest(key=key, value=value_of(number * 1_000_000 + sequence))
                            )
                        ],
                    )
                )
                sequence += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(number) for number in range(CREATE_CLIENTS)))
        return done / (time.perf_counter() - started)


def measure_creates(store: str, workdir: Path) -> tuple[float, float]:
    """(creates/s of pods, creates/s of opaque values of the same size), each on a fresh server."""
    rates = []
    for value_of in (pod, lambda number: b"k8s:enc:aescbc:v1:key1:" + bytes(len(pod(number)) - 23)):
        run_dir = Path(tempfile.mkdtemp(dir=workdir))
        server = start_kubefabric(run_dir, STORES[store][0](run_dir))
        try:
            rates.append(asyncio.run(creates_per_second(server.address, value_of)))
        finally:
            server.stop()
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000, help="pods per store (default 100,000)")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: sqlite, postgres, mysql")
    parser.add_argument(
        "--scale", default="10000,100000,1000000", help="SQLite sizes for the scaling table; empty skips it"
    )
    args = parser.parse_args()
    stores = [name for name in args.stores.split(",") if name]
    try:
        with tempfile.TemporaryDirectory(prefix="kubefabric-selectors-") as tmp:
            workdir = Path(tmp)
            lists = {
                store: measure_lists(store, args.objects, Path(tempfile.mkdtemp(dir=workdir)), SELECTIONS)
                for store in stores
            }
            print(f"\n### Lists of {args.objects:,} pods, in pages of {PAGE} (median of {RUNS})\n")
            print("| | " + " | ".join(stores) + " |")
            print("| --- |" + " ---: |" * len(stores))
            for name in SELECTIONS:
                print(f"| {name} | " + " | ".join(lists[store][name] for store in stores) + " |")
            full, labelled = "full list (ms)", "label-selected list (1%) (ms)"
            speedups = [float(lists[store][full]) / float(lists[store][labelled]) for store in stores]
            print("| 1% list speed-up over the full list | " + " | ".join(f"{x:,.0f}×" for x in speedups) + " |")

            sizes = [int(size) for size in args.scale.split(",") if size]
            if sizes:
                print(f"\n### The 1% label-selected list on SQLite as the pods grow ({APPS} `app` values)\n")
                print("| pods | full list | 1% label-selected list |")
                print("| ---: | ---: | ---: |")
                for size in sizes:
                    scaled = measure_lists("sqlite", size, Path(tempfile.mkdtemp(dir=workdir)), SELECTIONS)
                    print(f"| {size:,} | {scaled['full list']} | {scaled['label-selected list (1%)']} |")

            print(f"\n### Creates per second, {CREATE_CLIENTS} clients (kube-apiserver's create txn)\n")
            print("| | " + " | ".join(stores) + " |")
            print("| --- |" + " ---: |" * len(stores))
            rates = {store: measure_creates(store, workdir) for store in stores}
            print("| pods (indexed) | " + " | ".join(f"{rates[s][0]:,.0f}" for s in stores) + " |")
            print("| opaque values of the same size | " + " | ".join(f"{rates[s][1]:,.0f}" for s in stores) + " |")
            print("| pods ÷ opaque | " + " | ".join(f"{rates[s][0] / rates[s][1]:.2f}×" for s in stores) + " |")
    finally:
        postgres_drop_databases()
        mysql_drop_databases()


if __name__ == "__main__":
    main()

"""The SQLite WAL stays bounded under sustained writes and lists.

Passive checkpoints copy the WAL into the database but never let it start over while some reader
or writer keeps using it, so without more it grew to 484 MiB beside a 56 MiB database (20,000
creates, 10 full lists, 20,000 updates of 1 KiB values). The same shape of workload, with larger
values so that it takes seconds, grows the WAL of an unbounded store past 180 MiB (measured);
here it must stay at most 64 MiB.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import Etcd, prefix_end
from tests._servers import start_kubefabric

WAL_LIMIT_BYTES = 64 << 20
KEYS = 4000
VALUE = b"x" * 16384
CONCURRENCY = 32
LISTS = 10
PAGE = 500
PREFIX = b"/registry/configmaps/default/"


class WalWatcher:
    """Samples the WAL's size on disk until stopped; the largest seen."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def __enter__(self) -> WalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.largest = max(self.largest, self.wal.stat().st_size)
            except FileNotFoundError:
                pass


async def workload(address: str) -> None:
    """Creates (kube-apiserver's create-if-absent txn), full paginated lists, then updates alongside lists."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)]) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        async def run(operation: Callable[[bytes], Awaitable[None]], count: int) -> None:
            async def client(first: int) -> None:
                for number in range(first, count, CONCURRENCY):
                    await operation(PREFIX + b"%06d" % number)

            await asyncio.gather(*(client(first) for first in range(CONCURRENCY)))

        async def create(key: bytes) -> None:
            compare = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0)
            put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=VALUE))
            assert (await kv.Txn(rpc_pb2.TxnRequest(compare=[compare], success=[put]), timeout=30)).succeeded

        async def update(key: bytes) -> None:
            await kv.Put(rpc_pb2.PutRequest(key=key, value=VALUE[::-1]), timeout=30)

        async def full_lists() -> None:
            for _ in range(LISTS):
                start, seen = PREFIX, 0
                while True:
                    request = rpc_pb2.RangeRequest(key=start, range_end=prefix_end(PREFIX), limit=PAGE)
                    page = await kv.Range(request, timeout=60)
                    seen += len(page.kvs)
                    if not page.more:
                        break
                    start = page.kvs[-1].key + b"\0"
                assert seen == KEYS

        await run(create, KEYS)
        await asyncio.gather(full_lists(), run(update, KEYS))


def test_the_wal_stays_under_64_mib_through_creates_lists_and_updates(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    server = start_kubefabric(tmp_path, f"sqlite://{database}")
    try:
        with WalWatcher(tmp_path / "state.db-wal") as wal:
            started = time.monotonic()
            asyncio.run(workload(server.address))
            took = time.monotonic() - started
        assert wal.largest <= WAL_LIMIT_BYTES, f"the WAL reached {wal.largest / 2**20:.0f} MiB in {took:.0f} s"

        # Status reports the database, not the database plus the WAL: once the checkpointer has
        # copied everything into the file, the two agree.
        time.sleep(2.5)
        with Etcd(server.channel()) as client:
            assert client.status().dbSize == database.stat().st_size
    finally:
        assert server.stop() == 0

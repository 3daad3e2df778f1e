"""The load generator: asyncio gRPC clients issuing kube-apiserver's request shapes.

Everything here runs inside the spawned worker processes. A job is a coroutine function with
picklable arguments, started through `run_job`; it opens its own channel to the server under test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import prefix_end

KEY_PREFIX = b"/registry/bench/"
VALUE = b"v" * 1024
PAGE_SIZE = 500  # kube-apiserver's default page size for paginated lists
PRELOAD_BATCH = 100  # puts per preload txn: under etcd's default limit of 128 operations per txn
RPC_TIMEOUT = 60.0  # generous: only there so a stuck server fails the run instead of hanging it

T = TypeVar("T")
Operation = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Window:
    """The measurement interval, in wall-clock time so that every process agrees on it."""

    start_at: float
    duration: float

    @property
    def end_at(self) -> float:
        return self.start_at + self.duration


@dataclass(frozen=True)
class ClientGroup:
    """The concurrent clients one process runs, numbered globally so their keys never collide."""

    first: int
    count: int

    def ids(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass(frozen=True)
class WindowResult:
    """What one process achieved inside the window, and the CPU it spent doing so."""

    operations_per_second: float
    cpu_seconds: float


def prepare_worker() -> None:
    """Pool initializer: naming it makes each worker import this module (grpc, stubs) at spawn time,
    so that cost never lands inside a measurement window."""


def run_job(job: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Entry point in a worker process: run one job to completion on a fresh event loop."""
    try:
        return asyncio.run(job(*args))
    except grpc.aio.AioRpcError as error:
        # gRPC's own error does not survive pickling back to the parent; its gist as text does.
        raise RuntimeError(f"{job.__name__}: {error.code().name}: {error.details()}") from None


def object_key(namespace: int, index: int) -> bytes:
    return b"%sns-%d/obj-%d" % (KEY_PREFIX, namespace, index)


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])


def guarded_put(key: bytes, mod_revision: int) -> rpc_pb2.TxnRequest:
    """kube-apiserver's write: put if the key's mod revision is still mod_revision (0: absent), else get."""
    unchanged = rpc_pb2.Compare(
        key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=mod_revision
    )
    return rpc_pb2.TxnRequest(
        compare=[unchanged],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=VALUE))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
    )


async def closed_loop(window: Window, operations: Sequence[Operation]) -> WindowResult:
    """Run each operation back to back from start_at until the window closes.

    Each client's rate is the operations it completed inside the window over the time until its last
    completion, so slow operations (a full list) are not rounded to whole counts per window.
    """

    async def cpu_time_at(moment: float) -> float:
        await asyncio.sleep(moment - time.time())
        return time.process_time()

    async def rate(operation: Operation) -> float:
        completed, last_completed_at = 0, window.start_at
        while True:
            await operation()
            now = time.time()
            if now > window.end_at:
                return completed / (last_completed_at - window.start_at) if completed else 0.0
            completed, last_completed_at = completed + 1, now

    await asyncio.sleep(window.start_at - time.time())
    cpu_at_start = time.process_time()
    cpu_at_end = asyncio.create_task(cpu_time_at(window.end_at))
    rates = await asyncio.gather(*(rate(operation) for operation in operations))
    return WindowResult(sum(rates), await cpu_at_end - cpu_at_start)


async def creates(address: str, clients: ClientGroup, window: Window) -> WindowResult:
    """Each client creates fresh keys in its own namespace, the way kube-apiserver creates objects."""

    def creator(kv: rpc_pb2_grpc.KVStub, client: int) -> Operation:
        indexes = itertools.count()

        async def create() -> None:
            key = object_key(client, next(indexes))
            response = await kv.Txn(guarded_put(key, 0), timeout=RPC_TIMEOUT)
            if not response.succeeded:
                raise RuntimeError(f"create found {key!r} already present")

        return create

    async with open_channel(address) as channel:
        await channel.channel_ready()
        kv = rpc_pb2_grpc.KVStub(channel)
        return await closed_loop(window, [creator(kv, client) for client in clients.ids()])


async def updates(address: str, clients: ClientGroup, keys_per_client: int, window: Window) -> WindowResult:
    """Each client cycles over keys it alone owns, doing kube-apiserver's GuaranteedUpdate: get, then txn."""

    def updater(kv: rpc_pb2_grpc.KVStub, client: int) -> Operation:
        keys = itertools.cycle([object_key(client, index) for index in range(keys_per_client)])

        async def update() -> None:
            key = next(keys)
            current = await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=RPC_TIMEOUT)
            response = await kv.Txn(guarded_put(key, current.kvs[0].mod_revision), timeout=RPC_TIMEOUT)
            if not response.succeeded:
                raise RuntimeError(f"update of {key!r} conflicted although only one client writes it")

        return update

    async with open_channel(address) as channel:
        await channel.channel_ready()
        kv = rpc_pb2_grpc.KVStub(channel)
        return await closed_loop(window, [updater(kv, client) for client in clients.ids()])


async def put_keys(address: str, keys: Sequence[bytes], concurrency: int) -> None:
    """Preload: VALUE under every key, PRELOAD_BATCH puts to a txn (far fewer round trips), concurrently.

    A txn holds keys of one namespace only: a topology may route namespaces to different databases.
    """
    namespaces: dict[bytes, list[bytes]] = {}
    for key in keys:
        namespaces.setdefault(key.rpartition(b"/")[0], []).append(key)
    batches = [
        group[start : start + PRELOAD_BATCH]
        for group in namespaces.values()
        for start in range(0, len(group), PRELOAD_BATCH)
    ]

    async def put_each(kv: rpc_pb2_grpc.KVStub, stripe: Sequence[Sequence[bytes]]) -> None:
        for batch in stripe:
            puts = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=VALUE)) for key in batch]
            await kv.Txn(rpc_pb2.TxnRequest(success=puts), timeout=RPC_TIMEOUT)

    async with open_channel(address) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        await asyncio.gather(*(put_each(kv, batches[offset::concurrency]) for offset in range(concurrency)))


async def list_prefix(kv: rpc_pb2_grpc.KVStub, prefix: bytes) -> int:
    """One full list as kube-apiserver paginates it; returns how many keys it saw.

    The first page is read at the current revision; every following page at that same revision,
    starting just after the previous page's last key.
    """
    key, range_end, revision, listed = prefix, prefix_end(prefix), 0, 0
    while True:
        page = await kv.Range(
            rpc_pb2.RangeRequest(key=key, range_end=range_end, limit=PAGE_SIZE, revision=revision),
            timeout=RPC_TIMEOUT,
        )
        listed += len(page.kvs)
        if not page.more:
            return listed
        revision = revision or page.header.revision
        key = page.kvs[-1].key + b"\0"


def check_listed(listed: int, expected: int) -> None:
    if listed != expected:
        raise RuntimeError(f"a full list returned {listed} keys, expected {expected}")


async def lists(address: str, expected_keys: int, window: Window) -> WindowResult:
    """One client listing the whole prefix back to back."""
    async with open_channel(address) as channel:
        await channel.channel_ready()
        kv = rpc_pb2_grpc.KVStub(channel)

        async def list_all() -> None:
            check_listed(await list_prefix(kv, KEY_PREFIX), expected_keys)

        return await closed_loop(window, [list_all])


async def list_seconds(address: str, expected_keys: int, count: int) -> list[float]:
    """The duration of each of count full lists run one after another, alone."""
    async with open_channel(address) as channel:
        await channel.channel_ready()
        kv = rpc_pb2_grpc.KVStub(channel)
        durations = []
        for _ in range(count):
            started = time.perf_counter()
            listed = await list_prefix(kv, KEY_PREFIX)
            durations.append(time.perf_counter() - started)
            check_listed(listed, expected_keys)
        return durations


async def watch_delays(address: str, puts_per_second: float, duration: float) -> list[float]:
    """Seconds from just before each Put call until its event reaches a watcher on the prefix.

    Every put is its own task, started on a fixed schedule, so a slow put never delays the next.
    """
    total = round(puts_per_second * duration)
    sent_at: dict[bytes, float] = {}
    delays: list[float] = []
    async with open_channel(address) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        stream = rpc_pb2_grpc.WatchStub(channel).Watch()
        # kube-apiserver's watch asks for previous values too
        create = rpc_pb2.WatchCreateRequest(key=KEY_PREFIX, range_end=prefix_end(KEY_PREFIX), prev_kv=True)
        await stream.write(rpc_pb2.WatchRequest(create_request=create))
        if not (await stream.read()).created:
            raise RuntimeError("the watch was not created")

        async def receive() -> None:
            while len(delays) < total:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    raise RuntimeError("the server ended the watch stream")
                received_at = time.perf_counter()
                delays.extend(received_at - sent_at.pop(event.kv.key) for event in response.events)

        receiving = asyncio.create_task(receive())
        puts: list[grpc.aio.UnaryUnaryCall] = []
        next_put_at = time.perf_counter()
        for index in range(total):
            await asyncio.sleep(next_put_at - time.perf_counter())
            key = object_key(0, index)
            sent_at[key] = time.perf_counter()
            puts.append(kv.Put(rpc_pb2.PutRequest(key=key, value=VALUE), timeout=RPC_TIMEOUT))  # starts now
            next_put_at += 1 / puts_per_second
        await asyncio.gather(*puts)
        await asyncio.wait_for(receiving, RPC_TIMEOUT)
        stream.cancel()
    return delays

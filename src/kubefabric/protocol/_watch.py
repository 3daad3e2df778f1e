"""etcdserverpb.Watch: many watchers multiplexed on one bidirectional stream."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from kubefabric.core import Core, InvalidSelector, WatchBatch, Watcher, key_range_end, request_selector
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol._common import Headers, MalformedRequest
from kubefabric.protocol._convert import event_message

log = logging.getLogger(__name__)

# Responses a stream buffers before its watchers wait (and, if slow, fall back to the store).
STREAM_BUFFER = 128
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
COMPACTED_START = "etcdserver: mvcc: required revision has been compacted"
BROADCAST_ID = -1  # progress responses that speak for every watcher on the stream
# etcd's rpctypes.ErrGRPCStopped: clients reconnect and resume their watches elsewhere or later.
SERVER_STOPPED = "etcdserver: server stopped"


class _Stopped:
    """Queued to end a stream because the server is stopping."""


class WatchService:
    def __init__(self, core: Core, headers: Headers, progress_interval: float) -> None:
        self.core = core
        self.headers = headers
        self.progress_interval = progress_interval
        self._streams: set[_WatchStream] = set()
        self._stopping = False

    def stop(self) -> None:
        """End every watch stream now, and any opened from now on, as etcd does when it stops:
        watches never finish by themselves, so waiting for them would only delay shutdown."""
        self._stopping = True
        for stream in self._streams:
            stream.stop()

    async def Watch(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        stream = _WatchStream(self.core, self.headers)
        if self._stopping:
            stream.stop()
        self._streams.add(stream)
        receiving = asyncio.create_task(stream.receive(requests))
        ticking = asyncio.create_task(stream.notify_progress(self.progress_interval))
        try:
            while True:
                response = await stream.responses.get()
                if isinstance(response, MalformedRequest):
                    await context.abort(grpc.StatusCode.INTERNAL, response.status)
                    return
                if isinstance(response, _Stopped):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SERVER_STOPPED)
                    return
                yield response
        finally:
            self._streams.discard(stream)
            receiving.cancel()
            ticking.cancel()
            stream.close()


@dataclass(eq=False)
class _Watch:
    id: int
    watcher: Watcher
    prev_kv: bool
    progress_notify: bool
    task: asyncio.Task[None] | None = None
    sent_events: bool = field(default=False)
    ended: bool = field(default=False)  # compacted away or failed; the id stays taken


class _WatchStream:
    def __init__(self, core: Core, headers: Headers) -> None:
        self.hub = core.watches
        self.headers = headers
        # Responses in send order; a malformed request or a stopping server ends the stream from the same queue.
        self.responses: asyncio.Queue[rpc_pb2.WatchResponse | MalformedRequest | _Stopped] = asyncio.Queue(
            STREAM_BUFFER
        )
        self.watches: dict[int, _Watch] = {}
        self._next_id = 0
        self._progress_requests: set[asyncio.Task[None]] = set()

    async def receive(self, requests: AsyncIterator[rpc_pb2.WatchRequest]) -> None:
        try:
            async for request in requests:
                if isinstance(request, MalformedRequest):
                    await self.responses.put(request)
                    return
                kind = request.WhichOneof("request_union")
                if kind == "create_request":
                    await self._create(request.create_request)
                elif kind == "cancel_request":
                    await self._cancel(request.cancel_request.watch_id)
                elif kind == "progress_request":
                    self._request_progress()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the client went away mid-read
            log.debug("watch stream closed: %s", error)

    async def _create(self, request: rpc_pb2.WatchCreateRequest) -> None:
        watch_id = request.watch_id
        if request.start_revision < 0:
            await self._refuse(COMPACTED_START)
            return
        if watch_id != 0 and watch_id in self.watches:
            await self._refuse(DUPLICATE_WATCH_ID)
            return
        if watch_id == 0:  # 0 asks the server to choose: as etcd, count up and never reuse an id
            while self._next_id in self.watches:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        try:
            selector = request_selector(request.labelSelector, request.fieldSelector)
        except InvalidSelector as error:
            await self._refuse(str(error))
            return
        filters = set(request.filters)
        watcher = self.hub.watch(
            request.key or b"\0",
            key_range_end(request.range_end),
            request.start_revision,
            no_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
            no_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
            selector=selector,
        )
        watch = _Watch(watch_id, watcher, request.prev_kv, request.progress_notify)
        self.watches[watch_id] = watch
        # The created response goes out before any event of this watcher.
        await self.responses.put(rpc_pb2.WatchResponse(header=self.headers(), watch_id=watch_id, created=True))
        watch.task = asyncio.create_task(self._pump(watch), name=f"watch-{watch_id}")

    async def _refuse(self, reason: str) -> None:
        """etcd's answer to a create it will not serve: created and canceled at once, without an id."""
        response = rpc_pb2.WatchResponse(
            header=self.headers(), watch_id=BROADCAST_ID, created=True, canceled=True, cancel_reason=reason
        )
        await self.responses.put(response)

    async def _pump(self, watch: _Watch) -> None:
        async def deliver(batch: WatchBatch) -> None:
            if batch.compact_revision:
                # etcd's compaction notice: no reason and a header at revision 0.
                response = rpc_pb2.WatchResponse(
                    header=self.headers(0), watch_id=watch.id, canceled=True, compact_revision=batch.compact_revision
                )
            else:
                response = rpc_pb2.WatchResponse(
                    header=self.headers(batch.revision),
                    watch_id=watch.id,
                    events=[event_message(change, watch.prev_kv) for change in batch.events],
                )
                watch.sent_events = True
            await self.responses.put(response)

        try:
            await watch.watcher.run(deliver)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the store failed: end this watch, the client re-creates it
            log.warning("watch %d ended: %s", watch.id, error)
            await self.responses.put(
                rpc_pb2.WatchResponse(header=self.headers(), watch_id=watch.id, canceled=True, cancel_reason=str(error))
            )
        # Like etcd, an ended watch keeps its id on the stream until the client cancels it.
        watch.ended = True
        self.hub.cancel(watch.watcher)

    async def _cancel(self, watch_id: int) -> None:
        watch = self.watches.get(watch_id)
        if watch is None:
            return  # etcd ignores cancels of unknown ids
        self._forget(watch)
        if watch.task is not None:
            watch.task.cancel()
        await self.responses.put(rpc_pb2.WatchResponse(header=self.headers(), watch_id=watch_id, canceled=True))

    def _forget(self, watch: _Watch) -> None:
        if self.watches.get(watch.id) is watch:
            del self.watches[watch.id]
        self.hub.cancel(watch.watcher)

    def _request_progress(self) -> None:
        """Answer once every watcher has delivered everything up to the current revision."""

        async def when_synced() -> None:
            while True:
                pending = [w.watcher for w in self.watches.values() if not w.ended and not w.watcher.idle]
                if not pending:
                    break
                await pending[0].wait_idle()
            # The header is taken now, while every watcher is idle; the queue keeps it in order.
            await self.responses.put(rpc_pb2.WatchResponse(header=self.headers(), watch_id=BROADCAST_ID))

        task = asyncio.create_task(when_synced())
        self._progress_requests.add(task)
        task.add_done_callback(self._progress_requests.discard)

    async def notify_progress(self, interval: float) -> None:
        """Tell idle watchers that asked for it the current revision, unless they just got events."""
        if interval <= 0:
            return
        while True:
            # Jitter, so that watchers created together do not all report at once.
            await asyncio.sleep(interval + random.uniform(0, interval / 10))
            for watch in list(self.watches.values()):
                if watch.progress_notify and not watch.ended and not watch.sent_events and watch.watcher.idle:
                    await self.responses.put(rpc_pb2.WatchResponse(header=self.headers(), watch_id=watch.id))
                watch.sent_events = False

    def stop(self) -> None:
        """End the stream before anything still queued: the client resumes from what it received."""
        while not self.responses.empty():
            self.responses.get_nowait()
        self.responses.put_nowait(_Stopped())

    def close(self) -> None:
        for watch in list(self.watches.values()):
            self._forget(watch)
            if watch.task is not None:
                watch.task.cancel()
        for task in self._progress_requests:
            task.cancel()

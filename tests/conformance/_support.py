"""Helpers shared by the conformance tests: error assertions, target gating and a watch stream."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import grpc
import pytest

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd

# How long to wait for a response the server owes us before declaring it missing.
RESPONSE_TIMEOUT = 5.0

# etcd's error messages, byte for byte: clients (clientv3, kube-apiserver) match on them.
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
ERR_KEY_NOT_FOUND = "etcdserver: key not found"
ERR_EMPTY_KEY = "etcdserver: key is not provided"
ERR_DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"


def target_name(request: pytest.FixtureRequest) -> str:
    """The `server` parameter of the running test: "etcd" or "kubefabric-<store>"."""
    return str(request.node.callspec.params["server"])


def is_etcd(request: pytest.FixtureRequest) -> bool:
    return target_name(request) == "etcd"


def grant_lease(client: Etcd, ttl: int, lease_id: int = 0) -> int:
    request = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
    return int(client.lease.LeaseGrant(request, timeout=RESPONSE_TIMEOUT).ID)


def keys_of(response: rpc_pb2.RangeResponse) -> list[bytes]:
    return [kv.key for kv in response.kvs]


@contextmanager
def raises_rpc_error(code: grpc.StatusCode, details: str) -> Iterator[None]:
    """Expect the block to fail with exactly this gRPC status code and message."""
    with pytest.raises(grpc.RpcError) as caught:
        yield
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert (error.code(), error.details()) == (code, details)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until condition() is truthy, failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class WatchStream:
    """One bidirectional Watch RPC: requests are fed from a queue, responses read by a thread."""

    def __init__(self, client: Etcd) -> None:
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._responses: queue.Queue[rpc_pb2.WatchResponse | grpc.RpcError] = queue.Queue()
        self._call = client.watch.Watch(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(RESPONSE_TIMEOUT)

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as error:
            self._responses.put(error)

    def send_create(self, key: bytes, range_end: bytes = b"", **kwargs: Any) -> None:
        create = rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, **kwargs)
        self._requests.put(rpc_pb2.WatchRequest(create_request=create))

    def create(self, key: bytes, range_end: bytes = b"", **kwargs: Any) -> int:
        """Create a watch and return its ID once the server has confirmed it."""
        self.send_create(key, range_end, **kwargs)
        response = self.next()
        assert response.created and not response.canceled, response
        return int(response.watch_id)

    def cancel(self, watch_id: int) -> None:
        self._requests.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))

    def request_progress(self) -> None:
        self._requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def next(self, timeout: float = RESPONSE_TIMEOUT) -> rpc_pb2.WatchResponse:
        try:
            response = self._responses.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no watch response within {timeout}s")
        if isinstance(response, grpc.RpcError):
            raise response
        return response

    def events_by_watch(self, count: int) -> dict[int, list[kv_pb2.Event]]:
        """Collect exactly `count` events, grouped by watch ID.

        A server may batch events of several revisions into one response, so this counts events,
        not responses.
        """
        grouped: dict[int, list[kv_pb2.Event]] = {}
        received = 0
        while received < count:
            response = self.next()
            assert not response.canceled and not response.created and response.events, response
            # Clients resume from the header revision, so it must never lag the events delivered.
            assert response.header.revision >= max(event.kv.mod_revision for event in response.events), response
            grouped.setdefault(response.watch_id, []).extend(response.events)
            received += len(response.events)
        assert received == count, f"expected {count} events, got {received}: {grouped}"
        return grouped

    def events(self, count: int, watch_id: int) -> list[kv_pb2.Event]:
        """Collect exactly `count` events, all for one watch."""
        grouped = self.events_by_watch(count)
        assert list(grouped) == [watch_id], grouped
        return grouped[watch_id]

    def assert_quiet(self, seconds: float = 0.3) -> None:
        """Nothing further arrives within `seconds`: catches duplicate or unfiltered events."""
        try:
            response = self._responses.get(timeout=seconds)
        except queue.Empty:
            return
        pytest.fail(f"unexpected watch response: {response}")

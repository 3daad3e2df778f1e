"""What every service shares: response headers, error mapping, per-method metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter, Histogram

from kubefabric.core import Core, EtcdError, RequestTooLarge, StoreUnavailable
from kubefabric.protocol.etcdpb import rpc_pb2

log = logging.getLogger(__name__)
R = TypeVar("R")

# Requests larger than etcd's default --max-request-bytes are refused, as etcd refuses them.
MAX_REQUEST_BYTES = 1536 * 1024
# gRPC itself accepts a little more, so that the refusal is etcd's clear error, not a transport one.
GRPC_RECEIVE_LIMIT = MAX_REQUEST_BYTES + 512 * 1024
RAFT_TERM = 1

REQUESTS = Counter("kubefabric_grpc_requests_total", "etcd API requests", ["method", "code"])
REQUEST_SECONDS = Histogram(
    "kubefabric_grpc_request_seconds",
    "Time to answer an etcd API request",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class Headers:
    """Response headers carrying this server's identity."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @property
    def cluster_id(self) -> int:
        return self.core.mvcc.identity

    @property
    def member_id(self) -> int:
        # Distinct from the cluster id, stable for the life of the database.
        return (self.core.mvcc.identity * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF

    def __call__(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.core.mvcc.durable_revision if revision is None else revision,
            raft_term=RAFT_TERM,
        )


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def unary(method: Handler[R]) -> Handler[R]:
    """Map core errors to etcd's gRPC statuses, log the unexpected, and count every call."""
    name = method.__name__

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        started = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except EtcdError as error:
            code = error.code
            await context.abort(grpc.StatusCode[error.code], str(error))
        except StoreUnavailable as error:
            code = "UNAVAILABLE"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"kubefabric: database unavailable: {error}")
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            code = "INTERNAL"
            log.exception("%s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"kubefabric: {name} failed: {error}")
        finally:
            REQUESTS.labels(name, code).inc()
            REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)
        raise AssertionError("unreachable: abort raises")

    return handle


def check_size(request: Any) -> None:
    if request.ByteSize() > MAX_REQUEST_BYTES:
        raise RequestTooLarge()


def fill_unimplemented(servicer: type, service_name: str) -> type:
    """Give every method the class does not implement a clear UNIMPLEMENTED answer."""
    service = rpc_pb2.DESCRIPTOR.services_by_name[service_name]
    for method in service.methods:
        if method.name in vars(servicer):
            continue

        async def not_implemented(
            self: Any, request: Any, context: grpc.aio.ServicerContext, _m: str = method.name
        ) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"kubefabric does not implement {service_name}.{_m}")

        setattr(servicer, method.name, not_implemented)
    return servicer

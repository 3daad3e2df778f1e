"""What every service shares: response headers, error mapping, per-method metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import Counter, Histogram

from kubefabric.core import Core, EtcdError, RequestTooLarge, StoreUnavailable
from kubefabric.etcdpb import rpc_pb2

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
        self.mvcc = core.mvcc

    @functools.cached_property
    def cluster_id(self) -> int:
        return self.mvcc.identity

    @functools.cached_property
    def member_id(self) -> int:
        # Distinct from the cluster id, stable for the life of the database.
        return (self.mvcc.identity * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF

    def __call__(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.mvcc.durable_revision if revision is None else revision,
            raft_term=RAFT_TERM,
        )


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def unary(method: Handler[R]) -> Handler[R]:
    """Map core errors to etcd's gRPC statuses, log the unexpected, and count every call."""
    name = method.__name__
    succeeded = REQUESTS.labels(name, "OK")  # resolved once: the common case costs no label lookup
    latency = REQUEST_SECONDS.labels(name)

    @functools.wraps(method)
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        started = time.perf_counter()
        code = "OK"
        try:
            if isinstance(request, MalformedRequest):
                code = "INTERNAL"
                await context.abort(grpc.StatusCode.INTERNAL, request.status)
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
            (succeeded if code == "OK" else REQUESTS.labels(name, code)).inc()
            latency.observe(time.perf_counter() - started)
        raise AssertionError("unreachable: abort raises")

    return handle


def check_size(request: Any) -> None:
    if request.ByteSize() > MAX_REQUEST_BYTES:
        raise RequestTooLarge()


class MalformedRequest:
    """What a request whose bytes do not parse arrives as, so the handler can answer like etcd."""

    def __init__(self, error: DecodeError) -> None:
        self.status = f"grpc: error unmarshalling request: {error}"


def _decoder(message_class: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return MalformedRequest(error)

    return decode


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def register(server: grpc.aio.Server, service_name: str, servicer: object) -> None:
    """Serve every method of an etcd service; those the servicer lacks answer UNIMPLEMENTED."""
    service = rpc_pb2.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None) or _not_implemented(f"{service_name}.{method.name}")
        handler_kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = handler_kind(
            behaviour,
            request_deserializer=_decoder(GetMessageClass(method.input_type)),
            response_serializer=_encoder(GetMessageClass(method.output_type)),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _encoder(message_class: Any) -> Callable[[Any], bytes]:
    """Serialize a response message; a response a handler wrote as bytes already goes out as it is."""
    serialize = message_class.SerializeToString

    def encode(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return encode


def _not_implemented(name: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    async def answer(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"kubefabric does not implement {name}")

    return answer

"""A server that parses each request and answers from canned bytes: Python's gRPC alone, no storage.

`python -m bench.run` runs the write workloads against it as `grpc-floor`. kube-apiserver's create
(a guarded Txn) always succeeds and a Get always finds a 1 KiB value, so it shows the most any
server on grpcio (grpc.aio on uvloop, as kubefabric serves) reaches on this machine, beside etcd.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import uvloop

from kubefabric.etcdpb import kv_pb2, rpc_pb2

HEADER = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=1, raft_term=1)
ONE_KEY = kv_pb2.KeyValue(key=b"/registry/bench/key", value=bytes(1024), create_revision=1, mod_revision=1, version=1)
CANNED = {
    "Range": (rpc_pb2.RangeRequest, rpc_pb2.RangeResponse(header=HEADER, kvs=[ONE_KEY], count=1)),
    "Txn": (
        rpc_pb2.TxnRequest,
        rpc_pb2.TxnResponse(
            header=HEADER, succeeded=True, responses=[rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse())]
        ),
    ),
    "Status": (rpc_pb2.StatusRequest, rpc_pb2.StatusResponse(header=HEADER, version="3.4.0")),
}


def answer(response: bytes) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> bytes:
        return response

    return handle


async def serve(address: str) -> None:
    server = grpc.aio.server()
    for service, methods in (("etcdserverpb.KV", ("Range", "Txn")), ("etcdserverpb.Maintenance", ("Status",))):
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                answer(CANNED[method][1].SerializeToString()),
                request_deserializer=CANNED[method][0].FromString,
                response_serializer=bytes,
            )
            for method in methods
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--listen-address", default="127.0.0.1:2379")
    try:
        uvloop.run(serve(parser.parse_args().listen_address))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


if __name__ == "__main__":
    main()

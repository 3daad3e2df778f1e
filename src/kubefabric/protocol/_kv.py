"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

import grpc

from kubefabric.core import Core, KeyNotFound
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol import _convert as convert
from kubefabric.protocol._common import Headers, check_size, unary


class KVService:
    def __init__(self, core: Core, headers: Headers) -> None:
        self.mvcc = core.mvcc
        self.headers = headers

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> bytes:
        """A RangeResponse, serialized: see range_response_bytes."""
        result = await self.mvcc.range(convert.range_op(request))
        return convert.range_response_bytes(result, self.headers())

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        check_size(request)
        result = await self.mvcc.put(convert.put_op(request))
        return convert.put_response(result, self.headers())

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        check_size(request)
        result = await self.mvcc.delete(convert.delete_op(request))
        return convert.delete_response(result, self.headers())

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        # Like etcd, only writes are size-limited (they would go through its raft log); a txn
        # counts as a read only when every op of both branches is a plain range.
        ops = (*request.success, *request.failure)
        if not all(op.WhichOneof("request") == "request_range" for op in ops):
            check_size(request)
        try:
            txn = convert.txn_op(request)
        except convert.EmptyRequestOp:
            raise KeyNotFound() from None
        result = await self.mvcc.txn(txn)
        return convert.txn_response(result, self.headers())

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        revision = await self.mvcc.compact(request.revision, request.physical)
        return rpc_pb2.CompactionResponse(header=self.headers(revision))

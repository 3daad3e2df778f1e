"""etcdserverpb.Lease: grant, revoke, keep alive, inspect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from kubefabric.core import Core
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol._common import Headers, MalformedRequest, unary


class LeaseService:
    def __init__(self, core: Core, headers: Headers) -> None:
        self.leases = core.leases
        self.headers = headers

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        lease = await self.leases.grant(request.ID, request.TTL)
        return rpc_pb2.LeaseGrantResponse(header=self.headers(), ID=lease.id, TTL=lease.ttl)

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        revision = await self.leases.revoke(request.ID)
        return rpc_pb2.LeaseRevokeResponse(header=self.headers(revision))

    async def LeaseKeepAlive(
        self, requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for request in requests:
            if isinstance(request, MalformedRequest):
                await context.abort(grpc.StatusCode.INTERNAL, request.status)
            ttl = self.leases.keep_alive(request.ID)
            yield rpc_pb2.LeaseKeepAliveResponse(header=self.headers(), ID=request.ID, TTL=ttl)

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        lease = self.leases.get(request.ID)
        if lease is None:
            # etcd answers an unknown lease with TTL -1, not an error.
            return rpc_pb2.LeaseTimeToLiveResponse(header=self.headers(), ID=request.ID, TTL=-1)
        keys = sorted(lease.keys) if request.keys else []
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=self.headers(), ID=lease.id, TTL=lease.remaining(), grantedTTL=lease.ttl, keys=keys
        )

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        leases = [rpc_pb2.LeaseStatus(ID=lease_id) for lease_id in self.leases.ids()]
        return rpc_pb2.LeaseLeasesResponse(header=self.headers(), leases=leases)

"""etcdserverpb.Maintenance, Cluster and Auth: what clients of a single-member etcd ask."""

from __future__ import annotations

import grpc

from kubefabric.core import Core
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol._common import Headers, unary

# The etcd version kubefabric answers as. kube-apiserver 1.31+ enables RequestWatchProgress only
# from 3.5.13 on, and kubefabric implements it.
ETCD_VERSION = "3.5.17"


class MaintenanceService:
    def __init__(self, core: Core, headers: Headers) -> None:
        self.core = core
        self.headers = headers

    @unary
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        size = await self.core.store.size()
        header = self.headers()
        return rpc_pb2.StatusResponse(
            header=header,
            version=ETCD_VERSION,
            dbSize=size,
            leader=header.member_id,
            raftIndex=header.revision,
            raftTerm=header.raft_term,
            raftAppliedIndex=header.revision,
            dbSizeInUse=size,
            isLearner=False,
        )

    @unary
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        # No space quota and no corruption checks: there is never an alarm to report or clear.
        return rpc_pb2.AlarmResponse(header=self.headers())


class ClusterService:
    def __init__(self, headers: Headers, client_url: str) -> None:
        self.headers = headers
        self.client_url = client_url

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        header = self.headers()
        member = rpc_pb2.Member(ID=header.member_id, name="kubefabric", clientURLs=[self.client_url])
        return rpc_pb2.MemberListResponse(header=header, members=[member])


class AuthService:
    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(header=self.headers(), enabled=False)

"""etcdserverpb.Maintenance, Cluster and Auth: what clients of a single-member etcd ask."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator

import grpc

from kubefabric.core import Core, StoreUnavailable
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol._common import Headers, unary
from kubefabric.snapshot import write_etcd_db

log = logging.getLogger(__name__)

# The etcd version kubefabric answers as. kube-apiserver 1.31+ enables RequestWatchProgress only
# from 3.5.13 on, and kubefabric implements it.
ETCD_VERSION = "3.5.17"
# etcd's snapshotSendBufferSize: the blob of each SnapshotResponse.
SNAPSHOT_CHUNK = 32 * 1024


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

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """etcd's database file of every version kept, in chunks counting down `remaining_bytes`,
        then a last message whose blob is the sha256 of all of them (what `etcdctl snapshot
        restore` checks)."""
        with tempfile.TemporaryFile(prefix="kubefabric-snapshot-") as file:
            try:
                snapshot = await self.core.snapshot()
                await asyncio.to_thread(write_etcd_db, file, snapshot)
            except StoreUnavailable as error:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"kubefabric: database unavailable: {error}")
            except Exception as error:  # noqa: BLE001 - reported to the client, as unary methods do
                log.exception("Snapshot failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"kubefabric: Snapshot failed: {error}")
            header = self.headers(snapshot.revision)
            total = file.seek(0, os.SEEK_END)
            log.info("snapshot at revision %d: %d versions, %d bytes", header.revision, len(snapshot.versions), total)
            file.seek(0)
            digest = hashlib.sha256()
            sent = 0
            while chunk := file.read(SNAPSHOT_CHUNK):
                sent += len(chunk)
                digest.update(chunk)
                yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=total - sent, blob=chunk)
            yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=0, blob=digest.digest())

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        await self.core.defragment()
        return rpc_pb2.DefragmentResponse(header=self.headers())

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

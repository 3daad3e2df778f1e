"""The etcd v3 gRPC services: translate wire requests into core calls and core results back."""

from __future__ import annotations

from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kubefabric.core import Core
from kubefabric.protocol._common import GRPC_RECEIVE_LIMIT, Headers, register
from kubefabric.protocol._kv import KVService
from kubefabric.protocol._lease import LeaseService
from kubefabric.protocol._maintenance import ETCD_VERSION, AuthService, ClusterService, MaintenanceService
from kubefabric.protocol._watch import WatchService

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_RECEIVE_LIMIT),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_concurrent_streams", 2**31 - 1),
    # kube-apiserver's etcd client pings idle connections; gRPC's defaults would answer those
    # pings with GOAWAY "too many pings". Accept them the way etcd does.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 2 * 60 * 60 * 1000),
    ("grpc.keepalive_timeout_ms", 20 * 1000),
    # gRPC sets SO_REUSEPORT by default: a second server on a taken port would start, and clients
    # would alternate between the two. Refuse the port instead, as etcd does.
    ("grpc.so_reuseport", 0),
]


class EtcdServer(NamedTuple):
    """The gRPC server and the services shutdown needs to reach."""

    grpc: grpc.aio.Server
    health: health.aio.HealthServicer
    watch: WatchService


def build_server(core: Core, client_url: str, progress_interval: float) -> EtcdServer:
    """An unstarted gRPC server with every etcd v3 service and the gRPC health service."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    headers = Headers(core)
    watch = WatchService(core, headers, progress_interval)
    register(server, "KV", KVService(core, headers))
    register(server, "Watch", watch)
    register(server, "Lease", LeaseService(core, headers))
    register(server, "Maintenance", MaintenanceService(core, headers))
    register(server, "Cluster", ClusterService(headers, client_url))
    register(server, "Auth", AuthService(headers))
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    return EtcdServer(server, health_service, watch)


__all__ = ["ETCD_VERSION", "EtcdServer", "build_server", "health_pb2"]

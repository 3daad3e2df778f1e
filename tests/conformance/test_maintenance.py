"""Maintenance, Cluster and health: what kube-apiserver and operators probe, and graceful refusals."""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import Etcd
from tests._servers import ServerProcess
from tests.conformance._support import RESPONSE_TIMEOUT, is_etcd

SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
# kube-apiserver 1.31+ checks the etcd version and needs at least this one.
MINIMUM_ADVERTISED_VERSION = (3, 5, 13)
# What a refusal must not look like: an unhandled exception or a dead server.
CRASHED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}


def test_status(client: Etcd, request: pytest.FixtureRequest) -> None:
    current = client.put(b"a", b"v").header.revision

    status = client.status()
    assert status.header.revision == current
    assert status.dbSize > 0
    version = SEMVER.match(status.version)
    assert version is not None, status.version
    if not is_etcd(request):
        # The oracle is etcd 3.4, so only kubefabric is held to kube-apiserver's minimum.
        assert tuple(int(part) for part in version.groups()) >= MINIMUM_ADVERTISED_VERSION, status.version


def test_member_list_has_one_member_reachable_at_the_client_url(client: Etcd, server: ServerProcess) -> None:
    response = client.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=RESPONSE_TIMEOUT)
    [member] = response.members
    assert member.ID != 0
    assert not member.isLearner
    port = server.address.rsplit(":", 1)[1]
    assert [url.rsplit(":", 1)[1] for url in member.clientURLs] == [port], member.clientURLs
    assert all(url.startswith(("http://", "https://")) for url in member.clientURLs), member.clientURLs


def test_grpc_health_service_reports_serving(client: Etcd) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    response = health.Check(health_pb2.HealthCheckRequest(), timeout=RESPONSE_TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_methods_kubernetes_does_not_need_fail_cleanly_and_the_server_keeps_serving(
    client: Etcd, server: ServerProcess
) -> None:
    auth = rpc_pb2_grpc.AuthStub(client.channel)
    calls: dict[str, Callable[[], object]] = {
        "Auth.UserAdd": lambda: auth.UserAdd(
            rpc_pb2.AuthUserAddRequest(name="u", password="p"), timeout=RESPONSE_TIMEOUT
        ),
        "Auth.RoleAdd": lambda: auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r"), timeout=RESPONSE_TIMEOUT),
        "Maintenance.Defragment": lambda: client.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=10),
        "Maintenance.HashKV": lambda: client.maintenance.HashKV(rpc_pb2.HashKVRequest(), timeout=RESPONSE_TIMEOUT),
    }
    for name, call in calls.items():
        # etcd implements these; kubefabric may refuse them, but with a deliberate status, not a crash.
        try:
            call()
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            assert error.code() not in CRASHED, (name, error.code(), error.details())

    assert server.process is not None and server.process.poll() is None
    revision = client.put(b"still", b"serving").header.revision
    assert client.get(b"still").kvs[0].mod_revision == revision

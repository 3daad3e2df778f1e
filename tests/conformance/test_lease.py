"""Lease: grant, keep-alive, time-to-live, listing, revocation and expiry of attached keys."""

from __future__ import annotations

import grpc

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, prefix_end
from tests.conformance._support import (
    ERR_LEASE_NOT_FOUND,
    RESPONSE_TIMEOUT,
    WatchStream,
    grant_lease,
    keys_of,
    raises_rpc_error,
    wait_for,
)

# Expiry takes the TTL (etcd raises 1 s to its 2 s minimum) plus the server's expiry sweep.
EXPIRY_TIMEOUT = 10.0


def time_to_live(client: Etcd, lease_id: int, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
    return client.lease.LeaseTimeToLive(
        rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), timeout=RESPONSE_TIMEOUT
    )


def lease_ids(client: Etcd) -> set[int]:
    response = client.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=RESPONSE_TIMEOUT)
    return {lease.ID for lease in response.leases}


def keep_alive_once(client: Etcd, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
    responses = client.lease.LeaseKeepAlive(
        iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)]), timeout=RESPONSE_TIMEOUT
    )
    try:
        return next(responses)
    finally:
        responses.cancel()


def revoke(client: Etcd, lease_id: int) -> rpc_pb2.LeaseRevokeResponse:
    return client.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), timeout=RESPONSE_TIMEOUT)


def test_grant_with_server_or_client_chosen_ids(client: Etcd) -> None:
    granted = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=RESPONSE_TIMEOUT)
    assert granted.ID > 0
    assert (granted.TTL, granted.error) == (60, "")
    assert granted.header.revision == client.revision()

    other = grant_lease(client, ttl=60)
    assert other not in (0, granted.ID)
    assert {granted.ID, other} <= lease_ids(client)

    chosen = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30, ID=12345), timeout=RESPONSE_TIMEOUT)
    assert (chosen.ID, chosen.TTL) == (12345, 30)
    with raises_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"):
        grant_lease(client, ttl=60, lease_id=12345)


def test_keep_alive_reports_the_ttl(client: Etcd) -> None:
    lease_id = grant_lease(client, ttl=60)

    renewed = keep_alive_once(client, lease_id)
    assert (renewed.ID, renewed.TTL) == (lease_id, 60)
    assert renewed.header.revision == client.revision()

    # An unknown lease is not an error on the stream: clientv3 reads TTL <= 0 as "expired".
    unknown = keep_alive_once(client, lease_id + 1)
    assert (unknown.ID, unknown.TTL) == (lease_id + 1, 0)


def test_time_to_live_reports_remaining_ttl_and_attached_keys(client: Etcd) -> None:
    lease_id = grant_lease(client, ttl=60)
    for key in (b"b", b"a", b"c"):
        client.put(key, b"v", lease=lease_id)
    client.put(b"unleased", b"v")

    with_keys = time_to_live(client, lease_id, keys=True)
    assert (with_keys.ID, with_keys.grantedTTL) == (lease_id, 60)
    assert 0 < with_keys.TTL <= 60
    assert sorted(with_keys.keys) == [b"a", b"b", b"c"]
    assert list(time_to_live(client, lease_id).keys) == []

    unknown = time_to_live(client, lease_id + 1, keys=True)
    assert (unknown.ID, unknown.TTL, unknown.grantedTTL, list(unknown.keys)) == (lease_id + 1, -1, 0, [])


def test_revoke_deletes_attached_keys_with_delete_events(client: Etcd) -> None:
    lease_id = grant_lease(client, ttl=60)
    client.put(b"p/a", b"v", lease=lease_id)
    client.put(b"p/b", b"v", lease=lease_id)
    client.put(b"p/unleased", b"v")
    before = client.revision()

    with WatchStream(client) as stream:
        watch_id = stream.create(b"p/", prefix_end(b"p/"))
        assert revoke(client, lease_id).header.revision == before + 1

        # The keys go in one revision, so in one watch response.
        response = stream.next()
        assert response.watch_id == watch_id
        assert [(event.type, event.kv.key, event.kv.mod_revision) for event in response.events] == [
            (kv_pb2.Event.DELETE, b"p/a", before + 1),
            (kv_pb2.Event.DELETE, b"p/b", before + 1),
        ]

    assert keys_of(client.get_prefix(b"p/")) == [b"p/unleased"]
    assert lease_id not in lease_ids(client)
    assert time_to_live(client, lease_id).TTL == -1
    # Revoking it again, like revoking any unknown lease, fails.
    with raises_rpc_error(grpc.StatusCode.NOT_FOUND, ERR_LEASE_NOT_FOUND):
        revoke(client, lease_id)


def test_an_expired_lease_deletes_its_keys(client: Etcd) -> None:
    granted = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1), timeout=RESPONSE_TIMEOUT)
    # etcd may raise a short TTL to its minimum (2 s by default), never lower it.
    assert granted.TTL >= 1
    client.put(b"ephemeral", b"v", lease=granted.ID)
    client.put(b"durable", b"v")

    with WatchStream(client) as stream:
        # Watching from the next revision catches the expiry even if it beats the watch's creation.
        watch_id = stream.create(b"ephemeral", start_revision=client.revision() + 1)
        expired = stream.next(timeout=EXPIRY_TIMEOUT)
        assert expired.watch_id == watch_id
        assert [(event.type, event.kv.key) for event in expired.events] == [(kv_pb2.Event.DELETE, b"ephemeral")]

    wait_for(lambda: granted.ID not in lease_ids(client), EXPIRY_TIMEOUT, "the expired lease to disappear")
    assert keys_of(client.get(b"\0", b"\0")) == [b"durable"]
    assert time_to_live(client, granted.ID).TTL == -1

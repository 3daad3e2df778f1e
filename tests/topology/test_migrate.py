"""`kubefabric topology migrate`: every key moved to where the new rules place it, exactly once, with
its revisions, version and lease, across real SQLite, PostgreSQL and MariaDB databases; killed
midway, it finishes when run again. What each database holds is read directly, past kubefabric.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd, put_op
from tests._databases import mysql_endpoint, postgres_endpoint
from tests._servers import REPO_ROOT
from tests._targets import etcd_store
from tests.topology._moves import Site, keyspace, rules
from tests.topology._multi import stored_keys

PODS = [b"/registry/pods/default/a", b"/registry/pods/kube-system/b", b"/registry/pods/team/c"]
SECRETS = [b"/registry/secrets/default/s", b"/registry/secrets/team/t"]
STAYS = [b"/registry/configmaps/default/c", b"compact_rev_key"]


def test_migrate_moves_every_key_exactly_once_keeping_its_revisions_version_and_lease(tmp_path: Path) -> None:
    old_pods = postgres_endpoint()
    site = Site(tmp_path)
    site.topology.write_text(rules(("pods", old_pods, "pods")))
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            lease = client.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3600), timeout=10).ID
            for key in PODS + SECRETS + STAYS:
                client.put(key, b"first " + key)
            client.put(PODS[0], b"second")
            client.put(PODS[0], b"third")
            client.put(SECRETS[1], b"leased", lease=lease)
            client.put(b"/registry/secrets/default/gone", b"x")
            client.delete(b"/registry/secrets/default/gone")
            before = keyspace(client)
    finally:
        server.stop()

    # Pods go to MariaDB; secrets, from the default file, to the PostgreSQL database that held the pods.
    site.endpoints = {"pods": mysql_endpoint(), "secrets": old_pods}
    site.topology.write_text(rules(("pods", site.endpoints["pods"], "pods"), ("secrets", old_pods, "secrets")))
    assert "would place 5 stored keys in another backend" in site.refused_start()
    result = site.migrate()
    assert "moved 5 keys" in result.stdout, result
    assert "3 keys to move from 'secrets' to 'pods'" in result.stderr, result.stderr
    assert "2 keys to move from 'default' to 'secrets'" in result.stderr, result.stderr

    default = site.endpoint.removeprefix("multi://")
    assert stored_keys(site.endpoints["pods"], live_only=True) == set(PODS)
    assert stored_keys(old_pods, live_only=True) == set(SECRETS)
    assert stored_keys(default, live_only=True) == set(STAYS)
    # No version of a moved key stays behind (the deleted secret's history stays where it was).
    assert not stored_keys(old_pods) & set(PODS)
    assert not stored_keys(default) & set(SECRETS)

    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            assert keyspace(client) == before
            revision = before[0]
            # The moved keys' history was not copied: reads before the migration answer "compacted".
            with pytest.raises(grpc.RpcError) as compacted:
                client.get(PODS[0], revision=revision - 1)
            assert compacted.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "compacted" in (compacted.value.details() or "")
            # The lease still holds its key, and a moved key carries on from its version.
            alive = client.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=True), timeout=10)
            assert list(alive.keys) == [SECRETS[1]]
            answer = client.put(PODS[0], b"fourth", prev_kv=True)
            assert (answer.prev_kv.value, answer.prev_kv.version) == (b"third", 3)
            latest = client.get(PODS[0]).kvs[0]
            assert (latest.version, latest.create_revision, latest.mod_revision) == (
                4,
                answer.prev_kv.create_revision,
                answer.header.revision,
            )
    finally:
        server.stop()
    assert stored_keys(site.endpoints["pods"], live_only=True) == set(PODS)


def test_migrate_refuses_to_move_keys_into_an_etcd_backend(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.topology.write_text("backends: []\n")
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            client.put(SECRETS[0], b"s")
            before = keyspace(client)
    finally:
        server.stop()
    etcd, companions = etcd_store(tmp_path)
    try:
        site.topology.write_text(rules(("secrets", etcd, "secrets")))
        result = site.migrate(returncode=1)
        assert "1 keys would move from 'default'" in result.stderr, result.stderr
        assert "keys cannot be moved into or out of an etcd backend" in result.stderr
        site.topology.write_text("backends: []\n")
        server = site.start()
        try:
            with Etcd(server.channel()) as client:
                assert keyspace(client) == before
        finally:
            server.stop()
    finally:
        for companion in companions:
            companion.stop()


SECRETS_MANY = 3000
BATCH = 10  # keys per step: the migration takes long enough to be killed midway


def _live_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute(f"SELECT count(*) FROM kv WHERE superseded = {1 << 62}").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def test_a_migration_killed_midway_finishes_when_run_again_with_every_key_once(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.topology.write_text("backends: []\n")
    secrets = [b"/registry/secrets/ns-%d/s-%04d" % (i % 7, i) for i in range(SECRETS_MANY)]
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            for start in range(0, len(secrets), 100):
                client.txn([], [put_op(key, b"v" * 200) for key in secrets[start : start + 100]])
            client.put(STAYS[0], b"stays")
            before = keyspace(client)
    finally:
        server.stop()

    target = tmp_path / "secrets.db"
    site.topology.write_text(rules(("secrets", f"sqlite://{target}", "secrets")))
    migration = subprocess.Popen(
        site.migrate_command("--batch-size", str(BATCH)),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while _live_rows(target) < 10 * BATCH and migration.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    migration.send_signal(signal.SIGKILL)
    assert migration.wait(10) == -signal.SIGKILL, "the migration ended before it could be killed midway"

    default = site.endpoint.removeprefix("multi://")
    copied, left = stored_keys(f"sqlite://{target}", live_only=True), stored_keys(default, live_only=True)
    assert copied and set(secrets) - copied, "killed after it had moved everything"
    assert copied | left == set(secrets) | {STAYS[0]}  # nothing lost so far
    assert "a topology migration was interrupted" in site.refused_start()

    assert "moved" in site.migrate().stdout
    assert stored_keys(f"sqlite://{target}", live_only=True) == set(secrets)
    assert stored_keys(default, live_only=True) == {STAYS[0]}
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            assert keyspace(client) == before
    finally:
        server.stop()


def test_migrate_refuses_to_run_while_a_server_holds_the_databases(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.topology.write_text("backends: []\n")
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            client.put(SECRETS[0], b"s")
            site.topology.write_text(rules(("secrets", f"sqlite://{tmp_path}/secrets.db", "secrets")))
            result = site.migrate(returncode=1)
            assert "in use by another kubefabric" in result.stderr, result.stderr
            assert [kv.value for kv in client.get(SECRETS[0]).kvs] == [b"s"]
    finally:
        server.stop()
    assert stored_keys(site.endpoint.removeprefix("multi://"), live_only=True) == {SECRETS[0]}

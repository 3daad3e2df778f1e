"""Topology changes that would place stored keys elsewhere than where they are: refused while running
and at start-up, with a message naming the rules and how many keys; changes over empty ground go on.

The default backend is a SQLite file, `pods` a real PostgreSQL database; what each database holds
is read directly, past kubefabric.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kubefabric.core import Topology, TopologyError
from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import Etcd, prefix_end
from tests._databases import postgres_endpoint
from tests._servers import start_kubefabric
from tests._targets import etcd_store
from tests.conformance._support import WatchStream, wait_for
from tests.topology._moves import Site, keyspace, rules
from tests.topology._multi import stored_keys

REGISTRY, REGISTRY_END = b"/registry/", b"/registry0"
SECRET = b"/registry/secrets/default/s"
FOLLOW_TIMEOUT = 10.0
NOTE = b"/kubefabric/notes/topology"  # the etcd store's key for the recorded rules


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = Site(tmp_path, {"pods": postgres_endpoint()})
    site.topology.write_text(rules(("pods", site.endpoints["pods"], "pods")))
    return site


def test_a_rule_appended_over_stored_keys_is_refused_and_one_over_empty_ground_is_applied(site: Site) -> None:
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            client.put(SECRET, b"v1")
            secrets = f"sqlite://{site.workdir}/secrets.db"
            with site.topology.open("a") as topology:
                topology.write(rules(("secrets", secrets, "secrets")).removeprefix("backends:\n"))
            wait_for(lambda: "refused" in server.log.read_text(), FOLLOW_TIMEOUT, "the refusal")
            log = server.log.read_text()
            assert "1 stored key in another backend" in log, log
            assert "1 key stored in 'default' (the multi:// default) would belong to 'secrets' (backends entry 2" in log

            # Routing goes on by the rules in force: the key is neither hidden nor duplicated.
            assert [kv.value for kv in client.get(SECRET).kvs] == [b"v1"]
            client.put(SECRET, b"v2")
            listed = client.get(REGISTRY, REGISTRY_END).kvs
            assert [(kv.key, kv.value, kv.version) for kv in listed] == [(SECRET, b"v2", 2)]
            assert SECRET in stored_keys(site.endpoint.removeprefix("multi://"), live_only=True)
            assert SECRET not in stored_keys(secrets)
            assert client.delete(SECRET).deleted == 1
            assert client.get(REGISTRY, REGISTRY_END).count == 0

            # The same file without the refused rule, with one over keys nobody stored: applied.
            configmaps = f"sqlite://{site.workdir}/configmaps.db"
            site.topology.write_text(
                rules(("pods", site.endpoints["pods"], "pods"), ("configmaps", configmaps, "configmaps"))
            )
            wait_for(lambda: "topology now routes by 2 rules" in server.log.read_text(), FOLLOW_TIMEOUT, "the rule")
            key = b"/registry/configmaps/default/c"
            revision = client.put(key, b"c").header.revision
            assert stored_keys(configmaps, live_only=True) == {key}
            assert [kv.mod_revision for kv in client.get_prefix(b"/registry/configmaps/").kvs] == [revision]
    finally:
        server.stop()
    # The applied rules were recorded: the next start accepts them as they are.
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            assert [kv.key for kv in client.get(REGISTRY, REGISTRY_END).kvs] == [b"/registry/configmaps/default/c"]
    finally:
        server.stop()


def test_a_rule_changed_while_stopped_is_refused_at_start_up_naming_it_and_its_keys(site: Site) -> None:
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            client.put(b"/registry/pods/default/a", b"a")
            client.put(b"/registry/pods/default/b", b"b")
            before = keyspace(client)
    finally:
        server.stop()
    original = site.topology.read_text()
    site.topology.write_text(original.replace("prefix: pods", "prefix: podtemplates"))

    message = site.refused_start()
    assert "refused: these rules would place 2 stored keys in another backend" in message, message
    assert "2 keys stored in 'pods' (backends entry 1, prefix podtemplates) would belong to 'default'" in message
    assert "kubefabric topology migrate" in message

    # Nothing was changed: back to the rules the keys were placed by, every key is there.
    site.topology.write_text(original)
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            assert keyspace(client) == before
    finally:
        server.stop()


def test_reordered_rules_that_would_move_stored_keys_are_refused_at_start_up(site: Site) -> None:
    kube_system = f"""\
- name: kube-system
  endpoint: sqlite://{site.workdir}/kube-system.db
  namespace:
    namespace: kube-system
"""
    pods = rules(("pods", site.endpoints["pods"], "pods")).removeprefix("backends:\n")
    site.topology.write_text("backends:\n" + kube_system + pods)
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            client.put(b"/registry/pods/kube-system/coredns", b"c")
            client.put(b"/registry/pods/default/web", b"w")
    finally:
        server.stop()
    site.topology.write_text("backends:\n" + pods + kube_system)

    message = site.refused_start()
    assert (
        "1 key stored in 'kube-system' (backends entry 2, namespace kube-system) would belong to "
        "'pods' (backends entry 1, prefix pods)"
    ) in message, message


def test_keys_stored_before_rules_were_recorded_where_the_rules_would_not_put_them_are_refused(site: Site) -> None:
    # The same SQLite file, first used without a topology: the pod lands in it.
    server = start_kubefabric(site.workdir, site.endpoint.removeprefix("multi://"))
    try:
        with Etcd(server.channel()) as client:
            created = client.put(b"/registry/pods/default/old", b"old").header.revision
            client.put(b"/registry/services/specs/default/web", b"web")
    finally:
        server.stop()

    message = site.refused_start()
    assert "1 key stored in 'default' (the multi:// default) would belong to 'pods' (backends entry 1" in message

    assert "moved 1 keys" in site.migrate().stdout
    server = site.start()
    try:
        with Etcd(server.channel()) as client:
            pods = client.get_prefix(b"/registry/pods/").kvs
            assert [(kv.key, kv.create_revision, kv.mod_revision) for kv in pods] == [
                (b"/registry/pods/default/old", created, created)
            ]
            assert client.get(b"/registry/", prefix_end(b"/registry/")).count == 2
    finally:
        server.stop()
    assert stored_keys(site.endpoints["pods"]) == {b"/registry/pods/default/old"}


def test_an_etcd_default_backend_records_the_rules_in_a_key_its_clients_never_see(tmp_path: Path) -> None:
    etcd, companions = etcd_store(tmp_path)
    site = Site(tmp_path)
    site.topology.write_text(rules(("pods", f"sqlite://{tmp_path}/pods.db", "pods")))
    server = start_kubefabric(tmp_path, f"multi://{etcd}", "--compaction-interval", "0")
    server.companions = companions
    keys = [b"/registry/pods/default/p", b"/registry/secrets/default/s"]
    try:
        with Etcd(server.channel()) as client:
            revisions = [client.put(key, b"v").header.revision for key in reversed(keys)]
            everything = client.get(b"\0", b"\0")
            assert ([kv.key for kv in everything.kvs], everything.count) == (keys, 2)
            first = client.get(b"\0", b"\0", limit=1)
            assert ([kv.key for kv in first.kvs], first.count, first.more) == (keys[:1], 2, True)
            assert client.get(b"/kubefabric/", b"/kubefabric0").count == 0
            # The etcd's history holds the note's write too; the clients' history does not.
            with WatchStream(client) as stream:
                stream.create(b"\0", b"\0", start_revision=1)
                replayed: list[tuple[bytes, int]] = []
                while len(replayed) < len(keys):
                    replayed += [(event.kv.key, event.kv.mod_revision) for event in stream.next().events]
                assert replayed == list(zip(reversed(keys), revisions, strict=True))
        with grpc.insecure_channel(etcd.removeprefix("http://")) as channel:
            raw = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=NOTE), timeout=10)
        assert b'"name": "pods"' in raw.kvs[0].value
    finally:
        server.stop()


# -- which key ranges the check reads ------------------------------------------------------------

PODS_RULE = ("pods", "postgres://kf:secret@127.0.0.1:5432/pods", "pods")
SECRETS_RULE = ("secrets", "sqlite://./db/secrets.db", "secrets")


def _topology(*entries: tuple[str, str, str]) -> Topology:
    return Topology.parse(rules(*entries), "sqlite://./db/main.db", "topology.yaml")


def test_the_recorded_rules_name_databases_without_options_or_credentials() -> None:
    recorded = _topology(PODS_RULE).record()
    assert "secret" not in recorded and "kf" not in recorded
    # Another password or user, or options, name the same database: the record is the same.
    same = _topology(("pods", "postgres://other@127.0.0.1:5432/pods?sslmode=disable", "pods"))
    assert same.record() == recorded


def test_unchanged_rules_read_nothing_and_an_appended_one_reads_only_its_own_keys_in_the_default() -> None:
    before = _topology(PODS_RULE)
    assert before.suspect_ranges(before.record()) == {"default": []}
    after = _topology(PODS_RULE, SECRETS_RULE)
    assert after.suspect_ranges(before.record()) == {
        "secrets": [(b"\0", b"/registry/secrets/"), (b"/registry/secrets0", None)],
        "default": [(b"/registry/secrets/", b"/registry/secrets0")],
    }


def test_a_changed_rule_reads_where_its_backend_may_hold_keys_it_no_longer_takes() -> None:
    before = _topology(PODS_RULE, SECRETS_RULE)
    after = _topology(("pods", PODS_RULE[1], "podtemplates"), SECRETS_RULE)
    assert after.suspect_ranges(before.record()) == {
        "pods": [(b"\0", b"/registry/podtemplates/"), (b"/registry/podtemplates0", None)],
        "secrets": [(b"\0", b"/registry/secrets/"), (b"/registry/secrets0", None)],
        "default": [
            (b"/registry/podtemplates/", b"/registry/podtemplates0"),
            (b"/registry/secrets/", b"/registry/secrets0"),
        ],
    }


def test_rules_that_leave_out_a_recorded_database_are_refused_naming_it() -> None:
    before = _topology(PODS_RULE, SECRETS_RULE)
    with pytest.raises(
        TopologyError, match=r"backends entry 1 .* 'pods' \(prefix pods\) at postgres://127.0.0.1:5432/pods, is gone"
    ):
        _topology(SECRETS_RULE).suspect_ranges(before.record())

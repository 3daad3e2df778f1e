"""bench/loadgen, the benchmark's Go load generator, against the real etcd and kubefabric: each
workload sends what it says and measures what it reports."""

from __future__ import annotations

import re

import pytest

from bench.run import Bench, Settings, build_loadgen, resident_mib
from tests._client import Etcd
from tests._servers import ServerProcess

PREFIX = b"/registry/bench/"
TARGETS = ["etcd", "kubefabric-sqlite"]
WINDOW = 0.5
KEY = re.compile(r"/registry/bench/ns-(\d+)/obj-(\d+)")


@pytest.fixture(scope="module")
def bench() -> Bench:
    return Bench(build_loadgen(), Settings(duration=WINDOW, sequential_lists=2))


def key_indexes(client: Etcd) -> set[tuple[int, int]]:
    """(namespace, index) of every benchmark key."""
    indexes = set()
    for kv in client.get_prefix(PREFIX, keys_only=True).kvs:
        match = KEY.fullmatch(kv.key.decode())
        assert match, kv.key
        indexes.add((int(match[1]), int(match[2])))
    return indexes


@pytest.mark.parametrize("server", TARGETS, indirect=True)
def test_creates_write_fresh_keys_in_each_clients_namespace(bench: Bench, server: ServerProcess, client: Etcd) -> None:
    window = bench.run_window(server, "creates", clients=4)

    created = key_indexes(client)
    assert {namespace for namespace, _ in created} == {0, 1, 2, 3}
    for namespace in range(4):  # each client counts up from 0
        indexes = sorted(index for ns, index in created if ns == namespace)
        assert indexes == list(range(len(indexes)))
    assert 0.5 * window.operations_per_second * WINDOW <= len(created)
    assert window.cpu.generator > 0 and window.cpu.server > 0
    assert {kv.value for kv in client.get_prefix(PREFIX).kvs} == {b"v" * 1024}


@pytest.mark.parametrize("server", TARGETS, indirect=True)
def test_updates_rewrite_every_preloaded_key(bench: Bench, server: ServerProcess, client: Etcd) -> None:
    bench.preload(server, 4 * 3, namespaces=4)
    assert key_indexes(client) == {(index % 4, index) for index in range(12)}

    window = bench.run_window(server, "updates", clients=4, keys_per_client=3)

    assert window.operations_per_second > 0
    assert all(kv.version > 1 for kv in client.get_prefix(PREFIX).kvs)
    assert len(key_indexes(client)) == 12  # no key created by an update


@pytest.mark.parametrize("server", TARGETS, indirect=True)
def test_lists_page_through_every_key_and_check_the_count(bench: Bench, server: ServerProcess, client: Etcd) -> None:
    bench.preload(server, 700, namespaces=100)
    bench.preload(server, 534, namespaces=100, first=700)  # continues the same key sequence
    assert key_indexes(client) == {(index % 100, index) for index in range(1234)}

    assert len(bench.generate(server, "list-latency", keys=1234, count=2).seconds) == 2  # 3 pages of 500
    assert bench.run_window(server, "lists", clients=2, keys=1234).operations_per_second > 0
    with pytest.raises(RuntimeError, match="a full list returned 1234 keys, expected 1233"):
        bench.generate(server, "list-latency", keys=1233, count=1)


@pytest.mark.parametrize("server", TARGETS, indirect=True)
def test_watch_times_every_put(bench: Bench, server: ServerProcess, client: Etcd) -> None:
    delays = bench.generate(server, "watch", rate=100, duration="0.5s").seconds

    assert len(delays) == 50 == len(key_indexes(client))
    assert all(0 < delay < 5 for delay in delays)


@pytest.mark.parametrize("server", TARGETS, indirect=True)
def test_resident_memory_grows_with_the_keys_loaded(bench: Bench, server: ServerProcess) -> None:
    assert server.process is not None
    empty = resident_mib(server.process.pid)
    bench.preload(server, 20_000, namespaces=100)
    assert 5 < empty < resident_mib(server.process.pid)


def test_a_server_that_is_not_there_fails_the_run(bench: Bench, etcd: ServerProcess) -> None:
    etcd.stop()
    with pytest.raises(RuntimeError, match=f"connecting to {etcd.address}: context deadline exceeded"):
        bench.generate(etcd, "list-latency", keys=0, count=1)

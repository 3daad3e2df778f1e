"""Fixtures: every test talks over real gRPC to a real server process.

`server` is parametrized over every target: the real etcd (so each conformance assertion is first
proven against the oracle) and kubefabric on each store. Stores that need a database server get a
fresh database per test from the local service, started here if it is not running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._client import Etcd
from tests._databases import mysql_drop_databases, postgres_drop_databases
from tests._servers import ServerProcess, WarmServers, start_etcd, start_kubefabric
from tests._targets import STORE_ENDPOINTS, start_store

TARGETS = ["etcd", *(f"kubefabric-{store}" for store in STORE_ENDPOINTS)]
STORES = list(STORE_ENDPOINTS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the databases this session's servers used (their servers are stopped by now)."""
    postgres_drop_databases()
    mysql_drop_databases()


def start_target(target: str, workdir: Path) -> ServerProcess:
    if target == "etcd":
        return start_etcd(workdir)
    return start_store(target.removeprefix("kubefabric-"), workdir)


@pytest.fixture(scope="session")
def warm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmServers]:
    # Made here, once: the pool's threads would otherwise race to create it, and pytest empties a
    # given base directory (pytest-xdist gives each worker one) when it makes it.
    tmp_path_factory.getbasetemp()
    pool = WarmServers(lambda target: start_target(target, tmp_path_factory.mktemp(target)))
    yield pool
    pool.close()


@pytest.fixture(params=TARGETS)
def server(request: pytest.FixtureRequest, warm_servers: WarmServers) -> Iterator[ServerProcess]:
    """A fresh server of each target: the oracle etcd and kubefabric on every store."""
    process = warm_servers.take(request.param)
    yield process
    warm_servers.release(process)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Etcd]:
    with Etcd(server.channel()) as etcd:
        yield etcd


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_endpoint(store: str, tmp_path: Path) -> Iterator[str]:
    endpoint, companions = STORE_ENDPOINTS[store](tmp_path)
    yield endpoint
    for companion in companions:
        companion.stop()


@pytest.fixture
def kubefabric(store_endpoint: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """kubefabric alone, on each store."""
    process = start_kubefabric(tmp_path, store_endpoint)
    yield process
    process.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[ServerProcess]:
    """The real etcd, fresh and empty."""
    (tmp_path / "oracle").mkdir()
    process = start_etcd(tmp_path / "oracle")
    yield process
    process.stop()

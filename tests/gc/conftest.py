"""One kubefabric per store for each test module here, shared by its tests: each case writes objects of its own
(tagged names and uids), so cases never see each other's objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._client import Etcd
from tests._servers import ServerProcess
from tests._targets import STORE_ENDPOINTS, start_store


@pytest.fixture(scope="module", params=list(STORE_ENDPOINTS))
def gc_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp(f"gc-{request.param}")
    # No automatic compaction: the tests read the history of the collector's writes.
    process = start_store(request.param, workdir, "--compaction-interval", "0")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gc_client(gc_server: ServerProcess) -> Iterator[Etcd]:
    with Etcd(gc_server.channel()) as client:
        yield client

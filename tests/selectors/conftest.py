"""One kubefabric per store for each test module here: examples and tests reuse it, each on keys of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._client import Etcd
from tests._servers import ServerProcess
from tests._targets import STORE_ENDPOINTS, start_store


@pytest.fixture(scope="module", params=list(STORE_ENDPOINTS))
def store_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp(f"selectors-{request.param}")
    # No automatic compaction: the tests read old revisions. Quick progress notifications: the watch
    # tests wait for one.
    process = start_store(
        request.param, workdir, "--compaction-interval", "0", "--watch-progress-notify-interval", "300ms"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def store_client(store_server: ServerProcess) -> Iterator[Etcd]:
    with Etcd(store_server.channel()) as client:
        yield client

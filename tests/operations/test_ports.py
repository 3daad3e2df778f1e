"""A port that is taken stays taken: a second server on the same etcd API or metrics address fails
to start naming it, and the first keeps serving. (gRPC's default SO_REUSEPORT would let the
second one start, and clients would alternate between two servers with different data.)"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests._client import Etcd
from tests._servers import start_kubefabric
from tests.operations._processes import refused_start


@pytest.mark.parametrize("taken", ["--listen-address", "--metrics-address"])
def test_a_second_server_on_a_taken_port_fails_naming_it_and_the_first_keeps_serving(
    tmp_path: Path, taken: str
) -> None:
    first = start_kubefabric(tmp_path, f"sqlite://{tmp_path}/first.db")
    try:
        metrics_flag = first.command.index("--metrics-address") + 1
        busy = first.address if taken == "--listen-address" else first.command[metrics_flag]
        with Etcd(first.channel()) as client:
            revision = client.put(b"served-by", b"the first").header.revision

            stderr = refused_start(f"sqlite://{tmp_path}/second.db", taken, busy)

            assert f"on {busy}: " in stderr, stderr
            for _ in range(20):  # on a shared port, some of these would reach the second server
                assert client.get(b"served-by").header.revision == revision
        with urllib.request.urlopen(f"http://{first.command[metrics_flag]}/metrics", timeout=10) as response:
            assert b"kubefabric_revision" in response.read()
    finally:
        assert first.stop() == 0

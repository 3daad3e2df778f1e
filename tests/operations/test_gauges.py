"""The watcher gauge follows watches as they open and close, with no write to prompt it."""

from __future__ import annotations

import queue
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd
from tests._servers import start_kubefabric


def gauge(metrics_address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match[1])


def test_the_watchers_gauge_is_live_without_any_write(tmp_path: Path) -> None:
    server = start_kubefabric(tmp_path, f"sqlite://{tmp_path}/state.db")
    metrics = server.command[server.command.index("--metrics-address") + 1]
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()

    def stream() -> Iterator[rpc_pb2.WatchRequest]:
        while (request := requests.get()) is not None:
            yield request

    try:
        with Etcd(server.channel()) as client:
            revision = client.revision()
            assert gauge(metrics, "kubefabric_watchers") == 0
            responses = client.watch.Watch(stream())
            for key in (b"a", b"b"):
                requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key)))
                assert next(responses).created
            assert gauge(metrics, "kubefabric_watchers") == 2

            requests.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0)))
            assert next(responses).canceled
            assert gauge(metrics, "kubefabric_watchers") == 1
            assert client.revision() == revision, "nothing was written"
            requests.put(None)
    finally:
        server.stop()

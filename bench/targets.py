"""The servers a benchmark run can compare: the real etcd (the reference) and kubefabric on each store."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from tests._databases import mysql_drop_databases, postgres_drop_databases, postgres_endpoint
from tests._servers import ServerProcess, free_port, start_etcd, start_kubefabric
from tests._targets import STORE_ENDPOINTS

REFERENCE = "etcd"
# Python's gRPC answering from canned bytes (bench/grpc_floor.py): the ceiling of writes for any
# server on grpcio here. It stores nothing, so only the write workloads run on it.
FLOOR = "grpc-floor"
FLOOR_WORKLOADS = ("creates", "updates")

# The benchmark's keys (/registry/bench/ns-N/...) split by namespace: even ones in PostgreSQL, the
# rest in the default SQLite file, so lists and watches of the prefix span both.
SPREAD_TOPOLOGY = """\
backends:
- name: even-namespaces
  endpoint: {postgres}
  regexp:
    prefix: bench/
    key: bench/ns-[0-9]*[02468]/
"""


def spread_store(workdir: Path) -> tuple[str, list[ServerProcess]]:
    (workdir / "topology.yaml").write_text(SPREAD_TOPOLOGY.format(postgres=postgres_endpoint()))
    return f"multi://sqlite://{workdir}/state.db", []


# Database servers are the local ones; each run gets fresh databases, dropped by `clean_up`.
# `multi` routes the benchmark's keys to its default SQLite file through the full test topology:
# beside `sqlite` it shows what routing costs.
# `etcd-store` is kubefabric keeping its data in a real etcd (REFERENCE is etcd used directly).
KUBEFABRIC_STORES: dict[str, Callable[[Path], tuple[str, list[ServerProcess]]]] = {
    **{("etcd-store" if name == "etcd" else name): store for name, store in STORE_ENDPOINTS.items()},
    "multi-spread": spread_store,
}

TARGETS = [REFERENCE, FLOOR, *KUBEFABRIC_STORES]


def start_target(target: str, workdir: Path) -> ServerProcess:
    """A fresh, empty server for one target, serving on a loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    if target == REFERENCE:
        return start_etcd(workdir)
    if target == FLOOR:
        address = f"127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "bench.grpc_floor", "--listen-address", address]
        return ServerProcess(command, address, workdir / "grpc-floor.log").start()
    endpoint, companions = KUBEFABRIC_STORES[target](workdir)
    server = start_kubefabric(workdir, endpoint)
    server.companions = companions
    return server


def clean_up() -> None:
    """Drop the databases the run created."""
    postgres_drop_databases()
    mysql_drop_databases()

"""The servers a benchmark run can compare: the real etcd (the reference) and kubefabric on each store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests._databases import mysql_drop_databases, mysql_endpoint, postgres_drop_databases, postgres_endpoint
from tests._servers import ServerProcess, start_etcd, start_kubefabric

REFERENCE = "etcd"

# kubefabric targets by store name: each maps a fresh work directory to the server's --endpoint.
# Database servers are the local ones; each run gets fresh databases, dropped by `clean_up`.
KUBEFABRIC_ENDPOINTS: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda workdir: f"sqlite://{workdir}/state.db",
    "postgres": lambda workdir: postgres_endpoint(),
    "mysql": lambda workdir: mysql_endpoint(),
}

TARGETS = [REFERENCE, *KUBEFABRIC_ENDPOINTS]


def start_target(target: str, workdir: Path) -> ServerProcess:
    """A fresh, empty server for one target, serving on a loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    if target == REFERENCE:
        return start_etcd(workdir)
    return start_kubefabric(workdir, KUBEFABRIC_ENDPOINTS[target](workdir))


def clean_up() -> None:
    """Drop the databases the run created."""
    postgres_drop_databases()
    mysql_drop_databases()

"""The servers a benchmark run can compare: the real etcd (the reference) and kubefabric on each store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests._servers import ServerProcess, start_etcd, start_kubefabric

REFERENCE = "etcd"

# kubefabric targets by store name: each maps a fresh work directory to the server's --endpoint.
# A new store is one more line here, e.g. "postgres": lambda workdir: "postgres://127.0.0.1/bench".
KUBEFABRIC_ENDPOINTS: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda workdir: f"sqlite://{workdir}/state.db",
}

TARGETS = [REFERENCE, *KUBEFABRIC_ENDPOINTS]


def start_target(target: str, workdir: Path) -> ServerProcess:
    """A fresh, empty server for one target, serving on a loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    if target == REFERENCE:
        return start_etcd(workdir)
    return start_kubefabric(workdir, KUBEFABRIC_ENDPOINTS[target](workdir))

"""kubefabric's stores as test and benchmark targets: each maps a fresh work directory to an
--endpoint and the servers behind it that the caller owns (stopped after kubefabric)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests._databases import mysql_endpoint, postgres_endpoint
from tests._servers import ServerProcess, start_etcd, start_kubefabric


def etcd_store(workdir: Path) -> tuple[str, list[ServerProcess]]:
    (workdir / "store-etcd").mkdir()
    backing = start_etcd(workdir / "store-etcd")
    return f"http://{backing.address}", [backing]


# Spreads Kubernetes' keys over every kind of database at once; the rest goes to the default.
MULTI_TOPOLOGY = """\
backends:
- name: rbac
  endpoint: {etcd}
  regexp:
    prefix: (clusterrolebindings|clusterroles|rolebindings|roles|serviceaccounts)
    key: (clusterrolebindings|clusterroles|rolebindings|roles|serviceaccounts)
- name: kube-system
  endpoint: {mysql}
  namespace:
    namespace: kube-system
- name: pods
  endpoint: {postgres}
  prefix:
    prefix: pods
- name: shirts
  endpoint: sqlite://{workdir}/shirts.db
  customresource:
    group: stable.example.com
    kind: shirts
"""


def multi_store(workdir: Path) -> tuple[str, list[ServerProcess]]:
    """A multi:// endpoint over SQLite (the default and shirts), PostgreSQL, MariaDB and a real etcd;
    its topology file is workdir/topology.yaml (start_kubefabric passes it when it exists)."""
    etcd_endpoint, companions = etcd_store(workdir)
    (workdir / "topology.yaml").write_text(
        MULTI_TOPOLOGY.format(etcd=etcd_endpoint, mysql=mysql_endpoint(), postgres=postgres_endpoint(), workdir=workdir)
    )
    return f"multi://sqlite://{workdir}/state.db", companions


# kubefabric targets by store name: each maps a per-test work directory to an --endpoint and the
# servers behind it that the test owns.
STORE_ENDPOINTS: dict[str, Callable[[Path], tuple[str, list[ServerProcess]]]] = {
    "sqlite": lambda workdir: (f"sqlite://{workdir}/state.db", []),
    "postgres": lambda workdir: (postgres_endpoint(), []),
    "mysql": lambda workdir: (mysql_endpoint(), []),
    "etcd": etcd_store,
    "multi": multi_store,
}


def start_store(store: str, workdir: Path, *flags: str) -> ServerProcess:
    """kubefabric on one of STORE_ENDPOINTS with `flags`; the servers behind it are its companions, stopped with it,
    or at once if it does not start."""
    endpoint, companions = STORE_ENDPOINTS[store](workdir)
    try:
        server = start_kubefabric(workdir, endpoint, *flags)
    except BaseException:
        for companion in companions:
            companion.stop()
        raise
    server.companions = companions
    return server

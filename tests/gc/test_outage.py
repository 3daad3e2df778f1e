"""An outage of one backend of a multi:// topology delays only the collection of the objects stored there: the
dependents in the healthy backends go at once, those in the stopped one once it is back, without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._client import Etcd
from tests._servers import ServerProcess
from tests._targets import start_store
from tests.gc._apiserver import metric
from tests.gc._objects import Case, encode
from tests.gc._reference import LABEL, Obj, OwnerRef

CASE = Case("outage")
OWNER = Obj("uid-owner", "/registry/configmaps/default/owner", {LABEL: "true"})
# Where the test topology puts them: the default SQLite database, PostgreSQL, and the real etcd that is stopped.
IN_SQLITE = Obj("uid-in-sqlite", "/registry/configmaps/default/in-sqlite", {LABEL: "true"}, (OwnerRef("uid-owner"),))
IN_POSTGRES = Obj("uid-in-postgres", "/registry/pods/default/in-postgres", {LABEL: "true"}, (OwnerRef("uid-owner"),))
IN_ETCD = Obj("uid-in-etcd", "/registry/serviceaccounts/default/in-etcd", {LABEL: "true"}, (OwnerRef("uid-owner"),))


@pytest.fixture
def multi(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A kubefabric on the multi:// topology, and the real etcd behind its `rbac` backend."""
    server = start_store("multi", tmp_path, "--compaction-interval", "0")
    (etcd,) = server.companions
    yield server, etcd
    server.stop()


def stored(client: Etcd, obj: Obj) -> bool:
    return bool(client.get(CASE.key(obj.key).encode()).kvs)


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_stopped_backend_holds_up_only_the_collection_of_its_own_objects(
    multi: tuple[ServerProcess, ServerProcess],
) -> None:
    server, etcd = multi
    with Etcd(server.channel()) as client:
        for obj in (OWNER, IN_SQLITE, IN_POSTGRES, IN_ETCD):
            client.put(CASE.key(obj.key).encode(), encode(obj, CASE, "json"))
        etcd.stop()
        failed = metric(server, "kubefabric_gc_failed_total")
        client.delete(CASE.key(OWNER.key).encode())

        wait_until(lambda: not stored(client, IN_SQLITE) and not stored(client, IN_POSTGRES), timeout=5)
        wait_until(lambda: metric(server, "kubefabric_gc_failed_total") > failed, timeout=5)
        with pytest.raises(Exception, match="UNAVAILABLE"):
            stored(client, IN_ETCD)

        etcd.start()
        # Tried again within RETRY_MAX seconds, without a restart of kubefabric.
        wait_until(lambda: not stored(client, IN_ETCD), timeout=15)
        assert metric(server, "kubefabric_gc_collected_total") == 3
        assert metric(server, "kubefabric_gc_pending") == 0

"""kill -9 in the middle of a large collection: the restarted server finishes it, touching nothing else and deleting
no key twice (the pending work is rebuilt from the stored objects, not remembered)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubefabric.etcdpb import kv_pb2
from tests._client import Etcd, prefix_end, put_op
from tests.crash.test_kill9 import RestartableServer
from tests.gc._apiserver import history
from tests.gc._objects import Case, assert_only_metadata_edited, encode, read
from tests.gc._reference import LABEL, Obj, OwnerRef

DEPENDENTS = 10_000
PUTS_PER_TXN = 128  # the most a txn may hold
CASE = Case("crash")
DEPENDENT_PREFIX = b"/registry/pods/default/crash-dependent-"
COLLECTION_TIMEOUT = 120.0
KILL_WHEN_LEFT = DEPENDENTS * 95 // 100  # a few of the collector's commits done
SHARED = "/registry/pods/default/shared"


def dependent(number: int) -> Obj:
    key = f"/registry/pods/default/dependent-{number:05d}"
    return Obj(f"uid-dependent-{number}", key, {LABEL: "true"}, (OwnerRef("uid-owner", number % 2 == 0),))


def unrelated() -> list[Obj]:
    """Objects the collection must not touch: labelled ones with a live owner (one of them also owned by the deleted
    owner: its reference goes, it stays), unlabelled dependents of the deleted owner, objects elsewhere."""
    alive = OwnerRef("uid-alive")
    return [
        Obj("uid-alive", "/registry/configmaps/default/alive", {LABEL: "true"}),
        Obj("uid-shared", SHARED, {LABEL: "true"}, (OwnerRef("uid-owner"), alive)),
        *(Obj(f"uid-kept-{n}", f"/registry/pods/default/kept-{n}", {LABEL: ""}, (alive,)) for n in range(100)),
        *(Obj(f"uid-plain-{n}", f"/registry/pods/default/plain-{n}", {}, (OwnerRef("uid-owner"),)) for n in range(100)),
        *(Obj(f"uid-other-{n}", f"/registry/serviceaccounts/default/other-{n}", {LABEL: ""}) for n in range(100)),
    ]


@pytest.fixture
def restartable(tmp_path: Path, store_endpoint: str) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path, store_endpoint)
    yield server
    server.stop()


def load(client: Etcd, objects: list[Obj]) -> None:
    """Many puts per txn, each txn of one directory (of one backend on the multi:// topology)."""
    for _, group in itertools.groupby(sorted(objects, key=lambda obj: obj.key), lambda obj: obj.key.rsplit("/", 1)[0]):
        in_directory = list(group)
        for first in range(0, len(in_directory), PUTS_PER_TXN):
            batch = in_directory[first : first + PUTS_PER_TXN]
            client.txn([], [put_op(CASE.key(obj.key).encode(), encode(obj, CASE, "json")) for obj in batch])


def remaining(client: Etcd) -> int:
    return int(client.get(DEPENDENT_PREFIX, prefix_end(DEPENDENT_PREFIX), count_only=True).count)


def owners(client: Etcd, key: bytes) -> tuple[OwnerRef, ...]:
    [kv] = client.get(key).kvs
    return read(CASE, key, kv.value).owners


def everything_else(client: Etcd) -> dict[bytes, tuple[int, bytes]]:
    kvs = client.get(b"\0", b"\0").kvs
    return {kv.key: (kv.mod_revision, kv.value) for kv in kvs if not kv.key.startswith(DEPENDENT_PREFIX)}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres", "mysql", "etcd", "multi"])
def test_a_collection_killed_midway_is_finished_after_a_restart(restartable: RestartableServer) -> None:
    server = restartable.start()
    owner = Obj("uid-owner", "/registry/configmaps/default/owner", {LABEL: "true"})
    with Etcd(server.channel()) as client:
        load(client, [owner, *unrelated(), *(dependent(n) for n in range(DEPENDENTS))])
        client.put(b"/outside/registry", b"not an object")
        assert remaining(client) == DEPENDENTS
        owner_key = CASE.key(owner.key).encode()
        before = everything_else(client)
        deletion = client.delete(owner_key).header.revision

        deadline = time.monotonic() + COLLECTION_TIMEOUT
        while (left := remaining(client)) > KILL_WHEN_LEFT:
            assert time.monotonic() < deadline, f"the collection is slow: {left} dependents left"
        server.kill()
    assert left, "the collection was over before the kill"

    server = restartable.start()
    shared = CASE.key(SHARED).encode()
    with Etcd(server.channel()) as client:
        deadline = time.monotonic() + COLLECTION_TIMEOUT
        # The one dependent of both owners loses its reference to the deleted one.
        while remaining(client) or owners(client, shared) != (OwnerRef("uid-alive"),):
            assert time.monotonic() < deadline, f"{remaining(client)} dependents left after the restart"
            time.sleep(0.1)

        after = everything_else(client)
        assert_only_metadata_edited(before[shared][1], after.pop(shared)[1])
        del before[owner_key], before[shared]
        assert after == before
        events = [event for event in history(client, deletion + 1) if event.kv.key.startswith(DEPENDENT_PREFIX)]
    assert all(event.type == kv_pb2.Event.DELETE and event.prev_kv.value for event in events)
    deletes = Counter(event.kv.key for event in events)
    assert len(deletes) == DEPENDENTS and set(deletes.values()) == {1}, deletes.most_common(3)

# TEMPORARY: etcd against etcd, to prove the normalization. Delete before handing back.
import collections
import time
from pathlib import Path

import pytest

from tests._servers import ServerProcess, start_etcd
from tests.differential import _lockstep, test_against_etcd

STATS = collections.Counter()


def show_short(r):
    r2 = type(r)(); r2.CopyFrom(r); r2.ClearField('header'); return _lockstep.show(r2)


@pytest.fixture
def second_etcd(tmp_path: Path):
    (tmp_path / "second").mkdir()
    process = start_etcd(tmp_path / "second")
    yield process
    process.stop()


def test_etcd_against_itself(etcd: ServerProcess, second_etcd: ServerProcess, monkeypatch) -> None:
    call, awaiting, sleep, init = _lockstep.Lockstep.call, _lockstep.WatchStream._await, time.sleep, test_against_etcd.SameAsEtcd.__init__

    def counted_call(self, service, method, request):
        STATS[method] += 1
        outcome = call(self, service, method, request)
        if isinstance(outcome, _lockstep.Failure):
            STATS["error " + outcome.details] += 1
        elif method == "Txn":
            STATS["txn succeeded=%s" % outcome.succeeded] += 1
        return outcome

    def timed_await(self, found):
        t = time.monotonic()
        r = awaiting(self, found)
        STATS["await seconds x1000"] += int((time.monotonic() - t) * 1000)
        if r is None:
            STATS["await timeouts"] += 1
        return r

    def counted_sleep(s):
        STATS["sleeps"] += 1
        sleep(s)

    def counted_init(self, session):
        STATS["examples"] += 1
        init(self, session)

    monkeypatch.setattr(_lockstep.Lockstep, "call", counted_call)
    check_same = _lockstep.Lockstep.check_same

    def counted_check(self, operation, request, expected, actual):
        if operation.startswith("Watch"):
            STATS[operation.split()[0] + " " + operation.split()[-1]] += 1
            if isinstance(expected, list):
                STATS["watch events"] += len(expected[0].events)
                STATS["watch notices"] += len(expected) - 1
                STATS["watch prev_kv events"] += sum(e.HasField("prev_kv") for e in expected[0].events)
            elif not isinstance(expected, _lockstep.Failure) and expected.canceled and operation.endswith("create"):
                STATS["watch create refused: " + show_short(expected)] += 1
        return check_same(self, operation, request, expected, actual)

    monkeypatch.setattr(_lockstep.Lockstep, "check_same", counted_check)
    monkeypatch.setattr(_lockstep.WatchStream, "_await", timed_await)
    monkeypatch.setattr(test_against_etcd.time, "sleep", counted_sleep)
    monkeypatch.setattr(test_against_etcd.SameAsEtcd, "__init__", counted_init)
    t = time.monotonic()
    try:
        test_against_etcd.test_operation_sequences_match_etcd(etcd, second_etcd)
    finally:
        STATS["total seconds"] = int(time.monotonic() - t)
        for k, v in sorted(STATS.items()):
            print(f"{v:8d}  {k}")

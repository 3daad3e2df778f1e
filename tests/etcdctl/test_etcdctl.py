"""The real Go client, etcdctl (ETCDCTL_API=3), against kubefabric: what operators type, byte for byte."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

from tests._servers import ServerProcess, WarmServers

# Each etcdctl call is one short request; this bounds a hang, not a normal call.
COMMAND_TIMEOUT = 20.0
# How long a watch may take to print events the server owes it.
WATCH_TIMEOUT = 10.0
# kube-apiserver 1.31+ needs at least this etcd version to use RequestWatchProgress.
MINIMUM_ADVERTISED_VERSION = (3, 5, 13)
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def etcdctl_binary() -> str:
    path = shutil.which("etcdctl")
    if path is None:
        pytest.fail("etcdctl is needed for these tests: apt-get install etcd-client")
    return path


class Etcdctl:
    """etcdctl pointed at one server."""

    def __init__(self, server: ServerProcess) -> None:
        self.command = [etcdctl_binary(), f"--endpoints={server.address}", "--command-timeout=10s"]
        self.env = {**os.environ, "ETCDCTL_API": "3"}

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=COMMAND_TIMEOUT,
        )

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        """stdout of a command that must succeed."""
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"etcdctl {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-w", "json"))

    def revision(self) -> int:
        return int(self.json("get", "any-key")["header"]["revision"])

    def background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )


@pytest.fixture
def kubefabric(store: str, warm_servers: WarmServers) -> Iterator[ServerProcess]:
    """A fresh kubefabric per test on each store, as the shared fixture gives, but from the warm pool,
    so that each server's start-up overlaps the previous test."""
    process = warm_servers.take(f"kubefabric-{store}")
    yield process
    warm_servers.release(process)


@pytest.fixture
def etcdctl(kubefabric: ServerProcess) -> Etcdctl:
    return Etcdctl(kubefabric)


class LineReader:
    """Lines of a running process's output, read with a deadline instead of blocking forever."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def take(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while len(lines) < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"after {timeout}s got only {len(lines)} of {count} lines: {lines}") from None
            if line is None:
                raise AssertionError(f"output ended after {len(lines)} of {count} lines: {lines}")
            lines.append(line)
        return lines


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """Background processes a test starts; all are ended when it finishes, passed or not."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def test_put_then_get_prints_keys_and_values(etcdctl: Etcdctl) -> None:
    assert etcdctl("put", "/registry/a", "one") == "OK\n"
    assert etcdctl("put", "/registry/b", "two words") == "OK\n"
    etcdctl("put", "/other", "not in the prefix")

    assert etcdctl("get", "--prefix", "/registry/") == "/registry/a\none\n/registry/b\ntwo words\n"
    assert etcdctl("get", "/registry/b", "--print-value-only") == "two words\n"
    assert etcdctl("get", "/missing") == ""


def test_get_json_carries_the_revisions_of_each_write(etcdctl: Etcdctl) -> None:
    etcdctl("put", "/p/a", "1")
    etcdctl("put", "/p/b", "2")
    etcdctl("put", "/p/a", "3")

    response = etcdctl.json("get", "--prefix", "/p/")

    kvs = [
        (
            base64.b64decode(kv["key"]),
            base64.b64decode(kv["value"]),
            kv["create_revision"],
            kv["mod_revision"],
            kv["version"],
        )
        for kv in response["kvs"]
    ]
    assert kvs == [(b"/p/a", b"3", 2, 4, 2), (b"/p/b", b"2", 3, 3, 1)]
    assert response["count"] == 2
    assert response["header"]["revision"] == 4
    assert response["header"]["cluster_id"] > 0 and response["header"]["member_id"] > 0


def test_del_removes_one_key_or_a_prefix_and_counts_them(etcdctl: Etcdctl) -> None:
    for key in ("/d/a", "/d/b", "/d/c", "/e"):
        etcdctl("put", key, "v")

    assert etcdctl("del", "/d/a") == "1\n"
    assert etcdctl("del", "/d/a") == "0\n"
    assert etcdctl("del", "--prefix", "/d/") == "2\n"
    assert etcdctl("get", "--prefix", "/", "--keys-only") == "/e\n\n"


def test_interactive_txn_runs_success_branch_when_compares_hold(etcdctl: Etcdctl) -> None:
    etcdctl("put", "/t/k", "v1")
    # Interactive mode reads compares, then success ops, then failure ops, each ended by an empty line.
    script = 'value("/t/k") = "v1"\n\nput /t/k v2\nput /t/new created\n\nput /t/k failed\n\n'

    output = etcdctl("txn", "-i", stdin=script)

    assert output.endswith("SUCCESS\n\nOK\n\nOK\n"), output
    assert etcdctl("get", "--prefix", "/t/") == "/t/k\nv2\n/t/new\ncreated\n"


def test_txn_runs_failure_branch_when_a_compare_fails(etcdctl: Etcdctl) -> None:
    etcdctl("put", "/t/k", "v1")
    created = etcdctl.revision()
    script = f'mod("/t/k") > "{created}"\n\nput /t/k never\n\nget /t/k\nput /t/fallback yes\n\n'

    assert etcdctl("txn", stdin=script) == "FAILURE\n\n/t/k\nv1\n\nOK\n"
    assert etcdctl("get", "/t/k", "--print-value-only") == "v1\n"
    assert etcdctl("get", "/t/fallback", "--print-value-only") == "yes\n"


def test_txn_json_reports_the_revision_of_the_write(etcdctl: Etcdctl) -> None:
    before = etcdctl.revision()

    response = json.loads(etcdctl("txn", "-w", "json", stdin='create("/t/c") = "0"\n\nput /t/c v\n\n\n'))

    assert response.get("succeeded") is True
    assert response["header"]["revision"] == before + 1
    assert response["responses"][0]["Response"]["ResponsePut"]["header"]["revision"] == before + 1


def test_watch_prefix_prints_puts_and_deletes_in_order(etcdctl: Etcdctl, running: list[subprocess.Popen[str]]) -> None:
    # Watching from the next revision means no event is missed, however late the watch starts.
    start = etcdctl.revision() + 1
    watch = etcdctl.background("watch", "--prefix", "/w/", f"--rev={start}")
    running.append(watch)
    assert watch.stdout is not None
    output = LineReader(watch.stdout)

    etcdctl("put", "/w/a", "1")
    etcdctl("put", "/w/b", "2")
    etcdctl("put", "/x", "outside the prefix")
    etcdctl("put", "/w/a", "3")
    etcdctl("del", "/w/a")
    etcdctl("put", "/w/last", "end")

    events = [
        ("PUT", "/w/a", "1"),
        ("PUT", "/w/b", "2"),
        ("PUT", "/w/a", "3"),
        ("DELETE", "/w/a", ""),
        ("PUT", "/w/last", "end"),
    ]
    # Each event is three lines: type, key, value (empty for a delete).
    expected = [line for event in events for line in event]
    assert output.take(len(expected), WATCH_TIMEOUT) == expected
    assert watch.poll() is None, "etcdctl watch exited"


def test_watch_from_an_old_revision_replays_history(etcdctl: Etcdctl, running: list[subprocess.Popen[str]]) -> None:
    etcdctl("put", "/h/a", "1")
    first = etcdctl.revision()
    etcdctl("put", "/h/a", "2")
    etcdctl("del", "/h/a")

    watch = etcdctl.background("watch", "/h/a", f"--rev={first}")
    running.append(watch)
    assert watch.stdout is not None

    events = [("PUT", "/h/a", "1"), ("PUT", "/h/a", "2"), ("DELETE", "/h/a", "")]
    expected = [line for event in events for line in event]
    assert LineReader(watch.stdout).take(len(expected), WATCH_TIMEOUT) == expected


def test_lease_lifecycle_and_revoke_deletes_attached_keys(etcdctl: Etcdctl) -> None:
    granted = etcdctl("lease", "grant", "60")
    match = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\(60s\)\n", granted)
    assert match, granted
    lease = match.group(1)
    etcdctl("put", "--lease", lease, "/l/k", "leased")
    etcdctl("put", "/l/free", "not leased")

    assert etcdctl("lease", "keep-alive", "--once", lease) == f"lease {lease} keepalived with TTL(60)\n"
    alive = etcdctl("lease", "timetolive", "--keys", lease)
    assert re.fullmatch(
        rf"lease {lease} granted with TTL\(60s\), remaining\((\d+)s\), attached keys\(\[/l/k\]\)\n", alive
    ), alive
    assert lease in etcdctl("lease", "list").split()

    assert etcdctl("lease", "revoke", lease) == f"lease {lease} revoked\n"

    assert etcdctl("get", "--prefix", "/l/") == "/l/free\nnot leased\n"
    assert etcdctl("lease", "timetolive", lease) == f"lease {lease} already expired\n"
    revoked_again = etcdctl.run("lease", "revoke", lease)
    assert revoked_again.returncode != 0
    assert "etcdserver: requested lease not found" in revoked_again.stderr


def test_compaction_makes_older_revisions_unreadable(etcdctl: Etcdctl) -> None:
    etcdctl("put", "/c", "old")
    old = etcdctl.revision()
    etcdctl("put", "/c", "new")
    current = etcdctl.revision()
    assert etcdctl("get", "/c", f"--rev={old}", "--print-value-only") == "old\n"

    assert etcdctl("compaction", str(current)) == f"compacted revision {current}\n"

    compacted = etcdctl.run("get", "/c", f"--rev={old}")
    assert compacted.returncode != 0
    assert ERR_COMPACTED in compacted.stderr
    assert etcdctl("get", "/c", f"--rev={current}", "--print-value-only") == "new\n"
    assert etcdctl.json("get", "/c")["header"]["revision"] == current


def test_endpoint_status_json_advertises_a_kubernetes_ready_version(
    etcdctl: Etcdctl, kubefabric: ServerProcess
) -> None:
    etcdctl("put", "/s", "v")

    [endpoint] = etcdctl.json("endpoint", "status")

    assert endpoint["Endpoint"] == kubefabric.address
    status = endpoint["Status"]
    version = tuple(int(part) for part in status["version"].split(".")[:3])
    assert version >= MINIMUM_ADVERTISED_VERSION, status["version"]
    assert status["header"]["revision"] == 2
    assert status["leader"] == status["header"]["member_id"]
    assert status["dbSize"] > 0


def test_endpoint_health_reports_healthy(etcdctl: Etcdctl, kubefabric: ServerProcess) -> None:
    result = etcdctl.run("endpoint", "health")

    assert result.returncode == 0, result.stderr
    # etcdctl 3.4 prints the health line on stderr.
    assert f"{kubefabric.address} is healthy: successfully committed proposal" in result.stderr


def test_member_list_shows_one_started_member_at_the_client_url(etcdctl: Etcdctl, kubefabric: ServerProcess) -> None:
    [line] = etcdctl("member", "list").splitlines()
    member_id, state, name, _peer_urls, client_urls, is_learner = line.split(", ")
    assert (state, client_urls, is_learner) == ("started", f"http://{kubefabric.address}", "false")
    assert name

    [member] = etcdctl.json("member", "list")["members"]
    assert f"{member['ID']:x}" == member_id
    assert member["clientURLs"] == [f"http://{kubefabric.address}"]

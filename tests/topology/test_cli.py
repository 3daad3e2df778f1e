"""`kubefabric route` and `kubefabric topology check`, run as the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.topology import DEFAULT_ENDPOINT, EXAMPLE

MULTI = f"multi://{DEFAULT_ENDPOINT}"


def kubefabric(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("KUBEFABRIC_", "TOPOLOGY_"))}
    return subprocess.run(
        [sys.executable, "-m", "kubefabric", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "topology.yaml").write_text(EXAMPLE)
    return tmp_path


def test_route_prints_the_backend_its_rule_and_its_redacted_endpoint(workdir: Path) -> None:
    result = kubefabric(
        "--endpoint",
        MULTI,
        "route",
        "/registry/pods/kube-system/coredns",
        "/registry/pods/team-a/web",
        "compact_rev_key",
        cwd=workdir,
        env={"TOPOLOGY_CONFIG": "./topology.yaml"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "/registry/pods/kube-system/coredns -> kube-system (namespace kube-system) "
        "mysql://root:***@tcp(127.0.0.1:3306)/kube_system",
        "/registry/pods/team-a/web -> pods (prefix pods) postgres://postgres@127.0.0.1:5432/pods",
        f"compact_rev_key -> default (default) {DEFAULT_ENDPOINT}",
    ]


def test_route_takes_the_settings_from_flags_after_the_command_or_from_the_environment(workdir: Path) -> None:
    by_flags = kubefabric(
        "route", "/registry/clusterroles/admin", "--topology-config", "topology.yaml", "--endpoint", MULTI, cwd=workdir
    )
    by_env = kubefabric(
        "route",
        "/registry/clusterroles/admin",
        cwd=workdir,
        env={"TOPOLOGY_CONFIG": "topology.yaml", "KUBEFABRIC_ENDPOINT": MULTI},
    )

    assert by_flags.returncode == 0 and by_env.returncode == 0, (by_flags.stderr, by_env.stderr)
    assert by_flags.stdout == by_env.stdout
    assert by_flags.stdout.startswith("/registry/clusterroles/admin -> rbac (regexp key=(clusterrolebindings|")


def test_route_without_a_topology_exits_2_saying_so(workdir: Path) -> None:
    result = kubefabric("route", "/registry/pods/a/b", "--endpoint", MULTI, cwd=workdir)

    assert result.returncode == 2
    assert "no topology is configured" in result.stderr and "--topology-config" in result.stderr
    assert "Traceback" not in result.stderr


def test_route_with_a_topology_but_no_multi_endpoint_exits_2(workdir: Path) -> None:
    result = kubefabric("route", "/registry/pods/a/b", cwd=workdir, env={"TOPOLOGY_CONFIG": "topology.yaml"})

    assert result.returncode == 2
    assert "multi://" in result.stderr


def test_route_with_an_unusable_topology_exits_1_naming_the_entry(workdir: Path) -> None:
    (workdir / "topology.yaml").write_text(EXAMPLE.replace("prefix: pods", "prefix: ''"))

    result = kubefabric(
        "route", "/registry/pods/a/b", "--topology-config", "topology.yaml", "--endpoint", MULTI, cwd=workdir
    )

    assert result.returncode == 1
    assert "topology.yaml: backends entry 3 ('pods'): prefix.prefix is empty" in result.stderr


def test_topology_check_summarizes_a_good_file(workdir: Path) -> None:
    result = kubefabric("topology", "check", "topology.yaml", cwd=workdir, env={"KUBEFABRIC_ENDPOINT": MULTI})

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "topology.yaml: OK, 4 rules (first match wins), then the default"
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["1", "rbac"],
        ["2", "kube-system"],
        ["3", "pods"],
        ["4", "shirts"],
        ["default", "default"],
    ]
    # It connects to nothing, and says so.
    assert lines[-1].startswith("Not checked: whether each database answers, and whether the rules agree")
    assert "root:***@tcp(127.0.0.1:3306)" in result.stdout and lines[-2].endswith(DEFAULT_ENDPOINT)
    assert sorted(path.name for path in workdir.iterdir()) == ["topology.yaml"], "nothing is created"


def test_topology_check_without_a_multi_endpoint_uses_a_placeholder_default(workdir: Path) -> None:
    result = kubefabric("topology", "check", "topology.yaml", "--endpoint", "sqlite://./db/state.db", cwd=workdir)

    assert result.returncode == 0, result.stderr
    assert "multi://" in result.stdout.splitlines()[-2]


def test_topology_check_prints_the_problem_and_exits_1(workdir: Path) -> None:
    bad = EXAMPLE.replace("namespace: kube-system", "namespace: kube-system\n    kinds: [pods, shirts]")
    bad = bad.replace("root:@tcp", "root:hunter2@tcp")
    (workdir / "bad.yaml").write_text(bad)

    result = kubefabric("topology", "check", "bad.yaml", cwd=workdir)

    assert result.returncode == 1
    assert "bad.yaml: backends entry 2 ('kube-system'): namespace.kinds: 'shirts'" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_topology_check_of_a_missing_file_exits_1(workdir: Path) -> None:
    result = kubefabric("topology", "check", "missing.yaml", cwd=workdir)

    assert result.returncode == 1
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr


def test_the_commands_are_listed_in_the_help(workdir: Path) -> None:
    result = kubefabric("--help", cwd=workdir)

    assert result.returncode == 0
    assert "route KEY" in result.stdout and "topology check FILE" in result.stdout and "--endpoint" in result.stdout

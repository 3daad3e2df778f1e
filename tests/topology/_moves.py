"""A multi:// kubefabric whose topology file the test rewrites between runs, and the commands around
it: a start-up that must be refused, `kubefabric topology migrate`, the whole keyspace read back."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests._client import Etcd, kv_tuple
from tests._servers import REPO_ROOT, ServerProcess, free_port, kubefabric_command, start_kubefabric

RULE = """\
- name: {name}
  endpoint: {endpoint}
  prefix:
    prefix: {prefix}
"""


def rules(*entries: tuple[str, str, str]) -> str:
    """A topology file of `prefix` rules: (name, endpoint, prefix) each."""
    return "backends:\n" + "".join(RULE.format(name=n, endpoint=e, prefix=p) for n, e, p in entries)


@dataclass
class Site:
    """A work directory with its topology file, the multi:// endpoint over its default SQLite file,
    and the other backends' endpoints by name."""

    workdir: Path
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"multi://sqlite://{self.workdir}/state.db"

    @property
    def topology(self) -> Path:
        return self.workdir / "topology.yaml"

    def start(self) -> ServerProcess:
        return start_kubefabric(self.workdir, self.endpoint, "--compaction-interval", "0")

    def refused_start(self) -> str:
        """The output of a start-up that must fail (exit 1)."""
        command = kubefabric_command(
            f"127.0.0.1:{free_port()}",
            self.endpoint,
            "--metrics-address",
            "",
            "--revision-mapper-endpoint",
            f"sqlite://{self.workdir}/revisions.db",
            "--topology-config",
            str(self.topology),
        )
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        return result.stderr

    def migrate_command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubefabric",
            "topology",
            "migrate",
            "--topology-config",
            str(self.topology),
            "--endpoint",
            self.endpoint,
            "--revision-mapper-endpoint",
            f"sqlite://{self.workdir}/revisions.db",
            *extra,
        ]

    def migrate(self, *extra: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.migrate_command(*extra), capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
        )
        assert result.returncode == returncode, (result.stdout, result.stderr)
        return result


Keyspace = tuple[int, list[tuple[bytes, bytes, int, int, int, int]]]


def keyspace(client: Etcd) -> Keyspace:
    """The revision and every live key with its value, revisions, version and lease, in one Range."""
    answer = client.get(b"\0", b"\0")
    return answer.header.revision, [kv_tuple(kv) for kv in answer.kvs]

"""A second kubefabric that is expected to refuse to start, and what it said."""

from __future__ import annotations

import os
import subprocess
import sys

from tests._servers import REPO_ROOT, free_port

# A server that refuses to start must say so promptly, not hang on its database or port.
STARTUP_FAILURE_TIMEOUT = 20.0


def run_kubefabric(*args: str) -> subprocess.CompletedProcess[str]:
    """kubefabric with these flags and no KUBEFABRIC_* settings from the environment, expected to exit soon."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KUBEFABRIC_")}
    return subprocess.run(
        [sys.executable, "-m", "kubefabric", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=STARTUP_FAILURE_TIMEOUT,
    )


def refused_start(endpoint: str, *extra: str) -> str:
    """Start kubefabric on fresh ports (unless `extra` names them); it must exit 1. Its stderr."""
    result = run_kubefabric(
        "--listen-address",
        f"127.0.0.1:{free_port()}",
        "--metrics-address",
        f"127.0.0.1:{free_port()}",
        "--endpoint",
        endpoint,
        *extra,
    )
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr

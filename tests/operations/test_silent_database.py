"""A database server that accepts connections and then never answers: start-up fails after the
connect timeout with a message that says so, never with an empty reason."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.operations._processes import refused_start

CONNECT_TIMEOUT_SECONDS = 5


@pytest.fixture
def silent_server() -> Iterator[str]:
    """HOST:PORT of a listener whose connections the kernel accepts and nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "mysql://root:@tcp({address})/kubernetes",
            f"timed out after {CONNECT_TIMEOUT_SECONDS} s connecting to {{address}}",
        ),
        (
            "postgres://postgres@{address}/kubernetes",
            f"no answer within the timeout ({CONNECT_TIMEOUT_SECONDS} s to connect",
        ),
    ],
    ids=["mysql", "postgres"],
)
def test_a_silent_database_is_reported_as_a_timeout(silent_server: str, endpoint: str, expected: str) -> None:
    started = time.monotonic()
    stderr = refused_start(endpoint.format(address=silent_server))

    assert expected.format(address=silent_server) in stderr, stderr
    assert not stderr.rstrip().endswith(":"), stderr
    assert time.monotonic() - started < 3 * CONNECT_TIMEOUT_SECONDS

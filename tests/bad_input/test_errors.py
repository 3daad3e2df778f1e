"""Bad input over the wire and on the command line: clear refusals, never a crash or a hang.

Wire-level refusals run against the real etcd too (the `server` fixture), so the expected status
codes and messages are etcd's own, not guesses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc
from tests._client import Etcd, RequestOp, put_op, range_op
from tests._servers import REPO_ROOT, ServerProcess, free_port, kubefabric_command, start_kubefabric

# etcd's default --max-request-bytes, and the gRPC receive limit etcd sets 512 KiB above it.
MAX_REQUEST_BYTES = 1536 * 1024
GRPC_RECEIVE_LIMIT = MAX_REQUEST_BYTES + 512 * 1024
ERR_TOO_LARGE = "etcdserver: request is too large"
ERR_KEY_NOT_FOUND = "etcdserver: key not found"
# A server that refuses to start must say so promptly, not hang on its database or port.
STARTUP_FAILURE_TIMEOUT = 20.0


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_still_serving(client: Etcd) -> None:
    revision = client.put(b"still-serving", b"yes").header.revision
    assert client.get(b"still-serving").kvs[0].mod_revision == revision


# -- request size ----------------------------------------------------------------------------------


def test_put_over_the_request_limit_is_refused_with_etcds_error(client: Etcd) -> None:
    error = rpc_error(lambda: client.put(b"big", b"x" * (MAX_REQUEST_BYTES + 1)))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, ERR_TOO_LARGE)
    assert client.get(b"big").kvs == []
    assert_still_serving(client)


def test_put_just_under_the_request_limit_is_stored(client: Etcd) -> None:
    value = b"x" * (MAX_REQUEST_BYTES - 1024)

    revision = client.put(b"big", value).header.revision

    [kv] = client.get(b"big").kvs
    assert kv.mod_revision == revision
    assert kv.value == value


def test_txn_put_over_the_request_limit_is_refused_with_etcds_error(client: Etcd) -> None:
    error = rpc_error(lambda: client.txn([], [put_op(b"big", b"x" * (MAX_REQUEST_BYTES + 1))]))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, ERR_TOO_LARGE)
    assert client.get(b"big").kvs == []


def test_delete_over_the_request_limit_is_refused_with_etcds_error(client: Etcd) -> None:
    # etcd limits every request that goes through raft, deletes included, by its encoded size.
    error = rpc_error(lambda: client.delete(b"k" * (MAX_REQUEST_BYTES + 1)))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, ERR_TOO_LARGE)
    assert_still_serving(client)


@pytest.mark.parametrize("read", ["range", "read-only txn"])
def test_reads_over_the_request_limit_are_answered(client: Etcd, read: str) -> None:
    # Reads skip raft in etcd, so only gRPC's larger receive limit applies to them.
    key = b"k" * (MAX_REQUEST_BYTES + 1)
    client.put(b"k", b"v")

    if read == "range":
        assert client.get(key).kvs == []
    else:
        response = client.txn([], [range_op(key)])
        assert response.succeeded and list(response.responses[0].response_range.kvs) == []


def test_message_over_the_grpc_limit_is_refused_by_grpc_itself(client: Etcd) -> None:
    error = rpc_error(lambda: client.put(b"huge", b"x" * (GRPC_RECEIVE_LIMIT + 1)))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details().lower()
    assert_still_serving(client)


# -- malformed requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "txn",
    [
        rpc_pb2.TxnRequest(success=[RequestOp()]),
        rpc_pb2.TxnRequest(failure=[put_op(b"a"), RequestOp()]),
        rpc_pb2.TxnRequest(success=[RequestOp(request_txn=rpc_pb2.TxnRequest(failure=[RequestOp()]))]),
    ],
    ids=["success", "failure", "nested"],
)
def test_txn_with_an_empty_request_op_is_refused(client: Etcd, txn: rpc_pb2.TxnRequest) -> None:
    error = rpc_error(lambda: client.kv.Txn(txn, timeout=10))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, ERR_KEY_NOT_FOUND)
    assert client.get(b"a").kvs == []
    assert_still_serving(client)


@pytest.mark.parametrize("method", ["/etcdserverpb.KV/Nope", "/etcdserverpb.Nope/Range", "/nope.Service/Call"])
def test_a_method_that_does_not_exist_is_unimplemented(client: Etcd, method: str) -> None:
    call = client.channel.unary_unary(method)

    assert rpc_error(lambda: call(b"", timeout=10)).code() == grpc.StatusCode.UNIMPLEMENTED
    assert_still_serving(client)


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff\xff\x01\x02", b"\x0a\x10truncated", b"\x0b"],
    ids=["bad-tag", "truncated-field", "group-start"],
)
def test_malformed_protobuf_is_refused_as_a_bad_request(client: Etcd, garbage: bytes) -> None:
    range_call = client.channel.unary_unary("/etcdserverpb.KV/Range")

    error = rpc_error(lambda: range_call(garbage, timeout=10))

    # etcd answers INTERNAL; UNKNOWN would mean an exception escaped a handler.
    assert error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), (
        error.code(),
        error.details(),
    )
    assert_still_serving(client)


def test_methods_kubefabric_does_not_implement_are_unimplemented(kubefabric: ServerProcess) -> None:
    with Etcd(kubefabric.channel()) as client:
        auth = rpc_pb2_grpc.AuthStub(client.channel)
        calls: dict[str, Callable[[], object]] = {
            "Maintenance.MoveLeader": lambda: client.maintenance.MoveLeader(
                rpc_pb2.MoveLeaderRequest(targetID=1), timeout=10
            ),
            "Auth.UserAdd": lambda: auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="p"), timeout=10),
            "Auth.Authenticate": lambda: auth.Authenticate(
                rpc_pb2.AuthenticateRequest(name="u", password="p"), timeout=10
            ),
            "Cluster.MemberAdd": lambda: client.cluster.MemberAdd(
                rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), timeout=10
            ),
            "Cluster.MemberRemove": lambda: client.cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=1), timeout=10),
        }
        for name, call in calls.items():
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED, (name, error.code(), error.details())
            assert name in error.details(), (name, error.details())
        assert_still_serving(client)


# -- start-up and shutdown -------------------------------------------------------------------------


def run_kubefabric(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A kubefabric that is expected to exit by itself, soon; no KUBEFABRIC_* settings leak in."""
    clean_env = {name: value for name, value in os.environ.items() if not name.startswith("KUBEFABRIC_")}
    return subprocess.run(
        [sys.executable, "-m", "kubefabric", *args],
        capture_output=True,
        text=True,
        env={**clean_env, **(env or {})},
        cwd=REPO_ROOT,
        timeout=STARTUP_FAILURE_TIMEOUT,
    )


def fails_to_start(endpoint: str) -> subprocess.CompletedProcess[str]:
    address = f"127.0.0.1:{free_port()}"
    result = run_kubefabric("--listen-address", address, "--endpoint", endpoint, "--metrics-address", "")
    assert result.returncode > 0, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize("taken", ["--listen-address", "--metrics-address"])
def test_an_address_already_in_use_stops_start_up_naming_it(tmp_path: Path, taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy, free = f"127.0.0.1:{holder.getsockname()[1]}", f"127.0.0.1:{free_port()}"
        listen, metrics = (busy, free) if taken == "--listen-address" else (free, busy)

        result = run_kubefabric(
            "--endpoint", f"sqlite://{tmp_path}/state.db", "--listen-address", listen, "--metrics-address", metrics
        )

    assert result.returncode > 0, result.stderr
    assert busy in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_directory_as_the_database_file_stops_start_up_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    database.mkdir()

    assert str(database) in fails_to_start(f"sqlite://{database}").stderr


def test_an_unwritable_database_location_stops_start_up_naming_it() -> None:
    database = "/proc/nope/state.db"

    assert database in fails_to_start(f"sqlite://{database}").stderr


def test_a_file_that_is_not_a_sqlite_database_stops_start_up_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    database.write_bytes(os.urandom(8192))

    result = fails_to_start(f"sqlite://{database}")

    assert str(database) in result.stderr
    assert "not a database" in result.stderr
    assert len(database.read_bytes()) == 8192, "a foreign file must be left alone"


def test_an_unknown_endpoint_scheme_is_named_and_its_password_is_not() -> None:
    result = fails_to_start("nosuchdb://admin:hunter2@db.example:5432/kube")

    assert "nosuchdb" in result.stderr
    assert "sqlite://" in result.stderr, "the message should list what is supported"
    assert "hunter2" not in result.stderr


def test_an_unknown_sqlite_endpoint_option_is_refused_by_name(tmp_path: Path) -> None:
    result = fails_to_start(f"sqlite://{tmp_path}/state.db?foo=bar")

    assert "'foo'" in result.stderr
    assert not (tmp_path / "state.db").exists(), "nothing should be created for a refused endpoint"


BAD_SETTINGS = [
    ("--listen-address", "KUBEFABRIC_LISTEN_ADDRESS", "nohostport"),
    ("--compaction-interval", "KUBEFABRIC_COMPACTION_INTERVAL", "abc"),
]


@pytest.mark.parametrize(("flag", "env", "value"), BAD_SETTINGS)
def test_a_bad_flag_value_exits_2_naming_the_flag_and_its_env_var(flag: str, env: str, value: str) -> None:
    result = run_kubefabric(flag, value)

    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and env in result.stderr and value in result.stderr, result.stderr


@pytest.mark.parametrize(("flag", "env", "value"), BAD_SETTINGS)
def test_a_bad_env_var_value_exits_2_naming_the_flag_and_its_env_var(flag: str, env: str, value: str) -> None:
    result = run_kubefabric(env={env: value})

    assert result.returncode == 2, result.stderr
    assert flag in result.stderr and env in result.stderr and value in result.stderr, result.stderr


def test_kubefabric_configured_only_by_env_vars_serves(tmp_path: Path) -> None:
    address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    database = tmp_path / "from-env.db"
    env = {
        "KUBEFABRIC_LISTEN_ADDRESS": address,
        "KUBEFABRIC_ENDPOINT": f"sqlite://{database}",
        "KUBEFABRIC_METRICS_ADDRESS": metrics,
        "KUBEFABRIC_LOG_LEVEL": "debug",
    }
    server = ServerProcess([sys.executable, "-m", "kubefabric"], address, tmp_path / "kubefabric.log", env).start()
    try:
        with Etcd(server.channel()) as client:
            revision = client.put(b"configured", b"by env").header.revision
            assert client.get(b"configured").kvs[0].mod_revision == revision
        assert database.exists()
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
            assert b"kubefabric_grpc_requests_total" in response.read()
        assert " DEBUG " in server.log.read_text()
    finally:
        assert server.stop() == 0


def test_a_flag_wins_over_its_env_var(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    command = kubefabric_command(address, f"sqlite://{tmp_path}/state.db", "--metrics-address", "")
    # The env var alone would be refused at start-up; the flag must take its place.
    env = {"KUBEFABRIC_LISTEN_ADDRESS": "nohostport"}
    server = ServerProcess(command, address, tmp_path / "kubefabric.log", env).start()

    assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_shuts_down_cleanly(tmp_path: Path, store_endpoint: str, sig: signal.Signals) -> None:
    server = start_kubefabric(tmp_path, store_endpoint)
    with Etcd(server.channel()) as client:
        revision = client.put(b"before-shutdown", b"v").header.revision

    started = time.monotonic()
    assert server.stop(sig) == 0, server.log.read_text()[-2000:]
    assert time.monotonic() - started < 10, "an idle server should stop without waiting out the grace period"

    log = server.log.read_text()
    assert f"stopped at revision {revision}" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]

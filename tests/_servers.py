"""Real server processes the tests talk to: a real etcd (the oracle) and kubefabric itself."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kubefabric.etcdpb import rpc_pb2, rpc_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


# Ports are probed below the kernel's ephemeral range (32768 and up), where outgoing connections take
# theirs. Parallel test workers (pytest-xdist) each probe only the ports congruent to their number, so
# two workers never start servers on one port: the one that lost the race to bind it would otherwise
# find the other's server answering there.
PORTS = range(10_000, 32_000)
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# Its own generator: servers start on background threads, and hypothesis, generating on the main
# thread meanwhile, expects nobody else to draw from the global one.
_ports = random.Random()


def free_port() -> int:
    """A loopback port nothing listens on, never the same one twice in this test run: servers are
    started concurrently, and a just-probed port would otherwise be probed again."""
    while True:
        port = _ports.randrange(PORTS.start + _WORKER, PORTS.stop, _WORKERS)
        with _handed_out_lock:
            if port in _handed_out:
                continue
            _handed_out.add(port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken by something else: try another
            return port


def wait_until_serving(server: ServerProcess, timeout: float = 30.0) -> None:
    """Block until a Maintenance.Status call succeeds, or fail with the server's log."""
    assert server.process is not None
    deadline = time.monotonic() + timeout
    with server.channel() as channel:
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        while True:
            if server.process.poll() is not None:
                log = server.log.read_text()[-4000:]
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{log}")
            try:
                maintenance.Status(rpc_pb2.StatusRequest(), timeout=1.0)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(
                        f"server not serving after {timeout}s:\n{server.log.read_text()[-4000:]}"
                    ) from None
                time.sleep(0.05)


@dataclass
class ServerProcess:
    """A server process on a loopback port, with its log file kept for failure messages."""

    command: list[str]
    address: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    credentials: grpc.ChannelCredentials | None = None  # TLS to the server; None: plaintext
    process: subprocess.Popen[bytes] | None = None
    # Servers this one depends on (an etcd used as kubefabric's store), stopped after it.
    companions: list[ServerProcess] = field(default_factory=list)
    cwd: Path = REPO_ROOT  # where relative paths (default database files) land

    def start(self) -> ServerProcess:
        log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
        )
        log_file.close()
        wait_until_serving(self)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for companion in self.companions:
            companion.stop()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        self.stop(signal.SIGKILL)

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_receive_message_length", -1)]
        if self.credentials is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, self.credentials, options=options)


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise RuntimeError("the real etcd is needed for comparison tests: apt-get install etcd-server")
    return path


def _retrying_port_clashes(start: Callable[[], ServerProcess]) -> ServerProcess:
    """Start, trying again on new ports if another process took one between probe and bind."""
    for attempt in range(3):
        try:
            return start()
        except RuntimeError as error:
            if attempt == 2 or not any(
                clash in str(error) for clash in ("address already in use", "cannot listen", "cannot serve metrics")
            ):
                raise
    raise AssertionError("unreachable")


def start_etcd(workdir: Path, tls: EtcdTls | None = None) -> ServerProcess:
    """A fresh single-member etcd with an empty data directory; with `tls`, clients need a certificate."""
    return _retrying_port_clashes(lambda: _start_etcd(workdir, tls))


@dataclass(frozen=True)
class EtcdTls:
    cert: Path
    key: Path
    trusted_ca: Path
    credentials: grpc.ChannelCredentials  # what the test's own client presents


def _start_etcd(workdir: Path, tls: EtcdTls | None) -> ServerProcess:
    client_port, peer_port = free_port(), free_port()
    address = f"127.0.0.1:{client_port}"
    scheme = "http" if tls is None else "https"
    data_dir = workdir / f"etcd-data-{client_port}"  # a retry on new ports starts from scratch
    command = [
        etcd_binary(),
        "--name", "oracle",
        "--data-dir", str(data_dir),
        "--listen-client-urls", f"{scheme}://{address}",
        "--advertise-client-urls", f"{scheme}://{address}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"oracle=http://127.0.0.1:{peer_port}",
        "--log-level", "error",
    ]  # fmt: skip
    if tls is not None:
        command += [
            "--cert-file", str(tls.cert), "--key-file", str(tls.key),
            "--client-cert-auth", "--trusted-ca-file", str(tls.trusted_ca),
        ]  # fmt: skip
    # Debian's etcd 3.4 refuses to start on arm64 without this; harmless elsewhere.
    env = {"ETCD_UNSUPPORTED_ARCH": os.uname().machine.replace("aarch64", "arm64").replace("x86_64", "amd64")}
    credentials = None if tls is None else tls.credentials
    return ServerProcess(command, address, workdir / "etcd.log", env, credentials).start()


def kubefabric_command(address: str, endpoint: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kubefabric", "--listen-address", address, "--endpoint", endpoint, *extra]


def start_kubefabric(workdir: Path, endpoint: str, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    def start() -> ServerProcess:
        address = f"127.0.0.1:{free_port()}"
        command = kubefabric_command(
            address,
            endpoint,
            "--metrics-address",
            f"127.0.0.1:{free_port()}",
            "--revision-mapper-endpoint",
            f"sqlite://{workdir}/revisions.db",
            *(["--topology-config", str(workdir / "topology.yaml")] if endpoint.startswith("multi://") else []),
            *extra,
        )
        return ServerProcess(command, address, workdir / "kubefabric.log", env or {}).start()

    return _retrying_port_clashes(start)


class WarmServers:
    """Fresh servers without the wait: one spare per target is started while the last test runs.

    Every test still gets a server nobody used before; only its start-up overlaps other work.
    Used servers are stopped in the background too.
    """

    def __init__(self, start: Callable[[str], ServerProcess]) -> None:
        self._start = start
        self._spares: dict[str, Future[ServerProcess]] = {}
        self._threads = ThreadPoolExecutor(4, thread_name_prefix="warm-servers")

    def take(self, target: str) -> ServerProcess:
        spare = self._spares.pop(target, None) or self._threads.submit(self._start, target)
        self._spares[target] = self._threads.submit(self._start, target)
        return spare.result()

    def release(self, process: ServerProcess) -> None:
        self._threads.submit(process.stop)

    def close(self) -> None:
        for spare in self._spares.values():
            try:
                spare.result().stop()
            except RuntimeError:
                pass  # it failed to start; the test that would have used it is not running
        self._threads.shutdown(wait=True)

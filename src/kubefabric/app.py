"""Start-up and shutdown: store, core, gRPC server, metrics, signals; one log line per step."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health
from prometheus_client import start_http_server

from kubefabric import __version__
from kubefabric.config import Settings
from kubefabric.core import Core
from kubefabric.protocol import ETCD_VERSION, build_server, health_pb2
from kubefabric.stores import EndpointError, open_store, redact

log = logging.getLogger("kubefabric")

SHUTDOWN_GRACE_SECONDS = 10


class StartupError(Exception):
    """A reason not to start, already phrased for the operator."""


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; the exit status."""
    log.info("kubefabric %s (etcd API %s) starting", __version__, ETCD_VERSION)
    try:
        core = await _open_core(settings)
    except StartupError as error:
        log.error("%s", error)
        return 1
    try:
        server, health = await _start_server(core, settings)
    except StartupError as error:
        log.error("%s", error)
        await core.stop()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("shutting down: refusing new requests, finishing those in flight")
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    await core.stop()
    log.info("stopped at revision %d", core.mvcc.durable_revision)
    return 0


async def _open_core(settings: Settings) -> Core:
    endpoint = redact(settings.endpoint)
    log.info("opening store %s", endpoint)
    try:
        store = open_store(settings.endpoint)
    except EndpointError as error:
        raise StartupError(f"--endpoint {endpoint}: {error}") from None
    core = Core(store, settings.compaction_interval, settings.compaction_retention)
    try:
        await core.start()
    except Exception as error:  # noqa: BLE001 - any failure here is reported and ends start-up
        raise StartupError(f"cannot open store {endpoint}: {error}") from None
    log.info(
        "store ready at revision %d (compacted to %d, %d leases)",
        core.mvcc.durable_revision,
        core.mvcc.compact_revision,
        len(core.leases),
    )
    return core


async def _start_server(core: Core, settings: Settings) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    if settings.metrics_address:
        host, port = _split_host_port(settings.metrics_address)
        try:
            start_http_server(port, host)
        except OSError as error:
            raise StartupError(f"cannot serve metrics on {settings.metrics_address}: {error.strerror}") from None
        log.info("metrics on http://%s/metrics", settings.metrics_address)

    server, health = build_server(core, f"http://{settings.listen_address}", settings.watch_progress_notify_interval)
    try:
        server.add_insecure_port(settings.listen_address)
    except RuntimeError:
        raise StartupError(
            f"cannot listen on {settings.listen_address}: the address is in use or not available on this host"
        ) from None
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("serving the etcd v3 API on %s", settings.listen_address)
    return server, health

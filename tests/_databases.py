"""Database servers on this machine for the store tests: started on demand, one fresh database per
kubefabric server, every database handed out dropped when the session ends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
POSTGRES_ADMIN_DSN = f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
POSTGRES_CLUSTERS = "/etc/postgresql"
POSTGRES_START_TIMEOUT = 60.0

_postgres_started = threading.Lock()  # servers start from several threads (tests._servers.WarmServers)
_postgres_databases: list[str] = []


def accepts_connections(host: str, port: int) -> bool:
    """Whether a server listens there (the databases' own clients come later)."""
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def postgres_endpoint() -> str:
    """An endpoint naming a database nobody used before; the store creates it on open."""
    postgres_ensure_running()
    name = f"kf_{uuid.uuid4().hex}"
    _postgres_databases.append(name)
    return f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"


def postgres_ensure_running() -> None:
    """Start the local cluster (Debian's postgresql package) unless it already serves."""
    with _postgres_started:
        if accepts_connections(POSTGRES_HOST, POSTGRES_PORT):
            return
        try:
            version = sorted(os.listdir(POSTGRES_CLUSTERS))[-1]
        except (FileNotFoundError, IndexError):
            raise RuntimeError("the postgres store tests need PostgreSQL: apt-get install postgresql") from None
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + POSTGRES_START_TIMEOUT
        while not accepts_connections(POSTGRES_HOST, POSTGRES_PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not accepting connections after {POSTGRES_START_TIMEOUT}s")
            time.sleep(0.1)


def postgres_drop_databases() -> None:
    """Drop every database postgres_endpoint() handed out, even if a server still uses it."""
    if not _postgres_databases:
        return

    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            for name in _postgres_databases:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())
    _postgres_databases.clear()


@contextmanager
def postgres_stopped() -> Iterator[None]:
    """The local PostgreSQL stopped for the block, as a real outage: a fast shutdown ends every session.

    Whatever the block does, the server is started again afterwards and waited for until it answers
    queries, since other tests share it. Meanwhile other threads of this session that want it wait
    (so the block itself must not call postgres_endpoint()).
    """
    with _postgres_started:
        version = sorted(os.listdir(POSTGRES_CLUSTERS))[-1]
        try:
            _pg_ctlcluster(version, "stop", "-m", "fast")
            yield
        finally:
            _pg_ctlcluster(version, "start", check=False)  # it may still be running if stopping failed
            _wait_until_answering("PostgreSQL", _postgres_answers, POSTGRES_START_TIMEOUT)


def _pg_ctlcluster(version: str, action: str, *options: str, check: bool = True) -> None:
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *options],
        capture_output=True,
        text=True,
        timeout=POSTGRES_START_TIMEOUT,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster {action} failed ({done.returncode}): {done.stderr.strip()}")


def _postgres_answers() -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=2.0)
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    try:
        asyncio.run(probe())
        return True
    except Exception:  # noqa: BLE001 - refused, starting up, timed out: not yet
        return False


def _wait_until_answering(name: str, answers: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not answering queries after {timeout}s")
        time.sleep(0.1)


MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306
MYSQL_DAEMON = "/usr/sbin/mariadbd"
MYSQL_RUN_DIR = "/run/mysqld"  # the socket and pid file; gone after a reboot, and mariadbd does not make it
MYSQL_START_TIMEOUT = 60.0

_mysql_started = threading.Lock()
_mysql_databases: list[str] = []


def mysql_endpoint() -> str:
    """An endpoint naming a database nobody used before; the store creates it on open."""
    mysql_ensure_running()
    name = f"kf_{uuid.uuid4().hex}"
    _mysql_databases.append(name)
    return f"mysql://root:@tcp({MYSQL_HOST}:{MYSQL_PORT})/{name}"


async def mysql_connect(endpoint: str) -> Any:
    """A plain connection to the database a mysql:// endpoint names, for looking into it directly."""
    import asyncmy  # optional, like the store that needs it

    from kubefabric.stores._mysql import parse_endpoint

    target = parse_endpoint(endpoint)
    return await asyncmy.connect(
        host=target.host, port=target.port, user=target.user, password=target.password, database=target.database
    )


def mysql_ensure_running() -> None:
    """Start the local MariaDB (Debian's mariadb-server package) unless it already serves."""
    with _mysql_started:
        if accepts_connections(MYSQL_HOST, MYSQL_PORT):
            return
        if not os.path.exists(MYSQL_DAEMON):
            raise RuntimeError("the mysql store tests need MariaDB: apt-get install mariadb-server")
        if not os.path.isdir(MYSQL_RUN_DIR):
            os.makedirs(MYSQL_RUN_DIR)
            shutil.chown(MYSQL_RUN_DIR, "mysql", "mysql")
        subprocess.run(
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", MYSQL_DAEMON],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + MYSQL_START_TIMEOUT
        while not accepts_connections(MYSQL_HOST, MYSQL_PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"MariaDB not accepting connections after {MYSQL_START_TIMEOUT}s")
            time.sleep(0.1)


def mysql_drop_databases() -> None:
    """Drop every database mysql_endpoint() handed out."""
    if not _mysql_databases:
        return
    import asyncmy  # optional, like the store that needs it

    async def drop() -> None:
        connection = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
        try:
            async with connection.cursor() as cursor:
                # A server that is somehow still mid-transaction must not make the session hang.
                await cursor.execute("SET SESSION lock_wait_timeout = 10")
                for name in _mysql_databases:
                    await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            await connection.ensure_closed()

    asyncio.run(drop())
    _mysql_databases.clear()


@contextmanager
def mysql_stopped() -> Iterator[None]:
    """The local MariaDB stopped for the block, as a real outage: SIGTERM, and its exit awaited.

    Whatever the block does, the server is started again afterwards and waited for until it answers
    queries, since other tests share it. Meanwhile other threads of this session that want it wait
    (so the block itself must not call mysql_endpoint()).
    """
    with _mysql_started:
        try:
            _mysql_stop()
            yield
        finally:
            if not os.path.isdir(MYSQL_RUN_DIR):
                os.makedirs(MYSQL_RUN_DIR)
                shutil.chown(MYSQL_RUN_DIR, "mysql", "mysql")
            # --oknodo: nothing to do if stopping failed and it still runs.
            subprocess.run(
                ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", MYSQL_DAEMON],
                check=True,
                capture_output=True,
                timeout=MYSQL_START_TIMEOUT,
            )
            _wait_until_answering("MariaDB", _mysql_answers, MYSQL_START_TIMEOUT)


def _mysql_stop() -> None:
    found = subprocess.run(["pgrep", "-x", os.path.basename(MYSQL_DAEMON)], capture_output=True, text=True)
    pids = [int(pid) for pid in found.stdout.split()]
    if not pids:
        raise RuntimeError("MariaDB is not running: nothing to stop")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + MYSQL_START_TIMEOUT
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"MariaDB still running {MYSQL_START_TIMEOUT}s after SIGTERM")
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (its parent may not have reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _mysql_answers() -> bool:
    import asyncmy  # optional, like the store that needs it

    async def probe() -> None:
        connection = await asyncmy.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", connect_timeout=2.0
        )
        try:
            async with connection.cursor() as cursor:
                await cursor.execute("SELECT 1")
        finally:
            await connection.ensure_closed()

    try:
        asyncio.run(probe())
        return True
    except Exception:  # noqa: BLE001 - refused, starting up, timed out: not yet
        return False

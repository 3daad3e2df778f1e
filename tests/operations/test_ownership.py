"""One writer per database: a second server on a database another one holds is refused at
start-up, naming the holder; once the holder stops, by SIGTERM or kill -9, a new one starts."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from pathlib import Path

import asyncmy
import asyncpg
import grpc
import pytest

from tests._client import Etcd
from tests._databases import MYSQL_HOST, MYSQL_PORT, POSTGRES_ADMIN_DSN
from tests._servers import ServerProcess, start_kubefabric
from tests.operations._processes import refused_start

# How long a database server may take to notice that a killed holder's connection is gone.
RELEASE_TIMEOUT = 10.0


def holder_of(stderr: str) -> tuple[int, str, str]:
    """(pid, host, serving address) of the holder named in a refusal."""
    match = re.search(r"in use by another kubefabric \(pid (\d+) on host (\S+) \(serving (\S+)\) since (\S+)\)", stderr)
    assert match, stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", match[4]), stderr
    return int(match[1]), match[2], match[3]


def start_when_released(workdir: Path, endpoint: str) -> ServerProcess:
    """A new server on the database, as soon as the database lets go of the previous holder's lock."""
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while True:
        try:
            return start_kubefabric(workdir, endpoint)
        except RuntimeError as error:
            if "in use by another kubefabric" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("store", ["sqlite", "postgres", "mysql"])
def test_a_second_server_on_the_same_database_is_refused_naming_the_holder(
    store: str, store_endpoint: str, tmp_path: Path
) -> None:
    first = start_kubefabric(tmp_path, store_endpoint)
    try:
        with Etcd(first.channel()) as client:
            revision = client.put(b"owned", b"by the first").header.revision

            stderr = refused_start(store_endpoint)

            assert first.process is not None
            assert holder_of(stderr) == (first.process.pid, socket.gethostname(), first.address)
            # The first one never noticed: it keeps serving, and nothing was written by the second.
            assert client.put(b"owned", b"still").header.revision == revision + 1
    finally:
        assert first.stop() == 0

    # A clean stop releases the database; so does kill -9, by the kernel or the database server.
    second = start_when_released(tmp_path, store_endpoint)
    with Etcd(second.channel()) as client:
        assert client.get(b"owned").kvs[0].value == b"still"
        client.put(b"owned", b"by the second")
    second.kill()

    third = start_when_released(tmp_path, store_endpoint)
    try:
        with Etcd(third.channel()) as client:
            assert client.get(b"owned").kvs[0].value == b"by the second"
    finally:
        third.stop()


def test_the_sqlite_lock_file_says_who_holds_the_database(tmp_path: Path) -> None:
    server = start_kubefabric(tmp_path, f"sqlite://{tmp_path}/state.db")
    try:
        assert server.process is not None
        text = (tmp_path / "state.db.lock").read_text()
        assert text.startswith(f"pid {server.process.pid} on host {socket.gethostname()} (serving {server.address})")
    finally:
        server.stop(signal.SIGTERM)


# A lock lost to a silent cut is noticed by a check every quarter of a second.
LOSS_NOTICED_SECONDS = 1.0
# Who the test says it is when it takes a database's lock over, as another server would.
IMPOSTOR = "pid 99999 on host elsewhere (serving 10.0.0.9:2379)"
OWNER_LOCK_ID = 0x6B75_6265_6F77_6E  # PostgreSQL's advisory lock key for the one writer


class LockSessions:
    """The database sessions behind a kubefabric's ownership lock, seen and cut from outside it."""

    def __init__(self, store: str, endpoint: str) -> None:
        self.store = store
        self.endpoint = endpoint
        self.database = endpoint.rpartition("/")[2]
        self._loop = asyncio.new_event_loop()
        self._held: asyncpg.Connection | asyncmy.Connection | None = None

    def close(self) -> None:
        if self._held is not None:
            self._loop.run_until_complete(
                self._held.close() if self.store == "postgres" else self._held.ensure_closed()
            )
        self._loop.close()

    def cut(self) -> None:
        """End the session holding the lock, as a database restart or a network cut would, leaving the
        server's other connections alone."""
        self._loop.run_until_complete(self._cut())

    def take_over(self) -> None:
        """Cut the holder's session and take the lock at once, as another server would; held until close()."""
        self._loop.run_until_complete(self._take_over())

    async def _cut(self) -> None:
        if self.store == "postgres":
            admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
            try:
                impostor = self._held.get_server_pid() if self._held is not None else 0
                ended = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name LIKE 'kubefabric pid %' AND pid <> $2",
                    self.database,
                    impostor,
                )
            finally:
                await admin.close()
            assert ended == 1
            return
        admin = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
        try:
            async with admin.cursor() as cursor:
                await cursor.execute("SELECT IS_USED_LOCK(%s)", (f"kubefabric:{self.database}",))
                (holder,) = await cursor.fetchone()
                await cursor.execute(f"KILL CONNECTION {int(holder)}")
        finally:
            await admin.ensure_closed()

    async def _take_over(self) -> None:
        # The impostor queues for the lock before the holder's session is cut, so the database hands it
        # the lock as that session ends, before the server can take it back on a new connection.
        if self.store == "postgres":
            self._held = await asyncpg.connect(
                self.endpoint, server_settings={"application_name": f"kubefabric {IMPOSTOR}"}
            )
            taking = asyncio.ensure_future(self._held.execute("SELECT pg_advisory_lock($1)", OWNER_LOCK_ID))
            await self._until_waiting("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            await self._cut()
            await self._taken(taking)
            return
        self._held = await asyncmy.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", database=self.database, autocommit=True
        )
        cursor = self._held.cursor()
        taking = asyncio.ensure_future(
            cursor.execute("SELECT GET_LOCK(%s, %s)", (f"kubefabric:{self.database}", RELEASE_TIMEOUT))
        )
        await self._until_waiting("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'User lock'")
        await self._cut()
        await self._taken(taking)
        assert (await cursor.fetchone())[0] == 1
        await cursor.execute(
            "REPLACE INTO kubefabric_owner VALUES (1, CONNECTION_ID(), %s)", (f"{IMPOSTOR} since 2026-01-01",)
        )
        await cursor.close()

    async def _until_waiting(self, waiters: str) -> None:
        """Until the impostor's request for the lock is queued."""
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while True:
            if self.store == "postgres":
                admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, database=self.database)
                try:
                    waiting = await admin.fetchval(waiters)
                finally:
                    await admin.close()
            else:
                admin = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="")
                try:
                    async with admin.cursor() as admin_cursor:
                        await admin_cursor.execute(waiters)
                        (waiting,) = await admin_cursor.fetchone()
                finally:
                    await admin.ensure_closed()
            if waiting:
                return
            assert time.monotonic() < deadline, "the impostor's lock request never queued"
            await asyncio.sleep(0.02)

    @staticmethod
    async def _taken(taking: asyncio.Future[object]) -> None:
        try:
            await asyncio.wait_for(taking, RELEASE_TIMEOUT)
        except TimeoutError:
            raise AssertionError("the cut session kept its lock") from None


@pytest.mark.parametrize("store", ["postgres", "mysql"])
def test_a_server_that_lost_its_lock_takes_it_back_unless_another_took_the_database(
    store: str, store_endpoint: str, tmp_path: Path
) -> None:
    server = start_kubefabric(tmp_path, store_endpoint)
    sessions = LockSessions(store, store_endpoint)
    try:
        with Etcd(server.channel()) as client:
            client.put(b"k", b"1")

            # Nobody else wants the database: the lock is taken back, writes go on, others are refused.
            sessions.cut()
            client.put(b"k", b"2")
            assert server.process is not None
            assert holder_of(refused_start(store_endpoint))[0] == server.process.pid

            # Another server takes the database while this one has lost its lock: this one then
            # refuses every write, naming the other, rather than interleave revisions with it.
            sessions.take_over()
            time.sleep(LOSS_NOTICED_SECONDS)
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as refused:
                    client.put(b"k", b"3")
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert f"taken over by another kubefabric ({IMPOSTOR} since " in str(refused.value.details())
            assert client.get(b"k").kvs[0].value == b"2"
    finally:
        sessions.close()
        server.stop()

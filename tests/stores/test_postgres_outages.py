"""The PostgreSQL store when the database goes away: StoreUnavailable, fast, and recovery by itself.

The outage is made by a TCP proxy in front of the shared local server, so stopping "the database"
disturbs nobody else: the proxy either refuses and resets connections (a server that is down or
restarting) or swallows traffic (a server that is unreachable and never answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from kubefabric.stores import Change, KeyValue, StoreUnavailable, WriteBatch, _postgres
from kubefabric.stores._postgres import PostgresStore
from tests._databases import POSTGRES_HOST, POSTGRES_PORT, postgres_endpoint

PASSWORD = "not-a-real-secret"  # the local server trusts loopback, so any password is accepted
# Timeouts shortened so that the unanswered-server tests take seconds; the behaviour is the same.
SHORT_TIMEOUT = 1.0
# A refused or reset connection must be reported at once, not after some timeout.
FAST = 0.5


class Proxy:
    """Forwards a loopback port to PostgreSQL until told to refuse or to swallow traffic."""

    def __init__(self) -> None:
        self.port = 0
        self.silent = False  # swallow traffic instead of forwarding it
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Like a server that went down: close the listener and reset every connection."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)  # before any await, so that refuse() reaches it
        server_reader, server_writer = await asyncio.open_connection(POSTGRES_HOST, POSTGRES_PORT)
        if client_writer not in self._writers or not (self._server and self._server.is_serving()):
            # refused while this connection was being set up
            client_writer.transport.abort()
            server_writer.transport.abort()
            return
        self._writers.add(server_writer)
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    await proxy.start()
    yield proxy
    await proxy.refuse()


@pytest.fixture
def endpoint(proxy: Proxy) -> str:
    """A fresh database, reached with a password through the proxy."""
    database = postgres_endpoint().rpartition("/")[2]
    return f"postgres://postgres:{PASSWORD}@127.0.0.1:{proxy.port}/{database}"


@pytest.fixture
async def store(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PostgresStore]:
    for name in ("CONNECT_TIMEOUT", "COMMAND_TIMEOUT", "BULK_READ_TIMEOUT"):
        monkeypatch.setattr(_postgres, name, SHORT_TIMEOUT)
    store = PostgresStore(endpoint)
    await store.open()
    await store.write(WriteBatch(2, [Change(KeyValue(b"k", 2, 2, 1, b"v", 0), 0, None)]))
    yield store
    await store.close()


def operations(store: PostgresStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each store method."""
    revision = 3
    put = KeyValue(b"k", 2, revision, 2, b"w", 0)
    return {
        "range": lambda: store.range(b"", b"", 0, 0, False, False),
        "latest": lambda: store.latest([b"k"]),
        "changes": lambda: store.changes(0, 10, 100),
        "revision": store.revision,
        "size": store.size,
        "write": lambda: store.write(WriteBatch(revision, [Change(put, 0, None)])),
        "compact": lambda: store.compact(1),
    }


async def assert_unavailable(call: Callable[[], Awaitable[Any]], within: float) -> StoreUnavailable:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        await asyncio.wait_for(call(), timeout=within + 5)
    assert time.monotonic() - started < within
    message = str(raised.value)
    assert "postgres:***@127.0.0.1" in message
    assert PASSWORD not in message
    return raised.value


async def test_a_server_that_goes_down_makes_every_call_unavailable_at_once(proxy: Proxy, store: PostgresStore) -> None:
    await proxy.refuse()
    for call in operations(store).values():
        await assert_unavailable(call, within=FAST)


async def test_the_pool_recovers_by_itself_when_the_server_is_back(proxy: Proxy, store: PostgresStore) -> None:
    await proxy.refuse()
    await assert_unavailable(operations(store)["range"], within=FAST)
    await proxy.start()
    rows = await store.range(b"", b"", 0, 0, False, False)
    assert [kv.key for kv in rows.kvs] == [b"k"]
    await store.write(WriteBatch(3, [Change(KeyValue(b"k", 2, 3, 2, b"w", 0), 0, rows.kvs[0])]))
    assert await store.revision() == 3


async def test_a_server_that_never_answers_makes_every_call_unavailable_after_the_timeout(
    proxy: Proxy, store: PostgresStore
) -> None:
    proxy.silent = True
    for name, call in operations(store).items():
        error = await assert_unavailable(call, within=SHORT_TIMEOUT * 3)
        assert "no answer within the timeout" in str(error), name
    proxy.silent = False
    assert await store.revision() == 2


async def test_opening_an_unreachable_server_is_unavailable_with_the_password_masked(
    endpoint: str, proxy: Proxy
) -> None:
    await proxy.refuse()
    await assert_unavailable(PostgresStore(endpoint).open, within=FAST)


async def test_an_outage_mid_read_leaves_no_transaction_open(proxy: Proxy, store: PostgresStore, endpoint: str) -> None:
    proxy.silent = True  # the snapshot transaction is begun, then nothing answers
    await assert_unavailable(operations(store)["range"], within=SHORT_TIMEOUT * 3)
    await proxy.refuse()
    database = endpoint.rpartition("/")[2]
    monitor = await asyncpg.connect(f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres")
    try:
        deadline = time.monotonic() + 5
        while await monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'", database
        ):
            assert time.monotonic() < deadline, "a transaction stayed open after the connection was dropped"
            await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):
            await monitor.close()

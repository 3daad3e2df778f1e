"""The MySQL store on its own: endpoints, schema, bulk writes, and how it behaves when the database
goes away, goes silent, or drops its connections, and comes back.

Outages are made with a TCP relay between the store and the local MariaDB that a test can cut,
silence and restore, so no test touches the server itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator

import asyncmy
import pytest
from asyncmy.errors import DataError

from kubefabric.stores import Change, EndpointError, KeyValue, StoreUnavailable, WriteBatch, _mysql, open_store, redact
from kubefabric.stores._mysql import MysqlEndpoint, MysqlStore, parse_endpoint
from tests._databases import MYSQL_HOST, MYSQL_PORT, mysql_endpoint
from tests._servers import free_port

SECRET = "s3cr:et@pa/ss"
FAST_SECONDS = 2.0  # how long reporting an outage may take when the server refuses or resets


# -- helpers --------------------------------------------------------------------------------------


class Relay:
    """A TCP relay to MariaDB on a port of its own that a test can cut, silence and restore."""

    def __init__(self) -> None:
        self.port = free_port()
        self.silent = False  # accept and swallow everything, answer nothing
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and reset the open ones, as a crashed server would."""
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._transports.add(client_writer.transport)
        if self.silent:
            await client_reader.read()  # until the client gives up
            return
        server_reader, server_writer = await asyncio.open_connection(MYSQL_HOST, MYSQL_PORT)
        self._transports.add(server_writer.transport)
        await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    def endpoint(self, password: str = "") -> str:
        return mysql_endpoint().replace(
            f"root:@tcp({MYSQL_HOST}:{MYSQL_PORT})", f"root:{password}@tcp(127.0.0.1:{self.port})"
        )


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay()
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture
async def mysql_store() -> AsyncIterator[MysqlStore]:
    store = MysqlStore(mysql_endpoint())
    await store.open()
    yield store
    await store.close()


def put(key: bytes, revision: int, prev: KeyValue | None = None, value: bytes = b"v") -> Change:
    if prev is None:
        return Change(KeyValue(key, revision, revision, 1, value, 0), 0, None)
    return Change(KeyValue(key, prev.create_revision, revision, prev.version + 1, value, 0), 0, prev)


async def admin(sql: str, args: object = None) -> list[tuple[object, ...]]:
    """One statement on a connection of the test's own."""
    connection = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", autocommit=True)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(sql, args)
            return list(await cursor.fetchall())
    finally:
        connection.close()


def database_of(store: MysqlStore) -> str:
    return store._endpoint.database


# -- endpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            "mysql://kube:pw@tcp(db.example:3307)/k8s",
            MysqlEndpoint("kube", "pw", "k8s", host="db.example", port=3307),
        ),
        ("mysql://kube:pw@tcp(db.example)/k8s", MysqlEndpoint("kube", "pw", "k8s", host="db.example")),
        ("mysql://kube:pw@tcp([::1]:3307)/k8s", MysqlEndpoint("kube", "pw", "k8s", host="::1", port=3307)),
        ("mysql://kube:pw@tcp([::1])/k8s", MysqlEndpoint("kube", "pw", "k8s", host="::1")),
        ("mysql://kube:pw@tcp(fd00::7)/k8s", MysqlEndpoint("kube", "pw", "k8s", host="fd00::7")),
        ("mysql://kube:pw@tcp()/k8s", MysqlEndpoint("kube", "pw", "k8s")),
        ("mysql://root@tcp(127.0.0.1:3306)/", MysqlEndpoint("root", "", "kubernetes")),
        # Go DSN: the password is taken verbatim, up to the last @ before the network.
        (f"mysql://kube:{SECRET}@tcp(h:1)/d", MysqlEndpoint("kube", SECRET, "d", host="h", port=1)),
        ("mysql://kube:p%40w@tcp(h:1)/d", MysqlEndpoint("kube", "p%40w", "d", host="h", port=1)),
        (
            "mysql://kube:pw@unix(/run/mysqld/mysqld.sock)/k8s",
            MysqlEndpoint("kube", "pw", "k8s", unix_socket="/run/mysqld/mysqld.sock"),
        ),
        # URL form: percent-decoded.
        ("mysql://kube:p%40w@db.example:3307/k8s", MysqlEndpoint("kube", "p@w", "k8s", host="db.example", port=3307)),
        ("mysql://kube:pw@db.example/k8s", MysqlEndpoint("kube", "pw", "k8s", host="db.example")),
        ("mysql://kube:pw@[::1]:3307/k8s", MysqlEndpoint("kube", "pw", "k8s", host="::1", port=3307)),
        ("mysql://db.example/k8s", MysqlEndpoint("", "", "k8s", host="db.example")),
    ],
)
def test_endpoint_forms(endpoint: str, expected: MysqlEndpoint) -> None:
    assert parse_endpoint(endpoint) == expected


def test_tls_options_make_an_ssl_context() -> None:
    assert parse_endpoint("mysql://u:p@tcp(h:1)/d").tls is None
    assert parse_endpoint("mysql://u:p@tcp(h:1)/d?tls=false").tls is None
    verified = parse_endpoint("mysql://u:p@tcp(h:1)/d?tls=true").tls
    assert verified is not None and verified.check_hostname and verified.verify_mode == ssl.CERT_REQUIRED
    skipped = parse_endpoint("mysql://u:p@h:1/d?tls=skip-verify").tls
    assert skipped is not None and not skipped.check_hostname and skipped.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (f"mysql://u:{SECRET}@tcp(h:1)/d?parseTime=true", "unknown mysql endpoint option 'parseTime'"),
        (f"mysql://u:{SECRET}@tcp(h:1)/d?tls=preferred", "tls=preferred"),
        (f"mysql://u:{SECRET}@tcp(h:1)/d?tls=false&ssl-ca=/ca.pem", "given with tls=false"),
        (f"mysql://u:{SECRET}@tcp(h:1)/d?ssl-cert=/c.pem", "ssl-cert and ssl-key go together"),
        (f"mysql://u:{SECRET}@tcp(h:1)/d?ssl-ca=/nonexistent/ca.pem", "cannot load the TLS files /nonexistent/ca.pem"),
        (f"mysql://u:{SECRET}@tcp(h:x)/d", "bad port 'x'"),
        (f"mysql://u:{SECRET}@h:1", "expected mysql://"),
    ],
)
def test_bad_endpoints_are_refused_without_the_password(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message) as refused:
        open_store(endpoint)
    assert SECRET not in str(refused.value)


def test_redact_hides_the_password_of_both_forms() -> None:
    assert redact(f"mysql://kube:{SECRET}@tcp(h:3306)/d?tls=true") == "mysql://kube:***@tcp(h:3306)/d?tls=true"
    assert redact(f"mysql://kube:{SECRET}@h:3306/d") == "mysql://kube:***@h:3306/d"


# -- schema ---------------------------------------------------------------------------------------


async def test_creates_the_database_and_schema_and_keeps_them() -> None:
    endpoint = mysql_endpoint()
    first = MysqlStore(endpoint)
    state = await first.open()
    assert (state.revision, state.compact_revision, state.leases, state.leased_keys) == (1, -1, {}, [])
    await first.write(WriteBatch(2, [put(b"a", 2)], granted_leases=[(7, 60)]))
    await first.close()

    again = MysqlStore(endpoint)
    reopened = await again.open()
    await again.close()
    assert (reopened.revision, reopened.leases, reopened.identity) == (2, {7: 60}, state.identity)
    tables = await admin(
        "SELECT table_name, engine, row_format FROM information_schema.tables WHERE table_schema = %s",
        database_of(first),
    )
    assert sorted(tables) == [
        ("attribute", "InnoDB", "Dynamic"),  # the selector index
        ("kubefabric_owner", "InnoDB", "Dynamic"),  # who holds the ownership lock
        ("kv", "InnoDB", "Dynamic"),
        ("lease", "InnoDB", "Dynamic"),
        ("meta", "InnoDB", "Dynamic"),
    ]


async def test_a_newer_schema_is_refused(mysql_store: MysqlStore) -> None:
    database = database_of(mysql_store)
    await admin(f"UPDATE `{database}`.meta SET value = 99 WHERE name = 'schema_version'")
    newer = MysqlStore(f"mysql://root:@tcp({MYSQL_HOST}:{MYSQL_PORT})/{database}")
    with pytest.raises(RuntimeError, match="has schema version 99, newer than this kubefabric"):
        await newer.open()
    await newer.close()


async def test_unix_socket_endpoint() -> None:
    database = mysql_endpoint().rpartition("/")[2]
    [(socket_path,)] = await admin("SELECT @@socket")
    store = MysqlStore(f"mysql://root:@unix({socket_path})/{database}")
    assert (await store.open()).revision == 1
    await store.close()


# -- data -----------------------------------------------------------------------------------------


async def test_keys_are_bytes_in_byte_order(mysql_store: MysqlStore) -> None:
    keys = [b"a", b"a ", b"a\x00", b"a\xff", b"\xff\xfe", b"'\\\"%s", b"\xc3\x28", b"A"]
    await mysql_store.write(WriteBatch(1 + len(keys), [put(k, 2 + i, value=k * 3) for i, k in enumerate(keys)]))
    rows = await mysql_store.range(b"\x00", b"", 0, 0, False, False)
    assert [kv.key for kv in rows.kvs] == sorted(keys)
    assert all(kv.value == kv.key * 3 for kv in rows.kvs)
    between = await mysql_store.range(b"a", b"a\x01", 0, 0, True, False)
    assert [(kv.key, kv.value) for kv in between.kvs] == [(b"a", b""), (b"a\x00", b"")]


async def test_a_key_too_long_fails_the_batch_and_leaves_nothing_open(mysql_store: MysqlStore) -> None:
    await mysql_store.write(WriteBatch(2, [put(b"a", 2)]))
    with pytest.raises(DataError):
        await mysql_store.write(WriteBatch(3, [put(b"b", 3), put(b"k" * (_mysql.MAX_KEY_BYTES + 1), 3)]))
    assert await mysql_store.revision() == 2
    assert (await mysql_store.range(b"b", None, 0, 0, False, False)).kvs == []
    open_transactions = await admin(
        "SELECT COUNT(*) FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.db = %s",
        database_of(mysql_store),
    )
    assert open_transactions == [(0,)]
    await mysql_store.write(WriteBatch(3, [put(b"b", 3)]))
    assert await mysql_store.revision() == 3


async def test_a_batch_is_one_update_and_one_multi_row_insert() -> None:
    store = MysqlStore(mysql_endpoint(), pool_size=1)  # one connection: its session counters are the batch's
    await store.open()
    first = [put(b"key%02d" % i, 2) for i in range(32)]
    await store.write(WriteBatch(2, first))

    async def counters() -> dict[str, int]:
        async with store._session("SHOW SESSION STATUS WHERE Variable_name IN ('Com_insert', 'Com_update_multi')") as c:
            return {name: int(value) for name, value in await c.fetchall()}

    before = await counters()
    updates = [put(change.kv.key, 3, prev=change.kv) for change in first]
    inserts = [put(b"new%02d" % i, 3) for i in range(32)]
    await store.write(WriteBatch(3, updates + inserts))
    after = await counters()
    await store.close()
    assert {name: after[name] - before[name] for name in after} == {"Com_insert": 1, "Com_update_multi": 1}


async def test_changes_pages_keep_each_revision_whole(mysql_store: MysqlStore) -> None:
    await mysql_store.write(WriteBatch(2, [put(b"a", 2)]))
    txn = [put(b"t%d" % i, 3)._replace(sub=i) for i in range(5)]
    await mysql_store.write(WriteBatch(3, txn))
    await mysql_store.write(WriteBatch(4, [put(b"z", 4)]))
    page = await mysql_store.changes(1, 4, 3)
    assert [(c.kv.key, c.kv.mod_revision, c.sub) for c in page] == [(b"a", 2, 0)] + [
        (b"t%d" % i, 3, i) for i in range(5)
    ]
    assert [c.kv.key for c in await mysql_store.changes(3, 4, 3)] == [b"z"]


async def test_compaction_deletes_in_chunks(mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mysql, "COMPACT_CHUNK_ROWS", 3)
    prev = put(b"k", 2).kv
    await mysql_store.write(WriteBatch(2, [Change(prev, 0, None)]))
    for revision in range(3, 13):
        change = put(b"k", revision, prev)
        await mysql_store.write(WriteBatch(revision, [change]))
        prev = change.kv
    await mysql_store.compact(12)
    rows = await admin(f"SELECT mod_revision FROM `{database_of(mysql_store)}`.kv")
    assert rows == [(12,)]


# -- outages --------------------------------------------------------------------------------------


async def test_an_unreachable_server_is_reported_fast_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = MysqlStore(f"mysql://kube:{SECRET}@tcp(127.0.0.1:{free_port()})/kf_nowhere")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as unavailable:
        await store.open()
    assert time.monotonic() - started < FAST_SECONDS
    assert "mysql://kube:***@tcp(127.0.0.1:" in str(unavailable.value)
    assert SECRET not in str(unavailable.value) and SECRET not in caplog.text


async def test_wrong_credentials_are_reported_without_the_password() -> None:
    store = MysqlStore(f"mysql://root:{SECRET}@tcp({MYSQL_HOST}:{MYSQL_PORT})/kf_nowhere")
    with pytest.raises(asyncmy.errors.OperationalError) as refused:
        await store.open()
    assert "Access denied" in str(refused.value) and SECRET not in str(refused.value)


async def test_a_silent_server_is_reported_within_the_connect_timeout(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mysql, "CONNECT_TIMEOUT_SECONDS", 1.0)
    relay.silent = True
    store = MysqlStore(relay.endpoint())
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.open()
    assert time.monotonic() - started < 1.0 + FAST_SECONDS


async def test_a_server_silent_mid_query_is_reported_then_replaced(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mysql, "READ_TIMEOUT_SECONDS", 1)
    store = MysqlStore(relay.endpoint())
    await store.open()
    relay.silent = True
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.range(b"a", b"", 0, 0, False, False)
    assert time.monotonic() - started < 1 + FAST_SECONDS
    relay.silent = False
    assert (await store.range(b"a", b"", 0, 0, False, False)).revision == 1
    await store.close()


async def test_an_outage_fails_fast_and_the_store_recovers_by_itself(relay: Relay) -> None:
    store = MysqlStore(relay.endpoint(password=""))
    await store.open()
    await store.write(WriteBatch(2, [put(b"a", 2)]))
    # Several pooled connections, all of which the outage breaks.
    await asyncio.gather(*(store.range(b"a", b"", 0, 0, False, False) for _ in range(4)))

    await relay.stop()
    calls = {
        "range": lambda: store.range(b"a", b"", 0, 0, False, False),
        "latest": lambda: store.latest([b"a"]),
        "changes": lambda: store.changes(0, 2, 10),
        "revision": store.revision,
        "size": store.size,
        "write": lambda: store.write(WriteBatch(3, [put(b"b", 3)])),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot reach the database at mysql://root:"):
            await call()
        assert time.monotonic() - started < FAST_SECONDS, name

    await relay.start()
    assert await store.revision() == 2  # the write during the outage did not happen
    await store.write(WriteBatch(3, [put(b"b", 3)]))
    rows = await store.range(b"a", b"", 0, 0, False, False)
    assert ([kv.key for kv in rows.kvs], rows.revision) == ([b"a", b"b"], 3)
    await store.close()


async def test_connections_the_server_dropped_while_idle_are_replaced_unnoticed(mysql_store: MysqlStore) -> None:
    await mysql_store.write(WriteBatch(2, [put(b"a", 2)]))
    await asyncio.gather(*(mysql_store.range(b"a", b"", 0, 0, False, False) for _ in range(4)))
    threads = await admin("SELECT id FROM information_schema.processlist WHERE db = %s", database_of(mysql_store))
    assert threads
    for (thread,) in threads:
        await admin(f"KILL CONNECTION {thread}")
    assert (await mysql_store.range(b"a", b"", 0, 0, False, False)).revision == 2
    await mysql_store.write(WriteBatch(3, [put(b"b", 3)]))
    assert await mysql_store.revision() == 3

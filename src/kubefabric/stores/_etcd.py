"""A real etcd as the store: keys, values and leases live natively in it, revisions are translated.

Each kubefabric revision becomes one etcd transaction that also puts the revision into META_KEY,
guarded by a compare on META_KEY's previous value. That one key makes the store safe and
recoverable: a foreign writer is detected instead of silently interleaved, and after a crash or a
lost reply the revision map is rebuilt from etcd's own history (every transaction we wrote carries
its kubefabric revision).

Leases are real etcd leases with the same ids and etcd's longest TTL: kubefabric expires them
itself, with the DELETE events its clients expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import grpc

from kubefabric.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from kubefabric.stores._base import (
    Change,
    HistoryUnavailable,
    KeyValue,
    Lookup,
    RangeRows,
    Selection,
    StoredState,
    StoreUnavailable,
    WriteBatch,
)
from kubefabric.stores._revisions import EtcdIdentity, Mapped, RevisionMap, copy_shared_map, map_path

log = logging.getLogger(__name__)
T = TypeVar("T")

# Holds the kubefabric revision of the last transaction written (ASCII digits). Outside
# Kubernetes' /registry/ tree, and hidden from kubefabric's clients.
META_KEY = b"/kubefabric/revision"
# kubefabric's own keys, META_KEY and the notes (read_note), are all under this prefix, hidden.
HIDDEN_PREFIX, HIDDEN_END = b"/kubefabric/", b"/kubefabric0"
NOTE_PREFIX = HIDDEN_PREFIX + b"notes/"
# etcd's default --max-txn-ops and --max-request-bytes, with room for the META_KEY put.
MAX_TXN_OPS = 127
MAX_TXN_BYTES = 1_400_000
# etcd's MaxLeaseTTL: etcd must never expire a lease on its own.
LEASE_TTL = 9_000_000_000
# Generous: a loaded etcd may take seconds to fsync, and a timed-out write fails the client.
RPC_TIMEOUT = 10.0
DEFRAGMENT_TIMEOUT = 3600.0  # etcd rewrites its whole database file
# Changes of the latest writes kept in memory: etcd answers a history read only on its next
# watcher sync (up to 100 ms later), far too slow for watchers that are just catching up.
RECENT_CHANGES = 10_000
PRUNE_SECONDS = 60.0
FIND_PAGE = 1000  # live keys read per request while looking through them (etcd keeps no attribute index)
LATEST_CONCURRENCY = 64  # Ranges `latest` has in flight at once
_OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class EtcdEndpointError(ValueError):
    pass


@dataclass(frozen=True)
class EtcdOptions:
    """Settings of etcd stores that an endpoint URL does not carry."""

    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    mapper_endpoint: str = ""  # empty: each etcd store keeps a map file of its own (see map_path)
    mapper_history: float = 4 * 3600.0
    mapper_cache_capacity: int = 10000


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """`http://host:port` or `https://host:port` -> (gRPC target, TLS)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise EtcdEndpointError(f"etcd endpoint {endpoint!r} is not http:// or https://")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise EtcdEndpointError(
            f"etcd endpoint {endpoint!r} must be http(s)://HOST:PORT (TLS files come from --etcd-cafile, "
            "--etcd-certfile, --etcd-keyfile)"
        )
    try:
        port = parts.port or 2379
    except ValueError as error:
        raise EtcdEndpointError(f"etcd endpoint {endpoint!r}: {error}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "https"


def _hidden_part(start: bytes, end: bytes | None) -> tuple[bytes, bytes] | None:
    """The part of [start, end) (end None: only start; b"": no upper bound) under HIDDEN_PREFIX."""
    if end is None:
        return (start, start + b"\0") if start.startswith(HIDDEN_PREFIX) else None
    low, high = max(start, HIDDEN_PREFIX), HIDDEN_END if end == b"" else min(end, HIDDEN_END)
    return (low, high) if low < high else None


class EtcdStore:
    """A Store on a real etcd, reached over its own v3 gRPC API."""

    def __init__(self, endpoint: str, options: EtcdOptions | None = None) -> None:
        self._endpoint = endpoint
        self._target, self._tls = parse_endpoint(endpoint)
        self._options = options or EtcdOptions()
        self._mapper_path: Path = map_path(self._options.mapper_endpoint, self._target)
        self._channel: grpc.aio.Channel | None = None
        self._map: RevisionMap | None = None
        self._meta_created = 0  # etcd revision that created META_KEY; 0 while it does not exist
        self._pruner: asyncio.Task[None] | None = None
        self._recent: deque[Change] = deque()  # the changes of revisions >= _recent_from, in order
        self._recent_from = 0
        self._granted: set[int] = set()  # leases known to exist in etcd

    def __repr__(self) -> str:
        return f"EtcdStore({self._endpoint!r})"

    @property
    def map(self) -> RevisionMap:
        assert self._map is not None, "the store is not open"
        return self._map

    # -- connection --------------------------------------------------------------------------------

    def _connect(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ]
        if not self._tls:
            return grpc.aio.insecure_channel(self._target, options=options)
        opts = self._options

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        credentials = grpc.ssl_channel_credentials(read(opts.cafile), read(opts.keyfile), read(opts.certfile))
        return grpc.aio.secure_channel(self._target, credentials, options=options)

    async def _call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        """One RPC; a lost etcd becomes StoreUnavailable, compacted history HistoryUnavailable."""
        try:
            return await method(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error) from None

    def _translate(self, error: grpc.aio.AioRpcError) -> Exception:
        if error.code() in _OUTAGE_CODES:
            return StoreUnavailable(f"etcd at {self._endpoint} is unavailable: {error.details()}")
        if error.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (error.details() or ""):
            return HistoryUnavailable(self.map.compact_revision)
        return RuntimeError(f"etcd at {self._endpoint} refused a request: {error.details()}")

    def _stubs(self) -> tuple[rpc_pb2_grpc.KVStub, rpc_pb2_grpc.LeaseStub]:
        if self._channel is None:
            raise StoreUnavailable(f"etcd store {self._endpoint} is not open")
        return rpc_pb2_grpc.KVStub(self._channel), rpc_pb2_grpc.LeaseStub(self._channel)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> StoredState:
        self._channel = self._connect()
        status = await self._call(rpc_pb2_grpc.MaintenanceStub(self._channel).Status, rpc_pb2.StatusRequest())
        cluster_id = status.header.cluster_id
        etcd = EtcdIdentity.of(cluster_id, status.header.member_id, self._endpoint)
        if not self._options.mapper_endpoint:
            copy_shared_map(self._mapper_path, etcd)
        self._map = RevisionMap(
            self._mapper_path,
            etcd,
            self._options.mapper_history,
            self._options.mapper_cache_capacity,
        )
        await self._recover()
        self._forget_recent()
        leases = self.map.leases()
        _, lease_stub = self._stubs()
        in_etcd = await self._call(lease_stub.LeaseLeases, rpc_pb2.LeaseLeasesRequest())
        leased_keys: list[tuple[int, bytes]] = []
        # Beside other databases the map holds no leases, yet keys here may use some.
        for lease_id in sorted(set(leases) | {lease.ID for lease in in_etcd.leases}):
            answer = await self._call(
                lease_stub.LeaseTimeToLive, rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True)
            )
            if answer.TTL == -1:  # granted in the map, lost by etcd: nothing can be attached to it yet
                await self._grant([lease_id])
            self._granted.add(lease_id)
            leased_keys.extend((lease_id, key) for key in answer.keys)
        self._pruner = asyncio.create_task(self._prune_forever(), name="revision-map-pruner")
        return StoredState(
            revision=self.map.revision,
            compact_revision=self.map.compact_revision,
            leases=leases,
            leased_keys=leased_keys,
            identity=cluster_id,
        )

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._map is not None:
            self._map.close()

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_SECONDS)
            self.map.prune()

    async def _recover(self) -> None:
        """Bring the map up to what etcd holds: writes whose replies were lost, or a new etcd."""
        kv, _ = self._stubs()
        answer = await self._call(kv.Range, rpc_pb2.RangeRequest(key=META_KEY))
        now = answer.header.revision
        meta = answer.kvs[0] if answer.kvs else None
        self._meta_created = meta.create_revision if meta else 0
        mapper = self.map
        if not mapper.known:
            if meta is None:
                log.info("etcd at %s: adopting its data as it is, at revision %d", self._endpoint, now)
                mapper.start(base_etcd=now, base_offset=0, floor=0)
            else:
                self._restart_map(int(meta.value), now)
            return
        if meta is None or meta.mod_revision < mapper.head.etcd_last:
            if mapper.head.etcd_last > mapper.base_etcd:
                written = "no kubefabric revision" if meta is None else f"kubefabric revision {int(meta.value)}"
                raise RuntimeError(
                    f"etcd {mapper.etcd} is at etcd revision {now} and holds {written}, but its revision map "
                    f"{self._mapper_path} maps kubefabric revision {mapper.head.kf} to etcd revision "
                    f"{mapper.head.etcd_last}: a fresh etcd with the same cluster and member id, or one wiped or "
                    f"restored from a backup. To adopt it as it is now, remove {self._mapper_path} or point "
                    "--revision-mapper-endpoint at another file."
                )
            return
        if meta.mod_revision > mapper.head.etcd_last:
            try:
                await self._replay(mapper.head.etcd_last + 1, meta.mod_revision)
            except HistoryUnavailable:
                self._restart_map(int(meta.value), now)

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_from = self.map.revision + 1

    def _remember_recent(self, changes: list[Change]) -> None:
        self._recent.extend(changes)
        while len(self._recent) > RECENT_CHANGES:
            # Whole revisions only, so that what is kept from _recent_from on is complete.
            dropped = self._recent.popleft().kv.mod_revision
            while self._recent and self._recent[0].kv.mod_revision == dropped:
                self._recent.popleft()
            self._recent_from = dropped + 1

    def _restart_map(self, revision: int, etcd_now: int) -> None:
        log.warning(
            "etcd at %s: the revision map lacks its history; continuing from revision %d, earlier revisions "
            "read as compacted",
            self._endpoint,
            revision,
        )
        self.map.start(base_etcd=etcd_now, base_offset=revision - etcd_now, floor=revision)

    async def _replay(self, first: int, last: int) -> None:
        """Map etcd revisions first..last, written by us but never recorded, from etcd's history.
        `last` is META_KEY's latest revision, so every part read belongs to a recorded revision."""
        log.warning("etcd at %s: recovering revisions %d..%d into the revision map", self._endpoint, first, last)
        events = await self._history(first, last)
        written: list[Mapped] = []
        part_of_next = 0  # first etcd revision of a kubefabric revision whose META_KEY put is still ahead
        for revision, group in groupby(events, key=lambda event: event.kv.mod_revision):
            part_of_next = part_of_next or revision
            meta = next((event for event in group if event.kv.key == META_KEY), None)
            if meta is not None:
                written.append(Mapped(int(meta.kv.value), part_of_next, revision))
                part_of_next = 0
        self.map.record(written, {}, {}, max(self.map.revision, written[-1].kf if written else 0))
        # Now that their revisions translate, the events count like writes do.
        self._record(self._changes_of(events), written, self.map.revision)

    async def revision(self) -> int:
        await self._recover()
        self._forget_recent()
        return self.map.revision

    # -- writing -----------------------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        mapper = self.map
        # Beside other databases, this store never sees grants (the default keeps leases): a lease
        # is granted here when a key first uses it.
        used = {change.kv.lease for change in batch.changes if change.kv.lease}
        await self._grant([lease_id for lease_id, _ in batch.granted_leases] + sorted(used - self._granted))
        written: list[Mapped] = []
        try:
            await self._write_revisions(batch.changes, written)
        except BaseException:
            # What did reach etcd is recorded; the core learns the revision from `revision()`.
            self._record(batch.changes, written, written[-1].kf if written else mapper.revision)
            self._forget_recent()
            raise
        self._record(batch.changes, written, batch.revision)
        self._remember_recent(batch.changes)
        _, lease_stub = self._stubs()
        for lease_id in batch.revoked_leases:
            with contextlib.suppress(RuntimeError):  # already gone from etcd
                await self._call(lease_stub.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=lease_id))
            self._granted.discard(lease_id)
        mapper.save_leases(batch.granted_leases, batch.revoked_leases)
        if batch.compact_revision is not None:
            mapper.set_compact_revision(batch.compact_revision)

    def _record(self, changes: list[Change], written: list[Mapped], revision: int) -> None:
        """Persist the written revisions and how their changes move the map rows' references."""
        refs, released = _references(changes, {mapped.kf for mapped in written})
        self.map.record(written, refs, released, revision)

    async def _grant(self, lease_ids: list[int]) -> None:
        _, lease_stub = self._stubs()
        for lease_id in lease_ids:
            with contextlib.suppress(RuntimeError):  # already exists: granted again within a batch
                await self._call(lease_stub.LeaseGrant, rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=LEASE_TTL))
            self._granted.add(lease_id)

    async def _write_revisions(self, changes: list[Change], written: list[Mapped]) -> None:
        """One etcd transaction per kubefabric revision (more if it is too big), one after another:
        etcd reorders concurrent requests (a third of a batch sent at once arrived out of order, which
        made it slower than one at a time), and
        each revision must be its own etcd revision, so that reads and watches at it can be served."""
        for kf, revision_changes in groupby(changes, key=lambda change: change.kv.mod_revision):
            await self._send(kf, list(revision_changes), written)

    def _previous(self, written: list[Mapped]) -> int | None:
        """The kubefabric revision META_KEY holds now: the last one this batch wrote, else the map's
        head; None while it does not exist."""
        if written:
            return written[-1].kf
        return self.map.head.kf if self._meta_created else None

    @staticmethod
    def _txn(previous: int | None, kf: int, ops: list[rpc_pb2.RequestOp], last_part: bool) -> rpc_pb2.TxnRequest:
        if previous is None:
            compare = rpc_pb2.Compare(
                key=META_KEY, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL, create_revision=0
            )
        else:
            compare = rpc_pb2.Compare(
                key=META_KEY, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL, value=str(previous).encode()
            )
        if last_part:
            ops = [*ops, rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=META_KEY, value=str(kf).encode()))]
        return rpc_pb2.TxnRequest(compare=[compare], success=ops)

    async def _send(self, kf: int, revision_changes: list[Change], written: list[Mapped]) -> None:
        """One revision; one too big for one etcd transaction goes as several, META_KEY in the last."""
        kv, _ = self._stubs()
        parts = _parts(revision_changes)
        previous = self._previous(written)
        first = 0
        for number, ops in enumerate(parts):
            result = await self._call(kv.Txn, self._txn(previous, kf, ops, last_part=number == len(parts) - 1))
            if not result.succeeded:
                await self._check_fence(previous)
                raise StoreUnavailable(f"etcd at {self._endpoint}: revision {kf} was refused")
            first = first or result.header.revision
        self._applied(Mapped(kf, first, result.header.revision), written)

    def _applied(self, mapped: Mapped, written: list[Mapped]) -> None:
        # Not the map's head yet: reads at the head must not reach etcd revisions the map cannot
        # translate, nor writes the core has not acknowledged. `record` moves it, after the batch.
        written.append(mapped)
        self._meta_created = self._meta_created or mapped.etcd_last

    async def _check_fence(self, previous: int | None) -> None:
        """A refused transaction: someone else writes our etcd (or restored it from a backup)."""
        kv, _ = self._stubs()
        answer = await self._call(kv.Range, rpc_pb2.RangeRequest(key=META_KEY))
        expected = None if previous is None else str(previous).encode()
        found = answer.kvs[0].value if answer.kvs else None
        if found != expected:
            holds = "nothing" if found is None else found.decode(errors="replace")
            wanted = "nothing" if expected is None else expected.decode()
            raise RuntimeError(
                f"etcd at {self._endpoint} is written by another kubefabric too (its revision key holds {holds}, "
                f"this server wrote {wanted} last); only one kubefabric may write an etcd, so this one refuses to "
                "write: stop the other one, then restart this one"
            )

    # -- reading -----------------------------------------------------------------------------------

    def _etcd_revision(self, revision: int) -> int:
        """The etcd revision to read kubefabric revision `revision` at (0 or less: the latest)."""
        if revision <= 0:
            return self.map.head.etcd_last
        if revision < self.map.floor:
            raise HistoryUnavailable(self.map.floor)
        return self.map.etcd_at(revision)

    async def range(
        self,
        start: bytes,
        end: bytes | None,
        revision: int,
        limit: int,
        keys_only: bool,
        count_only: bool,
        selection: Selection | None = None,
        counted: bool = True,  # etcd counts every range it reads: nothing to save
    ) -> RangeRows:
        if selection is not None:
            # etcd cannot filter by what a value holds: read the whole range and match here.
            rows = await self.range(start, end, revision, 0, False, False)
            selected = [kv for kv in rows.kvs if selection.matches(kv)]
            page = [] if count_only else selected[:limit] if limit else selected
            if keys_only:
                page = [kv._replace(value=b"") for kv in page]
            return RangeRows(page, len(selected), rows.revision)
        kv, _ = self._stubs()
        head = self.map.revision
        etcd_revision = self._etcd_revision(revision)
        hidden = 0
        if (part := _hidden_part(start, end)) is not None:
            hidden_keys = await self._call(
                kv.Range,
                rpc_pb2.RangeRequest(key=part[0], range_end=part[1], revision=etcd_revision, count_only=True),
            )
            hidden = hidden_keys.count
        answer = await self._call(
            kv.Range,
            rpc_pb2.RangeRequest(
                key=start,
                range_end=b"" if end is None else end or b"\0",
                revision=etcd_revision,
                limit=limit + hidden if limit else 0,
                keys_only=keys_only,
                count_only=count_only,
            ),
        )
        if 0 < revision < self.map.floor:  # pruned while etcd answered: the rows may no longer translate
            raise HistoryUnavailable(self.map.floor)
        found = [item for item in answer.kvs if not item.key.startswith(HIDDEN_PREFIX)]
        if limit:
            found = found[:limit]
        return RangeRows(self._translate_kvs(found), answer.count - hidden, head)

    def _translate_kvs(self, found: list[kv_pb2.KeyValue]) -> list[KeyValue]:
        kf_of = self.map.to_kf({r for item in found for r in (item.mod_revision, item.create_revision)})
        return [_key_value(item, kf_of) for item in found]

    async def unindexed(self, after: tuple[bytes, int], limit: int) -> list[KeyValue]:
        return []  # etcd keeps no selector index: selections are matched as values are read

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        # One Range per key, LATEST_CONCURRENCY at a time: a collection may ask for thousands of keys.
        wanted = list(keys)
        found: dict[bytes, KeyValue] = {}
        for start in range(0, len(wanted), LATEST_CONCURRENCY):
            chunk = wanted[start : start + LATEST_CONCURRENCY]
            answers = await asyncio.gather(
                *(self.range(key, None, 0, 0, False, False) for key in chunk), return_exceptions=True
            )
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
                if answer.kvs:
                    found[answer.kvs[0].key] = answer.kvs[0]
        return found

    async def find(self, lookup: Lookup, after: bytes, limit: int) -> list[KeyValue]:
        # No index to ask: test every live key after `after`, a page at a time (range leaves the hidden keys out).
        found: list[KeyValue] = []
        start = after + b"\0"  # the first key > after
        while True:
            page = await self.range(start, b"", 0, FIND_PAGE, False, False)
            found += filter(lookup.matches, page.kvs)
            if limit and len(found) >= limit:
                return found[:limit]
            if len(page.kvs) < FIND_PAGE:
                return found
            start = page.kvs[-1].key + b"\0"

    async def changes(self, after: int, until: int, limit: int) -> list[Change]:
        if after + 1 < self.map.floor:
            raise HistoryUnavailable(self.map.floor)
        if after + 1 >= self._recent_from:
            return self._recent_changes(after, until, limit)
        # Every etcd revision but the first has events (only writes move it): a history read knows
        # when it is done by seeing its last revision's events.
        first, last = max(self.map.etcd_at(after) + 1, 2), self.map.etcd_at(until)
        if first > last:
            return []
        events = await self._history(first, last, limit)
        if after + 1 < self.map.floor:  # pruned while etcd answered: the events may no longer translate
            raise HistoryUnavailable(self.map.floor)
        return self._changes_of(events)

    def _changes_of(self, events: list[kv_pb2.Event]) -> list[Change]:
        """etcd's events as changes in kubefabric revisions, without those of kubefabric's own keys."""
        events = [event for event in events if not event.kv.key.startswith(HIDDEN_PREFIX)]
        kf_of = self.map.to_kf(
            {
                revision
                for event in events
                for item in (event.kv, event.prev_kv)
                for revision in (item.mod_revision, item.create_revision)
                if revision
            }
        )
        changes: list[Change] = []
        for event in events:
            if event.type == kv_pb2.Event.PUT:
                kv = _key_value(event.kv, kf_of)
            else:
                kv = KeyValue(event.kv.key, 0, kf_of[event.kv.mod_revision], 0, b"", 0)
            same_revision = bool(changes) and changes[-1].kv.mod_revision == kv.mod_revision
            sub = changes[-1].sub + 1 if same_revision else 0
            changes.append(Change(kv, sub, _key_value(event.prev_kv, kf_of) if event.HasField("prev_kv") else None))
        return changes

    def _recent_changes(self, after: int, until: int, limit: int) -> list[Change]:
        found: list[Change] = []
        for change in reversed(self._recent):  # the wanted ones are usually the last few
            if change.kv.mod_revision <= after:
                break
            if change.kv.mod_revision <= until:
                found.append(change)
        found.reverse()
        if limit and len(found) > limit:
            cut = found[limit - 1].kv.mod_revision
            found = [change for change in found if change.kv.mod_revision <= cut]
        return found

    async def _history(self, first: int, last: int, limit: int = 0) -> list[kv_pb2.Event]:
        """etcd's events of revisions first..last (whole kubefabric revisions, about `limit` events)."""
        if self._channel is None:
            raise StoreUnavailable(f"etcd store {self._endpoint} is not open")
        requests: asyncio.Queue[rpc_pb2.WatchRequest] = asyncio.Queue()
        await requests.put(
            rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", start_revision=first, prev_kv=True
                )
            )
        )

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                yield await requests.get()

        stream = rpc_pb2_grpc.WatchStub(self._channel).Watch(outgoing())
        events: list[kv_pb2.Event] = []
        found = 0  # events other than META_KEY's
        try:
            async with asyncio.timeout(RPC_TIMEOUT):
                async for answer in stream:
                    if answer.compact_revision:
                        raise HistoryUnavailable(self.map.compact_revision)
                    if answer.canceled:
                        raise RuntimeError(f"etcd at {self._endpoint} cancelled a history read: {answer.cancel_reason}")
                    for event in answer.events:
                        if event.kv.mod_revision > last:
                            return events
                        # Stop at the end of a kubefabric revision once `limit` client events are in.
                        if limit and found >= limit and event.kv.mod_revision != events[-1].kv.mod_revision:
                            if events[-1].kv.key == META_KEY or events[-1].kv.mod_revision <= self.map.base_etcd:
                                return events
                        events.append(event)
                        found += not event.kv.key.startswith(HIDDEN_PREFIX)
                    if events and events[-1].kv.mod_revision >= last:
                        return events
        except grpc.aio.AioRpcError as error:
            raise self._translate(error) from None
        except TimeoutError:
            raise StoreUnavailable(f"etcd at {self._endpoint} did not send history {first}..{last} in time") from None
        finally:
            stream.cancel()
        raise StoreUnavailable(f"etcd at {self._endpoint} ended a history read early")

    # -- maintenance -------------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        kv, _ = self._stubs()
        with contextlib.suppress(HistoryUnavailable):  # etcd was compacted further already
            await self._call(kv.Compact, rpc_pb2.CompactionRequest(revision=self.map.etcd_at(revision)))
        self.map.prune()

    async def defragment(self) -> None:
        """etcd's own defragmentation (which holds etcd's writes while it runs)."""
        if self._channel is None:
            raise StoreUnavailable(f"etcd store {self._endpoint} is not open")
        defragment = rpc_pb2_grpc.MaintenanceStub(self._channel).Defragment
        try:
            await defragment(rpc_pb2.DefragmentRequest(), timeout=DEFRAGMENT_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error) from None

    async def size(self) -> int:
        if self._channel is None:
            raise StoreUnavailable(f"etcd store {self._endpoint} is not open")
        status = await self._call(rpc_pb2_grpc.MaintenanceStub(self._channel).Status, rpc_pb2.StatusRequest())
        return int(status.dbSize) + self._mapper_path.stat().st_size

    # -- notes and moves ---------------------------------------------------------------------------

    async def read_note(self, name: str) -> str | None:
        kv, _ = self._stubs()
        answer = await self._call(kv.Range, rpc_pb2.RangeRequest(key=NOTE_PREFIX + name.encode()))
        return answer.kvs[0].value.decode() if answer.kvs else None

    async def write_note(self, name: str, text: str | None) -> None:
        # Outside kubefabric's revisions: etcd's revision moves, the map does not, and the event is
        # left out of the history like META_KEY's.
        kv, _ = self._stubs()
        key = NOTE_PREFIX + name.encode()
        if text is None:
            await self._call(kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=key))
        else:
            await self._call(kv.Put, rpc_pb2.PutRequest(key=key, value=text.encode()))

    async def remove_keys(self, keys: list[bytes]) -> None:
        # etcd records a deletion as an event of a new etcd revision, which kubefabric's history
        # would then show; and a copy into etcd could not keep the versions' revisions either.
        raise RuntimeError(f"etcd at {self._endpoint}: keys cannot be moved into or out of an etcd store")


def _key_value(item: kv_pb2.KeyValue, kf_of: dict[int, int]) -> KeyValue:
    """An etcd key-value with its revisions translated."""
    return KeyValue(
        item.key, kf_of[item.create_revision], kf_of[item.mod_revision], item.version, item.value, item.lease
    )


def _parts(changes: list[Change]) -> list[list[rpc_pb2.RequestOp]]:
    """A revision's changes as etcd transaction op lists that etcd's default limits accept.

    A key written twice in one revision (nested txns may put it, then delete it) is written once,
    in its final state: etcd refuses a transaction that names one key twice.
    """
    final = {change.kv.key: change for change in changes}
    parts: list[list[rpc_pb2.RequestOp]] = [[]]
    size = 0
    for change in changes:
        if final[change.kv.key] is not change:
            continue
        kv = change.kv
        if change.is_delete:
            op = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=kv.key))
        else:
            op = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=kv.key, value=kv.value, lease=kv.lease))
        op_size = len(kv.key) + len(kv.value) + 16
        if parts[-1] and (len(parts[-1]) >= MAX_TXN_OPS or size + op_size > MAX_TXN_BYTES):
            parts.append([])
            size = 0
        parts[-1].append(op)
        size += op_size
    return parts


def _reference(refs: dict[int, int], released: dict[int, int], kf: int, delta: int, at: int) -> None:
    refs[kf] = refs.get(kf, 0) + delta
    if delta < 0:
        released[kf] = max(released.get(kf, 0), at)


def _references(changes: list[Change], written: set[int]) -> tuple[dict[int, int], dict[int, int]]:
    """How the written changes move the map rows' references (see _revisions)."""
    refs: dict[int, int] = {}
    released: dict[int, int] = {}
    for kv, _, prev in changes:
        if kv.mod_revision not in written:
            continue
        if prev is not None:
            _reference(refs, released, prev.mod_revision, -1, kv.mod_revision)
            if kv.version == 0:
                _reference(refs, released, prev.create_revision, -1, kv.mod_revision)
        if kv.version:
            _reference(refs, released, kv.mod_revision, 2 if prev is None else 1, 0)
    return refs, released

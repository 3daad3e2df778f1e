"""The persistent map between kubefabric's revisions and an etcd's own, kept in SQLite.

An etcd store cannot choose the revisions etcd gives its writes, so each kubefabric revision
written to it is recorded here with the etcd revisions it became (one, or a few when its
changes did not fit one etcd transaction). Clients only ever see kubefabric revisions: a read at
kubefabric revision R reads etcd at the last etcd revision written for a kubefabric revision <= R,
and every revision etcd returns is translated back.

Rows older than the retention (`REVISION_MAPPER_HISTORY`) are dropped, and reads before the oldest
kept row then behave like a compacted revision. A row is kept longer while anything readable
still names it: it holds `refs`, the live versions created or modified at it, and `released`, the
last revision at which such a reference went away (an event there still names it as its `prev`).

Revisions etcd gave before kubefabric first wrote to it (adopting an etcd that already holds
data), or before a lost map, translate by a constant offset: kf = etcd + offset for
etcd <= base_etcd.

A map file belongs to one etcd cluster, recorded in its `etcd` table: pointed at another, the
store refuses to start rather than translate that etcd's revisions by a map they are not in. By
default each etcd store has a file of its own, named after the etcd's address (`map_path`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    cluster TEXT PRIMARY KEY,
    base_etcd INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    floor INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    cluster TEXT NOT NULL,
    kf INTEGER NOT NULL,
    etcd_first INTEGER NOT NULL,
    etcd_last INTEGER NOT NULL,
    written REAL NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (cluster, kf)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS revisions_etcd ON revisions (cluster, etcd_last);
CREATE TABLE IF NOT EXISTS leases (
    cluster TEXT NOT NULL,
    id INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    PRIMARY KEY (cluster, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS etcd (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    cluster TEXT NOT NULL,
    member TEXT NOT NULL,
    endpoint TEXT NOT NULL
);
"""
# The one map file that every etcd store shared before each had its own (still read on upgrade).
SHARED_PATH = Path("db/revisions.db")

log = logging.getLogger(__name__)


class RevisionMapError(ValueError):
    """The revision mapper's endpoint cannot be used."""


def mapper_path(endpoint: str) -> Path:
    """The file of a `sqlite://PATH` revision mapper endpoint."""
    if not endpoint.startswith("sqlite://") or not endpoint.removeprefix("sqlite://").partition("?")[0]:
        raise RevisionMapError(f"revision mapper endpoint {endpoint!r} is not sqlite://PATH")
    return Path(endpoint.removeprefix("sqlite://").partition("?")[0])


def map_path(mapper_endpoint: str, etcd_target: str) -> Path:
    """The map file of the etcd at `etcd_target` (HOST:PORT): the mapper endpoint's if one is
    given, else the etcd's own, db/revisions-HOST-PORT.db, so etcd stores never share one."""
    if mapper_endpoint:
        return mapper_path(mapper_endpoint)
    host, _, port = etcd_target.rpartition(":")
    return SHARED_PATH.parent / f"revisions-{re.sub(r'[^A-Za-z0-9.-]+', '_', host.strip('[]'))}-{port}.db"


@dataclass(frozen=True, slots=True)
class EtcdIdentity:
    """Which etcd a map belongs to: its cluster and member ids (hex, as etcdctl shows them)."""

    cluster: str
    member: str
    endpoint: str

    @classmethod
    def of(cls, cluster_id: int, member_id: int, endpoint: str) -> EtcdIdentity:
        return cls(f"{cluster_id:016x}", f"{member_id:016x}", endpoint)

    def __str__(self) -> str:
        return f"cluster {self.cluster} (member {self.member}, at {self.endpoint})"


def copy_shared_map(path: Path, etcd: EtcdIdentity) -> None:
    """Upgrade: give the etcd its own map file `path`, copied from its rows in SHARED_PATH (if any).

    The copy is made aside and renamed into place, so a crash leaves no half map; SHARED_PATH is
    left as it is, for the other etcds it may hold."""
    if path.exists() or path == SHARED_PATH or not SHARED_PATH.exists():
        return
    with closing(sqlite3.connect(SHARED_PATH)) as shared:
        tables = {row[0] for row in shared.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if (
            "clusters" not in tables
            or not shared.execute("SELECT 1 FROM clusters WHERE cluster = ?", (etcd.cluster,)).fetchone()
        ):
            return
    aside = path.with_name(path.name + ".copying")
    aside.unlink(missing_ok=True)
    with closing(sqlite3.connect(aside, isolation_level=None)) as copy:
        copy.executescript(SCHEMA)
        copy.execute("ATTACH DATABASE ? AS shared", (str(SHARED_PATH),))
        with copy:
            for table in ("clusters", "revisions", "leases"):
                copy.execute(f"INSERT INTO {table} SELECT * FROM shared.{table} WHERE cluster = ?", (etcd.cluster,))
    os.replace(aside, path)
    log.warning(
        "the revision map of etcd %s now has its own file %s, copied from %s (which can be removed once every "
        "etcd store that used it has started once)",
        etcd,
        path,
        SHARED_PATH,
    )


@dataclass(slots=True)
class Mapped:
    """One kubefabric revision and the etcd revisions it was written as."""

    kf: int
    etcd_first: int
    etcd_last: int


class RevisionMap:
    """The map of one etcd cluster's revisions, with an in-memory cache of recent lookups."""

    def __init__(self, path: Path, etcd: EtcdIdentity, history_seconds: float, cache_capacity: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Every row can be rebuilt from the etcd's own history (each write also records its
        # kubefabric revision in etcd), so a lost tail after a power failure is recovered.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.path = path
        self.etcd = etcd
        self.cluster = cluster = etcd.cluster
        try:
            self._claim()
        except RevisionMapError:
            self._db.close()
            raise
        self._history = history_seconds
        self._capacity = cache_capacity
        self._to_kf: OrderedDict[int, int] = OrderedDict()
        self._to_etcd: OrderedDict[int, int] = OrderedDict()
        row = self._db.execute(
            "SELECT base_etcd, base_offset, floor, revision, compact_revision FROM clusters WHERE cluster = ?",
            (cluster,),
        ).fetchone()
        self.known = row is not None
        state: tuple[int, int, int, int, int] = row or (0, 0, 0, 0, -1)
        self.base_etcd, self.base_offset, self.floor, self.revision, self.compact_revision = state
        last = self._db.execute(
            "SELECT kf, etcd_first, etcd_last FROM revisions WHERE cluster = ? ORDER BY kf DESC LIMIT 1", (cluster,)
        ).fetchone()
        self.head = Mapped(*last) if last else Mapped(self.revision, self.base_etcd, self.base_etcd)

    def _claim(self) -> None:
        """Record the etcd this map belongs to, or refuse another etcd."""
        etcd = self.etcd
        owner = self._db.execute("SELECT cluster, member, endpoint FROM etcd").fetchone()
        if owner is None:
            # A file written before maps recorded their etcd: it holds the maps of the clusters in it.
            held = [row[0] for row in self._db.execute("SELECT cluster FROM clusters")]
            if held and etcd.cluster not in held:
                raise self._refusal(f"cluster {', '.join(held)}")
            self._db.execute("INSERT INTO etcd VALUES (1, ?, ?, ?)", (etcd.cluster, etcd.member, etcd.endpoint))
        elif owner[0] != etcd.cluster:
            raise self._refusal(str(EtcdIdentity(*owner)))
        elif (owner[1], owner[2]) != (etcd.member, etcd.endpoint):
            # Another member of the same cluster, or the same one at a new address: the same data.
            log.info("revision map %s: etcd %s was %s before", self.path, etcd, EtcdIdentity(*owner))
            self._db.execute("UPDATE etcd SET member = ?, endpoint = ?", (etcd.member, etcd.endpoint))

    def _refusal(self, owner: str) -> RevisionMapError:
        return RevisionMapError(
            f"the revision map {self.path} belongs to etcd {owner}, but {self.etcd.endpoint} is etcd cluster "
            f"{self.etcd.cluster} (member {self.etcd.member}): another etcd, whose revisions that map cannot "
            "translate. Give each etcd its own map: "
            "leave --revision-mapper-endpoint unset (each etcd store then keeps db/revisions-HOST-PORT.db) or "
            f"point it at another file; remove {self.path} only if that other etcd is gone for good."
        )

    def close(self) -> None:
        self._db.close()

    def start(self, base_etcd: int, base_offset: int, floor: int) -> None:
        """Begin a map: etcd revisions up to `base_etcd` translate as etcd + `base_offset`."""
        self.base_etcd, self.base_offset, self.floor = base_etcd, base_offset, floor
        self.revision = base_etcd + base_offset
        self.head = Mapped(self.revision, base_etcd, base_etcd)
        with self._db:
            self._db.execute("DELETE FROM revisions WHERE cluster = ?", (self.cluster,))
            self._db.execute(
                "INSERT OR REPLACE INTO clusters VALUES (?, ?, ?, ?, ?, ?)",
                (self.cluster, base_etcd, base_offset, floor, self.revision, self.compact_revision),
            )
        self.known = True
        self._to_kf.clear()
        self._to_etcd.clear()

    # -- recording -------------------------------------------------------------------------------

    def record(self, written: list[Mapped], refs: dict[int, int], released: dict[int, int], revision: int) -> None:
        """Persist newly written revisions, reference changes (kf -> delta) and the store's revision."""
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO revisions (cluster, kf, etcd_first, etcd_last, written) VALUES (?, ?, ?, ?, ?)",
                [(self.cluster, m.kf, m.etcd_first, m.etcd_last, now) for m in written],
            )
            self._db.executemany(
                "UPDATE revisions SET refs = refs + ?, released = max(released, ?) WHERE cluster = ? AND kf = ?",
                [(delta, released.get(kf, 0), self.cluster, kf) for kf, delta in refs.items()],
            )
            self._db.execute("UPDATE clusters SET revision = ? WHERE cluster = ?", (revision, self.cluster))
        for mapped in written:
            self._remember(self._to_kf, mapped.etcd_last, mapped.kf)
            self._remember(self._to_etcd, mapped.kf, mapped.etcd_last)
        if written:
            self.head = written[-1]
        self.revision = revision

    def set_compact_revision(self, revision: int) -> None:
        self._db.execute("UPDATE clusters SET compact_revision = ? WHERE cluster = ?", (revision, self.cluster))
        self.compact_revision = revision

    def save_leases(self, granted: list[tuple[int, int]], revoked: list[int]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", [(self.cluster, i, ttl) for i, ttl in granted]
            )
            self._db.executemany(
                "DELETE FROM leases WHERE cluster = ? AND id = ?", [(self.cluster, i) for i in revoked]
            )

    def leases(self) -> dict[int, int]:
        return dict(self._db.execute("SELECT id, ttl FROM leases WHERE cluster = ?", (self.cluster,)).fetchall())

    def prune(self) -> None:
        """Drop rows past the retention that nothing readable names; move the floor up to them."""
        if self._history <= 0:
            return
        cutoff = time.time() - self._history
        row = self._db.execute(
            "SELECT min(kf) FROM revisions WHERE cluster = ? AND written >= ?", (self.cluster, cutoff)
        ).fetchone()
        # The head is always readable, however long ago it was written.
        floor = min(row[0] if row[0] is not None else self.head.kf, self.head.kf)
        if floor <= self.floor:
            return
        with self._db:
            self._db.execute(
                "DELETE FROM revisions WHERE cluster = ? AND kf < ? AND refs <= 0 AND released < ?",
                (self.cluster, floor, floor),
            )
            self._db.execute("UPDATE clusters SET floor = ? WHERE cluster = ?", (floor, self.cluster))
        self.floor = floor
        self._to_kf.clear()
        self._to_etcd.clear()

    # -- translating -----------------------------------------------------------------------------

    def etcd_at(self, kf: int) -> int:
        """The etcd revision holding the state as of kubefabric revision `kf` (callers check the floor)."""
        if kf >= self.head.kf:
            return self.head.etcd_last
        cached = self._to_etcd.get(kf)
        if cached is not None:
            return cached
        row = self._db.execute(
            "SELECT etcd_last FROM revisions WHERE cluster = ? AND kf <= ? ORDER BY kf DESC LIMIT 1",
            (self.cluster, kf),
        ).fetchone()
        etcd = row[0] if row else min(kf - self.base_offset, self.base_etcd)
        self._remember(self._to_etcd, kf, etcd)
        return int(etcd)

    def to_kf(self, etcd_revisions: set[int]) -> dict[int, int]:
        """kubefabric revisions of the given etcd revisions."""
        found: dict[int, int] = {}
        missing: list[int] = []
        for etcd in etcd_revisions:
            if etcd <= self.base_etcd:
                found[etcd] = etcd + self.base_offset
            elif (kf := self._to_kf.get(etcd)) is not None:
                self._to_kf.move_to_end(etcd)
                found[etcd] = kf
            else:
                missing.append(etcd)
        for etcd in missing:
            # A revision written as several etcd transactions is found by its last one.
            row = self._db.execute(
                "SELECT kf, etcd_first FROM revisions WHERE cluster = ? AND etcd_last >= ? ORDER BY etcd_last LIMIT 1",
                (self.cluster, etcd),
            ).fetchone()
            if row is None or row[1] > etcd:
                raise KeyError(f"etcd revision {etcd} is not in the revision map")
            found[etcd] = row[0]
            self._remember(self._to_kf, etcd, row[0])
        return found

    def _remember(self, cache: OrderedDict[int, int], key: int, value: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self._capacity:
            cache.popitem(last=False)

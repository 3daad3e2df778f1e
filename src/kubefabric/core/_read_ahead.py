"""Reading ahead of the write lock: the latest versions of the keys writes will read, many writes in one read.

Writes are evaluated one at a time under Mvcc's write lock. A key a write reads that no pending write
holds comes from the database; read there, under the lock, every write waited for its own round trip,
and every other writer with it (a create's compare reads its key). So before taking the lock a write
asks for its keys here. The keys of every write that asks while a read is under way go together in the
next one: one statement for many writes, outside the lock.

By the time the write holds the lock, what was read may be out of date, but only for keys of commits
that landed since the read began: commits still in flight are pending (and pending versions come
first), later ones cannot have been evaluated yet. So landings are numbered and their keys remembered,
and a version read before a landing that touched its key is read again, under the lock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Iterable

from kubefabric.stores import KeyValue, Store

# Recent landings whose keys are remembered, and how many keys they may hold in all (a bulk load
# lands thousands at a time); a read older than the landings remembered is not trusted for any key.
REMEMBERED_LANDINGS = 256
REMEMBERED_KEYS = 16_384


class Versions:
    """What one read ahead found."""

    def __init__(self, read_ahead: ReadAhead, landing: int, keys: Collection[bytes], found: dict[bytes, KeyValue]):
        self._read_ahead = read_ahead
        self._landing = landing  # landings before the read began
        self._keys = keys
        self._found = found

    def get(self, key: bytes) -> tuple[bool, KeyValue | None]:
        """(whether the key's latest durable version is known, that version or None if it has none)."""
        if key not in self._keys or self._read_ahead.landed_since(key, self._landing):
            return False, None
        return True, self._found.get(key)


class ReadAhead:
    """Batches the reads of writes waiting for the write lock; remembers which keys recent landings touched."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._landings = 0
        self._recent: deque[tuple[int, Collection[bytes] | None]] = deque()
        self._remembered_keys = 0
        self._wanted: set[bytes] = set()
        self._waiters: list[asyncio.Future[Versions]] = []
        self._reading: asyncio.Task[None] | None = None

    async def read(self, keys: Iterable[bytes]) -> Versions:
        """The latest durable versions of `keys`, read with those of other writes asking meanwhile."""
        loop = asyncio.get_running_loop()
        if not self._waiters and self._reading is None:
            loop.call_soon(self._start)  # writes arriving in this turn of the loop join this read
        self._wanted.update(keys)
        # One future each: a cancelled write must not cancel the read the others wait for.
        waiter: asyncio.Future[Versions] = loop.create_future()
        self._waiters.append(waiter)
        return await waiter

    def landed(self, keys: Collection[bytes]) -> None:
        """Commits that wrote `keys` are durable: versions read before now of those keys are out of date."""
        self._remember(keys)

    def forget(self) -> None:
        """Every version read before now is out of date (a failed commit may have reached the database)."""
        self._remember(None)

    def _remember(self, keys: Collection[bytes] | None) -> None:
        self._landings += 1
        self._recent.append((self._landings, keys))
        self._remembered_keys += len(keys or ())
        while len(self._recent) > REMEMBERED_LANDINGS or self._remembered_keys > REMEMBERED_KEYS:
            _, dropped = self._recent.popleft()
            self._remembered_keys -= len(dropped or ())

    def landed_since(self, key: bytes, landing: int) -> bool:
        if landing == self._landings:
            return False
        if landing < self._landings - len(self._recent):
            return True  # landings after it are no longer remembered
        for number, keys in reversed(self._recent):
            if number <= landing:
                return False
            if keys is None or key in keys:
                return True
        return False

    def _start(self) -> None:
        if self._reading is not None or not self._waiters:
            return
        keys, self._wanted = self._wanted, set()
        waiters, self._waiters = self._waiters, []
        self._reading = asyncio.create_task(self._read(keys, waiters), name="read-ahead")

    async def _read(self, keys: set[bytes], waiters: list[asyncio.Future[Versions]]) -> None:
        landing = self._landings
        try:
            versions = Versions(self, landing, keys, await self._store.latest(keys))
        except Exception:  # noqa: BLE001 - nothing is known: each write reads its keys itself, and meets the error
            versions = Versions(self, landing, (), {})
        except BaseException:
            for waiter in waiters:
                waiter.cancel()
            raise
        finally:
            self._reading = None
            self._start()  # the writes that asked meanwhile
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(versions)

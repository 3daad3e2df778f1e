"""One writer per database: the ownership lock every store takes for the life of the process.

Two kubefabric servers writing one database would hand out the same revisions, so a store refuses
to open a database another server holds, naming that server. Each database has its own kind of
lock (a file lock, a PostgreSQL advisory lock, a MySQL named lock); they share this seam, small
enough to become the election of a leader among replicas later: `acquire` (now or never),
`release`, `holder`, and `check`, which a store awaits before each write.

A lock held through a database connection dies with that connection (a database restart, a
network cut). Its loss is noticed at once when the database closes the connection (PostgreSQL), or
by the check every `RENEW_SECONDS`; from then on the store writes nothing until it holds the lock
again, which it takes back before the next write, and within `RENEW_SECONDS` anyway. If another
server took it meanwhile, this one has lost the database for good and refuses every write until it
is restarted: its revision counter would no longer be the database's. The gap: writes in the
moment between the loss and its notice still commit, which matters only if another server took the
lock within that moment (checking the lock inside every write transaction would close it, at the
price of a round trip per write).
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Protocol

from kubefabric.stores._base import StoreUnavailable

log = logging.getLogger(__name__)

# How often a lock held through a connection is checked, and, once lost, tried again.
RENEW_SECONDS = 0.25
UNLOCK_TIMEOUT = 2.0  # seconds a stopping server waits to give its lock back before it just disconnects


class OwnershipRefused(Exception):
    """Another server holds the database; the message names it."""


class OwnershipLock(Protocol):
    async def acquire(self) -> None:
        """Take the lock now, or raise OwnershipRefused naming its holder."""

    async def release(self) -> None: ...

    async def holder(self) -> str | None:
        """Who holds the lock, as `pid P on host H (serving A) since T`; None if nobody does."""

    async def check(self) -> None:
        """Raise StoreUnavailable unless this process holds the lock, taking a lost one back first."""


_STARTED = datetime.datetime.now(datetime.UTC)
_listen_address = ""


def announce_listen_address(address: str) -> None:
    """Name the etcd API address in this process's lock holder descriptions."""
    global _listen_address
    _listen_address = address


def this_process() -> str:
    """This process as lock holders name themselves: `pid P on host H (serving A)`."""
    serving = f" (serving {_listen_address})" if _listen_address else ""
    return f"pid {os.getpid()} on host {socket.gethostname()}{serving}"


def moment(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).replace(microsecond=0).isoformat()


def describe_this_process() -> str:
    return f"{this_process()} since {moment(_STARTED)}"


def refusal(database: str, holder: str | None) -> OwnershipRefused:
    held_by = holder or "a server that did not say who it is"
    return OwnershipRefused(
        f"{database} is in use by another kubefabric ({held_by}); only one server may write a database: "
        "stop that one first"
    )


class FileOwnershipLock:
    """An exclusive flock on a file beside the database (`state.db.lock`), which says who holds it.

    Not on the database file itself: SQLite closes its own descriptors of that file, and POSIX locks
    vanish with any of them. The kernel drops a flock when its process ends, even by kill -9.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self._descriptor: int | None = None

    async def acquire(self) -> None:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise refusal(str(self.database), await self.holder()) from None
        except BaseException:
            os.close(descriptor)
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (describe_this_process() + "\n").encode(), 0)
        self._descriptor = descriptor

    async def release(self) -> None:
        if self._descriptor is not None:
            os.ftruncate(self._descriptor, 0)
            os.close(self._descriptor)  # closing the only descriptor releases the flock
            self._descriptor = None

    async def holder(self) -> str | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    async def check(self) -> None:
        if self._descriptor is None:
            raise StoreUnavailable(f"this server does not hold {self.path}")


class ConnectionLock(abc.ABC):
    """A lock that lives as long as one dedicated database connection, taken back when that dies.

    Subclasses say how to take the lock on a new connection, whether that connection still holds
    it, who holds it, and how to drop the connection.
    """

    def __init__(self, database: str) -> None:
        self.database = database  # for messages: the redacted endpoint
        self._held = False
        self._lost_to: str | None = None  # who took the lock while this process had lost it
        self._renewing = asyncio.Lock()  # one attempt at a time to take a lost lock back
        self._keeper: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def _try_lock(self) -> bool:
        """Open the dedicated connection and take the lock on it; False, connection closed, if taken."""

    @abc.abstractmethod
    async def _still_held(self) -> bool:
        """Whether the dedicated connection is alive, and so still holds the lock."""

    @abc.abstractmethod
    async def _drop(self) -> None:
        """Close the dedicated connection, if any, which releases the lock."""

    @abc.abstractmethod
    async def _unlock(self) -> None:
        """Give the lock back on the dedicated connection, if any: a closed connection releases it only once
        the database has noticed, and a server started right after this one stopped would be refused meanwhile."""

    @abc.abstractmethod
    async def holder(self) -> str | None: ...

    async def acquire(self) -> None:
        if not await self._try_lock():
            raise refusal(self.database, await self.holder())
        self._held = True
        self._keeper = asyncio.create_task(self._keep(), name=f"ownership-{self.database}")

    async def release(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        self._held = False
        try:
            await asyncio.wait_for(self._unlock(), UNLOCK_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - the connection's end releases it all the same
            log.debug("%s: ownership lock left to the connection's end: %s", self.database, error)
        await self._drop()

    async def check(self) -> None:
        if not self._held and self._lost_to is None:
            await self._renew()  # StoreUnavailable while the database is away
        if self._lost_to is not None:
            raise StoreUnavailable(
                f"{self.database} was taken over by another kubefabric ({self._lost_to}) while this server's "
                "connection to it was lost; this server no longer writes it: restart it"
            )

    def mark_lost(self) -> None:
        """The dedicated connection is gone: the next write takes the lock back first."""
        self._held = False

    async def _renew(self) -> None:
        async with self._renewing:
            if self._held or self._lost_to is not None:
                return
            if await self._try_lock():
                self._held = True
                log.info("%s: ownership lock taken again", self.database)
                return
            self._lost_to = await self.holder() or "a server that did not say who it is"
            log.error("%s: another kubefabric took the database (%s); refusing writes", self.database, self._lost_to)

    async def _keep(self) -> None:
        """Check the lock now and then, and take it back once lost, even while nothing is written."""
        while self._lost_to is None:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                if self._held and not await self._still_held():
                    log.warning("%s: lost the ownership lock with its connection; taking it again", self.database)
                    self.mark_lost()
                if not self._held:
                    await self._renew()
            except Exception as error:  # noqa: BLE001 - the database is still away: try again later
                log.debug("%s: ownership lock not taken again yet: %s", self.database, error)

"""Leases: time-limited ids that keys attach to; when one ends, its keys are deleted.

Grants and revocations are durable. Expiry deadlines are not: after a restart every lease gets
its full TTL again, as etcd does when a member takes over.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field

from kubefabric.core._errors import LeaseExists, LeaseNotFound, LeaseTTLTooLarge
from kubefabric.core._mvcc import Commit, Mvcc, _Txn
from kubefabric.core._ops import DeleteOp
from kubefabric.stores import StoredState

log = logging.getLogger(__name__)

# etcd's bounds: the minimum follows from its default election timeout, the maximum is fixed.
MIN_TTL = 2
MAX_TTL = 9_000_000_000
EXPIRY_CHECK_SECONDS = 0.5


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int
    deadline: float
    keys: set[bytes] = field(default_factory=set)

    def remaining(self) -> int:
        return max(0, math.ceil(self.deadline - time.monotonic()))


class Lessor:
    def __init__(self, mvcc: Mvcc) -> None:
        self.mvcc = mvcc
        self._leases: dict[int, Lease] = {}
        mvcc.known_leases = self._leases
        mvcc.on_commit(self._track_keys)
        self._expiry: asyncio.Task[None] | None = None

    def restore(self, state: StoredState) -> None:
        deadline = time.monotonic()
        self._leases.update({id_: Lease(id_, ttl, deadline + ttl) for id_, ttl in state.leases.items()})
        for lease_id, key in state.leased_keys:
            if lease_id in self._leases:
                self._leases[lease_id].keys.add(key)
        self._expiry = asyncio.create_task(self._expire_forever(), name="lease-expiry")

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    def __len__(self) -> int:
        return len(self._leases)

    async def grant(self, lease_id: int, ttl: int) -> Lease:
        if ttl > MAX_TTL:
            raise LeaseTTLTooLarge()
        ttl = max(ttl, MIN_TTL)
        while lease_id == 0:
            lease_id = random.getrandbits(63)
            if lease_id in self._leases:
                lease_id = 0
        if lease_id in self._leases:
            raise LeaseExists()
        lease = Lease(lease_id, ttl, time.monotonic() + ttl)
        self._leases[lease_id] = lease
        try:
            await self.mvcc.record(Commit(None, granted_leases=[(lease_id, ttl)]))
        except BaseException:
            del self._leases[lease_id]
            raise
        return lease

    async def revoke(self, lease_id: int) -> int:
        """Delete the lease and every key attached to it, in one revision. Returns the revision."""
        if lease_id not in self._leases:
            raise LeaseNotFound()

        revoked: list[Lease] = []

        async def delete_attached(txn: _Txn) -> None:
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                raise LeaseNotFound()  # revoked by someone else meanwhile
            revoked.append(lease)
            for key in sorted(lease.keys):
                await txn.delete(DeleteOp(key))

        try:
            await self.mvcc.write(delete_attached, revoked_leases=(lease_id,))
        except Exception:
            for lease in revoked:  # nothing was persisted: the lease stays granted
                self._leases[lease.id] = lease
            raise
        return self.mvcc.revision

    def keep_alive(self, lease_id: int) -> int:
        """Restart the lease's TTL; 0 when there is no such lease (etcd's answer, not an error)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        lease.deadline = time.monotonic() + lease.ttl
        return lease.ttl

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def ids(self) -> list[int]:
        return list(self._leases)

    def ttls(self) -> dict[int, int]:
        """The TTL each lease was granted with."""
        return {lease.id: lease.ttl for lease in self._leases.values()}

    def _track_keys(self, commit: Commit) -> None:
        for change in commit.changes:
            prev, kv = change.prev, change.kv
            if prev is not None and prev.lease and prev.lease in self._leases:
                self._leases[prev.lease].keys.discard(prev.key)
            if kv.lease and kv.lease in self._leases:
                self._leases[kv.lease].keys.add(kv.key)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = time.monotonic()
            for lease in [lease for lease in self._leases.values() if lease.deadline <= now]:
                try:
                    await self.revoke(lease.id)
                    log.info("lease %x expired; deleted %d keys", lease.id, len(lease.keys))
                except LeaseNotFound:
                    pass
                except Exception as error:  # noqa: BLE001 - retried on the next tick
                    log.warning("expiring lease %x failed, will retry: %s", lease.id, error)

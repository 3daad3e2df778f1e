"""Reading ahead of the write lock (core/_read_ahead.py), on a real SQLite store.

What a read ahead returns must never be taken for a key's latest version once a commit of that key
has landed since the read began, nor once too many commits landed to tell, nor after a failed commit;
the reads of writes asking together go in one read; a write that gives up waiting does not take the
others' read with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from kubefabric.core._read_ahead import REMEMBERED_KEYS, REMEMBERED_LANDINGS, ReadAhead
from kubefabric.stores import Change, KeyValue, WriteBatch
from kubefabric.stores._sqlite import SqliteStore

A, B, C = b"/registry/a", b"/registry/b", b"/registry/c"


class CountingStore(SqliteStore):
    """A real SQLite store that counts the reads of `latest` and the keys each asked for."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.reads: list[set[bytes]] = []

    async def latest(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        self.reads.append(set(keys))
        return await super().latest(keys)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(f"sqlite://{tmp_path}/state.db")
    await store.open()
    batch = WriteBatch(2)
    batch.changes = [
        Change(KeyValue(A, 1, 1, 1, b"a", 0), 0, None),
        Change(KeyValue(B, 2, 2, 1, b"b", 0), 0, None),
    ]
    await store.write(batch)
    yield store
    await store.close()


async def test_a_read_knows_the_versions_until_a_commit_of_their_key_lands(store: CountingStore) -> None:
    read_ahead = ReadAhead(store)
    versions = await read_ahead.read([A, B, C])
    assert versions.get(A) == (True, KeyValue(A, 1, 1, 1, b"a", 0))
    assert versions.get(C) == (True, None)  # known to have no version
    assert versions.get(b"/registry/not-asked") == (False, None)
    read_ahead.landed({A})
    assert versions.get(A) == (False, None)
    assert versions.get(B) == (True, KeyValue(B, 2, 2, 1, b"b", 0))
    # A read that begins after the landing knows A again.
    assert (await read_ahead.read([A])).get(A)[0]


async def test_too_many_landings_since_a_read_make_it_unknown(store: CountingStore) -> None:
    read_ahead = ReadAhead(store)
    versions = await read_ahead.read([B])
    for _ in range(REMEMBERED_LANDINGS - 1):
        read_ahead.landed({C})
    assert versions.get(B)[0]
    read_ahead.landed({C})
    read_ahead.landed({C})  # the landings since the read are no longer all remembered
    assert versions.get(B) == (False, None)


async def test_landings_of_more_keys_than_are_remembered_make_a_read_unknown(store: CountingStore) -> None:
    """A bulk load lands thousands of keys at a time: only so many are kept, and what they leave out
    is not trusted."""
    read_ahead = ReadAhead(store)
    versions = await read_ahead.read([B])
    read_ahead.landed({b"/registry/other-%d" % number for number in range(REMEMBERED_KEYS)})
    assert versions.get(B)[0]
    read_ahead.landed({C})
    assert versions.get(B) == (False, None)


async def test_a_failed_commit_makes_every_earlier_read_unknown(store: CountingStore) -> None:
    read_ahead = ReadAhead(store)
    versions = await read_ahead.read([A, B])
    read_ahead.forget()
    assert versions.get(A) == (False, None) and versions.get(B) == (False, None)


async def test_writes_asking_together_share_one_read(store: CountingStore) -> None:
    read_ahead = ReadAhead(store)
    first, second, third = await asyncio.gather(read_ahead.read([A]), read_ahead.read([B]), read_ahead.read([A, C]))
    assert store.reads == [{A, B, C}]
    assert first.get(A)[0] and second.get(B)[0] and third.get(C) == (True, None)


async def test_a_write_that_stops_waiting_leaves_the_read_to_the_others(store: CountingStore) -> None:
    read_ahead = ReadAhead(store)
    gone = asyncio.create_task(read_ahead.read([A]))
    staying = asyncio.create_task(read_ahead.read([B]))
    await asyncio.sleep(0)
    gone.cancel()
    versions = await staying
    assert versions.get(B) == (True, KeyValue(B, 2, 2, 1, b"b", 0))
    assert gone.cancelled()

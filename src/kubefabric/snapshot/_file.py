"""Snapshot files as `etcdctl snapshot save` writes them: etcd's database, then its sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kubefabric.snapshot._bolt import BoltError, is_bolt
from kubefabric.snapshot._etcd_db import read_etcd_db
from kubefabric.snapshot._model import Snapshot

HASH_SIZE = hashlib.sha256().digest_size


class SnapshotError(Exception):
    """The file is not a usable snapshot; the message names the file and the reason."""


def has_hash(size: int) -> bool:
    """etcd's test: a database is whole pages, so a multiple of 512 bytes; 32 more are the sha256."""
    return size % 512 == HASH_SIZE


def read_snapshot(path: str, skip_hash_check: bool = False) -> Snapshot:
    """Read and check a snapshot file (or, with `skip_hash_check`, also an etcd data directory's
    `member/snap/db`, which has no hash)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SnapshotError(f"{path}: {error.strerror}") from None
    if not is_bolt(data):
        raise SnapshotError(f"{path}: not an etcd snapshot: it does not start with a bbolt database")
    database = memoryview(data)
    if has_hash(len(data)):
        database, expected = database[:-HASH_SIZE], data[-HASH_SIZE:]
        actual = hashlib.sha256(database).digest()
        if actual != expected and not skip_hash_check:
            raise SnapshotError(
                f"{path}: sha256 mismatch, the file is damaged or incomplete "
                f"(the snapshot says {expected.hex()}, its contents hash to {actual.hex()})"
            )
    elif not skip_hash_check:
        raise SnapshotError(
            f"{path}: no sha256 at its end ({len(data)} bytes): an incomplete snapshot, or an etcd "
            "database file (member/snap/db), which --skip-hash-check reads"
        )
    try:
        return read_etcd_db(database)
    except BoltError as error:
        raise SnapshotError(f"{path}: not an etcd snapshot: {error}") from None

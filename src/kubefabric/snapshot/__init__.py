"""Snapshots in etcd's own format: a bbolt database with etcd's buckets, then its sha256.

`etcdctl snapshot save` against kubefabric gets such a file, `etcdctl snapshot restore` turns it
into a real etcd data directory, and `kubefabric snapshot restore` loads it, or a real etcd's
snapshot, into any store with its revisions (core/_restore.py: loading is the core's business, as
the selector index goes with it).
"""

from kubefabric.snapshot._bolt import BoltError
from kubefabric.snapshot._etcd_db import write_etcd_db
from kubefabric.snapshot._file import HASH_SIZE, SnapshotError, read_snapshot
from kubefabric.snapshot._model import Snapshot, Version

__all__ = [
    "HASH_SIZE",
    "BoltError",
    "Snapshot",
    "SnapshotError",
    "Version",
    "read_snapshot",
    "write_etcd_db",
]

"""etcd's database layout (the mvcc backend of etcd 3.4 and 3.5) over bbolt.

- bucket "key": one item per key version, keyed by its revision: 8-byte big-endian main revision,
  "_", 8-byte big-endian sub revision (the position within its transaction), plus a trailing "t"
  for a deletion; the value is the marshaled mvccpb.KeyValue (a deletion carries only the key).
- bucket "meta": "consistent_index" (8-byte big-endian raft index), "scheduledCompactRev" and
  "finishedCompactRev" (revisions, as above, sub 0).
- bucket "lease": 8-byte big-endian lease id -> marshaled leasepb.Lease{ID, TTL}.
- the membership, alarm and auth buckets etcd 3.4 creates at start-up, here empty: a restored
  snapshot joins a new cluster (`etcdctl snapshot restore` rewrites the membership), has no
  alarms and auth off.

etcd's revision is the highest main revision in "key", or the compaction point if that is higher.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError

from kubefabric.etcdpb import kv_pb2, lease_pb2
from kubefabric.snapshot._bolt import BoltError, BoltReader, write_bolt
from kubefabric.snapshot._model import Snapshot, Version
from kubefabric.stores import KeyValue

KEY_BUCKET = b"key"
META_BUCKET = b"meta"
LEASE_BUCKET = b"lease"
EMPTY_BUCKETS = (b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"members", b"members_removed")

REVISION = struct.Struct(">Qcq")  # main, "_", sub
TOMBSTONE = b"t"
LEASE_ID = struct.Struct(">q")
CONSISTENT_INDEX = struct.Struct(">Q")


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    return REVISION.pack(main, b"_", sub) + (TOMBSTONE if tombstone else b"")


def write_etcd_db(file: BinaryIO, snapshot: Snapshot) -> None:
    """The snapshot as etcd's own database file."""
    meta = {b"consistent_index": CONSISTENT_INDEX.pack(snapshot.revision)}
    if snapshot.compact_revision > 0:
        mark = revision_key(snapshot.compact_revision, 0)
        meta[b"scheduledCompactRev"] = meta[b"finishedCompactRev"] = mark
    leases = sorted(
        (LEASE_ID.pack(lease_id), lease_pb2.Lease(ID=lease_id, TTL=ttl).SerializeToString())
        for lease_id, ttl in snapshot.leases.items()
    )
    buckets = {name: iter(()) for name in EMPTY_BUCKETS} | {
        KEY_BUCKET: _key_items(snapshot.versions),
        META_BUCKET: iter(sorted(meta.items())),
        LEASE_BUCKET: iter(leases),
    }
    write_bolt(file, buckets)


def _key_items(versions: list[Version]) -> Iterator[tuple[bytes, bytes]]:
    for kv, sub in versions:
        if kv.version == 0:
            yield revision_key(kv.mod_revision, sub, tombstone=True), kv_pb2.KeyValue(key=kv.key).SerializeToString()
            continue
        stored = kv_pb2.KeyValue(
            key=kv.key,
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            version=kv.version,
            value=kv.value,
            lease=kv.lease,
        )
        yield revision_key(kv.mod_revision, sub), stored.SerializeToString()


def read_etcd_db(data: memoryview) -> Snapshot:
    """The contents of an etcd database file; BoltError if it is not one."""
    reader = BoltReader(data)
    if KEY_BUCKET not in reader.buckets():
        raise BoltError('a bbolt database without etcd\'s "key" bucket')
    versions = [_version(key, value) for key, value in reader.bucket(KEY_BUCKET)]
    meta = dict(reader.bucket(META_BUCKET))
    # A scheduled compaction that did not finish is finished by etcd when it starts: so here too.
    mark = meta.get(b"scheduledCompactRev") or meta.get(b"finishedCompactRev")
    compact_revision = REVISION.unpack(mark[: REVISION.size])[0] if mark else -1
    leases = {}
    for _, value in reader.bucket(LEASE_BUCKET):
        lease = lease_pb2.Lease.FromString(value)
        leases[lease.ID] = lease.TTL
    return Snapshot(versions, leases, compact_revision)


def _version(key: bytes, value: bytes) -> Version:
    if len(key) not in (REVISION.size, REVISION.size + 1) or key[8:9] != b"_":
        raise BoltError(f'item {key!r} of the "key" bucket is not a revision')
    main, _, sub = REVISION.unpack(key[: REVISION.size])
    try:
        stored = kv_pb2.KeyValue.FromString(value)
    except DecodeError as error:
        raise BoltError(f"revision {main}.{sub} does not hold a key-value: {error}") from None
    if key[REVISION.size :] == TOMBSTONE:
        return Version(KeyValue(stored.key, 0, main, 0, b"", 0), sub)
    kv = KeyValue(stored.key, stored.create_revision, main, stored.version, stored.value, stored.lease)
    return Version(kv, sub)

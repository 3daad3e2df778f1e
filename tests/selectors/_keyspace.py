"""What the tests wrote, revision by revision, and what a selecting read must answer at any of those revisions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, prefix_end
from tests.selectors._reference import Selectable, Selector

REGISTRY = b"/registry/"


@dataclass(frozen=True)
class Stored:
    """One version of a key, and what selectors see of it (None: not a Kubernetes object)."""

    key: bytes
    value: bytes
    selectable: Selectable | None
    create_revision: int
    mod_revision: int
    version: int

    def as_tuple(self, keys_only: bool = False) -> tuple[bytes, bytes, int, int, int]:
        value = b"" if keys_only else self.value
        return (self.key, value, self.create_revision, self.mod_revision, self.version)


def kv_tuple(kv: kv_pb2.KeyValue) -> tuple[bytes, bytes, int, int, int]:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


class Keyspace:
    """Writes through a client, recording each one with the revision the server gave it."""

    def __init__(self, client: Etcd) -> None:
        self.client = client
        self.changes: list[tuple[int, bytes, Stored | None]] = []  # None: deleted
        self.floor = 0  # everything under /registry/ was deleted at this revision

    def wipe(self) -> None:
        """Start from an empty /registry/: earlier tests' keys are deleted, their history forgotten."""
        # Key by key: multi:// refuses one delete spanning several backends.
        for kv in self.client.get(REGISTRY, prefix_end(REGISTRY), keys_only=True).kvs:
            self.client.delete(kv.key)
        self.floor = self.client.revision()
        self.changes = []

    @property
    def revision(self) -> int:
        return self.changes[-1][0] if self.changes else self.floor

    def revision_of(self, change: int) -> int:
        """The revision after the first `change` changes of this keyspace (0: the wipe's)."""
        return self.changes[change - 1][0] if change else self.floor

    def put(self, key: bytes, value: bytes, selectable: Selectable | None) -> None:
        revision = int(self.client.put(key, value).header.revision)
        previous = self.at(self.revision).get(key)
        created = previous.create_revision if previous else revision
        version = previous.version + 1 if previous else 1
        self.changes.append((revision, key, Stored(key, value, selectable, created, revision, version)))

    def delete(self, key: bytes) -> None:
        response = self.client.delete(key)
        assert response.deleted == 1, f"{key!r} was not there to delete"
        self.changes.append((int(response.header.revision), key, None))

    def at(self, revision: int) -> dict[bytes, Stored]:
        """Every live key at `revision` (not before the last wipe)."""
        assert revision >= self.floor
        live: dict[bytes, Stored] = {}
        for changed_at, key, stored in self.changes:
            if changed_at > revision:
                break
            if stored is None:
                live.pop(key, None)
            else:
                live[key] = stored
        return live

    def selected(self, selector: Selector, revision: int, start: bytes, end: bytes) -> list[Stored]:
        """What a read of [start, end) at `revision` must return; end b"" is the single key `start`."""
        live = self.at(revision)
        return [
            stored
            for key, stored in sorted(live.items())
            if (key == start if not end else start <= key < end) and selector.matches(stored.selectable)
        ]


def select(
    client: Etcd, label_selector: str, field_selector: str, start: bytes, end: bytes = b"", **options: object
) -> rpc_pb2.RangeResponse:
    return client.get(start, end, labelSelector=label_selector, fieldSelector=field_selector, **options)


def keys(stored: Iterable[Stored]) -> list[bytes]:
    return [s.key for s in stored]

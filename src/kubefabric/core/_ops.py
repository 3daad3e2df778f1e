"""The operations the core executes and what they return, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from kubefabric.objects import Selector
from kubefabric.stores import KeyValue


class SortOrder(IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


def key_range_end(range_end: bytes) -> bytes | None:
    """etcd's range_end convention: empty = just the key (None here), b"\\0" = no upper bound (b"")."""
    if not range_end:
        return None
    if range_end == b"\0":
        return b""
    return range_end


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    if end is None:
        return key == start
    return key >= start and (not end or key < end)


@dataclass(slots=True)
class RangeOp:
    key: bytes
    end: bytes | None = None
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0
    selector: Selector | None = None  # only the keys whose objects match


@dataclass(frozen=True, slots=True)
class Edit:
    """A write decided on one version of a key: made only if the key still holds that version."""

    key: bytes
    mod_revision: int
    value: bytes | None  # the new value, None to delete the key


@dataclass(slots=True)
class PutOp:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(slots=True)
class DeleteOp:
    key: bytes
    end: bytes | None = None
    prev_kv: bool = False


@dataclass(slots=True)
class Compare:
    key: bytes
    end: bytes | None
    target: CompareTarget
    result: CompareResult
    operand: int | bytes  # a revision, version or lease for numeric targets, bytes for VALUE


@dataclass(slots=True)
class TxnOp:
    compare: list[Compare] = field(default_factory=list)
    success: list[Op] = field(default_factory=list)
    failure: list[Op] = field(default_factory=list)


Op = RangeOp | PutOp | DeleteOp | TxnOp


@dataclass(slots=True)
class RangeResult:
    revision: int
    kvs: list[KeyValue]
    count: int
    more: bool


@dataclass(slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None


@dataclass(slots=True)
class DeleteResult:
    revision: int
    deleted: int
    prev_kvs: list[KeyValue]


@dataclass(slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    responses: list[OpResult]


OpResult = RangeResult | PutResult | DeleteResult | TxnResult


def is_read_only(txn: TxnOp) -> bool:
    """True when no branch of the txn, nested ones included, writes anything."""
    return all(
        isinstance(op, RangeOp) or (isinstance(op, TxnOp) and is_read_only(op)) for op in (*txn.success, *txn.failure)
    )

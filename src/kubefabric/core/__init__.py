"""The core: the revision clock, MVCC semantics, watchers and leases, over any Store."""

from kubefabric.core._core import Core
from kubefabric.core._errors import EtcdError, KeyNotFound, RequestTooLarge, Unavailable
from kubefabric.core._lease import Lease, Lessor
from kubefabric.core._mvcc import Mvcc
from kubefabric.core._ops import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    DeleteResult,
    Op,
    OpResult,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnOp,
    TxnResult,
    key_range_end,
)
from kubefabric.core._watch import WatchBatch, Watcher, WatchHub

__all__ = [
    "Compare",
    "CompareResult",
    "CompareTarget",
    "Core",
    "DeleteOp",
    "DeleteResult",
    "EtcdError",
    "KeyNotFound",
    "Lease",
    "Lessor",
    "Mvcc",
    "Op",
    "OpResult",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "RequestTooLarge",
    "SortOrder",
    "SortTarget",
    "TxnOp",
    "TxnResult",
    "Unavailable",
    "WatchBatch",
    "WatchHub",
    "Watcher",
    "key_range_end",
]

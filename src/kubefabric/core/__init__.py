"""The core: the revision clock, MVCC semantics, watchers and leases, over any Store."""

from kubefabric.core._core import Core
from kubefabric.core._errors import EtcdError, KeyNotFound, RequestTooLarge
from kubefabric.core._lease import Lease, Lessor
from kubefabric.core._migration import migrate
from kubefabric.core._mvcc import Mvcc
from kubefabric.core._objects import InvalidSelector, request_selector
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
from kubefabric.core._placement import Moves
from kubefabric.core._restore import TargetNotEmpty, restore_snapshot
from kubefabric.core._routed import RoutedStore
from kubefabric.core._topology import Backend, Topology, TopologyError
from kubefabric.core._watch import WatchBatch, Watcher, WatchHub
from kubefabric.stores import Change, KeyValue, StoreUnavailable

__all__ = [
    "Backend",
    "Change",
    "KeyValue",
    "Compare",
    "CompareResult",
    "CompareTarget",
    "Core",
    "DeleteOp",
    "DeleteResult",
    "EtcdError",
    "InvalidSelector",
    "KeyNotFound",
    "Lease",
    "Lessor",
    "Moves",
    "Mvcc",
    "Op",
    "OpResult",
    "PutOp",
    "PutResult",
    "RangeOp",
    "RangeResult",
    "RequestTooLarge",
    "RoutedStore",
    "SortOrder",
    "SortTarget",
    "StoreUnavailable",
    "TargetNotEmpty",
    "Topology",
    "TopologyError",
    "TxnOp",
    "TxnResult",
    "WatchBatch",
    "WatchHub",
    "Watcher",
    "key_range_end",
    "restore_snapshot",
    "migrate",
    "request_selector",
]

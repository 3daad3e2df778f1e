"""Request checks etcd makes before executing anything, with the same outcomes."""

from __future__ import annotations

from kubefabric.core._errors import DuplicateKey, EmptyKey, LeaseProvided, TooManyOps, ValueProvided
from kubefabric.core._ops import DeleteOp, Op, PutOp, RangeOp, TxnOp

MAX_TXN_OPS = 128


def check_put(op: PutOp) -> None:
    if not op.key:
        raise EmptyKey()
    if op.ignore_value and op.value:
        raise ValueProvided()
    if op.ignore_lease and op.lease:
        raise LeaseProvided()


def check_key(op: RangeOp | DeleteOp) -> None:
    if not op.key:
        raise EmptyKey()


def check_txn(txn: TxnOp, max_ops: int = MAX_TXN_OPS) -> None:
    """Op count, empty keys and overlapping writes, in etcd's order."""
    _check_shape(txn, max_ops)
    _puts_and_deletes(txn.success)
    _puts_and_deletes(txn.failure)


def _check_shape(txn: TxnOp, max_ops: int) -> None:
    widest = max(len(txn.compare), len(txn.success), len(txn.failure))
    if widest > max_ops:
        raise TooManyOps()
    if any(not compare.key for compare in txn.compare):
        raise EmptyKey()
    for op in (*txn.success, *txn.failure):
        _check_op(op, max_ops - widest)


def _check_op(op: Op, max_ops: int) -> None:
    if isinstance(op, PutOp):
        check_put(op)
    elif isinstance(op, TxnOp):
        _check_shape(op, max_ops)
    else:
        check_key(op)


# A deleted interval: (start, end) with end None for a single key. etcd compares interval ends as
# raw strings where b"" is infinity, so a delete whose range_end is b"\0" overlaps nothing.
Interval = tuple[bytes, bytes | None]


def _hits(intervals: list[Interval], key: bytes) -> bool:
    for start, end in intervals:
        if end is None:
            if key == start:
                return True
        elif end == b"":
            continue  # raw range_end b"\0": an interval [start, "\0") that holds no key
        elif start <= key < end:
            return True
    return False


def _puts_and_deletes(ops: list[Op]) -> tuple[set[bytes], list[Interval]]:
    """etcd's checkIntervals: no key may be put twice, or put and deleted, on one path."""
    deletes: list[Interval] = [(op.key, op.end) for op in ops if isinstance(op, DeleteOp)]
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, TxnOp):
            continue
        puts_then, deletes_then = _puts_and_deletes(op.success)
        puts_else, deletes_else = _puts_and_deletes(op.failure)
        for key in puts_then:
            if key in puts or _hits(deletes, key):
                raise DuplicateKey()
            puts.add(key)
        for key in puts_else:
            # the same key in both branches is fine: only one of them runs
            if (key in puts and key not in puts_then) or _hits(deletes, key):
                raise DuplicateKey()
            puts.add(key)
        deletes.extend(deletes_then)
        deletes.extend(deletes_else)
    for op in ops:
        if isinstance(op, PutOp):
            if op.key in puts or _hits(deletes, op.key):
                raise DuplicateKey()
            puts.add(op.key)
    return puts, deletes

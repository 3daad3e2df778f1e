"""Wire messages to core operations and core results back to wire messages."""

from __future__ import annotations

from collections.abc import Iterable

from kubefabric.core import (
    Change,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    DeleteResult,
    KeyValue,
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
    request_selector,
)
from kubefabric.etcdpb import kv_pb2, rpc_pb2
from kubefabric.objects import varint

Header = rpc_pb2.ResponseHeader


def kv_message(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


def event_message(change: Change, with_prev: bool) -> kv_pb2.Event:
    if change.is_delete:
        event = kv_pb2.Event(
            type=kv_pb2.Event.DELETE,
            kv=kv_pb2.KeyValue(key=change.kv.key, mod_revision=change.kv.mod_revision),
        )
    else:
        event = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_message(change.kv))
    if with_prev and change.prev is not None:
        event.prev_kv.CopyFrom(kv_message(change.prev))
    return event


def range_op(request: rpc_pb2.RangeRequest) -> RangeOp:
    return RangeOp(
        key=request.key,
        end=key_range_end(request.range_end),
        limit=request.limit,
        revision=request.revision,
        sort_order=SortOrder(request.sort_order),
        sort_target=SortTarget(request.sort_target),
        serializable=request.serializable,
        keys_only=request.keys_only,
        count_only=request.count_only,
        min_mod_revision=request.min_mod_revision,
        max_mod_revision=request.max_mod_revision,
        min_create_revision=request.min_create_revision,
        max_create_revision=request.max_create_revision,
        selector=request_selector(request.labelSelector, request.fieldSelector),
    )


def put_op(request: rpc_pb2.PutRequest) -> PutOp:
    return PutOp(
        key=request.key,
        value=request.value,
        lease=request.lease,
        prev_kv=request.prev_kv,
        ignore_value=request.ignore_value,
        ignore_lease=request.ignore_lease,
    )


def delete_op(request: rpc_pb2.DeleteRangeRequest) -> DeleteOp:
    return DeleteOp(key=request.key, end=key_range_end(request.range_end), prev_kv=request.prev_kv)


def _compare(compare: rpc_pb2.Compare) -> Compare:
    operand: int | bytes
    union = compare.WhichOneof("target_union")
    if union is None:
        operand = 0
    else:
        operand = getattr(compare, union)
    return Compare(
        key=compare.key,
        end=key_range_end(compare.range_end),
        target=CompareTarget(compare.target),
        result=CompareResult(compare.result),
        operand=operand,
    )


def _request_op(request: rpc_pb2.RequestOp) -> Op | None:
    kind = request.WhichOneof("request")
    if kind == "request_range":
        return range_op(request.request_range)
    if kind == "request_put":
        return put_op(request.request_put)
    if kind == "request_delete_range":
        return delete_op(request.request_delete_range)
    if kind == "request_txn":
        return txn_op(request.request_txn)
    return None


class EmptyRequestOp(Exception):
    """A RequestOp with nothing set; etcd answers it with "key not found"."""


def txn_op(request: rpc_pb2.TxnRequest) -> TxnOp:
    def ops(requests: Iterable[rpc_pb2.RequestOp]) -> list[Op]:
        converted = [_request_op(op) for op in requests]
        present = [op for op in converted if op is not None]
        if len(present) != len(converted):
            raise EmptyRequestOp()
        return present

    return TxnOp([_compare(c) for c in request.compare], ops(request.success), ops(request.failure))


def range_response(result: RangeResult, header: Header) -> rpc_pb2.RangeResponse:
    header.revision = result.revision
    return rpc_pb2.RangeResponse(
        header=header, kvs=[kv_message(kv) for kv in result.kvs], count=result.count, more=result.more
    )


def range_response_bytes(result: RangeResult, header: Header) -> bytes:
    """range_response(result, header).SerializeToString(), byte for byte, written directly.

    A page of a list holds hundreds of keys: a message object for each, then serializing them all,
    costs about a third more CPU than writing their bytes.
    """
    header.revision = result.revision
    # The fields in number order, as protobuf writes them: header (1), kvs (2), then more (3) and count (4).
    return b"".join(
        [
            rpc_pb2.RangeResponse(header=header).SerializeToString(),
            *_key_value_fields(result.kvs),
            rpc_pb2.RangeResponse(count=result.count, more=result.more).SerializeToString(),
        ]
    )


def _key_value_fields(kvs: list[KeyValue]) -> list[bytes]:
    """The pieces of each key-value as a `kvs` field (number 2) of RangeResponse, zero fields left out as
    proto3 does: key (1), create_revision (2), mod_revision (3), version (4), value (5), lease (6)."""
    parts: list[bytes] = []
    extend = parts.extend
    for key, create_revision, mod_revision, version, value, lease in kvs:
        if key and create_revision and mod_revision and version and value:  # every live key with a value
            head = b"".join(
                (
                    b"\x0a",
                    varint(len(key)),
                    key,
                    b"\x10",
                    varint(create_revision),
                    b"\x18",
                    varint(mod_revision),
                    b"\x20",
                    varint(version),
                    b"\x2a",
                    varint(len(value)),
                )
            )
        else:
            head = b"\x0a" + varint(len(key)) + key if key else b""
            if create_revision:
                head += b"\x10" + varint(create_revision)
            if mod_revision:
                head += b"\x18" + varint(mod_revision)
            if version:
                head += b"\x20" + varint(version)
            if value:
                head += b"\x2a" + varint(len(value))
        if lease:
            tail = b"\x30" + varint(lease)
            extend((b"\x12", varint(len(head) + len(value) + len(tail)), head, value, tail))
        else:
            extend((b"\x12", varint(len(head) + len(value)), head, value))
    return parts


def put_response(result: PutResult, header: Header) -> rpc_pb2.PutResponse:
    header.revision = result.revision
    response = rpc_pb2.PutResponse(header=header)
    if result.prev_kv is not None:
        response.prev_kv.CopyFrom(kv_message(result.prev_kv))
    return response


def delete_response(result: DeleteResult, header: Header) -> rpc_pb2.DeleteRangeResponse:
    header.revision = result.revision
    return rpc_pb2.DeleteRangeResponse(
        header=header, deleted=result.deleted, prev_kvs=[kv_message(kv) for kv in result.prev_kvs]
    )


def txn_response(result: TxnResult, header: Header) -> rpc_pb2.TxnResponse:
    # etcd fills cluster and member only in the outer header; nested ones carry just the revision.
    def op_response(op: OpResult) -> rpc_pb2.ResponseOp:
        if isinstance(op, RangeResult):
            return rpc_pb2.ResponseOp(response_range=range_response(op, Header()))
        if isinstance(op, PutResult):
            return rpc_pb2.ResponseOp(response_put=put_response(op, Header()))
        if isinstance(op, DeleteResult):
            return rpc_pb2.ResponseOp(response_delete_range=delete_response(op, Header()))
        nested = txn_response(op, Header())
        nested.header.revision = 0  # etcd sets a revision only on the outermost txn's header
        return rpc_pb2.ResponseOp(response_txn=nested)

    header.revision = result.revision
    return rpc_pb2.TxnResponse(
        header=header, succeeded=result.succeeded, responses=[op_response(op) for op in result.responses]
    )

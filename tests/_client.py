"""A thin synchronous client over the generated etcd v3 stubs, for readable tests."""

from __future__ import annotations

from types import TracebackType

import grpc

from kubefabric.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

Compare = rpc_pb2.Compare
RequestOp = rpc_pb2.RequestOp


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def put_op(key: bytes, value: bytes = b"", **kwargs: object) -> rpc_pb2.RequestOp:
    return RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **kwargs))


def range_op(key: bytes, range_end: bytes = b"", **kwargs: object) -> rpc_pb2.RequestOp:
    return RequestOp(request_range=rpc_pb2.RangeRequest(key=key, range_end=range_end, **kwargs))


def delete_op(key: bytes, range_end: bytes = b"", **kwargs: object) -> rpc_pb2.RequestOp:
    return RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **kwargs))


def mod_revision_is(key: bytes, revision: int, result: int = Compare.EQUAL) -> rpc_pb2.Compare:
    return Compare(key=key, target=Compare.MOD, result=result, mod_revision=revision)


class Etcd:
    """Stubs for every etcd v3 service on one channel, plus shorthands for the common calls."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        self.channel.close()

    def put(self, key: bytes, value: bytes = b"", **kwargs: object) -> rpc_pb2.PutResponse:
        return self.kv.Put(rpc_pb2.PutRequest(key=key, value=value, **kwargs), timeout=10)

    def get(self, key: bytes, range_end: bytes = b"", **kwargs: object) -> rpc_pb2.RangeResponse:
        return self.kv.Range(rpc_pb2.RangeRequest(key=key, range_end=range_end, **kwargs), timeout=10)

    def get_prefix(self, prefix: bytes, **kwargs: object) -> rpc_pb2.RangeResponse:
        return self.get(prefix, prefix_end(prefix), **kwargs)

    def delete(self, key: bytes, range_end: bytes = b"", **kwargs: object) -> rpc_pb2.DeleteRangeResponse:
        return self.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **kwargs), timeout=10)

    def txn(
        self,
        compare: list[rpc_pb2.Compare],
        success: list[rpc_pb2.RequestOp],
        failure: list[rpc_pb2.RequestOp] | None = None,
    ) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure or [])
        return self.kv.Txn(request, timeout=10)

    def compact(self, revision: int, physical: bool = False) -> rpc_pb2.CompactionResponse:
        return self.kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=physical), timeout=30)

    def revision(self) -> int:
        return int(self.get(b"\0", count_only=True).header.revision)

    def status(self) -> rpc_pb2.StatusResponse:
        return self.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)


def kv_tuple(kv: kv_pb2.KeyValue) -> tuple[bytes, bytes, int, int, int, int]:
    """The fields of a KeyValue that must agree between etcd and kubefabric."""
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)

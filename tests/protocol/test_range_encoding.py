"""RangeResponse bytes written directly must be protobuf's own serialization of the same message, byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kubefabric.core import RangeResult
from kubefabric.etcdpb import rpc_pb2
from kubefabric.protocol._convert import range_response, range_response_bytes
from kubefabric.stores import KeyValue

# Each side of every varint length, where an encoder is most likely to slip, and anything else.
VARINT_EDGES = [edge for groups in range(1, 9) for edge in (2 ** (7 * groups) - 1, 2 ** (7 * groups))]
INT64 = st.one_of(
    st.sampled_from([0, -1, -(2**63), 2**63 - 1, *VARINT_EDGES]),
    st.integers(-(2**63), 2**63 - 1),
)
UINT64 = st.integers(0, 2**64 - 1)
SIZES = st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21])

key_values = st.builds(
    KeyValue,
    key=st.one_of(st.binary(max_size=300), SIZES.map(lambda size: b"k" * size)),
    create_revision=INT64,
    mod_revision=INT64,
    version=INT64,
    value=st.one_of(st.binary(max_size=300), SIZES.map(lambda size: b"v" * size)),
    lease=INT64,
)


@settings(max_examples=300, deadline=None)
@given(
    kvs=st.lists(key_values, max_size=5),
    revision=st.integers(0, 2**63 - 1),
    count=INT64,
    more=st.booleans(),
    cluster_id=UINT64,
    member_id=UINT64,
)
def test_range_response_bytes_are_protobufs_serialization(
    kvs: list[KeyValue], revision: int, count: int, more: bool, cluster_id: int, member_id: int
) -> None:
    result = RangeResult(revision, kvs, count, more)

    def header() -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(cluster_id=cluster_id, member_id=member_id, raft_term=1)

    written = range_response_bytes(result, header())
    assert written == range_response(result, header()).SerializeToString()
    assert rpc_pb2.RangeResponse.FromString(written) == range_response(result, header())

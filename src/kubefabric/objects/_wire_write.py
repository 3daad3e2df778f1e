"""The writing half of the minimal protobuf wire format in _wire: the few encodings metadata edits need."""

from __future__ import annotations

_UINT64 = (1 << 64) - 1


def varint(number: int) -> bytes:
    """A base-128 varint; negative numbers as their 64-bit two's complement, as protobuf writes int64."""
    number &= _UINT64
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    """A whole varint field (wire type 0): int64, int32, bool."""
    return varint(number << 3) + varint(value)


def bytes_field(number: int, payload: bytes) -> bytes:
    """A whole length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload

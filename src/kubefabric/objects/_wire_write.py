"""The writing half of the minimal protobuf wire format in _wire: the few encodings metadata edits need."""

from __future__ import annotations

_UINT64 = (1 << 64) - 1
# The varint of each number below 2**14, and the low 14 bits of a larger one (two groups, both marked
# as continued).
_SHORT_VARINTS = [bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7)) for n in range(0x4000)]
_CONTINUED_PAIRS = [bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(0x4000)]


def varint(number: int) -> bytes:
    """A base-128 varint; negative numbers as their 64-bit two's complement, as protobuf writes int64."""
    # Range responses write several per key: the 7-bit groups of most numbers come from tables, 14 bits at a time.
    if 0 <= number < 0x4000:
        return _SHORT_VARINTS[number]
    if 0 <= number < 0x1000_0000:
        return _CONTINUED_PAIRS[number & 0x3FFF] + _SHORT_VARINTS[number >> 14]
    if 0 <= number < 0x400_0000_0000:
        return (
            _CONTINUED_PAIRS[number & 0x3FFF] + _CONTINUED_PAIRS[number >> 14 & 0x3FFF] + _SHORT_VARINTS[number >> 28]
        )
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

"""A minimal reader of the protobuf wire format, enough to pick fields out of Kubernetes objects.

Kubernetes' generated protobuf code is not needed: the objects' field numbers are fixed by k8s.io/api's
generated.proto files, and only a few fields of each object are read. Any malformed input raises MalformedMessage.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


class Fields:
    """The occurrences of some of a message's fields, in order: the payloads of length-delimited fields and the
    numbers of varint fields, apart (so a field sent with an unexpected wire type reads as absent)."""

    __slots__ = ("payloads", "varints")

    def __init__(self) -> None:
        self.payloads: dict[int, list[bytes]] = {}
        self.varints: dict[int, list[int]] = {}


class MalformedMessage(ValueError):
    pass


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it."""
    result = 0
    shift = 0
    length = len(data)
    while position < length:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift >= 64:
            raise MalformedMessage("varint longer than 10 bytes")
    raise MalformedMessage("truncated varint")


def scan(data: bytes, wanted: Collection[int]) -> Fields:
    """Every occurrence of the `wanted` field numbers in the message `data`, in order; other fields are skipped
    without being decoded (fixed-size ones too). Groups, deprecated and never used by Kubernetes, are refused."""
    found = Fields()
    position = 0
    length = len(data)
    while position < length:
        # Tags and lengths below 128 take one byte: read those inline, this loop runs for every field of a write.
        tag = data[position]
        if tag < 0x80:
            position += 1
        else:
            tag, position = read_varint(data, position)
        number = tag >> 3
        wire_type = tag & 7
        if number == 0:
            raise MalformedMessage("field number 0")
        if wire_type == 2:
            if position >= length:
                raise MalformedMessage("truncated length-delimited field")
            size = data[position]
            if size < 0x80:
                position += 1
            else:
                size, position = read_varint(data, position)
            end = position + size
            if end > length:
                raise MalformedMessage("truncated length-delimited field")
            if number in wanted:
                found.payloads.setdefault(number, []).append(data[position:end])
            position = end
        elif wire_type == 0:
            value, position = read_varint(data, position)
            if number in wanted:
                found.varints.setdefault(number, []).append(value)
        elif wire_type == 1 or wire_type == 5:
            position += 8 if wire_type == 1 else 4
            if position > length:
                raise MalformedMessage("truncated fixed-size field")
        else:
            raise MalformedMessage(f"unsupported wire type {wire_type}")
    return found


@dataclass(frozen=True, slots=True)
class RawField:
    """One field of a message as it was encoded, for edits that must keep every other field's bytes."""

    number: int
    wire_type: int
    encoded: bytes
    """The whole field: tag, then value (a length-delimited field's length and payload)."""
    payload: bytes
    """A length-delimited field's payload, b"" for other wire types."""
    varint: int
    """A varint field's number, 0 for other wire types."""


def split(data: bytes) -> list[RawField]:
    """Every field of the message `data`, in order, with its exact bytes (groups are refused, as by scan)."""
    fields = []
    position = 0
    length = len(data)
    while position < length:
        start = position
        tag, position = read_varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise MalformedMessage("field number 0")
        payload, varint = b"", 0
        if wire_type == 2:
            size, position = read_varint(data, position)
            if position + size > length:
                raise MalformedMessage("truncated length-delimited field")
            payload = data[position : position + size]
            position += size
        elif wire_type == 0:
            varint, position = read_varint(data, position)
        elif wire_type == 1 or wire_type == 5:
            position += 8 if wire_type == 1 else 4
            if position > length:
                raise MalformedMessage("truncated fixed-size field")
        else:
            raise MalformedMessage(f"unsupported wire type {wire_type}")
        fields.append(RawField(number, wire_type, data[start:position], payload, varint))
    return fields


def last_message(found: Fields, number: int) -> bytes:
    """The embedded message in field `number`: all its occurrences merged, as protobuf merges them (b"" if none)."""
    occurrences = found.payloads.get(number)
    if not occurrences:
        return b""
    if len(occurrences) == 1:
        return occurrences[0]
    return b"".join(occurrences)


def last_bytes(found: Fields, number: int) -> bytes:
    """The bytes in field `number` (the last occurrence wins), b"" if absent."""
    occurrences = found.payloads.get(number)
    return occurrences[-1] if occurrences else b""


def last_string(found: Fields, number: int) -> str:
    """The string in field `number` (the last occurrence wins), "" if absent."""
    occurrences = found.payloads.get(number)
    return occurrences[-1].decode() if occurrences else ""


def last_varint(found: Fields, number: int) -> int:
    """The varint in field `number` (the last occurrence wins), 0 if absent."""
    numbers = found.varints.get(number)
    return numbers[-1] if numbers else 0


def repeated(found: Fields, number: int) -> list[bytes]:
    """Every payload of the repeated length-delimited field `number` (strings or messages)."""
    return found.payloads.get(number, [])


def string_pair(entry: bytes) -> tuple[str, str]:
    """A map<string, string> entry's key (field 1) and value (field 2)."""
    # The usual encoding, key then value with one-byte lengths, is read directly; anything else is scanned.
    length = len(entry)
    if length >= 4 and entry[0] == 0x0A and entry[1] < 0x80:
        middle = 2 + entry[1]
        if middle + 2 <= length and entry[middle] == 0x12 and entry[middle + 1] == length - middle - 2:
            return entry[2:middle].decode(), entry[middle + 2 :].decode()
    pair = scan(entry, _PAIR)
    return last_string(pair, 1), last_string(pair, 2)


_PAIR = frozenset({1, 2})

"""Edits of a stored object's metadata that keep its encoding and every other byte of it.

What garbage collection in storage writes: the finalizer a delete's propagation policy adds, the deletion marks
kube-apiserver sets on a delete that finalizers hold back, and the removal of finalizers and owner references. Each
edit touches only the metadata:

- protobuf: the ObjectMeta message (field 1 of the object) is rebuilt from its fields' original bytes, changed
  fields being written in field-number order as Kubernetes' generated code writes them (an added finalizer after
  the existing ones); only the lengths around it change, every other field of the object and of the
  runtime.Unknown envelope keeps its bytes.
- JSON: only the members of "metadata" that change are rewritten, in place; every other byte of the document
  stays as stored (the trailing newline of Go's json.Encoder, Go's \\u003c escapes, number spellings, key order).
  Re-encoding the document instead would need Go's encoder exactly, for values (floats, escapes in strings and in
  managedFields keys) that no edit changes. New members take the place kube-apiserver gives them: the order of
  ObjectMeta's fields in a built-in object, alphabetical in a custom resource (encoded from a map, sorted); an
  added finalizer is escaped as Go escapes a string.

An edit that changes nothing returns the value itself, so that each is idempotent and a caller can skip the write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubefabric.objects import _wire
from kubefabric.objects._wire_write import bytes_field, varint_field

_PROTOBUF_MAGIC = b"k8s\x00"


class NotAnObject(ValueError):
    """The value is not a Kubernetes object this module can edit: not a JSON object with metadata, nor a Kubernetes
    protobuf object (e.g. an encrypted b"k8s:enc:" value, or malformed bytes)."""


def mark_deleted(value: bytes, now: datetime) -> bytes:
    """Mark the object as being deleted, as kube-apiserver does when it deletes an object that finalizers hold
    back (registry.Store.Delete -> markAsDeleting): deletionTimestamp becomes `now` (to the second) unless one is
    already set no later than `now`, deletionGracePeriodSeconds becomes 0, and a generation above 0 is increased
    by one when deletion starts."""
    if now.tzinfo is None:
        raise ValueError("mark_deleted needs a timezone-aware time")
    return _edit(value, _json_mark_deleted(now), _protobuf_mark_deleted(now))


def add_finalizer(value: bytes, finalizer: str) -> bytes:
    """Append `finalizer` to metadata.finalizers unless it is there already, as kube-apiserver adds a delete's
    propagation policy finalizer ("orphan", "foregroundDeletion"; registry.Store.Delete ->
    deletionFinalizersForGarbageCollection)."""
    encoded = finalizer.encode()
    return _edit(value, _json_add_finalizer(finalizer), _protobuf_add_finalizer(encoded))


def remove_finalizer(value: bytes, finalizer: str) -> bytes:
    """Remove every occurrence of `finalizer` from metadata.finalizers."""
    encoded = finalizer.encode()
    return _edit(
        value,
        lambda members, _: _json_filter_list(members, "finalizers", lambda item: item == finalizer),
        lambda fields: [
            f for f in fields if not (f.number == _FINALIZERS and f.wire_type == 2 and f.payload == encoded)
        ],
    )


def remove_owner_references(value: bytes, owner_uids: Set[str]) -> bytes:
    """Remove the owner references to any of `owner_uids` from metadata.ownerReferences (orphaning)."""
    encoded = {uid.encode() for uid in owner_uids}

    def owned(owner: Any) -> bool:
        return isinstance(owner, dict) and isinstance(owner.get("uid"), str) and owner["uid"] in owner_uids

    return _edit(
        value,
        lambda members, _: _json_filter_list(members, "ownerReferences", owned),
        lambda fields: [
            f
            for f in fields
            if not (f.number == _OWNER_REFERENCES and f.wire_type == 2 and _owner_uid(f.payload) in encoded)
        ],
    )


_JsonEdit = Callable[[list["_Member"], bool], list["_Member"]]
"""Edits metadata's members (the flag: whether the object's keys are sorted); returns the new members."""
_ProtobufEdit = Callable[[list[_wire.RawField]], list[_wire.RawField]]
"""Edits ObjectMeta's fields; returns the new fields."""


def _edit(value: bytes, json_edit: _JsonEdit, protobuf_edit: _ProtobufEdit) -> bytes:
    if value.startswith(_PROTOBUF_MAGIC):
        return _edit_protobuf(value, protobuf_edit)
    return _edit_json(value, json_edit)


def _rfc3339(time: datetime) -> str:
    """metav1.Time's JSON form (Time.MarshalJSON): RFC 3339 in UTC, to the second."""
    t = time.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def _parse_rfc3339(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise NotAnObject(f"metadata.deletionTimestamp {text!r} is not an RFC 3339 time")
    return parsed


# --- JSON ---------------------------------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, position: int) -> int:
    """The position after the JSON whitespace at `position`."""
    match = _WHITESPACE.match(text, position)
    assert match is not None  # the pattern matches ""
    return match.end()


_DECODER = json.JSONDecoder()
_JSON_ERRORS = (ValueError, RecursionError)


@dataclass(frozen=True, slots=True)
class _Member:
    key: str
    raw_key: str
    """The key as written, quotes and escapes included."""
    raw_value: str
    value_start: int = field(default=-1, compare=False)
    """Where the value begins in the text it was read from (-1 for a new member)."""

    @classmethod
    def new(cls, key: str, raw_value: str) -> _Member:
        return cls(key, json.dumps(key), raw_value)

    def value(self) -> Any:
        return json.loads(self.raw_value)


# The order of ObjectMeta's fields in k8s.io/apimachinery's types.go: Go's encoding/json writes a struct's fields
# in this order.
_OBJECT_META_ORDER = {
    name: rank
    for rank, name in enumerate(
        (
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "labels",
            "annotations",
            "ownerReferences",
            "finalizers",
            "managedFields",
        )
    )
}


def _edit_json(value: bytes, edit: _JsonEdit) -> bytes:
    try:
        text = value.decode()
        start = _skip(text, 0)
        if not text.startswith("{", start):
            raise NotAnObject("not a JSON object")
        members, end = _json_members(text, start)
        if text[end:].strip(" \t\n\r"):
            raise NotAnObject("data after the JSON object")
        metadata = next((m for m in reversed(members) if m.key == "metadata"), None)
        if metadata is None or not metadata.raw_value.startswith("{"):
            raise NotAnObject("a JSON object without metadata")
        old, _ = _json_members(metadata.raw_value, 0)
        keys = [m.key for m in members]
        new = edit(old, keys == sorted(keys))
    except _JSON_ERRORS as error:
        if isinstance(error, NotAnObject):
            raise
        raise NotAnObject(f"not a JSON object: {error}") from error
    if new == old:
        return value
    rebuilt = "{" + ",".join(f"{m.raw_key}:{m.raw_value}" for m in new) + "}"
    end = metadata.value_start + len(metadata.raw_value)
    return (text[: metadata.value_start] + rebuilt + text[end:]).encode()


def _json_members(text: str, start: int) -> tuple[list[_Member], int]:
    """The members of the JSON object at text[start] ("{"), each with its raw text, and the index after it."""
    members: list[_Member] = []
    position = _skip(text, start + 1)
    if text.startswith("}", position):
        return members, position + 1
    while True:
        if not text.startswith('"', position):
            raise NotAnObject(f"expected a key at character {position}")
        key, key_end = _DECODER.raw_decode(text, position)
        colon = _skip(text, key_end)
        if not text.startswith(":", colon):
            raise NotAnObject(f"expected ':' at character {colon}")
        value_start = _skip(text, colon + 1)
        _, value_end = _DECODER.raw_decode(text, value_start)
        members.append(_Member(key, text[position:key_end], text[value_start:value_end], value_start))
        position = _skip(text, value_end)
        if text.startswith("}", position):
            return members, position + 1
        if not text.startswith(",", position):
            raise NotAnObject(f"expected ',' or '}}' at character {position}")
        position = _skip(text, position + 1)


def _json_array_items(raw: str) -> list[tuple[Any, str]]:
    """The items of a JSON array, each parsed and as written."""
    items = []
    position = _skip(raw, 1)
    while not raw.startswith("]", position):
        item, end = _DECODER.raw_decode(raw, position)
        items.append((item, raw[position:end]))
        position = _skip(raw, end)
        if raw.startswith(",", position):
            position = _skip(raw, position + 1)
    return items


def _json_filter_list(members: list[_Member], key: str, drop: Callable[[Any], bool]) -> list[_Member]:
    """Without the items of the list member `key` that `drop` selects; the member goes when no item is left, as
    Go's encoding/json omits an empty list (omitempty) and the garbage collector's patches null it."""
    new = []
    for member in members:
        if member.key == key and member.raw_value.startswith("["):
            items = _json_array_items(member.raw_value)
            kept = [raw for item, raw in items if not drop(item)]
            if len(kept) < len(items):
                if kept:
                    new.append(_Member(member.key, member.raw_key, "[" + ",".join(kept) + "]"))
                continue
        new.append(member)
    return new


def _json_set(members: list[_Member], member: _Member, alphabetical: bool) -> list[_Member]:
    """With `member` in place of the member(s) with its key, or inserted where kube-apiserver would write it."""
    new = []
    placed = False
    for existing in members:
        if existing.key == member.key:
            if not placed:
                new.append(member)
                placed = True
        else:
            new.append(existing)
    if placed:
        return new

    def rank(key: str) -> Any:
        return key if alphabetical else _OBJECT_META_ORDER.get(key, len(_OBJECT_META_ORDER))

    position = next((i for i, m in enumerate(new) if rank(m.key) > rank(member.key)), len(new))
    return new[:position] + [member] + new[position:]


# What Go's encoding/json (kube-apiserver's encoders) escapes beyond what Python's encoder does.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _go_json_string(text: str) -> str:
    """A string as Go's encoding/json writes it."""
    return json.dumps(text, ensure_ascii=False).translate(_GO_ESCAPES)


def _json_add_finalizer(finalizer: str) -> _JsonEdit:
    def edit(members: list[_Member], alphabetical: bool) -> list[_Member]:
        current = next((m for m in reversed(members) if m.key == "finalizers"), None)
        items = []
        if current is not None and current.raw_value != "null":  # null decodes as no finalizers
            if not current.raw_value.startswith("["):
                raise NotAnObject("metadata.finalizers is not a list")
            items = _json_array_items(current.raw_value)
        if any(item == finalizer for item, _ in items):
            return members
        raw_value = "[" + ",".join([raw for _, raw in items] + [_go_json_string(finalizer)]) + "]"
        if current is None:
            return _json_set(members, _Member.new("finalizers", raw_value), alphabetical)
        return _json_set(members, _Member(current.key, current.raw_key, raw_value), alphabetical)

    return edit


def _json_mark_deleted(now: datetime) -> _JsonEdit:
    def edit(members: list[_Member], alphabetical: bool) -> list[_Member]:
        current = {m.key: m for m in members}  # the last occurrence of a key is the one decoders keep
        timestamp = current.get("deletionTimestamp")
        deletion = None if timestamp is None else timestamp.value()
        if deletion is not None and not isinstance(deletion, str):
            raise NotAnObject("metadata.deletionTimestamp is not a time")
        if deletion is None:
            generation = current.get("generation")
            count = None if generation is None else generation.value()
            if type(count) is int and count > 0:
                members = _json_set(members, _Member.new("generation", str(count + 1)), alphabetical)
        if deletion is None or _parse_rfc3339(deletion) > now:
            members = _json_set(members, _Member.new("deletionTimestamp", json.dumps(_rfc3339(now))), alphabetical)
        grace = current.get("deletionGracePeriodSeconds")
        if grace is None or grace.raw_value != "0":
            members = _json_set(members, _Member.new("deletionGracePeriodSeconds", "0"), alphabetical)
        return members

    return edit


# --- protobuf -----------------------------------------------------------------------------------------------------

# Field numbers: k8s.io/apimachinery's runtime.Unknown and meta/v1 ObjectMeta, OwnerReference and Time.
_RAW, _CONTENT_ENCODING = 2, 3
_METADATA = 1
_GENERATION, _DELETION_TIMESTAMP, _DELETION_GRACE_PERIOD_SECONDS = 7, 9, 10
_OWNER_REFERENCES, _FINALIZERS = 13, 14
_UID = frozenset({4})
_SECONDS = frozenset({1})


def _edit_protobuf(value: bytes, edit: _ProtobufEdit) -> bytes:
    try:
        envelope = _wire.split(value[len(_PROTOBUF_MAGIC) :])
        if any(f.number == _CONTENT_ENCODING and f.payload for f in envelope):
            raise NotAnObject("a protobuf value with a content encoding")
        raws = [i for i, f in enumerate(envelope) if f.number == _RAW and f.wire_type == 2]
        if not raws:
            raise NotAnObject("a protobuf value without an object")
        raw = _wire.split(envelope[raws[-1]].payload)  # a bytes field: the last occurrence is the value
        metadata = [i for i, f in enumerate(raw) if f.number == _METADATA and f.wire_type == 2]
        if not metadata:
            raise NotAnObject("a protobuf object without metadata")
        # Occurrences of an embedded message merge: their concatenation is the message.
        meta_payload = b"".join(raw[i].payload for i in metadata)
        old = _wire.split(meta_payload)
        new = edit(old)
    except _wire.MalformedMessage as error:
        raise NotAnObject(f"malformed protobuf: {error}") from error
    if [f.encoded for f in new] == [f.encoded for f in old]:
        return value
    meta_field = bytes_field(_METADATA, b"".join(f.encoded for f in new))
    raw_bytes = b"".join(
        meta_field if i == metadata[0] else f.encoded
        for i, f in enumerate(raw)
        if i == metadata[0] or i not in metadata
    )
    envelope_bytes = b"".join(
        bytes_field(_RAW, raw_bytes) if i == raws[-1] else f.encoded for i, f in enumerate(envelope)
    )
    return _PROTOBUF_MAGIC + envelope_bytes


def _protobuf_set(fields: list[_wire.RawField], encoded: bytes) -> list[_wire.RawField]:
    """With the field `encoded` in place of every occurrence of its number, in field-number order (the order of
    Kubernetes' generated marshallers) among the others."""
    (new,) = _wire.split(encoded)
    others = [f for f in fields if f.number != new.number]
    position = next((i for i, f in enumerate(others) if f.number > new.number), len(others))
    return others[:position] + [new] + others[position:]


def _signed(number: int) -> int:
    return number - (1 << 64) if number >= 1 << 63 else number


def _protobuf_mark_deleted(now: datetime) -> _ProtobufEdit:
    now_seconds = int(now.timestamp() // 1)

    def edit(fields: list[_wire.RawField]) -> list[_wire.RawField]:
        deletion = [f.payload for f in fields if f.number == _DELETION_TIMESTAMP and f.wire_type == 2]
        if not deletion:
            generations = [f.varint for f in fields if f.number == _GENERATION and f.wire_type == 0]
            if generations and _signed(generations[-1]) > 0:
                fields = _protobuf_set(fields, varint_field(_GENERATION, generations[-1] + 1))
        # metav1.Time reads back only seconds: a time is later than `now` when its second is after now's.
        if not deletion or _signed(_wire.last_varint(_wire.scan(b"".join(deletion), _SECONDS), 1)) > now.timestamp():
            # metav1.Time.ProtoTime: seconds, and nanos left 0 (both always written by the generated marshaller).
            time = varint_field(1, now_seconds) + varint_field(2, 0)
            fields = _protobuf_set(fields, bytes_field(_DELETION_TIMESTAMP, time))
        return _protobuf_set(fields, varint_field(_DELETION_GRACE_PERIOD_SECONDS, 0))

    return edit


def _protobuf_add_finalizer(encoded: bytes) -> _ProtobufEdit:
    def edit(fields: list[_wire.RawField]) -> list[_wire.RawField]:
        entries = [i for i, f in enumerate(fields) if f.number == _FINALIZERS and f.wire_type == 2]
        if any(fields[i].payload == encoded for i in entries):
            return fields
        if entries:
            position = entries[-1] + 1
        else:
            position = next((i for i, f in enumerate(fields) if f.number > _FINALIZERS), len(fields))
        (added,) = _wire.split(bytes_field(_FINALIZERS, encoded))
        return fields[:position] + [added] + fields[position:]

    return edit


def _owner_uid(owner_reference: bytes) -> bytes:
    return _wire.last_bytes(_wire.scan(owner_reference, _UID), 4)

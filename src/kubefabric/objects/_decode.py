"""Decoding the metadata and selectable fields of the objects kube-apiserver stores, in JSON or in protobuf."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from kubefabric.objects import _wire
from kubefabric.objects._kinds import builtin_kind_fields

_PROTOBUF_MAGIC = b"k8s\x00"
_CRD_PREFIX = b"/registry/apiextensions.k8s.io/customresourcedefinitions/"
_JSON_START = frozenset(b" \t\r\n{")

# The numbers of the fields read from protobuf (k8s.io/apimachinery's runtime and meta/v1 generated.proto).
_UNKNOWN_FIELDS = frozenset({1, 2, 3})  # typeMeta, raw, contentEncoding
_TYPE_META_FIELDS = frozenset({1, 2})  # apiVersion, kind
_OBJECT_META_FIELDS = frozenset({1, 3, 5, 9, 11, 13, 14})  # name, namespace, uid, deletionTimestamp, labels, ...
_OWNER_REFERENCE_FIELDS = frozenset({1, 3, 4, 5, 6, 7})  # kind, name, uid, apiVersion, controller, block...
_TIME_FIELDS = frozenset({1})  # seconds

_MALFORMED = (ValueError, RecursionError, OverflowError)
"""What bad input raises: MalformedMessage, JSON and UTF-8 decoding errors are ValueErrors; deep JSON nesting
raises RecursionError, a time beyond the calendar OverflowError."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool
    block_owner_deletion: bool


COLLECTED_LABEL = "skip-controller-manager-metadata-caching"
"""Objects with this label (any value) are garbage-collected by kubefabric, not by kube-controller-manager."""
ORPHAN_FINALIZER = "orphan"  # metav1.FinalizerOrphanDependents
FOREGROUND_FINALIZER = "foregroundDeletion"  # metav1.FinalizerDeleteDependents


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str]
    fields: Mapping[str, str]
    """Every selectable field of the object's kind with the value Kubernetes derives for it ("" when absent):
    metadata.name and metadata.namespace always, plus the kind's own (a custom resource's from its CRD)."""
    owner_references: tuple[OwnerReference, ...]
    finalizers: tuple[str, ...]
    deletion_timestamp: str | None
    """RFC 3339 as stored, None when unset."""
    encoding: Literal["json", "protobuf"]

    @property
    def collected(self) -> bool:
        """Whether kubefabric's garbage collector, not kube-controller-manager's, collects it."""
        return COLLECTED_LABEL in self.labels

    @property
    def waiting_for_dependents(self) -> bool:
        """Being deleted in the foreground: Kubernetes' garbage collector deletes its dependents first."""
        return bool(self.deletion_timestamp) and FOREGROUND_FINALIZER in self.finalizers

    @property
    def orphaning(self) -> bool:
        """Being deleted with its dependents orphaned: their references to it go first."""
        return bool(self.deletion_timestamp) and ORPHAN_FINALIZER in self.finalizers


_CustomFields = tuple[tuple[str, tuple[str, ...]], ...]
"""A custom resource kind's selectable fields: each one's name and the keys along its JSON path."""


class FieldCatalog:
    """Which fields are selectable for which kind. Built-in kinds are fixed; custom resources take the
    `spec.selectableFields` of their CustomResourceDefinition, learnt from CRD objects as they are written."""

    def __init__(self) -> None:
        # Both are only ever replaced entry by entry, so a concurrent decode sees a kind's old or new fields.
        self._custom_fields: dict[tuple[str, str], _CustomFields] = {}
        self._kind_of_crd: dict[bytes, tuple[str, str]] = {}

    def learn(self, key: bytes, value: bytes | None) -> bool:
        """Call for every key written (value None for a delete). If `key` is a CRD
        (/registry/apiextensions.k8s.io/customresourcedefinitions/<name>), update the catalog and return True
        when the selectable fields of some kind changed; False otherwise (cheap for every other key)."""
        if not key.startswith(_CRD_PREFIX):
            return False
        definition = None if value is None else _custom_resource_definition(value)
        old_kind = self._kind_of_crd.get(key)
        before = {old_kind: self._custom_fields[old_kind]} if old_kind in self._custom_fields else {}
        if old_kind is not None and (definition is None or definition[0] != old_kind):
            del self._kind_of_crd[key]
            self._custom_fields.pop(old_kind, None)
        if definition is None:
            return bool(before)
        kind, fields = definition
        self._kind_of_crd[key] = kind
        if fields:
            self._custom_fields[kind] = fields
        else:
            self._custom_fields.pop(kind, None)
        return before != ({kind: fields} if fields else {})

    def custom_fields(self, group: str, kind: str) -> _CustomFields:
        """The selectable fields of a custom resource kind (none for a kind no CRD defines)."""
        return self._custom_fields.get((group, kind), ())


def decode(key: bytes, value: bytes, catalog: FieldCatalog) -> ObjectInfo | None:
    """The object's metadata and selectable fields, from JSON or from Kubernetes protobuf (b"k8s\\x00" + a
    runtime.Unknown whose raw bytes are the object; ObjectMeta is field 1 of every object). None when the value is
    neither (e.g. b"k8s:enc:" encrypted values, or not an object at all). Never raises on any input bytes.

    The kind is the object's own (its apiVersion and kind), never guessed from `key`."""
    try:
        if value.startswith(_PROTOBUF_MAGIC):
            return _decode_protobuf(value)
        if value and value[0] in _JSON_START:
            return _decode_json(value, catalog)
    except _MALFORMED:
        return None
    return None


# --- JSON ---------------------------------------------------------------------------------------------------------


def _decode_json(value: bytes, catalog: FieldCatalog) -> ObjectInfo | None:
    obj = json.loads(value)
    if not isinstance(obj, dict):
        return None
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        return None
    name = _json_string(metadata.get("name"))
    namespace = _json_string(metadata.get("namespace"))
    fields = {"metadata.name": name, "metadata.namespace": namespace}
    group, kind = _group(_json_string(obj.get("apiVersion"))), _json_string(obj.get("kind"))
    builtin_kind_fields(group, kind).from_json(obj, fields)
    for field_name, path in catalog.custom_fields(group, kind):
        fields[field_name] = _custom_field_value(obj, path)
    labels = metadata.get("labels")
    owners = metadata.get("ownerReferences")
    finalizers = metadata.get("finalizers")
    deletion_timestamp = metadata.get("deletionTimestamp")
    return ObjectInfo(
        name=name,
        namespace=namespace,
        uid=_json_string(metadata.get("uid")),
        labels=({k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) and labels else {}),
        fields=fields,
        owner_references=(
            tuple(_json_owner(owner) for owner in owners if isinstance(owner, dict)) if isinstance(owners, list) else ()
        ),
        finalizers=(
            tuple(item for item in finalizers if isinstance(item, str)) if isinstance(finalizers, list) else ()
        ),
        deletion_timestamp=deletion_timestamp if isinstance(deletion_timestamp, str) else None,
        encoding="json",
    )


def _json_string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _json_owner(owner: dict[str, Any]) -> OwnerReference:
    return OwnerReference(
        api_version=_json_string(owner.get("apiVersion")),
        kind=_json_string(owner.get("kind")),
        name=_json_string(owner.get("name")),
        uid=_json_string(owner.get("uid")),
        controller=owner.get("controller") is True,
        block_owner_deletion=owner.get("blockOwnerDeletion") is True,
    )


def _group(api_version: str) -> str:
    """The API group of "group/version" ("" for the core group's "v1")."""
    return api_version.rpartition("/")[0]


def _custom_field_value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    """apiextensions-apiserver's customResourceStrategy.selectableFields: the value at the JSON path through
    fmt.Sprint, "" when the path leads nowhere or to null."""
    value: Any = obj
    for name in path:
        if not isinstance(value, dict):
            return ""
        value = value.get(name)
    return "" if value is None else _go_sprint(value)


def _go_sprint(value: Any) -> str:
    """fmt.Sprint of a value decoded from JSON into Go's interface{} (int64 for integers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_sprint(item) for item in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{_go_sprint(value[key])}" for key in sorted(value)) + "]"
    return "<nil>"


def _go_float(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 64) as %v prints a float64: the shortest digits, in exponent form
    when the exponent is below -4 or at least 6 (1e+06)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    point = len(digits) + exponent  # the decimal point sits after this many digits
    prefix = "-" if sign else ""
    if point - 1 < -4 or point - 1 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        power = point - 1
        return f"{prefix}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


# --- protobuf -----------------------------------------------------------------------------------------------------


def _decode_protobuf(value: bytes) -> ObjectInfo | None:
    unknown = _wire.scan(value[len(_PROTOBUF_MAGIC) :], _UNKNOWN_FIELDS)
    if 2 not in unknown.payloads or _wire.last_bytes(unknown, 3):
        return None  # no object, or a content encoding kube-apiserver never writes
    type_meta = _wire.scan(_wire.last_message(unknown, 1), _TYPE_META_FIELDS)
    group, kind = _group(_wire.last_string(type_meta, 1)), _wire.last_string(type_meta, 2)
    kind_fields = builtin_kind_fields(group, kind)
    top_level = _wire.scan(_wire.last_bytes(unknown, 2), kind_fields.top_level_numbers)
    metadata = _wire.scan(_wire.last_message(top_level, 1), _OBJECT_META_FIELDS)
    name = _wire.last_string(metadata, 1)
    namespace = _wire.last_string(metadata, 3)
    fields = {"metadata.name": name, "metadata.namespace": namespace}
    # Custom resources are only ever stored as JSON, so only built-in kinds have fields to read here.
    kind_fields.from_protobuf(top_level, fields)
    labels = dict(_wire.string_pair(entry) for entry in _wire.repeated(metadata, 11))
    deletion = _wire.repeated(metadata, 9)
    return ObjectInfo(
        name=name,
        namespace=namespace,
        uid=_wire.last_string(metadata, 5),
        labels=labels,
        fields=fields,
        owner_references=tuple(_protobuf_owner(owner) for owner in _wire.repeated(metadata, 13)),
        finalizers=tuple(finalizer.decode() for finalizer in _wire.repeated(metadata, 14)),
        deletion_timestamp=_protobuf_time(_wire.last_message(metadata, 9)) if deletion else None,
        encoding="protobuf",
    )


def _protobuf_owner(data: bytes) -> OwnerReference:
    owner = _wire.scan(data, _OWNER_REFERENCE_FIELDS)
    return OwnerReference(
        api_version=_wire.last_string(owner, 5),
        kind=_wire.last_string(owner, 1),
        name=_wire.last_string(owner, 3),
        uid=_wire.last_string(owner, 4),
        controller=bool(_wire.last_varint(owner, 6)),
        block_owner_deletion=bool(_wire.last_varint(owner, 7)),
    )


def _protobuf_time(data: bytes) -> str:
    """A metav1.Time (seconds, nanos) rendered as its JSON form: RFC 3339 in UTC, to the second."""
    seconds = _wire.last_varint(_wire.scan(data, _TIME_FIELDS), 1) & 0xFFFFFFFFFFFFFFFF
    if seconds >= 1 << 63:
        seconds -= 1 << 64
    time = _EPOCH + timedelta(seconds=seconds)
    return f"{time.year:04d}-{time.month:02d}-{time.day:02d}T{time.hour:02d}:{time.minute:02d}:{time.second:02d}Z"


# --- CustomResourceDefinitions --------------------------------------------------------------------------------------


def _custom_resource_definition(value: bytes) -> tuple[tuple[str, str], _CustomFields] | None:
    """The (group, kind) a CRD defines and its storage version's selectable fields, from its JSON or protobuf
    form; None for a value that is neither.

    A CRD declares selectable fields per version while the catalog holds one set per kind: the storage version is
    the one stored objects are written in, so its JSON paths are the ones that resolve against them (another
    version's paths could only be applied through the CRD's conversion)."""
    try:
        if value.startswith(_PROTOBUF_MAGIC):
            return _protobuf_crd(value)
        if value and value[0] in _JSON_START:
            return _json_crd(value)
    except _MALFORMED:
        return None
    return None


def _custom_fields(json_paths: list[str]) -> _CustomFields:
    # The field's name is its path without the leading dot (apiextensions-apiserver trims it the same way).
    fields = []
    for json_path in json_paths:
        steps = _json_path_steps(json_path)
        if steps:
            fields.append((json_path.removeprefix("."), steps))
    return tuple(fields)


_JSON_PATH_STEP = re.compile(r"""\.([^.\[\]'"]+)|\['([^']*)'\]|\["([^"]*)"\]""")


def _json_path_steps(json_path: str) -> tuple[str, ...]:
    """The keys along a CRD selectable field's path: `.spec.color`, `.spec['app.kubernetes.io/x']`; () for a path
    that is not such a chain (a CRD's validation admits no other)."""
    steps: list[str] = []
    position = 0
    while position < len(json_path):
        step = _JSON_PATH_STEP.match(json_path, position)
        if step is None:
            return ()
        steps.append(next(group for group in step.groups() if group is not None))
        position = step.end()
    return tuple(steps)


def _json_crd(value: bytes) -> tuple[tuple[str, str], _CustomFields] | None:
    crd = json.loads(value)
    spec = crd.get("spec") if isinstance(crd, dict) else None
    if not isinstance(spec, dict):
        return None
    names = spec.get("names")
    kind = _json_string(names.get("kind")) if isinstance(names, dict) else ""
    json_paths: list[str] = []
    versions = spec.get("versions")
    for version in versions if isinstance(versions, list) else ():
        if isinstance(version, dict) and version.get("storage") is True:
            selectable = version.get("selectableFields")
            for item in selectable if isinstance(selectable, list) else ():
                if isinstance(item, dict):
                    json_paths.append(_json_string(item.get("jsonPath")))
    return (_json_string(spec.get("group")), kind), _custom_fields(json_paths)


def _protobuf_crd(value: bytes) -> tuple[tuple[str, str], _CustomFields] | None:
    # apiextensions/v1 generated.proto: CustomResourceDefinition.spec = 2; its spec: group = 1, names = 3
    # (kind = 4), versions = 7; a version: storage = 3, selectableFields = 9 (jsonPath = 1).
    unknown = _wire.scan(value[len(_PROTOBUF_MAGIC) :], _UNKNOWN_FIELDS)
    crd = _wire.scan(_wire.last_bytes(unknown, 2), {2})
    spec = _wire.scan(_wire.last_message(crd, 2), {1, 3, 7})
    names = _wire.scan(_wire.last_message(spec, 3), {4})
    json_paths: list[str] = []
    for version_data in _wire.repeated(spec, 7):
        version = _wire.scan(version_data, {3, 9})
        if _wire.last_varint(version, 3):
            for selectable in _wire.repeated(version, 9):
                json_paths.append(_wire.last_string(_wire.scan(selectable, {1}), 1))
    return (_wire.last_string(spec, 1), _wire.last_string(names, 4)), _custom_fields(json_paths)

"""The model's objects as kube-apiserver stores them, in JSON and in Kubernetes protobuf, and read back.

Values are built and read with `json` and the protobuf library (message classes from a descriptor of Kubernetes'
messages, tests/objects/test_rewrite.py), never with kubefabric's own decoder. Each test case tags what it writes
(a prefix on the object's name and on every uid, and a label), so that cases sharing a server never see each other's
objects; the model's objects stay untagged.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf import json_format

from tests.gc._reference import FOREGROUND, ORPHAN, Obj, OwnerRef
from tests.objects.test_decode import pb
from tests.objects.test_rewrite import MESSAGES, configmap_rest, envelope, go_json, metadata_span, pod_rest

Encoding = Literal["json", "protobuf"]
ENCODINGS: tuple[Encoding, ...] = ("json", "protobuf")
PROTOBUF_MAGIC = b"k8s\x00"

CASE_LABEL = "gc-case"
"""The label that tags a case's objects, for label selectors that see only them."""

# Where objects live: in the multi:// topology of tests/_targets.py each of these is another backend (PostgreSQL,
# MariaDB, the real etcd, the shirts SQLite file, the default SQLite file).
PLACES = (
    "/registry/pods/default/",
    "/registry/configmaps/kube-system/",
    "/registry/serviceaccounts/default/",
    "/registry/stable.example.com/shirts/default/",
    "/registry/configmaps/default/",
)
KINDS = {  # the resource in a key -> (apiVersion, kind)
    "pods": ("v1", "Pod"),
    "configmaps": ("v1", "ConfigMap"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "stable.example.com/shirts": ("stable.example.com/v1", "Shirt"),
}
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
# ObjectMeta's fields in the order of the Go struct: the order kube-apiserver writes a built-in object's metadata.
METADATA_ORDER = (
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
ANNOTATIONS = {"note": "<&> ünïcode kept as stored"}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_key(key: str) -> tuple[str, str, str]:
    """`/registry/<resource>/<namespace>/<name>` -> (resource, namespace, name); a group's resource has a slash."""
    head, namespace, name = key.rsplit("/", 2)
    return head.removeprefix("/registry/"), namespace, name


@dataclass(frozen=True)
class Case:
    """The tag of one test case's objects: stored names and uids start with it, and each carries it as a label."""

    tag: str

    def key(self, key: str) -> str:
        head, name = key.rsplit("/", 1)
        return f"{head}/{self.tag}-{name}"

    def model_key(self, stored: str) -> str:
        head, name = stored.rsplit("/", 1)
        return f"{head}/{name.removeprefix(self.tag + '-')}"

    def uid(self, uid: str) -> str:
        return f"{self.tag}-{uid}"

    def model_uid(self, stored: str) -> str:
        return stored.removeprefix(self.tag + "-")

    def owns(self, key: bytes) -> bool:
        return key.rsplit(b"/", 1)[-1].startswith(self.tag.encode() + b"-")


_cases = itertools.count()


def new_case() -> Case:
    """A tag no other case of this test process has."""
    return Case(f"c{next(_cases)}")


# --- writing ------------------------------------------------------------------------------------------------------


def encode(obj: Obj, case: Case, encoding: Encoding) -> bytes:
    """`obj` as kube-apiserver writes it (a custom resource always in JSON, as Kubernetes stores them)."""
    resource, namespace, name = split_key(case.key(obj.key))
    api_version, kind = KINDS[resource]
    owners = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": f"owner-{ref.uid}",
            "uid": case.uid(ref.uid),
            "controller": index == 0,
            "blockOwnerDeletion": ref.block_owner_deletion,
        }
        for index, ref in enumerate(obj.owners)
    ]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": case.uid(obj.uid),
        "creationTimestamp": rfc3339(CREATED),
        **({"deletionTimestamp": rfc3339(datetime.now(UTC)), "deletionGracePeriodSeconds": 0} if obj.deleting else {}),
        "labels": {**obj.labels, CASE_LABEL: case.tag},
        "annotations": ANNOTATIONS,
        **({"ownerReferences": owners} if owners else {}),
        **({"finalizers": list(obj.finalizers)} if obj.finalizers else {}),
        "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": api_version}],
    }
    if encoding == "protobuf" and kind != "Shirt":
        raw = _metadata_field(_to_message(meta)) + _protobuf_rest(kind)
        return envelope(api_version, kind, raw)
    if kind == "Shirt":
        return go_json(_sorted({"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": {"size": "M"}}))
    return go_json({"kind": kind, "apiVersion": api_version, "metadata": meta, **_json_rest(kind)})


def _json_rest(kind: str) -> dict[str, Any]:
    if kind == "Pod":
        spec = {"containers": [{"name": "app", "image": "registry.example/app:<1.0>"}], "nodeName": "node1"}
        return {"spec": spec, "status": {"phase": "Running", "podIP": "10.0.0.7"}}
    if kind == "ConfigMap":
        return {"data": {"a.conf": "x=1 & y=<2>"}}
    return {"automountServiceAccountToken": True}


def _protobuf_rest(kind: str) -> bytes:
    """The object's fields after its metadata."""
    if kind == "Pod":
        return pod_rest()
    if kind == "ConfigMap":
        return configmap_rest()
    return pb(4, True)  # ServiceAccount.automountServiceAccountToken


def _sorted(value: Any) -> Any:
    """A custom resource is encoded from a map: keys sorted, at every level."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return [_sorted(item) for item in value] if isinstance(value, list) else value


def _to_message(meta: Mapping[str, Any]) -> Any:
    message = MESSAGES["ObjectMeta"]()
    json_format.ParseDict(
        {k: v for k, v in meta.items() if k not in ("creationTimestamp", "deletionTimestamp")}, message
    )
    for name in ("creationTimestamp", "deletionTimestamp"):
        if name in meta:
            getattr(message, name).seconds = int(datetime.fromisoformat(meta[name]).timestamp())
            getattr(message, name).nanos = 0
    return message


def _metadata_field(meta: Any) -> bytes:
    """Field 1 of any object: its ObjectMeta (map entries in key order, as Go's marshaller writes them)."""
    return bytes(MESSAGES["ConfigMap"](metadata=meta).SerializeToString(deterministic=True))


def with_finalizers(value: bytes, finalizers: tuple[str, ...], deleting: bool, now: datetime) -> bytes:
    """The stored object with `finalizers`, and when `deleting` marked as being deleted (markAsDeleting: an earlier
    deletionTimestamp stays), everything else as it was: kube-apiserver's update of the metadata."""
    if value.startswith(PROTOBUF_MAGIC):
        unknown = MESSAGES["Unknown"].FromString(value[len(PROTOBUF_MAGIC) :])
        meta_bytes, rest = split_object(unknown.raw)
        meta = MESSAGES["ObjectMeta"].FromString(meta_bytes)
        del meta.finalizers[:]
        meta.finalizers.extend(finalizers)
        if deleting and not meta.HasField("deletionTimestamp"):
            meta.deletionTimestamp.seconds, meta.deletionTimestamp.nanos = int(now.timestamp()), 0
        if deleting:
            meta.deletionGracePeriodSeconds = 0
        unknown.raw = _metadata_field(meta) + rest
        return PROTOBUF_MAGIC + bytes(unknown.SerializeToString())
    document = json.loads(value)
    meta = document["metadata"]
    meta.pop("finalizers", None)
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if deleting:
        meta.setdefault("deletionTimestamp", rfc3339(now))
        meta["deletionGracePeriodSeconds"] = 0
    if document["kind"] == "Shirt":
        return go_json(_sorted(document))
    document["metadata"] = {name: meta[name] for name in METADATA_ORDER if name in meta}
    return go_json(document)


# --- reading ------------------------------------------------------------------------------------------------------


def _varint(data: bytes, position: int) -> tuple[int, int]:
    number, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        number |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return number, position


def _fields(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """Each top-level field of a protobuf message: its number, its payload and all its bytes."""
    position = 0
    while position < len(data):
        start = position
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, position = _varint(data, position)
            payload = b""
        elif wire_type == 2:
            length, position = _varint(data, position)
            payload, position = data[position : position + length], position + length
        else:
            assert wire_type in (1, 5), f"unexpected wire type {wire_type}"
            position += 8 if wire_type == 1 else 4
            payload = b""
        yield number, payload, data[start:position]


def split_object(raw: bytes) -> tuple[bytes, bytes]:
    """An object's ObjectMeta (its occurrences of field 1, which merge when read) and every other field's bytes."""
    meta, rest = b"", b""
    for number, payload, whole in _fields(raw):
        if number == 1:
            meta += payload
        else:
            rest += whole
    return meta, rest


def metadata(value: bytes) -> dict[str, Any]:
    """The stored object's metadata, JSON-shaped whatever the encoding (times as RFC 3339, to the second)."""
    if not value.startswith(PROTOBUF_MAGIC):
        meta: dict[str, Any] = json.loads(value)["metadata"]
        return meta
    unknown = MESSAGES["Unknown"].FromString(value[len(PROTOBUF_MAGIC) :])
    message = MESSAGES["ObjectMeta"].FromString(split_object(unknown.raw)[0])
    meta = json_format.MessageToDict(message)
    for name in ("creationTimestamp", "deletionTimestamp"):
        if message.HasField(name):
            meta[name] = rfc3339(datetime.fromtimestamp(getattr(message, name).seconds, UTC))
    if message.HasField("deletionGracePeriodSeconds"):
        meta["deletionGracePeriodSeconds"] = message.deletionGracePeriodSeconds
    return meta


def read(case: Case, key: bytes, value: bytes) -> Obj:
    """The model's object for a stored one of `case`."""
    meta = metadata(value)
    if "deletionTimestamp" in meta:  # both parties mark objects as kube-apiserver does
        assert meta.get("deletionGracePeriodSeconds") == 0, f"{key!r}: marked deleted with {meta}"
    labels = {name: text for name, text in meta.get("labels", {}).items() if name != CASE_LABEL}
    owners = tuple(
        OwnerRef(case.model_uid(ref["uid"]), bool(ref.get("blockOwnerDeletion", False)))
        for ref in meta.get("ownerReferences", [])
    )
    return Obj(
        case.model_uid(meta["uid"]),
        case.model_key(key.decode()),
        labels,
        owners,
        tuple(meta.get("finalizers", [])),
        "deletionTimestamp" in meta,
    )


# --- the collector's edits ----------------------------------------------------------------------------------------

EDITED = ("ownerReferences", "finalizers", "deletionTimestamp", "deletionGracePeriodSeconds")


def assert_only_metadata_edited(before: bytes, after: bytes) -> None:
    """`after` is `before` with only what the collector may change: owner references removed, the finalizers a
    delete's propagation adds or the collector finishes (orphan, foregroundDeletion), the deletion marks; every
    other byte of the value (encoding, envelope, the object's other fields, the other metadata) as it was."""
    assert before.startswith(PROTOBUF_MAGIC) == after.startswith(PROTOBUF_MAGIC), "the encoding changed"
    if before.startswith(PROTOBUF_MAGIC):
        old, new = (MESSAGES["Unknown"].FromString(v[len(PROTOBUF_MAGIC) :]) for v in (before, after))
        assert split_object(old.raw)[1] == split_object(new.raw)[1], "fields outside the metadata changed"
        old.raw = new.raw = b""
        assert old == new, "the runtime.Unknown envelope changed"
    else:
        assert metadata_span(before) == metadata_span(after), "bytes outside the metadata changed"
    old_meta, new_meta = metadata(before), metadata(after)
    untouched = [name for name in old_meta.keys() | new_meta.keys() if name not in EDITED]
    assert {n: old_meta.get(n) for n in untouched} == {n: new_meta.get(n) for n in untouched}
    old_refs, new_refs = old_meta.get("ownerReferences", []), new_meta.get("ownerReferences", [])
    kept = {ref["uid"] for ref in new_refs}
    assert new_refs == [ref for ref in old_refs if ref["uid"] in kept], "owner references other than removed"

    def clients(finalizers: list[str]) -> list[str]:
        return [f for f in finalizers if f not in (ORPHAN, FOREGROUND)]

    assert clients(new_meta.get("finalizers", [])) == clients(old_meta.get("finalizers", [])), "client finalizers"
    if "deletionTimestamp" in old_meta:
        assert old_meta["deletionTimestamp"] >= new_meta.get("deletionTimestamp", "~"), "the deletion mark went"
    if "deletionTimestamp" in new_meta:
        assert new_meta.get("deletionGracePeriodSeconds") == 0

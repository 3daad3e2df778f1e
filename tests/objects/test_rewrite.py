"""Metadata edits of stored objects: the change shows in decode(), every other byte stays as stored.

Protobuf values are built with the protobuf library from a descriptor of k8s.io/apimachinery's messages (same
field numbers and types), independent of the wire writer under test: an edit must produce exactly the bytes the
library writes for the edited message, Kubernetes' generated marshallers writing fields in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefabric.objects import (
    FieldCatalog,
    NotAnObject,
    ObjectInfo,
    add_finalizer,
    decode,
    mark_deleted,
    remove_finalizer,
    remove_owner_references,
)
from tests.objects.test_decode import pb

NOW = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
NOW_RFC3339 = "2026-03-04T05:06:07Z"
NOW_SECONDS = int(datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp())


def decoded(value: bytes) -> ObjectInfo:
    info = decode(b"/registry/x/y", value, FieldCatalog())
    assert info is not None
    return info


# --- protobuf -----------------------------------------------------------------------------------------------------


def _messages() -> dict[str, Any]:
    types = descriptor_pb2.FieldDescriptorProto
    string, boolean, int64 = types.TYPE_STRING, types.TYPE_BOOL, types.TYPE_INT64
    schema: dict[str, list[tuple[Any, ...]]] = {
        "TypeMeta": [("apiVersion", 1, string), ("kind", 2, string)],
        "Unknown": [
            ("typeMeta", 1, ".k8s.TypeMeta"),
            ("raw", 2, types.TYPE_BYTES),
            ("contentEncoding", 3, string),
            ("contentType", 4, string),
        ],
        "Time": [("seconds", 1, int64), ("nanos", 2, types.TYPE_INT32)],
        "OwnerReference": [
            ("kind", 1, string),
            ("name", 3, string),
            ("uid", 4, string),
            ("apiVersion", 5, string),
            ("controller", 6, boolean),
            ("blockOwnerDeletion", 7, boolean),
        ],
        "FieldsV1": [("Raw", 1, types.TYPE_BYTES)],
        "ManagedFieldsEntry": [
            ("manager", 1, string),
            ("operation", 2, string),
            ("apiVersion", 3, string),
            ("time", 4, ".k8s.Time"),
            ("fieldsType", 6, string),
            ("fieldsV1", 7, ".k8s.FieldsV1"),
        ],
        "ObjectMeta": [
            ("name", 1, string),
            ("generateName", 2, string),
            ("namespace", 3, string),
            ("selfLink", 4, string),
            ("uid", 5, string),
            ("resourceVersion", 6, string),
            ("generation", 7, int64),
            ("creationTimestamp", 8, ".k8s.Time"),
            ("deletionTimestamp", 9, ".k8s.Time"),
            ("deletionGracePeriodSeconds", 10, int64),
            ("labels", 11, ".k8s.ObjectMeta.LabelsEntry", "repeated"),
            ("annotations", 12, ".k8s.ObjectMeta.AnnotationsEntry", "repeated"),
            ("ownerReferences", 13, ".k8s.OwnerReference", "repeated"),
            ("finalizers", 14, string, "repeated"),
            ("clusterName", 15, string),  # deprecated, yet written (empty) by the generated marshaller
            ("managedFields", 17, ".k8s.ManagedFieldsEntry", "repeated"),
            ("fieldFromTheFuture", 23, string),  # unknown to the code under test
        ],
        "PodSpec": [("restartPolicy", 3, string), ("nodeName", 10, string), ("hostNetwork", 11, boolean)],
        "PodStatus": [("phase", 1, string), ("podIP", 6, string)],
        "Pod": [
            ("metadata", 1, ".k8s.ObjectMeta"),
            ("spec", 2, ".k8s.PodSpec"),
            ("status", 3, ".k8s.PodStatus"),
            ("fieldFromTheFuture", 99, string),
        ],
        "ConfigMap": [
            ("metadata", 1, ".k8s.ObjectMeta"),
            ("data", 2, ".k8s.ConfigMap.DataEntry", "repeated"),
            ("binaryData", 3, ".k8s.ConfigMap.BinaryDataEntry", "repeated"),
            ("immutable", 4, boolean),
        ],
    }
    maps = {"ObjectMeta": ("Labels", "Annotations"), "ConfigMap": ("Data", "BinaryData")}
    file = descriptor_pb2.FileDescriptorProto(name="k8s_rewrite.proto", package="k8s", syntax="proto2")
    for name, fields in schema.items():
        described = file.message_type.add(name=name)
        for field_name, number, kind, *repeated in fields:
            field = described.field.add(name=field_name, number=number)
            field.label = types.LABEL_REPEATED if repeated else types.LABEL_OPTIONAL
            if isinstance(kind, str):
                field.type, field.type_name = types.TYPE_MESSAGE, kind
            else:
                field.type = kind
        for entry_name in maps.get(name, ()):
            entry = described.nested_type.add(name=entry_name + "Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=string, label=types.LABEL_OPTIONAL)
            value_type = types.TYPE_BYTES if entry_name == "BinaryData" else string
            entry.field.add(name="value", number=2, type=value_type, label=types.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("k8s." + name)) for name in schema}


MESSAGES = _messages()
OWNERS = (
    ("apps/v1", "ReplicaSet", "web-7d4b9", "uid-rs", True, True),
    ("v1", "ConfigMap", "cfg", "uid-cm", False, False),
    ("example.com/v1", "Shirt", "red", "uid-shirt", False, True),
)


def object_meta(*, finalizers: tuple[str, ...] = ("example.com/keep", "orphan", "example.com/keep")) -> Any:
    """Metadata with every field kube-apiserver writes (the generated marshaller writes even empty ones)."""
    meta = MESSAGES["ObjectMeta"](
        name="web-7d4b9-x2x",
        generateName="web-7d4b9-",
        namespace="shop",
        selfLink="",
        uid="5c1f7e0e-4bd7-4a43-9d3a-2f0b4f0f8a11",
        resourceVersion="1234",
        generation=3,
        clusterName="",
        fieldFromTheFuture="kept as is",
    )
    meta.creationTimestamp.seconds, meta.creationTimestamp.nanos = 1_700_000_000, 0
    meta.labels.update({"app": "web", "skip-controller-manager-metadata-caching": "true"})
    meta.annotations.update({"note": "<&> ünïcode " + "x" * 200})
    for api_version, kind, name, uid, controller, block in OWNERS:
        meta.ownerReferences.add(
            apiVersion=api_version, kind=kind, name=name, uid=uid, controller=controller, blockOwnerDeletion=block
        )
    meta.finalizers.extend(finalizers)
    entry = meta.managedFields.add(manager="kubectl", operation="Update", apiVersion="v1", fieldsType="FieldsV1")
    entry.time.seconds = 1_700_000_100
    entry.fieldsV1.Raw = b'{"f:metadata":{"f:labels":{"f:app":{}}}}'
    return meta


def pod_rest() -> bytes:
    """Everything of the pod after its metadata, an unknown field included."""
    pod = MESSAGES["Pod"](fieldFromTheFuture="from a newer Kubernetes")
    pod.spec.restartPolicy, pod.spec.nodeName, pod.spec.hostNetwork = "Always", "node10", False
    pod.status.phase, pod.status.podIP = "Running", "10.0.0.7"
    return bytes(pod.SerializeToString())


def configmap_rest() -> bytes:
    configmap = MESSAGES["ConfigMap"](immutable=False)
    configmap.data.update({"a.conf": "x=1", "b.conf": "<y>"})
    configmap.binaryData.update({"blob": bytes(range(256))})
    return bytes(configmap.SerializeToString())


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    unknown = MESSAGES["Unknown"](raw=raw, contentEncoding="", contentType="")
    unknown.typeMeta.apiVersion, unknown.typeMeta.kind = api_version, kind
    return b"k8s\x00" + bytes(unknown.SerializeToString())


def stored_protobuf(meta: Any, kind: str = "Pod") -> bytes:
    rest = pod_rest() if kind == "Pod" else configmap_rest()
    raw = MESSAGES[kind](metadata=meta).SerializeToString() + rest
    return envelope("v1", kind, raw)


def split_stored(value: bytes) -> tuple[Any, Any, bytes]:
    """The envelope, the object's metadata and the object's bytes after its metadata (field 1, written first)."""
    unknown = MESSAGES["Unknown"].FromString(value[4:])
    head = MESSAGES["Pod"]()
    head.MergeFromString(unknown.raw)
    meta = head.metadata
    meta_length = len(MESSAGES["Pod"](metadata=meta).SerializeToString())
    return unknown, meta, bytes(unknown.raw[meta_length:])


KINDS = ["Pod", "ConfigMap"]


@pytest.mark.parametrize("kind", KINDS)
def test_protobuf_mark_deleted_writes_what_the_apiserver_writes(kind: str) -> None:
    before = stored_protobuf(object_meta(), kind)
    after = mark_deleted(before, NOW)
    old_envelope, _, old_rest = split_stored(before)
    new_envelope, new_meta, new_rest = split_stored(after)
    expected = object_meta()
    expected.generation = 4
    expected.deletionTimestamp.seconds, expected.deletionTimestamp.nanos = NOW_SECONDS, 0
    expected.deletionGracePeriodSeconds = 0
    assert new_meta.SerializeToString() == expected.SerializeToString()
    assert after == stored_protobuf(expected, kind)  # every byte: envelope, metadata, the rest of the object
    assert new_rest == old_rest
    assert (new_envelope.typeMeta, new_envelope.contentType) == (old_envelope.typeMeta, old_envelope.contentType)
    info = decoded(after)
    assert info.deletion_timestamp == NOW_RFC3339
    assert info == ObjectInfo(**{**_fields(decoded(before)), "deletion_timestamp": NOW_RFC3339})


def _fields(info: ObjectInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in ObjectInfo.__slots__}


def test_protobuf_mark_deleted_keeps_an_earlier_deletion_and_leaves_generation_zero_alone() -> None:
    meta = object_meta()
    meta.generation = 0
    meta.deletionTimestamp.seconds, meta.deletionTimestamp.nanos = NOW_SECONDS - 30, 0
    meta.deletionGracePeriodSeconds = 30
    after = mark_deleted(stored_protobuf(meta), NOW)
    meta.deletionGracePeriodSeconds = 0
    assert after == stored_protobuf(meta)
    assert decoded(after).deletion_timestamp == "2026-03-04T05:05:37Z"


def test_protobuf_mark_deleted_pulls_a_later_deletion_back_to_now_without_bumping_generation() -> None:
    # markAsDeleting: a deletionTimestamp further in the future becomes now; generation moves only when deletion
    # starts.
    meta = object_meta()
    meta.deletionTimestamp.seconds = NOW_SECONDS + 30
    meta.deletionGracePeriodSeconds = 30
    after = mark_deleted(stored_protobuf(meta), NOW)
    meta.deletionTimestamp.seconds, meta.deletionTimestamp.nanos = NOW_SECONDS, 0
    meta.deletionGracePeriodSeconds = 0
    assert after == stored_protobuf(meta)
    assert decoded(after).deletion_timestamp == NOW_RFC3339


@pytest.mark.parametrize("kind", KINDS)
def test_protobuf_remove_finalizer_removes_every_occurrence(kind: str) -> None:
    before = stored_protobuf(object_meta(), kind)
    after = remove_finalizer(before, "example.com/keep")
    assert after == stored_protobuf(object_meta(finalizers=("orphan",)), kind)
    assert decoded(after).finalizers == ("orphan",)
    assert remove_finalizer(after, "orphan") == stored_protobuf(object_meta(finalizers=()), kind)
    assert remove_finalizer(before, "absent") is before


@pytest.mark.parametrize("kind", KINDS)
def test_protobuf_add_finalizer_appends_after_the_existing_ones(kind: str) -> None:
    before = stored_protobuf(object_meta(finalizers=("example.com/keep", "ex.com/<ü>")), kind)
    after = add_finalizer(before, "orphan")
    finalizers = ("example.com/keep", "ex.com/<ü>", "orphan")
    assert after == stored_protobuf(object_meta(finalizers=finalizers), kind)  # every byte, envelope included
    assert split_stored(after)[2] == split_stored(before)[2]
    assert decoded(after) == ObjectInfo(**{**_fields(decoded(before)), "finalizers": finalizers})
    assert add_finalizer(after, "orphan") is after
    assert add_finalizer(before, "ex.com/<ü>") is before


@pytest.mark.parametrize("kind", KINDS)
def test_protobuf_add_finalizer_writes_a_new_field_in_field_number_order(kind: str) -> None:
    # Between ownerReferences (13) and clusterName (15), managedFields (17) and the unknown field 23.
    before = stored_protobuf(object_meta(finalizers=()), kind)
    after = add_finalizer(before, "foregroundDeletion")
    assert after == stored_protobuf(object_meta(finalizers=("foregroundDeletion",)), kind)
    assert decoded(after).finalizers == ("foregroundDeletion",)
    assert add_finalizer(after, "foregroundDeletion") is after
    # The last field of a metadata without any field after finalizers.
    name = MESSAGES["ObjectMeta"](name="x", uid="u")
    value = envelope("v1", "Pod", MESSAGES["Pod"](metadata=name).SerializeToString() + pod_rest())
    expected = MESSAGES["ObjectMeta"](name="x", uid="u", finalizers=["orphan"])
    assert add_finalizer(value, "orphan") == envelope(
        "v1", "Pod", MESSAGES["Pod"](metadata=expected).SerializeToString() + pod_rest()
    )


@pytest.mark.parametrize("kind", KINDS)
def test_protobuf_remove_owner_references(kind: str) -> None:
    before = stored_protobuf(object_meta(), kind)
    after = remove_owner_references(before, {"uid-rs", "uid-shirt", "uid-elsewhere"})
    expected = object_meta()
    del expected.ownerReferences[2]
    del expected.ownerReferences[0]
    assert after == stored_protobuf(expected, kind)
    assert [owner.uid for owner in decoded(after).owner_references] == ["uid-cm"]
    assert remove_owner_references(after, {"uid-rs"}) is after
    del expected.ownerReferences[:]
    assert remove_owner_references(before, {"uid-rs", "uid-cm", "uid-shirt"}) == stored_protobuf(expected, kind)


def test_protobuf_metadata_split_in_several_occurrences_is_merged_into_one() -> None:
    # Occurrences of an embedded message merge when read: the edit writes their merge, once, where the first was.
    first, second = MESSAGES["ObjectMeta"](name="p", uid="u"), MESSAGES["ObjectMeta"](finalizers=["a", "b"])
    raw = MESSAGES["Pod"](metadata=first).SerializeToString() + pod_rest()
    raw += MESSAGES["Pod"](metadata=second).SerializeToString()
    after = remove_finalizer(envelope("v1", "Pod", raw), "a")
    merged = MESSAGES["ObjectMeta"](name="p", uid="u", finalizers=["b"])
    assert after == envelope("v1", "Pod", MESSAGES["Pod"](metadata=merged).SerializeToString() + pod_rest())


def test_protobuf_edits_keep_other_envelope_fields() -> None:
    value = stored_protobuf(object_meta())
    unknown = MESSAGES["Unknown"].FromString(value[4:])
    unknown.contentType = "application/vnd.kubernetes.protobuf"
    with_content_type = b"k8s\x00" + unknown.SerializeToString()
    after = remove_finalizer(with_content_type, "orphan")
    assert MESSAGES["Unknown"].FromString(after[4:]).contentType == "application/vnd.kubernetes.protobuf"
    assert decoded(after).finalizers == ("example.com/keep", "example.com/keep")


# --- JSON ---------------------------------------------------------------------------------------------------------


def go_json(document: Any) -> bytes:
    """What Go's json.Encoder writes: compact, <, >, & escaped, other characters as UTF-8, then a newline."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()


TYPED_POD: dict[str, Any] = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "web-7d4b9-x2x",
        "generateName": "web-7d4b9-",
        "namespace": "shop",
        "uid": "5c1f7e0e",
        "resourceVersion": "1234",
        "generation": 3,
        "creationTimestamp": "2023-11-14T22:13:20Z",
        "labels": {"app": "web", "skip-controller-manager-metadata-caching": "true"},
        "annotations": {"note": "<&> ünïcode \u2028"},
        "ownerReferences": [
            {"apiVersion": v, "kind": k, "name": n, "uid": u, "controller": c, "blockOwnerDeletion": b}
            for v, k, n, u, c, b in OWNERS
        ],
        "finalizers": ["example.com/keep", "orphan", "example.com/keep"],
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2023-11-14T22:15:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, 'k:{"uid":"x"}': {}},
            }
        ],
    },
    "spec": {"containers": [{"name": "web", "image": "nginx:<1.27>"}], "nodeName": "node10"},
    "status": {"phase": "Running", "ratio": 1000000.0},
}


def custom_resource() -> dict[str, Any]:
    """A custom resource as kube-apiserver stores it: encoded from a map, so with sorted keys."""

    def sort(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: sort(value[key]) for key in sorted(value)}
        return [sort(item) for item in value] if isinstance(value, list) else value

    document = json.loads(json.dumps(TYPED_POD))
    document.update(kind="Shirt", apiVersion="stable.example.com/v1")
    result: dict[str, Any] = sort(document)
    return result


def stored_json(document: dict[str, Any]) -> bytes:
    # Go writes 1e+06 for the float 1000000: a spelling no Python encoder writes, which edits must keep.
    return go_json(document).replace(b'"ratio":1000000.0', b'"ratio":1e+06')


def ordered(value: bytes) -> Any:
    """The document with every object as its list of (key, value) pairs: equality then includes key order."""
    return json.loads(value, object_pairs_hook=list)


def metadata_span(value: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after the metadata object."""
    start = value.index(b'"metadata":{') + len(b'"metadata":')
    _, length = json.JSONDecoder().raw_decode(value[start:].decode())
    return value[:start], value[start + len(value[start:].decode()[:length].encode()) :]


def assert_only_metadata_changed(before: bytes, after: bytes, expected_metadata: list[tuple[str, Any]]) -> None:
    assert metadata_span(before) == metadata_span(after)  # every byte outside metadata, the newline included
    metadata = dict(ordered(after))["metadata"]
    assert metadata == expected_metadata  # values and key order
    start = after.index(b'"metadata":') + len(b'"metadata":')
    assert b" " not in after[start : start + 20]  # compact, as Go writes it


DOCUMENTS = {"typed": TYPED_POD, "custom resource": custom_resource()}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_json_mark_deleted(name: str) -> None:
    before = stored_json(DOCUMENTS[name])
    after = mark_deleted(before, NOW)
    metadata = dict(ordered(before))["metadata"]
    metadata = [(k, 4 if k == "generation" else v) for k, v in metadata]
    new = [("deletionTimestamp", NOW_RFC3339), ("deletionGracePeriodSeconds", 0)]
    if name == "typed":  # ObjectMeta's field order: right after creationTimestamp
        position = [k for k, _ in metadata].index("creationTimestamp") + 1
        metadata[position:position] = new
    else:  # a map's keys, sorted
        metadata = sorted(metadata + new, key=lambda pair: pair[0])
    assert_only_metadata_changed(before, after, metadata)
    assert after.endswith(b"}\n")
    assert b"\\u003c\\u0026\\u003e" in after and "ünïcode".encode() in after
    assert decoded(after) == ObjectInfo(**{**_fields(decoded(before)), "deletion_timestamp": NOW_RFC3339})
    assert mark_deleted(after, NOW) is after
    assert mark_deleted(after, NOW + timedelta(hours=1)) is after


def test_json_mark_deleted_respects_an_existing_deletion() -> None:
    document = json.loads(json.dumps(TYPED_POD))
    document["metadata"]["deletionTimestamp"] = "2026-03-04T05:06:37Z"  # later than NOW: pulled back
    document["metadata"]["deletionGracePeriodSeconds"] = 30
    after = mark_deleted(stored_json(document), NOW)
    metadata = json.loads(after)["metadata"]
    assert (metadata["deletionTimestamp"], metadata["deletionGracePeriodSeconds"]) == (NOW_RFC3339, 0)
    assert metadata["generation"] == 3
    document["metadata"]["deletionTimestamp"] = "2026-03-04T06:00:00+01:00"  # earlier than NOW: kept as stored
    after = mark_deleted(stored_json(document), NOW)
    assert json.loads(after)["metadata"]["deletionTimestamp"] == "2026-03-04T06:00:00+01:00"


def test_json_mark_deleted_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        mark_deleted(stored_json(TYPED_POD), datetime(2026, 1, 1))
    east = timezone(timedelta(hours=2))
    assert json.loads(mark_deleted(stored_json(TYPED_POD), NOW.astimezone(east)))["metadata"]["deletionTimestamp"] == (
        NOW_RFC3339
    )


@pytest.mark.parametrize("name", DOCUMENTS)
def test_json_remove_finalizer(name: str) -> None:
    before = stored_json(DOCUMENTS[name])
    after = remove_finalizer(before, "example.com/keep")
    metadata = [(k, ["orphan"] if k == "finalizers" else v) for k, v in dict(ordered(before))["metadata"]]
    assert_only_metadata_changed(before, after, metadata)
    assert decoded(after).finalizers == ("orphan",)
    emptied = remove_finalizer(after, "orphan")
    assert_only_metadata_changed(before, emptied, [(k, v) for k, v in metadata if k != "finalizers"])
    assert remove_finalizer(before, "absent") is before
    assert remove_finalizer(emptied, "orphan") is emptied


@pytest.mark.parametrize("name", DOCUMENTS)
def test_json_add_finalizer_appends_after_the_existing_ones(name: str) -> None:
    before = stored_json(DOCUMENTS[name])
    after = add_finalizer(before, "foregroundDeletion")
    finalizers = ["example.com/keep", "orphan", "example.com/keep", "foregroundDeletion"]
    metadata = [(k, finalizers if k == "finalizers" else v) for k, v in dict(ordered(before))["metadata"]]
    assert_only_metadata_changed(before, after, metadata)
    document = json.loads(json.dumps(DOCUMENTS[name]))
    document["metadata"]["finalizers"] = finalizers
    assert after == stored_json(document)  # every byte as kube-apiserver writes the object
    assert decoded(after) == ObjectInfo(**{**_fields(decoded(before)), "finalizers": tuple(finalizers)})
    assert add_finalizer(after, "foregroundDeletion") is after
    assert add_finalizer(before, "orphan") is before


@pytest.mark.parametrize("name", DOCUMENTS)
def test_json_add_finalizer_inserts_the_member_where_the_apiserver_writes_it(name: str) -> None:
    document = json.loads(json.dumps(DOCUMENTS[name]))
    del document["metadata"]["finalizers"]
    before = stored_json(document)
    after = add_finalizer(before, "orphan")
    metadata = dict(ordered(before))["metadata"]
    keys = [k for k, _ in metadata]
    if name == "typed":  # ObjectMeta's field order: between ownerReferences and managedFields
        position = keys.index("ownerReferences") + 1
    else:  # a map's keys, sorted: after creationTimestamp
        position = keys.index("creationTimestamp") + 1
    metadata[position:position] = [("finalizers", ["orphan"])]
    assert_only_metadata_changed(before, after, metadata)
    assert decoded(after).finalizers == ("orphan",)
    assert add_finalizer(after, "orphan") is after
    if name == "typed":  # nor an ownerReferences to follow: before managedFields
        del document["metadata"]["ownerReferences"]
        keys.remove("ownerReferences")
        after = add_finalizer(stored_json(document), "orphan")
        before_owners = keys[: position - 1]
        assert [k for k, _ in dict(ordered(after))["metadata"]] == [*before_owners, "finalizers", "managedFields"]


def test_json_add_finalizer_escapes_as_go_does() -> None:
    before = stored_json(TYPED_POD)
    after = add_finalizer(before, "ex.com/<a&b>\u2028ü")
    assert after.count(b'"ex.com/\\u003ca\\u0026b\\u003e\\u2028\xc3\xbc"]') == 1
    assert decoded(after).finalizers[-1] == "ex.com/<a&b>\u2028ü"


def test_json_add_finalizer_to_null_duplicate_and_spaced_lists() -> None:
    before = b'{ "metadata" : { "name" : "c", "finalizers" : null } }\n'
    assert add_finalizer(before, "orphan") == b'{ "metadata" : {"name":"c","finalizers":["orphan"]} }\n'
    before = b'{"metadata":{"name":"c","finalizers":[ "a" , "b\\u0026" ],"uid":"u"}}'
    assert (
        add_finalizer(before, "orphan") == b'{"metadata":{"name":"c","finalizers":["a","b\\u0026","orphan"],"uid":"u"}}'
    )
    assert add_finalizer(before, "b&") is before
    # The last occurrence of a key is the one decoders keep: it decides, and the edit leaves one occurrence.
    before = b'{"metadata":{"name":"c","finalizers":["a"],"finalizers":["b"]}}'
    assert add_finalizer(before, "a") == b'{"metadata":{"name":"c","finalizers":["b","a"]}}'
    assert add_finalizer(before, "b") is before
    with pytest.raises(NotAnObject, match="finalizers"):
        add_finalizer(b'{"metadata":{"name":"c","finalizers":"orphan"}}', "orphan")


@pytest.mark.parametrize("name", DOCUMENTS)
def test_json_remove_owner_references(name: str) -> None:
    before = stored_json(DOCUMENTS[name])
    after = remove_owner_references(before, {"uid-rs", "uid-shirt"})
    metadata = dict(ordered(before))["metadata"]
    owners = next(v for k, v in metadata if k == "ownerReferences")
    expected = [(k, [owners[1]] if k == "ownerReferences" else v) for k, v in metadata]
    assert_only_metadata_changed(before, after, expected)
    assert [owner.uid for owner in decoded(after).owner_references] == ["uid-cm"]
    emptied = remove_owner_references(before, {"uid-rs", "uid-cm", "uid-shirt"})
    assert_only_metadata_changed(before, emptied, [(k, v) for k, v in metadata if k != "ownerReferences"])
    assert remove_owner_references(before, set()) is before


def test_json_edits_keep_whitespace_and_escapes_outside_metadata() -> None:
    # Not what kube-apiserver writes, but bytes it did not write are left alone all the same.
    before = b' \n{ "kind" : "ConfigMap",\n "metadata" : { "name" : "c", "finalizers" : [ "a" , "b\\u0026" ] },'
    before += b' "data" : { "k" : "\\u00e9\\/" } }\n\n'
    after = remove_finalizer(before, "a")
    assert after == before.replace(
        b'{ "name" : "c", "finalizers" : [ "a" , "b\\u0026" ] }', b'{"name":"c","finalizers":["b\\u0026"]}'
    )
    assert decoded(after).finalizers == ("b&",)


def test_json_duplicate_keys_edit_the_occurrence_decoders_keep() -> None:
    before = b'{"metadata":{"name":"old"},"metadata":{"name":"c","finalizers":["a","a"],"finalizers":["a","b"]}}'
    after = remove_finalizer(before, "a")
    # The last metadata is the one decoders keep; in it, a key's every occurrence is edited (the last one counts).
    assert after == b'{"metadata":{"name":"old"},"metadata":{"name":"c","finalizers":["b"]}}'
    assert decoded(after).finalizers == ("b",)


def test_odd_owner_references_are_kept_not_refused() -> None:
    odd = [{"uid": ["not", "a", "string"]}, "text", {"uid": "uid-rs"}]
    before = json.dumps({"metadata": {"name": "x", "ownerReferences": odd}}).encode()
    after = remove_owner_references(before, {"uid-rs"})
    assert json.loads(after)["metadata"]["ownerReferences"] == odd[:2]
    # An owner reference whose uid is not UTF-8 stays, and does not stop the others from going.
    name = MESSAGES["ObjectMeta"](name="x").SerializeToString()
    owner = MESSAGES["ObjectMeta"](ownerReferences=[MESSAGES["OwnerReference"](uid="uid-rs")]).SerializeToString()
    odd_owner = MESSAGES["ObjectMeta"](ownerReferences=[MESSAGES["OwnerReference"](uid="\xff")]).SerializeToString()
    odd_owner = odd_owner.replace(b"\xc3\xbf", b"\xff\xff")  # the library refuses invalid UTF-8: patch it in
    value = envelope("v1", "Pod", pb(1, name + owner + odd_owner))
    assert remove_owner_references(value, {"uid-rs"}) == envelope("v1", "Pod", pb(1, name + odd_owner))


# --- what is not an object ------------------------------------------------------------------------------------------

EDITS: list[Callable[[bytes], bytes]] = [
    lambda value: mark_deleted(value, NOW),
    lambda value: add_finalizer(value, "orphan"),
    lambda value: remove_finalizer(value, "orphan"),
    lambda value: remove_owner_references(value, {"uid-rs"}),
]

NOT_OBJECTS = [
    b"",
    b"k8s:enc:aescbc:v1:key1:\x00\x01\x02",
    b"[1,2]",
    b"null",
    b'"text"',
    b'{"kind":"Pod"}',
    b'{"metadata":[]}',
    b'{"metadata":{"name":"x"}} trailing',
    b'{"metadata":{"name":"x"',
    b'{"metadata":{"name":"x", }}',
    b'\xff{"metadata":{}}',
    b'{"metadata":{"name":"\xff"}}',
    b"[" * 100_000,
    b"k8s\x00",
    b"k8s\x00\xff",
    b"k8s\x00" + MESSAGES["Unknown"](contentType="x").SerializeToString(),
    b"k8s\x00" + MESSAGES["Unknown"](raw=b"\x12\x00", contentEncoding="gzip").SerializeToString(),
    envelope("v1", "Pod", pod_rest()),  # an object without metadata
    envelope("v1", "Pod", b"\x0a\x05ab"),  # truncated metadata
]


@pytest.mark.parametrize("value", NOT_OBJECTS)
@pytest.mark.parametrize("edit", EDITS)
def test_values_that_are_not_objects_raise_not_an_object(value: bytes, edit: Callable[[bytes], bytes]) -> None:
    with pytest.raises(NotAnObject):
        edit(value)


def test_an_unreadable_deletion_timestamp_is_not_overwritten() -> None:
    for timestamp in ("yesterday", "2026-03-04T05:06:07", 12):
        value = json.dumps({"metadata": {"name": "x", "deletionTimestamp": timestamp}}).encode()
        with pytest.raises(NotAnObject):
            mark_deleted(value, NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"k8s\x00", b"", b"{", b'{"metadata":']))
def test_any_bytes_raise_not_an_object_or_edit_an_object(data: bytes, prefix: bytes) -> None:
    for edit in EDITS:
        try:
            result = edit(prefix + data)
        except NotAnObject:
            continue
        assert decode(b"/registry/x/y", result, FieldCatalog()) is not None


# --- any finalizers and owners ------------------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "orphan", "foregroundDeletion", "ex.com/<x>", "ü"])


@settings(max_examples=100, deadline=None)
@given(finalizers=st.lists(_names, max_size=6), owners=st.lists(_names, max_size=5), target=_names)
def test_edits_of_any_lists_in_both_encodings(finalizers: list[str], owners: list[str], target: str) -> None:
    meta = MESSAGES["ObjectMeta"](name="x", uid="self", finalizers=finalizers)
    for uid in owners:
        meta.ownerReferences.add(apiVersion="v1", kind="ConfigMap", name=uid, uid=uid)
    document: dict[str, Any] = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "uid": "self"}}
    if finalizers:
        document["metadata"]["finalizers"] = finalizers
    if owners:
        document["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid} for uid in owners
        ]
    for value in (stored_protobuf(meta, "ConfigMap"), stored_json(document)):
        without_finalizer = decoded(remove_finalizer(value, target))
        assert without_finalizer.finalizers == tuple(f for f in finalizers if f != target)
        without_owner = decoded(remove_owner_references(value, {target}))
        assert [owner.uid for owner in without_owner.owner_references] == [uid for uid in owners if uid != target]
        for edited in (remove_finalizer(value, target), remove_owner_references(value, {target})):
            assert decoded(edited).labels == decoded(value).labels
            marked = mark_deleted(edited, NOW)
            assert mark_deleted(marked, NOW) is marked


@settings(max_examples=100, deadline=None)
@given(finalizers=st.lists(_names, max_size=6), target=_names)
def test_add_finalizer_to_any_list_in_both_encodings(finalizers: list[str], target: str) -> None:
    expected = finalizers if target in finalizers else [*finalizers, target]
    meta = MESSAGES["ObjectMeta"](name="x", uid="self", finalizers=finalizers)
    after = add_finalizer(stored_protobuf(meta, "ConfigMap"), target)
    assert after == stored_protobuf(MESSAGES["ObjectMeta"](name="x", uid="self", finalizers=expected), "ConfigMap")
    document: dict[str, Any] = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "uid": "self"}}
    if finalizers:
        document["metadata"]["finalizers"] = finalizers
    value = stored_json(document)
    document["metadata"]["finalizers"] = expected
    assert add_finalizer(value, target) == stored_json(document)
    for edited in (after, add_finalizer(value, target)):
        assert decoded(edited).finalizers == tuple(expected)
        assert add_finalizer(edited, target) is edited

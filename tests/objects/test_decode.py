"""Decoding stored objects: kube-apiserver's JSON and protobuf forms of built-in kinds and custom resources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefabric.objects import FieldCatalog, ObjectInfo, OwnerReference, decode, parse_selector

# --- a tiny protobuf encoder, independent of the decoder ---------------------------------------------------------


def varint(number: int) -> bytes:
    number &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb(number: int, value: bytes | str | int | bool) -> bytes:
    """One field: a varint for ints and bools, length-delimited for bytes and strings."""
    if isinstance(value, bool | int):
        return varint(number << 3) + varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def k8s(api_version: str, kind: str, raw: bytes) -> bytes:
    """The storage form: b"k8s\\x00" + runtime.Unknown{typeMeta{apiVersion, kind}, raw}."""
    return b"k8s\x00" + pb(1, pb(1, api_version) + pb(2, kind)) + pb(2, raw) + pb(3, "") + pb(4, "")


def object_meta(
    name: str,
    namespace: str = "",
    uid: str = "",
    labels: dict[str, str] | None = None,
    finalizers: tuple[str, ...] = (),
    owners: tuple[bytes, ...] = (),
    deletion_seconds: int | None = None,
) -> bytes:
    data = pb(1, name) + pb(2, name[:3] + "-") + pb(3, namespace) + pb(4, "/self/link") + pb(5, uid) + pb(6, "42")
    data += pb(7, 3) + pb(8, pb(1, 1_700_000_000))
    if deletion_seconds is not None:
        data += pb(9, pb(1, deletion_seconds) + pb(2, 500))
    for key, value in (labels or {}).items():
        data += pb(11, pb(1, key) + pb(2, value))
    data += pb(12, pb(1, "note") + pb(2, "x" * 300))  # an annotation
    for owner in owners:
        data += pb(13, owner)
    for finalizer in finalizers:
        data += pb(14, finalizer)
    data += pb(17, pb(1, "kubectl") + pb(2, "Update") + pb(7, pb(1, b"{" + b"f" * 400 + b"}")))  # managedFields
    return data


def decoded(value: bytes, catalog: FieldCatalog | None = None) -> ObjectInfo:
    info = decode(b"/registry/x/y", value, catalog or FieldCatalog())
    assert info is not None
    return info


def stored_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- pods ---------------------------------------------------------------------------------------------------------

POD_JSON = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {
        "name": "web-7d4b9",
        "generateName": "web-",
        "namespace": "shop",
        "uid": "5c1f7e0e-4bd7-4a43-9d3a-2f0b4f0f8a11",
        "resourceVersion": "1234",
        "creationTimestamp": "2024-05-01T10:00:00Z",
        "deletionTimestamp": "2024-05-02T10:00:00Z",
        "labels": {"app": "web", "pod-template-hash": "7d4b9", "tier": "front"},
        "annotations": {"kubernetes.io/psp": "restricted"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d4b9",
                "uid": "0b9e",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "finalizers": ["example.com/keep"],
    },
    "spec": {
        "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}],
        "restartPolicy": "Always",
        "serviceAccountName": "default",
        "nodeName": "node10",
        "schedulerName": "default-scheduler",
    },
    "status": {"phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}]},
}

POD_FIELDS = {
    "metadata.name": "web-7d4b9",
    "metadata.namespace": "shop",
    "spec.nodeName": "node10",
    "spec.restartPolicy": "Always",
    "spec.schedulerName": "default-scheduler",
    "spec.serviceAccountName": "default",
    "spec.hostNetwork": "false",
    "status.phase": "Running",
    "status.podIP": "10.0.0.7",
    "status.nominatedNodeName": "",
}


def pod_protobuf(*, host_network: bool | None = None, pod_ip: str = "10.0.0.7", pod_ips: tuple[str, ...] = ()) -> bytes:
    owner = pb(1, "ReplicaSet") + pb(3, "web-7d4b9") + pb(4, "0b9e") + pb(5, "apps/v1") + pb(6, True) + pb(7, True)
    meta = object_meta(
        "web-7d4b9",
        "shop",
        "5c1f7e0e-4bd7-4a43-9d3a-2f0b4f0f8a11",
        {"app": "web", "pod-template-hash": "7d4b9", "tier": "front"},
        ("example.com/keep",),
        (owner,),
        deletion_seconds=1_714_644_000,
    )
    container = pb(1, "web") + pb(2, "nginx:1.27") + pb(6, pb(3, 80))
    spec = pb(2, container) + pb(3, "Always") + pb(4, 30) + pb(6, "ClusterFirst") + pb(8, "default")
    spec += pb(10, "node10") + pb(19, "default-scheduler")
    if host_network is not None:
        spec += pb(11, host_network)
    status = pb(1, "Running") + pb(5, "192.168.1.5") + pb(6, pod_ip) + pb(7, pb(1, 1_700_000_000))
    for ip in pod_ips:
        status += pb(12, pb(1, ip))
    return k8s("v1", "Pod", pb(1, meta) + pb(2, spec) + pb(3, status))


def test_json_pod() -> None:
    info = decoded(stored_json(POD_JSON))
    assert info == ObjectInfo(
        name="web-7d4b9",
        namespace="shop",
        uid="5c1f7e0e-4bd7-4a43-9d3a-2f0b4f0f8a11",
        labels={"app": "web", "pod-template-hash": "7d4b9", "tier": "front"},
        fields=POD_FIELDS,
        owner_references=(OwnerReference("apps/v1", "ReplicaSet", "web-7d4b9", "0b9e", True, True),),
        finalizers=("example.com/keep",),
        deletion_timestamp="2024-05-02T10:00:00Z",
        encoding="json",
    )


def test_protobuf_pod() -> None:
    info = decoded(pod_protobuf())
    assert info == ObjectInfo(
        name="web-7d4b9",
        namespace="shop",
        uid="5c1f7e0e-4bd7-4a43-9d3a-2f0b4f0f8a11",
        labels={"app": "web", "pod-template-hash": "7d4b9", "tier": "front"},
        fields=POD_FIELDS,
        owner_references=(OwnerReference("apps/v1", "ReplicaSet", "web-7d4b9", "0b9e", True, True),),
        finalizers=("example.com/keep",),
        deletion_timestamp="2024-05-02T10:00:00Z",
        encoding="protobuf",
    )


@pytest.mark.parametrize(("host_network", "expected"), [(None, "false"), (False, "false"), (True, "true")])
def test_pod_host_network(host_network: bool | None, expected: str) -> None:
    assert decoded(pod_protobuf(host_network=host_network)).fields["spec.hostNetwork"] == expected
    pod = json.loads(json.dumps(POD_JSON))
    if host_network is not None:
        pod["spec"]["hostNetwork"] = host_network
    assert decoded(stored_json(pod)).fields["spec.hostNetwork"] == expected


@pytest.mark.parametrize(
    ("pod_ip", "pod_ips", "expected"),
    [("10.0.0.7", ("10.0.0.7", "fd00::7"), "10.0.0.7"), ("", ("fd00::7", "10.0.0.8"), "fd00::7"), ("", (), "")],
)
def test_pod_ip_falls_back_to_the_first_of_pod_ips(pod_ip: str, pod_ips: tuple[str, ...], expected: str) -> None:
    assert decoded(pod_protobuf(pod_ip=pod_ip, pod_ips=pod_ips)).fields["status.podIP"] == expected
    pod = json.loads(json.dumps(POD_JSON))
    pod["status"] = (
        {"podIP": pod_ip, "podIPs": [{"ip": ip} for ip in pod_ips]}
        if pod_ip
        else {"podIPs": [{"ip": ip} for ip in pod_ips]}
    )
    assert decoded(stored_json(pod)).fields["status.podIP"] == expected


def test_a_pending_pod_has_every_field_with_its_empty_value() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "d"}, "spec": {}}
    fields = decoded(stored_json(pod)).fields
    assert fields == {
        "metadata.name": "p",
        "metadata.namespace": "d",
        "spec.nodeName": "",
        "spec.restartPolicy": "",
        "spec.schedulerName": "",
        "spec.serviceAccountName": "",
        "spec.hostNetwork": "false",
        "status.phase": "",
        "status.podIP": "",
        "status.nominatedNodeName": "",
    }
    proto = k8s("v1", "Pod", pb(1, pb(1, "p") + pb(3, "d")))
    assert decoded(proto).fields == fields


def test_field_selectors_on_decoded_pods() -> None:
    for value in (pod_protobuf(), stored_json(POD_JSON)):
        info = decoded(value)
        assert parse_selector("", "spec.nodeName!=node1").matches(info)
        assert not parse_selector("", "spec.nodeName=node1").matches(info)
        assert parse_selector("app=web,!skip", "status.phase=Running,metadata.namespace=shop").matches(info)
        assert not parse_selector("tier notin (front)", "").matches(info)


def _kubernetes_messages() -> dict[str, Any]:
    """Message classes, built by the protobuf library, for a subset of k8s.io/api's generated.proto (same field
    numbers and types): an encoder independent of the hand-written one above."""
    types = descriptor_pb2.FieldDescriptorProto
    string, boolean, message = types.TYPE_STRING, types.TYPE_BOOL, types.TYPE_MESSAGE
    schema = {
        "TypeMeta": [("apiVersion", 1, string), ("kind", 2, string)],
        "Unknown": [
            ("typeMeta", 1, ".k8s.TypeMeta"),
            ("raw", 2, types.TYPE_BYTES),
            ("contentEncoding", 3, string),
            ("contentType", 4, string),
        ],
        "Time": [("seconds", 1, types.TYPE_INT64), ("nanos", 2, types.TYPE_INT32)],
        "OwnerReference": [
            ("kind", 1, string),
            ("name", 3, string),
            ("uid", 4, string),
            ("apiVersion", 5, string),
            ("controller", 6, boolean),
            ("blockOwnerDeletion", 7, boolean),
        ],
        "ObjectMeta": [
            ("name", 1, string),
            ("generateName", 2, string),
            ("namespace", 3, string),
            ("uid", 5, string),
            ("deletionTimestamp", 9, ".k8s.Time"),
            ("labels", 11, ".k8s.ObjectMeta.LabelsEntry", "repeated"),
            ("ownerReferences", 13, ".k8s.OwnerReference", "repeated"),
            ("finalizers", 14, string, "repeated"),
        ],
        "PodSpec": [
            ("restartPolicy", 3, string),
            ("serviceAccountName", 8, string),
            ("nodeName", 10, string),
            ("hostNetwork", 11, boolean),
            ("schedulerName", 19, string),
        ],
        "PodIP": [("ip", 1, string)],
        "PodStatus": [
            ("phase", 1, string),
            ("podIP", 6, string),
            ("nominatedNodeName", 11, string),
            ("podIPs", 12, ".k8s.PodIP", "repeated"),
        ],
        "Pod": [("metadata", 1, ".k8s.ObjectMeta"), ("spec", 2, ".k8s.PodSpec"), ("status", 3, ".k8s.PodStatus")],
    }
    file = descriptor_pb2.FileDescriptorProto(name="k8s_subset.proto", package="k8s", syntax="proto2")
    for name, fields in schema.items():
        described = file.message_type.add(name=name)
        for field_name, number, kind, *repeated in fields:
            field = described.field.add(name=field_name, number=number)
            field.label = types.LABEL_REPEATED if repeated else types.LABEL_OPTIONAL
            if isinstance(kind, str):
                field.type, field.type_name = message, kind
            else:
                field.type = kind
        if name == "ObjectMeta":
            entry = described.nested_type.add(name="LabelsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=string, label=types.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=string, label=types.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("k8s." + name)) for name in schema}


def test_a_pod_encoded_by_the_protobuf_library() -> None:
    messages = _kubernetes_messages()
    pod = messages["Pod"]()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = "web-7d4b9", "shop", "5c1f"
    pod.metadata.labels.update({"app": "web", "tier": "front"})
    pod.metadata.deletionTimestamp.seconds = 1_714_644_000
    pod.metadata.finalizers.append("example.com/keep")
    owner = pod.metadata.ownerReferences.add(kind="ReplicaSet", name="web-7d4b9", uid="0b9e", apiVersion="apps/v1")
    owner.controller = True
    pod.spec.nodeName, pod.spec.restartPolicy, pod.spec.hostNetwork = "node10", "Always", True
    pod.status.phase = "Running"
    pod.status.podIPs.add(ip="fd00::7")
    unknown = messages["Unknown"](raw=pod.SerializeToString(), contentType="application/vnd.kubernetes.protobuf")
    unknown.typeMeta.apiVersion, unknown.typeMeta.kind = "v1", "Pod"
    info = decoded(b"k8s\x00" + unknown.SerializeToString())
    assert (info.name, info.namespace, info.uid) == ("web-7d4b9", "shop", "5c1f")
    assert info.labels == {"app": "web", "tier": "front"}
    assert info.owner_references == (OwnerReference("apps/v1", "ReplicaSet", "web-7d4b9", "0b9e", True, False),)
    assert (info.finalizers, info.deletion_timestamp) == (("example.com/keep",), "2024-05-02T10:00:00Z")
    assert info.fields == {
        "metadata.name": "web-7d4b9",
        "metadata.namespace": "shop",
        "spec.nodeName": "node10",
        "spec.restartPolicy": "Always",
        "spec.schedulerName": "",
        "spec.serviceAccountName": "",
        "spec.hostNetwork": "true",
        "status.phase": "Running",
        "status.podIP": "fd00::7",
        "status.nominatedNodeName": "",
    }


# --- other built-in kinds ------------------------------------------------------------------------------------------


def test_secret() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "d"}, "type": "Opaque"}
    assert decoded(stored_json(secret)).fields == {"metadata.name": "s", "metadata.namespace": "d", "type": "Opaque"}
    proto = k8s(
        "v1", "Secret", pb(1, pb(1, "s") + pb(3, "d")) + pb(2, pb(1, "k") + pb(2, b"\x00\xff")) + pb(3, "Opaque")
    )
    assert decoded(proto).fields == {"metadata.name": "s", "metadata.namespace": "d", "type": "Opaque"}


@pytest.mark.parametrize(("unschedulable", "expected"), [(None, "false"), (True, "true"), (False, "false")])
def test_node(unschedulable: bool | None, expected: str) -> None:
    spec: dict[str, Any] = {"podCIDR": "10.0.1.0/24"}
    proto_spec = pb(1, "10.0.1.0/24")
    if unschedulable is not None:
        spec["unschedulable"] = unschedulable
        proto_spec += pb(4, unschedulable)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1", "labels": {"zone": "a"}}, "spec": spec}
    fields = {"metadata.name": "node1", "metadata.namespace": "", "spec.unschedulable": expected}
    assert decoded(stored_json(node)).fields == fields
    info = decoded(k8s("v1", "Node", pb(1, pb(1, "node1") + pb(11, pb(1, "zone") + pb(2, "a"))) + pb(2, proto_spec)))
    assert info.fields == fields
    assert info.labels == {"zone": "a"}


def test_event_source_falls_back_to_the_reporting_component() -> None:
    reference = pb(1, "Pod") + pb(2, "d") + pb(3, "p") + pb(4, "uid-1") + pb(5, "v1") + pb(6, "77") + pb(7, "spec")
    base = pb(1, pb(1, "e") + pb(3, "d")) + pb(2, reference) + pb(3, "Scheduled") + pb(9, "Normal")
    expected = {
        "metadata.name": "e",
        "metadata.namespace": "d",
        "involvedObject.kind": "Pod",
        "involvedObject.namespace": "d",
        "involvedObject.name": "p",
        "involvedObject.uid": "uid-1",
        "involvedObject.apiVersion": "v1",
        "involvedObject.resourceVersion": "77",
        "involvedObject.fieldPath": "spec",
        "reason": "Scheduled",
        "reportingComponent": "default-scheduler",
        "source": "default-scheduler",
        "type": "Normal",
    }
    assert decoded(k8s("v1", "Event", base + pb(14, "default-scheduler"))).fields == expected
    with_source = k8s("v1", "Event", base + pb(5, pb(1, "kubelet") + pb(2, "node1")) + pb(14, "default-scheduler"))
    assert decoded(with_source).fields == {**expected, "source": "kubelet"}
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e", "namespace": "d"},
        "involvedObject": {
            "kind": "Pod",
            "namespace": "d",
            "name": "p",
            "uid": "uid-1",
            "apiVersion": "v1",
            "resourceVersion": "77",
            "fieldPath": "spec",
        },
        "reason": "Scheduled",
        "source": {},
        "type": "Normal",
        "reportingComponent": "default-scheduler",
    }
    assert decoded(stored_json(event)).fields == expected


@pytest.mark.parametrize(("succeeded", "expected"), [(None, "0"), (3, "3")])
def test_job(succeeded: int | None, expected: str) -> None:
    status = {} if succeeded is None else {"succeeded": succeeded}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "d"}, "status": status}
    fields = {"metadata.name": "j", "metadata.namespace": "d", "status.successful": expected}
    assert decoded(stored_json(job)).fields == fields
    proto_status = pb(4, 1) if succeeded is None else pb(4, 1) + pb(5, succeeded)
    assert decoded(k8s("batch/v1", "Job", pb(1, pb(1, "j") + pb(3, "d")) + pb(3, proto_status))).fields == fields


def test_replica_counts_of_replica_sets_and_replication_controllers() -> None:
    for api_version, kind in (("apps/v1", "ReplicaSet"), ("v1", "ReplicationController")):
        value = k8s(api_version, kind, pb(1, pb(1, "r") + pb(3, "d")) + pb(2, pb(1, 3)) + pb(3, pb(1, 2) + pb(2, 2)))
        assert decoded(value).fields == {"metadata.name": "r", "metadata.namespace": "d", "status.replicas": "2"}
        empty = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "r", "namespace": "d"}, "status": {}}
        assert decoded(stored_json(empty)).fields["status.replicas"] == "0"
    # An int32 field holding a negative number is sign-extended to ten bytes on the wire.
    negative = k8s("apps/v1", "ReplicaSet", pb(1, pb(1, "r")) + pb(3, pb(1, -1)))
    assert decoded(negative).fields["status.replicas"] == "-1"


def test_namespace_persistent_volume_and_claim_also_answer_to_name() -> None:
    namespace = k8s("v1", "Namespace", pb(1, pb(1, "shop")) + pb(3, pb(1, "Terminating")))
    assert decoded(namespace).fields == {
        "metadata.name": "shop",
        "metadata.namespace": "",
        "status.phase": "Terminating",
        "name": "shop",
    }
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "d"}}
    assert decoded(stored_json(claim)).fields == {"metadata.name": "data", "metadata.namespace": "d", "name": "data"}


def test_certificate_signing_request_service_and_resource_slice() -> None:
    csr = k8s(
        "certificates.k8s.io/v1",
        "CertificateSigningRequest",
        pb(1, pb(1, "c")) + pb(2, pb(1, b"PEM") + pb(7, "kubernetes.io/kubelet-serving")),
    )
    assert decoded(csr).fields["spec.signerName"] == "kubernetes.io/kubelet-serving"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"clusterIP": "None", "type": "ClusterIP"},
    }
    assert decoded(stored_json(service)).fields == {
        "metadata.name": "s",
        "metadata.namespace": "",
        "spec.clusterIP": "None",
        "spec.type": "ClusterIP",
    }
    slice_ = k8s(
        "resource.k8s.io/v1", "ResourceSlice", pb(1, pb(1, "rs")) + pb(2, pb(1, "gpu.example.com") + pb(3, "node1"))
    )
    assert decoded(slice_).fields == {
        "metadata.name": "rs",
        "metadata.namespace": "",
        "spec.nodeName": "node1",
        "spec.driver": "gpu.example.com",
    }


def test_other_kinds_have_only_name_and_namespace() -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "d"},
        "data": {"type": "x"},
    }
    assert decoded(stored_json(config_map)).fields == {"metadata.name": "c", "metadata.namespace": "d"}
    deployment = k8s("apps/v1", "Deployment", pb(1, pb(1, "dep") + pb(3, "d")) + pb(3, pb(1, 5)))
    assert decoded(deployment).fields == {"metadata.name": "dep", "metadata.namespace": "d"}


def test_the_kind_comes_from_the_object_not_the_key() -> None:
    secret = k8s("v1", "Secret", pb(1, pb(1, "s")) + pb(3, "Opaque"))
    assert decode(b"/registry/pods/d/s", secret, FieldCatalog()).fields["type"] == "Opaque"  # type: ignore[union-attr]


def test_repeated_metadata_fields_merge_as_protobuf_does() -> None:
    # Later label entries win; an embedded message split in two occurrences is merged.
    meta = pb(1, "a") + pb(11, pb(1, "k") + pb(2, "1")) + pb(11, pb(1, "k") + pb(2, "2"))
    value = k8s("v1", "Pod", pb(1, meta) + pb(2, pb(10, "n1")) + pb(2, pb(3, "Never")))
    info = decoded(value)
    assert info.labels == {"k": "2"}
    assert (info.fields["spec.nodeName"], info.fields["spec.restartPolicy"]) == ("n1", "Never")


def test_deletion_timestamp_renders_as_metav1_time() -> None:
    assert (
        decoded(k8s("v1", "Pod", pb(1, object_meta("p", deletion_seconds=0)))).deletion_timestamp
        == "1970-01-01T00:00:00Z"
    )
    assert decoded(k8s("v1", "Pod", pb(1, object_meta("p")))).deletion_timestamp is None
    year_one = -62135596800  # Go's zero time.Time
    assert decoded(k8s("v1", "Pod", pb(1, object_meta("p", deletion_seconds=year_one)))).deletion_timestamp == (
        "0001-01-01T00:00:00Z"
    )
    assert (
        decode(
            b"/registry/pods/d/p", k8s("v1", "Pod", pb(1, object_meta("p", deletion_seconds=1 << 60))), FieldCatalog()
        )
        is None
    )


# --- custom resources ---------------------------------------------------------------------------------------------

CRD_KEY = b"/registry/apiextensions.k8s.io/customresourcedefinitions/shirts.stable.example.com"


def crd_json(storage_fields: list[str], served_fields: list[str] | None = None) -> bytes:
    versions = [
        {"name": "v1", "served": True, "storage": True, "selectableFields": [{"jsonPath": p} for p in storage_fields]},
        {
            "name": "v2",
            "served": True,
            "storage": False,
            "selectableFields": [{"jsonPath": p} for p in served_fields or []],
        },
    ]
    return stored_json(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "shirts.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "names": {"plural": "shirts", "singular": "shirt", "kind": "Shirt", "listKind": "ShirtList"},
                "scope": "Namespaced",
                "versions": versions,
            },
        }
    )


def crd_protobuf(storage_fields: list[str]) -> bytes:
    names = pb(1, "shirts") + pb(2, "shirt") + pb(4, "Shirt") + pb(5, "ShirtList")
    v1 = pb(1, "v1") + pb(2, True) + pb(3, True) + b"".join(pb(9, pb(1, path)) for path in storage_fields)
    v2 = pb(1, "v2") + pb(2, True) + pb(3, False) + pb(9, pb(1, ".spec.other"))
    spec = pb(1, "stable.example.com") + pb(3, names) + pb(4, "Namespaced") + pb(7, v1) + pb(7, v2)
    return k8s(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", pb(1, pb(1, "shirts.stable.example.com")) + pb(2, spec)
    )


SHIRT = stored_json(
    {
        "apiVersion": "stable.example.com/v1",
        "kind": "Shirt",
        "metadata": {"name": "s1", "namespace": "d", "labels": {"size": "10"}},
        "spec": {
            "color": "blue",
            "size": 10,
            "pressed": True,
            "ratio": 0.5,
            "big": 1e21,
            "none": None,
            "tags": {"example.com/team": "a"},
        },
    }
)


@pytest.mark.parametrize("crd", [crd_json, crd_protobuf])
def test_custom_resource_fields_come_from_the_crd_storage_version(crd: Any) -> None:
    catalog = FieldCatalog()
    assert decoded(SHIRT, catalog).fields == {"metadata.name": "s1", "metadata.namespace": "d"}
    paths = [
        ".spec.color",
        ".spec.size",
        ".spec.pressed",
        ".spec.ratio",
        ".spec.big",
        ".spec.none",
        ".spec.missing.deep",
        ".spec.tags['example.com/team']",
        ".spec.items[0]",  # not a chain of keys: never a selectable field
    ]
    assert catalog.learn(CRD_KEY, crd(paths)) is True
    assert catalog.learn(CRD_KEY, crd(paths)) is False  # nothing changed
    assert decoded(SHIRT, catalog).fields == {
        "metadata.name": "s1",
        "metadata.namespace": "d",
        "spec.color": "blue",
        "spec.size": "10",
        "spec.pressed": "true",
        "spec.ratio": "0.5",
        "spec.big": "1e+21",
        "spec.none": "",
        "spec.missing.deep": "",
        "spec.tags['example.com/team']": "a",
    }
    assert parse_selector("size>9", "spec.color=blue,spec.size!=1").matches(decoded(SHIRT, catalog))
    assert catalog.learn(CRD_KEY, crd([".spec.color"])) is True
    assert set(decoded(SHIRT, catalog).fields) == {"metadata.name", "metadata.namespace", "spec.color"}
    assert catalog.learn(CRD_KEY, None) is True
    assert decoded(SHIRT, catalog).fields == {"metadata.name": "s1", "metadata.namespace": "d"}
    assert catalog.learn(CRD_KEY, None) is False


def test_the_catalog_ignores_other_keys_and_other_versions_fields() -> None:
    catalog = FieldCatalog()
    assert catalog.learn(b"/registry/pods/d/p", stored_json(POD_JSON)) is False
    assert catalog.learn(CRD_KEY, crd_json([], [".spec.color"])) is False
    assert "spec.color" not in decoded(SHIRT, catalog).fields
    assert catalog.learn(CRD_KEY, b"k8s:enc:aescbc:v1:key1:\x00\x01") is False


# --- values that are not objects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"k8s:enc:aescbc:v1:key1:\x8a\x01garbage",
        b"k8s\x00",
        b"k8s\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"k8s\x00\x0a\x05abc",
        b"k8s\x00" + pb(2, b"\x0b"),  # a group start
        b"k8s\x00" + pb(1, pb(1, "v1") + pb(2, "Pod")) + pb(2, pb(1, pb(1, b"\xff\xfe"))),  # a name that is not UTF-8
        b"k8s\x00" + pb(2, b"\x00"),  # field number 0
        b"k8s\x00" + pb(3, "gzip") + pb(2, pb(1, pb(1, "p"))),
        b"[1, 2]",
        b'"text"',
        b"{not json",
        b'{"metadata": []}',
        b"\xff\xfe{",
        b"10.0.0.1",
        b"[" * 100_000,
    ],
)
def test_values_that_are_not_objects_decode_to_none(value: bytes) -> None:
    assert decode(b"/registry/pods/d/p", value, FieldCatalog()) is None


def test_odd_json_shapes_decode_without_raising() -> None:
    odd = {
        "apiVersion": 1,
        "kind": ["Pod"],
        "metadata": {"name": 5, "labels": {"a": 1, "b": "x"}, "ownerReferences": [1, {"kind": 2}], "finalizers": "f"},
        "spec": "none",
    }
    info = decoded(stored_json(odd))
    assert (info.name, info.labels, info.finalizers) == ("", {"b": "x"}, ())
    assert info.owner_references == (OwnerReference("", "", "", "", False, False),)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": [], "status": {"podIPs": "x"}}
    assert decoded(stored_json(pod)).fields["spec.nodeName"] == ""


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_protobuf_never_raises(data: bytes) -> None:
    decode(b"/registry/pods/d/p", b"k8s\x00" + data, FieldCatalog())
    decode(b"/registry/pods/d/p", pod_protobuf()[: len(data)] + data, FieldCatalog())
    FieldCatalog().learn(CRD_KEY, b"k8s\x00" + data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=30,
    )
)
def test_any_json_never_raises(document: Any) -> None:
    catalog = FieldCatalog()
    catalog.learn(CRD_KEY, json.dumps(document).encode())
    catalog.learn(CRD_KEY, crd_json([".spec", ".spec.a"]))
    for candidate in (
        document,
        {"apiVersion": "stable.example.com/v1", "kind": "Shirt", "metadata": {}, "spec": document},
    ):
        decode(b"/registry/pods/d/p", json.dumps(candidate).encode(), catalog)

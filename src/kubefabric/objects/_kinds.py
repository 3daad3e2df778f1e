"""The selectable fields of Kubernetes' built-in kinds, and how each one's value is derived.

Each kind's fields and their values follow the `GetAttrs` / `ToSelectableFields` functions of
kubernetes/pkg/registry/**/strategy.go (metadata.name and metadata.namespace, added by the caller, are common to
every kind). A field is read from the stored object by its path, given both as JSON names and as protobuf field
numbers (from k8s.io/api's generated.proto files), and rendered as Kubernetes renders it: strings as they are,
booleans with strconv.FormatBool, integers with strconv.Itoa, so an absent field reads "", "false" or "0".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubefabric.objects import _wire

Render = Literal["string", "bool", "int"]


@dataclass(frozen=True, slots=True)
class _Step:
    json_name: str
    number: int
    first_item: bool = False  # a repeated field, of which the first item is read (status.podIPs[0])


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    path: tuple[_Step, ...]
    render: Render = "string"
    fallback: bool = False  # only used when the field of the same name reads ""


def _field(name: str, path: str, render: Render = "string", *, fallback: bool = False) -> _Field:
    """A field from a path written "spec=2.nodeName=10" (a `[0]` suffix reads a repeated field's first item)."""
    steps = []
    for part in path.split("."):
        json_name, number = part.split("=")
        first_item = json_name.endswith("[0]")
        steps.append(_Step(json_name.removesuffix("[0]"), int(number), first_item))
    return _Field(name, tuple(steps), render, fallback)


def _name_alias() -> _Field:
    # Namespaces, persistent volumes and their claims also answer to "name": "This is a bug, but we need to support
    # it for backward compatibility."
    return _field("name", "metadata=1.name=1")


_FIELDS_OF_KIND: dict[tuple[str, str], tuple[_Field, ...]] = {
    # pkg/registry/core/pod/strategy.go ToSelectableFields, on the v1 Pod: the internal status.podIPs[0] is the
    # v1 status.podIP, or the first of status.podIPs when podIP is empty (Convert_v1_PodStatus_To_core_PodStatus);
    # spec.hostNetwork moves into the internal securityContext, always set by the conversion.
    ("", "Pod"): (
        _field("spec.nodeName", "spec=2.nodeName=10"),
        _field("spec.restartPolicy", "spec=2.restartPolicy=3"),
        _field("spec.schedulerName", "spec=2.schedulerName=19"),
        _field("spec.serviceAccountName", "spec=2.serviceAccountName=8"),
        _field("spec.hostNetwork", "spec=2.hostNetwork=11", "bool"),
        _field("status.phase", "status=3.phase=1"),
        _field("status.podIP", "status=3.podIP=6"),
        _field("status.podIP", "status=3.podIPs[0]=12.ip=1", fallback=True),
        _field("status.nominatedNodeName", "status=3.nominatedNodeName=11"),
    ),
    # pkg/registry/core/event/strategy.go ToSelectableFields: "source" falls back to the reporting controller
    # (v1 reportingComponent).
    ("", "Event"): (
        _field("involvedObject.kind", "involvedObject=2.kind=1"),
        _field("involvedObject.namespace", "involvedObject=2.namespace=2"),
        _field("involvedObject.name", "involvedObject=2.name=3"),
        _field("involvedObject.uid", "involvedObject=2.uid=4"),
        _field("involvedObject.apiVersion", "involvedObject=2.apiVersion=5"),
        _field("involvedObject.resourceVersion", "involvedObject=2.resourceVersion=6"),
        _field("involvedObject.fieldPath", "involvedObject=2.fieldPath=7"),
        _field("reason", "reason=3"),
        _field("reportingComponent", "reportingComponent=14"),
        _field("source", "source=5.component=1"),
        _field("source", "reportingComponent=14", fallback=True),
        _field("type", "type=9"),
    ),
    ("", "Secret"): (_field("type", "type=3"),),
    ("", "Namespace"): (_field("status.phase", "status=3.phase=1"), _name_alias()),
    ("", "Node"): (_field("spec.unschedulable", "spec=2.unschedulable=4", "bool"),),
    ("", "ReplicationController"): (_field("status.replicas", "status=3.replicas=1", "int"),),
    ("", "Service"): (
        _field("spec.clusterIP", "spec=2.clusterIP=3"),
        _field("spec.type", "spec=2.type=4"),
    ),
    ("", "PersistentVolume"): (_name_alias(),),
    ("", "PersistentVolumeClaim"): (_name_alias(),),
    ("apps", "ReplicaSet"): (_field("status.replicas", "status=3.replicas=1", "int"),),
    ("batch", "Job"): (_field("status.successful", "status=3.succeeded=5", "int"),),
    ("certificates.k8s.io", "CertificateSigningRequest"): (_field("spec.signerName", "spec=2.signerName=7"),),
    ("certificates.k8s.io", "ClusterTrustBundle"): (_field("spec.signerName", "spec=2.signerName=1"),),
    ("resource.k8s.io", "ResourceSlice"): (
        _field("spec.nodeName", "spec=2.nodeName=3"),
        _field("spec.driver", "spec=2.driver=1"),
    ),
}


def _render_json(value: Any, render: Render) -> str:
    if render == "string":
        return value if isinstance(value, str) else ""
    if render == "bool":
        return "true" if value is True else "false"
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "0"


def _render_protobuf(found: _wire.Fields | None, number: int, render: Render) -> str:
    if found is None:
        return _render_json(None, render)
    if render == "string":
        return _wire.last_string(found, number)
    value = _wire.last_varint(found, number)
    if render == "bool":
        return "true" if value else "false"
    # An int32 travels as a sign-extended 64-bit varint.
    value &= 0xFFFFFFFF
    return str(value - (1 << 32) if value >= 1 << 31 else value)


@dataclass(slots=True)
class _Node:
    """The fields read from one protobuf message: its own field numbers, and the messages nested in it."""

    leaves: dict[int, list[_Field]] = field(default_factory=dict)
    children: dict[int, _Node] = field(default_factory=dict)
    first_item: set[int] = field(default_factory=set)
    wanted: frozenset[int] = frozenset()


def _tree(fields: tuple[_Field, ...]) -> _Node:
    root = _Node()
    for selectable in fields:
        node = root
        for step in selectable.path[:-1]:
            if step.first_item:
                node.first_item.add(step.number)
            node = node.children.setdefault(step.number, _Node())
        node.leaves.setdefault(selectable.path[-1].number, []).append(selectable)
    _set_wanted(root)
    return root


def _set_wanted(node: _Node) -> None:
    node.wanted = frozenset(node.leaves) | frozenset(node.children)
    for child in node.children.values():
        _set_wanted(child)


class KindFields:
    """How to derive one built-in kind's selectable fields from its stored JSON or protobuf form."""

    __slots__ = ("_fields", "_tree", "top_level_numbers")

    def __init__(self, fields: tuple[_Field, ...]) -> None:
        self._fields = fields
        self._tree = _tree(fields)
        # ObjectMeta (field 1) is read from every object.
        self.top_level_numbers = self._tree.wanted | {1}

    def from_json(self, obj: Mapping[str, Any], into: dict[str, str]) -> None:
        fallbacks: dict[str, str] = {}
        for selectable in self._fields:
            value: Any = obj
            for step in selectable.path:
                value = value.get(step.json_name) if isinstance(value, dict) else None
                if step.first_item:
                    value = value[0] if isinstance(value, list) and value else None
            (fallbacks if selectable.fallback else into)[selectable.name] = _render_json(value, selectable.render)
        _apply_fallbacks(fallbacks, into)

    def from_protobuf(self, top_level: _wire.Fields, into: dict[str, str]) -> None:
        """`top_level` holds the object's fields `top_level_numbers`, already scanned."""
        fallbacks: dict[str, str] = {}
        _walk(self._tree, top_level, into, fallbacks)
        _apply_fallbacks(fallbacks, into)


def _walk(node: _Node, found: _wire.Fields | None, into: dict[str, str], fallbacks: dict[str, str]) -> None:
    """Render `node`'s fields from its scanned message `found` (None: the message is absent)."""
    for number, selectables in node.leaves.items():
        for selectable in selectables:
            value = _render_protobuf(found, number, selectable.render)
            (fallbacks if selectable.fallback else into)[selectable.name] = value
    for number, child in node.children.items():
        nested: _wire.Fields | None = None
        if found is not None and number in found.payloads:
            if number in node.first_item:
                data = _wire.repeated(found, number)[0]
            else:
                data = _wire.last_message(found, number)
            nested = _wire.scan(data, child.wanted)
        _walk(child, nested, into, fallbacks)


def _apply_fallbacks(fallbacks: dict[str, str], into: dict[str, str]) -> None:
    for name, value in fallbacks.items():
        if not into[name]:
            into[name] = value


_KINDS = {kind: KindFields(fields) for kind, fields in _FIELDS_OF_KIND.items()}
_NO_FIELDS = KindFields(())


def builtin_kind_fields(group: str, kind: str) -> KindFields:
    """The selectable fields of a built-in kind beyond metadata.name and metadata.namespace (none for others)."""
    return _KINDS.get((group, kind), _NO_FIELDS)

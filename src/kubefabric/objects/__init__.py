"""Kubernetes objects as kube-apiserver stores them: label and field selectors, parsed and matched exactly as
Kubernetes does, the metadata and selectable fields of stored objects, decoded from JSON or protobuf, and the
edits of their metadata that garbage collection writes, and protobuf's varint, which the server writes
responses with too.

Pure functions without I/O, the lowest layer: stores, core and protocol all use it.
"""

from kubefabric.objects._decode import (
    COLLECTED_LABEL,
    FOREGROUND_FINALIZER,
    ORPHAN_FINALIZER,
    FieldCatalog,
    ObjectInfo,
    OwnerReference,
    decode,
)
from kubefabric.objects._rewrite import (
    NotAnObject,
    add_finalizer,
    mark_deleted,
    remove_finalizer,
    remove_owner_references,
)
from kubefabric.objects._selectors import (
    Operator,
    Requirement,
    Selector,
    SelectorError,
    label_integer,
    parse_selector,
)
from kubefabric.objects._wire_write import varint

__all__ = [
    "COLLECTED_LABEL",
    "FOREGROUND_FINALIZER",
    "ORPHAN_FINALIZER",
    "FieldCatalog",
    "NotAnObject",
    "ObjectInfo",
    "Operator",
    "OwnerReference",
    "Requirement",
    "Selector",
    "SelectorError",
    "add_finalizer",
    "decode",
    "label_integer",
    "mark_deleted",
    "parse_selector",
    "remove_finalizer",
    "remove_owner_references",
    "varint",
]

"""Kubernetes objects as kube-apiserver stores them: label and field selectors, parsed and matched exactly as
Kubernetes does, the metadata and selectable fields of stored objects, decoded from JSON or protobuf, and the
edits of their metadata that garbage collection writes.

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
]

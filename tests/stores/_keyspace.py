"""The key layout the query-plan tests load: Kubernetes-style keys under a few resources."""

from __future__ import annotations


def prefix(resource: int) -> bytes:
    return b"/registry/resource%02d/" % resource


def key(resource: int, name: int) -> bytes:
    return prefix(resource) + b"object%05d" % name

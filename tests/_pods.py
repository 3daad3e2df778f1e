"""Pods as kube-apiserver stores them (JSON), written straight through a store's own write path with
the attributes the core computes for them: a fast way to fill a database for plan tests and the
selector benchmark."""

from __future__ import annotations

import json

from kubefabric.objects import FieldCatalog, decode
from kubefabric.stores import Change, KeyValue, Store, WriteBatch, attributes

PODS = b"/registry/pods/default/"
APPS = 100  # values of the `app` label: one selects 1% of the pods
NODES = 40  # values of spec.nodeName: one selects 2.5%
BATCH = 1000


def pod_key(number: int) -> bytes:
    return PODS + b"pod%07d" % number


def pod(number: int) -> bytes:
    """About 1 KiB, like a small real pod."""
    name = f"pod{number:07d}"
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": f"00000000-0000-4000-8000-{number:012d}",
                "resourceVersion": "",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app": f"app{number % APPS}", "pod-template-hash": f"h{number % 7}"},
                "annotations": {"kubernetes.io/description": "x" * 300},
            },
            "spec": {
                "nodeName": f"node{number % NODES}",
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "containers": [{"name": "app", "image": "registry.example/app:1.0", "resources": {}}],
            },
            "status": {"phase": "Running", "podIP": f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"},
        }
    ).encode()


async def load_pods(store: Store, count: int) -> int:
    """Write pods 0..count-1 into a new, empty store, one revision each; the head revision."""
    await store.open()
    catalog = FieldCatalog()
    try:
        for first in range(0, count, BATCH):
            last = min(first + BATCH, count)
            batch = WriteBatch(last + 1)
            for number in range(first, last):
                revision = number + 2
                kv = KeyValue(pod_key(number), revision, revision, 1, pod(number), 0)
                batch.changes.append(Change(kv, 0, None))
                batch.attributes += attributes(kv.key, revision, decode(kv.key, kv.value, catalog))
            await store.write(batch)
    finally:
        await store.close()
    return count + 1

"""Field selectors on custom resources: the selectableFields of their CustomResourceDefinition.

The CRD is written the way kube-apiserver stores it; what it declares selectable counts from that write on, for
objects written before it as for those written after. Values are fmt.Sprint of the field (integers in decimal,
booleans as true/false), "" where the object lacks it.
"""

from __future__ import annotations

import pytest

from tests._client import Etcd, prefix_end
from tests.conformance._support import WatchStream
from tests.selectors._keyspace import select
from tests.selectors._reference import CustomResource, CustomResourceKind, Meta, parse_selector

SHIRTS = CustomResourceKind("stable.example.com", "shirts", "Shirt")
# Same field names, no CRD: nothing of it is selectable.
HATS = CustomResourceKind("other.example.com", "hats", "Hat")


def shirt(name: str, namespace: str, kind: CustomResourceKind = SHIRTS, **spec: object) -> CustomResource:
    return CustomResource(kind, Meta(name, namespace, {"app": "shop"}), spec)


def listed(
    client: Etcd, kind: CustomResourceKind, namespace: str, field_selector: str, label_selector: str = ""
) -> list[bytes]:
    prefix = kind.prefix + f"{namespace}/".encode()
    return [kv.key for kv in select(client, label_selector, field_selector, prefix, prefix_end(prefix)).kvs]


def write(client: Etcd, *resources: CustomResource) -> None:
    for resource in resources:
        client.put(resource.key, resource.encode())


def expected(
    resources: list[CustomResource], paths: tuple[str, ...], field_selector: str, label_selector: str = ""
) -> list[bytes]:
    """The reference's answer, which each test also spells out by name."""
    selector = parse_selector(label_selector, field_selector)
    return sorted(r.key for r in resources if selector.matches(r.selectable(paths)))


def test_selection_follows_the_crd_as_it_changes(store_client: Etcd) -> None:
    namespace = "crd-change"
    store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.color",)))
    green = shirt("green", namespace, color="green", size=10)
    red = shirt("red", namespace, color="red", size=8)
    plain = shirt("plain", namespace)
    write(store_client, green, red, plain)
    before = [green, red, plain]

    assert listed(store_client, SHIRTS, namespace, "spec.color=green") == [green.key]
    assert listed(store_client, SHIRTS, namespace, "spec.color!=green") == [plain.key, red.key]
    assert listed(store_client, SHIRTS, namespace, "spec.color=") == [plain.key]
    assert listed(store_client, SHIRTS, namespace, "spec.color=green", "app=shop") == [green.key]
    assert listed(store_client, SHIRTS, namespace, "spec.color=green", "app!=shop") == []
    assert listed(store_client, SHIRTS, namespace, "spec.color=green") == expected(
        before, (".spec.color",), "spec.color=green"
    )

    # Now size is selectable and color is not: a field the kind does not have reads as "".
    store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.size",)))
    small = shirt("small", namespace, color="green", size=10)
    write(store_client, small)
    assert listed(store_client, SHIRTS, namespace, "spec.size=10") == [green.key, small.key]
    assert listed(store_client, SHIRTS, namespace, "spec.size==8") == [red.key]
    assert listed(store_client, SHIRTS, namespace, "spec.color=green") == []
    assert listed(store_client, SHIRTS, namespace, "spec.color=") == sorted(r.key for r in [*before, small])
    assert listed(store_client, SHIRTS, namespace, "spec.size=10") == expected(
        [*before, small], (".spec.size",), "spec.size=10"
    )

    # An object updated after the change is selected by the new field too.
    write(store_client, shirt("red", namespace, color="red", size=10))
    assert listed(store_client, SHIRTS, namespace, "spec.size=10") == [green.key, red.key, small.key]


def test_values_read_as_fmt_sprint_prints_them(store_client: Etcd) -> None:
    namespace = "crd-values"
    paths = (".spec.folded", ".spec.size", ".spec.details.fabric", ".spec.color")
    store_client.put(SHIRTS.crd_key, SHIRTS.crd(paths))
    folded = shirt("folded", namespace, folded=True, size=10, details={"fabric": "linen"}, color="dark,green")
    flat = shirt("flat", namespace, folded=False, size=8, details={"fabric": "wool"}, color="a=b")
    bare = shirt("bare", namespace)
    resources = [folded, flat, bare]
    write(store_client, *resources)
    cases = {
        "spec.folded=true": [folded],
        "spec.folded=True": [],
        "spec.folded=false": [flat],
        "spec.folded=": [bare],
        "spec.size=10": [folded],
        "spec.size!=10": [bare, flat],
        "spec.details.fabric=linen": [folded],
        r"spec.color=dark\,green": [folded],
        r"spec.color=a\=b": [flat],
        r"spec.color!=a\=b,spec.folded!=true": [bare],
    }
    for field_selector, selected in cases.items():
        assert expected(resources, paths, field_selector) == sorted(r.key for r in selected), field_selector
        assert listed(store_client, SHIRTS, namespace, field_selector) == sorted(r.key for r in selected), (
            field_selector
        )


@pytest.mark.parametrize("field_selector", ["spec.color=green", "spec.color!=green"])
def test_custom_resources_without_a_crd_have_only_metadata_fields(store_client: Etcd, field_selector: str) -> None:
    namespace = "crd-missing"
    store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.color",)))
    hat = shirt("hat", namespace, kind=HATS, color="green")
    write(store_client, hat)
    assert listed(store_client, HATS, namespace, field_selector) == expected([hat], (), field_selector)
    assert listed(store_client, HATS, namespace, "metadata.name=hat") == [hat.key]


def test_deleting_the_crd_ends_its_selectable_fields(store_client: Etcd) -> None:
    namespace = "crd-deleted"
    store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.color",)))
    green = shirt("green", namespace, color="green")
    write(store_client, green)
    assert listed(store_client, SHIRTS, namespace, "spec.color=green") == [green.key]
    store_client.delete(SHIRTS.crd_key)
    assert listed(store_client, SHIRTS, namespace, "spec.color=green") == []


def test_watch_follows_the_crd_as_it_changes(store_client: Etcd) -> None:
    namespace = "crd-watch"
    prefix = SHIRTS.prefix + f"{namespace}/".encode()
    store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.color",)))
    with WatchStream(store_client) as stream:
        watch_id = stream.create(prefix, prefix_end(prefix), fieldSelector="spec.size=10")
        write(store_client, shirt("before", namespace, size=10))  # size is not selectable yet: reads ""
        store_client.put(SHIRTS.crd_key, SHIRTS.crd((".spec.size",)))
        after = shirt("after", namespace, size=10)
        write(store_client, after, shirt("smaller", namespace, size=8))
        assert [event.kv.key for event in stream.events(1, watch_id)] == [after.key]
        stream.assert_quiet()

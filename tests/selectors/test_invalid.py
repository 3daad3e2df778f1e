"""Selectors that do not parse are refused with INVALID_ARGUMENT naming them; clients without selectors see no change."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from tests._client import Etcd, prefix_end, range_op
from tests.selectors._keyspace import select
from tests.selectors._reference import Meta, Pod, SelectorSyntaxError, encrypted, parse_fields, parse_labels

PREFIX = b"/registry/pods/invalid/"

# Each refused by labels.Parse: unclosed and missing parentheses, a dangling comma, no key, a value after !key,
# an integer comparison with a non-integer, invalid key and value characters, a value over 63 characters.
BAD_LABEL_SELECTORS = [
    "app in (web",
    "app in web",
    "app=web,",
    "=web",
    "!app=web",
    "rank>x1",
    "rank<-3",
    "-app=web",
    "app=web!",
    "app in (a b)",
    "app=" + "v" * 64,
]
# Each refused by fields.ParseSelector: no operator, an unescaped = or trailing backslash, an unknown escape.
BAD_FIELD_SELECTORS = ["spec.nodeName", "spec.nodeName=a=b", "spec.nodeName=node1\\", "spec.nodeName=a\\b", " "]


def rejects(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except SelectorSyntaxError:
        return True
    return False


def assert_invalid_argument(error: pytest.ExceptionInfo[grpc.RpcError], selector: str) -> None:
    call = error.value
    assert isinstance(call, grpc.Call)
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT, call.details()
    # Named as typed, or quoted the way Go's %q quotes it (backslashes doubled).
    details = call.details() or ""
    assert selector in details or json.dumps(selector) in details, details


@pytest.mark.parametrize("label_selector", BAD_LABEL_SELECTORS)
def test_range_refuses_a_label_selector_that_does_not_parse(store_client: Etcd, label_selector: str) -> None:
    assert rejects(parse_labels, label_selector), "Kubernetes accepts this selector"
    with pytest.raises(grpc.RpcError) as error:
        select(store_client, label_selector, "", PREFIX, prefix_end(PREFIX))
    assert_invalid_argument(error, label_selector)


@pytest.mark.parametrize("field_selector", BAD_FIELD_SELECTORS)
def test_range_refuses_a_field_selector_that_does_not_parse(store_client: Etcd, field_selector: str) -> None:
    assert rejects(parse_fields, field_selector), "Kubernetes accepts this selector"
    with pytest.raises(grpc.RpcError) as error:
        select(store_client, "app=web", field_selector, PREFIX, prefix_end(PREFIX))
    assert_invalid_argument(error, field_selector)


def test_txn_refuses_a_selector_that_does_not_parse_in_either_branch(store_client: Etcd) -> None:
    """As etcd checks every request of a txn before running it, the branch not taken included."""
    bad = "app in (web"
    before = store_client.revision()
    for success, failure in [
        ([range_op(PREFIX, prefix_end(PREFIX), labelSelector=bad)], []),
        ([], [range_op(PREFIX, labelSelector=bad)]),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            store_client.txn([], success, failure)
        assert_invalid_argument(error, bad)
    assert store_client.revision() == before


def test_clients_without_selectors_see_every_key(store_client: Etcd) -> None:
    """Objects, encrypted values and values that are no object at all, read the way they always were."""
    web = Pod(Meta("web", "invalid", {"app": "web"}))
    stored = {
        PREFIX + b"db": Pod(Meta("db", "invalid", {"app": "db"})).encode("protobuf"),
        PREFIX + b"plain": b"not an object",
        PREFIX + b"sealed": encrypted(b"ciphertext"),
        PREFIX + b"web": web.encode("json"),
    }
    for key, value in stored.items():
        store_client.put(key, value)
    everything = sorted(stored.items())
    for options in [{}, {"labelSelector": "", "fieldSelector": ""}, {"labelSelector": " ", "fieldSelector": ","}]:
        response = store_client.get(PREFIX, prefix_end(PREFIX), **options)
        assert [(kv.key, kv.value) for kv in response.kvs] == everything, options
        assert (response.count, response.more) == (len(everything), False), options
        page = store_client.get(PREFIX, prefix_end(PREFIX), limit=1, **options)
        assert ([kv.key for kv in page.kvs], page.count, page.more) == ([everything[0][0]], len(everything), True), (
            options
        )
    # A selector leaves what is not an object in, and the client that asked for it sorts it out.
    selected = select(store_client, "app=web", "", PREFIX, prefix_end(PREFIX))
    assert [kv.key for kv in selected.kvs] == [PREFIX + b"plain", PREFIX + b"sealed", PREFIX + b"web"]

"""Field selectors: parsing, escaping and matching, ported from k8s.io/apimachinery's pkg/fields/selector_test.go."""

from __future__ import annotations

import pytest

from kubefabric.objects import ObjectInfo, Requirement, SelectorError, parse_selector


def fields_of(selector: str) -> tuple[Requirement, ...]:
    return parse_selector("", selector).fields


def info(fields: dict[str, str]) -> ObjectInfo:
    return ObjectInfo(
        name=fields.get("metadata.name", ""),
        namespace=fields.get("metadata.namespace", ""),
        uid="",
        labels={},
        fields=fields,
        owner_references=(),
        finalizers=(),
        deletion_timestamp=None,
        encoding="protobuf",
    )


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", []),
        (",", []),
        ("a=b", [("a", "=", "b")]),
        ("a==b", [("a", "=", "b")]),
        ("a!=b", [("a", "!=", "b")]),
        ("a=", [("a", "=", "")]),
        ("=b", [("", "=", "b")]),
        ("x=a,y=b,z=c", [("x", "=", "a"), ("y", "=", "b"), ("z", "=", "c")]),
        ("z=c,x=a", [("x", "=", "a"), ("z", "=", "c")]),
        ("metadata.name=foo,spec.nodeName!=n1", [("metadata.name", "=", "foo"), ("spec.nodeName", "!=", "n1")]),
        ("spec.nodeName!=n1,metadata.name=foo", [("metadata.name", "=", "foo"), ("spec.nodeName", "!=", "n1")]),
        # Escapes: \, \= and \\ (TestUnescapeValue, TestSplitTerms).
        ("a=b\\,c", [("a", "=", "b,c")]),
        ("a=b\\=c", [("a", "=", "b=c")]),
        ("a=b\\\\c", [("a", "=", "b\\c")]),
        ("a=\\\\,b=c", [("a", "=", "\\"), ("b", "=", "c")]),
        ("a!=\\,\\=\\\\", [("a", "!=", ",=\\")]),
        # The first operator splits the term: field names take no escapes.
        ("a!b=c", [("a!b", "=", "c")]),
        ("a=!b", [("a", "=", "!b")]),
        ("x y = z", [("x y ", "=", " z")]),
        ("a=b,", [("a", "=", "b")]),
    ],
)
def test_parse(selector: str, expected: list[tuple[str, str, str]]) -> None:
    assert fields_of(selector) == tuple(Requirement(key, op, (value,)) for key, op, value in expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "detail"),
    [
        ("x", "invalid selector: 'x'; can't understand 'x'"),
        ("a=b,c", "invalid selector: 'a=b,c'; can't understand 'c'"),
        ("a=b,c,d=e", "invalid selector: 'a=b,c,d=e'; can't understand 'c'"),
        ("a=b,c", "invalid selector: 'a=b,c'; can't understand 'c'"),
        ("x=a||y=b", "invalid field selector: unescaped character in value: 61"),
        ("a==b=c", "invalid field selector: unescaped character in value: 61"),
        ("a=\\x", "invalid field selector: invalid escape sequence: \\x"),
        ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
    ],
)
def test_parse_errors_carry_kubernetes_messages(selector: str, detail: str) -> None:
    with pytest.raises(SelectorError) as raised:
        parse_selector("", selector)
    assert raised.value.detail == detail
    assert str(raised.value).startswith("field selector ")


@pytest.mark.parametrize(
    ("selector", "fields", "expected"),
    [
        ("", {"x": "y"}, True),
        ("x=y", {"x": "y"}, True),
        ("x=y,z=w", {"x": "y", "z": "w"}, True),
        ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
        ("x=z", {}, False),
        ("x=y", {"x": "z"}, False),
        ("x=y,z=w", {"x": "w", "z": "w"}, False),
        ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
        ("x==y", {"x": "y"}, True),
        # A field the object does not have reads as "".
        ("x=", {}, True),
        ("x!=", {}, False),
        ("x!=y", {}, True),
        # != compares whole values, never substrings.
        ("spec.nodeName!=node1", {"spec.nodeName": "node10"}, True),
        ("spec.nodeName!=node1", {"spec.nodeName": "node1"}, False),
        ("spec.nodeName=node1", {"spec.nodeName": "node10"}, False),
        ("metadata.name=a\\,b", {"metadata.name": "a,b"}, True),
        ("status.phase!=Running,status.phase!=Pending", {"status.phase": "Succeeded"}, True),
        ("status.phase!=Running,status.phase!=Pending", {"status.phase": "Pending"}, False),
    ],
)
def test_matching(selector: str, fields: dict[str, str], expected: bool) -> None:
    assert parse_selector("", selector).matches(info(fields)) is expected


def test_labels_and_fields_must_both_match() -> None:
    selector = parse_selector("app=web", "metadata.name=a")
    matching = ObjectInfo("a", "", "", {"app": "web"}, {"metadata.name": "a"}, (), (), None, "json")
    assert selector.matches(matching)
    assert not selector.matches(ObjectInfo("b", "", "", {"app": "web"}, {"metadata.name": "b"}, (), (), None, "json"))
    assert not selector.matches(ObjectInfo("a", "", "", {"app": "db"}, {"metadata.name": "a"}, (), (), None, "json"))

"""The reference model against Kubernetes' own selector tests (labels/selector_test.go, fields/selector_test.go).

The selector tests trust the model; these cases, taken from Kubernetes' tables, are why.
"""

from __future__ import annotations

import pytest

from tests.selectors._reference import (
    FieldRequirement,
    LabelOperator,
    LabelRequirement,
    SelectorSyntaxError,
    go_parse_int,
    parse_fields,
    parse_labels,
)

# TestSelectorParse and TestSetSelectorParser: accepted, with the requirements Kubernetes parses them into.
PARSED: dict[str, list[tuple[str, LabelOperator, set[str]]]] = {
    "x=a,y=b,z=c": [("x", "=", {"a"}), ("y", "=", {"b"}), ("z", "=", {"c"})],
    "": [],
    "x= ,z= ": [("x", "=", {""}), ("z", "=", {""})],
    "!x": [("x", "!", set())],
    "x>1,z<5": [("x", ">", {"1"}), ("z", "<", {"5"})],
    "\rx": [("x", "exists", set())],
    "this-is-another-dns.domain.com/key-with-dash in (so,what)": [
        ("this-is-another-dns.domain.com/key-with-dash", "in", {"so", "what"})
    ],
    "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)": [
        ("0.1.2.domain/99", "notin", {"10.10.100.1", "tick.tack.clock"})
    ],
    "foo  in\t (abc)": [("foo", "in", {"abc"})],
    "x in (abc,)": [("x", "in", {"abc", ""})],
    "x in ()": [("x", "in", {""})],
    "x notin (, a)": [("x", "notin", {"", "a"})],
    "a ": [("a", "exists", set())],
    "a in (x,y,notin, z,in)": [("a", "in", {"in", "notin", "x", "y", "z"})],
    "notin=in": [("notin", "=", {"in"})],
}
# Refused by the same tables, and by NewRequirement's validation.
REFUSED = [
    "x=a||y=b",
    "x==a==b",
    "!x=a",
    "x<a",
    ",x,y",
    "x nott in (y)",
    "a in (xyz),",
    "a in (xyz)b notin ()",
    "a in (xyz abc)",
    "a notin(",
    "a (",
    "(",
    "a" * 254,
]
# TestSelectorMatches and TestRequirementSelectorMatching.
MATCHES = [
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    ("!x", {"y": "z"}, True),
    ("!x", {"x": "z"}, False),
    ("x>1", {"x": "2"}, True),
    ("x>1", {"x": "0"}, False),
    ("x<1", {"x": "0"}, True),
    ("x=z", {}, False),
    ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
    ("x notin (),y", {"y": ""}, True),
    ("!x,y", {"y": ""}, True),
    ("x notin (),!y", {"y": ""}, False),
    ("x in ()", {"y": "baz"}, False),
    ("z>1", {"z": "v2"}, False),
]


@pytest.mark.parametrize("text", list(PARSED))
def test_label_selectors_parse_as_kubernetes_parses_them(text: str) -> None:
    expected = {LabelRequirement(key, op, frozenset(values)) for key, op, values in PARSED[text]}
    assert set(parse_labels(text)) == expected


@pytest.mark.parametrize("text", REFUSED)
def test_label_selectors_kubernetes_refuses_are_refused(text: str) -> None:
    with pytest.raises(SelectorSyntaxError):
        parse_labels(text)


@pytest.mark.parametrize(("text", "labels", "matched"), MATCHES)
def test_label_selectors_match_as_kubernetes_matches(text: str, labels: dict[str, str], matched: bool) -> None:
    assert all(r.matches(labels) for r in parse_labels(text)) == matched


def test_field_selectors_unescape_as_kubernetes_does() -> None:
    """fields' TestSelectorMatches: a value holding =, a comma and a backslash, all escaped."""
    fields = {"foo": "bar", "baz": "blah", "complex": "=value\\,\\"}
    selector = parse_fields("foo=bar,baz=blah,complex=\\=value\\\\\\,\\\\")
    assert FieldRequirement("complex", False, "=value\\,\\") in selector
    assert all(r.matches(fields) for r in selector)
    assert not all(r.matches(fields) for r in parse_fields("foo=bar,foobar=bar,baz=blah"))


def test_integers_read_as_go_parse_int_reads_them() -> None:
    assert [go_parse_int(v) for v in ("10", "007", "-3", "+5", "9223372036854775807")] == [10, 7, -3, 5, 2**63 - 1]
    assert [go_parse_int(v) for v in ("x1", "", "1_000", "9223372036854775808", " 1", "0x10")] == [None] * 6

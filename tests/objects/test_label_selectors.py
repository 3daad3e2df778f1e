"""Label selectors: parsing, validation messages and matching, ported from k8s.io/apimachinery's
pkg/labels/selector_test.go, plus the shapes other etcd replacements got wrong."""

from __future__ import annotations

import pytest

from kubefabric.objects import ObjectInfo, Requirement, Selector, SelectorError, label_integer, parse_selector


def labels_of(selector: str) -> tuple[Requirement, ...]:
    return parse_selector(selector, "").labels


def info(labels: dict[str, str]) -> ObjectInfo:
    return ObjectInfo(
        name="n",
        namespace="ns",
        uid="u",
        labels=labels,
        fields={"metadata.name": "n", "metadata.namespace": "ns"},
        owner_references=(),
        finalizers=(),
        deletion_timestamp=None,
        encoding="json",
    )


def matches(selector: str, labels: dict[str, str]) -> bool:
    return parse_selector(selector, "").matches(info(labels))


# TestSelectorParse's good strings, which Kubernetes prints back without their spaces.
@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("x=a,y=b,z=c", [("x", "=", ("a",)), ("y", "=", ("b",)), ("z", "=", ("c",))]),
        ("", []),
        ("x!=a,y=b", [("x", "!=", ("a",)), ("y", "=", ("b",))]),
        ("x=", [("x", "=", ("",))]),
        ("x= ", [("x", "=", ("",))]),
        ("x=,z= ", [("x", "=", ("",)), ("z", "=", ("",))]),
        ("x= ,z= ", [("x", "=", ("",)), ("z", "=", ("",))]),
        ("!x", [("x", "!", ())]),
        ("x>1", [("x", "gt", ("1",))]),
        ("x>1,z<5", [("x", "gt", ("1",)), ("z", "lt", ("5",))]),
        ("x==a", [("x", "=", ("a",))]),
        # The canonical forms Selector.String() prints.
        (
            "app=web,env in (a,b),!skip-controller-manager-metadata-caching",
            [("app", "=", ("web",)), ("env", "in", ("a", "b")), ("skip-controller-manager-metadata-caching", "!", ())],
        ),
        (
            "x in (abc,def),y notin (jkl),z",
            [("x", "in", ("abc", "def")), ("y", "notin", ("jkl",)), ("z", "exists", ())],
        ),
        (
            "x notin (abc),y in (jkl,mno),z notin ()",
            [("x", "notin", ("abc",)), ("y", "in", ("jkl", "mno")), ("z", "notin", ("",))],
        ),
        ("x=abc,y==jkl,z!=a,z", [("x", "=", ("abc",)), ("y", "=", ("jkl",)), ("z", "!=", ("a",)), ("z", "exists", ())]),
        # TestSetSelectorParser.
        ("\rx", [("x", "exists", ())]),
        ("this-is-a-dns.domain.com/key-with-dash", [("this-is-a-dns.domain.com/key-with-dash", "exists", ())]),
        (
            "this-is-another-dns.domain.com/key-with-dash in (so,what)",
            [("this-is-another-dns.domain.com/key-with-dash", "in", ("so", "what"))],
        ),
        (
            "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
            [("0.1.2.domain/99", "notin", ("10.10.100.1", "tick.tack.clock"))],
        ),
        ("foo  in\t (abc)", [("foo", "in", ("abc",))]),
        ("x notin\n (abc)", [("x", "notin", ("abc",))]),
        ("x  notin\t\t\t(abc,def)", [("x", "notin", ("abc", "def"))]),
        ("x in (abc,)", [("x", "in", ("", "abc"))]),
        ("x in ()", [("x", "in", ("",))]),
        (
            "x notin (abc,def),bar,z in (),w",
            [("bar", "exists", ()), ("w", "exists", ()), ("x", "notin", ("abc", "def")), ("z", "in", ("",))],
        ),
        ("x,y in (a)", [("x", "exists", ()), ("y", "in", ("a",))]),
        ("x notin ( )", [("x", "notin", ("",))]),
        ("x notin (, a)", [("x", "notin", ("", "a"))]),
        ("a ", [("a", "exists", ())]),
        ("a in (x,y,notin, z,in)", [("a", "in", ("in", "notin", "x", "y", "z"))]),
        ("x in (b,a,b)", [("x", "in", ("a", "b"))]),
        # Go's lexer reads NUL as the end of its input.
        ("a=b \x00,!!", [("a", "=", ("b",))]),
    ],
)
def test_parse(selector: str, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    assert labels_of(selector) == tuple(Requirement(*requirement) for requirement in expected)  # type: ignore[arg-type]


def test_requirements_on_one_key_keep_their_order_and_sort_by_key() -> None:
    assert labels_of("x=a,a=x") == labels_of("a=x,x=a")
    assert labels_of("a!=x,a!=y") == (Requirement("a", "!=", ("x",)), Requirement("a", "!=", ("y",)))


_VALUE_REGEX = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_NAME_REGEX = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
    "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


@pytest.mark.parametrize(
    ("selector", "detail"),
    [
        ("x=a||y=b", f'unable to parse requirement: values[0][x]: Invalid value: "a||y": {_VALUE_REGEX}'),
        ("x==a==b", "found '==', expected: ',' or 'end of string'"),
        ("!x=a", "found '=', expected: ',' or 'end of string'"),
        (
            "x<a",
            "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be "
            "an integer",
        ),
        (
            "x>a-",
            "unable to parse requirement: [values[0]: Invalid value: \"a-\": for 'Gt', 'Lt' operators, the value must "
            f'be an integer, values[0][x]: Invalid value: "a-": {_VALUE_REGEX}]',
        ),
        ("x nott in (y)", "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt"),
        ("a in (xyz),", "found '', expected: identifier after ','"),
        ("a in (xyz)b notin ()", "found 'b', expected: ',' or 'end of string'"),
        ("a in (xyz abc)", "unable to parse requirement: found 'abc', expected: ',' or ')'"),
        ("a notin(", "unable to parse requirement: found '', expected: ',', ')' or identifier"),
        ("a (", "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"),
        ("(", "found '(', expected: !, identifier, or 'end of string'"),
        (",x,y", "found ',', expected: !, identifier, or 'end of string'"),
        ("=a", "found '=', expected: !, identifier, or 'end of string'"),
        ("!!", "unable to parse requirement: found '!', expected: identifier"),
        ("x in a", "unable to parse requirement: found 'a' expected: '('"),
        ("x in (a=b)", "unable to parse requirement: found '=', expected: ',' or ')'"),
        ("x in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
        ("x in (a,=)", "unable to parse requirement: found '=', expected: ',', or identifier"),
        ("x=(", "unable to parse requirement: found '(', expected: identifier"),
        ("-x", f'unable to parse requirement: <nil>: Invalid value: "-x": name part {_NAME_REGEX}'),
        (
            "a/b/c",
            f'unable to parse requirement: <nil>: Invalid value: "a/b/c": a valid label key {_NAME_REGEX} with an '
            "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        ),
        ("/a", 'unable to parse requirement: <nil>: Invalid value: "/a": prefix part must be non-empty'),
        (
            "Example.com/a",
            'unable to parse requirement: <nil>: Invalid value: "Example.com/a": prefix part a lowercase RFC 1123 '
            "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with "
            "an alphanumeric character (e.g. 'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            "a/",
            f'unable to parse requirement: <nil>: Invalid value: "a/": name part must be non-empty; name part '
            f"{_NAME_REGEX}",
        ),
        (
            "k" * 64,
            f'unable to parse requirement: <nil>: Invalid value: "{"k" * 64}": name part must be no more than 63 bytes',
        ),
        (
            "x=" + "v" * 64,
            f'unable to parse requirement: values[0][x]: Invalid value: "{"v" * 64}": must be no more than 63 bytes',
        ),
        (
            "x>99999999999999999999",
            "unable to parse requirement: values[0]: Invalid value: \"99999999999999999999\": for 'Gt', 'Lt' "
            "operators, the value must be an integer",
        ),
    ],
)
def test_parse_errors_carry_kubernetes_messages(selector: str, detail: str) -> None:
    with pytest.raises(SelectorError) as raised:
        parse_selector(selector, "")
    assert raised.value.detail == detail
    assert str(raised.value).startswith("label selector ")
    assert selector.replace("\n", "\\n") in str(raised.value)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        # TestSelectorMatches.
        ("", {"x": "y"}, True),
        ("x=y", {"x": "y"}, True),
        ("x=y,z=w", {"x": "y", "z": "w"}, True),
        ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
        ("notin=in", {"notin": "in"}, True),
        ("x", {"x": "z"}, True),
        ("!x", {"y": "z"}, True),
        ("x>1", {"x": "2"}, True),
        ("x<1", {"x": "0"}, True),
        ("x=z", {}, False),
        ("x=y", {"x": "z"}, False),
        ("x=y,z=w", {"x": "w", "z": "w"}, False),
        ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
        ("x", {"y": "z"}, False),
        ("!x", {"x": "z"}, False),
        ("x>1", {"x": "0"}, False),
        ("x<1", {"x": "2"}, False),
        ("foo=bar", {"foo": "bar", "baz": "blah"}, True),
        ("baz=blah", {"foo": "bar", "baz": "blah"}, True),
        ("foo=bar,baz=blah", {"foo": "bar", "baz": "blah"}, True),
        ("foo=blah", {"foo": "bar", "baz": "blah"}, False),
        ("baz=bar", {"foo": "bar", "baz": "blah"}, False),
        ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
        # TestRequirementSelectorMatching.
        ("x in (foo),y notin (alpha)", {"x": "foo", "y": "baz"}, True),
        ("x in (foo),y in (alpha)", {"x": "foo", "y": "baz"}, False),
        ("x notin (),y", {"y": ""}, True),
        ("!x,y", {"y": ""}, True),
        ("x notin (),!y", {"y": ""}, False),
        ("x in ()", {"y": "baz"}, False),
        ("z>1", {"z": "2"}, True),
        ("z>1", {"z": "v2"}, False),
        # `!key` on objects with several labels.
        ("!skip", {"app": "web", "tier": "front", "env": "prod"}, True),
        ("!skip", {"app": "web", "skip": "", "env": "prod"}, False),
        ("app=web,!skip", {"app": "web", "tier": "front"}, True),
        # `!=` and `notin` match objects lacking the key.
        ("env!=prod", {"app": "web"}, True),
        ("env notin (prod,staging)", {"app": "web"}, True),
        ("env notin (prod,staging)", {"env": "staging"}, False),
        ("env!=prod", {"env": "prod"}, False),
        ("env in (prod)", {"app": "web"}, False),
        # Several requirements on one key are ANDed.
        ("a!=x,a!=y", {"a": "z"}, True),
        ("a!=x,a!=y", {"a": "x"}, False),
        ("a!=x,a!=y", {"a": "y"}, False),
        ("a!=x,a!=y", {}, True),
        ("a>1,a<5", {"a": "3"}, True),
        ("a>1,a<5", {"a": "5"}, False),
        # gt and lt compare numbers, not strings.
        ("n>9", {"n": "10"}, True),
        ("n<9", {"n": "10"}, False),
        ("n<10", {"n": "9"}, True),
        ("n>9", {"n": "09"}, False),
        ("n>8", {"n": "09"}, True),
        ("n>0", {"n": "-1"}, False),
        ("n<1", {"n": "-3"}, True),
        ("n>1", {"n": "+3"}, True),
        ("n>1", {"n": "3.5"}, False),
        ("n<1", {"n": "3.5"}, False),
        ("n>1", {"n": ""}, False),
        ("n<1", {"n": " 0"}, False),
        ("n<1", {"n": "1_0"}, False),
        ("n<1", {"n": "٠"}, False),
        ("n>1", {"n": "9223372036854775807"}, True),
        ("n>1", {"n": "9223372036854775808"}, False),
        ("n<1", {"n": "-9223372036854775808"}, True),
        ("n<1", {}, False),
        ("n>1", {}, False),
    ],
)
def test_matching(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


def test_an_object_that_could_not_be_decoded_matches_every_selector() -> None:
    assert parse_selector("a=b,!c", "metadata.name=x").matches(None)


def test_empty() -> None:
    assert parse_selector("", "").empty
    assert Selector().empty
    assert not parse_selector("a", "").empty
    assert not parse_selector("", "a=b").empty


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("10", 10),
        ("-10", -10),
        ("+7", 7),
        ("007", 7),
        ("9223372036854775807", 9223372036854775807),
        ("-9223372036854775808", -9223372036854775808),
        ("9223372036854775808", None),
        ("", None),
        ("+", None),
        ("1e3", None),
        ("1_000", None),
        (" 1", None),
        ("0x10", None),
        ("١", None),
    ],
)
def test_label_integer_reads_as_go_parse_int(value: str, expected: int | None) -> None:
    assert label_integer(value) == expected

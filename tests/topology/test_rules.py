"""The topology rules as pure logic: routing, range candidates, validation and extension."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import example as hypothesis_example
from hypothesis import strategies as st

from kubefabric.core import Backend, Topology, TopologyError
from kubefabric.core._topology import NAMESPACED_RESOURCES
from tests.topology import DEFAULT_ENDPOINT, EXAMPLE

TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "kube-apiserver-1.24-workload.jsonl.gz"
RBAC = ("clusterrolebindings", "clusterroles", "rolebindings", "roles", "serviceaccounts")
# Rows of NAMESPACED_RESOURCES for resources Kubernetes added after the 1.24 of the trace.
ADDED_AFTER_1_24 = {
    "leasecandidates",
    "resourceclaims",
    "resourceclaimtemplates",
    "podschedulings",
    "podschedulingcontexts",
}


def the_example() -> Topology:
    return Topology.parse(EXAMPLE, DEFAULT_ENDPOINT, "topology.yaml")


def names(backends: list[Backend]) -> list[str]:
    return [backend.name for backend in backends]


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of keys that start with prefix (b"" = no end)."""
    prefix = prefix.rstrip(b"\xff")
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix else b""


# -- the recorded trace ------------------------------------------------------------------------------


def _messages() -> Iterator[dict[str, Any]]:
    if not TRACE.exists():
        pytest.skip(f"the recorded trace is not at {TRACE}")
    with gzip.open(TRACE, "rt") as lines:
        for line in lines:
            yield json.loads(line)["msg"]


def _key_fields(message: object) -> Iterator[tuple[bytes, bytes]]:
    """(key, range_end) of every message or sub-message that has a key, anywhere in it."""
    if isinstance(message, dict):
        if isinstance(message.get("key"), str):
            yield base64.b64decode(message["key"]), base64.b64decode(message.get("range_end", ""))
        for value in message.values():
            yield from _key_fields(value)
    elif isinstance(message, list):
        for value in message:
            yield from _key_fields(value)


@cache
def trace_keys_and_ranges() -> tuple[frozenset[bytes], frozenset[tuple[bytes, bytes]]]:
    keys: set[bytes] = set()
    ranges: set[tuple[bytes, bytes]] = set()
    for message in _messages():
        for key, range_end in _key_fields(message):
            (ranges.add((key, range_end)) if range_end else keys.add(key))
    return frozenset(keys), frozenset(ranges)


def trace_namespaced_prefixes() -> set[str]:
    """The built-in namespaced resources' key prefixes, as the namespace controller listed them when it
    deleted namespace team-a (the Shirts are the custom resource)."""
    _, ranges = trace_keys_and_ranges()
    prefixes = {
        start.decode().removeprefix("/registry/").removesuffix("/team-a/")
        for start, _ in ranges
        if start.endswith(b"/team-a/")
    }
    return prefixes - {"stable.example.com/shirts"}


def expected_backend(key: bytes, namespaced: set[str]) -> str:
    """Where the example sends a key, written out independently of the module."""
    if not key.startswith(b"/registry/"):
        return "default"
    below = key.removeprefix(b"/registry/").decode()
    if below.startswith(RBAC):
        return "rbac"
    if any(below.startswith(f"{prefix}/kube-system/") for prefix in namespaced):
        return "kube-system"
    if below.startswith("pods/"):
        return "pods"
    if below.startswith("stable.example.com/shirts/"):
        return "shirts"
    return "default"


def test_the_namespaced_resource_table_holds_every_namespaced_resource_of_the_trace() -> None:
    table = {prefix for _, _, _, prefix in NAMESPACED_RESOURCES}
    seen = trace_namespaced_prefixes()

    assert "services/specs" in seen and "ingress" in seen and "controllers" in seen, seen
    assert table - ADDED_AFTER_1_24 == seen
    assert len(table) == len(NAMESPACED_RESOURCES), "one row per key prefix"


def test_every_key_of_the_trace_goes_where_the_example_says() -> None:
    topology = the_example()
    keys, ranges = trace_keys_and_ranges()
    namespaced = trace_namespaced_prefixes()
    # Every resource of the trace in kube-system and elsewhere, and cluster-scoped objects named kube-system.
    resources = {start.removeprefix(b"/registry/").rstrip(b"/") for start, _ in ranges if start.endswith(b"/")}
    made_up = {b"/registry/" + resource + b"/kube-system/x" for resource in resources}
    made_up |= {b"/registry/" + resource + b"/kube-system" for resource in resources}
    made_up |= {b"/registry/" + resource + b"/team-b/y" for resource in resources}

    routed = {key: topology.route(key).name for key in keys | made_up}

    assert routed == {key: expected_backend(key, namespaced) for key in keys | made_up}
    assert set(routed.values()) == {"rbac", "kube-system", "pods", "shirts", "default"}


@pytest.mark.parametrize(
    ("key", "backend"),
    [
        (b"/registry/pods/kube-system/coredns", "kube-system"),
        (b"/registry/pods/team-a/web-1", "pods"),
        (b"/registry/services/specs/kube-system/kube-dns", "kube-system"),
        (b"/registry/services/endpoints/kube-system/kube-dns", "kube-system"),
        (b"/registry/services/specs/default/kubernetes", "default"),
        (b"/registry/ingress/kube-system/web", "kube-system"),
        (b"/registry/controllers/kube-system/rc", "kube-system"),
        (b"/registry/events/kube-system/coredns.17a", "kube-system"),
        (b"/registry/leases/kube-system/kube-controller-manager", "kube-system"),
        (b"/registry/serviceaccounts/kube-system/default", "rbac"),  # rbac comes first
        (b"/registry/roles/kube-system/extension-apiserver-authentication-reader", "rbac"),
        (b"/registry/clusterroles/admin", "rbac"),
        (b"/registry/namespaces/kube-system", "default"),  # cluster-scoped
        (b"/registry/minions/kube-system", "default"),
        (b"/registry/podsecuritypolicy/pods", "default"),
        (b"/registry/podtemplates/team-a/t", "default"),
        (b"/registry/pods", "default"),
        (b"/registry/stable.example.com/shirts/default/shirt1", "shirts"),
        (b"/registry/stable.example.com/shirts/kube-system/shirt1", "shirts"),  # custom: not the namespace rule
        (b"/registry/stable.example.com/hats/default/hat1", "default"),
        (b"/registry/apiextensions.k8s.io/customresourcedefinitions/shirts.stable.example.com", "default"),
        (b"compact_rev_key", "default"),
        (b"/registry/health", "default"),
        (b"/registry/masterleases/192.0.2.2", "default"),
        (b"/pods/kube-system/x", "default"),
        (b"", "default"),
    ],
)
def test_route(key: bytes, backend: str) -> None:
    assert the_example().route(key).name == backend


def test_backends_are_the_rules_in_file_order_then_the_default() -> None:
    assert [(backend.name, backend.rule) for backend in the_example().backends] == [
        ("rbac", "regexp key=(clusterrolebindings|clusterroles|rolebindings|roles|serviceaccounts)"),
        ("kube-system", "namespace kube-system"),
        ("pods", "prefix pods"),
        ("shirts", "customresource stable.example.com/shirts"),
        ("default", "default"),
    ]
    assert the_example().backends[-1] == Backend("default", DEFAULT_ENDPOINT, "default")


# -- ranges ----------------------------------------------------------------------------------------

ALL = ["rbac", "kube-system", "pods", "shirts", "default"]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (b"/registry/", None, ALL),
        (b"", b"\0", ALL),
        (b"", b"", ALL),
        (b"/registry/configmaps/", None, ["kube-system", "default"]),
        (b"/registry/configmaps/kube-system/", None, ["kube-system"]),
        (b"/registry/configmaps/team-a/", None, ["default"]),
        (b"/registry/pods/", None, ["kube-system", "pods"]),
        (b"/registry/pods/kube-system/", None, ["kube-system"]),
        (b"/registry/pods/team-a/", None, ["pods"]),
        (b"/registry/pods/a", b"/registry/pods/b", ["pods"]),
        (b"/registry/pods/", b"", ALL),  # unbounded: also roles, serviceaccounts, ...
        (b"/registry/services/", None, ["kube-system", "default"]),
        (b"/registry/services/specs/", None, ["kube-system", "default"]),
        (b"/registry/podsecuritypolicy/", None, ["default"]),
        (b"/registry/clusterroles/", None, ["rbac"]),
        (b"/registry/serviceaccounts/", None, ["rbac"]),  # even those of kube-system: rbac comes first
        (b"/registry/roles/team-a/", None, ["rbac"]),
        (b"/registry/stable.example.com/shirts/", None, ["shirts"]),
        (
            b"/registry/stable.example.com/shirts/default/shirt2\0",
            b"/registry/stable.example.com/shirts/default0",
            ["shirts"],
        ),
        (b"/registry/stable.example.com/", None, ["shirts", "default"]),
        (b"/registry/namespaces/", None, ["default"]),
        (b"compact_rev_key", b"compact_rev_key\0", ["default"]),
        (b"/registry/pods/b", b"/registry/pods/a", []),  # empty
        (b"/registry/pods/a", b"/registry/pods/a", []),
    ],
)
def test_backends_for_range(start: bytes, end: bytes | None, expected: list[str]) -> None:
    assert names(the_example().backends_for_range(start, prefix_end(start) if end is None else end)) == expected


def test_every_range_of_the_trace_names_the_backends_of_its_keys() -> None:
    topology = the_example()
    keys, ranges = trace_keys_and_ranges()
    for start, end in ranges:
        backends = topology.backends_for_range(start, end)
        holders = {topology.route(key) for key in keys if start <= key and (end == b"\0" or key < end)}
        assert holders <= set(backends), (start, end)


OTHER = """\
backends:
- endpoint: sqlite://./db/events.db
  namespace:
    name: default-events
    namespace: default
    kinds: [events, Service]
- name: roles
  endpoint: sqlite://./db/roles.db
  regexp:
    key: (cluster)?role(binding)?s/
    prefix: caf[é]
- name: example-group
  endpoint: sqlite://./db/group.db
  customresource:
    group: stable.example.com
- name: specs
  endpoint: sqlite://./db/specs.db
  prefix:
    prefix: /services/specs/
- name: kube
  endpoint: postgresql://kf:secret@db.internal/kube?sslmode=require
  namespace:
    namespace: kube-system
- name: accounts
  endpoint: https://etcd.internal:2379
  regexp:
    key: serviceaccounts|secrets\\/
- name: unicode
  endpoint: sqlite://./db/unicode.db
  regexp:
    key: caf[é]/|[ü]ber
"""


def other() -> Topology:
    return Topology.parse(OTHER, DEFAULT_ENDPOINT, "other.yaml")


@pytest.mark.parametrize(
    ("key", "backend"),
    [
        (b"/registry/events/default/e", "default-events"),
        (b"/registry/services/specs/default/kubernetes", "default-events"),
        (b"/registry/services/endpoints/default/kubernetes", "default"),
        (b"/registry/services/specs/team-a/web", "specs"),
        (b"/registry/configmaps/default/c", "default"),
        (b"/registry/clusterroles/admin", "roles"),
        (b"/registry/clusterrolebindings/admin", "roles"),
        (b"/registry/roles/kube-system/r", "roles"),
        (b"/registry/rolex/kube-system/r", "default"),
        (b"/registry/leases/kube-system/l", "kube"),
        (b"/registry/stable.example.com/hats/default/h", "example-group"),
        (b"/registry/stable.example.comx/hats/default/h", "default"),
        (b"/registry/serviceaccounts/kube-system/default", "kube"),
        (b"/registry/serviceaccounts/team-a/default", "accounts"),
        (b"/registry/secrets/team-a/s", "accounts"),
        (b"/registry/secretsx/team-a/s", "default"),
    ],
)
def test_route_with_kinds_general_regexps_and_whole_groups(key: bytes, backend: str) -> None:
    assert other().route(key).name == backend


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # A general regexp is a candidate wherever it could match, but never proves it covers a range.
        (b"/registry/clusterroles/", None, ["roles", "default"]),
        (b"/registry/roles/kube-system/", None, ["roles", "kube"]),
        (b"/registry/configmaps/", None, ["kube", "default"]),
        # Its `prefix` pattern makes ranges it could match candidates too; both work even cut inside a character.
        (b"/registry/caf\xc3", b"/registry/caf\xc4", ["roles", "unicode", "default"]),
        (b"/registry/\xc3", b"/registry/\xc4", ["roles", "unicode", "default"]),  # not known to be no r or c
        (b"/registry/cafe", None, ["default"]),
        (b"/registry/caf\xc3\xa9/", None, ["roles", "unicode", "default"]),
        # Plain alternatives, with an escaped character, are exact.
        (b"/registry/secrets/", None, ["kube", "accounts"]),
        (b"/registry/secrets/team-a/", None, ["accounts"]),
        (b"/registry/services/", None, ["default-events", "specs", "kube", "default"]),
        (b"/registry/services/specs/", None, ["default-events", "specs"]),  # specs covers kube-system's
        (b"/registry/services/endpoints/", None, ["kube", "default"]),
        (b"/registry/events/", None, ["default-events", "kube", "default"]),
        (b"/registry/stable.example.com/", None, ["example-group"]),
    ],
)
def test_backends_for_range_with_kinds_general_regexps_and_whole_groups(
    start: bytes, end: bytes | None, expected: list[str]
) -> None:
    assert names(other().backends_for_range(start, prefix_end(start) if end is None else end)) == expected


SEGMENTS = [
    "pods",
    "pods0",
    "podsecuritypolicy",
    "services",
    "services/specs",
    "services/endpoints",
    "configmaps",
    "events",
    "clusterroles",
    "clusterrolebindings",
    "roles",
    "rolesx",
    "serviceaccounts",
    "secrets",
    "namespaces",
    "stable.example.com/shirts",
    "stable.example.com/hats",
    "café",
    "cafe",
    "über",
]
NAMESPACES = ["kube-system", "kube-system0", "kube", "default", "team-a", ""]
keys = st.one_of(
    st.builds(
        lambda segment, namespace, name: f"/registry/{segment}/{namespace}/{name}".encode(),
        st.sampled_from(SEGMENTS),
        st.sampled_from(NAMESPACES),
        st.text(max_size=3),
    ),
    st.builds(lambda segment: f"/registry/{segment}".encode(), st.sampled_from(SEGMENTS)),
    st.sampled_from([b"", b"compact_rev_key", b"/registry", b"/registry/", b"/registry/health"]),
    st.binary(max_size=12),
)
keys_with_tails = st.one_of(
    st.builds(lambda key, tail: key + tail, keys, st.binary(max_size=3)),
    st.builds(lambda key, length: key[:length], keys, st.integers(min_value=0, max_value=30)),
)


@st.composite
def key_in_range(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A range [start, end) and a key in it."""
    low, middle, high = sorted([draw(keys_with_tails), draw(keys_with_tails), draw(keys_with_tails)])
    start, key = draw(
        st.sampled_from(
            [
                (low, middle),
                (low, low),
                (low, low + draw(st.sampled_from([b"\0", b"/", b"\xff", b"\xc3", b"\xa9"]))),
            ]
        )
    )
    cut = draw(st.integers(min_value=0, max_value=len(start)))
    end = draw(st.sampled_from([high, b"", b"\0", prefix_end(start[:cut])]))
    assume(start <= key and (end in (b"", b"\0") or key < end))
    return start, end, key


@settings(max_examples=1500, deadline=None)
@given(key_in_range(), st.sampled_from([the_example, other]))
@hypothesis_example(
    (b"/registry/pods/", b"/registry/pods0\0", b"/registry/pods0"), the_example
)  # just past a rule's keys
@hypothesis_example((b"/registry/a", b"/registry/z", b"/registry/clusterroles/x"), other)  # a regexp mid-range
@hypothesis_example((b"/registry/caf\xc3", b"/registry/caf\xc4", b"/registry/caf\xc3\xa9/x"), other)  # cut inside é
def test_a_range_names_the_backend_of_every_key_in_it(case: tuple[bytes, bytes, bytes], make: Any) -> None:
    start, end, key = case
    topology: Topology = make()

    backends = topology.backends_for_range(start, end)

    assert topology.route(key) in backends
    assert backends == [backend for backend in topology.backends if backend in backends], "in file order"


# -- validation ------------------------------------------------------------------------------------

FIRST = """\
backends:
- name: a
  endpoint: sqlite://./db/a.db
  prefix: {prefix: pods}
"""


def error_of(text: str, default: str = DEFAULT_ENDPOINT) -> str:
    with pytest.raises(TopologyError) as caught:
        Topology.parse(text, default, "topology.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        ("- just a string", ["entry 2 (no name)", "expected a mapping"]),
        ("- {name: b, endpoint: 'sqlite://b.db', regex: {key: x}}", ["entry 2 ('b')", "unknown field 'regex'"]),
        (
            "- {name: b, endpoint: 'sqlite://b.db', namespace: {namespace: x, kind: [pods]}}",
            ["entry 2 ('b')", "unknown field 'kind' in `namespace`"],
        ),
        ("- {name: b, endpoint: 'sqlite://b.db'}", ["entry 2 ('b')", "no matcher"]),
        (
            "- {name: b, endpoint: 'sqlite://b.db', prefix: {prefix: x}, namespace: {namespace: y}}",
            ["entry 2 ('b')", "two matchers (prefix and namespace)"],
        ),
        ("- {endpoint: 'sqlite://b.db', prefix: {prefix: x}}", ["entry 2 (no name)", "missing name"]),
        ("- {name: '', endpoint: 'sqlite://b.db', prefix: {prefix: x}}", ["entry 2 (no name)", "name is empty"]),
        ("- {name: 7, endpoint: 'sqlite://b.db', prefix: {prefix: x}}", ["entry 2 (no name)", "name must be a string"]),
        (
            "- {name: b, endpoint: 'sqlite://b.db', regexp: {name: c, key: x}}",
            ["entry 2 ('b')", "two names, 'b' and regexp.name 'c'"],
        ),
        (
            "- {name: b, endpoint: 'sqlite://b.db', regexp: {prefix: x, key: '(unclosed'}}",
            ["entry 2 ('b')", "bad regexp.key '(unclosed'", "missing )"],
        ),
        ("- {name: b, endpoint: 'sqlite://b.db', regexp: {prefix: x}}", ["entry 2 ('b')", "missing regexp.key"]),
        (
            "- {name: a, endpoint: 'sqlite://b.db', prefix: {prefix: x}}",
            ["entry 2 ('a')", "duplicate name 'a'", "entry 1"],
        ),
        ("- {name: default, endpoint: 'sqlite://b.db', prefix: {prefix: x}}", ["entry 2 ('default')", "reserved"]),
        (
            "- {name: b, endpoint: 'sqlite://db//a.db?_busy_timeout=1', prefix: {prefix: x}}",
            ["entry 2 ('b')", "'sqlite://db//a.db?_busy_timeout=1' names the same database as entry 1"],
        ),
        (
            f"- {{name: b, endpoint: '{DEFAULT_ENDPOINT}', prefix: {{prefix: x}}}}",
            ["entry 2 ('b')", "names the same database as the default (multi://) backend"],
        ),
        (
            "- {name: b, endpoint: 'sqlite://b.db', namespace: {namespace: ''}}",
            ["entry 2 ('b')", "namespace.namespace is empty"],
        ),
        (
            "- {name: b, endpoint: 'sqlite://b.db', namespace: {namespace: Kube_System}}",
            ["entry 2 ('b')", "not a Kubernetes namespace name"],
        ),
        (
            "- {name: b, endpoint: 'sqlite://b.db', namespace: {namespace: x, kinds: [pods, shirts]}}",
            ["entry 2 ('b')", "'shirts' is not a built-in namespaced resource", "configmaps"],
        ),
        ("- {name: b, endpoint: 'sqlite://b.db', namespace: {namespace: x, kinds: []}}", ["entry 2 ('b')", "kinds"]),
        ("- {name: b, endpoint: 'sqlite://b.db', prefix: {prefix: ''}}", ["entry 2 ('b')", "prefix.prefix is empty"]),
        ("- {name: b, endpoint: 'sqlite://b.db', prefix: {prefix: /}}", ["entry 2 ('b')", "not a resource prefix"]),
        ("- {name: b, endpoint: 'sqlite://b.db', prefix: {}}", ["entry 2 ('b')", "missing prefix.prefix"]),
        (
            "- {name: b, endpoint: 'sqlite://b.db', customresource: {group: '', kind: shirts}}",
            ["entry 2 ('b')", "customresource.group is empty"],
        ),
        (
            "- {name: b, endpoint: 'redis://h/0', prefix: {prefix: x}}",
            ["entry 2 ('b')", "unsupported scheme 'redis'", "sqlite://", "mysql://", "https://"],
        ),
        ("- {name: b, prefix: {prefix: x}}", ["entry 2 ('b')", "missing endpoint"]),
        (
            "- {name: b, endpoint: 'postgresql://u@h/db', prefix: {prefix: x}}\n"
            "- {name: c, endpoint: 'postgres://u@h/db?sslmode=require', prefix: {prefix: y}}",
            ["entry 3 ('c')", "same database as entry 2"],
        ),
        ("- {name: b, endpoint: 'sqlite://b.db?foo=bar', prefix: {prefix: x}}", ["entry 2 ('b')", "'foo'"]),
        ("- {name: b, endpoint: 'postgres://u@h/db?sslmode=maybe', prefix: {prefix: x}}", ["entry 2 ('b')", "sslmode"]),
        ("- {name: b, endpoint: 'mysql://nonsense', prefix: {prefix: x}}", ["entry 2 ('b')", "expected mysql://"]),
        (
            "- name: b\n  endpoint: sqlite://b.db\n  prefix: {prefix: x}\n  prefix: {prefix: y}",
            ["topology.yaml", "the key 'prefix' is given twice", "in topology.yaml, line 8"],
        ),
    ],
)
def test_a_bad_entry_is_refused_naming_the_file_and_the_entry(entry: str, fragments: list[str]) -> None:
    message = error_of(FIRST + entry + "\n")

    assert message.startswith("topology.yaml: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "expected a mapping with a `backends` list"),
        ("foo: 1", "expected a mapping with a `backends` list"),
        ("backends: {a: 1}", "`backends` must be a list"),
        ("backends: []\nextra: 1", "unknown top-level field 'extra'"),
        ("backends: [", "not valid YAML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file(text: str, fragment: str) -> None:
    message = error_of(text)

    assert message.startswith("topology.yaml: ") and fragment in message, message


def test_passwords_never_appear_in_messages() -> None:
    entry = "- {name: b, endpoint: 'postgres://kf:hunter2@db/x', prefix: {prefix: x}}\n"

    message = error_of(FIRST + entry + entry.replace("name: b", "name: c"))

    assert "entry 3 ('c')" in message and "kf:***@db" in message and "hunter2" not in message, message


def test_the_default_endpoint_is_checked_too() -> None:
    assert "the default backend" in error_of(FIRST, default="redis://h/0")


def test_validating_a_sqlite_endpoint_creates_no_file(tmp_path: Path) -> None:
    text = f"backends:\n- {{name: b, endpoint: 'sqlite://{tmp_path}/sub/b.db', prefix: {{prefix: x}}}}\n"

    Topology.parse(text, f"sqlite://{tmp_path}/main.db", "topology.yaml")

    assert list(tmp_path.iterdir()) == []


def test_the_older_form_with_the_name_in_the_matcher_is_accepted() -> None:
    older = EXAMPLE.replace("- name: rbac\n  endpoint: http://127.0.0.1:2379\n  regexp:\n", "")
    older = older.replace("backends:\n", "backends:\n- endpoint: http://127.0.0.1:2379\n  regexp:\n    name: rbac\n")

    assert older != EXAMPLE
    assert Topology.parse(older, DEFAULT_ENDPOINT, "older.yaml").backends == the_example().backends


def test_an_empty_topology_sends_everything_to_the_default() -> None:
    topology = Topology.parse("backends: []", DEFAULT_ENDPOINT, "empty.yaml")

    assert names(list(topology.backends)) == ["default"]
    assert topology.route(b"/registry/pods/a/b").name == "default"
    assert names(topology.backends_for_range(b"", b"")) == ["default"]


def test_load_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(EXAMPLE)

    assert Topology.load(str(path), DEFAULT_ENDPOINT).backends == the_example().backends
    with pytest.raises(TopologyError, match="missing.yaml"):
        Topology.load(str(tmp_path / "missing.yaml"), DEFAULT_ENDPOINT)


# -- extension -------------------------------------------------------------------------------------

APPENDED = (
    EXAMPLE
    + """\
- name: hats
  endpoint: sqlite://./db/hats.db
  customresource: {group: stable.example.com, kind: hats}
"""
)


def test_appending_rules_extends_a_topology() -> None:
    newer = Topology.parse(APPENDED, DEFAULT_ENDPOINT, "newer.yaml")

    assert the_example().extended_by(newer) is newer
    same = the_example()
    assert the_example().extended_by(same) is same


def test_an_equivalent_rewrite_of_a_rule_extends_it() -> None:
    older = FIRST.replace("prefix: {prefix: pods}", "namespace: {namespace: x, kinds: [Pod, configmaps]}")
    newer = FIRST.replace("prefix: {prefix: pods}", "namespace: {namespace: x, kinds: [configmaps, pods]}")
    newer = newer.replace("sqlite://./db/a.db", "sqlite://db/a.db?_busy_timeout=5000")

    parsed = Topology.parse(newer, DEFAULT_ENDPOINT, "newer.yaml")

    assert Topology.parse(older, DEFAULT_ENDPOINT, "older.yaml").extended_by(parsed) is parsed


@pytest.mark.parametrize(
    ("newer", "default", "fragments"),
    [
        (
            EXAMPLE.replace("prefix: pods", "prefix: pods/kube-system"),
            DEFAULT_ENDPOINT,
            ["newer.yaml", "entry 3 changed", "'pods' (prefix pods)", "'pods' (prefix pods/kube-system)"],
        ),
        (EXAMPLE.replace("kube_system", "kube_sys"), DEFAULT_ENDPOINT, ["entry 2 changed", "root:***@tcp"]),
        (EXAMPLE.replace("name: pods", "name: the-pods"), DEFAULT_ENDPOINT, ["entry 3 changed"]),
        (EXAMPLE.split("- name: shirts")[0], DEFAULT_ENDPOINT, ["entry 4", "'shirts'", "disappeared"]),
        (
            EXAMPLE.replace(
                "- name: rbac", "- name: zzz\n  endpoint: sqlite://z.db\n  prefix: {prefix: z}\n- name: rbac"
            ),
            DEFAULT_ENDPOINT,
            ["entry 1 changed"],
        ),
        (
            EXAMPLE,
            "sqlite:///db/other.db",
            ["default backend changed", "sqlite:///db/main.db", "sqlite:///db/other.db"],
        ),
    ],
)
def test_changing_or_removing_a_rule_is_refused(newer: str, default: str, fragments: list[str]) -> None:
    parsed = Topology.parse(newer, default, "newer.yaml")

    with pytest.raises(TopologyError) as caught:
        the_example().extended_by(parsed)

    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert "unreachable" in str(caught.value)

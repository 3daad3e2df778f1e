"""The topology: which database ("backend") each Kubernetes key lives in, from a YAML file of rules.

Rules are tried top to bottom and the first that takes a key wins; keys no rule takes, and every key
outside /registry/, go to the default backend (the endpoint after `multi://`). Every rule takes a
set of keys below /registry/; for all matchers except a general `regexp` that set is a union of key
prefixes, that is of intervals in etcd's byte order, so which backends a range can touch is exact
interval arithmetic. A `regexp` whose key pattern is not a plain list of alternatives is judged by
partial matching, and never counts as covering a range.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex
import yaml

from kubefabric.stores import open_store, redact

REGISTRY = b"/registry/"
SCHEMES = ("sqlite", "postgres", "postgresql", "mysql", "http", "https")
DEFAULT_NAME = "default"

# Kubernetes' built-in namespaced resources that kube-apiserver keeps in etcd, and the key prefix each
# lives under: /registry/<prefix>/<namespace>/<name>. The prefix is the resource's plural without its
# group, except where k8s.io/apiserver's SpecialDefaultResourcePrefixes says otherwise (services,
# endpoints, replicationcontrollers, ingresses). Checked against a recorded kube-apiserver 1.24 (the
# namespace controller lists every namespaced resource of a namespace it deletes); later rows are the
# resources added since, up to 1.33. Not here: resources never stored (bindings, *reviews, tokens),
# cluster-scoped ones (namespaces, nodes under `minions`, persistentvolumes, clusterroles, ...), the
# apiserver's own keys (`compact_rev_key`, /registry/health, /registry/masterleases/, /registry/ranges/)
# and custom resources (/registry/<group>/<plural>/..., routed by `customresource` rules).
NAMESPACED_RESOURCES: tuple[tuple[str, str, str, str], ...] = (
    # group, kind, resource, key prefix below /registry/
    ("", "ConfigMap", "configmaps", "configmaps"),
    ("", "Endpoints", "endpoints", "services/endpoints"),
    ("", "Event", "events", "events"),  # events.k8s.io's Events are the same objects
    ("", "LimitRange", "limitranges", "limitranges"),
    ("", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaims"),
    ("", "Pod", "pods", "pods"),
    ("", "PodTemplate", "podtemplates", "podtemplates"),
    ("", "ReplicationController", "replicationcontrollers", "controllers"),
    ("", "ResourceQuota", "resourcequotas", "resourcequotas"),
    ("", "Secret", "secrets", "secrets"),
    ("", "Service", "services", "services/specs"),
    ("", "ServiceAccount", "serviceaccounts", "serviceaccounts"),
    ("apps", "ControllerRevision", "controllerrevisions", "controllerrevisions"),
    ("apps", "DaemonSet", "daemonsets", "daemonsets"),
    ("apps", "Deployment", "deployments", "deployments"),
    ("apps", "ReplicaSet", "replicasets", "replicasets"),
    ("apps", "StatefulSet", "statefulsets", "statefulsets"),
    ("autoscaling", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscalers"),
    ("batch", "CronJob", "cronjobs", "cronjobs"),
    ("batch", "Job", "jobs", "jobs"),
    ("coordination.k8s.io", "Lease", "leases", "leases"),
    ("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslices"),
    ("networking.k8s.io", "Ingress", "ingresses", "ingress"),
    ("networking.k8s.io", "NetworkPolicy", "networkpolicies", "networkpolicies"),
    ("policy", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudgets"),
    ("rbac.authorization.k8s.io", "Role", "roles", "roles"),
    ("rbac.authorization.k8s.io", "RoleBinding", "rolebindings", "rolebindings"),
    ("storage.k8s.io", "CSIStorageCapacity", "csistoragecapacities", "csistoragecapacities"),
    # Added after 1.24 (alpha or beta APIs, so only on clusters that enable them).
    ("coordination.k8s.io", "LeaseCandidate", "leasecandidates", "leasecandidates"),  # 1.31+
    ("resource.k8s.io", "ResourceClaim", "resourceclaims", "resourceclaims"),  # 1.26+
    ("resource.k8s.io", "ResourceClaimTemplate", "resourceclaimtemplates", "resourceclaimtemplates"),  # 1.26+
    ("resource.k8s.io", "PodScheduling", "podschedulings", "podschedulings"),  # 1.26
    ("resource.k8s.io", "PodSchedulingContext", "podschedulingcontexts", "podschedulingcontexts"),  # 1.27-1.31
)

# The fields of each matcher block; `name` may sit there too, as in older files.
_MATCHERS: dict[str, tuple[str, ...]] = {
    "regexp": ("name", "prefix", "key"),
    "namespace": ("name", "namespace", "kinds"),
    "prefix": ("name", "prefix"),
    "customresource": ("name", "group", "kind"),
}
_ENTRY_FIELDS = ("name", "endpoint", *_MATCHERS)
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A pattern that is only alternatives of plain characters, like (clusterroles|roles): a set of key prefixes.
_PLAIN = r"(?:[^\\.^$*+?{}\[\]()|]|\\[^A-Za-z0-9])"
_PLAIN_ALTERNATIVES = re.compile(rf"{_PLAIN}+(?:\|{_PLAIN}+)*")
_PLAIN_TOKEN = re.compile(rf"{_PLAIN}|\|")

Interval = tuple[bytes, bytes | None]
"""The keys k with lo <= k < hi; hi None = no upper bound."""
EVERY_KEY: Interval = (b"\0", None)


class TopologyError(ValueError):
    """A topology file the project cannot use; the message names the file and the entry."""


@dataclass(frozen=True)
class Backend:
    name: str
    """`default` for the multi:// default."""
    endpoint: str
    rule: str
    """What the rule matches, for people: `prefix pods`, `namespace kube-system`, `default`, ..."""


class _Problem(Exception):
    """A problem with one entry; parse() adds the file and the entry."""


@dataclass(frozen=True, eq=False)
class _Rule:
    backend: Backend
    prefixes: tuple[bytes, ...]
    """The rule takes every key that starts with one of these..."""
    pattern: regex.Pattern[str] | None
    """...and every key whose part below /registry/ this matches at its start."""
    hints: tuple[bytes, ...] = ()
    """Ranges that reach into these key prefixes may hold the rule's keys too (a regexp's `prefix`)."""
    hint_pattern: regex.Pattern[str] | None = None
    """Ranges below /registry/ whose keys this could match may hold the rule's keys too."""
    blocks: tuple[Interval, ...] = field(init=False)
    """The intervals of keys the rule takes for sure."""
    candidate_blocks: tuple[Interval, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(_block(prefix) for prefix in self.prefixes))
        object.__setattr__(self, "candidate_blocks", tuple(_block(prefix) for prefix in self.prefixes + self.hints))

    @property
    def placement(self) -> tuple[frozenset[bytes], str | None]:
        """What decides which keys the rule takes."""
        return frozenset(self.prefixes), None if self.pattern is None else self.pattern.pattern

    def takes(self, key: bytes) -> bool:
        if key.startswith(self.prefixes):
            return True
        if self.pattern is None or not key.startswith(REGISTRY):
            return False
        return self.pattern.match(key[len(REGISTRY) :].decode("utf-8", "surrogateescape")) is not None

    @property
    def reach(self) -> list[Interval]:
        """Intervals holding every key the rule may take (all of /registry/ for a general regexp)."""
        if self.pattern is None and self.hint_pattern is None:
            return _union(list(self.candidate_blocks))
        return _union([*self.candidate_blocks, _block(REGISTRY)])

    @property
    def record(self) -> dict[str, Any]:
        """What the rule places where, as recorded with the keys (see Topology.record)."""
        prefixes, pattern = self.placement
        return {
            "name": self.backend.name,
            "rule": self.backend.rule,
            "database": _identity(self.backend.endpoint),
            "takes": sorted(prefix.decode("utf-8", "surrogateescape") for prefix in prefixes),
            "pattern": pattern,
        }

    def may_take_some_of(self, intervals: list[Interval]) -> bool:
        patterns = [pattern for pattern in (self.pattern, self.hint_pattern) if pattern is not None]
        for interval in intervals:
            if any(_overlap(interval, block) for block in self.candidate_blocks):
                return True
            if patterns:
                text = _text_below_registry(*interval)
                if text is not None and any(pattern.match(text, partial=True) for pattern in patterns):
                    return True
        return False


class Topology:
    """The rules of a topology file, and the default backend."""

    backends: tuple[Backend, ...]
    """The rules' backends in file order, then the default last."""

    def __init__(self, rules: Iterable[_Rule], default: Backend, source: str) -> None:
        self._rules = tuple(rules)
        self._default = default
        self.source = source
        self.backends = (*(rule.backend for rule in self._rules), default)
        self._route = functools.lru_cache(maxsize=16384)(self._route_uncached)
        self._for_range = functools.lru_cache(maxsize=4096)(self._for_range_uncached)

    def __repr__(self) -> str:
        return f"Topology({self.source!r}, {len(self._rules)} rules)"

    @classmethod
    def load(cls, path: str, default_endpoint: str) -> Topology:
        """The topology in a YAML file; TopologyError if it cannot be read or used."""
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise TopologyError(f"{path}: cannot read the topology file: {error}") from None
        return cls.parse(text, default_endpoint, source=path)

    @classmethod
    def parse(cls, text: str, default_endpoint: str, source: str) -> Topology:
        """The topology in YAML `text`; `source` names it in messages."""
        try:
            document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
        except yaml.YAMLError as error:
            details = str(error).replace('"<unicode string>"', source)
            raise TopologyError(f"{source}: not valid YAML: {details}") from None
        if not isinstance(document, dict) or "backends" not in document:
            raise TopologyError(f"{source}: expected a mapping with a `backends` list")
        if unknown := [str(key) for key in document if key != "backends"]:
            raise TopologyError(f"{source}: unknown top-level field {unknown[0]!r} (only `backends` is known)")
        entries = document["backends"]
        if not isinstance(entries, list):
            raise TopologyError(f"{source}: `backends` must be a list of entries")
        if problem := _endpoint_problem(default_endpoint):
            raise TopologyError(f"{source}: the default backend (--endpoint multi://...): {problem}")
        default = Backend(DEFAULT_NAME, default_endpoint, "default")
        rules: list[_Rule] = []
        names: dict[str, int] = {}
        databases: dict[tuple[str, str], int] = {_database(default_endpoint): 0}
        for position, entry in enumerate(entries, 1):
            where = f"{source}: backends entry {position} ({_name_for_messages(entry)})"
            try:
                rule = _parse_entry(entry)
            except _Problem as problem:
                raise TopologyError(f"{where}: {problem}") from None
            name, database = rule.backend.name, _database(rule.backend.endpoint)
            if name in names:
                raise TopologyError(f"{where}: duplicate name {name!r}: entry {names[name]} has it too")
            if database in databases:
                other = "the default (multi://) backend" if not databases[database] else f"entry {databases[database]}"
                raise TopologyError(
                    f"{where}: endpoint {redact(rule.backend.endpoint)!r} names the same database as {other}"
                )
            names[name], databases[database] = position, position
            rules.append(rule)
        return cls(rules, default, source)

    def route(self, key: bytes) -> Backend:
        """The backend that holds `key`."""
        return self._route(key)

    def _route_uncached(self, key: bytes) -> Backend:
        if key.startswith(REGISTRY):
            for rule in self._rules:
                if rule.takes(key):
                    return rule.backend
        return self._default

    def backends_for_range(self, start: bytes, end: bytes) -> list[Backend]:
        """Every backend that may hold a key in [start, end) (end b"" or b"\\0" = no upper bound), in
        self.backends order: a conservative superset, but as small as can be proven, because a
        range that names a backend which is down fails. A rule is left out when the earlier rules
        provably take every key of the range it could take, and so is the default when the rules
        take the whole range (e.g. /registry/pods/../registry/pods0 with `prefix pods`). An empty
        range (start >= end) has none."""
        return list(self._for_range(start, end))

    def _for_range_uncached(self, start: bytes, end: bytes) -> tuple[Backend, ...]:
        high = None if end in (b"", b"\0") else end
        rest: list[Interval] = [(start, high)] if high is None or start < high else []
        chosen: list[Backend] = []
        for rule in self._rules:
            if not rest:
                break
            if rule.may_take_some_of(rest):
                chosen.append(rule.backend)
                for block in rule.blocks:
                    rest = _subtract(rest, block)
        if rest:
            chosen.append(self._default)
        return tuple(chosen)

    def record(self) -> str:
        """The rules as text to keep beside the keys they placed: every rule in order, with what it
        takes and its database's identity (no options, no password)."""
        rules = [rule.record for rule in self._rules]
        return json.dumps({"default": _identity(self._default.endpoint), "rules": rules}, sort_keys=True)

    def describe(self, name: str) -> str:
        """A backend for messages: its name, and its rule's position and matcher."""
        for position, rule in enumerate(self._rules, 1):
            if rule.backend.name == name:
                return f"{name!r} (backends entry {position}, {rule.backend.rule})"
        return f"{name!r} (the multi:// default)"

    def suspect_ranges(self, recorded: str | None) -> dict[str, list[Interval]]:
        """For each backend, the key intervals where it may hold keys that these rules place in
        another backend, given the rules `recorded` (Topology.record) that placed the stored keys;
        None: unknown, so every backend is suspect. Rules in front that are unchanged leave their
        backends out; the default is suspect only where a changed or new rule may take keys. When
        everything is in place, each interval holds no key, so scanning them is cheap.

        TopologyError if a recorded backend's database is not among these rules': its keys could not
        even be read any more."""
        old_rules: list[dict[str, Any]] = []
        if recorded is not None:
            old = json.loads(recorded)
            old_rules = old["rules"] if old["default"] == _identity(self._default.endpoint) else []
            databases = {_identity(backend.endpoint) for backend in self.backends}
            for position, entry in enumerate(old_rules, 1):
                if entry["database"] not in databases:
                    raise TopologyError(
                        f"{self.source}: backends entry {position} of the rules the stored keys were placed by, "
                        f"{entry['name']!r} ({entry['rule']}) at {entry['database']}, is gone: the keys stored in "
                        "that database would not be read any more; keep its entry"
                    )
        unchanged = 0  # rules in front that are the same as recorded
        for old_rule, rule in zip(old_rules, self._rules, strict=False):
            if old_rule != rule.record:
                break
            unchanged += 1
        ranges: dict[str, list[Interval]] = {}
        taken_before: list[Interval] = []  # what the rules in front may take
        for position, rule in enumerate(self._rules):
            if position >= unchanged:
                outside = _subtract_all([EVERY_KEY], rule.blocks)
                ranges[rule.backend.name] = _union([*outside, *_intersect(list(rule.blocks), taken_before)])
            taken_before = _union([*taken_before, *rule.reach])
        ranges[self._default.name] = _union([interval for rule in self._rules[unchanged:] for interval in rule.reach])
        return ranges

    def extended_by(self, newer: Topology) -> Topology:
        """`newer` if it only appends rules at the bottom (same default); else TopologyError saying
        which existing rule changed or disappeared, because data already stored there would become
        unreachable. A rule is unchanged if it has the same name, takes the same keys and names the
        same database (endpoint options may change). Appended rules take keys that went to the
        default before: the caller checks that none is stored (see _placement)."""
        unreachable = (
            "the keys already stored there would become unreachable; while kubefabric runs, rules can only be "
            "added at the end (a restart checks other changes against the stored keys, and `kubefabric topology "
            "migrate` moves keys)"
        )
        if _database(newer._default.endpoint) != _database(self._default.endpoint):
            raise TopologyError(
                f"{newer.source}: the default backend changed from {redact(self._default.endpoint)!r} "
                f"to {redact(newer._default.endpoint)!r}: {unreachable}"
            )
        for position, old in enumerate(self._rules, 1):
            was = f"{old.backend.name!r} ({old.backend.rule}) at {redact(old.backend.endpoint)}"
            if position > len(newer._rules):
                raise TopologyError(f"{newer.source}: backends entry {position}, {was}, disappeared: {unreachable}")
            new = newer._rules[position - 1]
            if (new.backend.name, _database(new.backend.endpoint), new.placement) != (
                old.backend.name,
                _database(old.backend.endpoint),
                old.placement,
            ):
                now = f"{new.backend.name!r} ({new.backend.rule}) at {redact(new.backend.endpoint)}"
                raise TopologyError(
                    f"{newer.source}: backends entry {position} changed from {was} to {now}: {unreachable}"
                )
        return newer


# -- parsing ---------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _name_for_messages(entry: object) -> str:
    if isinstance(entry, Mapping):
        for block in (entry, *(entry.get(matcher) for matcher in _MATCHERS)):
            if isinstance(block, Mapping) and isinstance(block.get("name"), str) and block["name"]:
                return repr(block["name"])
    return "no name"


def _parse_entry(entry: object) -> _Rule:
    if not isinstance(entry, dict):
        raise _Problem(f"expected a mapping with a name, an endpoint and one of {', '.join(_MATCHERS)}")
    if unknown := [str(field) for field in entry if field not in _ENTRY_FIELDS]:
        raise _Problem(f"unknown field {unknown[0]!r} (known: {', '.join(_ENTRY_FIELDS)})")
    matchers = [field for field in entry if field in _MATCHERS]
    if not matchers:
        raise _Problem(f"no matcher: give one of {', '.join(_MATCHERS)}")
    if len(matchers) > 1:
        raise _Problem(f"two matchers ({' and '.join(matchers)}): give exactly one")
    matcher = matchers[0]
    block = entry[matcher]
    if not isinstance(block, dict):
        raise _Problem(f"`{matcher}` must be a mapping of {', '.join(_MATCHERS[matcher])}")
    if unknown := [str(field) for field in block if field not in _MATCHERS[matcher]]:
        raise _Problem(f"unknown field {unknown[0]!r} in `{matcher}` (known: {', '.join(_MATCHERS[matcher])})")

    name = _name(entry, block, matcher)
    endpoint = _text(entry, "endpoint", "")
    if problem := _endpoint_problem(endpoint):
        raise _Problem(problem)

    if matcher == "regexp":
        return _regexp_rule(name, endpoint, block)
    if matcher == "namespace":
        return _namespace_rule(name, endpoint, block)
    if matcher == "prefix":
        prefix = _text(block, "prefix", "prefix.").strip("/")
        if not prefix or "//" in prefix:
            raise _Problem(
                f"prefix.prefix {block['prefix']!r} is not a resource prefix like `pods` or `services/specs`"
            )
        return _Rule(Backend(name, endpoint, f"prefix {prefix}"), (_key_prefix(prefix),), None)
    group = _text(block, "group", "customresource.")
    kind = block.get("kind") or ""
    if not isinstance(kind, str):
        raise _Problem(f"customresource.kind must be a string (the plural), not {kind!r}")
    for what, value in (("group", group), ("kind", kind)):
        if "/" in value or value != value.strip():
            raise _Problem(f"customresource.{what} {value!r} is not a valid {what}")
    path = f"{group}/{kind}" if kind else group
    return _Rule(Backend(name, endpoint, f"customresource {path}"), (_key_prefix(path),), None)


def _name(entry: Mapping[str, Any], block: Mapping[str, Any], matcher: str) -> str:
    if "name" in entry and "name" in block and entry["name"] != block["name"]:
        raise _Problem(f"two names, {entry['name']!r} and {matcher}.name {block['name']!r}: give one")
    if entry.get("name") is None and block.get("name") is None:
        raise _Problem("missing name")
    where = "" if "name" in entry else f"{matcher}."
    name = _text(entry if "name" in entry else block, "name", where)
    if name == DEFAULT_NAME:
        raise _Problem(f"the name {DEFAULT_NAME!r} is reserved for the multi:// endpoint")
    return name


def _text(block: Mapping[str, Any], field: str, where: str) -> str:
    """The non-empty string in block[field]."""
    value = block.get(field)
    if value is None:
        raise _Problem(f"missing {where}{field}")
    if not isinstance(value, str):
        raise _Problem(f"{where}{field} must be a string, not {value!r}")
    if not value.strip():
        raise _Problem(f"{where}{field} is empty")
    return value


def _endpoint_problem(endpoint: str) -> str | None:
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in SCHEMES:
        supported = ", ".join(f"{scheme}://" for scheme in SCHEMES)
        shown = f"scheme {scheme!r}" if sep else "endpoint (not a URL)"
        return f"unsupported {shown}; supported: {supported}"
    if not rest:
        return f"endpoint {endpoint!r} names no database"
    if scheme in ("http", "https"):
        return None  # an etcd; whether it answers is checked at start-up
    # Constructing these stores only parses the endpoint: no file is created and nothing connects.
    try:
        open_store(endpoint)
    except (ValueError, OSError) as error:
        return f"endpoint {redact(endpoint)!r}: {error}"
    return None


def _database(endpoint: str) -> tuple[str, str]:
    """What tells the database an endpoint names apart from others: options do not count."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "sqlite":
        return scheme, os.path.normpath(rest.partition("?")[0])
    if scheme in ("postgres", "postgresql", "mysql"):
        return scheme.replace("postgresql", "postgres"), rest.partition("?")[0]
    return scheme, rest


def _identity(endpoint: str) -> str:
    """The database an endpoint names, as recorded: no options, no user or password."""
    scheme, rest = _database(endpoint)
    if scheme in ("postgres", "mysql"):
        rest = rest.rpartition("@")[2]
    return f"{scheme}://{rest}"


def _compile(block: Mapping[str, Any], field: str) -> regex.Pattern[str]:
    text = _text(block, field, "regexp.")
    try:
        return regex.compile(text)
    except regex.error as error:
        raise _Problem(f"bad regexp.{field} {text!r}: {error}") from None


def _regexp_rule(name: str, endpoint: str, block: Mapping[str, Any]) -> _Rule:
    key = _compile(block, "key")
    range_pattern = _compile(block, "prefix") if block.get("prefix") is not None else None
    rule = f"regexp key={key.pattern}"
    if range_pattern is not None and range_pattern.pattern != key.pattern:
        rule += f" prefix={range_pattern.pattern}"
    backend = Backend(name, endpoint, rule)
    # Plain alternatives are key prefixes: then ranges can be judged exactly, including coverage.
    key_prefixes = _plain_alternatives(key.pattern)
    hints = _plain_alternatives(range_pattern.pattern) if range_pattern is not None else ()
    hint_pattern = range_pattern if range_pattern is not None and hints is None else None
    if key_prefixes is None:
        return _Rule(backend, (), key, hints or (), hint_pattern)
    return _Rule(backend, key_prefixes, None, hints or (), hint_pattern)


def _plain_alternatives(pattern: str) -> tuple[bytes, ...] | None:
    """The key prefixes that `a|b`, `(a|b)` or `(?:a|b)` of plain characters stands for below /registry/."""
    body = pattern
    for opening in ("(?:", "("):
        if body.startswith(opening) and body.endswith(")"):
            body = body[len(opening) : -1]
            break
    if not _PLAIN_ALTERNATIVES.fullmatch(body):
        return None
    alternatives = [""]
    for token in _PLAIN_TOKEN.findall(body):
        if token == "|":
            alternatives.append("")
        else:
            alternatives[-1] += token.removeprefix("\\")
    return tuple(REGISTRY + alternative.encode("utf-8", "surrogateescape") for alternative in alternatives)


def _namespace_rule(name: str, endpoint: str, block: Mapping[str, Any]) -> _Rule:
    namespace = _text(block, "namespace", "namespace.")
    if not _NAMESPACE_NAME.fullmatch(namespace):
        raise _Problem(f"namespace.namespace {namespace!r} is not a Kubernetes namespace name")
    prefixes = [prefix for _, _, _, prefix in NAMESPACED_RESOURCES]
    rule = f"namespace {namespace}"
    kinds = block.get("kinds")
    if kinds is not None:
        if not isinstance(kinds, list) or not kinds or not all(isinstance(kind, str) for kind in kinds):
            raise _Problem("namespace.kinds must be a non-empty list of resources (leave it out for all of them)")
        prefixes = [_namespaced_prefix(kind) for kind in kinds]
        rule += f" kinds={','.join(kinds)}"
    return _Rule(
        Backend(name, endpoint, rule),
        tuple(_key_prefix(f"{prefix}/{namespace}") for prefix in dict.fromkeys(prefixes)),
        None,
    )


def _namespaced_prefix(kind: str) -> str:
    for _, kind_name, resource, prefix in NAMESPACED_RESOURCES:
        if kind.lower() in (kind_name.lower(), resource, prefix):
            return prefix
    known = ", ".join(resource for _, _, resource, _ in NAMESPACED_RESOURCES)
    raise _Problem(f"namespace.kinds: {kind!r} is not a built-in namespaced resource (known: {known})")


def _key_prefix(path: str) -> bytes:
    """The prefix of the keys below /registry/<path>/."""
    return REGISTRY + path.encode("utf-8") + b"/"


# -- key intervals ---------------------------------------------------------------------------------


def _block(prefix: bytes) -> Interval:
    """The keys that start with prefix."""
    stripped = prefix.rstrip(b"\xff")
    return prefix, (stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None)


def _overlap(a: Interval, b: Interval) -> bool:
    low = max(a[0], b[0])
    return (a[1] is None or low < a[1]) and (b[1] is None or low < b[1])


def _subtract(intervals: list[Interval], cut: Interval) -> list[Interval]:
    rest: list[Interval] = []
    for low, high in intervals:
        if not _overlap((low, high), cut):
            rest.append((low, high))
            continue
        if low < cut[0]:
            rest.append((low, cut[0]))
        if cut[1] is not None and (high is None or cut[1] < high):
            rest.append((cut[1], high))
    return rest


def _subtract_all(intervals: list[Interval], cuts: Iterable[Interval]) -> list[Interval]:
    for cut in cuts:
        intervals = _subtract(intervals, cut)
    return intervals


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    common: list[Interval] = []
    for low_a, high_a in a:
        for low_b, high_b in b:
            low = max(low_a, low_b)
            high = high_a if high_b is None else high_b if high_a is None else min(high_a, high_b)
            if high is None or low < high:
                common.append((low, high))
    return _union(common)


def _union(intervals: list[Interval]) -> list[Interval]:
    """The same keys as sorted, disjoint, non-adjacent intervals."""
    merged: list[Interval] = []
    for low, high in sorted(intervals, key=lambda interval: interval[0]):
        if merged and (merged[-1][1] is None or low <= merged[-1][1]):
            last_high = merged[-1][1]
            merged[-1] = (merged[-1][0], None if last_high is None or high is None else max(last_high, high))
        else:
            merged.append((low, high))
    return merged


def _common_prefix(low: bytes, high: bytes | None) -> bytes:
    """The longest prefix every key in the non-empty interval [low, high) starts with."""
    length = 0
    if high is not None:
        while length < min(len(low), len(high)) and low[length] == high[length]:
            length += 1
        if length == len(low):
            return low
        # The next byte ranges from low's up to high's (or the one below, if high ends there).
        top = high[length] if len(high) > length + 1 else high[length] - 1
        if top != low[length]:
            return low[:length]
        length += 1
    # Past where low and high part (or without high), only 0xff leaves no choice for the next byte.
    while length < len(low) and low[length] == 0xFF:
        length += 1
    return low[:length]


def _text_below_registry(low: bytes, high: bytes | None) -> str | None:
    """What all keys of [low, high) below /registry/ start with, as regexps see it, after /registry/;
    None if the interval holds no key below /registry/."""
    prefix = _common_prefix(low, high)
    if prefix.startswith(REGISTRY):
        # A multi-byte character cut at the end is left out: it is not known yet.
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        return decoder.decode(prefix[len(REGISTRY) :], final=False)
    return "" if REGISTRY.startswith(prefix) else None

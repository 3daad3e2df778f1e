"""The populations the selector tests write and the selectors they ask, as hypothesis strategies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import DrawFn

from tests._client import prefix_end
from tests.selectors._keyspace import REGISTRY, Keyspace
from tests.selectors._reference import (
    CustomResource,
    CustomResourceKind,
    Encoding,
    Meta,
    Pod,
    Secret,
    Selectable,
    encrypted,
    escape_field_value,
    valid_label_value,
)

T = TypeVar("T")


class Draw(Protocol):
    """Hypothesis' interactive draw (st.data().draw, or a composite's draw)."""

    def __call__(self, strategy: st.SearchStrategy[T], label: object = None) -> T: ...


NAMESPACES = ("default", "kube-system", "team-a")  # kube-system lives in another database under multi://
NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
# Shared label keys with few values, so that selectors hit; numbers Go's ParseInt reads, and some it does not.
LABELS = {
    "app": ("web", "db", "cache"),
    "tier": ("frontend", "backend"),
    "app.kubernetes.io/name": ("shop", "blog"),
    "rank": ("10", "9", "-3", "007", "x1", "0", "100", "9223372036854775808"),
    "env": ("", "prod"),
}
NODES = ("", "node1", "node10", "node2")
SHIRTS = CustomResourceKind("stable.example.com", "shirts", "Shirt")
SHIRT_FIELDS = (".spec.color", ".spec.size", ".spec.folded")
KINDS = ("pod", "pod", "pod", "secret", "shirt", "shirt", "encrypted")
PREFIX_OF_KIND = {
    "pod": b"/registry/pods/",
    "secret": b"/registry/secrets/",
    "shirt": SHIRTS.prefix,
    "encrypted": b"/registry/secrets/",
}
# Values selectors ask for: the objects' own, near misses (prefixes, case) and, for labels, ones nothing has.
FIELD_VALUES = {
    "metadata.name": (*NAMES, "alph"),
    "metadata.namespace": (*NAMESPACES, "kube"),
    "spec.nodeName": NODES,
    "spec.restartPolicy": ("Always", "Never"),
    "spec.schedulerName": ("default-scheduler", "custom"),
    "spec.serviceAccountName": ("default", "builder"),
    "spec.hostNetwork": ("", "true", "false"),
    "status.phase": ("", "Pending", "Running", "Succeeded"),
    "status.podIP": ("", "10.0.0.1", "10.0.0.10"),
    "status.nominatedNodeName": ("", "node1"),
    "type": ("Opaque", "kubernetes.io/tls"),
    "spec.color": ("", "green", "red", "dark,green", "a=b", "gre"),
    "spec.size": ("", "8", "10", "1"),
    "spec.folded": ("true", "false", "True"),
}
LABEL_OPERATORS = ("=", "==", "!=", "in", "notin", "exists", "!", ">", "<")
INTEGER_BOUNDS = ("0", "5", "9", "10", "007", "100")
PREFIXES = (
    REGISTRY,
    b"/registry/pods/",
    b"/registry/pods/default/",
    b"/registry/pods/kube-system/",
    b"/registry/secrets/",
    SHIRTS.prefix,
)


# --- what gets written -----------------------------------------------------------------------------------------


@st.composite
def metas(draw: DrawFn, namespace: str, name: str) -> Meta:
    labels = draw(st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in LABELS.items()}))
    return Meta(name, namespace, labels, annotations={key: "annotated" for key in labels} | {"type": "annotated"})


@st.composite
def objects(draw: DrawFn, kind: str, namespace: str, name: str) -> tuple[bytes, Selectable | None]:
    """A value for the key of kind/namespace/name, and what selectors see of it."""
    encoding: Encoding = draw(st.sampled_from(("json", "protobuf")))
    if kind == "encrypted":
        return encrypted(draw(st.binary(min_size=4, max_size=12))), None
    meta = draw(metas(namespace, name))
    if kind == "secret":
        secret = Secret(meta, draw(st.sampled_from(("Opaque", "kubernetes.io/tls"))))
        return secret.encode(encoding), secret.selectable()
    if kind == "shirt":
        properties = {"color": st.sampled_from(("green", "red", "dark,green", "a=b")), "size": st.sampled_from((8, 10))}
        spec = draw(st.fixed_dictionaries({}, optional=properties | {"folded": st.booleans()}))
        shirt = CustomResource(SHIRTS, meta, spec)
        return shirt.encode(), shirt.selectable(SHIRT_FIELDS)
    pod = Pod(
        meta,
        node_name=draw(st.sampled_from(NODES)),
        phase=draw(st.sampled_from(("", "Pending", "Running", "Succeeded"))),
        restart_policy=draw(st.sampled_from(("Always", "Never"))),
        scheduler_name=draw(st.sampled_from(("default-scheduler", "custom"))),
        service_account_name=draw(st.sampled_from(("default", "builder"))),
        host_network=draw(st.booleans()),
        pod_ip=draw(st.sampled_from(("", "10.0.0.1", "10.0.0.10"))),
        nominated_node_name=draw(st.sampled_from(("", "node1"))),
    )
    return pod.encode(encoding), pod.selectable()


@dataclass
class Population:
    """The keys an example writes, with the kind and name each was written as."""

    keyspace: Keyspace
    identities: dict[bytes, tuple[str, str, str]]

    def create(self, draw: Draw) -> None:
        kind, namespace, name = draw(
            st.tuples(st.sampled_from(KINDS), st.sampled_from(NAMESPACES), st.sampled_from(NAMES))
        )
        key = PREFIX_OF_KIND[kind] + f"{namespace}/{name}".encode()
        if key not in self.identities:
            self.identities[key] = (kind, namespace, name)
            self.keyspace.put(key, *draw(objects(kind, namespace, name)))

    def change(self, draw: Draw) -> None:
        """Update, delete or create a key: what other clients do while one lists."""
        live = sorted(self.keyspace.at(self.keyspace.revision).keys() & self.identities.keys())
        action = draw(st.sampled_from(("update", "update", "delete", "create")))
        if not live or action == "create":
            self.create(draw)
        elif action == "update":
            key = draw(st.sampled_from(live))
            self.keyspace.put(key, *draw(objects(*self.identities[key])))
        else:
            self.keyspace.delete(draw(st.sampled_from(live)))


def populate(keyspace: Keyspace, draw: Draw) -> Population:
    keyspace.wipe()
    keyspace.put(SHIRTS.crd_key, SHIRTS.crd(SHIRT_FIELDS), SHIRTS.crd_selectable())
    population = Population(keyspace, {})
    for _ in range(draw(st.integers(6, 18), label="objects")):
        population.create(draw)
    for _ in range(draw(st.integers(0, 10), label="changes")):
        population.change(draw)
    return population


# --- what gets asked -------------------------------------------------------------------------------------------


@st.composite
def label_requirements(draw: DrawFn) -> str:
    """One requirement in any of labels.Parse's spellings, spaces where the lexer allows them."""
    key = draw(st.sampled_from((*LABELS, "ghost")))
    values = tuple(v for v in (*LABELS.get(key, ()), "", "unused") if valid_label_value(v))
    operator = draw(st.sampled_from(LABEL_OPERATORS))
    space = st.sampled_from(("", " "))
    if operator == "exists":
        return key
    if operator == "!":
        return f"!{draw(space)}{key}"
    if operator in ("in", "notin"):
        listed = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True))
        return f"{key} {operator}{draw(space)}({','.join(listed)})"
    value = draw(st.sampled_from(INTEGER_BOUNDS if operator in (">", "<") else values))
    return f"{key}{draw(space)}{operator}{draw(space)}{value}"


# Fields whose values prefix one another (node1/node10, 10.0.0.1/10.0.0.10, alph/alpha, gre/green): asked
# more often, as substring matching passes everything else.
NEAR_MISS_FIELDS = ("spec.nodeName", "status.podIP", "metadata.name", "spec.color")


@st.composite
def field_requirements(draw: DrawFn) -> str:
    field = draw(st.sampled_from(sorted(FIELD_VALUES)) | st.sampled_from(NEAR_MISS_FIELDS))
    operator = draw(st.sampled_from(("=", "==", "!=")))
    return f"{field}{operator}{escape_field_value(draw(st.sampled_from(FIELD_VALUES[field])))}"


@st.composite
def selectors(draw: DrawFn) -> tuple[str, str]:
    """A label and a field selector, at least one requirement between them."""
    requirements = draw(
        st.lists(st.tuples(st.booleans(), label_requirements(), field_requirements()), min_size=1, max_size=4)
    )
    labels = [label for is_label, label, _ in requirements if is_label]
    fields = [field for is_label, _, field in requirements if not is_label]
    return draw(st.sampled_from((",", ", "))).join(labels), ",".join(fields)


def ranges(population: Population) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """A prefix, or the span between two written keys (or the CRD's), whatever it holds now."""
    prefixes = st.sampled_from(PREFIXES).map(lambda prefix: (prefix, prefix_end(prefix)))
    written = sorted({*population.identities, SHIRTS.crd_key})
    spans = st.lists(st.sampled_from(written), min_size=2, max_size=2, unique=True).map(
        lambda pair: (min(pair), max(pair))
    )
    return st.one_of(prefixes, spans)

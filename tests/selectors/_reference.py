"""Kubernetes' selector semantics and storage encodings, written from Kubernetes' source for the tests alone.

Nothing here comes from kubefabric: the tests compare the server's answers with this model.

- Label selectors: k8s.io/apimachinery/pkg/labels/selector.go (Lexer, Parser, NewRequirement, Matches).
- Field selectors: k8s.io/apimachinery/pkg/fields/selector.go (splitTerms, splitTerm, UnescapeValue).
- Selectable fields: pkg/registry/core/pod/strategy.go ToSelectableFields, the secret strategy ("type"), and
  apiextensions-apiserver's customResourceStrategy.selectableFields (fmt.Sprint of the jsonPath's value).
- Values as kube-apiserver writes them: JSON (one line and a newline), or b"k8s\\x00" + runtime.Unknown with
  field numbers from k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1 generated.proto.
"""

from __future__ import annotations

import enum
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Encoding = Literal["json", "protobuf"]


class SelectorSyntaxError(ValueError):
    """A selector labels.Parse or fields.ParseSelector refuses."""


# --- label selectors -------------------------------------------------------------------------------------------


class _Token(enum.Enum):
    ERROR = enum.auto()
    END = enum.auto()
    CLOSE = enum.auto()
    COMMA = enum.auto()
    NOT = enum.auto()
    DOUBLE_EQUALS = enum.auto()
    EQUALS = enum.auto()
    GREATER = enum.auto()
    IDENTIFIER = enum.auto()
    IN = enum.auto()
    LESS = enum.auto()
    NOT_EQUALS = enum.auto()
    NOT_IN = enum.auto()
    OPEN = enum.auto()


_LITERAL_TOKENS = {
    ")": _Token.CLOSE,
    ",": _Token.COMMA,
    "!": _Token.NOT,
    "==": _Token.DOUBLE_EQUALS,
    "=": _Token.EQUALS,
    ">": _Token.GREATER,
    "in": _Token.IN,
    "<": _Token.LESS,
    "!=": _Token.NOT_EQUALS,
    "notin": _Token.NOT_IN,
    "(": _Token.OPEN,
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")

# The operators of a label requirement; "==" is "=" (they match alike).
LabelOperator = Literal["=", "!=", "in", "notin", "exists", "!", ">", "<"]
_OPERATOR_OF_TOKEN: dict[_Token, LabelOperator] = {
    _Token.IN: "in",
    _Token.NOT_IN: "notin",
    _Token.EQUALS: "=",
    _Token.DOUBLE_EQUALS: "=",
    _Token.NOT_EQUALS: "!=",
    _Token.GREATER: ">",
    _Token.LESS: "<",
}


def _lex(text: str) -> list[tuple[_Token, str]]:
    """Every token up to and including END, as Lexer.Lex scans them."""
    tokens: list[tuple[_Token, str]] = []
    position = 0
    while True:
        while position < len(text) and text[position] in _WHITESPACE:
            position += 1
        if position == len(text):
            tokens.append((_Token.END, ""))
            return tokens
        if text[position] in _SPECIAL:
            # The longest run of special characters that is still an operator.
            end = position + 1
            while end < len(text) and text[end] in _SPECIAL and text[position : end + 1] in _LITERAL_TOKENS:
                end += 1
            literal = text[position:end]
            tokens.append((_LITERAL_TOKENS[literal], literal))
            position = end
            continue
        end = position
        while end < len(text) and text[end] not in _SPECIAL and text[end] not in _WHITESPACE:
            end += 1
        literal = text[position:end]
        tokens.append((_LITERAL_TOKENS.get(literal, _Token.IDENTIFIER), literal))
        position = end


_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _check_label_key(key: str) -> None:
    """validation.IsQualifiedName."""
    parts = key.split("/")
    if len(parts) > 2:
        raise SelectorSyntaxError(f"invalid label key {key!r}")
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            raise SelectorSyntaxError(f"invalid label key prefix {key!r}")
    name = parts[-1]
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        raise SelectorSyntaxError(f"invalid label key {key!r}")


def valid_label_value(value: str) -> bool:
    """validation.IsValidLabelValue."""
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


def _check_label_value(value: str) -> None:
    if not valid_label_value(value):
        raise SelectorSyntaxError(f"invalid label value {value!r}")


_GO_INT = re.compile(r"[+-]?[0-9]+")


def go_parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64), or None where Go returns an error."""
    if not _GO_INT.fullmatch(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: LabelOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Requirement.Matches."""
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        number = go_parse_int(value) if present else None
        if number is None:
            return False
        (bound,) = (go_parse_int(v) for v in self.values)
        assert bound is not None  # the parser accepts only integer bounds
        return number > bound if self.operator == ">" else number < bound


class _LabelParser:
    """Parser.parse: a recursive descent over the scanned tokens."""

    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.position = 0

    def _peek(self, values: bool) -> tuple[_Token, str]:
        token, literal = self.tokens[self.position]
        if values and token in (_Token.IN, _Token.NOT_IN):
            token = _Token.IDENTIFIER  # "in" and "notin" are plain words where values are expected
        return token, literal

    def _take(self, values: bool) -> tuple[_Token, str]:
        taken = self._peek(values)
        self.position += 1
        return taken

    def parse(self) -> list[LabelRequirement]:
        requirements: list[LabelRequirement] = []
        while True:
            token, literal = self._peek(values=True)
            if token == _Token.END:
                return requirements
            if token not in (_Token.IDENTIFIER, _Token.NOT):
                raise SelectorSyntaxError(f"found {literal!r}, expected: !, identifier, or 'end of string'")
            requirements.append(self._requirement())
            token, literal = self._take(values=True)
            if token == _Token.END:
                return requirements
            if token != _Token.COMMA:
                raise SelectorSyntaxError(f"found {literal!r}, expected: ',' or 'end of string'")
            if self._peek(values=True)[0] not in (_Token.IDENTIFIER, _Token.NOT):
                raise SelectorSyntaxError("expected: identifier after ','")

    def _requirement(self) -> LabelRequirement:
        token, key = self._take(values=True)
        negated = token == _Token.NOT
        if negated:
            token, key = self._take(values=True)
        if token != _Token.IDENTIFIER:
            raise SelectorSyntaxError(f"found {key!r}, expected: identifier")
        _check_label_key(key)
        if negated or self._peek(values=True)[0] in (_Token.END, _Token.COMMA):
            return LabelRequirement(key, "!" if negated else "exists")
        token, literal = self._take(values=False)
        if token not in _OPERATOR_OF_TOKEN:
            raise SelectorSyntaxError(f"found {literal!r}, expected an operator")
        operator = _OPERATOR_OF_TOKEN[token]
        values = self._value_set() if operator in ("in", "notin") else self._exact_value()
        if operator in (">", "<") and go_parse_int(next(iter(values))) is None:
            raise SelectorSyntaxError(f"for 'Gt', 'Lt' operators, the value must be an integer: {values}")
        for value in values:
            _check_label_value(value)
        return LabelRequirement(key, operator, values)

    def _value_set(self) -> frozenset[str]:
        token, literal = self._take(values=True)
        if token != _Token.OPEN:
            raise SelectorSyntaxError(f"found {literal!r} expected: '('")
        token, literal = self._peek(values=True)
        if token == _Token.CLOSE:
            self._take(values=True)
            return frozenset({""})
        if token not in (_Token.IDENTIFIER, _Token.COMMA):
            raise SelectorSyntaxError(f"found {literal!r}, expected: ',', ')' or identifier")
        values = self._identifiers()
        if self._take(values=True)[0] != _Token.CLOSE:
            raise SelectorSyntaxError("expected: ')'")
        return values

    def _identifiers(self) -> frozenset[str]:
        """parseIdentifiersList: empty elements between commas are the empty value."""
        values: set[str] = set()
        while True:
            token, literal = self._take(values=True)
            if token == _Token.IDENTIFIER:
                values.add(literal)
                following, found = self._peek(values=True)
                if following == _Token.CLOSE:
                    return frozenset(values)
                if following != _Token.COMMA:
                    raise SelectorSyntaxError(f"found {found!r}, expected: ',' or ')'")
            elif token == _Token.COMMA:
                if not values:
                    values.add("")
                following = self._peek(values=True)[0]
                if following == _Token.CLOSE:
                    values.add("")
                    return frozenset(values)
                if following == _Token.COMMA:
                    self._take(values=True)
                    values.add("")
            else:
                raise SelectorSyntaxError(f"found {literal!r}, expected: ',', or identifier")

    def _exact_value(self) -> frozenset[str]:
        if self._peek(values=True)[0] in (_Token.END, _Token.COMMA):
            return frozenset({""})
        token, literal = self._take(values=True)
        if token != _Token.IDENTIFIER:
            raise SelectorSyntaxError(f"found {literal!r}, expected: identifier")
        return frozenset({literal})


def parse_labels(text: str) -> tuple[LabelRequirement, ...]:
    return tuple(_LabelParser(text).parse())


# --- field selectors -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negated: bool
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        """hasTerm / notHasTerm: a field the object lacks reads as ""."""
        return (fields.get(self.field, "") == self.value) != self.negated


def _split_terms(text: str) -> list[str]:
    """Split on commas that no backslash escapes; the escapes stay in the terms."""
    terms, start, escaped = [], 0, False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ",":
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return terms


def _unescape(value: str) -> str:
    out, escaped = [], False
    for character in value:
        if escaped:
            if character not in "\\,=":
                raise SelectorSyntaxError(f"invalid escape sequence \\{character}")
            out.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character in ",=":
            raise SelectorSyntaxError(f"unescaped {character!r} in a field selector value")
        else:
            out.append(character)
    if escaped:
        raise SelectorSyntaxError("field selector value ends in a lone backslash")
    return "".join(out)


def parse_fields(text: str) -> tuple[FieldRequirement, ...]:
    requirements = []
    for term in _split_terms(text) if text else []:
        if not term:
            continue
        for index in range(len(term)):
            operator = next((op for op in ("!=", "==", "=") if term.startswith(op, index)), None)
            if operator is not None:
                value = _unescape(term[index + len(operator) :])
                requirements.append(FieldRequirement(term[:index], operator == "!=", value))
                break
        else:
            raise SelectorSyntaxError(f"invalid selector: {text!r}; can't understand {term!r}")
    return tuple(requirements)


def escape_field_value(value: str) -> str:
    """fields.EscapeValue."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


# --- objects ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selectable:
    """What selectors see of one stored object."""

    labels: Mapping[str, str]
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Selector:
    labels: tuple[LabelRequirement, ...]
    fields: tuple[FieldRequirement, ...]

    def matches(self, selectable: Selectable | None) -> bool:
        """None is a value that is no Kubernetes object (e.g. encrypted): it is never filtered out."""
        if selectable is None:
            return True
        return all(r.matches(selectable.labels) for r in self.labels) and all(
            r.matches(selectable.fields) for r in self.fields
        )


def parse_selector(label_selector: str, field_selector: str) -> Selector:
    return Selector(parse_labels(label_selector), parse_fields(field_selector))


CREATED = "2024-05-01T10:00:00Z"
CREATED_SECONDS = 1714557600


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # Written with the same keys as labels but other values: a decoder that confuses the two maps is caught.
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"00000000-0000-4000-8000-{zlib.crc32(f'{self.namespace}/{self.name}'.encode()):012d}"

    def fields(self) -> dict[str, str]:
        return {"metadata.name": self.name, "metadata.namespace": self.namespace}

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        out |= {"uid": self.uid, "creationTimestamp": CREATED}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def as_protobuf(self) -> bytes:
        # gogo-protobuf writes every non-pointer field, empty ones included, in field-number order.
        return b"".join(
            [
                _string(1, self.name),
                _string(2, ""),  # generateName
                _string(3, self.namespace),
                _string(4, ""),  # selfLink
                _string(5, self.uid),
                _string(6, ""),  # resourceVersion: never stored
                _varint_field(7, 0),  # generation
                _message(8, _varint_field(1, CREATED_SECONDS) + _varint_field(2, 0)),  # creationTimestamp
                _string_map(11, self.labels),
                _string_map(12, self.annotations),
            ]
        )


@dataclass(frozen=True)
class Pod:
    meta: Meta
    node_name: str = ""
    phase: str = ""
    restart_policy: str = "Always"
    scheduler_name: str = "default-scheduler"
    service_account_name: str = "default"
    host_network: bool = False
    pod_ip: str = ""
    nominated_node_name: str = ""

    @property
    def key(self) -> bytes:
        return f"/registry/pods/{self.meta.namespace}/{self.meta.name}".encode()

    def selectable(self) -> Selectable:
        """ToSelectableFields."""
        return Selectable(
            self.meta.labels,
            self.meta.fields()
            | {
                "spec.nodeName": self.node_name,
                "spec.restartPolicy": self.restart_policy,
                "spec.schedulerName": self.scheduler_name,
                "spec.serviceAccountName": self.service_account_name,
                "spec.hostNetwork": "true" if self.host_network else "false",
                "status.phase": self.phase,
                "status.podIP": self.pod_ip,
                "status.nominatedNodeName": self.nominated_node_name,
            },
        )

    def encode(self, encoding: Encoding) -> bytes:
        return _pod_json(self) if encoding == "json" else _pod_protobuf(self)


@dataclass(frozen=True)
class Secret:
    meta: Meta
    type: str = "Opaque"

    @property
    def key(self) -> bytes:
        return f"/registry/secrets/{self.meta.namespace}/{self.meta.name}".encode()

    def selectable(self) -> Selectable:
        return Selectable(self.meta.labels, self.meta.fields() | {"type": self.type})

    def encode(self, encoding: Encoding) -> bytes:
        data = {"password": "c2VjcmV0"}  # base64 of b"secret"
        if encoding == "json":
            document = {"kind": "Secret", "apiVersion": "v1", "metadata": self.meta.as_json()}
            return _json(document | {"data": data, "type": self.type})
        body = self.meta.as_protobuf()
        return _kubernetes_protobuf(
            "v1", "Secret", _message(1, body) + _bytes_map(2, {"password": b"secret"}) + _string(3, self.type)
        )


@dataclass(frozen=True)
class CustomResourceKind:
    group: str
    plural: str
    kind: str
    version: str = "v1"

    @property
    def prefix(self) -> bytes:
        return f"/registry/{self.group}/{self.plural}/".encode()

    @property
    def crd_key(self) -> bytes:
        return f"/registry/apiextensions.k8s.io/customresourcedefinitions/{self.plural}.{self.group}".encode()

    def crd_selectable(self) -> Selectable:
        """What selectors see of the CustomResourceDefinition object itself."""
        return Selectable({}, Meta(f"{self.plural}.{self.group}", "").fields())

    def crd(self, selectable_fields: tuple[str, ...]) -> bytes:
        """The CustomResourceDefinition as kube-apiserver stores it; selectable_fields are jsonPaths."""
        schema = {
            "type": "object",
            "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
        version: dict[str, object] = {
            "name": self.version,
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": schema},
        }
        if selectable_fields:
            version["selectableFields"] = [{"jsonPath": path} for path in selectable_fields]
        names = {
            "plural": self.plural,
            "singular": self.kind.lower(),
            "kind": self.kind,
            "listKind": f"{self.kind}List",
        }
        document = {
            "kind": "CustomResourceDefinition",
            "apiVersion": "apiextensions.k8s.io/v1",
            "metadata": Meta(f"{self.plural}.{self.group}", "").as_json(),
            "spec": {
                "group": self.group,
                "names": names,
                "scope": "Namespaced",
                "versions": [version],
                "conversion": {"strategy": "None"},
            },
            "status": {"acceptedNames": names, "storedVersions": [self.version]},
        }
        return _json(document)


@dataclass(frozen=True)
class CustomResource:
    kind: CustomResourceKind
    meta: Meta
    spec: Mapping[str, object]

    @property
    def key(self) -> bytes:
        return self.kind.prefix + f"{self.meta.namespace}/{self.meta.name}".encode()

    def selectable(self, selectable_fields: tuple[str, ...]) -> Selectable:
        """customResourceStrategy.selectableFields: fmt.Sprint of the value at each jsonPath, "" when absent."""
        document = {"metadata": self.meta.as_json(), "spec": self.spec}
        fields = self.meta.fields()
        for path in selectable_fields:
            value: object = document
            for step in path.lstrip(".").split("."):
                value = value.get(step) if isinstance(value, dict) else None
            fields[path.lstrip(".")] = _go_sprint(value)
        return Selectable(self.meta.labels, fields)

    def encode(self) -> bytes:
        """Custom resources are stored as JSON only."""
        return _json(
            {
                "apiVersion": f"{self.kind.group}/{self.kind.version}",
                "kind": self.kind.kind,
                "metadata": self.meta.as_json(),
                "spec": dict(self.spec),
            }
        )


def _go_sprint(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json(document: Mapping[str, object]) -> bytes:
    """As kube-apiserver's JSON serializer writes: compact, then a newline."""
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _pod_json(pod: Pod) -> bytes:
    # Traps for a careless decoder: a container and a nodeSelector entry called like the labels.
    spec: dict[str, object] = {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
        "restartPolicy": pod.restart_policy,
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "nodeSelector": {"app": "node-selector-value"},
        "serviceAccountName": pod.service_account_name,
        "serviceAccount": pod.service_account_name,
    }
    if pod.node_name:
        spec["nodeName"] = pod.node_name
    if pod.host_network:
        spec["hostNetwork"] = True
    spec |= {"securityContext": {}, "schedulerName": pod.scheduler_name}
    status: dict[str, object] = {}
    if pod.phase:
        status["phase"] = pod.phase
    if pod.nominated_node_name:
        status["nominatedNodeName"] = pod.nominated_node_name
    if pod.pod_ip:
        status |= {"podIP": pod.pod_ip, "podIPs": [{"ip": pod.pod_ip}]}
    status["qosClass"] = "BestEffort"
    document = {"kind": "Pod", "apiVersion": "v1", "metadata": pod.meta.as_json(), "spec": spec, "status": status}
    return _json(document)


def _pod_protobuf(pod: Pod) -> bytes:
    container = _string(1, "app") + _string(2, "registry.k8s.io/pause:3.9")
    spec = b"".join(
        [
            _message(2, container),
            _string(3, pod.restart_policy),
            _varint_field(4, 30),  # terminationGracePeriodSeconds
            _string(6, "ClusterFirst"),
            _string_map(7, {"app": "node-selector-value"}),
            _string(8, pod.service_account_name),
            _string(9, pod.service_account_name),
            _string(10, pod.node_name),
            _varint_field(11, int(pod.host_network)),
            _varint_field(12, 0),  # hostPID
            _varint_field(13, 0),  # hostIPC
            _message(14, b""),  # securityContext
            _string(16, ""),  # hostname
            _string(17, ""),  # subdomain
            _string(19, pod.scheduler_name),
        ]
    )
    status = b"".join(
        [
            _string(1, pod.phase),
            _string(3, ""),  # message
            _string(4, ""),  # reason
            _string(5, ""),  # hostIP
            _string(6, pod.pod_ip),
            _string(9, "BestEffort"),
            _string(11, pod.nominated_node_name),
            _message(12, _string(1, pod.pod_ip)) if pod.pod_ip else b"",  # podIPs
        ]
    )
    body = _message(1, pod.meta.as_protobuf()) + _message(2, spec) + _message(3, status)
    return _kubernetes_protobuf("v1", "Pod", body)


# --- a protobuf writer of the few wire shapes Kubernetes objects use -----------------------------------------


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _message(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _message(number, text.encode())


def _string_map(number: int, entries: Mapping[str, str]) -> bytes:
    return b"".join(_message(number, _string(1, k) + _string(2, v)) for k, v in sorted(entries.items()))


def _bytes_map(number: int, entries: Mapping[str, bytes]) -> bytes:
    return b"".join(_message(number, _string(1, k) + _message(2, v)) for k, v in sorted(entries.items()))


def _kubernetes_protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    """b"k8s\\x00" + runtime.Unknown{typeMeta, raw, contentEncoding, contentType}."""
    type_meta = _string(1, api_version) + _string(2, kind)
    return b"k8s\x00" + _message(1, type_meta) + _message(2, raw) + _string(3, "") + _string(4, "")


def encrypted(seed: bytes) -> bytes:
    """A value as kube-apiserver writes it with encryption at rest: opaque to the store."""
    return b"k8s:enc:aescbc:v1:key1:" + seed

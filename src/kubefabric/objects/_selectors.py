"""Label and field selectors, parsed and matched exactly as Kubernetes does.

Ports k8s.io/apimachinery/pkg/labels/selector.go (`Parse`, its lexer and parser, `NewRequirement`,
`Requirement.Matches`) and pkg/fields/selector.go (`ParseSelector`, `UnescapeValue`), with the label key and
value validation of pkg/api/validate/content (`IsLabelKey`, `IsLabelValue`) and their error messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kubefabric.objects._decode import ObjectInfo

Operator = Literal["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]


class SelectorError(ValueError):
    """A label or field selector that does not parse.

    str() names the selector and says what is wrong; `detail` is Kubernetes' own message for the error.
    """

    def __init__(self, kind: Literal["label", "field"], selector: str, detail: str) -> None:
        super().__init__(f"{kind} selector {go_quote(selector)}: {detail}")
        self.selector = selector
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...]

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        """labels.Requirement.Matches: `!=` and `notin` match when the key is absent."""
        value = labels.get(self.key)
        operator = self.operator
        if operator == "=" or operator == "in":
            return value is not None and value in self.values
        if operator == "!=" or operator == "notin":
            return value is None or value not in self.values
        if operator == "exists":
            return value is not None
        if operator == "!":
            return value is None
        if value is None:
            return False
        number = label_integer(value)
        if number is None:
            return False
        # The parser guarantees exactly one integer value for gt and lt.
        limit = int(self.values[0])
        return number > limit if operator == "gt" else number < limit

    def matches_fields(self, fields: Mapping[str, str]) -> bool:
        """fields.hasTerm / notHasTerm: an absent field reads as "" (fields.Set.Get)."""
        value = fields.get(self.key, "")
        return (value == self.values[0]) == (self.operator == "=")


@dataclass(frozen=True, slots=True)
class Selector:
    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, info: ObjectInfo | None) -> bool:
        """Kubernetes' matching. info None (a value that is not a decodable Kubernetes object, e.g. encrypted at
        rest) matches every selector: the apiserver filters again, and an object must never be lost."""
        if info is None:
            return True
        labels = info.labels
        for requirement in self.labels:
            if not requirement.matches_labels(labels):
                return False
        fields = info.fields
        for requirement in self.fields:
            if not requirement.matches_fields(fields):
                return False
        return True


def parse_selector(label_selector: str, field_selector: str) -> Selector:
    """Both strings as labels.Parse and fields.ParseSelector accept them; raises SelectorError."""
    return Selector(labels=_parse_labels(label_selector), fields=_parse_fields(field_selector))


_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def label_integer(value: str) -> int | None:
    """The value as the `gt`/`lt` operators read it (Go strconv.ParseInt(value, 10, 64)), or None."""
    if _INTEGER.fullmatch(value) is None:
        return None
    number = int(value)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


# --- Go string quoting (%q), used in Kubernetes' error messages ------------------------------------------------

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """strconv.Quote: printable characters as they are, the rest escaped the way Go escapes them."""
    parts = ['"']
    for char in text:
        if char == '"' or char == "\\":
            parts.append("\\" + char)
        elif char in _GO_ESCAPES:
            parts.append(_GO_ESCAPES[char])
        elif char.isprintable():
            parts.append(char)
        elif ord(char) < 0x80:
            parts.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    parts.append('"')
    return "".join(parts)


# --- label key and value validation (k8s.io/apimachinery/pkg/api/validate/content) ------------------------------

_LABEL_KEY_FORMAT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY = re.compile(_LABEL_KEY_FORMAT, re.ASCII)
_LABEL_VALUE_FORMAT = f"({_LABEL_KEY_FORMAT})?"
_DNS1123_LABEL_FORMAT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FORMAT = _DNS1123_LABEL_FORMAT + "(\\." + _DNS1123_LABEL_FORMAT + ")*"
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FORMAT, re.ASCII)
_LABEL_KEY_MESSAGE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)
_LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)


def _regex_error(message: str, pattern: str, *examples: str) -> str:
    """content.RegexError."""
    if not examples:
        return f"{message} (regex used for validation is '{pattern}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{pattern}')"


def _max_length_error(length: int) -> str:
    return f"must be no more than {length} bytes"


def _label_key_errors(key: str) -> list[str]:
    """content.IsLabelKey (validation.IsQualifiedName)."""
    errors: list[str] = []
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix.encode()) > 253:
                errors.append("prefix part " + _max_length_error(253))
            if _DNS1123_SUBDOMAIN.fullmatch(prefix) is None:
                errors.append(
                    "prefix part " + _regex_error(_DNS1123_SUBDOMAIN_MESSAGE, _DNS1123_SUBDOMAIN_FORMAT, "example.com")
                )
    else:
        message = _regex_error(_LABEL_KEY_MESSAGE, _LABEL_KEY_FORMAT, "MyName", "my.name", "123-abc")
        return [
            f"a valid label key {message} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name.encode()) > 63:
        errors.append("name part " + _max_length_error(63))
    if _LABEL_KEY.fullmatch(name) is None:
        errors.append(
            "name part " + _regex_error(_LABEL_KEY_MESSAGE, _LABEL_KEY_FORMAT, "MyName", "my.name", "123-abc")
        )
    return errors


def _label_value_errors(value: str) -> list[str]:
    """content.IsLabelValue (validation.IsValidLabelValue)."""
    errors: list[str] = []
    if len(value.encode()) > 63:
        errors.append(_max_length_error(63))
    if value and _LABEL_KEY.fullmatch(value) is None:
        errors.append(_regex_error(_LABEL_VALUE_MESSAGE, _LABEL_VALUE_FORMAT, "MyValue", "my_value", "12345"))
    return errors


def _invalid(path: str, value: str, detail: str) -> str:
    """field.Invalid(path, value, detail).Error() for a string value."""
    return f"{path}: Invalid value: {go_quote(value)}: {detail}"


def _aggregate(messages: list[str]) -> str:
    """ErrorList.ToAggregate().Error(): duplicates dropped, several messages bracketed."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# --- the label selector lexer and parser (labels/selector.go) ----------------------------------------------------

_IDENTIFIER, _END = "identifier", "end"
_SYMBOLS = frozenset({")", ",", "!", "==", "=", ">", "<", "!=", "("})
_KEYWORDS = {"in": "in", "notin": "notin"}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_WHITESPACE_OR_NUL = _WHITESPACE | {"\x00"}
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"
_OPERATOR_OF_TOKEN: dict[str, Operator] = {
    "in": "in",
    "notin": "notin",
    "=": "=",
    "==": "=",
    "!=": "!=",
    ">": "gt",
    "<": "lt",
}


def _lex(selector: str) -> list[tuple[str, str]]:
    """Lexer.Lex until the end of the string: (token, literal) pairs, where a token is a symbol, a keyword,
    `identifier` or `end`. Like Go's lexer, which reads a NUL byte as its end-of-input marker, a NUL where a token
    starts ends the selector and a NUL right after a token is skipped."""
    items: list[tuple[str, str]] = []
    length = len(selector)
    position = 0
    while True:
        while position < length and selector[position] in _WHITESPACE:
            position += 1
        if position >= length or selector[position] == "\x00":
            items.append((_END, ""))
            return items
        if selector[position] in _SPECIAL:
            # The longest symbol: every special character is one, and "==" and "!=" are the only longer ones.
            literal = selector[position : position + 2]
            if literal not in _SYMBOLS:
                literal = selector[position]
            items.append((literal, literal))
            end = position + len(literal)
        else:
            end = position
            while end < length and selector[end] not in _SPECIAL and selector[end] not in _WHITESPACE_OR_NUL:
                end += 1
            literal = selector[position:end]
            items.append((_KEYWORDS.get(literal, _IDENTIFIER), literal))
        position = end + 1 if end < length and selector[end] == "\x00" else end


class _LabelParser:
    def __init__(self, selector: str) -> None:
        self.items = _lex(selector)
        self.position = 0

    def lookahead(self, values: bool) -> tuple[str, str]:
        token, literal = self.items[self.position]
        if values and token in _KEYWORDS:
            # In a values context, "in" and "notin" are plain identifiers ("x in (in)").
            token = _IDENTIFIER
        return token, literal

    def consume(self, values: bool) -> tuple[str, str]:
        item = self.lookahead(values)
        self.position += 1
        return item

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            token, literal = self.lookahead(True)
            if token == _END:
                return requirements
            if token != _IDENTIFIER and token != "!":
                raise _ParseError(f"found '{literal}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self.parse_requirement())
            except _ParseError as error:
                raise _ParseError(f"unable to parse requirement: {error}") from None
            token, literal = self.consume(True)
            if token == _END:
                return requirements
            if token != ",":
                raise _ParseError(f"found '{literal}', expected: ',' or 'end of string'")
            next_token, next_literal = self.lookahead(True)
            if next_token != _IDENTIFIER and next_token != "!":
                raise _ParseError(f"found '{next_literal}', expected: identifier after ','")

    def parse_requirement(self) -> Requirement:
        token, key = self.consume(True)
        unary: Operator | None = None
        if token == "!":
            unary = "!"
            token, key = self.consume(True)
        if token != _IDENTIFIER:
            raise _ParseError(f"found '{key}', expected: identifier")
        key_errors = _label_key_errors(key)
        if key_errors:
            raise _ParseError(_invalid("<nil>", key, "; ".join(key_errors)))
        # "!key" takes no operator: in "!x=a" the "=" is then found where "," or the end belongs.
        if unary is not None:
            return Requirement(key, unary, ())
        if self.lookahead(True)[0] in (_END, ","):
            return Requirement(key, "exists", ())
        token, literal = self.consume(False)
        operator = _OPERATOR_OF_TOKEN.get(token)
        if operator is None:
            raise _ParseError(f"found '{literal}', expected: {_BINARY_OPERATORS}")
        values = self.parse_set() if operator in ("in", "notin") else self.parse_exact_value()
        return _new_requirement(key, operator, sorted(values))

    def parse_set(self) -> set[str]:
        token, literal = self.consume(True)
        if token != "(":
            raise _ParseError(f"found '{literal}' expected: '('")
        token, literal = self.lookahead(True)
        if token == ")":
            self.consume(True)
            return {""}
        if token != _IDENTIFIER and token != ",":
            raise _ParseError(f"found '{literal}', expected: ',', ')' or identifier")
        values = self.parse_identifiers()
        if self.consume(True)[0] != ")":
            raise _ParseError(f"found '{literal}', expected: ')'")
        return values

    def parse_identifiers(self) -> set[str]:
        values: set[str] = set()
        while True:
            token, literal = self.consume(True)
            if token == _IDENTIFIER:
                values.add(literal)
                next_token, next_literal = self.lookahead(True)
                if next_token == ",":
                    continue
                if next_token == ")":
                    return values
                raise _ParseError(f"found '{next_literal}', expected: ',' or ')'")
            if token == ",":
                # An empty element: "(,a)", "(a,)" and "(a,,b)" all hold "".
                if not values:
                    values.add("")
                next_token = self.lookahead(True)[0]
                if next_token == ")":
                    values.add("")
                    return values
                if next_token == ",":
                    self.consume(True)
                    values.add("")
                continue
            raise _ParseError(f"found '{literal}', expected: ',', or identifier")

    def parse_exact_value(self) -> set[str]:
        if self.lookahead(True)[0] in (_END, ","):
            return {""}
        token, literal = self.consume(True)
        if token == _IDENTIFIER:
            return {literal}
        raise _ParseError(f"found '{literal}', expected: identifier")


class _ParseError(Exception):
    pass


def _new_requirement(key: str, operator: Operator, values: list[str]) -> Requirement:
    """labels.NewRequirement for the binary operators, with its validation errors (the key is already valid)."""
    errors: list[str] = []
    if operator in ("gt", "lt"):
        for index, value in enumerate(values):
            if label_integer(value) is None:
                errors.append(
                    _invalid(f"values[{index}]", value, "for 'Gt', 'Lt' operators, the value must be an integer")
                )
    for index, value in enumerate(values):
        value_errors = _label_value_errors(value)
        if value_errors:
            errors.append(_invalid(f"values[{index}][{key}]", value, "; ".join(value_errors)))
    if errors:
        raise _ParseError(_aggregate(errors))
    return Requirement(key, operator, tuple(values))


def _parse_labels(selector: str) -> tuple[Requirement, ...]:
    try:
        requirements = _LabelParser(selector).parse()
    except _ParseError as error:
        raise SelectorError("label", selector, str(error)) from None
    requirements.sort(key=lambda requirement: requirement.key)
    return tuple(requirements)


# --- the field selector parser (fields/selector.go) ---------------------------------------------------------------

_FIELD_OPERATORS = ("!=", "==", "=")


def _split_terms(selector: str) -> list[str]:
    """splitTerms: commas split terms, except a backslash-escaped one."""
    terms: list[str] = []
    start = 0
    escaped = False
    for index, char in enumerate(selector):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """splitTerm: the first operator from the left splits the term; the field name has no escaping."""
    for index in range(len(term)):
        for operator in _FIELD_OPERATORS:
            if term.startswith(operator, index):
                return term[:index], operator, term[index + len(operator) :]
    return None


def _unescape_value(value: str) -> str:
    """fields.UnescapeValue: `\\\\`, `\\,` and `\\=` are the only escapes; a bare `,` or `=` is an error."""
    if "\\" not in value and "," not in value and "=" not in value:
        return value
    chars: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise _ParseError(f"invalid field selector: invalid escape sequence: \\{char}")
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "," or char == "=":
            # Go prints the rune with %v, which is its number.
            raise _ParseError(f"invalid field selector: unescaped character in value: {ord(char)}")
        else:
            chars.append(char)
    if escaped:
        raise _ParseError("invalid field selector: invalid escape sequence: \\")
    return "".join(chars)


def _parse_fields(selector: str) -> tuple[Requirement, ...]:
    if not selector:
        return ()
    requirements: list[Requirement] = []
    for term in sorted(_split_terms(selector)):
        if not term:
            continue
        split = _split_term(term)
        if split is None:
            raise SelectorError("field", selector, f"invalid selector: '{selector}'; can't understand '{term}'")
        field, operator, raw_value = split
        try:
            value = _unescape_value(raw_value)
        except _ParseError as error:
            raise SelectorError("field", selector, str(error)) from None
        requirements.append(Requirement(field, "!=" if operator == "!=" else "=", (value,)))
    return tuple(requirements)

"""Label and field selectors answered in SQL, from the attribute index every SQL store keeps.

Each stored version of a key has `attribute` rows, written in the same transaction as the version:
one per label (`l:<label key>`), one per selectable field whose value is not empty
(`f:<field path>`), or, when its value is no Kubernetes object kubefabric can read (encrypted at
rest, not an object at all), a single opaque row. Fields are indexed only when not empty because
Kubernetes matches a missing field as "", which keeps `spec.nodeName=` an anti-join instead of a
row per object. Opaque versions match every selector, so nothing is ever lost: the apiserver
filters what it gets again.

Every readable object also gets the rows garbage collection looks its versions up by: `u` (its uid),
`o:<owner uid>` per owner it references ("b" when the reference blocks the owner's deletion) and `g`
when it is collected by kubefabric and has owners or is being deleted. Selectors never look at them.

A selector becomes EXISTS / NOT EXISTS conditions on a version's rows. When one requirement needs
a row to exist (`app=web`, `tier in (a,b)`, `spec.nodeName=n1`...), the query is driven from
the attribute index instead of the key range, so it costs O(matches), not O(objects).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kubefabric.objects import ObjectInfo, Requirement, Selector, label_integer
from kubefabric.stores._base import LIVE, Attribute, KeyValue

# The name of the one row standing for a version's selector rows when its value is no object kubefabric can
# read, or has a label or field too long to index.
OPAQUE = ""
# Longer values are not indexed: their version is indexed as opaque instead. That keeps every index
# entry (name, value, key) within InnoDB's 3072 bytes, with keys of up to 2048.
MAX_NAME_BYTES = 320
MAX_VALUE_BYTES = 700

# The rows garbage collection finds versions by.
UID = "u"  # value: the object's metadata.uid
OWNER = "o:"  # + an owner's uid; value BLOCKING when a reference to it has blockOwnerDeletion, else ""
BLOCKING = "b"
# value "": what the collector examines after a restart: a collected object with owners or a deletionTimestamp,
# or any object being deleted in the foreground (its collected dependents are the collector's).
COLLECTING = "g"
# Names or values per statement of a lookup: bounded, so that no statement nears a database's parameter limit.
LOOKUP_CHUNK = 500

# Columns of a range answer, in KeyValue order, from the `kv` alias.
_KV_COLUMNS = ("{key}", "create_revision", "mod_revision", "version", "value", "lease")


def attributes(key: bytes, mod_revision: int, info: ObjectInfo | None) -> list[Attribute]:
    """The attribute rows of one version whose object is `info` (None: not readable)."""
    # The opaque row's value is the key's last segment, the object's name in a /registry key: garbage collection
    # finds by it the unreadable objects that may be an owner it cannot find by uid.
    name = key.rsplit(b"/", 1)[-1].decode(errors="replace")
    opaque = [Attribute(key, mod_revision, OPAQUE, name if len(name.encode()) <= MAX_VALUE_BYTES else "", None)]
    if info is None:
        return opaque
    rows = [
        Attribute(key, mod_revision, "l:" + name, value, label_integer(value)) for name, value in info.labels.items()
    ]
    rows += [Attribute(key, mod_revision, "f:" + name, value, None) for name, value in info.fields.items() if value]
    if not all(map(_indexable, rows)):
        rows = opaque
    # Garbage collection rows stay with an opaque version; one too long to index is left out alone.
    return rows + [row for row in _collection_rows(key, mod_revision, info) if _indexable(row)]


def _indexable(row: Attribute) -> bool:
    return len(row.name.encode()) <= MAX_NAME_BYTES and len(row.value.encode()) <= MAX_VALUE_BYTES


def _collection_rows(key: bytes, mod_revision: int, info: ObjectInfo) -> list[Attribute]:
    rows = [Attribute(key, mod_revision, UID, info.uid, None)] if info.uid else []
    # One row per owner: an object may reference one owner twice, and blocks it if either reference does.
    blocks: dict[str, bool] = {}
    for reference in info.owner_references:
        blocks[reference.uid] = blocks.get(reference.uid, False) or reference.block_owner_deletion
    rows += [
        Attribute(key, mod_revision, OWNER + uid, BLOCKING if block else "", None) for uid, block in blocks.items()
    ]
    if (info.collected and (info.owner_references or info.deletion_timestamp is not None)) or (
        info.waiting_for_dependents
    ):
        rows.append(Attribute(key, mod_revision, COLLECTING, "", None))
    return rows


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells what the queries need."""

    placeholder: Callable[[int], str]  # the n-th parameter (from 1): "?", "$n" or "%s"
    key: str  # the `key` column, quoted where the word is reserved
    empty_value: str  # an empty byte string literal, for keys-only answers
    # The attribute index entries `d` joined with their versions `kv`, index entries first: SQLite
    # takes the join order and the index as written (it keeps no statistics to choose by).
    driven_join: str = "attribute d CROSS JOIN kv"


@dataclass(frozen=True, slots=True)
class _Condition:
    """One requirement as a condition on a version's attribute rows."""

    exists: bool  # EXISTS when true, NOT EXISTS otherwise
    name: str
    values: tuple[str, ...] = ()  # value IN these, if any
    number: tuple[str, int] | None = None  # (">" or "<", n): number compared, if any


def _conditions(selector: Selector) -> list[_Condition]:
    conditions = [_label_condition(requirement) for requirement in selector.labels]
    conditions += [_field_condition(requirement) for requirement in selector.fields]
    return conditions


def _label_condition(requirement: Requirement) -> _Condition:
    name = "l:" + requirement.key
    operator = requirement.operator
    if operator in ("=", "in"):
        return _Condition(True, name, requirement.values)
    if operator in ("!=", "notin"):
        return _Condition(False, name, requirement.values)
    if operator == "exists":
        return _Condition(True, name)
    if operator == "!":
        return _Condition(False, name)
    bound = label_integer(requirement.values[0])
    assert bound is not None, "the parser accepts only integers for gt and lt"
    return _Condition(True, name, number=(">" if operator == "gt" else "<", bound))


def _field_condition(requirement: Requirement) -> _Condition:
    # Only non-empty field values have rows: `f=""` holds where there is no row, `f!=""` where there is one.
    (value,) = requirement.values
    equal = requirement.operator == "="
    if value == "":
        return _Condition(not equal, "f:" + requirement.key)
    return _Condition(equal, "f:" + requirement.key, (value,))


class _Query:
    """SQL text and its parameters, built left to right so positional placeholders line up."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.params: list[object] = []

    def param(self, value: object) -> str:
        self.params.append(value)
        return self.dialect.placeholder(len(self.params))

    def matching(self, alias: str, condition: _Condition) -> str:
        """`alias`'s rows of the condition's name, value and number (not its existence)."""
        sql = f"{alias}.name = {self.param(condition.name)}"
        if condition.values:
            sql += f" AND {alias}.value IN ({', '.join(self.param(value) for value in condition.values)})"
        if condition.number is not None:
            operator, bound = condition.number
            sql += f" AND {alias}.number {operator} {self.param(bound)}"
        return sql

    def exists(self, condition: _Condition, of: str) -> str:
        key = self.dialect.key
        rows = (
            f"SELECT 1 FROM attribute a WHERE a.{key} = {of}.{key} AND a.mod_revision = {of}.mod_revision "
            f"AND {self.matching('a', condition)}"
        )
        return f"{'' if condition.exists else 'NOT '}EXISTS ({rows})"

    def keys(self, alias: str, start: bytes, end: bytes | None) -> str:
        key = f"{alias}.{self.dialect.key}"
        if end is None:
            return f"{key} = {self.param(start)}"
        sql = f"{key} >= {self.param(start)}"
        return sql + (f" AND {key} < {self.param(end)}" if end else "")

    def versions(self, past_revision: int | None) -> str:
        if past_revision is None:
            return f"kv.superseded = {LIVE}"
        return f"kv.mod_revision <= {self.param(past_revision)} AND kv.superseded > {self.param(past_revision)}"


def selection_queries(
    dialect: Dialect,
    selector: Selector,
    start: bytes,
    end: bytes | None,
    past_revision: int | None,
    limit: int,
    keys_only: bool,
) -> tuple[str, str, list[object]]:
    """(select, count, parameters) for the keys in [start, end) whose objects `selector` matches, at
    the head (`past_revision` None) or at a past revision. Both statements take the same parameters."""
    conditions = _conditions(selector)
    columns = ", ".join(
        f"kv.{column.format(key=dialect.key)}" if column != "value" or not keys_only else dialect.empty_value
        for column in _KV_COLUMNS
    )
    key = dialect.key
    joined = f"kv.{key} = d.{key} AND kv.mod_revision = d.mod_revision"
    query = _Query(dialect)
    driver = next((condition for condition in conditions if condition.exists), None)
    if driver is not None:
        # One existing row is required: walk that row's index entries in the range, join their versions.
        matched = (
            f"SELECT {columns} FROM {dialect.driven_join} WHERE {query.matching('d', driver)} "
            f"AND {query.keys('d', start, end)} AND {joined} AND {query.versions(past_revision)}"
        )
        rest = [condition for condition in conditions if condition is not driver]
    else:
        # Only absences are required: every version in the range is a candidate, opaque ones apart.
        matched = (
            f"SELECT {columns} FROM kv WHERE {query.keys('kv', start, end)} AND {query.versions(past_revision)} "
            f"AND {query.exists(_Condition(False, OPAQUE), 'kv')}"
        )
        rest = conditions
    for condition in rest:
        matched += f" AND {query.exists(condition, 'kv')}"
    opaque = (
        f"SELECT {columns} FROM {dialect.driven_join} WHERE d.name = '{OPAQUE}' "
        f"AND {query.keys('d', start, end)} AND {joined} AND {query.versions(past_revision)}"
    )
    count = f"SELECT COUNT(*) FROM ({matched} UNION ALL {opaque}) AS selected"
    if limit <= 0:
        return f"{matched} UNION ALL {opaque} ORDER BY 1", count, query.params
    # Each part stops at `limit` keys of its own, in the order of the index it walks where it can:
    # the first `limit` keys of the union are among them.
    matched_order = "d" if driver is not None else "kv"
    select = (
        f"SELECT * FROM ({matched} ORDER BY {matched_order}.{key} LIMIT {limit}) AS matched UNION ALL "
        f"SELECT * FROM ({opaque} ORDER BY d.{key} LIMIT {limit}) AS opaque ORDER BY 1 LIMIT {limit}"
    )
    return select, count, query.params


def lookup_queries(
    dialect: Dialect, names: Sequence[str], values: Sequence[str], after: bytes, limit: int
) -> list[tuple[str, list[object]]]:
    """(select, parameters) of the statements whose answers, merged by `merge_found`, are the live versions with an
    attribute named one of `names` (and valued one of `values`, when any) whose key is > `after`.

    Each statement takes a share of the names and values, walks their entries in the attribute index, joins each
    entry's version if it is live, and returns at most `limit` versions (0: all), each once, in key order: the
    first `limit` of the merge are among them.
    """
    key = dialect.key
    columns = ", ".join(f"kv.{column.format(key=key)}" for column in _KV_COLUMNS)
    statements = []
    for some_names in _chunks(names):
        for some_values in _chunks(values) if values else [()]:
            query = _Query(dialect)
            select = (
                f"SELECT {columns} FROM {dialect.driven_join} "
                f"WHERE d.name IN ({', '.join(map(query.param, some_names))}) "
            )
            if some_values:
                select += f"AND d.value IN ({', '.join(map(query.param, some_values))}) "
            select += (
                f"AND d.{key} > {query.param(after)} AND kv.{key} = d.{key} AND kv.mod_revision = d.mod_revision "
                f"AND kv.superseded = {LIVE} "
            )
            if len(some_names) > 1:
                # A version can have several of the names (o:<uid> of two owners): it comes back once.
                select += f"GROUP BY kv.{key}, kv.mod_revision ORDER BY kv.{key}, kv.mod_revision"
            else:
                select += f"ORDER BY d.{key}"
            statements.append((select + (f" LIMIT {limit}" if limit > 0 else ""), query.params))
    return statements


def merge_found(answers: Iterable[list[KeyValue]], limit: int) -> list[KeyValue]:
    """The answers of `lookup_queries`' statements as one: in key order, each version once, at most `limit` (0: all)."""
    found: list[KeyValue] = []
    for kv in heapq.merge(*answers, key=lambda kv: kv.key):
        if found and found[-1].key == kv.key:
            continue  # a version matched in two statements' shares
        found.append(kv)
        if len(found) == limit:
            break
    return found


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[start : start + LOOKUP_CHUNK] for start in range(0, len(items), LOOKUP_CHUNK)]

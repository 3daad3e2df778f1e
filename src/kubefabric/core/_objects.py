"""What the core knows of the Kubernetes objects it stores: their selectable attributes.

Every write batch gets the attributes of the versions it writes before it reaches the store, so
the SQL stores keep their selector index in the same transaction as the data. The field catalog
(which fields a custom resource's CRD makes selectable) is learnt from the CRDs as they are
written: a CRD that changes its selectable fields re-indexes the live objects of its kind in the
same batch, so selections by the new fields are right from the CRD's own revision on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

from kubefabric.core._errors import EtcdError
from kubefabric.core._metrics import OPAQUE_VALUES
from kubefabric.objects import FieldCatalog, ObjectInfo, Selector, SelectorError, decode, parse_selector
from kubefabric.stores import Attribute, KeyValue, Lookup, Selection, Store, WriteBatch, attributes

log = logging.getLogger(__name__)

CRD_PREFIX = b"/registry/apiextensions.k8s.io/customresourcedefinitions/"
# Decoded versions kept for watchers and stores that match in Python: a write is usually offered to
# every watcher of its prefix, so one decode serves them all.
CACHE_SIZE = 4096
# Versions indexed per batch while building the index of an older database.
BUILD_CHUNK = 2000


class InvalidSelector(EtcdError):
    code = "INVALID_ARGUMENT"


def request_selector(label_selector: str, field_selector: str) -> Selector | None:
    """The selector a request carries; None when it carries none."""
    if not label_selector and not field_selector:
        return None
    try:
        selector = parse_selector(label_selector, field_selector)
    except SelectorError as error:
        raise InvalidSelector(str(error)) from None
    return None if selector.empty else selector


class ObjectIndex:
    def __init__(self) -> None:
        self.catalog = FieldCatalog()
        self._decoded: OrderedDict[tuple[bytes, int], ObjectInfo | None] = OrderedDict()

    def info(self, kv: KeyValue) -> ObjectInfo | None:
        version = (kv.key, kv.mod_revision)
        try:
            self._decoded.move_to_end(version)
            return self._decoded[version]
        except KeyError:
            pass
        info = self._decoded[version] = decode(kv.key, kv.value, self.catalog)
        if len(self._decoded) > CACHE_SIZE:
            self._decoded.popitem(last=False)
        return info

    def selection(self, selector: Selector) -> Selection:
        return Selection(selector, lambda kv: selector.matches(self.info(kv)))

    def lookup(self, names: Iterable[str], values: Iterable[str] = ()) -> Lookup:
        """The live versions with an attribute row named one of `names` (valued one of `values`, if any): for
        a store without an index, the same test made on the rows the SQL stores index."""
        wanted_names, wanted_values = tuple(names), tuple(values)
        name_set, value_set = set(wanted_names), set(wanted_values)

        def matches(kv: KeyValue) -> bool:
            return any(
                row.name in name_set and (not value_set or row.value in value_set)
                for row in attributes(kv.key, kv.mod_revision, self.info(kv))
            )

        return Lookup(wanted_names, wanted_values, matches)

    async def open(self, store: Store, revision: int, backlog: bool) -> None:
        """Learn the stored CRDs; index what an older database stored before it had an index."""
        crds = await store.range(CRD_PREFIX, CRD_PREFIX[:-1] + b"0", 0, 0, False, False)
        for kv in crds.kvs:
            self.catalog.learn(kv.key, kv.value)
        if backlog:
            await self._build(store, revision)

    async def _build(self, store: Store, revision: int) -> None:
        log.info("building the selector index of the stored versions")
        after, indexed = (b"", 0), 0
        while True:
            versions = await store.unindexed(after, BUILD_CHUNK)
            batch = WriteBatch(revision, index_complete=len(versions) < BUILD_CHUNK)
            batch.reindexed = [(kv.key, kv.mod_revision) for kv in versions]
            batch.attributes = [row for kv in versions for row in self._attributes(kv)]
            await store.write(batch)
            indexed += len(versions)
            if batch.index_complete:
                log.info("selector index built: %d versions", indexed)
                return
            after = batch.reindexed[-1]
            log.info("selector index: %d versions indexed, now at %r", indexed, after[0])

    async def annotate(self, store: Store, batch: WriteBatch) -> None:
        """Add the attributes of the batch's versions, and re-index a kind whose CRD changed its fields."""
        changed_kinds = [
            change.kv.key.removeprefix(CRD_PREFIX)
            for change in batch.changes
            if change.kv.key.startswith(CRD_PREFIX)
            and self.catalog.learn(change.kv.key, None if change.is_delete else change.kv.value)
        ]
        for crd_name in changed_kinds:
            await self._reindex_kind(store, batch, crd_name)
        for change in batch.changes:
            if not change.is_delete:
                batch.attributes.extend(self._attributes(change.kv))

    async def _reindex_kind(self, store: Store, batch: WriteBatch, crd_name: bytes) -> None:
        plural, _, group = crd_name.partition(b".")
        prefix = b"/registry/" + group + b"/" + plural + b"/"
        live = await store.range(prefix, prefix[:-1] + b"0", 0, 0, False, False)
        log.info("selectable fields of %s changed: re-indexing its %d objects", crd_name.decode(), len(live.kvs))
        for kv in live.kvs:
            batch.reindexed.append((kv.key, kv.mod_revision))
            batch.attributes.extend(self._attributes(kv))

    def _attributes(self, kv: KeyValue) -> list[Attribute]:
        self._forget(kv)
        info = self.info(kv)
        if info is None:
            OPAQUE_VALUES.inc()
        return attributes(kv.key, kv.mod_revision, info)

    def _forget(self, kv: KeyValue) -> None:
        """Decode this version again: the catalog may have changed since it was cached."""
        self._decoded.pop((kv.key, kv.mod_revision), None)

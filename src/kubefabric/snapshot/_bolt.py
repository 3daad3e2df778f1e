"""bbolt's file format (go.etcd.io/bbolt, the database etcd keeps on disk): a writer and a reader.

A bbolt file is a sequence of fixed-size pages. Pages 0 and 1 hold two copies of the meta record
(the one with the higher transaction id and a valid checksum wins); the meta names the freelist
page and the root bucket. A bucket is a B+tree: leaf pages hold sorted key/value elements, branch
pages hold the first key and page id of each child. The root bucket's values are the headers of
the named buckets; a small bucket may be stored inline in that value, as a page of its own.

A node larger than one page spills into the pages right after it (`overflow` counts them).
Every integer is little-endian, as on the machines bbolt runs on.

The writer builds a whole database in one pass from buckets of sorted items: leaves first, then
the branch levels above them, then the root bucket and the metas. Every page it writes is
reachable, so the freelist is empty and `bbolt check` (and `etcdctl snapshot status`) find
nothing to complain about.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
FORMAT_VERSION = 2

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_ELEMENT = 0x01  # a leaf element whose value is a bucket header

PAGE_HEADER = struct.Struct("<QHHI")  # page id, flags, element count, overflow pages
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, offset of key from this element, key size, value size
BRANCH_ELEMENT = struct.Struct("<IIQ")  # offset of key from this element, key size, child page id
BUCKET_HEADER = struct.Struct("<QQ")  # root page id (0: inline), sequence
# magic, version, page size, flags, root bucket (root, sequence), freelist page, page count, txid
META = struct.Struct("<IIIIQQQQQ")
CHECKSUM = struct.Struct("<Q")

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3


class BoltError(ValueError):
    """The bytes are not a usable bbolt database."""


def fnv64a(data: bytes) -> int:
    """The FNV-1a hash bbolt checksums its meta records with."""
    value = FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


# -- writing -------------------------------------------------------------------------------------

# An element of a node: flags (BUCKET_ELEMENT or 0), key, value, and for a branch its child's page.
Item = tuple[int, bytes, bytes, int]


class BoltWriter:
    """Writes a new bbolt database to a file: `add_bucket` for each bucket, then `finish`."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._next_page = 3  # 0 and 1 are the metas, 2 the freelist
        self._buckets: dict[bytes, int] = {}

    def add_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write a bucket whose items come in ascending key order."""
        self._buckets[name] = self._write_tree((0, key, value, 0) for key, value in items)

    def finish(self) -> None:
        """Write the root bucket, the empty freelist and both metas."""
        root = self._write_tree(
            (BUCKET_ELEMENT, name, BUCKET_HEADER.pack(root, 0), 0) for name, root in sorted(self._buckets.items())
        )
        self._write_page(2, PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0))
        for page_id in (0, 1):  # bbolt's own initial metas: txids 0 and 1
            meta = META.pack(MAGIC, FORMAT_VERSION, PAGE_SIZE, 0, root, 0, 2, self._next_page, page_id)
            self._write_page(page_id, PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + meta + CHECKSUM.pack(fnv64a(meta)))
        self._file.seek(self._next_page * PAGE_SIZE)
        self._file.truncate()

    def _write_tree(self, leaf_items: Iterable[Item]) -> int:
        """Write the leaves of sorted items and the branches above them; the root's page."""
        level = self._write_level(LEAF_PAGE, leaf_items)
        while len(level) > 1:
            level = self._write_level(BRANCH_PAGE, [(0, first_key, b"", page) for first_key, page in level])
        return level[0][1]

    def _write_level(self, kind: int, items: Iterable[Item]) -> list[tuple[bytes, int]]:
        """Pack items into pages of one tree level, each filled up to a page (a lone large item
        overflows); the (first key, page id) of each page written."""
        element_size = LEAF_ELEMENT.size if kind == LEAF_PAGE else BRANCH_ELEMENT.size
        written: list[tuple[bytes, int]] = []
        node: list[Item] = []
        size = PAGE_HEADER.size
        for item in items:
            item_size = element_size + len(item[1]) + len(item[2])
            if node and size + item_size > PAGE_SIZE:
                written.append(self._write_node(kind, node))
                node, size = [], PAGE_HEADER.size
            node.append(item)
            size += item_size
        written.append(self._write_node(kind, node))  # an empty bucket is one empty leaf
        return written

    def _write_node(self, kind: int, node: list[Item]) -> tuple[bytes, int]:
        """Write one node (bbolt's node.write): the elements, then their keys and values."""
        element_size = LEAF_ELEMENT.size if kind == LEAF_PAGE else BRANCH_ELEMENT.size
        elements, data = bytearray(), bytearray()
        data_start = PAGE_HEADER.size + element_size * len(node)
        for index, (flags, key, value, child) in enumerate(node):
            # Offsets count from the element itself to its key.
            offset = data_start + len(data) - (PAGE_HEADER.size + element_size * index)
            if kind == LEAF_PAGE:
                elements += LEAF_ELEMENT.pack(flags, offset, len(key), len(value))
            else:
                elements += BRANCH_ELEMENT.pack(offset, len(key), child)
            data += key + value
        page_id = self._next_page
        pages = -(-(data_start + len(data)) // PAGE_SIZE)
        self._next_page += pages
        self._write_page(page_id, PAGE_HEADER.pack(page_id, kind, len(node), pages - 1) + elements + data)
        return (node[0][1] if node else b""), page_id

    def _write_page(self, page_id: int, content: bytes) -> None:
        self._file.seek(page_id * PAGE_SIZE)
        self._file.write(content)
        padding = -len(content) % PAGE_SIZE
        self._file.write(bytes(padding))


def write_bolt(file: BinaryIO, buckets: Mapping[bytes, Iterable[tuple[bytes, bytes]]]) -> None:
    """A whole database of the given buckets, each item iterable in ascending key order."""
    writer = BoltWriter(file)
    for name, items in buckets.items():
        writer.add_bucket(name, items)
    writer.finish()


# -- reading -------------------------------------------------------------------------------------


def is_bolt(data: bytes | memoryview) -> bool:
    """Whether the data starts as a bbolt database does: meta page 0 with bbolt's magic number."""
    return len(data) >= PAGE_HEADER.size + META.size and META.unpack_from(data, PAGE_HEADER.size)[0] == MAGIC


class BoltReader:
    """Reads the buckets of a bbolt database held in memory (or a memory map)."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        meta = self._meta()
        self.page_size = meta[2]
        self._root = meta[4]
        self._pages = meta[7]
        if self._pages * self.page_size > len(data):
            raise BoltError(f"truncated: the database has {self._pages} pages, the file holds {len(data)} bytes")

    def _meta(self) -> tuple[int, ...]:
        """The valid meta with the higher transaction id, as bbolt picks it."""
        found: list[tuple[int, ...]] = []
        problems: list[str] = []
        for page in (0, 1):
            # The page size is not known before a meta is read; meta 1 starts at the page size that
            # meta 0 claims, or at the usual 4096 if meta 0 is damaged.
            start = page * (found[0][2] if found else PAGE_SIZE) + PAGE_HEADER.size
            record = bytes(self._data[start : start + META.size + CHECKSUM.size])
            if len(record) < META.size + CHECKSUM.size:
                problems.append(f"meta {page}: file too short")
                continue
            meta = META.unpack_from(record)
            if meta[0] != MAGIC:
                problems.append(f"meta {page}: no bbolt magic number")
            elif meta[1] != FORMAT_VERSION:
                problems.append(f"meta {page}: bbolt format version {meta[1]}, expected {FORMAT_VERSION}")
            elif CHECKSUM.unpack_from(record, META.size)[0] != fnv64a(record[: META.size]):
                problems.append(f"meta {page}: checksum mismatch")
            else:
                found.append(meta)
        if not found:
            raise BoltError("; ".join(problems))
        return max(found, key=lambda meta: meta[8])

    def buckets(self) -> list[bytes]:
        return [key for key, _ in self._items(self._page(self._root))]

    def bucket(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The items of a top-level bucket in key order; none if there is no such bucket."""
        for key, header in self._items(self._page(self._root)):
            if key == name:
                for item_key, value in self._bucket_items(header):
                    yield item_key, bytes(value)
                return

    def _bucket_items(self, header: memoryview) -> Iterator[tuple[bytes, memoryview]]:
        root, _ = BUCKET_HEADER.unpack_from(header)
        if root == 0:  # inline: the bucket's only page follows its header
            return self._items(header[BUCKET_HEADER.size :])
        return self._items(self._page(root))

    def _page(self, page_id: int) -> memoryview:
        if not 2 <= page_id < self._pages:
            raise BoltError(f"page {page_id} is outside the database ({self._pages} pages)")
        start = page_id * self.page_size
        overflow = PAGE_HEADER.unpack_from(self._data, start)[3]
        return self._data[start : start + (overflow + 1) * self.page_size]

    def _items(self, page: memoryview) -> Iterator[tuple[bytes, memoryview]]:
        """The (key, value) elements of the subtree rooted at `page`, in order; bucket headers as values."""
        _, flags, count, _ = PAGE_HEADER.unpack_from(page)
        if flags & BRANCH_PAGE:
            for index in range(count):
                at = PAGE_HEADER.size + index * BRANCH_ELEMENT.size
                _, _, child = BRANCH_ELEMENT.unpack_from(page, at)
                yield from self._items(self._page(child))
        elif flags & LEAF_PAGE:
            for index in range(count):
                at = PAGE_HEADER.size + index * LEAF_ELEMENT.size
                _, offset, key_size, value_size = LEAF_ELEMENT.unpack_from(page, at)
                key_at = at + offset
                key = bytes(page[key_at : key_at + key_size])
                yield key, page[key_at + key_size : key_at + key_size + value_size]
        else:
            raise BoltError(f"page of kind {flags:#x} where a branch or leaf page belongs")

"""Paginated lists as kube-apiserver sends them, while the listed range changes.

The first page is read at the head; every later page at the revision the first one reported, from
the last key returned + "\\0", with etcd's `count` of the rest of the range. Each page's keys and
count must be those of the state at that revision, whatever is written, deleted or compacted
meanwhile; a page read at the head must count the range as it is now.
"""

from __future__ import annotations

import random
import threading

import grpc

from kubefabric.etcdpb import rpc_pb2
from tests._client import Etcd, prefix_end
from tests._servers import ServerProcess
from tests.conformance._support import ERR_COMPACTED, keys_of, raises_rpc_error

PREFIX = b"/registry/pods/"
END = prefix_end(PREFIX)


def pod(number: int) -> bytes:
    return PREFIX + b"pod-%04d" % number


def put_pods(client: Etcd, numbers: range) -> None:
    for number in numbers:
        client.put(pod(number), b"value of pod %d" % number)


def expect_page(response: rpc_pb2.RangeResponse, state: set[bytes], start: bytes, limit: int) -> None:
    """The page holds the first `limit` keys of `state` from `start`, and counts all of them."""
    rest = sorted(key for key in state if key >= start)
    assert (keys_of(response), response.count, response.more) == (rest[:limit], len(rest), len(rest) > limit)


def test_pages_at_a_revision_count_that_revision_while_the_range_changes(client: Etcd) -> None:
    put_pods(client, range(0, 60, 2))
    client.put(PREFIX[:-1], b"just before the range")
    client.put(END, b"just after the range")
    state = {pod(number) for number in range(0, 60, 2)}
    limit = 7

    first = client.get(PREFIX, END, limit=limit)
    expect_page(first, state, PREFIX, limit)
    revision = first.header.revision
    page, turn = first, 0
    while page.more:
        # Between pages: keys appear and vanish before, inside and after the next page.
        turn += 1
        client.put(pod(2 * turn * limit + 1), b"new")
        client.delete(pod(2 * turn * limit + 4))
        client.put(pod(turn), b"rewritten")
        client.delete(pod(100 + turn))
        start = page.kvs[-1].key + b"\0"
        page = client.get(start, END, limit=limit, revision=revision)
        expect_page(page, state, start, limit)
        assert page.header.revision > revision


def test_pages_at_the_head_count_the_range_as_it_is_now(client: Etcd) -> None:
    put_pods(client, range(40))
    listed = {pod(number) for number in range(40)}
    limit = 10

    first = client.get(PREFIX, END, limit=limit)
    expect_page(first, listed, PREFIX, limit)
    start = first.kvs[-1].key + b"\0"
    client.delete(pod(30), pod(35))
    client.put(pod(50), b"new")
    now = (listed - {pod(number) for number in range(30, 35)}) | {pod(50)}

    # At the revision of the first page: the state it listed; at the head and at the latest revision: today's.
    expect_page(client.get(start, END, limit=limit, revision=first.header.revision), listed, start, limit)
    expect_page(client.get(start, END, limit=limit), now, start, limit)
    expect_page(client.get(start, END, limit=limit, revision=client.revision()), now, start, limit)


def test_lists_at_different_revisions_and_limits_keep_their_own_counts(client: Etcd) -> None:
    put_pods(client, range(30))
    older = client.get(PREFIX, END, limit=5)
    client.delete(pod(10), pod(20))
    put_pods(client, range(100, 105))
    newer = client.get(PREFIX, END, limit=5)
    states = {
        older.header.revision: {pod(number) for number in range(30)},
        newer.header.revision: {pod(number) for number in [*range(10), *range(20, 30), *range(100, 105)]},
    }

    # Two lists at once, from the same keys at two revisions; each page read twice (a retry).
    pages = {older.header.revision: older, newer.header.revision: newer}
    while any(page.more for page in pages.values()):
        for revision, page in pages.items():
            if not page.more:
                continue
            start = page.kvs[-1].key + b"\0"
            for _ in range(2):
                pages[revision] = client.get(start, END, limit=5, revision=revision)
                expect_page(pages[revision], states[revision], start, 5)
            # Another limit and a count-only read of the same rest of the range agree.
            expect_page(client.get(start, END, limit=3, revision=revision), states[revision], start, 3)
            counted = client.get(start, END, count_only=True, revision=revision)
            assert counted.count == pages[revision].count


def test_pages_read_while_other_clients_write(client: Etcd, server: ServerProcess) -> None:
    put_pods(client, range(0, 400, 2))
    initial = {pod(number) for number in range(0, 400, 2)}
    history: list[tuple[int, bytes, bool]] = []  # (revision, key, whether it exists after)
    stop = threading.Event()

    def write(seed: int) -> None:
        shuffled = random.Random(seed)
        with Etcd(server.channel()) as writer:
            while not stop.is_set():
                key = pod(shuffled.randrange(420))
                if shuffled.random() < 0.5:
                    history.append((writer.put(key, b"changed").header.revision, key, True))
                else:
                    deleted = writer.delete(key)
                    if deleted.deleted:
                        history.append((deleted.header.revision, key, False))

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(2)]
    for thread in writers:
        thread.start()
    try:
        lists = []
        for _ in range(3):
            page = client.get(PREFIX, END, limit=25)
            pages = [(PREFIX, page)]
            while page.more:
                start = page.kvs[-1].key + b"\0"
                page = client.get(start, END, limit=25, revision=pages[0][1].header.revision)
                pages.append((start, page))
            lists.append(pages)
    finally:
        stop.set()
        for thread in writers:
            thread.join()

    assert history, "no write landed while the lists were read"
    for pages in lists:
        revision = pages[0][1].header.revision
        state = set(initial)
        for written, key, exists in sorted(history):
            if written <= revision:
                (state.add if exists else state.discard)(key)
        for start, page in pages:
            expect_page(page, state, start, 25)


def test_a_page_at_a_compacted_revision_fails(client: Etcd) -> None:
    put_pods(client, range(20))
    first = client.get(PREFIX, END, limit=5)
    second = client.get(first.kvs[-1].key + b"\0", END, limit=5, revision=first.header.revision)
    client.delete(PREFIX, END)
    client.compact(client.revision())

    with raises_rpc_error(grpc.StatusCode.OUT_OF_RANGE, ERR_COMPACTED):
        client.get(second.kvs[-1].key + b"\0", END, limit=5, revision=first.header.revision)

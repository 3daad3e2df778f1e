"""Selected lists paginated as kube-apiserver paginates them: each page's `count` is that of its own
selector at the list's revision, whatever other selectors were listed from the same key at the same
revision, and whatever was written meanwhile."""

from __future__ import annotations

from collections.abc import Callable

from tests._client import Etcd, prefix_end
from tests._pods import PODS, pod, pod_key
from tests.selectors._keyspace import select

END = prefix_end(PODS)
PODS_LISTED = 80
LIMIT = 3

# Pod n carries the label pod-template-hash=h{n % 7}: each selector, and which of those labels it matches.
SELECTORS: dict[str, Callable[[str], bool]] = {
    "pod-template-hash=h1": lambda label: label == "h1",
    "pod-template-hash!=h1": lambda label: label != "h1",
    "pod-template-hash in (h2,h3)": lambda label: label in ("h2", "h3"),
    "": lambda label: True,
}


def test_each_selector_keeps_its_own_count_across_pages(store_client: Etcd) -> None:
    client = store_client
    for number in range(PODS_LISTED):
        client.put(pod_key(number), pod(number))
    labels = {pod_key(number): f"h{number % 7}" for number in range(PODS_LISTED)}  # at the list's revision

    def expected(selector: str, start: bytes) -> list[bytes]:
        return sorted(key for key, label in labels.items() if key >= start and SELECTORS[selector](label))

    listed = "pod-template-hash=h1"
    page = select(client, listed, "", PODS, END, limit=LIMIT)
    revision = page.header.revision
    rest = expected(listed, PODS)
    assert ([kv.key for kv in page.kvs], page.count) == (rest[:LIMIT], len(rest))
    turn = 0
    while page.more:
        # Relabel, delete and add pods before, inside and after the next page.
        turn += 1
        client.put(pod_key(turn * 5), pod(1))
        client.delete(pod_key(PODS_LISTED - turn))
        client.put(pod_key(PODS_LISTED + turn), pod(1))
        # One selector's list goes on; the others read from the same key at the same revision.
        start = page.kvs[-1].key + b"\0"
        for selector in SELECTORS:
            answer = select(client, selector, "", start, END, limit=LIMIT, revision=revision)
            rest = expected(selector, start)
            assert ([kv.key for kv in answer.kvs], answer.count, answer.more) == (
                rest[:LIMIT],
                len(rest),
                len(rest) > LIMIT,
            ), (selector, start)
            if selector == listed:
                page = answer
    assert turn > 2

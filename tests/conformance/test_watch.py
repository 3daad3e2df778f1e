"""Watch: event shapes, many watches per stream, history replay, filters, progress and cancellation."""

from __future__ import annotations

import pytest

from kubefabric.etcdpb import kv_pb2, rpc_pb2
from tests._client import Etcd, kv_tuple, prefix_end, put_op
from tests.conformance._support import WatchStream

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
NOPUT, NODELETE = rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE

# kubefabric promises a progress notification about every 5 s; allow generous slack.
PROGRESS_NOTIFY_TIMEOUT = 12.0


def event_summary(event: kv_pb2.Event) -> tuple[int, bytes, bytes, int]:
    return (event.type, event.kv.key, event.kv.value, event.kv.mod_revision)


def test_watch_on_a_key_reports_its_puts_and_deletes(client: Etcd) -> None:
    with WatchStream(client) as stream:
        watch_id = stream.create(b"a")

        created = client.put(b"a", b"1").header.revision
        client.put(b"ab", b"not watched")
        updated = client.put(b"a", b"2").header.revision
        deleted = client.delete(b"a").header.revision

        put_1, put_2, delete = stream.events(3, watch_id)
        assert (put_1.type, kv_tuple(put_1.kv)) == (PUT, (b"a", b"1", created, created, 1, 0))
        assert (put_2.type, kv_tuple(put_2.kv)) == (PUT, (b"a", b"2", created, updated, 2, 0))
        # A delete event carries only the key and the deleting revision.
        assert (delete.type, kv_tuple(delete.kv)) == (DELETE, (b"a", b"", 0, deleted, 0, 0))
        assert not any(event.HasField("prev_kv") for event in (put_1, put_2, delete))
        stream.assert_quiet()


def test_many_watches_share_one_stream(client: Etcd) -> None:
    with WatchStream(client) as stream:
        auto_a = stream.create(b"a")
        auto_b = stream.create(b"b")
        chosen = stream.create(b"c", watch_id=100)
        assert len({auto_a, auto_b, chosen}) == 3
        assert auto_a >= 0 and auto_b >= 0
        assert chosen == 100

        # Reusing an ID on the same stream is refused with a created-and-canceled response.
        stream.send_create(b"d", watch_id=100)
        refused = stream.next()
        assert (refused.created, refused.canceled, refused.watch_id) == (True, True, -1)
        assert refused.cancel_reason

        for key in (b"c", b"a", b"b"):
            client.put(key, b"v")
        received = {
            watch_id: [event.kv.key for event in events] for watch_id, events in stream.events_by_watch(3).items()
        }
        assert received == {auto_a: [b"a"], auto_b: [b"b"], chosen: [b"c"]}


def test_start_revision_replays_history_then_streams_live_events(client: Etcd) -> None:
    client.put(b"p/a", b"1")
    b_put = client.put(b"p/b", b"1").header.revision
    a_deleted = client.delete(b"p/a").header.revision

    with WatchStream(client) as stream:
        replaying = stream.create(b"p/", prefix_end(b"p/"), start_revision=b_put)
        assert [event_summary(event) for event in stream.events(2, replaying)] == [
            (PUT, b"p/b", b"1", b_put),
            (DELETE, b"p/a", b"", a_deleted),
        ]

        live_only = stream.create(b"p/", prefix_end(b"p/"), start_revision=0)
        c_put = client.put(b"p/c", b"1").header.revision
        by_watch = {
            watch_id: [event_summary(event) for event in events]
            for watch_id, events in stream.events_by_watch(2).items()
        }
        live_event = [(PUT, b"p/c", b"1", c_put)]
        assert by_watch == {replaying: live_event, live_only: live_event}
        stream.assert_quiet()


def test_prev_kv_on_events(client: Etcd) -> None:
    with WatchStream(client) as stream:
        watch_id = stream.create(b"a", prev_kv=True)
        created = client.put(b"a", b"1").header.revision
        updated = client.put(b"a", b"2").header.revision
        client.delete(b"a")

        put_1, put_2, delete = stream.events(3, watch_id)
        assert not put_1.HasField("prev_kv")
        assert kv_tuple(put_2.prev_kv) == (b"a", b"1", created, created, 1, 0)
        assert kv_tuple(delete.prev_kv) == (b"a", b"2", created, updated, 2, 0)


def test_noput_and_nodelete_filters(client: Etcd) -> None:
    with WatchStream(client) as stream:
        deletes_only = stream.create(b"a", filters=[NOPUT])
        puts_only = stream.create(b"a", filters=[NODELETE])

        client.put(b"a", b"1")
        client.delete(b"a")
        client.put(b"a", b"2")

        by_watch = {
            watch_id: [(event.type, event.kv.value) for event in events]
            for watch_id, events in stream.events_by_watch(3).items()
        }
        assert by_watch == {deletes_only: [(DELETE, b"")], puts_only: [(PUT, b"1"), (PUT, b"2")]}
        stream.assert_quiet()


@pytest.mark.skip_oracle("etcd's default progress-notify interval is 10 minutes")
def test_progress_notify_reports_the_current_revision_periodically(client: Etcd) -> None:
    current = client.put(b"unwatched", b"v").header.revision
    with WatchStream(client) as stream:
        watch_id = stream.create(b"quiet", progress_notify=True)
        notification = stream.next(timeout=PROGRESS_NOTIFY_TIMEOUT)
        assert (notification.watch_id, list(notification.events), notification.canceled) == (
            watch_id,
            [],
            False,
        )
        assert notification.header.revision == current


def test_requested_progress_reports_the_current_revision(client: Etcd) -> None:
    with WatchStream(client) as stream:
        stream.create(b"quiet")
        current = client.put(b"unwatched", b"v").header.revision

        stream.request_progress()
        progress = stream.next()
        # Not tied to any watch: etcd answers with watch ID -1.
        assert (progress.watch_id, list(progress.events), progress.created, progress.canceled) == (
            -1,
            [],
            False,
            False,
        )
        assert progress.header.revision == current


def test_cancel_stops_only_that_watch(client: Etcd) -> None:
    with WatchStream(client) as stream:
        canceled_id = stream.create(b"a")
        kept_id = stream.create(b"a")

        stream.cancel(canceled_id)
        canceled = stream.next()
        assert (canceled.watch_id, canceled.canceled, list(canceled.events)) == (canceled_id, True, [])

        client.put(b"a", b"v")
        [event] = stream.events(1, kept_id)
        assert event.kv.key == b"a"
        stream.assert_quiet()


def test_all_events_of_one_revision_arrive_in_one_response(client: Etcd) -> None:
    with WatchStream(client) as stream:
        watch_id = stream.create(b"p/", prefix_end(b"p/"))

        # Events of a txn come in the order of its operations.
        txn_revision = client.txn(
            [], [put_op(b"p/c", b"1"), put_op(b"p/a", b"1"), put_op(b"p/b", b"1")]
        ).header.revision
        txn_response = stream.next()
        assert txn_response.watch_id == watch_id
        assert [event_summary(event) for event in txn_response.events] == [
            (PUT, b"p/c", b"1", txn_revision),
            (PUT, b"p/a", b"1", txn_revision),
            (PUT, b"p/b", b"1", txn_revision),
        ]

        # A range delete's events come in key order.
        delete_revision = client.delete(b"p/", prefix_end(b"p/")).header.revision
        delete_response = stream.next()
        assert [event_summary(event) for event in delete_response.events] == [
            (DELETE, b"p/a", b"", delete_revision),
            (DELETE, b"p/b", b"", delete_revision),
            (DELETE, b"p/c", b"", delete_revision),
        ]
        stream.assert_quiet()


def test_many_writes_arrive_in_order_without_gaps_or_duplicates(client: Etcd) -> None:
    base = client.revision()
    historic = [client.put(b"k/%d" % (i % 7), b"%d" % i).header.revision for i in range(50)]

    with WatchStream(client) as stream:
        # Starts in history and must switch to live events without losing or repeating any.
        watch_id = stream.create(b"k/", prefix_end(b"k/"), start_revision=base + 1)
        live = [client.put(b"k/%d" % (i % 7), b"%d" % i).header.revision for i in range(50, 100)]

        events = stream.events(100, watch_id)
        assert [event.kv.mod_revision for event in events] == historic + live == list(range(base + 1, base + 101))
        assert [event.kv.value for event in events] == [b"%d" % i for i in range(100)]
        stream.assert_quiet()


def test_range_watches(client: Etcd) -> None:
    with WatchStream(client) as stream:
        interval = stream.create(b"b", b"d")
        from_key = stream.create(b"c", b"\0")

        for key in (b"a", b"b", b"bz", b"c", b"d", b"e"):
            client.put(key, b"v")

        by_watch = {
            watch_id: [event.kv.key for event in events] for watch_id, events in stream.events_by_watch(6).items()
        }
        assert by_watch == {interval: [b"b", b"bz", b"c"], from_key: [b"c", b"d", b"e"]}
        stream.assert_quiet()

"""The deadline queue behind in-flight and deferred messages."""

from __future__ import annotations

from gnsq_server.nsqd.message import Message
from gnsq_server.nsqd.pqueue import DeadlineQueue


def msg(n: int) -> Message:
    return Message(b"%016d" % n, b"x", 0)


def test_pops_in_deadline_order_only_what_is_due():
    queue = DeadlineQueue()
    for n, deadline in [(1, 5.0), (2, 1.0), (3, 3.0), (4, 9.0)]:
        queue.push(msg(n), deadline)
    assert [m.id for m in queue.pop_due(4.0)] == [b"%016d" % 2, b"%016d" % 3]
    assert queue.next_deadline() == 5.0
    assert len(queue) == 2


def test_removed_and_retimed_messages_leave_no_trace():
    queue = DeadlineQueue()
    a, b, c = msg(1), msg(2), msg(3)
    queue.push(a, 1.0)
    queue.push(b, 2.0)
    queue.push(c, 3.0)
    assert queue.remove(a.id) is a
    queue.push(b, 10.0)  # TOUCH: the old entry at 2.0 goes stale
    assert queue.next_deadline() == 3.0
    assert queue.pop_due(5.0) == [c]
    assert queue.pop_due(10.0) == [b]
    assert len(queue) == 0 and queue.next_deadline() is None


def test_stale_entries_are_compacted_away():
    queue = DeadlineQueue()
    msgs = [msg(n) for n in range(1000)]
    for n, m in enumerate(msgs):
        queue.push(m, float(n))
    for m in msgs[:990]:
        queue.remove(m.id)
    assert len(queue._heap) <= 2 * len(queue) + 64
    assert [m.id for m in queue.pop_due(2000.0)] == [m.id for m in msgs[990:]]


def test_clear_returns_the_live_messages():
    queue = DeadlineQueue()
    queue.push(msg(1), 1.0)
    queue.push(msg(2), 2.0)
    queue.remove(b"%016d" % 1)
    assert [m.id for m in queue.clear()] == [b"%016d" % 2]
    assert len(queue) == 0


def test_push_many_appends_a_batch_sharing_one_deadline():
    queue = DeadlineQueue()
    queue.push(msg(0), 1.0)
    batch = [msg(n) for n in range(1, 4)]
    queue.push_many(batch, 2.0)
    assert all(m.deadline == 2.0 for m in batch) and len(queue) == 4
    assert [m.id for m in queue.pop_due(2.0)] == [b"%016d" % n for n in range(4)]


def test_push_many_with_an_earlier_deadline_or_known_ids_keeps_order_and_no_twins():
    queue = DeadlineQueue()
    early, late = msg(1), msg(2)
    queue.push(late, 5.0)
    queue.push_many([early], 1.0)  # before the FIFO's last: still released first
    assert queue.next_deadline() == 1.0
    queue.push_many([late, msg(3)], 7.0)  # `late` re-timed, not duplicated
    assert len(queue) == 3
    assert [m.id for m in queue.pop_due(6.0)] == [early.id]
    assert [m.id for m in queue.pop_due(7.0)] == [late.id, b"%016d" % 3]
    assert len(queue) == 0


def test_push_many_moves_an_already_queued_id_to_the_back():
    queue = DeadlineQueue()
    a, b, c = msg(1), msg(2), msg(3)
    queue.push(a, 1.0)
    queue.push(b, 2.0)
    queue.push_many([a, c], 3.0)
    assert len(queue) == 3
    assert queue.pop_due(2.0) == [b]
    assert queue.pop_due(3.0) == [a, c]

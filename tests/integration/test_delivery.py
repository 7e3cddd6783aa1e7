"""Delivery semantics of gnsqd observed from raw V2 sockets: fan-out, one consumer per message,
the RDY window, CLS, REQ, TOUCH, timeouts, ephemeral channels, sampling and queue limits.

Each test runs an in-process gnsqd on 127.0.0.1:0 (HTTP off: these tests are TCP only).
Expected behaviour is nsqd 1.3.0's (PROTOCOL.md sections 1.9, 1.10, 4.1, 4.2).
"""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import NamedTuple

import pytest

from ..conftest import RawConnection

HEARTBEAT = b"_heartbeat_"


class Msg(NamedTuple):
    timestamp: int
    attempts: int
    id: bytes
    body: bytes


@pytest.fixture
def server(start_nsqd):
    return start_nsqd(http_address="")


def next_frame(conn: RawConnection, timeout: float) -> tuple[int, bytes] | None:
    """The next frame other than a heartbeat, or None if nothing comes within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        conn.sock.settimeout(remaining)
        try:
            frame_type, data = conn.read_frame()
        except TimeoutError:
            return None
        if frame_type == 0 and data == HEARTBEAT:
            conn.command(b"NOP")
            continue
        return frame_type, data


def expect_response(conn: RawConnection, expected: bytes = b"OK", timeout: float = 5.0) -> None:
    assert next_frame(conn, timeout) == (0, expected)


def read_message(conn: RawConnection, timeout: float = 5.0) -> Msg:
    frame = next_frame(conn, timeout)
    assert frame is not None, "no message arrived"
    frame_type, data = frame
    assert frame_type == 2, f"expected a message frame, got {frame!r}"
    timestamp, attempts = struct.unpack(">qH", data[:10])
    return Msg(timestamp, attempts, data[10:26], data[26:])


def read_messages(conn: RawConnection, count: int, timeout: float = 5.0) -> list[Msg]:
    deadline = time.monotonic() + timeout
    return [read_message(conn, max(0.01, deadline - time.monotonic())) for _ in range(count)]


def assert_silent(conn: RawConnection, wait: float = 0.4) -> None:
    frame = next_frame(conn, wait)
    assert frame is None, f"unexpected frame {frame!r}"


def identify(conn: RawConnection, **fields) -> None:
    conn.command(b"IDENTIFY", json.dumps(fields).encode())
    expect_response(conn)


def subscribe(connect, port: int, topic: str, channel: str, rdy: int | None = None, **fields):
    conn = connect(port)
    if fields:
        identify(conn, **fields)
    conn.command(f"SUB {topic} {channel}".encode())
    expect_response(conn)
    if rdy is not None:
        conn.command(f"RDY {rdy}".encode())
    return conn


def mpub_body(bodies: list[bytes]) -> bytes:
    return struct.pack(">i", len(bodies)) + b"".join(
        struct.pack(">i", len(body)) + body for body in bodies
    )


def publish(conn: RawConnection, topic: str, *bodies: bytes) -> None:
    for body in bodies:
        conn.command(f"PUB {topic}".encode(), body)
        expect_response(conn)


def mpublish(conn: RawConnection, topic: str, bodies: list[bytes]) -> None:
    conn.command(f"MPUB {topic}".encode(), mpub_body(bodies))
    expect_response(conn)


def fin(conn: RawConnection, msg: Msg) -> None:
    conn.command(b"FIN " + msg.id)


def channel_state(server, topic: str, channel: str) -> dict | None:
    """A snapshot of a channel's counters, read on the server's hub."""

    def read():
        found = server.server.nsqd.topics.get(topic)
        chan = found.channels.get(channel) if found else None
        if chan is None:
            return None
        return {
            "depth": chan.depth(),
            "in_flight": chan.in_flight_count(),
            "deferred": chan.deferred_count(),
            "timeouts": chan.timeout_count,
            "requeues": chan.requeue_count,
            "clients": len(chan.clients),
        }

    return server.call(read)


def wait_until(predicate, timeout: float = 3.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- fan-out and distribution ---------------------------------------------------------------


def test_every_channel_gets_a_copy_with_the_same_id(server, connect):
    port = server.server.tcp_port
    consumers = [subscribe(connect, port, "fan", name, rdy=10) for name in ("a", "b", "c")]
    bodies = [f"fan-{i}".encode() for i in range(5)]
    publish(connect(port), "fan", *bodies)

    received = [read_messages(conn, 5) for conn in consumers]
    for msgs in received:
        assert [m.body for m in msgs] == bodies
        assert all(m.attempts == 1 for m in msgs)
    ids = [[m.id for m in msgs] for msgs in received]
    assert ids[0] == ids[1] == ids[2]
    assert len(set(ids[0])) == 5
    timestamps = [[m.timestamp for m in msgs] for msgs in received]
    assert timestamps[0] == timestamps[1] == timestamps[2]
    for conn in consumers:
        assert_silent(conn, 0.2)


def test_one_consumer_per_message_within_a_channel(server, connect):
    port = server.server.tcp_port
    total = 200
    consumers = [subscribe(connect, port, "share", "c", rdy=10) for _ in range(2)]
    seen: list[list[bytes]] = [[], []]
    stop_at = time.monotonic() + 10

    def consume(index: int) -> None:
        conn = consumers[index]
        while sum(map(len, seen)) < total and time.monotonic() < stop_at:
            frame = next_frame(conn, 0.2)
            if frame is None:
                continue
            assert frame[0] == 2, frame
            seen[index].append(frame[1][26:])
            conn.command(b"FIN " + frame[1][10:26])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    producer = connect(port)
    bodies = [f"m{i:03d}".encode() for i in range(total)]
    for start in range(0, total, 50):
        mpublish(producer, "share", bodies[start : start + 50])
    for thread in threads:
        thread.join(15)

    everything = seen[0] + seen[1]
    assert len(everything) == total, "a message was lost or duplicated"
    assert sorted(everything) == bodies
    assert seen[0] and seen[1], "both consumers should get a share"
    for conn in consumers:
        assert_silent(conn, 0.3)
    assert channel_state(server, "share", "c")["in_flight"] == 0


def test_topic_without_channels_keeps_messages_until_first_sub(server, connect):
    port = server.server.tcp_port
    producer = connect(port)
    publish(producer, "early", b"one", b"two", b"three")
    time.sleep(0.2)
    consumer = subscribe(connect, port, "early", "late", rdy=10)
    assert [m.body for m in read_messages(consumer, 3)] == [b"one", b"two", b"three"]
    # A channel created later gets only what is published after it exists.
    second = subscribe(connect, port, "early", "later", rdy=10)
    assert_silent(second, 0.3)
    publish(producer, "early", b"four")
    assert read_message(consumer).body == b"four"
    assert read_message(second).body == b"four"


# -- the RDY window -------------------------------------------------------------------------


def test_rdy_is_a_window_of_messages_in_flight(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "window", "c")
    publish(connect(port), "window", *[f"w{i}".encode() for i in range(10)])
    consumer.command(b"RDY 3")
    first = read_messages(consumer, 3)
    assert_silent(consumer, 0.4)
    assert channel_state(server, "window", "c")["in_flight"] == 3

    fin(consumer, first[0])
    fourth = read_message(consumer)
    assert_silent(consumer, 0.3)
    for msg in (*first[1:], fourth):
        fin(consumer, msg)
    rest = read_messages(consumer, 3)
    assert [m.body for m in (*first, fourth, *rest)] == [f"w{i}".encode() for i in range(7)]


def test_rdy_zero_pauses_delivery(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "paused", "c", rdy=0)
    producer = connect(port)
    publish(producer, "paused", b"p1", b"p2")
    assert_silent(consumer, 0.4)
    assert channel_state(server, "paused", "c")["depth"] == 2

    consumer.command(b"RDY 5")
    msgs = read_messages(consumer, 2)
    consumer.command(b"RDY 0")
    for msg in msgs:
        fin(consumer, msg)
    # The FINs are handled after RDY 0 (same connection): once they are, RDY 0 is in force.
    assert wait_until(lambda: channel_state(server, "paused", "c")["in_flight"] == 0)
    publish(producer, "paused", b"p3")
    assert_silent(consumer, 0.4)
    consumer.command(b"RDY 1")
    assert read_message(consumer).body == b"p3"


def test_cls_answers_close_wait_then_stops_deliveries_but_fin_works(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "closing", "c", rdy=1)
    producer = connect(port)
    publish(producer, "closing", b"c1", b"c2")
    first = read_message(consumer)

    consumer.command(b"CLS")
    expect_response(consumer, b"CLOSE_WAIT")
    consumer.command(b"RDY 5")  # ignored in state closing
    assert_silent(consumer, 0.4)
    fin(consumer, first)
    consumer.command(b"NOP")
    assert_silent(consumer, 0.3)  # no E_FIN_FAILED
    state = channel_state(server, "closing", "c")
    assert state["in_flight"] == 0
    assert state["depth"] == 1  # c2 waits for another consumer
    assert not consumer.is_closed(0.2), "the server keeps the socket open after CLS"

    other = subscribe(connect, port, "closing", "c", rdy=1)
    assert read_message(other).body == b"c2"


# -- REQ, TOUCH and timeouts ----------------------------------------------------------------


def test_req_zero_redelivers_with_attempts_plus_one(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "requeue", "c", rdy=1)
    publish(connect(port), "requeue", b"again")
    first = read_message(consumer)
    assert first.attempts == 1

    consumer.command(b"REQ " + first.id + b" 0")
    second = read_message(consumer)
    assert (second.id, second.body, second.timestamp) == (first.id, first.body, first.timestamp)
    assert second.attempts == 2
    consumer.command(b"REQ " + second.id + b" 0")
    assert read_message(consumer).attempts == 3
    assert channel_state(server, "requeue", "c")["requeues"] == 2


def test_req_with_delay_holds_the_message_back(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "delayed", "c", rdy=1)
    publish(connect(port), "delayed", b"later")
    first = read_message(consumer)

    sent = time.monotonic()
    consumer.command(b"REQ " + first.id + b" 700")
    assert_silent(consumer, 0.4)
    assert channel_state(server, "delayed", "c")["deferred"] == 1
    again = read_message(consumer, 3)
    elapsed = time.monotonic() - sent
    assert again.id == first.id and again.attempts == 2
    assert 0.7 <= elapsed < 2.0


def test_touch_extends_the_deadline(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "touched", "c", rdy=1, msg_timeout=1000)
    publish(connect(port), "touched", b"slow work")
    msg = read_message(consumer)
    start = time.monotonic()
    for at in (0.6, 1.2):
        time.sleep(max(0.0, start + at - time.monotonic()))
        consumer.command(b"TOUCH " + msg.id)
    # Without the touches the message would have timed out at 1.0 s.
    assert_silent(consumer, max(0.0, start + 1.8 - time.monotonic()))
    fin(consumer, msg)
    consumer.command(b"NOP")
    assert_silent(consumer, 0.3)
    state = channel_state(server, "touched", "c")
    assert (state["in_flight"], state["timeouts"]) == (0, 0)


def test_msg_timeout_expiry_redelivers(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "expiry", "c", rdy=1, msg_timeout=1000)
    publish(connect(port), "expiry", b"forgotten")
    first = read_message(consumer)
    delivered = time.monotonic()
    again = read_message(consumer, 3)
    elapsed = time.monotonic() - delivered
    assert (again.id, again.attempts, again.body) == (first.id, 2, b"forgotten")
    assert 0.9 <= elapsed < 2.5
    assert channel_state(server, "expiry", "c")["timeouts"] == 1
    fin(consumer, again)
    consumer.command(b"NOP")
    assert_silent(consumer, 0.3)


def test_in_flight_of_a_vanished_consumer_goes_to_another_after_its_timeout(server, connect):
    port = server.server.tcp_port
    leaver = subscribe(connect, port, "vanish", "c", rdy=1, msg_timeout=1000)
    stayer = subscribe(connect, port, "vanish", "c", rdy=0)
    publish(connect(port), "vanish", b"orphan")
    first = read_message(leaver)
    delivered = time.monotonic()
    leaver.close()
    stayer.command(b"RDY 1")
    again = read_message(stayer, 4)
    elapsed = time.monotonic() - delivered
    assert (again.id, again.attempts, again.body) == (first.id, 2, b"orphan")
    # nsqd does not requeue on disconnect: the message waits for its msg_timeout (#137).
    assert elapsed >= 0.9


def test_fin_after_timeout_is_a_non_fatal_error(server, connect):
    port = server.server.tcp_port
    slow = subscribe(connect, port, "late_fin", "c", rdy=1, msg_timeout=1000)
    other = subscribe(connect, port, "late_fin", "c", rdy=0)
    publish(connect(port), "late_fin", b"late")
    msg = read_message(slow)
    slow.command(b"RDY 0")
    other.command(b"RDY 1")
    again = read_message(other, 3)
    assert (again.id, again.attempts) == (msg.id, 2)

    fin(slow, msg)
    expected = b"E_FIN_FAILED FIN " + msg.id + b" failed client does not own message"
    assert next_frame(slow, 2) == (1, expected)
    slow.command(b"TOUCH " + msg.id)
    expected = b"E_TOUCH_FAILED TOUCH " + msg.id + b" failed client does not own message"
    assert next_frame(slow, 2) == (1, expected)
    fin(other, again)
    assert wait_until(lambda: channel_state(server, "late_fin", "c")["in_flight"] == 0)
    slow.command(b"REQ " + msg.id + b" 0")
    expected = b"E_REQ_FAILED REQ " + msg.id + b" failed ID not in flight"
    assert next_frame(slow, 2) == (1, expected)
    publish(slow, "late_fin", b"still usable")  # the errors were not fatal
    assert read_message(other).body == b"still usable"


# -- ephemeral channels ---------------------------------------------------------------------


def test_ephemeral_channel_is_deleted_when_its_last_client_leaves(server, connect):
    port = server.server.tcp_port

    def exists(topic, channel):
        return channel_state(server, topic, channel) is not None

    first = subscribe(connect, port, "eph", "c#ephemeral")
    second = subscribe(connect, port, "eph", "c#ephemeral")
    durable = subscribe(connect, port, "eph", "durable")
    first.close()
    time.sleep(0.3)
    assert exists("eph", "c#ephemeral")
    second.close()
    assert wait_until(lambda: not exists("eph", "c#ephemeral"))
    durable.close()
    time.sleep(0.3)
    assert exists("eph", "durable"), "a durable channel outlives its clients"
    assert server.call(lambda: "eph" in server.server.nsqd.topics)


def test_ephemeral_topic_is_deleted_with_its_last_channel(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "gone#ephemeral", "c#ephemeral", rdy=1)
    publish(connect(port), "gone#ephemeral", b"x")
    assert read_message(consumer).body == b"x"
    consumer.close()
    topics = server.server.nsqd.topics
    assert wait_until(lambda: not server.call(lambda: "gone#ephemeral" in topics))


# -- sampling and limits --------------------------------------------------------------------


def test_sample_rate_is_roughly_honoured(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "sampled", "c", rdy=2500, sample_rate=50)
    total = 400
    mpublish(connect(port), "sampled", [f"s{i}".encode() for i in range(total)])
    received = []
    while (frame := next_frame(consumer, 0.5)) is not None:
        assert frame[0] == 2
        received.append(frame[1][26:])
    # nsqd delivers about (sample_rate + 1)% = 51%; 150..260 is more than 5 sigma either side.
    assert 150 <= len(received) <= 260, len(received)
    assert len(set(received)) == len(received)


def test_max_rdy_count_override(start_nsqd, connect):
    server = start_nsqd(http_address="", max_rdy_count=10)
    conn = connect(server.server.tcp_port)
    conn.command(b"IDENTIFY", json.dumps({"feature_negotiation": True}).encode())
    frame = next_frame(conn, 5)
    assert frame is not None and frame[0] == 0
    assert json.loads(frame[1])["max_rdy_count"] == 10
    conn.command(b"SUB limits c")
    expect_response(conn)
    conn.command(b"RDY 10")
    assert_silent(conn, 0.2)
    conn.command(b"RDY 11")
    assert next_frame(conn, 5) == (1, b"E_INVALID RDY count 11 out of range 0-10")
    assert conn.is_closed()


def test_max_channel_consumers_override(start_nsqd, connect):
    server = start_nsqd(http_address="", max_channel_consumers=2)
    port = server.server.tcp_port
    first = subscribe(connect, port, "crowd", "c")
    subscribe(connect, port, "crowd", "c")
    third = connect(port)
    third.command(b"SUB crowd c")
    assert next_frame(third, 5) == (
        1,
        b"E_SUB_FAILED SUB failed consumers for crowd:c exceeds limit of 2",
    )
    assert third.is_closed()
    subscribe(connect, port, "crowd", "other")  # the limit is per channel
    first.close()
    assert wait_until(lambda: channel_state(server, "crowd", "c")["clients"] == 1)
    subscribe(connect, port, "crowd", "c")


def publish_counting(port: int, topic: str, bodies: list[bytes]) -> list[bytes]:
    """PUB each body on its own connection until refused; return the bodies answered OK."""
    accepted = []
    conn = RawConnection(port)
    try:
        for body in bodies:
            conn.command(f"PUB {topic}".encode(), body)
            frame = next_frame(conn, 5)
            if frame == (0, b"OK"):
                accepted.append(body)
                continue
            assert frame is not None and frame[0] == 1, frame
            assert frame[1].startswith(b"E_PUB_FAILED PUB failed "), frame
            assert conn.is_closed(), "E_PUB_FAILED is fatal"
            conn.close()
            conn = RawConnection(port)
    finally:
        conn.close()
    return accepted


@pytest.mark.parametrize("with_channel", [False, True], ids=["no-channel", "idle-channel"])
def test_mem_queue_overflow_loses_nothing_answered_ok(start_nsqd, connect, with_channel):
    """Whether overflow is refused or spilled to disk, every message answered OK arrives."""
    server = start_nsqd(http_address="", mem_queue_size=10)
    port = server.server.tcp_port
    if with_channel:
        subscribe(connect, port, "overflow", "c", rdy=0)
    bodies = [f"o{i:02d}".encode() for i in range(40)]
    accepted = publish_counting(port, "overflow", bodies)
    assert len(accepted) >= 10

    mpub_conn = connect(port)
    mpub_conn.command(b"MPUB overflow", mpub_body([b"batch-1", b"batch-2"]))
    frame = next_frame(mpub_conn, 5)
    if frame == (0, b"OK"):
        accepted += [b"batch-1", b"batch-2"]
    else:
        assert frame is not None and frame[1].startswith(b"E_MPUB_FAILED MPUB failed "), frame

    consumer = subscribe(connect, port, "overflow", "c", rdy=100)
    received = []
    while (frame := next_frame(consumer, 0.5)) is not None:
        assert frame[0] == 2
        received.append(frame[1][26:])
        consumer.command(b"FIN " + frame[1][10:26])
    assert sorted(received) == sorted(accepted)


def test_an_idle_channel_does_not_hold_back_another(server, connect):
    port = server.server.tcp_port
    idle = subscribe(connect, port, "independent", "idle", rdy=0)
    busy = subscribe(connect, port, "independent", "busy", rdy=100)
    mpublish(connect(port), "independent", [f"i{i}".encode() for i in range(50)])
    msgs = read_messages(busy, 50)
    assert [m.body for m in msgs] == [f"i{i}".encode() for i in range(50)]
    assert_silent(idle, 0.2)
    assert channel_state(server, "independent", "idle")["depth"] == 50


def test_touch_cannot_extend_beyond_max_msg_timeout(start_nsqd, connect):
    server = start_nsqd(http_address="", max_msg_timeout=1.5)
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "capped", "c", rdy=1, msg_timeout=1000)
    publish(connect(port), "capped", b"long job")
    msg = read_message(consumer)
    delivered = time.monotonic()
    for at in (0.5, 1.0):
        time.sleep(max(0.0, delivered + at - time.monotonic()))
        consumer.command(b"TOUCH " + msg.id)
    again = read_message(consumer, 3)
    elapsed = time.monotonic() - delivered
    assert (again.id, again.attempts) == (msg.id, 2)
    # The last TOUCH asked for 2.0 s; nsqd caps the deadline at delivery + max-msg-timeout.
    assert 1.4 <= elapsed < 1.9


def test_req_timeout_above_max_req_timeout_is_clamped(start_nsqd, connect):
    server = start_nsqd(http_address="", max_req_timeout=0.5)
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "clamped", "c", rdy=1)
    publish(connect(port), "clamped", b"x")
    msg = read_message(consumer)
    sent = time.monotonic()
    consumer.command(b"REQ " + msg.id + b" 3600000")
    again = read_message(consumer, 3)
    assert again.id == msg.id and again.attempts == 2
    assert 0.5 <= time.monotonic() - sent < 1.5


def test_largest_message_round_trip(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "large", "c", rdy=2)
    body = bytes(range(256)) * 4096  # exactly --max-msg-size (1 MiB)
    producer = connect(port)
    publish(producer, "large", body)
    mpublish(producer, "large", [body[:-1] + b"!"])
    assert read_message(consumer).body == body
    assert read_message(consumer).body == body[:-1] + b"!"

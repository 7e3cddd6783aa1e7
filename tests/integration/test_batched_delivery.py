"""Batched hot paths seen from raw V2 sockets: a run of pipelined FINs is finished as one batch
(bad ids in it still get their own non-fatal error, in order), delivery batches respect the
RDY window and queue order, and a FIN line nsqd would split differently is not batched.
"""

from __future__ import annotations

import fcntl
import struct
import termios
import threading
import time

import pytest

from .test_delivery import (
    assert_silent,
    channel_state,
    mpublish,
    next_frame,
    read_message,
    read_messages,
    subscribe,
    wait_until,
)


@pytest.fixture
def server(start_nsqd):
    return start_nsqd(http_address="")


def test_pipelined_fins_with_bad_ids_fail_one_by_one_in_order(server, connect):
    port = server.server.tcp_port
    owner = subscribe(connect, port, "fins", "c", rdy=1)
    consumer = subscribe(connect, port, "fins", "c", rdy=0)
    mpublish(connect(port), "fins", [b"owned"] + [b"m%d" % i for i in range(40)])
    owned = read_message(owner)
    consumer.command(b"RDY 40")
    msgs = read_messages(consumer, 40)
    unknown = b"0123456789abcdef"
    ids = [m.id for m in msgs]
    run = ids[:10] + [unknown] + ids[10:30] + [owned.id] + ids[30:]
    consumer.send(b"".join(b"FIN " + msg_id + b"\n" for msg_id in run))  # one write
    assert next_frame(consumer, 3) == (
        1,
        b"E_FIN_FAILED FIN " + unknown + b" failed ID not in flight",
    )
    assert next_frame(consumer, 3) == (
        1,
        b"E_FIN_FAILED FIN " + owned.id + b" failed client does not own message",
    )
    assert_silent(consumer)
    # the 40 good ones were finished, the other consumer's message is still its own
    assert wait_until(lambda: channel_state(server, "fins", "c")["in_flight"] == 1)
    owner.command(b"FIN " + owned.id)
    assert wait_until(lambda: channel_state(server, "fins", "c")["in_flight"] == 0)
    assert_silent(owner)


def test_a_fin_run_frees_the_window_and_delivery_keeps_queue_order(server, connect):
    port = server.server.tcp_port
    bodies = [b"%04d" % i for i in range(700)]
    producer = connect(port)
    consumer = subscribe(connect, port, "order", "c", rdy=0)
    for start in range(0, len(bodies), 100):
        mpublish(producer, "order", bodies[start : start + 100])
    consumer.command(b"RDY 300")
    got = read_messages(consumer, 300)
    assert_silent(consumer, 0.3)  # never more than the window
    assert channel_state(server, "order", "c")["in_flight"] == 300
    consumer.send(b"".join(b"FIN " + m.id + b"\n" for m in got))
    got += read_messages(consumer, 300)
    assert_silent(consumer, 0.3)
    consumer.send(b"".join(b"FIN " + m.id + b"\n" for m in got[300:]))
    got += read_messages(consumer, 100)
    assert [m.body for m in got] == bodies
    assert all(m.attempts == 1 for m in got)


def test_fin_line_with_carriage_return_is_split_like_nsqd(server, connect):
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "cr", "c", rdy=1)
    mpublish(connect(port), "cr", [b"x"])
    msg = read_message(consumer)
    # 21 bytes like a FIN line, but nsqd drops the \r and sees a 15-byte id: fatal
    consumer.send(b"FIN " + msg.id[:15] + b"\r\n")
    assert next_frame(consumer, 3) == (1, b"E_INVALID invalid message ID")
    assert consumer.is_closed()


def test_two_consumers_share_a_big_batch(server, connect):
    port = server.server.tcp_port
    first = subscribe(connect, port, "share_big", "c", rdy=600)
    second = subscribe(connect, port, "share_big", "c", rdy=600)
    bodies = [b"b%d" % i for i in range(1000)]
    mpublish(connect(port), "share_big", bodies)
    counts = []
    for conn in (first, second):
        seen = 0
        while (frame := next_frame(conn, 0.5)) is not None:
            assert frame[0] == 2
            seen += 1
        counts.append(seen)
    assert sum(counts) == 1000
    assert all(count >= 400 for count in counts), counts  # neither window was exceeded


def test_a_publisher_that_never_pauses_does_not_hold_back_deliveries(server, connect):
    """The publisher's command loop always finds more to read; consumers must get messages
    while it runs, not once its whole pipeline is done."""
    port = server.server.tcp_port
    consumer = subscribe(connect, port, "busy", "c", rdy=2500)
    publisher = connect(port)
    count = 6000
    frame = b"PUB busy\n" + struct.pack(">i", 8) + b"12345678"
    # Hold the server's hub while the whole burst lands in its socket buffer, so that its
    # command loop then never has to wait for data.
    stall = threading.Thread(target=server.call, args=(time.sleep, 0.5))
    stall.start()
    time.sleep(0.1)
    publisher.send(frame * count)
    read_message(consumer, timeout=10)
    answered = struct.unpack("i", fcntl.ioctl(publisher.sock, termios.FIONREAD, b"\0" * 4))[0]
    stall.join(5)
    assert answered < count * len(b"\0\0\0\x06\0\0\0\0OK") // 2, "deliveries waited for the burst"

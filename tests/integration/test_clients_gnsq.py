"""gnsq 1.0.2 (the gevent client) against gnsqd, used the way its users use it.

gnsq runs in the test's main thread on that thread's gevent hub, without monkey-patching (it uses
gevent sockets itself); gnsqd runs in-process on its own thread and hub, so waiting is done with
gevent.sleep to let gnsq's greenlets run.
"""

from __future__ import annotations

import time

import gevent
import gnsq
import pytest
from gnsq import errors, protocol

from .test_delivery import channel_state


@pytest.fixture
def server(start_nsqd):
    return start_nsqd(http_address="")


@pytest.fixture
def port(server) -> int:
    return server.server.tcp_port


@pytest.fixture
def tcp_client(port):
    """Factory for gnsq.NsqdTCPClient connections (what gnsq.Nsqd wraps), closed at teardown."""
    opened: list[gnsq.NsqdTCPClient] = []

    def open_client(**kwargs) -> gnsq.NsqdTCPClient:
        conn = gnsq.NsqdTCPClient("127.0.0.1", port, timeout=5.0, **kwargs)
        conn.connect()
        opened.append(conn)
        return conn

    yield open_client
    for conn in opened:
        conn.close_stream()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        gevent.sleep(0.01)


def read_frame(conn: gnsq.NsqdTCPClient, timeout: float = 5.0):
    """The next frame other than a heartbeat (gnsq answers heartbeats with NOP itself)."""
    with gevent.Timeout(timeout):
        while True:
            frame, data = conn.read_response()
            if frame == protocol.FRAME_TYPE_RESPONSE and data == protocol.HEARTBEAT:
                continue
            return frame, data


def read_message(conn: gnsq.NsqdTCPClient, timeout: float = 5.0) -> gnsq.Message:
    frame, message = read_frame(conn, timeout)
    assert frame == protocol.FRAME_TYPE_MESSAGE, (frame, message)
    return message


def subscribed(tcp_client, topic: str, channel: str, **kwargs) -> gnsq.NsqdTCPClient:
    conn = tcp_client(**kwargs)
    conn.identify()
    conn.subscribe(topic, channel)
    assert read_frame(conn) == (protocol.FRAME_TYPE_RESPONSE, b"OK")
    return conn


# -- NsqdTCPClient ----------------------------------------------------------------------------


def test_identify_negotiates_features(tcp_client):
    conn = tcp_client(heartbeat_interval=5, output_buffer_timeout=100, sample_rate=0)
    data = conn.identify()
    assert data["version"] == "1.3.0"
    assert data["max_rdy_count"] == 2500
    assert data["output_buffer_timeout"] == 100
    assert data["msg_timeout"] == 60000
    assert (data["tls_v1"], data["auth_required"]) == (False, False)
    assert conn.max_ready_count == 2500


def test_tcp_client_publish_consume_finish_requeue_touch(server, tcp_client):
    producer = tcp_client()
    producer.identify()
    producer.publish("g_topic", b"one")
    assert read_frame(producer) == (protocol.FRAME_TYPE_RESPONSE, b"OK")

    consumer = subscribed(tcp_client, "g_topic", "c")
    consumer.ready(1)
    first = read_message(consumer)
    assert (first.body, first.attempts) == (b"one", 1)
    first.touch()
    first.requeue(0, backoff=False)
    again = read_message(consumer)
    assert (again.id, again.body, again.attempts) == (first.id, b"one", 2)
    again.finish()

    producer.multipublish("g_topic", [b"two", b"three"])
    assert read_frame(producer) == (protocol.FRAME_TYPE_RESPONSE, b"OK")
    sent = time.monotonic()
    producer.publish("g_topic", b"four", defer=300)
    assert read_frame(producer) == (protocol.FRAME_TYPE_RESPONSE, b"OK")
    consumer.ready(5)
    rest = [read_message(consumer) for _ in range(3)]
    assert time.monotonic() - sent >= 0.3
    assert [m.body for m in rest] == [b"two", b"three", b"four"]
    for message in rest:
        message.finish()
    wait_for(lambda: channel_state(server, "g_topic", "c")["in_flight"] == 0)
    assert consumer.in_flight == 0


def test_close_answers_close_wait_and_stops_deliveries(server, tcp_client):
    producer = tcp_client()
    producer.publish("cls_topic", b"a")
    assert read_frame(producer)[1] == b"OK"
    producer.publish("cls_topic", b"b")
    assert read_frame(producer)[1] == b"OK"

    consumer = subscribed(tcp_client, "cls_topic", "c")
    consumer.ready(1)
    message = read_message(consumer)
    consumer.close()  # CLS
    assert read_frame(consumer) == (protocol.FRAME_TYPE_RESPONSE, b"CLOSE_WAIT")
    message.finish()
    with pytest.raises(gevent.Timeout):
        read_frame(consumer, 0.4)
    assert consumer.is_connected
    wait_for(lambda: channel_state(server, "cls_topic", "c")["in_flight"] == 0)
    assert channel_state(server, "cls_topic", "c")["depth"] == 1
    consumer.close_stream()
    assert not consumer.is_connected


def test_fatal_error_raises_and_closes(tcp_client):
    conn = tcp_client()
    conn.publish("t", b"x", defer=3600001)  # above --max-req-timeout
    frame, error = read_frame(conn)
    assert frame == protocol.FRAME_TYPE_ERROR
    assert isinstance(error, errors.NSQInvalid)
    assert "DPUB timeout 3600001 out of range 0-3600000" in str(error)
    assert not conn.is_connected  # gnsq closes on a fatal error; so did the server
    consumer = tcp_client()
    consumer.subscribe("t", "c")
    read_frame(consumer)
    consumer.finish(b"0000000000000000")
    frame, error = read_frame(consumer)
    assert isinstance(error, errors.NSQFinishFailed)
    assert consumer.is_connected  # E_FIN_FAILED is not fatal


def test_tcp_client_heartbeats(tcp_client):
    conn = tcp_client(heartbeat_interval=1)
    conn.identify()
    heartbeats = []
    conn.on_response.connect(lambda _conn, response: heartbeats.append(response), weak=False)
    deadline = time.monotonic() + 3.2
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(deadline - time.monotonic()):
            while True:
                conn.read_response()  # heartbeats are answered with NOP by gnsq
    assert heartbeats.count(protocol.HEARTBEAT) >= 2
    assert conn.is_connected
    conn.publish("hb", b"alive")
    assert read_frame(conn) == (protocol.FRAME_TYPE_RESPONSE, b"OK")


# -- Producer and Consumer --------------------------------------------------------------------


@pytest.fixture
def producer(port):
    producer = gnsq.Producer([f"127.0.0.1:{port}"])
    producer.start()
    yield producer
    producer.close()
    producer.join(timeout=5)


def consume(port: int, topic: str, count: int, timeout: float = 5.0, **kwargs) -> list:
    """Run a gnsq.Consumer until it has `count` messages; each entry is (message, arrival)."""
    received = []
    consumer = gnsq.Consumer(
        topic, "c", nsqd_tcp_addresses=[f"127.0.0.1:{port}"], max_in_flight=10, **kwargs
    )

    @consumer.on_message.connect
    def handler(_consumer, message) -> None:
        received.append((message, time.monotonic()))

    consumer.start(block=False)
    try:
        wait_for(lambda: len(received) >= count, timeout)
        gevent.sleep(0.1)  # anything extra would show up now
    finally:
        consumer.close()
        consumer.join(timeout=5)
    return received


def test_producer_publish_multipublish_defer(server, port, producer):
    assert producer.publish("p_topic", b"single") == b"OK"
    assert producer.multipublish("p_topic", [b"m1", b"m2", b"m3"]) == b"OK"
    sent = time.monotonic()
    assert producer.publish("p_topic", b"deferred", defer=600) == b"OK"
    assert producer.publish("p_topic", b"last") == b"OK"

    received = consume(port, "p_topic", 6)
    bodies = [message.body for message, _ in received]
    assert bodies == [b"single", b"m1", b"m2", b"m3", b"last", b"deferred"]
    assert received[-1][1] - sent >= 0.6
    wait_for(lambda: channel_state(server, "p_topic", "c")["in_flight"] == 0)


def test_producer_raises_nsq_errors(producer):
    with pytest.raises(errors.NSQBadMessage):
        producer.publish("big_topic", b"x" * (1024 * 1024 + 1))
    assert producer.publish("big_topic", b"fine") == b"OK"  # gnsq reconnects after the close


def test_consumer_consumes_n_messages(server, port, producer):
    bodies = [f"c{i:03d}".encode() for i in range(100)]
    for start in range(0, 100, 25):
        assert producer.multipublish("n_topic", bodies[start : start + 25]) == b"OK"
    received = consume(port, "n_topic", 100)
    assert sorted(message.body for message, _ in received) == bodies
    assert {message.attempts for message, _ in received} == {1}
    state = channel_state(server, "n_topic", "c")
    assert (state["depth"], state["in_flight"]) == (0, 0)


def test_consumer_requeue_then_max_tries(server, port, producer):
    assert producer.publish("mt_topic", b"poison") == b"OK"
    attempts = []
    given_up = []
    consumer = gnsq.Consumer(
        "mt_topic",
        "c",
        nsqd_tcp_addresses=[f"127.0.0.1:{port}"],
        max_tries=2,
        requeue_delay=0,
        backoff_on_requeue=False,
    )

    @consumer.on_message.connect
    def handler(_consumer, message) -> None:
        attempts.append(message.attempts)
        raise gnsq.errors.NSQRequeueMessage()

    @consumer.on_giving_up.connect
    def gave_up(_consumer, message) -> None:
        given_up.append(message.attempts)

    consumer.start(block=False)
    try:
        wait_for(lambda: given_up)
        wait_for(lambda: channel_state(server, "mt_topic", "c")["in_flight"] == 0)
    finally:
        consumer.close()
        consumer.join(timeout=5)
    assert attempts == [1, 2]
    assert given_up == [3]
    assert channel_state(server, "mt_topic", "c")["depth"] == 0


def test_consumer_stays_connected_with_short_heartbeats(port, producer):
    received = []
    consumer = gnsq.Consumer(
        "hb_topic", "c", nsqd_tcp_addresses=[f"127.0.0.1:{port}"], heartbeat_interval=1
    )

    @consumer.on_message.connect
    def handler(_consumer, message) -> None:
        received.append(message.body)

    closed = []
    consumer.start(block=False)
    try:
        wait_for(lambda: len(consumer._connections) == 1)
        (conn,) = consumer._connections
        conn.on_close.connect(lambda c: closed.append(c), weak=False)
        gevent.sleep(3.2)
        assert not closed and conn.is_connected
        assert producer.publish("hb_topic", b"after heartbeats") == b"OK"
        wait_for(lambda: received == [b"after heartbeats"])
    finally:
        consumer.close()
        consumer.join(timeout=5)

"""pynsq 0.9.1 (the official Tornado client) against gnsqd, used the way its users use it.

Each test runs pynsq's Writer / Reader on a fresh asyncio loop (Tornado's IOLoop wraps it) in the
test thread, bounded by a timeout; gnsqd runs in-process on its own thread and hub.
"""

from __future__ import annotations

import asyncio
import time

import nsq
import pytest

from ..conftest import RawConnection
from .test_delivery import channel_state, publish

TIMEOUT = 10.0


@pytest.fixture
def server(start_nsqd):
    return start_nsqd(http_address="")


@pytest.fixture
def address(server) -> str:
    return f"127.0.0.1:{server.server.tcp_port}"


def run(main, timeout: float = TIMEOUT) -> None:
    """Run the coroutine function `main` on a new loop; fail if it takes longer than `timeout`."""

    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def settle(*clients) -> None:
    """Close pynsq clients and let the loop run their close callbacks."""
    for client in clients:
        if isinstance(client, nsq.Reader):
            client.close()
        else:
            for conn in list(client.conns.values()):
                conn.close()
    await asyncio.sleep(0.05)


async def call(method, *args):
    """A Writer call as a coroutine: its (conn, data) callback's data."""
    future = asyncio.get_running_loop().create_future()

    def done(_conn, data) -> None:
        if not future.done():
            future.set_result(data)

    method(*args, callback=done)
    return await asyncio.wait_for(future, 5)


def publish_raw(address: str, topic: str, *bodies: bytes) -> None:
    conn = RawConnection(int(address.rsplit(":", 1)[1]))
    try:
        publish(conn, topic, *bodies)
    finally:
        conn.close()


# -- Writer -----------------------------------------------------------------------------------


def test_writer_pub_mpub_dpub(address):
    received: list[tuple[bytes, float]] = []

    def handler(message) -> bool:
        received.append((message.body, time.monotonic()))
        return True

    async def main() -> None:
        writer = nsq.Writer([address])
        reader = nsq.Reader(
            "w_topic", "c", message_handler=handler, nsqd_tcp_addresses=[address], max_in_flight=10
        )
        await until(lambda: writer.conns and reader.conns)
        await until(lambda: any(conn.rdy for conn in reader.conns.values()))
        assert await call(writer.pub, "w_topic", b"single") == b"OK"
        assert await call(writer.mpub, "w_topic", [b"multi-1", b"multi-2", b"multi-3"]) == b"OK"
        sent = time.monotonic()
        assert await call(writer.dpub, "w_topic", 600, b"deferred") == b"OK"
        assert await call(writer.pub, "w_topic", b"after") == b"OK"
        await until(lambda: len(received) == 6)
        bodies = [body for body, _ in received]
        assert bodies[:5] == [b"single", b"multi-1", b"multi-2", b"multi-3", b"after"]
        assert bodies[5] == b"deferred"
        assert received[5][1] - sent >= 0.6
        await settle(writer, reader)

    run(main)


def test_writer_gets_the_error_for_a_bad_topic(address):
    async def main() -> None:
        writer = nsq.Writer([address])
        await until(lambda: writer.conns)
        result = await call(writer.pub, "bad!topic", b"x")
        assert isinstance(result, nsq.Error)
        assert "E_BAD_TOPIC" in str(result)
        await settle(writer)

    run(main)


# -- Reader -----------------------------------------------------------------------------------


def test_reader_consumes_and_finishes(server, address):
    bodies = [f"r{i:02d}".encode() for i in range(20)]
    publish_raw(address, "r_topic", *bodies)
    seen = []

    def handler(message) -> bool:
        seen.append((message.body, message.attempts))
        return True

    async def main() -> None:
        reader = nsq.Reader(
            "r_topic", "c", message_handler=handler, nsqd_tcp_addresses=[address], max_in_flight=5
        )
        await until(lambda: len(seen) == 20)
        await until(lambda: channel_state(server, "r_topic", "c")["in_flight"] == 0)
        await settle(reader)

    run(main)
    assert sorted(body for body, _ in seen) == bodies
    assert {attempts for _, attempts in seen} == {1}
    assert channel_state(server, "r_topic", "c")["depth"] == 0


def test_reader_requeue_with_delay(server, address):
    publish_raw(address, "req_topic", b"retry me")
    deliveries: list[tuple[int, float]] = []

    def handler(message):
        deliveries.append((message.attempts, time.monotonic()))
        if message.attempts == 1:
            message.requeue(time_ms=500, backoff=False)
            return None
        return True

    async def main() -> None:
        reader = nsq.Reader("req_topic", "c", message_handler=handler, nsqd_tcp_addresses=[address])
        await until(lambda: len(deliveries) == 2)
        await until(lambda: channel_state(server, "req_topic", "c")["in_flight"] == 0)
        await settle(reader)

    run(main)
    (first, at_first), (second, at_second) = deliveries
    assert (first, second) == (1, 2)
    assert at_second - at_first >= 0.5


def test_reader_touch_keeps_a_slow_message(server, address):
    publish_raw(address, "touch_topic", b"slow")
    deliveries = []

    def handler(message):
        deliveries.append(message.attempts)
        message.enable_async()
        loop = asyncio.get_running_loop()
        loop.call_later(0.6, message.touch)
        loop.call_later(1.2, message.touch)
        loop.call_later(1.8, message.finish)

    async def main() -> None:
        reader = nsq.Reader(
            "touch_topic",
            "c",
            message_handler=handler,
            nsqd_tcp_addresses=[address],
            msg_timeout=1,
        )
        await until(lambda: deliveries)
        await asyncio.sleep(2.0)
        await until(lambda: channel_state(server, "touch_topic", "c")["in_flight"] == 0)
        await settle(reader)

    run(main)
    assert deliveries == [1], "the touches should have prevented a redelivery"
    assert channel_state(server, "touch_topic", "c")["timeouts"] == 0


def test_reader_message_times_out_and_comes_back(server, address):
    publish_raw(address, "timeout_topic", b"abandoned")
    deliveries: list[tuple[int, float]] = []

    def handler(message):
        deliveries.append((message.attempts, time.monotonic()))
        if message.attempts == 1:
            message.enable_async()  # and never respond
            return None
        return True

    async def main() -> None:
        reader = nsq.Reader(
            "timeout_topic",
            "c",
            message_handler=handler,
            nsqd_tcp_addresses=[address],
            msg_timeout=1,
            max_in_flight=2,
        )
        await until(lambda: len(deliveries) == 2, timeout=4)
        await until(lambda: channel_state(server, "timeout_topic", "c")["in_flight"] == 0)
        await settle(reader)

    run(main)
    (first, at_first), (second, at_second) = deliveries
    assert (first, second) == (1, 2)
    assert at_second - at_first >= 0.9
    assert channel_state(server, "timeout_topic", "c")["timeouts"] == 1


class GivingUpReader(nsq.Reader):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.given_up: list[tuple[bytes, int]] = []

    def giving_up(self, message) -> None:
        self.given_up.append((message.body, message.attempts))


def test_reader_max_tries_gives_up_and_finishes(server, address):
    publish_raw(address, "tries_topic", b"poison")
    attempts_seen = []

    def handler(message):
        attempts_seen.append(message.attempts)
        message.requeue(time_ms=0, backoff=False)

    async def main() -> None:
        reader = GivingUpReader(
            "tries_topic",
            "c",
            message_handler=handler,
            nsqd_tcp_addresses=[address],
            max_tries=3,
        )
        await until(lambda: reader.given_up)
        await until(lambda: channel_state(server, "tries_topic", "c")["in_flight"] == 0)
        assert reader.given_up == [(b"poison", 4)]
        await settle(reader)

    run(main)
    assert attempts_seen == [1, 2, 3]
    state = channel_state(server, "tries_topic", "c")
    assert (state["depth"], state["in_flight"], state["requeues"]) == (0, 0, 3)


class CountingReader(nsq.Reader):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeats = 0

    def heartbeat(self, conn) -> None:
        self.heartbeats += 1


def test_heartbeats_keep_reader_and_writer_connected(address):
    received = []

    def handler(message) -> bool:
        received.append(message.body)
        return True

    async def main() -> None:
        reader = CountingReader(
            "hb_topic",
            "c",
            message_handler=handler,
            nsqd_tcp_addresses=[address],
            heartbeat_interval=1,
        )
        writer = nsq.Writer([address], heartbeat_interval=1)
        await until(lambda: reader.conns and writer.conns)
        reader_conn = next(iter(reader.conns.values()))
        writer_conn = next(iter(writer.conns.values()))
        await asyncio.sleep(3.2)
        assert reader.heartbeats >= 2
        assert reader_conn.connected() and writer_conn.connected()
        assert list(reader.conns.values()) == [reader_conn]
        assert await call(writer.pub, "hb_topic", b"still here") == b"OK"
        await until(lambda: received == [b"still here"])
        await settle(reader, writer)

    run(main)

"""Publish N messages with a real client library and consume them back with the same library.

Used by the TLS, compression and AUTH tests: each negotiated feature must carry real traffic
(single PUBs, MPUB batches, small and compressible bodies) both ways, not just an OK.
"""

from __future__ import annotations

import asyncio
import time

import gevent
import gnsq
import nsq

TIMEOUT = 20.0


def bodies(n: int, tag: str) -> list[bytes]:
    """Distinct bodies; every 10th is 8 KiB of compressible text so compressors have work."""
    out = []
    for i in range(n):
        body = f"{tag}-{i:04d}".encode()
        if i % 10 == 0:
            body += b" " + b"lorem ipsum dolor sit amet " * 300
        out.append(body)
    return out


def gnsq_exchange(port: int, topic: str, n: int = 500, **conn: object) -> list[bytes]:
    """gnsq's NsqdTCPClient publishes (half PUB, half MPUB), gnsq's Consumer reads them back.

    (gnsq 1.0.2's Producer cannot negotiate TLS/snappy/deflate: the upgrade's OK reaches its
    response handler before any request, against nsqd too.)
    """
    address = f"127.0.0.1:{port}"
    sent = bodies(n, topic)
    received: list[bytes] = []
    consumer = gnsq.Consumer(
        topic, "c", nsqd_tcp_addresses=[address], max_in_flight=100, **conn
    )

    @consumer.on_message.connect
    def handler(_consumer, message) -> None:
        received.append(message.body)

    publisher = gnsq.NsqdTCPClient("127.0.0.1", port, timeout=TIMEOUT, **conn)

    def expect_ok() -> None:
        while True:
            frame, data = publisher.read_response()
            if data != b"_heartbeat_":
                assert (frame, data) == (0, b"OK"), (frame, data)
                return

    with gevent.Timeout(TIMEOUT):
        publisher.connect()
        publisher.identify()  # and AUTH, when the server requires it and a secret is given
        half = n // 2
        for body in sent[:half]:
            publisher.publish(topic, body)
            expect_ok()
        for start in range(half, n, 50):
            publisher.multipublish(topic, sent[start : start + 50])
            expect_ok()
        publisher.close_stream()
        consumer.start(block=False)
        while len(received) < n:
            gevent.sleep(0.02)
        gevent.sleep(0.1)  # let the last FINs go out
        consumer.close()
        consumer.join()
    assert sorted(received) == sorted(sent)
    return received


def pynsq_exchange(port: int, topic: str, n: int = 500, **conn: object) -> list[bytes]:
    """pynsq Writer (half PUB, half MPUB) then pynsq Reader on a fresh loop."""
    address = f"127.0.0.1:{port}"
    sent = bodies(n, topic)
    received: list[bytes] = []

    def handler(message) -> bool:
        received.append(message.body)
        return True

    async def until(predicate) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)

    async def main() -> None:
        writer = nsq.Writer([address], **conn)
        await until(lambda: writer.conns)
        results: list[bytes] = []

        def done(_conn, data) -> None:
            results.append(data)

        half = n // 2
        for body in sent[:half]:
            writer.pub(topic, body, callback=done)
        for start in range(half, n, 50):
            writer.mpub(topic, sent[start : start + 50], callback=done)
        batches = half + len(range(half, n, 50))
        await until(lambda: len(results) == batches)
        assert all(result == b"OK" for result in results), results[:3]
        reader = nsq.Reader(
            topic, "c", message_handler=handler, nsqd_tcp_addresses=[address],
            max_in_flight=100, **conn,
        )
        await until(lambda: len(received) >= n)
        await asyncio.sleep(0.1)
        reader.close()
        for connection in list(writer.conns.values()):
            connection.close()
        await asyncio.sleep(0.05)

    async def bounded() -> None:
        await asyncio.wait_for(main(), TIMEOUT + 5)

    asyncio.run(bounded())
    assert sorted(received) == sorted(sent)
    return received

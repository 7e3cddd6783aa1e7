"""Slow and stuck peers against a real gnsqd process: slowloris dribblers, a consumer that
never reads, a client that pipelines without reading its answers, consumers vanishing with
messages in flight, and 1,000 connections publishing at once.

Deadlines are nsqd's (PROTOCOL.md 1.7): the read deadline (2 x heartbeat interval) is set
once before each command line is read and covers the body reads of that command; the write
deadline is 1 x heartbeat interval per frame write. Every case prints a FIGURE line.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import time

import pytest

from ..conftest import RawConnection
from ..hostile import (
    HEARTBEAT,
    gnsqd,
    mpub_payload,
    parse_frames,
    raise_fd_limit,
    settle,
    size,
    with_body,
)
from .test_bad_input import Witness
from .test_delivery import expect_response, next_frame, read_message, wait_until


def identify(conn: RawConnection, **fields) -> None:
    conn.command(b"IDENTIFY", json.dumps(fields).encode())
    expect_response(conn)


def channel_stats(server, topic: str, channel: str) -> dict:
    doc = server.stats(topic=topic, channel=channel)
    return doc["topics"][0]["channels"][0]


def drained(sock: socket.socket, wait: float) -> tuple[list[tuple[int, bytes]], bool]:
    """Frames (heartbeats dropped) until the server closes (True) or `wait` passes."""
    data, closed = bytearray(), False
    deadline = time.monotonic() + wait
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    frames, _ = parse_frames(bytes(data))
    return [f for f in frames if f != (0, HEARTBEAT)], closed


@pytest.fixture
def server(tmp_path):
    with gnsqd(tmp_path) as running:
        yield running


@pytest.fixture
def witness(server):
    witness = Witness(server.tcp_port)
    witness.check()
    yield witness
    witness.check()
    witness.close()


# -- slowloris ------------------------------------------------------------------------------


def test_100_slowloris_dribblers_each_get_their_ok(server, witness):
    """100 connections each dribble one PUB a byte at a time, interleaved; all are served."""
    count = 100
    fds_before = server.sockets()
    socks = [socket.create_connection(("127.0.0.1", server.tcp_port)) for _ in range(count)]
    assert wait_until(lambda: server.sockets() >= fds_before + count, timeout=5)
    fds_held = server.sockets()
    payloads = [b"  V2" + with_body(b"PUB drip", f"drip-{n:03d}".encode()) for n in range(count)]
    started = time.monotonic()
    try:
        for index in range(len(payloads[0])):
            for sock, payload in zip(socks, payloads, strict=True):
                sock.sendall(payload[index : index + 1])
            time.sleep(0.02)
            if index % 8 == 0:
                witness.check()
        for sock in socks:
            sock.settimeout(5)
            assert sock.recv(10) == struct.pack(">ii", 6, 0) + b"OK"
    finally:
        for sock in socks:
            sock.close()
    assert server.stats(topic="drip")["topics"][0]["depth"] == count
    print(
        f"\nFIGURE slowloris_dribblers: connections held {count}, server sockets {fds_before} -> "
        f"{fds_held} while held, {len(payloads[0])} bytes each over "
        f"{time.monotonic() - started:.1f}s"
    )


def test_slowloris_inside_one_command_is_cut_at_the_read_deadline(server, witness):
    conn = RawConnection(server.tcp_port)
    identify(conn, heartbeat_interval=1000)  # read deadline 2 s per command
    conn.send(b"PUB slow\n" + size(40))
    started = time.monotonic()
    closed_after = None
    frames: list = []
    for _ in range(16):  # 4 s of dribbling, a byte every 0.25 s
        try:
            conn.send(b"x")
        except OSError:
            closed_after = time.monotonic() - started
            break
        got, closed = drained(conn.sock, 0.25)
        frames += got
        if closed:
            closed_after = time.monotonic() - started
            break
    conn.close()
    print(f"\nFIGURE slowloris_one_command: closed after {closed_after} s (deadline 2 s)")
    assert closed_after is not None and closed_after < 3.0
    assert frames == [(1, b"E_BAD_MESSAGE PUB failed to read message body")]


def test_stalled_body_gets_nsqd_error_at_the_read_deadline(server, witness):
    conn = RawConnection(server.tcp_port)
    identify(conn, heartbeat_interval=1000)
    conn.send(b"PUB stall\n" + size(40) + b"x" * 5)
    started = time.monotonic()
    frames, closed = drained(conn.sock, 5.0)
    conn.close()
    print(f"\nFIGURE stalled_body: closed={closed} after {time.monotonic() - started:.1f}s")
    assert closed
    assert frames == [(1, b"E_BAD_MESSAGE PUB failed to read message body")]


# -- a consumer that never reads ----------------------------------------------------------------


def stuck_consumer(port: int, topic: str, heartbeat_ms: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    fields = {"heartbeat_interval": heartbeat_ms, "msg_timeout": 1000}
    sock.sendall(b"  V2" + with_body(b"IDENTIFY", json.dumps(fields).encode()))
    sock.sendall(f"SUB {topic} c\nRDY 2500\n".encode())
    return sock


def flood(port: int, topic: str, count: int, body: bytes) -> None:
    producer = RawConnection(port)
    for _ in range(count // 250):
        producer.command(f"MPUB {topic}".encode(), mpub_payload([body] * 250))
        expect_response(producer)
    producer.close()


def wait_dropped(server, sock: socket.socket, topic: str, limit: float) -> float | None:
    """Keep the stuck client's read deadline fresh with NOPs; seconds until it was dropped."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            sock.sendall(b"NOP\n")
        except OSError:
            return time.monotonic() - started
        if channel_stats(server, topic, "c")["client_count"] == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_consumer_with_rdy_2500_that_never_reads_is_dropped(server, witness):
    rss_before = server.rss()
    stuck = stuck_consumer(server.tcp_port, "stuck", heartbeat_ms=1000)
    time.sleep(0.2)
    flood(server.tcp_port, "stuck", 2500, b"s" * 4096)
    dropped_after = wait_dropped(server, stuck, "stuck", 10.0)
    rss_grown = server.rss() - rss_before
    stuck.close()
    assert dropped_after is not None, "a consumer that never reads was never dropped"
    assert dropped_after < 2 * 1.0 + 1.5
    witness.check()
    # its 2500 in-flight messages come back after the 1 s msg timeout to someone who reads
    reader = RawConnection(server.tcp_port)
    reader.command(b"SUB stuck c")
    expect_response(reader)
    reader.command(b"RDY 2500")
    attempts = []
    for _ in range(2500):
        msg = read_message(reader, 10)
        attempts.append(msg.attempts)
        reader.command(b"FIN " + msg.id)
    reader.close()
    # timed-out messages may have gone back to the stuck consumer before it was dropped
    assert min(attempts) >= 2
    timeouts = channel_stats(server, "stuck", "c")["timeout_count"]
    assert timeouts == sum(attempts) - 2500
    assert rss_grown < 64 * 1024, f"RSS grew {rss_grown} KiB for 10 MiB in flight"
    print(
        f"\nFIGURE stuck_consumer: RDY 2500 x 4 KiB, dropped {dropped_after:.2f}s after the "
        f"flood (heartbeat 1 s), RSS +{rss_grown} KiB, peak RSS {server.peak_rss()} KiB, "
        f"2500 redelivered (attempts {min(attempts)}-{max(attempts)}, {timeouts} timeouts)"
    )


def test_write_deadline_is_one_heartbeat_interval(server):
    stuck = stuck_consumer(server.tcp_port, "wdl", heartbeat_ms=2000)
    time.sleep(0.2)
    flood(server.tcp_port, "wdl", 2500, b"w" * 4096)
    dropped_after = wait_dropped(server, stuck, "wdl", 8.0)
    stuck.close()
    print(f"\nFIGURE write_deadline: dropped {dropped_after}s after the flood (heartbeat 2 s)")
    assert dropped_after is not None and dropped_after < 3.0


def test_pipelining_client_that_never_reads_keeps_memory_bounded(server, witness):
    rss_before = server.rss()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.tcp_port))
    sock.sendall(b"  V2SUB pipe c\n")
    chunk = b"FIN 0000000000000000\n" * 5000  # each one answers E_FIN_FAILED (non-fatal)
    sock.settimeout(2.0)
    sent, started = 0, time.monotonic()
    try:
        while sent < 25_000_000 and time.monotonic() - started < 12:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server stopped reading: that is the bounded behaviour
    grown = server.rss() - rss_before
    sock.close()
    print(
        f"\nFIGURE pipelining_non_reader: sent {sent / 1e6:.1f} MB of FIN in "
        f"{time.monotonic() - started:.1f}s, server RSS +{grown // 1024} MiB"
    )
    assert grown < 64 * 1024, f"RSS grew {grown // 1024} MiB"


# -- consumers vanishing with messages in flight ------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_vanished_consumer_in_flight_redelivered_after_timeout(server, witness, reset):
    count = 500
    producer = RawConnection(server.tcp_port)
    producer.command(b"MPUB gone", mpub_payload([f"g{n}".encode() for n in range(count)]))
    expect_response(producer)
    first = RawConnection(server.tcp_port)
    identify(first, msg_timeout=1500)
    first.command(b"SUB gone c")
    expect_response(first)
    first.command(f"RDY {count}".encode())
    read_half = [read_message(first) for _ in range(count // 2)]  # the rest stays unread
    assert channel_stats(server, "gone", "c")["in_flight_count"] == count
    if reset:
        first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone_at = time.monotonic()
    first.close()
    second = RawConnection(server.tcp_port)
    second.command(b"SUB gone c")
    expect_response(second)
    second.command(f"RDY {count}".encode())
    assert next_frame(second, 1.0) is None, "redelivered before the msg timeout"
    bodies, attempts = set(), set()
    for _ in range(count):
        msg = read_message(second, 5)
        bodies.add(msg.body)
        attempts.add(msg.attempts)
        second.command(b"FIN " + msg.id)
    waited = time.monotonic() - gone_at
    assert bodies == {f"g{n}".encode() for n in range(count)}
    assert attempts == {2}
    assert {m.body for m in read_half} <= bodies
    stats = channel_stats(server, "gone", "c")
    assert stats["timeout_count"] == count
    second.close()
    producer.close()
    print(
        f"\nFIGURE vanished_consumer_{'rst' if reset else 'fin'}: {count} in flight "
        f"({count // 2} unread), all redelivered with attempts 2, last after {waited:.1f}s "
        f"(msg timeout 1.5 s)"
    )


# -- 1,000 connections at once ----------------------------------------------------------------


def test_1000_concurrent_connections_publish_at_once(tmp_path):
    count = 1000
    raise_fd_limit(4 * count)  # before the server starts: it inherits the limit
    with gnsqd(tmp_path) as server:
        fds_before = server.fds()
        rss_before = server.rss()
        consumer = RawConnection(server.tcp_port)
        consumer.command(b"SUB crowd c")
        expect_response(consumer)
        consumer.command(b"RDY 2500")
        sockets_before = server.sockets()
        socks = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10)
            socks.append(sock)
        for sock in socks:
            sock.sendall(b"  V2")
        assert wait_until(lambda: server.sockets() >= sockets_before + count, timeout=10)
        fds_held = server.fds()
        # every connection publishes in the same burst, then all answers are collected
        for number, sock in enumerate(socks):
            sock.sendall(with_body(b"PUB crowd", f"c{number:04d}".encode()))
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, bytes] = {}
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            pending[sock] = b""
        answered = 0
        deadline = time.monotonic() + 30
        ok = struct.pack(">ii", 6, 0) + b"OK"
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                sock = key.fileobj
                pending[sock] += sock.recv(64)
                if len(pending[sock]) >= len(ok):
                    assert pending.pop(sock) == ok
                    selector.unregister(sock)
                    answered += 1
        selector.close()
        assert answered == count
        received = set()
        while len(received) < count and (frame := next_frame(consumer, 5)) is not None:
            assert frame[0] == 2
            received.add(frame[1][26:])
            consumer.command(b"FIN " + frame[1][10:26])
        assert received == {f"c{n:04d}".encode() for n in range(count)}
        peak = server.peak_rss()
        for sock in socks:
            sock.close()
        consumer.close()
        fds_after = settle(server.fds, fds_before)
        assert fds_after <= fds_before
        print(
            f"\nFIGURE 1000_connections: connections held {count}, server fds before "
            f"{fds_before} / held {fds_held} / after {fds_after}, RSS {rss_before} KiB -> "
            f"peak {peak} KiB, {count} messages consumed"
        )

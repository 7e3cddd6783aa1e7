"""Crash-safe mode (--crash-safe): an acknowledged publish survives kill -9.

Publishers record every OK, a consumer records every FIN, the daemon is killed with SIGKILL
at a random moment, and after a restart every acknowledged message that was not finished must
be delivered again on every channel that existed (duplicates allowed, losses not).
"""

from __future__ import annotations

import random
import signal
import struct
import threading
import time

import pytest

from ..conftest import RawConnection
from ..servers import ServerProcess


def start_gnsqd(data_path, *extra: str) -> ServerProcess:
    return ServerProcess(
        "gnsqd",
        "--tcp-address=127.0.0.1:0",
        "--http-address=",
        f"--data-path={data_path}",
        "--crash-safe",
        *extra,
    ).start(expect=("TCP",))


def mpub_body(bodies: list[bytes]) -> bytes:
    return struct.pack(">i", len(bodies)) + b"".join(
        struct.pack(">i", len(body)) + body for body in bodies
    )


class Publisher(threading.Thread):
    """Publishes numbered bodies until the connection dies; records what got an OK."""

    def __init__(self, port: int, topic: bytes, prefix: bytes, batch: int) -> None:
        super().__init__(daemon=True)
        self.conn = RawConnection(port)
        self.topic, self.prefix, self.batch = topic, prefix, batch
        self.acked: list[bytes] = []

    def run(self) -> None:
        sequence = 0
        try:
            while True:
                bodies = [b"%s-%07d" % (self.prefix, sequence + i) for i in range(self.batch)]
                sequence += self.batch
                if self.batch == 1:
                    self.conn.command(b"PUB " + self.topic, bodies[0])
                else:
                    self.conn.command(b"MPUB " + self.topic, mpub_body(bodies))
                if self.conn.read_frame() != (0, b"OK"):
                    return
                self.acked.extend(bodies)
        except (OSError, EOFError):
            return


class Finisher(threading.Thread):
    """Consumes one channel and FINs every other message; records what it finished."""

    def __init__(self, port: int, topic: bytes, channel: bytes) -> None:
        super().__init__(daemon=True)
        self.conn = RawConnection(port)
        self.conn.command(b"SUB %s %s" % (topic, channel))
        assert self.conn.read_frame() == (0, b"OK")
        self.conn.command(b"RDY 50")
        self.finished: list[bytes] = []

    def run(self) -> None:
        count = 0
        try:
            while True:
                frame_type, data = self.conn.read_frame()
                if frame_type != 2:
                    continue
                count += 1
                if count % 2:
                    # Counted as finished once sent: a FIN the crash swallowed only makes a
                    # duplicate, which the check below allows.
                    self.finished.append(data[26:])
                    self.conn.command(b"FIN " + data[10:26])
                else:
                    self.conn.command(b"REQ " + data[10:26] + b" 0")
        except (OSError, EOFError):
            return


def drain(port: int, topic: bytes, channel: bytes, expected: set[bytes]) -> set[bytes]:
    """Everything one channel delivers until the expected bodies arrived or it goes quiet."""
    conn = RawConnection(port)
    conn.command(b"SUB %s %s" % (topic, channel))
    assert conn.read_frame() == (0, b"OK")
    conn.command(b"RDY 2500")
    seen: set[bytes] = set()
    deadline = time.monotonic() + 20
    conn.sock.settimeout(2.0)
    while time.monotonic() < deadline and not expected <= seen:
        try:
            frame_type, data = conn.read_frame()
        except (TimeoutError, EOFError):
            break
        if frame_type == 2:
            seen.add(data[26:])
            conn.command(b"FIN " + data[10:26])
    conn.close()
    return seen


@pytest.mark.parametrize("trial", range(3))
def test_kill_9_loses_no_acknowledged_message(tmp_path, trial):
    rng = random.Random(trial)
    server = start_gnsqd(tmp_path)
    try:
        port = server.tcp_port
        finisher = Finisher(port, b"safe", b"worked")
        idle = RawConnection(port)  # a second channel that nobody consumes before the crash
        idle.command(b"SUB safe idle")
        assert idle.read_frame() == (0, b"OK")
        publishers = [
            Publisher(port, b"safe", b"mpub", 50),
            Publisher(port, b"safe", b"pub", 1),
        ]
        finisher.start()
        for publisher in publishers:
            publisher.start()
        time.sleep(rng.uniform(0.3, 1.2))
        server.signal(signal.SIGKILL)
        server.wait()
        for thread in [*publishers, finisher]:
            thread.join(5)
            thread.conn.close()
        idle.close()
    finally:
        server.stop()

    acked = {body for publisher in publishers for body in publisher.acked}
    assert len(acked) > 50, "the publishers should have got some OKs before the kill"
    restarted = start_gnsqd(tmp_path)
    try:
        unfinished = acked - set(finisher.finished)
        worked = drain(restarted.tcp_port, b"safe", b"worked", unfinished)
        idle_seen = drain(restarted.tcp_port, b"safe", b"idle", acked)
    finally:
        assert restarted.stop() == 0
    assert unfinished - worked == set(), f"{len(unfinished - worked)} acknowledged lost"
    assert acked - idle_seen == set(), f"{len(acked - idle_seen)} acknowledged lost on idle"


def test_publish_is_acknowledged_after_fsync_and_shares_it(tmp_path):
    """Group commit: concurrent publishers share fsyncs, and a clean restart keeps all."""
    server = start_gnsqd(tmp_path)
    try:
        publishers = [Publisher(server.tcp_port, b"gc", b"p%d" % i, 1) for i in range(8)]
        for publisher in publishers:
            publisher.start()
        time.sleep(1.0)
        assert server.stop() == 0
        for publisher in publishers:
            publisher.join(5)
            publisher.conn.close()
    finally:
        server.stop()
    acked = {body for publisher in publishers for body in publisher.acked}
    assert len(acked) > 100
    restarted = start_gnsqd(tmp_path)
    try:
        seen = drain(restarted.tcp_port, b"gc", b"late", acked)
    finally:
        restarted.stop()
    assert acked <= seen

"""Helpers for tests that run real gnsqd processes on a data path: a raw V2 client with its own
receive buffer, a gnsqd process factory, /stats and nsqd.dat readers, and a disk that fills up.
Shared by the durability, topic log, policy and data directory compatibility tests."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from .servers import ServerProcess

HAS_HTTP = importlib.util.find_spec("gnsq_server.nsqd.http") is not None
HEARTBEAT = b"_heartbeat_"
FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2
_MESSAGE = struct.Struct(">qH16s")


class Msg(NamedTuple):
    timestamp: int
    attempts: int
    id: bytes
    body: bytes


class ServerError(Exception):
    """An error frame from gnsqd."""


class Wire:
    """A V2 connection with its own receive buffer, so a read that times out loses nothing."""

    #: every connection a test opened; the run_gnsqd fixture closes them all at teardown
    opened: list[Wire] = []

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        Wire.opened.append(self)
        self.sock.sendall(b"  V2")
        self.buf = bytearray()
        self._pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def command(self, line: bytes, body: bytes | None = None) -> None:
        data = line + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.sock.sendall(data)

    def queue(self, line: bytes) -> None:
        """Batch small commands (FIN) into one write; sent by flush() or the next read."""
        self._pending.append(line + b"\n")
        if len(self._pending) >= 200:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.sock.sendall(b"".join(self._pending))
            self._pending.clear()

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return False
        if not chunk:
            raise EOFError("gnsqd closed the connection")
        self.buf += chunk
        return True

    def frame(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The next frame other than a heartbeat, or None if none arrives in time."""
        self.flush()
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 8:
                size, frame_type = struct.unpack_from(">ii", self.buf)
                if len(self.buf) >= 4 + size:
                    data = bytes(self.buf[8 : 4 + size])
                    del self.buf[: 4 + size]
                    if frame_type == FRAME_RESPONSE and data == HEARTBEAT:
                        self.command(b"NOP")
                        continue
                    return frame_type, data
            if not self._fill(deadline):
                return None

    def response(self, timeout: float = 10.0) -> bytes:
        frame = self.frame(timeout)
        assert frame is not None, "no response from gnsqd"
        frame_type, data = frame
        if frame_type == FRAME_ERROR:
            raise ServerError(data.decode(errors="replace"))
        assert frame_type == FRAME_RESPONSE, frame
        return data

    def message(self, timeout: float = 10.0) -> Msg | None:
        frame = self.frame(timeout)
        if frame is None:
            return None
        frame_type, data = frame
        if frame_type == FRAME_ERROR:
            raise ServerError(data.decode(errors="replace"))
        assert frame_type == FRAME_MESSAGE, frame
        return decode_message(data)

    def is_closed(self, timeout: float = 2.0) -> bool:
        try:
            self.frame(timeout)
        except (EOFError, ConnectionResetError):
            return True
        return False


def decode_message(data: bytes) -> Msg:
    timestamp, attempts, msg_id = _MESSAGE.unpack_from(data)
    return Msg(timestamp, attempts, msg_id, data[_MESSAGE.size :])


def mpub_body(bodies: list[bytes]) -> bytes:
    return struct.pack(">i", len(bodies)) + b"".join(
        struct.pack(">i", len(body)) + body for body in bodies
    )


def publish(port: int, topic: str, bodies: list[bytes], batch: int = 1000) -> None:
    """MPUB the bodies in batches on one connection; every batch must be OK."""
    wire = Wire(port)
    try:
        for start in range(0, len(bodies), batch):
            wire.command(b"MPUB " + topic.encode(), mpub_body(bodies[start : start + batch]))
            assert wire.response() == b"OK"
    finally:
        wire.close()


def dpub(port: int, topic: str, delay_ms: int, bodies: list[bytes]) -> None:
    wire = Wire(port)
    try:
        for body in bodies:
            wire.command(b"DPUB %s %d" % (topic.encode(), delay_ms), body)
            assert wire.response() == b"OK"
    finally:
        wire.close()


def subscribe(port: int, topic: str, channel: str, rdy: int = 0) -> Wire:
    wire = Wire(port)
    wire.command(b"SUB %s %s" % (topic.encode(), channel.encode()))
    assert wire.response() == b"OK"
    if rdy:
        wire.command(b"RDY %d" % rdy)
    return wire


def receive(wire: Wire, count: int, fin: bool = True, timeout: float = 10.0) -> list[Msg]:
    """Exactly `count` messages (each within `timeout`), FINed unless fin=False."""
    got = []
    for _ in range(count):
        msg = wire.message(timeout)
        assert msg is not None, f"only {len(got)} of {count} messages arrived"
        got.append(msg)
        if fin:
            wire.queue(b"FIN " + msg.id)
    wire.flush()
    return got


def assert_silent(wire: Wire, wait: float = 1.0) -> None:
    msg = wire.message(wait)
    assert msg is None, f"unexpected message {msg}"


def drain(wire: Wire, quiet: float = 1.0) -> list[Msg]:
    """FIN everything that arrives until nothing has arrived for `quiet` seconds."""
    got = []
    while (msg := wire.message(quiet)) is not None:
        got.append(msg)
        wire.queue(b"FIN " + msg.id)
    wire.flush()
    return got


# -- daemons -------------------------------------------------------------------------------


@contextlib.contextmanager
def gnsqd_processes():
    """A factory that starts gnsqd processes; on exit every connection opened by a Wire is
    closed and every gnsqd still running is killed."""
    started: list[ServerProcess] = []

    def start(data_path: Path, *flags: str, wrapper: tuple[str, ...] = ()) -> ServerProcess:
        server = ServerProcess(
            "gnsqd",
            "--tcp-address=127.0.0.1:0",
            "--http-address=127.0.0.1:0" if HAS_HTTP else "--http-address=",
            "--broadcast-address=127.0.0.1",
            f"--data-path={data_path}",
            *flags,
        )
        server.args = [*wrapper, *server.args]
        started.append(server)
        return server.start(expect=("TCP", "HTTP") if HAS_HTTP else ("TCP",))

    yield start
    for wire in Wire.opened:
        wire.close()
    Wire.opened.clear()
    for server in reversed(started):
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
        if server.proc is not None:
            server.wait()
            server.proc.stdout.close()


def stop_cleanly(server: ServerProcess, within: float = 5.0) -> None:
    """SIGTERM must make gnsqd exit 0 within a few seconds."""
    began = time.monotonic()
    code = server.stop(timeout=within + 10)
    took = time.monotonic() - began
    assert code == 0, f"gnsqd exited {code}:\n{server.log_text()[-3000:]}"
    assert took < within, f"clean stop took {took:.1f}s"


def http(server: ServerProcess, method: str, path: str, **kwargs):
    import requests

    return requests.request(
        method, f"http://127.0.0.1:{server.http_port}{path}", timeout=10, **kwargs
    )


def stats(server: ServerProcess) -> dict:
    reply = http(server, "GET", "/stats?format=json")
    assert reply.status_code == 200, reply.text
    return reply.json()


def channel_stats(server: ServerProcess, topic: str, channel: str) -> dict:
    for topic_stats in stats(server)["topics"]:
        if topic_stats["topic_name"] == topic:
            for channel_stats in topic_stats["channels"]:
                if channel_stats["channel_name"] == channel:
                    return channel_stats
    raise AssertionError(f"{topic}:{channel} not in /stats")


def read_nsqd_dat(data_path: Path) -> dict:
    return json.loads((data_path / "nsqd.dat").read_text())


def paused_flags(data_path: Path) -> dict[str, bool]:
    """{"topic": paused, "topic:channel": paused} from nsqd.dat."""
    flags = {}
    for topic in read_nsqd_dat(data_path)["topics"]:
        flags[topic["name"]] = topic["paused"]
        for channel in topic["channels"] or []:
            flags[f"{topic['name']}:{channel['name']}"] = channel["paused"]
    return flags


def write_nsqd_dat(data_path: Path, topics: list[dict]) -> None:
    document = {"topics": topics, "version": "1.3.0"}
    (data_path / "nsqd.dat").write_text(json.dumps(document, separators=(",", ":")))


def bodies(prefix: str, count: int) -> list[bytes]:
    return [b"%s-%05d" % (prefix.encode(), i) for i in range(count)]


# -- full disk -----------------------------------------------------------------------------


class FullDisk:
    """Where the data path lives and how the space runs out, then comes back."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.data = root / "data"
        self.wrapper: tuple[str, ...] = ()
        self.limit = 96 * 1024

    def setup(self) -> None:
        self.root.mkdir()
        if self.kind == "tmpfs":
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(self.root)],
                capture_output=True,
            )
            if result.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
            # leave ~160 KiB free: a few 64 KiB write-buffer flushes fit, then ENOSPC
            with open(self.root / "filler", "wb") as f:
                f.write(b"\0" * (512 - 160) * 1024)
        else:
            # a soft RLIMIT_FSIZE on the daemon only; the hard limit stays unlimited so the
            # soft one can be raised from here with prlimit(2)
            self.wrapper = ("prlimit", f"--fsize={self.limit}:unlimited")
        self.data.mkdir()

    def free(self, server: ServerProcess) -> None:
        if self.kind == "tmpfs":
            (self.root / "filler").unlink()
        else:
            unlimited = resource.RLIM_INFINITY
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (unlimited, unlimited))

    def teardown(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)

"""Fixtures that start real servers on 127.0.0.1, port 0, with a temporary data path."""

from __future__ import annotations

import socket
import struct

import pytest

from gnsq_server import config
from gnsq_server.nsqd.server import NSQDServer

from .durable import gnsqd_processes
from .servers import ThreadedServer


def nsqd_options(tmp_path, **overrides):
    settings = {
        "tcp_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "broadcast_address": "127.0.0.1",
        "data_path": str(tmp_path),
        **overrides,
    }
    return config.default_options("nsqd", **settings)


@pytest.fixture
def start_nsqd(tmp_path):
    """Factory: start an in-process gnsqd with option overrides; all are stopped at teardown."""
    started: list[ThreadedServer] = []

    def start(**overrides) -> ThreadedServer:
        data_path = tmp_path / f"nsqd{len(started)}"
        data_path.mkdir()
        opts = nsqd_options(data_path, **overrides)
        server = ThreadedServer(lambda: NSQDServer(opts)).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def run_gnsqd():
    """Factory: start a gnsqd process on a data path; whatever is still running is stopped."""
    with gnsqd_processes() as start:
        yield start


@pytest.fixture
def nsqd(start_nsqd) -> ThreadedServer:
    """A running in-process gnsqd with default options."""
    return start_nsqd()


class RawConnection:
    """A plain socket speaking V2 by hand, for byte-exact checks."""

    def __init__(self, port: int, magic: bytes = b"  V2", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if magic:
            self.sock.sendall(magic)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes, body: bytes | None = None) -> None:
        data = line + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.sock.sendall(data)

    def read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def read_frame(self) -> tuple[int, bytes]:
        size, frame_type = struct.unpack(">ii", self.read_exact(8))
        return frame_type, self.read_exact(size - 4)

    def is_closed(self, wait: float = 1.0) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect():
    """Factory for RawConnection objects, closed at teardown."""
    opened: list[RawConnection] = []

    def open_connection(port: int, **kwargs) -> RawConnection:
        conn = RawConnection(port, **kwargs)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()

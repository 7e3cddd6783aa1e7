"""Shared helpers for the hostile-input, fault and load suites: a gnsqd process whose fds and
RSS can be measured, live greenlet counts of an in-process server, frame parsing and a
non-blocking V2 reader for many sockets at once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import socket
import struct
import time

import greenlet
import requests

from .servers import ServerProcess

INT32_MAX = 0x7FFFFFFF
FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2
HEARTBEAT = b"_heartbeat_"
#: the only non-fatal errors of protocol V2 (PROTOCOL.md 1.5)
NON_FATAL = (b"E_FIN_FAILED", b"E_REQ_FAILED", b"E_TOUCH_FAILED")
#: every code nsqd 1.3.0 V2 can answer with
NSQ_CODES = (
    b"E_INVALID",
    b"E_BAD_PROTOCOL",
    b"E_BAD_BODY",
    b"E_BAD_TOPIC",
    b"E_BAD_CHANNEL",
    b"E_BAD_MESSAGE",
    b"E_PUB_FAILED",
    b"E_MPUB_FAILED",
    b"E_DPUB_FAILED",
    b"E_SUB_FAILED",
    b"E_IDENTIFY_FAILED",
    b"E_AUTH_DISABLED",
    b"E_AUTH_FIRST",
    b"E_AUTH_FAILED",
    b"E_UNAUTHORIZED",
    b"E_AUTH_ERROR",
    *NON_FATAL,
)


def size(value: int) -> bytes:
    return struct.pack(">i", value)


def with_body(line: bytes, body: bytes) -> bytes:
    return line + b"\n" + size(len(body)) + body


def mpub_payload(bodies: list[bytes]) -> bytes:
    """`[int32 count]([int32 size][bytes])*`: the part of MPUB after its body size."""
    return size(len(bodies)) + b"".join(size(len(body)) + body for body in bodies)


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete frames in `data` and the trailing partial bytes."""
    out, offset = [], 0
    while offset + 8 <= len(data):
        length, frame_type = struct.unpack_from(">ii", data, offset)
        if length < 4 or offset + 4 + length > len(data):
            break
        out.append((frame_type, data[offset + 8 : offset + 4 + length]))
        offset += 4 + length
    return out, data[offset:]


def receive_until_closed(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or goes quiet for `timeout`."""
    data = bytearray()
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return bytes(data), False
    except ConnectionResetError:
        pass
    return bytes(data), True


# -- measuring a process -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hwm_kib(pid: int) -> int:
    """Peak RSS of the process so far."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid: int) -> int:
    """Open sockets of a process (files such as disk-queue segments left out)."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def settle(read, target: int, timeout: float = 5.0, interval: float = 0.05) -> int:
    """Poll `read()` until it is at most `target` (resources are released asynchronously)."""
    deadline = time.monotonic() + timeout
    value = read()
    while value > target and time.monotonic() < deadline:
        time.sleep(interval)
        value = read()
    return value


def live_greenlets() -> int:
    """Run on a server's hub (ThreadedServer.call): greenlets that have not finished."""
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, greenlet.greenlet) and not obj.dead and obj.parent is not None
    )


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


class Gnsqd:
    """A gnsqd process on port 0 with the numbers the hostile suites report."""

    def __init__(self, data_path, *flags: str, http: bool = True) -> None:
        args = ["--tcp-address=127.0.0.1:0", f"--data-path={data_path}", *flags]
        args.append("--http-address=127.0.0.1:0" if http else "--http-address=")
        self.process = ServerProcess("gnsqd", *args)
        self.http = http

    def start(self) -> Gnsqd:
        self.process.start(expect=("TCP", "HTTP") if self.http else ("TCP",))
        return self

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def tcp_port(self) -> int:
        return self.process.tcp_port

    @property
    def http_port(self) -> int:
        return self.process.http_port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def rss(self) -> int:
        return rss_kib(self.pid)

    def peak_rss(self) -> int:
        return hwm_kib(self.pid)

    def fds(self) -> int:
        return fd_count(self.pid)

    def sockets(self) -> int:
        return socket_count(self.pid)

    def stats(self, **params) -> dict:
        query = {"format": "json", "include_mem": "false", **params}
        return requests.get(f"{self.base}/stats", params=query, timeout=10).json()

    def stop(self) -> None:
        code = self.process.stop()
        assert code == 0, self.process.log_text()[-3000:]


@contextlib.contextmanager
def gnsqd(data_path, *flags: str, http: bool = True):
    server = Gnsqd(data_path, *flags, http=http).start()
    try:
        yield server
    finally:
        server.stop()

"""The bench's wire level: pre-encoded NSQ frames, reply scanning and percentiles."""

from __future__ import annotations

import math
import re
import socket
import struct
from array import array
from collections.abc import Sequence

# -- wire encoding (PROTOCOL.md 1.2, 1.3, 2.2) -------------------------------------------------

MAGIC = b"  V2"
FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2
OK_FRAME = struct.pack(">ii", 6, FRAME_RESPONSE) + b"OK"
HEARTBEAT = b"_heartbeat_"
NOP = b"NOP\n"
FIN_SIZE = len(b"FIN 0123456789abcdef\n")
RECV_SIZE = 1 << 20
# A message frame: [int32 size][int32 type=2][int64 ts][uint16 attempts][16-byte id][body]
MSG_ID_AT, MSG_BODY_AT = 18, 34


def encode_pub(topic: str, body: bytes) -> bytes:
    """``PUB <topic>\\n[int32 size][body]``."""
    return b"PUB %s\n%s%s" % (topic.encode(), struct.pack(">i", len(body)), body)


def encode_mpub(topic: str, bodies: Sequence[bytes]) -> bytes:
    """``MPUB <topic>\\n[int32 body size][int32 count]([int32 size][body])*count``."""
    records = b"".join(struct.pack(">i", len(body)) + body for body in bodies)
    header = struct.pack(">ii", len(records) + 4, len(bodies))
    return b"MPUB %s\n%s%s" % (topic.encode(), header, records)


def encode_sub(topic: str, channel: str) -> bytes:
    return b"SUB %s %s\n" % (topic.encode(), channel.encode())


def encode_rdy(count: int) -> bytes:
    return b"RDY %d\n" % count


def encode_fins(ids: Sequence[bytes]) -> bytes:
    """``FIN <id>\\n`` for every message ID, as one buffer for one send."""
    return b"FIN " + b"\nFIN ".join(ids) + b"\n" if ids else b""


def encode_http_post(host: str, path: str, body: bytes) -> bytes:
    """A keep-alive HTTP/1.1 POST request."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def encode_http_mpub_body(bodies: Sequence[bytes]) -> bytes:
    """The ``/mpub?binary=true`` body: ``[int32 count]([int32 size][body])*count``."""
    return struct.pack(">i", len(bodies)) + b"".join(
        struct.pack(">i", len(body)) + body for body in bodies
    )


def message_frame(msg_id: bytes, body: bytes, timestamp: int = 0, attempts: int = 1) -> bytes:
    """A server message frame (used by the self-test sink)."""
    data = struct.pack(">qH", timestamp, attempts) + msg_id + body
    return struct.pack(">ii", len(data) + 4, FRAME_MESSAGE) + data


# -- reply parsing -------------------------------------------------------------------------------


class ServerError(Exception):
    """The server answered with an error frame or a non-200 HTTP status."""


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete frames in data as (type, payload), and the incomplete tail."""
    frames = []
    off, end = 0, len(data)
    while off + 8 <= end:
        size, frame_type = struct.unpack_from(">ii", data, off)
        stop = off + 4 + size
        if stop > end:
            break
        frames.append((frame_type, data[off + 8 : stop]))
        off = stop
    return frames, data[off:]


def count_oks(data: bytes) -> tuple[int, int, bytes]:
    """(OK frames, heartbeats, incomplete tail) in data; an error frame raises ServerError.

    The usual case, nothing but OKs, costs one ``bytes.count``: non-overlapping 10-byte matches
    whose lengths add up to ``len(data)`` can only tile it exactly.
    """
    oks = data.count(OK_FRAME)
    if oks * len(OK_FRAME) == len(data):
        return oks, 0, b""
    frames, tail = split_frames(data)
    oks = heartbeats = 0
    for frame_type, payload in frames:
        if frame_type == FRAME_ERROR:
            raise ServerError(payload.decode(errors="replace"))
        if payload == b"OK":
            oks += 1
        elif payload == HEARTBEAT:
            heartbeats += 1
    return oks, heartbeats, tail


def scan_messages(data: bytes, stamps: array | None = None) -> tuple[list[bytes], int, bytes]:
    """(message IDs, heartbeats, incomplete tail) of a consumer's read.

    With ``stamps``, the int64 send time each body starts with is appended to it.
    """
    ids: list[bytes] = []
    heartbeats = 0
    off, end = 0, len(data)
    unpack = struct.unpack_from
    while off + 8 <= end:
        size, frame_type = unpack(">ii", data, off)
        stop = off + 4 + size
        if stop > end:
            break
        if frame_type == FRAME_MESSAGE:
            ids.append(data[off + MSG_ID_AT : off + MSG_BODY_AT])
            if stamps is not None:
                stamps.append(unpack(">q", data, off + MSG_BODY_AT)[0])
        elif frame_type == FRAME_ERROR:
            raise ServerError(data[off + 8 : stop].decode(errors="replace"))
        elif data[off + 8 : stop] == HEARTBEAT:
            heartbeats += 1
        off = stop
    return ids, heartbeats, data[off:]


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def parse_http_response(data: bytes) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete response in data, or None."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    match = _CONTENT_LENGTH.search(data, 0, head_end + 2)
    if match is None:
        raise ServerError(f"response without Content-Length: {data[:head_end]!r}")
    used = head_end + 4 + int(match.group(1))
    if len(data) < used:
        return None
    return int(data[9:12]), data[head_end + 4 : used], used


class OKReader:
    """Counts OK replies on a producer connection and answers heartbeats with NOP."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tail = b""

    def read(self) -> int:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        if self.tail:
            data = self.tail + data
        oks, heartbeats, self.tail = count_oks(data)
        if heartbeats:
            self.sock.sendall(NOP * heartbeats)
        return oks


class HTTPReader:
    """Reads keep-alive HTTP responses; anything but 200 raises ServerError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> int:
        count = 0
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data
        while (parsed := parse_http_response(self.buf)) is not None:
            status, body, used = parsed
            if status != 200:
                raise ServerError(f"HTTP {status} {body[:200]!r}")
            self.buf = self.buf[used:]
            count += 1
        return count


# -- statistics ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolating linearly like numpy."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_figures(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/p99.9 in milliseconds of latencies given in seconds."""
    ordered = sorted(samples)
    return {f"{name}_ms": percentile(ordered, q) * 1e3 for name, q in LATENCY_POINTS}


LATENCY_POINTS = (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))

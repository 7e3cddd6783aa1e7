"""Replay every TCP exchange captured from the real nsqd 1.3.0 against gnsqd, byte for byte.

Message frames are compared with their timestamp and id masked (the fixture README lists what
varies). Cases for features that are not built yet are expected failures with the reason, so
the count of passing cases can only grow.
"""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from ..captures import CAPTURES
from ..servers import ThreadedServer

FIXTURES = CAPTURES
CASES = json.loads((FIXTURES / "tcp-transcripts.json").read_text())

NOT_YET = {
    "auth": "AUTH against an auth server is not built yet (issue 5)",
    "tls": "TLS is not built yet (issue 5)",
    "compression": "snappy and deflate upgrades are not built yet (issue 5)",
}


# Auth-server cases whose answer comes before any auth server is consulted.
AUTH_CASES_ANSWERED_LOCALLY = {
    "auth_body_size_zero",
    "auth_body_too_big",
    "auth_enabled_invalid_params",
}


def pending_reason(case: dict) -> str | None:
    server = case["server"]
    if "--auth-http-address" in server and case["name"] not in AUTH_CASES_ANSWERED_LOCALLY:
        return NOT_YET["auth"]
    if "--tls-required" in server:
        return NOT_YET["tls"]
    if case["name"] in {"identify_snappy_roundtrip", "identify_deflate_roundtrip"}:
        return NOT_YET["compression"]
    return None


def case_params():
    for case in CASES:
        reason = pending_reason(case)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        yield pytest.param(case, id=case["name"], marks=marks)


def split_frames(data: bytes) -> list[bytes]:
    frames, offset = [], 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from(">i", data, offset)
        frames.append(data[offset : offset + 4 + size])
        offset += 4 + size
    if offset < len(data):
        frames.append(data[offset:])
    return frames


def mask(data: bytes) -> list[bytes]:
    """Frames with the varying message fields (timestamp, id) blanked."""
    masked = []
    for frame in split_frames(data):
        if len(frame) >= 34 and struct.unpack_from(">i", frame, 4)[0] == 2:
            frame = frame[:8] + b"T" * 8 + frame[16:18] + b"I" * 16 + frame[34:]
        masked.append(frame)
    return masked


def message_ids(data: bytes) -> list[bytes]:
    return [
        frame[18:34]
        for frame in split_frames(data)
        if len(frame) >= 34 and struct.unpack_from(">i", frame, 4)[0] == 2
    ]


def read_available(sock: socket.socket, expected: int, wait_ms: int = 0) -> tuple[bytes, bool]:
    """Read until `expected` bytes arrived (or 3 s passed), then briefly for any extra bytes."""
    if wait_ms:
        time.sleep(wait_ms / 1000)
    data, closed = b"", False
    deadline = time.monotonic() + 3.0
    while True:
        remaining = deadline - time.monotonic()
        if len(data) >= expected:
            remaining = min(remaining, 0.08)
        if remaining <= 0:
            break
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
    return data, closed


def wait_closed(sock: socket.socket, expect_closed: bool) -> bool:
    sock.settimeout(3.0 if expect_closed else 0.2)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def replay(port: int, case: dict) -> tuple[bytes, bool]:
    steps = case.get("send") or [case]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    expected_so_far, received, closed = b"", b"", False
    try:
        for step in steps:
            data = bytes.fromhex(step["send_hex"])
            if step.get("send_echoes_received_id"):
                data = data.replace(message_ids(expected_so_far)[-1], message_ids(received)[-1])
            if data and not closed:
                try:
                    sock.sendall(data)
                except OSError:
                    closed = True
            if case.get("then_client_shuts_down_write_side") and step is steps[-1]:
                sock.shutdown(socket.SHUT_WR)
            expected = bytes.fromhex(step["recv_hex"])
            expected_so_far += expected
            if not closed:
                chunk, closed = read_available(
                    sock, len(expected), step.get("wait_ms_before_read", 0)
                )
                received += chunk
        if not closed:
            closed = wait_closed(sock, case["closed"])
    finally:
        sock.close()
    return received, closed


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per fixture configuration, shared in capture order as the fixture was."""
    from gnsq_server.nsqd.server import NSQDServer

    from ..conftest import nsqd_options

    running: dict[str, ThreadedServer] = {}

    def get(server_flags: str) -> ThreadedServer:
        if server_flags not in running:
            overrides = {"http_address": ""}
            if "--max-channel-consumers=1" in server_flags:
                overrides["max_channel_consumers"] = 1
            opts = nsqd_options(tmp_path_factory.mktemp("golden"), **overrides)
            running[server_flags] = ThreadedServer(lambda: NSQDServer(opts)).start()
        return running[server_flags]

    yield get
    for server in running.values():
        server.stop()


@pytest.mark.parametrize("case", list(case_params()))
def test_tcp_transcript(case, servers):
    port = servers(case["server"]).server.tcp_port
    holder = None
    if case["name"] == "sub_failed_max_channel_consumers":
        # The capture had another connection already subscribed to tcp_maxc/c.
        holder = socket.create_connection(("127.0.0.1", port), timeout=5)
        holder.sendall(b"  V2SUB tcp_maxc c\n")
        read_available(holder, 10)
    try:
        received, closed = replay(port, case)
    finally:
        if holder is not None:
            holder.close()
    expected = bytes.fromhex(case["recv_hex"])
    if case["name"] == "heartbeat_missed_close":
        # One or two heartbeats race the close (fixture README).
        heartbeat = struct.pack(">ii", 15, 0) + b"_heartbeat_"
        assert received in (expected, expected + heartbeat)
    else:
        assert mask(received) == mask(expected)
    assert closed == case["closed"]

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
import zlib

import pytest

from ..authserver import AuthServer
from ..captures import CAPTURES
from ..servers import ThreadedServer

FIXTURES = CAPTURES
CASES = json.loads((FIXTURES / "tcp-transcripts.json").read_text())

#: features not built yet, by case name (every captured case passes today)
NOT_YET: dict[str, str] = {}

#: cases this byte replay cannot run, and where they are checked instead
REPLAYED_ELSEWHERE = {
    "tls_v1_upgrade_plaintext": "plaintext inside TLS: replayed with a handshake in test_tls.py",
}


def pending_reason(case: dict) -> str | None:
    return NOT_YET.get(case["name"])


def case_params():
    for case in CASES:
        reason = pending_reason(case)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        if case["name"] in REPLAYED_ELSEWHERE:
            marks.append(pytest.mark.skip(reason=REPLAYED_ELSEWHERE[case["name"]]))
        yield pytest.param(case, id=case["name"], marks=marks)


def inflated_case(case: dict) -> bool:
    """Deflate bytes depend on the compressor: compare these cases after inflating."""
    return "inflated_hex" in case.get("decoded_after_json", {})


def split_inflated(data: bytes) -> tuple[bytes, bytes]:
    """The plain IDENTIFY reply frame, then the rest of the stream inflated."""
    (size,) = struct.unpack_from(">i", data)
    return data[: 4 + size], zlib.decompressobj(-15).decompress(data[4 + size :])


def split_frames(data: bytes) -> list[bytes]:
    frames, offset = [], 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from(">i", data, offset)
        if size < 4:
            break  # not a frame (a compressed stream): compared as one piece below
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
            # our deflate bytes differ in length from Go's: wait for any, then for quiet
            wanted = min(1, len(expected)) if inflated_case(case) else len(expected)
            if not closed:
                chunk, closed = read_available(
                    sock, wanted, step.get("wait_ms_before_read", 0)
                )
                received += chunk
        if not closed:
            closed = wait_closed(sock, case["closed"])
    finally:
        sock.close()
    return received, closed


@pytest.fixture(scope="module")
def auth_server():
    """The fixture's stub auth server: answers chosen by secret (fixture README)."""
    server = AuthServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory, auth_server):
    """One server per fixture configuration, shared in capture order as the fixture was."""
    from gnsq_server.nsqd.server import NSQDServer

    from ..conftest import nsqd_options
    from ..tlscerts import make_certs

    running: dict[str, ThreadedServer] = {}

    def get(server_flags: str) -> ThreadedServer:
        if server_flags not in running:
            overrides: dict = {"http_address": ""}
            if "--max-channel-consumers=1" in server_flags:
                overrides["max_channel_consumers"] = 1
            if "--auth-http-address" in server_flags:
                overrides["auth_http_addresses"] = [auth_server.address]
            if "--tls-required=true" in server_flags:
                certs = make_certs(tmp_path_factory.mktemp("certs"))
                overrides.update(
                    tls_cert=str(certs.server_cert),
                    tls_key=str(certs.server_key),
                    tls_required=2,
                    https_address="127.0.0.1:0",
                )
            opts = nsqd_options(tmp_path_factory.mktemp("golden"), **overrides)
            running[server_flags] = ThreadedServer(lambda: NSQDServer(opts)).start()
        return running[server_flags]

    yield get
    for server in running.values():
        server.stop()


@pytest.mark.parametrize("case", list(case_params()))
def test_tcp_transcript(case, servers, auth_server):
    port = servers(case["server"]).server.tcp_port
    auth_server.requests.clear()
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
    elif inflated_case(case):
        reply, inflated = split_inflated(received)
        assert reply == split_inflated(expected)[0]
        assert inflated.hex() == case["decoded_after_json"]["inflated_hex"]
    else:
        assert mask(received) == mask(expected)
    assert closed == case["closed"]
    # what nsqd asked the auth server: method, path, sorted query, Accept header
    asked = [(r["method"], r["path"], r["query"], r["accept"]) for r in auth_server.requests]
    captured = case.get("auth_server_requests", [])
    assert asked == [(r["method"], r["path"], r["query"], r["accept"]) for r in captured]

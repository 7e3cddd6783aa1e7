"""Size attacks on a real gnsqd process: size prefixes up to 2^31-1 on every body command and
on /pub and /mpub, MPUB counts that do not match the body, names of 64 characters and more,
empty bodies. Each gets nsqd's documented error (PROTOCOL.md 1.5, 1.11, 2.2) and the server
allocates nothing like what a prefix claims (its RSS is read from /proc).

test_bad_input.py already checks the 2^31-1 prefix of each command once, byte for byte; here
every prefix between the limit and 2^31-1 is swept, boundaries are checked from both sides and
the memory of the process is watched throughout.
"""

from __future__ import annotations

import http.client
import socket

import pytest
import requests

from ..hostile import (
    INT32_MAX,
    gnsqd,
    mpub_payload,
    parse_frames,
    receive_until_closed,
    settle,
    size,
    with_body,
)
from .test_bad_input import Witness

MAX_MSG = 1024 * 1024
MAX_BODY = 5 * 1024 * 1024
OK = [(0, b"OK")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with gnsqd(tmp_path_factory.mktemp("size")) as running:
        running.fds_at_start = running.fds()
        yield running


@pytest.fixture(scope="module")
def witness(server):
    witness = Witness(server.tcp_port)
    yield witness
    witness.check()
    witness.close()


def exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[list, bool]:
    """Send `data` after the magic, half-close, and collect the answer and whether it closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"  V2" + data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        received, closed = receive_until_closed(sock, wait)
    finally:
        sock.close()
    frames, rest = parse_frames(received)
    assert rest == b""
    return frames, closed


def error(text: str) -> list:
    return [(1, text.encode())]


SIZES = [MAX_MSG + 1, MAX_BODY + 1, 1 << 24, 1 << 30, INT32_MAX - 1, INT32_MAX]


def oversized_cases() -> dict[str, tuple[bytes, list]]:
    cases = {}
    for value in SIZES:
        cases[f"pub_{value}"] = (
            b"PUB t\n" + size(value),
            error(f"E_BAD_MESSAGE PUB message too big {value} > {MAX_MSG}"),
        )
        cases[f"dpub_{value}"] = (
            b"DPUB t 100\n" + size(value),
            error(f"E_BAD_MESSAGE DPUB message too big {value} > {MAX_MSG}"),
        )
        cases[f"mpub_message_{value}"] = (
            b"MPUB t\n" + size(100) + size(1) + size(value),
            error(f"E_BAD_MESSAGE MPUB message too big {value} > {MAX_MSG}"),
        )
        cases[f"mpub_count_{value}"] = (
            b"MPUB t\n" + size(100) + size(value),
            error(f"E_BAD_BODY MPUB invalid message count {value}"),
        )
        if value > MAX_BODY:
            for cmd in ("IDENTIFY", "AUTH"):
                cases[f"{cmd.lower()}_{value}"] = (
                    cmd.encode() + b"\n" + size(value),
                    error(f"E_BAD_BODY {cmd} body too big {value} > {MAX_BODY}"),
                )
            cases[f"mpub_body_{value}"] = (
                b"MPUB t\n" + size(value),
                error(f"E_BAD_BODY MPUB body too big {value} > {MAX_BODY}"),
            )
    return cases


OVERSIZED = oversized_cases()


def test_every_oversized_prefix_gets_nsqd_error_and_no_allocation(server, witness):
    """All prefixes from limit+1 to 2^31-1, five rounds, each connection closed after the
    error; the process's RSS must not move by anything like the sizes claimed."""
    before = server.rss()
    for _ in range(5):
        for name, (data, expected) in OVERSIZED.items():
            assert exchange(server.tcp_port, data) == (expected, True), name
    witness.check()
    grown = server.rss() - before
    print(
        f"\nFIGURE oversized_prefixes: {len(OVERSIZED)} prefixes x 5 rounds, up to 2^31-1, "
        f"RSS +{grown} KiB, peak RSS {server.peak_rss()} KiB"
    )
    assert grown < 32 * 1024


EMPTY_OR_NEGATIVE = {
    "pub_0": (b"PUB t\n" + size(0), error("E_BAD_MESSAGE PUB invalid message body size 0")),
    "pub_-1": (b"PUB t\n" + size(-1), error("E_BAD_MESSAGE PUB invalid message body size -1")),
    "dpub_0": (b"DPUB t 5\n" + size(0), error("E_BAD_MESSAGE DPUB invalid message body size 0")),
    "mpub_body_0": (b"MPUB t\n" + size(0), error("E_BAD_BODY MPUB invalid body size 0")),
    "mpub_body_-5": (b"MPUB t\n" + size(-5), error("E_BAD_BODY MPUB invalid body size -5")),
    "mpub_count_0": (
        b"MPUB t\n" + size(8) + size(0),
        error("E_BAD_BODY MPUB invalid message count 0"),
    ),
    "mpub_count_-1": (
        b"MPUB t\n" + size(8) + size(-1),
        error("E_BAD_BODY MPUB invalid message count -1"),
    ),
    "mpub_count_over_max": (
        b"MPUB t\n" + size(8) + size((MAX_BODY - 4) // 5 + 1),
        error(f"E_BAD_BODY MPUB invalid message count {(MAX_BODY - 4) // 5 + 1}"),
    ),
    "mpub_message_0": (
        b"MPUB t\n" + size(8) + size(1) + size(0),
        error("E_BAD_MESSAGE MPUB invalid message(0) body size 0"),
    ),
    "mpub_second_message_0": (
        b"MPUB t\n" + size(20) + size(2) + size(1) + b"a" + size(0),
        error("E_BAD_MESSAGE MPUB invalid message(1) body size 0"),
    ),
    "identify_0": (b"IDENTIFY\n" + size(0), error("E_BAD_BODY IDENTIFY invalid body size 0")),
    "auth_0": (b"AUTH\n" + size(0), error("E_BAD_BODY AUTH invalid body size 0")),
}


@pytest.mark.parametrize("data, expected", EMPTY_OR_NEGATIVE.values(), ids=EMPTY_OR_NEGATIVE.keys())
def test_empty_and_negative_sizes(server, witness, data, expected):
    assert exchange(server.tcp_port, data) == (expected, True)


def topic_depth(server, topic: str) -> int | None:
    doc = server.stats(topic=topic)
    return doc["topics"][0]["depth"] if doc["topics"] else None


def test_largest_allowed_sizes_are_accepted(server, witness):
    """The limits themselves are allowed: a 1 MiB PUB, a 5 MiB MPUB, a 5 MiB IDENTIFY."""
    assert exchange(server.tcp_port, with_body(b"PUB edge", b"m" * MAX_MSG)) == (OK, True)
    bodies = [b"b" * MAX_MSG] * 4
    bodies.append(b"c" * (MAX_BODY - 4 - 5 * 4 - 4 * MAX_MSG))
    payload = mpub_payload(bodies)
    assert len(payload) == MAX_BODY
    assert exchange(server.tcp_port, b"MPUB edge\n" + size(MAX_BODY) + payload) == (OK, True)
    identify = b"{" + b" " * (MAX_BODY - 2) + b"}"
    assert exchange(server.tcp_port, with_body(b"IDENTIFY", identify)) == (OK, True)
    assert topic_depth(server, "edge") == 6


# -- MPUB counts that do not match the body ---------------------------------------------------


def test_mpub_declared_body_smaller_than_records_is_read_by_count(server, witness):
    """nsqd reads exactly `count` records and never checks them against the body size."""
    payload = mpub_payload([b"x" * 100, b"y" * 100, b"z" * 100])
    assert exchange(server.tcp_port, b"MPUB by_count\n" + size(10) + payload) == (OK, True)
    assert topic_depth(server, "by_count") == 3


def test_mpub_declared_body_larger_than_records_is_read_by_count(server, witness):
    payload = mpub_payload([b"one", b"two"])
    data = b"MPUB larger\n" + size(MAX_BODY) + payload + b"NOP\n"
    assert exchange(server.tcp_port, data) == (OK, True)
    assert topic_depth(server, "larger") == 2


def test_mpub_count_below_records_leaves_the_rest_as_a_command(server, witness):
    payload = size(1) + size(3) + b"one" + size(4) + b"two\n"
    frames, closed = exchange(server.tcp_port, b"MPUB fewer\n" + size(len(payload)) + payload)
    assert frames == [(0, b"OK"), (1, b"E_INVALID invalid command \x00\x00\x00\x04two")]
    assert closed
    assert topic_depth(server, "fewer") == 1


def test_mpub_count_above_records_publishes_nothing(server, witness):
    payload = size(5) + size(3) + b"one" + size(3) + b"two"
    frames, closed = exchange(server.tcp_port, b"MPUB more\n" + size(100) + payload)
    assert frames == error("E_BAD_MESSAGE MPUB failed to read message(2) body size")
    assert closed
    assert topic_depth(server, "more") in (None, 0)


def test_mpub_record_longer_than_the_rest_of_the_stream(server, witness):
    payload = size(1) + size(1000) + b"short"
    frames, closed = exchange(server.tcp_port, b"MPUB cut\n" + size(1008) + payload)
    assert frames == error("E_BAD_MESSAGE MPUB failed to read message body")
    assert closed
    assert topic_depth(server, "cut") in (None, 0)


# -- names of 64 characters and more ----------------------------------------------------------

NAME_64 = "n" * 64
NAME_65 = "n" * 65
EPHEMERAL_64 = "e" * 54 + "#ephemeral"
EPHEMERAL_65 = "e" * 55 + "#ephemeral"
NAME_16K = "L" * (16 * 1024 - 100)


@pytest.mark.parametrize("name", [NAME_64, EPHEMERAL_64], ids=["64", "ephemeral_64"])
def test_64_character_names_are_accepted(server, witness, name):
    data = (
        with_body(f"PUB {name}".encode(), b"x")
        + with_body(f"DPUB {name} 1".encode(), b"x")
        + f"MPUB {name}\n".encode()
        + size(9)
        + mpub_payload([b"x"])
        + f"SUB {name} {name}\n".encode()
    )
    assert exchange(server.tcp_port, data) == (OK * 4, True)


@pytest.mark.parametrize("name", [NAME_65, EPHEMERAL_65, NAME_16K], ids=["65", "eph_65", "16k"])
@pytest.mark.parametrize("command", ["PUB", "DPUB", "MPUB", "SUB_topic", "SUB_channel"])
def test_long_names_are_refused(server, witness, name, command):
    quoted = f'"{name}"'
    cases = {
        "PUB": (with_body(f"PUB {name}".encode(), b"x"), f"E_BAD_TOPIC PUB topic name {quoted}"),
        "DPUB": (
            with_body(f"DPUB {name} 1".encode(), b"x"),
            f"E_BAD_TOPIC DPUB topic name {quoted}",
        ),
        "MPUB": (
            f"MPUB {name}\n".encode() + size(9) + mpub_payload([b"x"]),
            f"E_BAD_TOPIC E_BAD_TOPIC MPUB topic name {quoted}",
        ),
        "SUB_topic": (f"SUB {name} c\n".encode(), f"E_BAD_TOPIC SUB topic name {quoted}"),
        "SUB_channel": (f"SUB t {name}\n".encode(), f"E_BAD_CHANNEL SUB channel name {quoted}"),
    }
    data, text = cases[command]
    assert exchange(server.tcp_port, data) == (error(f"{text} is not valid"), True)


# -- HTTP /pub and /mpub ---------------------------------------------------------------------


def raw_http(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(head + body)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()


HTTP_SIZES = [MAX_MSG + 1, MAX_BODY + 1, 1 << 30, INT32_MAX]


@pytest.mark.parametrize("length", HTTP_SIZES)
@pytest.mark.parametrize(
    "path, expected",
    [("/pub?topic=h", b'{"message":"MSG_TOO_BIG"}'), ("/mpub?topic=h", None)],
    ids=["pub", "mpub"],
)
def test_http_content_length_up_to_2gb_is_refused_unread(server, witness, path, length, expected):
    if expected is None:
        too_big = length > MAX_BODY
        expected = b'{"message":"BODY_TOO_BIG"}' if too_big else None
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    if expected is None:
        # /mpub allows 5 MiB: a 1 MiB + 1 text line without a newline is one message too big
        status, body = raw_http(server.http_port, head, b"x" * length)
        assert (status, body) == (413, b'{"message":"MSG_TOO_BIG"}')
        return
    status, body = raw_http(server.http_port, head)  # only the head: the body never comes
    assert (status, body) == (413, expected)


BINARY_MPUB = {
    "count_2g": (size(INT32_MAX) + size(1) + b"x", "BAD_BODY"),
    "count_0": (size(0), "BAD_BODY"),
    "count_negative": (size(-1) + size(1) + b"x", "BAD_BODY"),
    "message_2g": (size(1) + size(INT32_MAX) + b"x", "BAD_MESSAGE"),
    "message_over_max": (size(1) + size(MAX_MSG + 1) + b"x", "BAD_MESSAGE"),
    "message_0": (size(1) + size(0), "BAD_MESSAGE"),
    "message_negative": (size(1) + size(-9) + b"x", "BAD_MESSAGE"),
    "count_above_records": (size(3) + size(1) + b"x" + size(1) + b"y", "BAD_MESSAGE"),
}


@pytest.mark.parametrize("body, code", BINARY_MPUB.values(), ids=BINARY_MPUB.keys())
def test_http_binary_mpub_sizes(server, witness, body, code):
    resp = requests.post(f"{server.base}/mpub?topic=hb&binary=true", data=body, timeout=10)
    assert (resp.status_code, resp.json()) == (413, {"message": code})
    assert topic_depth(server, "hb") in (None, 0)


def test_http_empty_bodies(server, witness):
    resp = requests.post(f"{server.base}/pub?topic=he", data=b"", timeout=10)
    assert (resp.status_code, resp.json()) == (400, {"message": "MSG_EMPTY"})
    resp = requests.post(f"{server.base}/mpub?topic=he&binary=true", data=b"", timeout=10)
    assert (resp.status_code, resp.json()) == (413, {"message": "BAD_BODY"})
    resp = requests.post(f"{server.base}/mpub?topic=he", data=b"\n\n\n", timeout=10)
    assert (resp.status_code, resp.text) == (200, "OK")
    assert topic_depth(server, "he") in (None, 0)


def test_http_huge_chunks_are_read_with_a_bound(server, witness):
    """A chunked body announcing a 2 GiB chunk: read up to the limit + 1, then 413."""
    before = server.rss()
    for path, expected in [("/pub?topic=hc", "MSG_TOO_BIG"), ("/mpub?topic=hc", "BODY_TOO_BIG")]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{INT32_MAX:x}\r\n"
        ).encode()
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        try:
            sock.sendall(head)
            try:
                sock.sendall(b"x" * (MAX_BODY + 1024 * 1024))
            except OSError:
                pass  # answered and closed before everything was sent
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            assert (response.status, response.read()) == (
                413,
                f'{{"message":"{expected}"}}'.encode(),
            )
        finally:
            sock.close()
    grown = server.rss() - before
    print(f"\nFIGURE http_huge_chunks: RSS +{grown} KiB")
    assert grown < 64 * 1024
    assert topic_depth(server, "hc") in (None, 0)


# -- a crowd of largest-allowed prefixes, held open ---------------------------------------


def test_200_stalled_largest_allowed_prefixes_keep_memory_bounded(tmp_path):
    """200 clients each announce the largest body allowed (5 MiB IDENTIFY, 1 MiB PUB, 5 MiB
    MPUB) and stall; nsqd allocates the announced buffer too, but what matters is that RSS does
    not grow by the ~1.4 GiB announced and comes back when they leave."""
    with gnsqd(tmp_path, http=False) as srv:
        witness = Witness(srv.tcp_port)
        fds_before, rss_before = srv.fds(), srv.rss()
        prefixes = [
            b"IDENTIFY\n" + size(MAX_BODY) + b"{",
            b"PUB t\n" + size(MAX_MSG) + b"x",
            b"MPUB t\n" + size(MAX_BODY) + size(1) + size(MAX_MSG) + b"x",
        ]
        socks = []
        for number in range(200):
            sock = socket.create_connection(("127.0.0.1", srv.tcp_port), timeout=5)
            sock.sendall(b"  V2" + prefixes[number % 3])
            socks.append(sock)
        witness.check()
        fds_held = srv.fds()
        rss_held = srv.rss()
        for sock in socks:
            sock.close()
        witness.check()
        fds_after = settle(srv.fds, fds_before)
        witness.close()
        print(
            f"\nFIGURE stalled_max_prefixes: connections held 200 (~1.4 GiB announced), RSS "
            f"{rss_before} -> {rss_held} KiB held, peak {srv.peak_rss()} KiB; fds {fds_before} "
            f"-> {fds_held} -> {fds_after}"
        )
        assert rss_held - rss_before < 128 * 1024
        assert fds_after <= fds_before


def test_size_attacks_leave_the_server_whole(server, witness):
    """Last in the module: no fd leaked (the witness holds two), both ports still answer."""
    witness.check()
    assert requests.get(f"{server.base}/ping", timeout=5).text == "OK"
    fds = settle(server.fds, server.fds_at_start + 2)
    print(
        f"\nFIGURE size_attacks_module: fds {server.fds_at_start} at start, {fds} at the end "
        f"(+2 witness), peak RSS {server.peak_rss()} KiB"
    )
    assert fds <= server.fds_at_start + 2

"""Hostile requests to gnsqd's HTTP API (a real process): every endpoint with missing, empty,
malformed and too-long parameters, every wrong method, oversized bodies, bad JSON and bad
values to /config, and broken HTTP framing. Each gets nsqd 1.3.0's status and
`{"message": ...}` (PROTOCOL.md 2.1, 2.2; the order of checks is nsqd's http.go), and the
process ends with the fds it started with.

The golden replay in test_nsqd_http.py holds nsqd's captured answers for one example of most
errors; here the same rules are applied across every endpoint.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
import requests

from ..hostile import INT32_MAX, gnsqd, settle

N65 = "n" * 65
E65 = "e" * 55 + "%23ephemeral"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with gnsqd(tmp_path_factory.mktemp("http")) as running:
        base = running.base
        requests.post(f"{base}/topic/create?topic=exists", timeout=5).raise_for_status()
        requests.post(f"{base}/channel/create?topic=exists&channel=here", timeout=5)
        running.fds_at_start = running.fds()
        yield running


def call(server, method: str, path: str, data: bytes | None = None) -> tuple[int, object]:
    """One request with the path sent as written (requests would re-quote a bad `%zz`)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return resp.status, body


def err(status: int, message: str) -> tuple[int, dict]:
    return status, {"message": message}


# -- parameters ------------------------------------------------------------------------------

#: getTopicFromQuery (create; /pub and /mpub also): the name is validated, then created
TOPIC_CREATE = {
    "": err(400, "MISSING_ARG_TOPIC"),
    "channel=c": err(400, "MISSING_ARG_TOPIC"),
    "topic=%zz": err(400, "INVALID_REQUEST"),
    "topic=": err(400, "INVALID_TOPIC"),
    "topic=bad!": err(400, "INVALID_TOPIC"),
    "topic=sp%20ace": err(400, "INVALID_TOPIC"),
    "topic=%00": err(400, "INVALID_TOPIC"),
    f"topic={N65}": err(400, "INVALID_TOPIC"),
    f"topic={E65}": err(400, "INVALID_TOPIC"),
}
#: delete, pause and unpause look the name up without validating it
TOPIC_LOOKUP = {
    "": err(400, "MISSING_ARG_TOPIC"),
    "topic=%zz": err(400, "INVALID_REQUEST"),
    "topic=": err(404, "TOPIC_NOT_FOUND"),
    "topic=bad!": err(404, "TOPIC_NOT_FOUND"),
    f"topic={N65}": err(404, "TOPIC_NOT_FOUND"),
    "topic=absent": err(404, "TOPIC_NOT_FOUND"),
}
#: empty validates, then looks up
TOPIC_EMPTY = {
    "": err(400, "MISSING_ARG_TOPIC"),
    "topic=%zz": err(400, "INVALID_REQUEST"),
    "topic=": err(400, "INVALID_TOPIC"),
    "topic=bad!": err(400, "INVALID_TOPIC"),
    f"topic={N65}": err(400, "INVALID_TOPIC"),
    "topic=absent": err(404, "TOPIC_NOT_FOUND"),
}
#: getExistingTopicFromQuery: both names present and valid (topic first), then the topic
CHANNEL_COMMON = {
    "": err(400, "MISSING_ARG_TOPIC"),
    "channel=here": err(400, "MISSING_ARG_TOPIC"),
    "topic=%zz&channel=here": err(400, "INVALID_REQUEST"),
    "topic=&channel=here": err(400, "INVALID_ARG_TOPIC"),
    "topic=bad!&channel=bad!": err(400, "INVALID_ARG_TOPIC"),
    f"topic={N65}&channel=here": err(400, "INVALID_ARG_TOPIC"),
    "topic=exists": err(400, "MISSING_ARG_CHANNEL"),
    "topic=exists&channel=": err(400, "INVALID_ARG_CHANNEL"),
    "topic=exists&channel=bad!": err(400, "INVALID_ARG_CHANNEL"),
    f"topic=exists&channel={N65}": err(400, "INVALID_ARG_CHANNEL"),
    f"topic=exists&channel={E65}": err(400, "INVALID_ARG_CHANNEL"),
    "topic=absent&channel=bad!": err(400, "INVALID_ARG_CHANNEL"),
    "topic=absent&channel=here": err(404, "TOPIC_NOT_FOUND"),
}
CHANNEL_LOOKUP = {**CHANNEL_COMMON, "topic=exists&channel=absent": err(404, "CHANNEL_NOT_FOUND")}
PUBLISH = {
    **{k: v for k, v in TOPIC_CREATE.items()},
    "topic=d&defer=1e3": err(400, "INVALID_DEFER"),
    "topic=d&defer=0x10": err(400, "INVALID_DEFER"),
    "topic=d&defer=99999999999999999999": err(400, "INVALID_DEFER"),
    "topic=d&defer=-0": (200, "OK"),
    "topic=d&defer=%2B5": (200, "OK"),  # strconv.ParseInt takes a plus sign
}
MPUBLISH = TOPIC_CREATE

CASES = [
    *[("POST", "/topic/create", q, want) for q, want in TOPIC_CREATE.items()],
    *[
        ("POST", path, q, want)
        for path in ("/topic/delete", "/topic/pause", "/topic/unpause")
        for q, want in TOPIC_LOOKUP.items()
    ],
    *[("POST", "/topic/empty", q, want) for q, want in TOPIC_EMPTY.items()],
    *[("POST", "/channel/create", q, want) for q, want in CHANNEL_COMMON.items()],
    *[
        ("POST", path, q, want)
        for path in ("/channel/delete", "/channel/empty", "/channel/pause", "/channel/unpause")
        for q, want in CHANNEL_LOOKUP.items()
    ],
    *[("POST", "/pub", q, want) for q, want in PUBLISH.items()],
    *[("POST", "/mpub", q, want) for q, want in MPUBLISH.items()],
    ("GET", "/stats", "format=json&topic=%zz", err(400, "INVALID_REQUEST")),
    ("GET", "/config/bogus", "", err(400, "INVALID_OPTION")),
    ("GET", "/config/" + "x" * 4000, "", err(400, "INVALID_OPTION")),
    ("PUT", "/config/msg_timeout", "", err(400, "INVALID_OPTION")),
]


@pytest.mark.parametrize(
    "method, path, query, expected",
    CASES,
    ids=[f"{m} {p}?{q[:40]}" for m, p, q, _ in CASES],
)
def test_bad_parameters(server, method, path, query, expected):
    data = b"x" if path in ("/pub", "/mpub") or method == "PUT" else None
    assert call(server, method, f"{path}?{query}" if query else path, data) == expected


def test_bad_parameters_changed_nothing(server):
    """Only the valid requests above may have created anything."""
    doc = server.stats()
    names = sorted(topic["topic_name"] for topic in doc["topics"])
    assert names == ["d", "exists"]
    [exists] = [t for t in doc["topics"] if t["topic_name"] == "exists"]
    assert [c["channel_name"] for c in exists["channels"]] == ["here"]


# -- methods --------------------------------------------------------------------------------

ROUTES = {
    "/ping": {"GET"},
    "/info": {"GET"},
    "/stats": {"GET"},
    "/pub": {"POST"},
    "/mpub": {"POST"},
    "/topic/create": {"POST"},
    "/topic/delete": {"POST"},
    "/topic/empty": {"POST"},
    "/topic/pause": {"POST"},
    "/topic/unpause": {"POST"},
    "/channel/create": {"POST"},
    "/channel/delete": {"POST"},
    "/channel/empty": {"POST"},
    "/channel/pause": {"POST"},
    "/channel/unpause": {"POST"},
    "/config/log_level": {"GET", "PUT"},
}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
WRONG = [(m, p) for p, allowed in ROUTES.items() for m in METHODS if m not in allowed]


@pytest.mark.parametrize("method, path", WRONG, ids=[f"{m} {p}" for m, p in WRONG])
def test_wrong_methods(server, method, path):
    resp = requests.request(method, f"{server.base}{path}?topic=exists&channel=here", timeout=5)
    assert resp.status_code == 405
    allowed = sorted(ROUTES[path] | {"OPTIONS"})
    assert sorted(resp.headers["Allow"].split(", ")) == allowed
    if method != "HEAD":
        assert resp.json() == {"message": "METHOD_NOT_ALLOWED"}


# -- oversized bodies and bad values to /config ------------------------------------------------


def head_only(port: int, method: str, path: str, length: int) -> tuple[int, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        data, closed = b"", False
        while not closed:
            chunk = sock.recv(65536)
            closed = not chunk or b"\r\n\r\n" in data + chunk and b"}" in data + chunk
            data += chunk
        status = int(data.split(b" ", 2)[1])
        return status, data.partition(b"\r\n\r\n")[2]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "method, path, expected",
    [
        ("POST", "/pub?topic=big", b'{"message":"MSG_TOO_BIG"}'),
        ("POST", "/mpub?topic=big", b'{"message":"BODY_TOO_BIG"}'),
    ],
)
def test_oversized_bodies_are_refused_before_reading(server, method, path, expected):
    before = server.rss()
    assert head_only(server.http_port, method, path, INT32_MAX) == (413, expected)
    assert server.rss() - before < 16 * 1024


@pytest.mark.parametrize("opt", ["log_level", "nsqlookupd_tcp_addresses"])
def test_oversized_config_body_is_read_with_a_bound(server, opt):
    """nsqd reads a /config body through LimitReader(max-msg-size + 1), whatever the
    Content-Length says, and refuses what reaches the bound."""
    before = server.rss()
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    try:
        sock.sendall(
            f"PUT /config/{opt} HTTP/1.1\r\nHost: x\r\nContent-Length: {INT32_MAX}\r\n\r\n".encode()
        )
        try:
            sock.sendall(b"[" * (1024 * 1024 + 1))
        except OSError:
            pass
        response = http.client.HTTPResponse(sock, method="PUT")
        response.begin()
        assert (response.status, response.read()) == (413, b'{"message":"INVALID_VALUE"}')
    finally:
        sock.close()
    assert server.rss() - before < 32 * 1024


CONFIG_BAD = {
    "nsqlookupd_tcp_addresses": [
        b"{",
        b"[",
        b'["127.0.0.1:4160"',
        b"{}",
        b'"127.0.0.1:4160"',
        b"1",
        b"true",
        b"[1]",
        b'["127.0.0.1:4160", 1]',
        b"[[]]",
        b"[{}]",
        b'["a",]',
        b"[] []",
        b"NaN",
        b"\xff\xfe",
        b'["a"]\x00',
    ],
    "log_level": [b"loud", b"info\n", b" info", b"\xff", b"debug" * 1000, b"4", b"0"],
}
CONFIG_CASES = [(opt, body) for opt, bodies in CONFIG_BAD.items() for body in bodies]


@pytest.mark.parametrize(
    "opt, body", CONFIG_CASES, ids=[f"{o}-{b[:12]!r}" for o, b in CONFIG_CASES]
)
def test_bad_config_values(server, opt, body):
    before = call(server, "GET", f"/config/{opt}")
    assert call(server, "PUT", f"/config/{opt}", body) == err(400, "INVALID_VALUE")
    assert call(server, "GET", f"/config/{opt}") == before


@pytest.mark.parametrize("body", [b"[" * 20000, b"[" * 5000 + b"]" * 5000], ids=["open", "closed"])
def test_deeply_nested_config_json(server, body):
    opt = "nsqlookupd_tcp_addresses"
    assert call(server, "PUT", f"/config/{opt}", body) == err(400, "INVALID_VALUE")


def test_empty_config_body(server):
    for opt in CONFIG_BAD:
        assert call(server, "PUT", f"/config/{opt}", b"") == err(413, "INVALID_VALUE")


# -- broken HTTP framing ---------------------------------------------------------------------

#: framing that Go's net/http and gevent both refuse (the exact 4xx differs: 400/414/431)
RAW = {
    "garbage": b"\x00\x01\x02\x03\r\n\r\n",
    "bad_version": b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n",
    "negative_length": b"POST /pub?topic=r HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "text_length": b"POST /pub?topic=r HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "overflow_length": b"POST /pub?topic=r HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 40
    + b"\r\n\r\n",
    "huge_header": b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
    "many_headers": b"GET /ping HTTP/1.1\r\n" + b"X-H: v\r\n" * 200_000 + b"\r\n",
    "long_uri": b"GET /ping?" + b"a" * 2_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}
#: framing Go's net/http answers with 400 Bad Request (and nothing is published)
GO_400 = {
    "two_content_lengths": b"POST /pub?topic=r HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxy",
    "header_without_colon": b"GET /ping HTTP/1.1\r\nHost x\r\nbroken\r\n\r\n",
    "no_http_version": b"GET /ping\r\n\r\n",
}


def raw_exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait)
    received = b""
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before everything was sent
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        sock.close()
    return received


@pytest.mark.parametrize("data", RAW.values(), ids=RAW.keys())
def test_broken_http_gets_4xx_or_close(server, data):
    received = raw_exchange(server.http_port, data)
    if received:
        status = int(received.split(b" ", 2)[1])
        assert 400 <= status < 500, received[:200]
    assert requests.get(f"{server.base}/ping", timeout=5).text == "OK"
    assert server.stats(topic="r")["topics"] is None  # none of them published


@pytest.mark.parametrize(
    "name",
    [pytest.param(name) for name in GO_400],
)
def test_malformed_http_gets_go_400(server, name):
    received = raw_exchange(server.http_port, GO_400[name])
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received[:200]
    assert server.stats(topic="r")["topics"] is None


def test_invalid_chunk_size_is_a_body_read_error(server):
    """nsqd's /pub answers a failed body read with 500 INTERNAL_ERROR."""
    data = (
        b"POST /pub?topic=chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nx\r\n0\r\n\r\n"
    )
    received = raw_exchange(server.http_port, data)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert body == b'{"message":"INTERNAL_ERROR"}'
    assert server.stats(topic="chunk")["topics"] is None  # the body is read before the topic


def test_http_slowloris_does_not_block_others(server):
    """50 clients dribble request heads while others are served; all dribblers are answered."""
    socks = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(50)]
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 30 + b"\r\n\r\n"
    started = time.monotonic()
    for index in range(len(request)):
        for sock in socks:
            sock.sendall(request[index : index + 1])
        if index % 10 == 0:
            assert requests.get(f"{server.base}/ping", timeout=5).text == "OK"
        time.sleep(0.01)
    for sock in socks:
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.close()
    print(
        f"\nFIGURE http_slowloris: 50 connections held, {len(request)} bytes each over "
        f"{time.monotonic() - started:.1f}s"
    )


def test_http_hostile_leaves_no_fds(server):
    """Last in the module: every connection above is gone from the process."""
    fds = settle(server.fds, server.fds_at_start)
    print(
        f"\nFIGURE http_hostile_module: fds {server.fds_at_start} at start, {fds} at the end, "
        f"peak RSS {server.peak_rss()} KiB"
    )
    assert fds <= server.fds_at_start

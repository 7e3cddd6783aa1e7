"""/pub, /mpub and /ping answered by the server's fast lane and by Flask, case by case: the same
gnsqd core behind two listeners, one with the fast lane and one without, must give the same
bytes (all but the Date header) and the same published messages."""

from __future__ import annotations

import re
import socket
import struct

import pytest
from gevent import socket as gsocket

from gnsq_server.httpapi import FAST_LANE
from gnsq_server.httpserver import HTTPServer
from gnsq_server.nsqd.server import NSQDServer
from gnsq_server.serving import listen

from ..conftest import nsqd_options
from ..servers import ThreadedServer
from .test_http_hostile import MPUBLISH, PUBLISH

MAX_MSG = 100
MAX_BODY = 1000


class Counting:
    """Counts the requests that reach the Flask app (the fast lane must not)."""

    def __init__(self, wsgi_app) -> None:
        self.wsgi_app = wsgi_app
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.wsgi_app(environ, start_response)


@pytest.fixture(scope="module")
def lanes(tmp_path_factory):
    opts = nsqd_options(tmp_path_factory.mktemp("lanes"), max_msg_size=MAX_MSG,
                        max_body_size=MAX_BODY)
    running = ThreadedServer(lambda: NSQDServer(opts)).start()
    fast = running.server._http_server
    app = fast.app
    counter = Counting(app.wsgi_app)
    app.wsgi_app = counter

    def start_plain() -> HTTPServer:
        sock = gsocket.socket()  # not serving.listen(): no name lookup inside a loop callback
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        plain = HTTPServer(sock, app)  # the same app, no fast lane
        plain.start()
        return plain

    plain = running.call(start_plain)
    yield running, fast.socket.getsockname()[1], plain.socket.getsockname()[1], counter
    running.call(plain.close)
    running.stop()


def exchange(port: int, data: bytes) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    received = b""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: D", received)


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: x", "Connection: close", *headers]
    if not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def binary(*bodies: bytes, count: int | None = None) -> bytes:
    out = struct.pack(">i", len(bodies) if count is None else count)
    return out + b"".join(struct.pack(">i", len(b)) + b for b in bodies)


TE = "Transfer-Encoding: chunked"
CASES = {
    **{f"pub?{q}": post(f"/pub?{q}", b"x") for q in PUBLISH},
    **{f"mpub?{q}": post(f"/mpub?{q}", b"x") for q in MPUBLISH},
    "pub_empty": post("/pub?topic=p", b""),
    "pub_max": post("/pub?topic=p", b"m" * MAX_MSG),
    "pub_too_big": post("/pub?topic=p", b"m" * (MAX_MSG + 1)),
    "pub_too_big_by_length_only": b"POST /pub?topic=p HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 99999999\r\n\r\n",
    "pub_chunked": post("/pub?topic=p", chunked(b"he", b"llo"), TE),
    "pub_chunked_too_big": post("/pub?topic=p", chunked(b"m" * 60, b"m" * 60), TE),
    "pub_bad_chunk": post("/pub?topic=p", b"zz\r\nx\r\n0\r\n\r\n", TE),
    "pub_defer": post("/pub?topic=p&defer=1000", b"later"),
    "pub_http10": post("/pub?topic=p", b"ten", version="1.0"),
    "pub_keep_alive_then_close": post("/pub?topic=p", b"a").replace(b"Connection: close",
                                                                    b"Connection: keep-alive")
    + post("/pub?topic=p", b"b"),
    "pub_expect_continue": post("/pub?topic=p", b"e", "Expect: 100-continue"),
    "pub_utf8_topic": post("/pub?topic=%C3%A9", b"x"),
    "mpub_lines": post("/mpub?topic=m", b"a\r\nb\n\nc\n"),
    "mpub_line_too_long": post("/mpub?topic=m", b"ok\n" + b"l" * (MAX_MSG + 1) + b"\n"),
    "mpub_body_too_big": post("/mpub?topic=m", b"x\n" * 600),
    "mpub_body_too_big_chunked": post("/mpub?topic=m", chunked(b"x\n" * 300, b"x\n" * 300), TE),
    "mpub_empty": post("/mpub?topic=m", b""),
    "mpub_binary": post("/mpub?topic=m&binary=true", binary(b"\x00\xff", b"z")),
    "mpub_binary_bogus_flag": post("/mpub?topic=m&binary=yes", binary(b"q")),
    "mpub_binary_false": post("/mpub?topic=m&binary=false", b"t1\nt2"),
    "mpub_binary_zero_count": post("/mpub?topic=m&binary=1", binary(count=0)),
    "mpub_binary_truncated": post("/mpub?topic=m&binary=1", binary(b"abc")[:-1]),
    "mpub_binary_too_long": post("/mpub?topic=m&binary=1", binary(b"l" * (MAX_MSG + 1))),
    "mpub_binary_short": post("/mpub?topic=m&binary=1", b"\x00\x00"),
    "ping": b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "ping_http10": b"GET /ping HTTP/1.0\r\n\r\n",
}


def depth(running, topic: str) -> int:
    core = running.server.nsqd
    return running.call(lambda: core.find_topic(topic).depth() if core.find_topic(topic) else 0)


@pytest.mark.parametrize("name", CASES)
def test_both_lanes_answer_alike(lanes, name):
    running, fast_port, plain_port, counter = lanes
    data = CASES[name]
    before = (depth(running, "p"), depth(running, "m"))
    calls = counter.calls
    fast = exchange(fast_port, data)
    assert counter.calls == calls, "the fast lane went through Flask"
    after_fast = (depth(running, "p"), depth(running, "m"))
    plain = exchange(plain_port, data)
    assert counter.calls > calls
    after_plain = (depth(running, "p"), depth(running, "m"))
    assert fast == plain
    assert fast.startswith(b"HTTP/1.1 ")
    # each lane published the same number of messages
    for index in (0, 1):
        assert after_fast[index] - before[index] == after_plain[index] - after_fast[index]


def test_unhealthy_ping_and_exiting_topic_alike(lanes):
    running, fast_port, plain_port, _ = lanes
    core = running.server.nsqd
    running.call(lambda: core.set_unhealthy("disk full"))
    try:
        ping = CASES["ping"]
        assert exchange(fast_port, ping) == exchange(plain_port, ping)
        assert b"\r\n\r\nNOK - disk full" in exchange(fast_port, ping)
    finally:
        running.call(core.set_healthy)
    running.call(lambda: setattr(core.get_topic("bye"), "exiting", True))
    for data in (post("/pub?topic=bye", b"x"), post("/mpub?topic=bye", b"x\n")):
        fast = exchange(fast_port, data)
        assert fast == exchange(plain_port, data)
        assert fast.endswith(b'{"message":"EXITING"}')


def test_the_fast_lane_is_registered_only_where_it_applies(lanes):
    running, *_ = lanes
    lane = running.server._http_server.fast_lane
    assert sorted(lane) == [("GET", b"/ping"), ("POST", b"/mpub"), ("POST", b"/pub")]
    assert set(running.server._http_server.app.extensions[FAST_LANE]) == set(lane)


def test_tls_required_gate_turns_the_fast_lane_off(start_nsqd, tmp_path):
    """--tls-required's before_request gate must not be skipped: no fast lane on plain HTTP."""
    from types import SimpleNamespace

    from gnsq_server.httpapi import make_server
    from gnsq_server.nsqd.http import create_app

    core = SimpleNamespace(opts=SimpleNamespace(tls_required=2), https_port=4152)
    sock = listen("127.0.0.1:0")
    try:
        assert make_server(create_app(core), sock).fast_lane == {}
    finally:
        sock.close()


def test_the_app_runs_under_another_wsgi_server(tmp_path):
    """The Flask app stays a WSGI app: gevent.pywsgi hosts it (no fast lane there) as README
    shows, with the daemon's own HTTP listener turned off."""
    from gevent.pywsgi import WSGIServer

    from gnsq_server.nsqd.http import create_app

    class Hosted:
        def start(self) -> None:
            self.daemon = NSQDServer(nsqd_options(tmp_path, http_address=""))
            self.daemon.start()
            sock = gsocket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            self.wsgi = WSGIServer(sock, create_app(self.daemon.nsqd), log=None)
            self.wsgi.start()
            self.port = sock.getsockname()[1]

        def stop(self) -> None:
            self.wsgi.stop()
            self.daemon.stop()

    running = ThreadedServer(Hosted).start()
    try:
        port = running.server.port
        assert exchange(port, post("/pub?topic=w", b"hi")).endswith(b"\r\n\r\nOK")
        assert exchange(port, post("/mpub?topic=w", b"a\nb")).endswith(b"\r\n\r\nOK")
        assert running.call(lambda: running.server.daemon.nsqd.find_topic("w").depth()) == 3
    finally:
        running.stop()


@pytest.mark.parametrize("query", [*PUBLISH, *MPUBLISH])
def test_a_repeated_publish_query_is_judged_alike_each_time(lanes, query):
    """/pub and /mpub keep the queries that passed (nsqd.http._publish_query): asked again, any
    query must get the same answer as the first time and as Flask's path."""
    running, fast_port, plain_port, _ = lanes
    for path in ("/pub", "/mpub"):
        data = post(f"{path}?{query}", b"x")
        answers = {exchange(fast_port, data) for _ in range(3)}
        assert answers == {exchange(plain_port, data)}


def test_a_kept_query_still_finds_a_deleted_topic_anew(lanes):
    from gnsq_server.nsqd import http as nsqd_http

    running, fast_port, _, _ = lanes
    core = running.server.nsqd
    assert exchange(fast_port, post("/pub?topic=gone", b"1")).endswith(b"OK")
    assert "topic=gone" in nsqd_http._PUBLISH_QUERIES
    running.call(lambda: core.delete_topic("gone"))
    assert depth(running, "gone") == 0
    assert exchange(fast_port, post("/pub?topic=gone", b"2")).endswith(b"OK")
    assert depth(running, "gone") == 1


def test_kept_queries_are_bounded_in_number_and_length(lanes):
    from gnsq_server.nsqd import http as nsqd_http

    _, fast_port, _, _ = lanes
    long_query = "topic=long&" + "x=1&" * 100
    assert exchange(fast_port, post(f"/pub?{long_query}", b"1")).endswith(b"OK")
    assert long_query not in nsqd_http._PUBLISH_QUERIES
    for n in range(nsqd_http._PUBLISH_QUERIES_MAX + 5):
        nsqd_http._publish_query(f"topic=t{n}")
    assert len(nsqd_http._PUBLISH_QUERIES) <= nsqd_http._PUBLISH_QUERIES_MAX

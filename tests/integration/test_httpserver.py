"""Our HTTP server (gnsq_server.httpserver) with a small WSGI app and a fast-lane route, over
real sockets: keep-alive, pipelining, chunked bodies both ways, Expect: 100-continue, HEAD,
HTTP/1.0, unread bodies, errors, bounds and timeouts."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from gnsq_server.httpserver import HTTPServer
from gnsq_server.serving import listen

from ..servers import ThreadedServer


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/ignore":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ignored"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one,", b"", b"two,", b"three"])
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"b" * (1 << 20) for _ in range(64))
    if path == "/lines":
        count = str(len(list(environ["wsgi.input"]))).encode()
        start_response("200 OK", [("Content-Length", str(len(count)))])
        return [count]
    body = environ["wsgi.input"].read()
    doc = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ["QUERY_STRING"],
        "body": body.decode("latin-1"),
        "length": environ.get("CONTENT_LENGTH"),
        "x": environ.get("HTTP_X_THING"),
        "scheme": environ["wsgi.url_scheme"],
        "remote": environ["REMOTE_ADDR"],
    }
    data = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]


def fast_echo(req):
    body = req.read(1 << 20)
    text = f"{req.method} {req.path} {req.query_string} {req.content_length} {len(body)}"
    return "201 Created", [("Content-Type", "text/plain")], text.encode()


class Served:
    """The test app and its fast lane on an HTTPServer (or a subclass) on a free port."""

    def __init__(self, server_class: type[HTTPServer] = HTTPServer, **kwargs) -> None:
        self.server_class = server_class
        self.kwargs = kwargs
        self.http: HTTPServer | None = None

    def start(self) -> None:
        lane = {("POST", b"/fast"): fast_echo}
        self.http = self.server_class(listen("127.0.0.1:0"), app, fast_lane=lane, **self.kwargs)
        self.http.start()
        self.port = self.http.socket.getsockname()[1]

    def stop(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def server():
    running = ThreadedServer(lambda: Served(idle_timeout=1.0, read_timeout=1.0)).start()
    yield running.server
    running.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


class Reader:
    """Reads answers one after another from a socket, leaving later bytes for the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.stream = sock.makefile("rb")

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status = int(self.stream.readline().split(b" ", 2)[1])
        headers = {}
        while (line := self.stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip()] = value.strip()
        if method == "HEAD" or status in (100, 204, 304):
            return status, headers, b""
        if "Content-Length" in headers:
            return status, headers, self.stream.read(int(headers["Content-Length"]))
        if headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.stream.readline().split(b";")[0], 16):
                body += self.stream.read(size)
                self.stream.readline()
            self.stream.readline()
            return status, headers, body
        return status, headers, self.stream.read()


def read_response(sock: socket.socket, method: str = "GET") -> tuple[int, dict, bytes]:
    return Reader(sock).response(method)


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for index in range(5):
        conn.request("POST", f"/echo?i={index}", body=b"x" * index)
        response = conn.getresponse()
        doc = json.loads(response.read())
        assert (doc["query"], doc["body"], doc["length"]) == (f"i={index}", "x" * index,
                                                             str(index))
        assert response.getheader("Connection") is None
        assert response.getheader("Date")
    conn.close()


def test_pipelined_requests_are_answered_in_order(server):
    sock = connect(server)
    requests = b"".join(
        f"POST /echo?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{n}".encode()
        for n in range(3)
    ) + b"POST /fast?n=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
    sock.sendall(requests)
    reader = Reader(sock)
    for n in range(3):
        assert json.loads(reader.response()[2])["body"] == str(n)
    status, _, body = reader.response()
    assert (status, body) == (201, b"POST /fast n=3 2 2")
    sock.close()


def test_chunked_request_body(server):
    sock = connect(server)
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n"
    )
    reader = Reader(sock)
    assert json.loads(reader.response()[2])["body"] == "abcdefg"
    sock.sendall(b"POST /lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"4\r\na\nb\n\r\n2\r\nc\n\r\n0\r\n\r\n")
    assert reader.response()[2] == b"3"
    sock.close()


def test_fast_lane_with_chunked_body(server):
    sock = connect(server)
    sock.sendall(b"POST /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\nab\r\n0\r\n\r\n")
    status, headers, data = read_response(sock)
    assert (status, data) == (201, b"POST /fast  None 2")
    assert headers["Content-Length"] == str(len(data))
    sock.close()


def test_expect_continue_is_answered_when_the_body_is_read(server):
    sock = connect(server)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 5\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    assert json.loads(read_response(sock)[2])["body"] == "hello"
    sock.close()


def test_expect_continue_unread_closes_without_100(server):
    sock = connect(server)
    sock.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 5\r\n\r\n")
    status, headers, data = read_response(sock)
    assert (status, data, headers["Connection"]) == (200, b"ignored", "close")
    sock.close()


def test_head_has_no_body(server):
    sock = connect(server)
    sock.sendall(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /ignore HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = Reader(sock)
    assert reader.response("HEAD")[0] == 200
    assert reader.response()[2] == b"ignored"  # nothing of the HEAD answer was left in between
    sock.close()


def test_http10_closes_unless_asked_to_keep_alive(server):
    sock = connect(server)
    sock.sendall(b"GET /ignore HTTP/1.0\r\n\r\n")
    status, headers, data = read_response(sock)
    assert (data, headers["Connection"]) == (b"ignored", "close")
    assert sock.recv(10) == b""
    sock.close()
    sock = connect(server)
    sock.sendall(b"GET /ignore HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reader = Reader(sock)
    status, headers, data = reader.response()
    assert (data, headers["Connection"]) == (b"ignored", "keep-alive")
    sock.sendall(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    # no length known for an HTTP/1.0 client: the body ends with the connection
    status, headers, data = reader.response()
    assert (data, headers["Connection"]) == (b"one,two,three", "close")
    sock.close()


def test_streamed_response_is_chunked_on_http11(server):
    sock = connect(server)
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = Reader(sock)
    status, headers, data = reader.response()
    assert (headers["Transfer-Encoding"], data) == ("chunked", b"one,two,three")
    sock.sendall(b"GET /ignore HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reader.response()[2] == b"ignored"
    sock.close()


def test_small_unread_body_is_drained_and_the_connection_kept(server):
    sock = connect(server)
    sock.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"z" * 1000)
    reader = Reader(sock)
    assert "Connection" not in reader.response()[1]
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    assert json.loads(reader.response()[2])["body"] == "ok"
    sock.close()


def test_big_unread_body_is_answered_then_closed(server):
    sock = connect(server)
    length = 10 << 20
    sock.sendall(f"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    try:
        sock.sendall(b"z" * (1 << 20))
    except OSError:
        pass
    status, headers, data = read_response(sock)
    assert (status, data, headers["Connection"]) == (200, b"ignored", "close")
    sock.close()


def test_application_error_is_500_and_others_are_served(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/boom")
    response = conn.getresponse()
    assert (response.status, response.read()) == (500, b"")
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/ignore")
    assert conn.getresponse().read() == b"ignored"
    conn.close()


def test_headers_reach_the_environ_without_underscore_spoofing(server):
    sock = connect(server)
    sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Thing: a\r\nX-Thing: b\r\nX_Thing: evil\r\n\r\n"
    )
    assert json.loads(read_response(sock)[2])["x"] == "a,b"
    sock.close()


def test_percent_encoded_path_is_decoded_for_wsgi(server):
    sock = connect(server)
    sock.sendall(b"GET /a%20b/%C3%A9?q=%20 HTTP/1.1\r\nHost: x\r\n\r\n")
    doc = json.loads(read_response(sock)[2])
    assert (doc["path"], doc["query"]) == ("/a b/\xc3\xa9", "q=%20")
    sock.close()


def test_refused_request_gets_400_and_close(server):
    sock = connect(server)
    sock.sendall(b"GET /ignore HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nbroken\r\n\r\n")
    reader = Reader(sock)
    assert reader.response()[2] == b"ignored"
    assert reader.response()[0] == 400
    sock.close()


def test_idle_and_stalled_connections_are_closed(server):
    idle = connect(server)
    stalled = connect(server)
    stalled.sendall(b"GET /ignore HTTP/1.1\r\nHost:")
    body = connect(server)
    body.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    started = time.monotonic()
    assert idle.recv(10) == b""
    assert stalled.recv(10) == b""
    assert body.recv(10) == b""
    assert time.monotonic() - started < 4
    for sock in (idle, stalled, body):
        sock.close()
    assert not server.http.connections or time.sleep(0.2) or not server.http.connections


def test_a_client_that_stops_reading_is_cut_off(server):
    sock = connect(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 5
    while not server.http.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.http.connections
    while server.http.connections and time.monotonic() < deadline:
        time.sleep(0.1)  # the server's write stalls past its 1 s timeout
    assert not server.http.connections
    sock.close()


def test_many_connections_one_after_another_and_at_once(server):
    for index in range(200):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"POST /fast?i={index} HTTP/1.0\r\nContent-Length: 1\r\n\r\nx".encode())
            assert read_response(sock)[2] == f"POST /fast i={index} 1 1".encode()
    socks = [connect(server) for _ in range(50)]
    for index, sock in enumerate(socks):
        sock.sendall(f"GET /echo?i={index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for index, sock in enumerate(socks):
        assert json.loads(read_response(sock)[2])["query"] == f"i={index}"
        sock.close()


def test_head_too_big_is_431():
    running = ThreadedServer(lambda: Served(max_head_bytes=4096)).start()
    try:
        sock = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
        sock.sendall(b"GET /ignore HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000)
        assert sock.recv(100).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        sock.close()
    finally:
        running.stop()


class _StartedLate(HTTPServer):
    """Started a while after it was built (as a daemon that loads its data first)."""

    def start(self) -> None:
        time.sleep(1.5)  # in the server's own thread, before its loop runs
        super().start()


def test_timeouts_count_from_the_start_not_from_construction():
    running = ThreadedServer(
        lambda: Served(_StartedLate, idle_timeout=1.0, read_timeout=1.0)).start()
    try:
        sock = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
            assert reader.response()[0] == 201
            time.sleep(0.5)  # idle for half the idle timeout: the connection must live on
        sock.close()
    finally:
        running.stop()

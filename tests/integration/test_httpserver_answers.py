"""How our HTTP server writes answers: pipelined requests buffered together are answered with
one send (and held answers still go out before a refusal, a half-close or a close), the
response head of whole answers is built once a second with the current Date, and a
connection waits for readability after answering instead of failing a recv first."""

from __future__ import annotations

import re
import socket
import threading
import time
from email.utils import parsedate_to_datetime

import pytest

from gnsq_server.httpheads import HeadCache
from gnsq_server.httpserver import HTTPServer

from ..servers import ThreadedServer
from .test_httpserver import Reader, Served, fast_echo


class _CountingSocket:
    """The server's own accepted socket, with its sends and recvs counted (and the /fast
    answers it sends noted in ``events``, when given)."""

    def __init__(self, sock, counts: dict, events: list | None = None) -> None:
        self._sock = sock
        self._counts = counts
        self._events = events

    def send(self, data) -> int:
        self._counts["send"] += 1
        if self._events is not None:
            sent = re.findall(rb"POST /fast n=(\d+) ", bytes(data))
            self._events.extend(("sent", int(n)) for n in sent)
        return self._sock.send(data)

    def recv(self, size: int) -> bytes:
        self._counts["recv"] += 1
        return self._sock.recv(size)

    def recv_when_readable(self, size: int) -> bytes:
        self._counts["waited"] += 1
        return self._sock.recv_when_readable(size)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _CountingServer(HTTPServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counts: list[dict] = []
        self.events: list | None = None

    def handle(self, sock, address) -> None:
        counts = {"send": 0, "recv": 0, "waited": 0}
        self.counts.append(counts)
        super().handle(_CountingSocket(sock, counts, self.events), address)


@pytest.fixture(scope="module")
def server():
    running = ThreadedServer(lambda: Served(_CountingServer)).start()
    yield running.server
    running.stop()


def _fast(n: int) -> bytes:
    return f"POST /fast?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab".encode()


def _echo(n: int) -> bytes:
    return f"POST /echo?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n{n}".encode()


def _connection_counts(server, sock: socket.socket) -> dict:
    """The counts of the connection just served, once the server closed it."""
    sock.settimeout(5)
    assert sock.recv(1) == b""  # the server closed: its counts are final
    return server.http.counts[-1]


def test_pipelined_requests_are_answered_in_one_send(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    last = b"POST /fast?n=9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab"
    sock.sendall(_fast(0) + _echo(1) + _fast(2) + _echo(3) + last)
    reader = Reader(sock)
    assert reader.response()[2] == b"POST /fast n=0 2 2"
    assert reader.response()[2].count(b'"body": "1"') == 1
    assert reader.response()[2] == b"POST /fast n=2 2 2"
    assert reader.response()[2].count(b'"body": "3"') == 1
    status, headers, body = reader.response()
    assert (status, headers["Connection"], body) == (201, "close", b"POST /fast n=9 2 2")
    counts = _connection_counts(server, sock)
    assert counts["send"] == 1, counts
    sock.close()


def test_held_answers_go_out_before_a_refusal(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(_fast(0) + _fast(1) + b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    reader = Reader(sock)
    assert reader.response()[2] == b"POST /fast n=0 2 2"
    assert reader.response()[2] == b"POST /fast n=1 2 2"
    assert reader.response()[0] == 400
    assert _connection_counts(server, sock)["send"] == 1
    sock.close()


def test_held_answers_go_out_when_the_client_half_closes(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(_fast(0) + _fast(1) + _fast(2))
    sock.shutdown(socket.SHUT_WR)
    reader = Reader(sock)
    for n in range(3):
        assert reader.response()[2] == f"POST /fast n={n} 2 2".encode()
    assert reader.stream.read() == b""
    sock.close()


def test_a_kept_alive_connection_waits_before_reading_again(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    reader = Reader(sock)
    for n in range(5):
        sock.sendall(_fast(n))
        assert reader.response()[2] == f"POST /fast n={n} 2 2".encode()
    sock.shutdown(socket.SHUT_WR)
    counts = _connection_counts(server, sock)
    # the first read tries at once; each after an answer waits for readability first
    assert counts["waited"] == 5 and counts["send"] == 5, counts
    sock.close()


def test_date_header_follows_the_clock(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    reader = Reader(sock)
    dates = []
    for n in range(2):
        before = int(time.time())
        sock.sendall(_fast(n))
        dates.append(parsedate_to_datetime(reader.response()[1]["Date"]).timestamp())
        assert before <= dates[-1] <= time.time()
        time.sleep(1.05 - time.time() % 1)  # into the next second
    assert dates[1] > dates[0]
    sock.close()


def test_head_cache_frames_each_answer_by_its_own_facts():
    cache = HeadCache()
    head = cache.get("200 OK", [("X-A", "1")], 2, True, "1.1")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nDate: ")
    assert head.endswith(b"GMT\r\n\r\n")
    assert cache.get("200 OK", [("X-A", "1")], 2, True, "1.1") is head
    assert cache.get("200 OK", [("X-A", "1")], 3, True, "1.1").count(b"Content-Length: 3") == 1
    assert cache.get("200 OK", [("X-A", "1")], 2, True, "1.0").endswith(
        b"Connection: keep-alive\r\n\r\n")
    assert cache.get("200 OK", [("X-A", "1")], 2, False, "1.1").endswith(
        b"Connection: close\r\n\r\n")
    assert cache.get("200 OK", [("X-A", "2")], 2, True, "1.1").count(b"X-A: 2") == 1
    assert cache.get("200 OK", [("X-A", "1"), ("X-B", "2")], 2, True, "1.1").count(b"X-B") == 1
    for length in range(cache.MAX_ENTRIES * 2):
        cache.get("200 OK", [], length, True, "1.1")
    assert len(cache.heads) <= cache.MAX_ENTRIES


def test_fast_answers_are_access_logged_when_asked_and_answered_alike(server, caplog):
    import logging

    from gnsq_server.logs import ACCESS_LOGGER

    def exchange() -> bytes:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(_fast(7).replace(b"Host: x", b"Host: x\r\nConnection: close"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data.split(b"\r\nDate: ")[0], data.split(b"GMT\r\n")[1]

    quiet = exchange()
    with caplog.at_level(logging.DEBUG, logger=ACCESS_LOGGER):
        logged = exchange()
        deadline = time.monotonic() + 5
        while not any("POST /fast?n=7" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert logged == quiet
    line = next(r.getMessage() for r in caplog.records if "/fast?n=7" in r.getMessage())
    assert '"POST /fast?n=7 HTTP/1.1" 201 18 ' in line


class _RecordingServer(_CountingServer):
    """Notes when /fast requests are handled and answered; /block holds the whole loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events = []
        self.blocking = threading.Event()
        self.fast_lane[("POST", b"/fast")] = self._fast
        self.fast_lane[("POST", b"/block")] = self._block

    def _fast(self, req):
        self.events.append(("handled", int(req.query_string.split("=")[1])))
        return fast_echo(req)

    def _block(self, req):
        self.blocking.set()
        time.sleep(0.3)  # not gevent's: nothing else runs meanwhile
        return fast_echo(req)


def test_answers_of_one_loop_turn_go_out_together():
    """Requests that became readable in the same turn of the event loop are all handled
    before any of their answers is sent: the clients are then woken in one burst, which
    costs the kernel much less than waking an idle client for each answer in turn."""
    running = ThreadedServer(lambda: Served(_RecordingServer)).start()
    try:
        http = running.server.http
        port = running.server.port
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        readers = [Reader(sock) for sock in clients]
        for n, (sock, reader) in enumerate(zip(clients[:2], readers, strict=False)):
            sock.sendall(_fast(n))  # each connection is served and waits for its next request
            assert reader.response()[0] == 201
        blocker = clients[2]
        blocker.sendall(b"POST /block HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb")
        assert http.blocking.wait(5)
        clients[0].sendall(_fast(10))  # both arrive while the loop is held
        clients[1].sendall(_fast(11))
        assert readers[2].response()[0] == 201
        assert readers[0].response()[2] == b"POST /fast n=10 2 2"
        assert readers[1].response()[2] == b"POST /fast n=11 2 2"
        turn = [kind for kind, n in http.events if n >= 10]
        assert turn == ["handled", "handled", "sent", "sent"], http.events
    finally:
        for sock in clients:
            sock.close()
        running.stop()

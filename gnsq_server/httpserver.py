"""gnsq's HTTP/1.1 server: WSGI on gevent's StreamServer, requests parsed by httptools.

gevent.pywsgi parses requests in Python and held /pub to a tenth of nsqd's rate. This server
keeps the parsing in C (:mod:`gnsq_server.httpparse`), answers each request with one write, and
offers a *fast lane*: a mapping from ``(method, path)`` to a handler that takes a
:class:`FastRequest` and returns ``(status, headers, body)`` without a WSGI environ or a
framework's request and response objects. Everything else goes to the WSGI application, so any
WSGI server can still host the same app (the fast lane is an optimisation, not a route).

Per connection, in blocking style: read a request head (idle timeout between requests, read
timeout within one), run the handler, write the answer, then deal with a body the handler left
unread: up to 256 KiB is drained so the connection lives on (as Go's net/http does), more than
that (or an unanswered ``Expect: 100-continue``) ends it with a lingering close so the client
reads the answer rather than a reset. For one-request connections (curl in a loop) the fixed
costs matter: plain connections use :class:`~gnsq_server.rawsocket.RawSocket` instead of
gevent's socket class, and greenlets are reused from one connection to the next.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from socket import IPPROTO_TCP, SHUT_RDWR, SHUT_WR, TCP_NODELAY
from typing import Any
from urllib.parse import unquote_to_bytes

import gevent
import httptools
from gevent.server import StreamServer

from gnsq_server import logs
from gnsq_server.httpheads import CONNECTION_LINES, HEADS
from gnsq_server.httpparse import (
    END,
    MAX_HEAD_BYTES,
    RequestError,
    RequestHead,
    RequestParser,
)
from gnsq_server.rawsocket import RawSocket

log = logging.getLogger(__name__)
access_log = logging.getLogger(logs.ACCESS_LOGGER)
error_log = logging.getLogger(logs.ERROR_LOGGER)

#: ``(status line without "HTTP/1.1 ", headers, body)``, as a fast-lane handler answers
FastResponse = tuple[str, list[tuple[str, str]], bytes]
FastHandler = Callable[["FastRequest"], FastResponse]

READ_SIZE = 65536
#: Go's net/http discards at most this much unread request body to keep a connection alive.
MAX_POST_HANDLER_READ = 256 << 10
#: How long to keep reading after a half-close so the client sees the answer, not a reset.
LINGER_SECONDS = 0.5
#: Waiting for the next request on a kept-alive connection.
IDLE_TIMEOUT = 300.0
#: Waiting for more of a request that has begun (head or body).
READ_TIMEOUT = 60.0

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = ("1", "204", "304")


class BodyError(OSError):
    """The request body could not be read: broken chunking, a truncated body, a timeout."""


class HTTPServer(StreamServer):
    """Serves ``app`` (WSGI) and ``fast_lane`` handlers on a bound, listening socket.

    ``fast_lane`` maps ``(method, raw path)`` such as ``("POST", b"/pub")`` to a handler.
    ``ssl_context`` makes it HTTPS.
    """

    def __init__(
        self,
        listener: Any,
        app: Callable,
        *,
        fast_lane: Mapping[tuple[str, bytes], FastHandler] | None = None,
        ssl_context: Any = None,
        idle_timeout: float = IDLE_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        ssl_args = {"ssl_context": ssl_context} if ssl_context is not None else {}
        self._workers = _Workers()
        super().__init__(listener, spawn=self._workers, **ssl_args)
        self.app = app
        self.fast_lane = dict(fast_lane or {})
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_head_bytes = max_head_bytes
        #: open connections, for the timeout sweep
        self.connections: set[Connection] = set()
        #: time.monotonic() as of the sweep's next turn, moved on by the sweep: deadlines are
        #: set from it, sparing a clock read per receive and send, and are never early
        self.clock = 0.0
        self._sweeper: gevent.Greenlet | None = None
        host, port = listener.getsockname()[:2]
        self.base_environ = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if ssl_context is not None else "http",
            "wsgi.errors": logs.LogWriter(error_log, logging.ERROR),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,  # the body ends where HTTP framing says
        }

    def do_read(self) -> tuple[Any, Any] | None:
        if self.ssl_args:  # TLS needs gevent's socket class under its SSLSocket
            return super().do_read()
        return RawSocket.accepted(self.socket)

    def handle(self, sock: Any, address: Any) -> None:
        Connection(self, sock, address).serve()

    def start(self) -> None:
        super().start()
        if self._sweeper is None:
            self.clock = time.monotonic() + self._sweep_interval()
            self._sweeper = gevent.spawn(self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
        self._workers.dismiss()
        super().close()

    def _sweep(self) -> None:
        """Close connections stuck in one read or write past their deadline.

        Timeouts are kept here rather than on the sockets: a socket timeout costs a
        getsockopt and a timer on every send and receive, a fifth of a request's time.
        """
        interval = self._sweep_interval()
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            self.clock = now + interval
            for conn in list(self.connections):
                if conn.deadline and now > conn.deadline:
                    log.debug("closing %s:%s - timed out", conn.remote_addr, conn.remote_port)
                    try:  # the blocked call returns or fails; its greenlet closes the socket
                        conn.sock.shutdown(SHUT_RDWR)
                    except OSError:
                        pass

    def _sweep_interval(self) -> float:
        return min(1.0, self.idle_timeout / 4, self.read_timeout / 4)

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> None:
        """HTTPS: a failed or stalled handshake closes that connection with a debug line."""
        client_socket.settimeout(self.read_timeout)
        try:
            ssl_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError as exc:
            log.debug("TLS handshake with %s failed - %s", address[0], exc)
            client_socket.close()
            return
        ssl_socket.settimeout(None)  # from here the sweep keeps the time
        try:
            self.handle(ssl_socket, address)
        finally:
            ssl_socket.close()


class _Workers:
    """Greenlets that serve one connection after another: creating a greenlet for each costs
    ~15 us, a tenth of a one-request connection. StreamServer calls this in the hub, from its
    accept callback; an idle worker is switched to at once (as gevent wakes any waiter)."""

    KEEP = 256

    def __init__(self) -> None:
        self.idle: list[Any] = []

    def __call__(self, func: Callable, *args: Any) -> None:
        if self.idle:
            self.idle.pop().switch((func, args))
        else:
            gevent.spawn(self._work, func, args)

    def _work(self, func: Callable, args: tuple) -> None:
        hub = gevent.get_hub()
        while True:
            func(*args)
            if len(self.idle) >= self.KEEP:
                return
            self.idle.append(gevent.getcurrent())
            func, args = hub.switch()  # parked until __call__ hands over a connection

    def dismiss(self) -> None:
        idle, self.idle = self.idle, []
        for worker in idle:
            worker.kill(block=False)


class FastRequest:
    """What a fast-lane handler sees of a request (see httpapi.PlainRequest)."""

    __slots__ = ("method", "path", "query_string", "content_length", "read", "remote_addr",
                 "remote_port")

    def __init__(self, head: RequestHead, path: bytes, query: bytes, body: RequestBody,
                 conn: Connection) -> None:
        self.method = head.method
        self.path = path.decode("latin-1")
        self.query_string = query.decode("latin-1")
        self.content_length = head.content_length
        self.read = body.read
        self.remote_addr = conn.remote_addr
        self.remote_port = conn.remote_port


class Connection:
    """One client connection, served request after request until it closes."""

    __slots__ = ("server", "sock", "parser", "remote_addr", "remote_port", "deadline", "_writes",
                 "_pending", "_answered", "_recv_later", "_loop")

    def __init__(self, server: HTTPServer, sock: Any, address: Any) -> None:
        self.server = server
        self.sock = sock
        self.parser = RequestParser(server.max_head_bytes)
        self.remote_addr = str(address[0]) if address else ""
        self.remote_port = str(address[1]) if address else ""
        #: when the read or write in progress times out (monotonic); 0 when none is
        self.deadline = 0.0
        self._writes = 0
        #: answers held back while more pipelined requests are buffered (see answer())
        self._pending: list[bytes] = []
        #: whether we wrote last, so the peer is most likely waiting for us, not sending
        self._answered = False
        self._recv_later = getattr(sock, "recv_when_readable", None)
        #: libev's loop, whose pendingcnt tells how many other watchers wait in this turn
        #: (None on a loop without it, e.g. libuv: answers then go out at once)
        self._loop = _libev_loop()

    def serve(self) -> None:
        connections = self.server.connections
        connections.add(self)
        try:
            while self._serve_one():
                pass
        except OSError:  # reset, timed out, or gone mid-answer: nothing left to tell it
            pass
        finally:
            connections.discard(self)
            if self._pending:
                try:
                    self.sendall(b"")
                except OSError:
                    pass
            self.sock.close()

    def recv(self, timeout: float) -> bytes:
        if self._pending:
            self.sendall(b"")
        self.deadline = self.server.clock + timeout
        if self._answered and self._recv_later is not None:
            data = self._recv_later(READ_SIZE)
        else:
            data = self.sock.recv(READ_SIZE)
        self._answered = False
        self.deadline = 0.0
        return data

    def answer(self, data: bytes) -> None:
        """Write a whole answer, or hold it back: while the next pipelined request is already
        parsed (a batch of pipelined requests is then answered with one send), or until the
        other connections that are ready in this turn of the event loop were served (their
        clients are then woken in one burst, which costs the kernel less than one by one).
        Whatever is held goes out before the next write, read, half-close or close."""
        if self.parser.events:
            self._pending.append(data)
        elif self._loop is not None and self._loop.pendingcnt:
            self._pending.append(data)
            gevent.sleep(0)
            self.sendall(b"")
        else:
            self.sendall(data)

    def answer_whole(self, request: RequestHead, keep: bool, status: str,
                     headers: list[tuple[str, str]], body: bytes) -> None:
        """A whole answer (see _Response.send), its head framed by Content-Length."""
        head = HEADS.get(status, headers, len(body), keep, request.version)
        self.answer(head + body if body and request.method != "HEAD" else head)

    def sendall(self, data: bytes) -> None:
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending = []
            if not data:
                return
        if self._writes == 1:
            # Without TCP_NODELAY a write sent while the last is unacknowledged waits for the
            # client's delayed ACK (~40 ms). A connection's first write never does, so a
            # one-request connection is spared the system call.
            try:
                self.sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
            except OSError:
                pass
        self._writes += 1
        self.deadline = self.server.clock + self.server.read_timeout
        # One send() usually takes it all; gevent's sendall() adds a getsockopt() each time.
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(data[sent:])
        self.deadline = 0.0
        self._answered = True

    def _next_head(self) -> RequestHead | None:
        """The next request's head; None when the connection is done (EOF, or refused)."""
        parser = self.parser
        events = parser.events
        while True:
            event = events.popleft() if events else None
            if event is None:
                if parser.finished:
                    return None
                server = self.server
                data = self.recv(server.idle_timeout if parser.idle else server.read_timeout)
                if not data:
                    return None
                parser.feed(data)
            elif event.__class__ is RequestHead:
                return event
            elif event.__class__ is RequestError:
                log.debug("refused a request from %s - %s", self.remote_addr, event)
                self.sendall(event.response())
                self.linger()
                return None

    def _serve_one(self) -> bool:
        head = self._next_head()
        if head is None:
            return False
        body = RequestBody(self, head)
        target = head.target
        if target[:1] == b"/":  # origin-form, as nearly every request is
            path, _, query = target.partition(b"?")
        else:
            path, query = _split_target(target)
        handler = self.server.fast_lane.get((head.method, path))
        if handler is not None:
            status, headers, payload = handler(FastRequest(head, path, query, body, self))
            if access_log.isEnabledFor(logging.DEBUG):
                keep = _Response(self, head, body).send(status, headers, payload)  # logs it
            else:
                keep = head.keep_alive and (body.done or body.drainable(head))
                self.answer_whole(head, keep, status, headers, payload)
        else:
            keep = self._run_wsgi(head, body, path, query)
        if not body.done and not body.drain(head, MAX_POST_HANDLER_READ):
            self.linger()
            return False
        parser = self.parser
        return keep and not (parser.finished and not parser.events)

    def _run_wsgi(self, head: RequestHead, body: RequestBody, path: bytes, query: bytes) -> bool:
        environ = self._environ(head, body, path, query)
        response = _Response(self, head, body)
        result: Iterable[bytes] | None = None
        try:
            result = self.server.app(environ, response.start_response)
            if result.__class__ in (list, tuple) and len(result) == 1:
                response.finish(result[0])  # one piece: its length is known
            else:
                for data in result:
                    if data:
                        response.write(data)
                response.finish()
        except Exception:
            error_log.exception("error serving %s %s", head.method, head.target[:200])
            if response.head_sent:
                return False
            return response.send("500 Internal Server Error", [], b"", keep_alive=False)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return response.keep_alive

    def _environ(self, head: RequestHead, body: RequestBody, path: bytes, query: bytes) -> dict:
        environ = dict(self.server.base_environ)
        environ["REQUEST_METHOD"] = head.method
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = head.target.decode("latin-1")
        environ["SERVER_PROTOCOL"] = f"HTTP/{head.version}"
        environ["REMOTE_ADDR"] = self.remote_addr
        environ["REMOTE_PORT"] = self.remote_port
        environ["wsgi.input"] = body
        for name, value in head.headers:
            key = name.decode("latin-1").upper()
            if "_" in key:
                continue  # HTTP_X_A would be ambiguous between X-A and X_A (spoofing)
            key = key.replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ

    def linger(self) -> None:
        """Half-close and read briefly, so unread request bytes do not turn the close into a
        reset that destroys the answer on its way."""
        sock = self.sock
        try:
            if self._pending:
                self.sendall(b"")
            sock.shutdown(SHUT_WR)
            with gevent.Timeout(LINGER_SECONDS, False):
                while sock.recv(READ_SIZE):
                    pass
        except OSError:
            pass


def _libev_loop() -> Any:
    loop = gevent.get_hub().loop
    return loop if hasattr(loop, "pendingcnt") else None


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target; absolute-form ``http://host/p?q`` as well."""
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        return target, b""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return target, b""
    return url.path or b"/", url.query or b""


class RequestBody:
    """``wsgi.input``: the request body, pulled from the connection as the reader asks.

    It ends where the framing says (Content-Length or the last chunk). A body that cannot be
    read to its end raises :class:`BodyError`. ``Expect: 100-continue`` is answered when the
    reader first waits for body bytes.
    """

    __slots__ = ("_conn", "_expect", "_buffer", "done", "failed", "received")

    def __init__(self, conn: Connection, head: RequestHead) -> None:
        self._conn = conn
        self._expect = head.expect_continue
        self._buffer = b""
        self.done = False
        self.failed = False
        self.received = 0

    def _next_chunk(self) -> bytes:
        """The next piece of the body (b"" at its end), read from the socket when needed."""
        if self.done:
            return b""
        if self.failed:
            raise BodyError("the request body could not be read")
        conn = self._conn
        parser = conn.parser
        event = parser.next_event()
        while event is None:
            if parser.finished:
                self.failed = True
                raise BodyError("the connection ended inside the request body")
            if self._expect:
                self._expect = False
                conn.sendall(_CONTINUE)
            try:
                data = conn.recv(conn.server.read_timeout)
            except OSError as exc:
                self.failed = True
                raise BodyError(f"reading the request body failed - {exc}") from exc
            if not data:
                self.failed = True
                raise BodyError("unexpected EOF in the request body")
            parser.feed(data)
            event = parser.next_event()
        if event.__class__ is not bytes:
            self.failed = True
            raise BodyError(str(event))
        if event is END or not event:
            self.done = True
            return b""
        self.received += len(event)
        return event

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = sys.maxsize
        buffer = self._buffer
        if not buffer and not self.done:
            whole = self._whole(size)
            if whole is not None:
                return whole
        if len(buffer) >= size:
            self._buffer = buffer[size:]
            return buffer[:size]
        parts = [buffer]
        have = len(buffer)
        while have < size and (chunk := self._next_chunk()):
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if have > size:
            self._buffer = data[size:]
            return data[:size]
        self._buffer = b""
        return data

    def _whole(self, size: int) -> bytes | None:
        """The body in one piece when it arrived with its head (a /pub): parsed and ended,
        not longer than ``size``, no 100-continue owed. None otherwise."""
        events = self._conn.parser.events
        if len(events) < 2 or events[1] is not END or self._expect:
            return None
        chunk = events[0]
        if chunk.__class__ is not bytes or len(chunk) > size:
            return None
        events.popleft()
        events.popleft()
        self.done = True
        self.received += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else sys.maxsize
        buffer = self._buffer
        while (end := buffer.find(b"\n")) < 0 and len(buffer) < limit:
            chunk = self._next_chunk()
            if not chunk:
                break
            buffer += chunk
        stop = min(end + 1 if end >= 0 else len(buffer), limit)
        self._buffer = buffer[stop:]
        return buffer[:stop]

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def drainable(self, head: RequestHead, limit: int = MAX_POST_HANDLER_READ) -> bool:
        """Whether drain() may keep the connection, as far as is known before trying."""
        if self.failed or self._expect:
            return False
        return head.content_length is None or head.content_length - self.received <= limit

    def drain(self, head: RequestHead, limit: int) -> bool:
        """Discard up to ``limit`` unread bytes so the connection can serve another request;
        False when the body is longer, broken, or was never asked for (100-continue)."""
        if not self.drainable(head, limit):
            return False
        self._buffer = b""
        start = self.received
        try:
            while self._next_chunk():
                if self.received - start > limit:
                    return False
        except OSError:
            return False
        return True


class _Response:
    """Writes one answer: the head with the first body bytes in one send, then the rest."""

    __slots__ = ("conn", "request", "status", "headers", "head_sent", "keep_alive", "chunked",
                 "length", "started")

    def __init__(self, conn: Connection, request: RequestHead, body: RequestBody) -> None:
        self.conn = conn
        self.request = request
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        # Say so now when the unread rest of the body will not be drained (see drain()).
        self.keep_alive = request.keep_alive and (body.done or body.drainable(request))
        self.chunked = False
        self.length = 0
        self.started = time.perf_counter()

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        if exc_info is not None and self.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = headers
        return self.write

    def send(self, status: str, headers: list[tuple[str, str]], body: bytes,
             *, keep_alive: bool = True) -> bool:
        """A whole answer at once (the fast lane, and errors), in one write; ``headers`` hold
        no framing (Content-Length, Connection). Returns whether to keep the connection."""
        request = self.request
        keep = self.keep_alive = self.keep_alive and keep_alive
        self.status = status
        self.head_sent = True
        self.conn.answer_whole(request, keep, status, headers, body)
        if body and request.method != "HEAD":
            self.length = len(body)
        self._log()
        return keep

    def write(self, data: bytes) -> None:
        if not self.head_sent:
            self._send_head(data, None)
            return
        self._send_body(data)

    def finish(self, last: bytes = b"") -> None:
        if not self.head_sent:
            self._send_head(last, len(last))  # logs
            return
        if self.chunked:
            self.conn.sendall(b"0\r\n\r\n")
        self._log()

    def _send_head(self, first: bytes, total: int | None) -> None:  # the WSGI path
        """The status line and headers, framed by Content-Length, chunking or a close."""
        request = self.request
        status = self.status
        lines = [f"HTTP/1.1 {status}\r\n"]
        has_length = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length":
                has_length = True
            elif lowered == "connection":
                if value.lower() == "close":
                    self.keep_alive = False
                continue  # the server decides, and says so below
            lines.append(f"{name}: {value}\r\n")
        bodiless = request.method == "HEAD" or status.startswith(_NO_BODY_STATUS)
        if not has_length and not bodiless:
            if total is not None:
                lines.append(f"Content-Length: {total}\r\n")
            elif request.version == "1.1":
                lines.append("Transfer-Encoding: chunked\r\n")
                self.chunked = True
            else:
                self.keep_alive = False  # an HTTP/1.0 body without a length ends at the close
        lines.append(f"Date: {HEADS.date()}\r\n")
        lines.append(CONNECTION_LINES[self.keep_alive, request.version])
        head = "".join(lines).encode("latin-1")
        self.head_sent = True
        write = self.conn.sendall if total is None else self.conn.answer  # whole, or a start
        if bodiless or not first:
            write(head)
        elif self.chunked:
            write(b"%s%x\r\n%s\r\n" % (head, len(first), first))
            self.length += len(first)
        else:
            write(head + first)
            self.length += len(first)
        if total is not None:
            self._log()

    def _send_body(self, data: bytes) -> None:
        request = self.request
        if request.method == "HEAD" or self.status.startswith(_NO_BODY_STATUS):
            return
        self.length += len(data)
        if self.chunked:
            self.conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.conn.sendall(data)

    def _log(self) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            request = self.request
            access_log.debug(
                '%s "%s %s HTTP/%s" %s %d %.6f',
                self.conn.remote_addr,
                request.method,
                request.target.decode("latin-1"),
                request.version,
                self.status.split(" ", 1)[0],
                self.length,
                time.perf_counter() - self.started,
            )

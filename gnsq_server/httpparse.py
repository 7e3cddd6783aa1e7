"""HTTP/1.x request framing without sockets: feed bytes, take events.

httptools (llhttp, Node's parser) does the byte-level work in C; this module adds what Go's
net/http refuses on top of it and turns the parser's callbacks into a queue of events that a
connection takes in order: a :class:`RequestHead`, body chunks (``bytes``), :data:`END` when the
request's body is complete, then the next pipelined request. A refused request is a
:class:`RequestError` event in its place, after everything that parsed before it, and nothing is
parsed after it. Because the connection feeds only as much as it needs, at most one read's worth
of bytes waits here.

llhttp itself refuses what the hostile tests send: conflicting or duplicate Content-Length,
Content-Length with Transfer-Encoding, a chunked coding that is not last, header lines without a
colon, bare LF line ends, obs-fold, invalid chunk sizes and Content-Length overflow.
"""

from __future__ import annotations

from collections import deque

import httptools

#: Go's http.DefaultMaxHeaderBytes (1 MiB) plus the 4096 bytes of slack net/http allows.
MAX_HEAD_BYTES = (1 << 20) + 4096

#: The end of one request's body (the event after its last chunk).
END = b""
#: method names as bytes -> str, to spare a decode per request
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


class RequestError(Exception):
    """A request refused before it reached the application: answered with ``status`` and closed."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {detail}" if detail else ""))
        self.status = status
        self.reason = reason
        self.detail = detail

    def response(self) -> bytes:
        """The answer as Go's net/http writes it for a request it cannot read."""
        text = f"{self.status} {self.reason}" + (f": {self.detail}" if self.detail else "")
        return (
            f"HTTP/1.1 {self.status} {self.reason}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
            f"{text}"
        ).encode("latin-1", "replace")


def bad_request(detail: str) -> RequestError:
    return RequestError(400, "Bad Request", detail)


class RequestHead:
    """A request line and its headers, with the framing facts the connection acts on.

    A plain class (not a dataclass with defaults): one is built per request, at half the cost.
    """

    __slots__ = ("method", "target", "version", "headers", "content_length", "keep_alive",
                 "expect_continue")

    def __init__(self, method: str, target: bytes, version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool = True) -> None:
        self.method = method
        self.target = target
        self.version = version
        #: (name, value) as sent; names keep their case
        self.headers = headers
        #: None for a chunked body; 0 when there is no body
        self.content_length: int | None = 0
        self.keep_alive = keep_alive
        self.expect_continue = False

    def __repr__(self) -> str:
        return f"RequestHead({self.method} {self.target!r} HTTP/{self.version})"


class RequestParser:
    """Turns the bytes of one connection into request events (see the module docstring)."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self.max_head_bytes = max_head_bytes
        self.events: deque[RequestHead | bytes | RequestError] = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # fed since the current head began; bounded by max_head_bytes
        self._in_head = True  # between requests or inside a head (not in a body)
        #: set once the stream can hold no further request (an error, an upgrade)
        self.finished = False

    @property
    def idle(self) -> bool:
        """Nothing of a next request has arrived (the keep-alive wait, not a slow head)."""
        return self._in_head and not self._url and not self._head_bytes

    def feed(self, data: bytes) -> None:
        """Parse ``data``; events (and any refusal) are appended to :attr:`events`."""
        if self.finished:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._fail(RequestError(431, "Request Header Fields Too Large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.finished = True  # an Upgrade or CONNECT: the request is served, then closed
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, RequestError) else bad_request(str(exc)))
        except httptools.HttpParserError as exc:
            if self._in_head:
                self._fail(bad_request(_describe(exc)))
            else:  # a broken body: the application sees a failed read
                self._fail(bad_request(f"invalid body - {exc}"))

    def next_event(self) -> RequestHead | bytes | RequestError | None:
        """The oldest event, or None when more bytes are needed."""
        return self.events.popleft() if self.events else None

    def _fail(self, error: RequestError) -> None:
        self.finished = True
        self.events.append(error)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url.append(url)  # llhttp may hand the target over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version.startswith("0."):
                raise bad_request("malformed HTTP request")
            raise RequestError(505, "HTTP Version Not Supported", "unsupported protocol version")
        method = parser.get_method()
        url = self._url
        headers = self._headers
        head = RequestHead(
            _METHODS.get(method) or method.decode("latin-1"),
            url[0] if len(url) == 1 else b"".join(url),
            version,
            headers,
            parser.should_keep_alive(),
        )
        for name, value in headers:
            if len(name) in _FRAMING_NAME_LENGTHS:
                _frame(head, name.lower(), value)
        self._in_head = False
        self._head_bytes = 0
        self._url = []
        self._headers = []
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._headers = []  # drops chunked trailers, which llhttp reports as headers
        self.events.append(END)

#: the lengths of the names _frame() acts on: other headers are passed over by length alone
_FRAMING_NAME_LENGTHS = frozenset((len(b"content-length"), len(b"transfer-encoding"),
                                   len(b"expect")))


def _frame(head: RequestHead, name: bytes, value: bytes) -> None:
    """Content-Length, Transfer-Encoding and Expect (``name`` lowercased), as net/http reads
    them."""
    if name == b"content-length":
        head.content_length = int(value)  # llhttp accepted digits only, once
    elif name == b"transfer-encoding":
        if value.strip().lower() != b"chunked":
            raise RequestError(501, "Not Implemented", "unsupported transfer encoding")
        head.content_length = None
    elif name == b"expect":
        if value.strip().lower() != b"100-continue":
            raise RequestError(417, "Expectation Failed")
        head.expect_continue = head.version == "1.1"


def _describe(exc: Exception) -> str:
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return "invalid method"
    return f"malformed HTTP request - {exc}"

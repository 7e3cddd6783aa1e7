"""HTTP conventions shared by nsqd's and nsqlookupd's APIs, on Flask.

nsqd 1.3.0 routes with julienschmidt/httprouter and answers through `http_api.V1`; clients such as
nsqadmin, pynsq and gnsq read the exact statuses, headers and bodies that produces, so this module
reproduces them: V1 bodies, `{"message": ...}` errors, 404/405/OPTIONS/HEAD, trailing-slash
redirects, query-string parameters parsed as Go's `url.ParseQuery`, and JSON written the way Go's
`encoding/json` writes it.

Handlers are registered with :func:`route` (one rule per path, all its methods) and return data:
a ``str``/``bytes`` is the body, ``None`` an empty 200, a ``dict``/``list`` JSON. They raise
:class:`HTTPError` for failures.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from http import HTTPStatus
from socket import socket
from typing import Any, Protocol
from urllib.parse import quote

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from gnsq_server.gosyntax import format_duration_ns
from gnsq_server.httpserver import HTTPServer
from gnsq_server.wire import is_valid_name

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
NSQ_CONTENT_TYPE_HEADER = "X-NSQ-Content-Type"
NSQ_CONTENT_TYPE = "nsq; version=1.0"

#: Methods a rule accepts at the Werkzeug level; anything else is a 405 from Werkzeug itself.
_HANDLED_EXTRA = ("OPTIONS",)


class HTTPError(Exception):
    """A failure rendered as ``{"message": <message>, **fields}`` with ``status``.

    ``fields`` exist for nsqd's one hand-written error body (``TLS_REQUIRED`` + ``https_port``),
    which Go prints with a space after each colon and comma; bodies with extra fields are
    written the same way so that case matches byte for byte.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})

    def body(self) -> str:
        if not self.fields:
            return go_json({"message": self.message})
        return go_json({"message": self.message, **self.fields}, spaced=True)


# ---------------------------------------------------------------------------------------------
# JSON as Go's encoding/json writes it


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_ESCAPE_RE = re.compile('[\\x00-\\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _ESCAPES:
        return _ESCAPES[char]
    if "\ud800" <= char <= "\udfff":
        # Lone surrogates stand for undecodable bytes (surrogateescape); Go writes U+FFFD.
        return "\ufffd"
    return f"\\u{ord(char):04x}"


def _go_string(value: str) -> str:
    return '"' + _ESCAPE_RE.sub(_escape_char, value) + '"'


def _go_float(value: float) -> str:
    """Format a float64 as encoding/json does: shortest digits, exponent only outside 1e-6..1e21."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value!r}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    prefix = "-" if sign else ""
    if 1e-6 <= abs(value) < 1e21:
        return prefix + format(Decimal(repr(abs(value))).normalize(), "f")
    exp10 = exponent + len(mantissa) - 1
    head = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    exp_text = f"+{exp10:02d}" if exp10 >= 0 else f"-{-exp10}"
    return f"{prefix}{head}e{exp_text}"


def go_json(value: Any, *, spaced: bool = False) -> str:
    """Serialise ``value`` byte-for-byte as Go's json.Marshal (dict order is the struct order)."""
    item_sep, key_sep = (", ", ": ") if spaced else (",", ":")
    parts: list[str] = []

    def emit(obj: Any) -> None:
        if obj is None:
            parts.append("null")
        elif obj is True:
            parts.append("true")
        elif obj is False:
            parts.append("false")
        elif isinstance(obj, str):
            parts.append(_go_string(obj))
        elif isinstance(obj, int):
            parts.append(str(obj))
        elif isinstance(obj, float):
            parts.append(_go_float(obj))
        elif isinstance(obj, Mapping):
            parts.append("{")
            for index, (key, item) in enumerate(obj.items()):
                if index:
                    parts.append(item_sep)
                parts.append(_go_string(str(key)))
                parts.append(key_sep)
                emit(item)
            parts.append("}")
        elif isinstance(obj, (list, tuple)):
            parts.append("[")
            for index, item in enumerate(obj):
                if index:
                    parts.append(item_sep)
                emit(item)
            parts.append("]")
        else:
            raise TypeError(f"cannot encode {type(obj).__name__} as JSON")

    emit(value)
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Responses
#
# Rendered as plain parts first, ``(status line, headers, body)``: the fast lane sends those as
# they are and Flask wraps them in a Response, so both paths answer byte for byte alike.

Parts = tuple[str, list[tuple[str, str]], bytes]


def v1_parts(data: Any, status: int = 200) -> Parts:
    """A handler's return value as nsqd's ``http_api.RespondV1`` renders it."""
    if data.__class__ is str and data == "OK" and status == 200:
        return _V1_OK  # /pub and /mpub's answer, rendered once (parts are never changed)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if isinstance(data, bytes):
        # Go sets X-NSQ first and sniffs the Content-Type when the body is written.
        headers = [(NSQ_CONTENT_TYPE_HEADER, NSQ_CONTENT_TYPE)]
        if data:
            headers.append(("Content-Type", TEXT_CONTENT_TYPE))
        return _parts(data, status, headers)
    if data is None:
        return _parts(b"", status, [(NSQ_CONTENT_TYPE_HEADER, NSQ_CONTENT_TYPE)])
    body = go_json(data).encode("utf-8", "surrogateescape")
    return _json_parts(body, status)


def error_parts(error: HTTPError) -> Parts:
    """An :class:`HTTPError` as the JSON ``{"message": ...}`` body V1 clients expect."""
    body = error.body().encode("utf-8", "surrogateescape")
    status, headers, body = _json_parts(body, error.status)
    if error.headers:
        headers = [*error.headers.items(), *headers]
    return status, headers, body


def plain_text_parts(data: str | bytes, status: int = 200) -> Parts:
    """Like ``http_api.PlainText`` (used by /ping): no X-NSQ header, errors as text."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    headers = [("Content-Type", TEXT_CONTENT_TYPE)] if data else []
    return _parts(data, status, headers)


def v1_response(data: Any, status: int = 200) -> Response:
    return parts_response(v1_parts(data, status))


def error_response(error: HTTPError) -> Response:
    return parts_response(error_parts(error))


def plain_text_response(data: str | bytes, status: int = 200) -> Response:
    return parts_response(plain_text_parts(data, status))


def parts_response(parts: Parts) -> Response:
    """Rendered parts as a Flask Response, headers in the order the fast lane sends them."""
    status, headers, body = parts
    response = Response(body, status=status)
    # Werkzeug adds a default text/html Content-Type and its own Content-Length.
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    for name, value in headers:
        response.headers[name] = value
    response.headers["Content-Length"] = str(len(body))
    return response


def _json_parts(body: bytes, status: int) -> Parts:
    headers = [
        ("Content-Type", JSON_CONTENT_TYPE),
        (NSQ_CONTENT_TYPE_HEADER, NSQ_CONTENT_TYPE),
    ]
    return _parts(body, status, headers)


#: Status lines with Go's reason phrases (where they differ from newer Python's).
_STATUS_LINES = {
    **{int(status): f"{int(status)} {status.phrase}" for status in HTTPStatus},
    413: "413 Request Entity Too Large",
}


def _parts(body: bytes, status: int, headers: list[tuple[str, str]]) -> Parts:
    """The server adds Content-Length (and Date, Connection) when it frames the body."""
    return _STATUS_LINES.get(status) or f"{status} status code", headers, body


_V1_OK = v1_parts(b"OK")


# ---------------------------------------------------------------------------------------------
# Query strings, as Go's url.ParseQuery reads them


def _unescape(text: str) -> str:
    """Go's QueryUnescape: ``+`` is a space, ``%XX`` a byte, any other ``%`` an error."""
    raw = bytearray()
    data = text.encode("latin-1")
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25:  # %
            pair = data[i + 1 : i + 3]
            if len(pair) < 2 or not all(chr(c) in "0123456789abcdefABCDEF" for c in pair):
                raise ValueError(f"invalid URL escape {data[i : i + 3]!r}")
            raw.append(int(pair, 16))
            i += 3
            continue
        raw.append(0x20 if byte == 0x2B else byte)
        i += 1
    return raw.decode("utf-8", "surrogateescape")


def parse_query(raw: str | bytes) -> dict[str, list[str]]:
    """Parse a raw query string as Go's url.ParseQuery; ValueError where Go returns an error.

    Go keeps parsing after a bad piece, but nsqd rejects the whole request on any error, so
    raising at the first one gives the same answer.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if ";" in raw:  # Go 1.17+ refuses ';' anywhere in a piece, value included
        raise ValueError("invalid semicolon separator in query")
    escaped = "%" in raw or "+" in raw
    if not escaped:  # the usual ?topic=name: one decode for the whole string
        raw = raw.encode("latin-1").decode("utf-8", "surrogateescape")
    values: dict[str, list[str]] = {}
    for piece in raw.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        if escaped:
            key, value = _unescape(key), _unescape(value)
        values.setdefault(key, []).append(value)
    return values


def request_params(raw: str) -> dict[str, list[str]]:
    """Query parameters as nsqd's handlers read them: 400 INVALID_REQUEST when they do not parse."""
    try:
        return parse_query(raw)
    except ValueError as exc:
        logger.error("failed to parse request params - %s", exc)
        raise HTTPError(400, "INVALID_REQUEST") from None


def query_params() -> dict[str, list[str]]:
    """The current (Flask) request's query parameters; see :func:`request_params`."""
    return request_params(request.environ.get("QUERY_STRING", ""))


def first(params: Mapping[str, list[str]], key: str) -> str | None:
    """The first value of ``key`` (Go's ``ReqParams.Get``), or None when absent."""
    values = params.get(key)
    return values[0] if values else None


def required(params: Mapping[str, list[str]], name: str) -> str:
    """A parameter that must be there: 400 MISSING_ARG_<NAME> otherwise."""
    value = first(params, name)
    if value is None:
        raise HTTPError(400, f"MISSING_ARG_{name.upper()}")
    return value


def topic_channel_args(params: Mapping[str, list[str]]) -> tuple[str, str]:
    """nsq's http_api.GetTopicChannelArgs: both present and valid, checked in this order."""
    topic = required(params, "topic")
    if not is_valid_name(topic):
        raise HTTPError(400, "INVALID_ARG_TOPIC")
    channel = required(params, "channel")
    if not is_valid_name(channel):
        raise HTTPError(400, "INVALID_ARG_CHANNEL")
    return topic, channel


def read_body(limit: int) -> bytes:
    """Read at most ``limit`` bytes of the request body, so a huge body is never held whole.

    Callers pass their maximum + 1, as nsqd does with io.LimitReader, to tell "exactly the
    maximum" from "too big".
    """
    stream = request.stream
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Routing


Handler = Callable[..., Any]

#: ``app.extensions`` key of the fast lane: ``(method, path)`` -> handler giving :data:`Parts`
FAST_LANE = "gnsq_server.fast_lane"


class PlainRequest(Protocol):
    """What a fast-lane handler may use of a request: no Flask, so the server can call it
    without building Flask's request (see httpserver.FastRequest)."""

    method: str
    path: str
    query_string: str
    content_length: int | None
    remote_addr: str
    remote_port: str

    def read(self, limit: int) -> bytes:
        """The body up to ``limit`` bytes (all of it when shorter)."""


class _FlaskRequest:
    """A :class:`PlainRequest` over Flask's current request (fast-lane routes hosted by Flask)."""

    __slots__ = ("method", "path", "query_string", "content_length", "remote_addr",
                 "remote_port")

    def __init__(self) -> None:
        environ = request.environ
        self.method = request.method
        self.path = environ.get("PATH_INFO", "")
        self.query_string = environ.get("QUERY_STRING", "")
        self.content_length = request.content_length
        self.remote_addr = environ.get("REMOTE_ADDR", "")
        self.remote_port = str(environ.get("REMOTE_PORT", ""))

    def read(self, limit: int) -> bytes:
        return read_body(limit)


def create_flask_app(import_name: str) -> Flask:
    """A Flask app with httprouter's behaviour for unknown paths, wrong methods and panics."""
    app = Flask(import_name)
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = True
    app.register_error_handler(HTTPError, error_response)
    app.register_error_handler(HTTPException, _routing_error)
    app.register_error_handler(Exception, _internal_error)
    return app


def route(
    app: Flask,
    path: str,
    methods: Iterable[str],
    *,
    v1: bool = True,
    log: bool = True,
    fast_lane: bool = False,
) -> Callable[[Handler], Handler]:
    """Register ``handler`` for every method of ``path`` (a Werkzeug rule, e.g. ``/config/<opt>``).

    ``v1=False`` renders with ``http_api.PlainText`` (nsqd's /ping). ``log=False`` skips the
    per-request INFO line, as nsqd does for /pub and /mpub. ``fast_lane=True`` (a fixed path)
    passes the handler a :class:`PlainRequest` as its one argument and also registers it in
    the app's fast lane, where our server calls it straight from the parsed request; Flask's
    view runs the same handler and rendering, so both answer alike.
    """
    declared = tuple(m.upper() for m in methods)

    def decorator(handler: Handler) -> Handler:
        def view(**kwargs: Any) -> Response:
            if request.method == "OPTIONS" and "OPTIONS" not in declared:
                return _options_response(_allow_header(declared))
            if request.method == "HEAD" and "HEAD" not in declared:
                # Werkzeug routes HEAD to GET rules; httprouter has no HEAD routes at all.
                raise HTTPError(
                    405, "METHOD_NOT_ALLOWED", headers={"Allow": _allow_header(declared)}
                )
            req = _FlaskRequest()
            if fast_lane:
                answer = _answer(handler, (req,), {}, req, v1, log)
            else:
                answer = _answer(handler, (), kwargs, req, v1, log)
            return answer if isinstance(answer, Response) else parts_response(answer)

        view.__name__ = handler.__name__
        app.add_url_rule(
            path,
            endpoint=f"{handler.__name__}:{path}",
            view_func=view,
            methods=[*declared, *_HANDLED_EXTRA],
            provide_automatic_options=False,
        )
        if fast_lane:

            def fast_view(req: PlainRequest) -> Parts:
                return _answer(handler, (req,), {}, req, v1, log)

            lane = app.extensions.setdefault(FAST_LANE, {})
            for method in declared:
                lane[(method, path.encode("latin-1"))] = fast_view
        return handler

    return decorator


def _answer(
    handler: Handler,
    args: tuple,
    kwargs: dict,
    req: PlainRequest,
    v1: bool,
    log: bool,
) -> Parts | Response:
    """Run a handler and render what it returns or raises; log the request if asked."""
    started = time.perf_counter() if log else 0.0
    status = 200
    try:
        data = handler(*args, **kwargs)
    except HTTPError as exc:
        status = exc.status
        return error_parts(exc) if v1 else plain_text_parts(exc.message, exc.status)
    except HTTPException:
        status = 500
        raise  # Werkzeug's own (Flask path only): rendered by _routing_error
    except Exception as exc:
        status = 500
        logger.exception("panic in HTTP handler - %s", exc)
        return error_parts(HTTPError(500, "INTERNAL_ERROR"))
    finally:
        if log:
            _log_request(req, status, started)
    if isinstance(data, Response):
        return data
    return v1_parts(data) if v1 else plain_text_parts(data)


def _allow_header(methods: Iterable[str]) -> str:
    allowed = {m for m in methods if m != "HEAD"} | {"OPTIONS"}
    return ", ".join(sorted(allowed))


def _options_response(allow: str) -> Response:
    return parts_response(_parts(b"", 200, [("Allow", allow)]))


def _log_request(req: PlainRequest, status: int, started: float) -> None:
    elapsed_ns = int((time.perf_counter() - started) * 1e9)
    uri = f"{req.path}?{req.query_string}" if req.query_string else req.path
    logger.info(
        "%d %s %s (%s:%s) %s",
        status,
        req.method,
        uri,
        req.remote_addr,
        req.remote_port,
        format_duration_ns(elapsed_ns),
    )


def _routing_error(exc: HTTPException) -> Response:
    if isinstance(exc, MethodNotAllowed):
        allow = _allow_header(exc.valid_methods or ())
        if request.method == "OPTIONS":
            return _options_response(allow)
        return error_response(HTTPError(405, "METHOD_NOT_ALLOWED", headers={"Allow": allow}))
    if isinstance(exc, NotFound):
        redirect = _trailing_slash_redirect()
        if redirect is not None:
            return redirect
        return error_response(HTTPError(404, "NOT_FOUND"))
    return error_response(HTTPError(exc.code or 500, (exc.name or "ERROR").upper()))


def _trailing_slash_redirect() -> Response | None:
    """httprouter's RedirectTrailingSlash: 301 for GET, 307 for other methods, same query."""
    path = request.environ.get("PATH_INFO", "")
    method = request.method
    if path == "/" or method in ("HEAD", "OPTIONS", "CONNECT"):
        return None
    other = path[:-1] if path.endswith("/") else path + "/"
    adapter = current_app.create_url_adapter(request)
    if adapter is None:  # pragma: no cover - only outside a request
        return None
    try:
        adapter.match(other, method=method)
    except HTTPException:
        return None
    location = quote(other.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    query = request.environ.get("QUERY_STRING", "")
    if query:
        location = f"{location}?{query}"
    if method == "GET":
        escaped = (
            location.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&#34;")
            .replace("'", "&#39;")
        )
        body = f'<a href="{escaped}">Moved Permanently</a>.\n\n'.encode()
        headers = [("Content-Type", HTML_CONTENT_TYPE), ("Location", location)]
        return parts_response(_parts(body, 301, headers))
    return parts_response(_parts(b"", 307, [("Location", location)]))


def _internal_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPError):  # pragma: no cover - the specific handler wins
        return error_response(exc)
    logger.exception("panic in HTTP handler - %s", exc)
    return error_response(HTTPError(500, "INTERNAL_ERROR"))


# ---------------------------------------------------------------------------------------------
# Serving


def make_server(app: Flask, listener: socket, ssl_context: Any = None) -> HTTPServer:
    """Our HTTP server for ``app`` on a bound, listening socket, with the app's fast lane.

    The fast lane is left out when the app has request hooks (e.g. nsqd's --tls-required gate),
    because its handlers would skip them. ``ssl_context`` makes it HTTPS.
    """
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    has_hooks = any(funcs for table in hooks for funcs in table.values())
    lane = {} if has_hooks else app.extensions.get(FAST_LANE, {})
    return HTTPServer(listener, app, fast_lane=lane, ssl_context=ssl_context)

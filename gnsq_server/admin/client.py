"""The HTTP client gnsqadmin talks to nsqlookupd, nsqd and the notification endpoint with (glue:
the only socket user)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import gevent

from gnsq_server.admin.cluster import UpstreamError

#: nsqadmin's Accept header; 1.x daemons answer the same without it.
ACCEPT = "application/vnd.nsq; version=1.0"
MAX_RESPONSE = 64 << 20


def tls_context(
    insecure_skip_verify: bool = False, root_ca_file: str = "", cert: str = "", key: str = ""
) -> ssl.SSLContext:
    """The client TLS settings of nsqadmin's ``--http-client-tls-*`` flags (for https:// URLs)."""
    context = ssl.create_default_context(cafile=root_ca_file or None)
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


class _Connection(http.client.HTTPConnection):
    """Connects within ``connect_timeout``; then each read waits up to ``timeout``."""

    def __init__(self, host: str, port: int | None, connect_timeout: float, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        self.sock.settimeout(self.timeout)


class _TLSConnection(_Connection):
    def __init__(self, host: str, port: int | None, connect_timeout: float, timeout: float,
                 context: ssl.SSLContext):
        super().__init__(host, port or 443, connect_timeout, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


class HTTPFetcher:
    """``fetch(method, url, body=None)``: the decoded JSON body, None when empty, or UpstreamError.

    As nsqadmin's deadline transport: ``connect_timeout`` bounds the TCP connect only, and
    ``request_timeout`` the whole exchange (connect, request, response).
    """

    def __init__(
        self,
        connect_timeout: float = 2.0,
        request_timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.tls = tls or ssl.create_default_context()

    def __call__(self, method: str, url: str, body: bytes | None = None) -> Any:
        with gevent.Timeout(self.request_timeout, UpstreamError("request timed out")):
            status, data = self._exchange(method, url, body)
        if status >= 300:
            raise UpstreamError(f"{status} {_message(data[:4096])}")
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def _exchange(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        parts = urlsplit(url)
        connect_timeout = min(self.connect_timeout, self.request_timeout)
        try:
            if parts.scheme == "https":
                conn: _Connection = _TLSConnection(parts.hostname or "", parts.port,
                                                   connect_timeout, self.request_timeout, self.tls)
            else:
                conn = _Connection(parts.hostname or "", parts.port, connect_timeout,
                                   self.request_timeout)
            headers = {"Accept": ACCEPT}
            if body is not None:
                headers["Content-Type"] = "application/json"
            path = parts.path or "/"
            if parts.query:
                path += f"?{parts.query}"
            if body is None and method in ("POST", "PUT"):
                body = b""
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read(MAX_RESPONSE)
            finally:
                conn.close()
        except TimeoutError:
            raise UpstreamError("timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from None


def _message(body: bytes) -> str:
    """The ``message`` of an NSQ error body, else the body's text."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "error"

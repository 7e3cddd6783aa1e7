"""The HTTP client gnsqadmin talks to nsqlookupd and nsqd with (glue: the only socket user)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import gevent

from gnsq_server.admin.cluster import UpstreamError

#: nsqadmin's Accept header; 1.x daemons answer the same without it.
ACCEPT = "application/vnd.nsq; version=1.0"
MAX_RESPONSE = 64 << 20


class HTTPFetcher:
    """``fetch(method, url)``: the decoded JSON body, None when empty, or UpstreamError.

    ``urllib`` has one timeout for connect and each read; the connect timeout bounds the socket
    connect and the request timeout the whole exchange (gevent.Timeout), as nsqadmin's
    deadline transport does.
    """

    def __init__(self, connect_timeout: float = 2.0, request_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    def __call__(self, method: str, url: str) -> Any:
        request = urllib.request.Request(url, method=method, headers={"Accept": ACCEPT})
        if method in ("POST", "PUT"):
            request.data = b""
        try:
            with gevent.Timeout(self.request_timeout, UpstreamError("request timed out")):
                with urllib.request.urlopen(request, timeout=self.connect_timeout) as response:
                    body = response.read(MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            raise UpstreamError(f"{exc.code} {_message(exc.read(4096))}") from None
        except (TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UpstreamError(str(reason)) from None
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body.decode("utf-8", "replace")


def _message(body: bytes) -> str:
    """The ``message`` of an NSQ error body, else the body's text."""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "error"

"""Admin-action notifications: nsqadmin's ``--notification-http-endpoint`` JSON POSTs.

Every action (create, delete, pause, unpause, empty, tombstone) becomes one ``AdminAction``
document, queued and POSTed by one background greenlet so that a slow endpoint never delays the
action's reply. The document has nsqadmin's keys; ``channel``, ``node`` and ``user`` are left out
when empty, as Go's ``omitempty`` does.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import gevent
from gevent.queue import Queue

logger = logging.getLogger(__name__)

#: ``post(url, body)`` sends one notification; raises on failure.
Post = Callable[[str, bytes], Any]


def basic_auth_user(authorization: str) -> str:
    """The user name of a ``Basic`` Authorization header, else ``""``."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme != "Basic" or not encoded:
        return ""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8", "replace")
    except ValueError:
        return ""
    user, sep, _password = decoded.partition(":")
    return user if sep else ""


def admin_action(
    action: str,
    topic: str,
    channel: str,
    node: str,
    *,
    headers: Mapping[str, str],
    remote_addr: str,
    url: str,
    now: float | None = None,
    via: str | None = None,
) -> dict[str, Any]:
    """The AdminAction document nsqadmin POSTs for one action of one request."""
    document: dict[str, Any] = {"action": action, "topic": topic}
    if channel:
        document["channel"] = channel
    if node:
        document["node"] = node
    document["timestamp"] = int(time.time() if now is None else now)
    user = basic_auth_user(headers.get("Authorization", ""))
    if user:
        document["user"] = user
    document["remote_ip"] = remote_addr
    document["user_agent"] = headers.get("User-Agent", "")
    document["url"] = url
    document["via"] = socket.gethostname() if via is None else via
    return document


class Notifier:
    """Queues AdminAction documents and POSTs them to ``endpoint`` in order, in the background."""

    def __init__(self, endpoint: str, post: Post) -> None:
        self.endpoint = endpoint
        self.post = post
        self._queue: Queue[dict[str, Any]] = Queue()
        self._worker: gevent.Greenlet | None = None

    def notify(self, document: dict[str, Any]) -> None:
        """Queue one document (never blocks); nothing happens without an endpoint."""
        if not self.endpoint:
            return
        if self._worker is None:
            self._worker = gevent.spawn(self._send_forever)
        self._queue.put(document)

    def _send_forever(self) -> None:
        for document in self._queue:
            logger.info("POSTing notification to %s", self.endpoint)
            try:
                self.post(self.endpoint, json.dumps(document).encode())
            except Exception as exc:  # the endpoint's failure must not stop later notifications
                logger.error("failed to POST notification - %s", exc)

    def stop(self) -> None:
        """Stop sending (queued documents not yet sent are dropped)."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

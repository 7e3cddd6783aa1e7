"""Response heads of whole HTTP answers (status, headers, Content-Length, Date, Connection),
built once a second and reused: the server's fast lane answers the same few heads thousands
of times a second, and formatting them was a tenth of a request's work."""

from __future__ import annotations

import time
from email.utils import formatdate

#: The end of a response head: (keep the connection, request version) -> Connection line
CONNECTION_LINES = {
    (True, "1.1"): "\r\n",
    (True, "1.0"): "Connection: keep-alive\r\n\r\n",
    (False, "1.1"): "Connection: close\r\n\r\n",
    (False, "1.0"): "Connection: close\r\n\r\n",
}


class HeadCache:
    """Response heads of whole answers, built once a second: the Date header changes each
    second, and a busy /pub answers the same few heads thousands of times in between."""

    MAX_ENTRIES = 64

    def __init__(self) -> None:
        self.second = 0
        self.text = ""
        self.heads: dict[tuple, bytes] = {}

    def date(self) -> str:
        """The Date header's value, formatted once a second."""
        now = int(time.time())
        if now != self.second:
            self.second, self.text = now, formatdate(now, usegmt=True)
            self.heads = {}
        return self.text

    def get(self, status: str, headers: list[tuple[str, str]], length: int, keep: bool,
            version: str) -> bytes:
        """The head of a whole answer; ``headers`` hold no framing (see _Response.send)."""
        date = self.date()
        key = (status, *headers, length, keep, version)
        head = self.heads.get(key)
        if head is None:
            lines = [f"HTTP/1.1 {status}\r\n"]
            lines.extend(f"{name}: {value}\r\n" for name, value in headers)
            lines.append(f"Content-Length: {length}\r\nDate: {date}\r\n")
            lines.append(CONNECTION_LINES[keep, version])
            head = "".join(lines).encode("latin-1")
            if len(self.heads) >= self.MAX_ENTRIES:
                self.heads = {}
            self.heads[key] = head
        return head


#: the process's cache (one clock, one Date)
HEADS = HeadCache()

"""A connected socket made cooperative with two libev watchers, for short HTTP connections.

gevent's socket class is pure Python and general (timeouts, makefile, dup, cancel-on-close):
building one for an accepted connection and closing it costs ~30 us, a fifth of serving a
one-request connection (curl in a loop, ``ab``). The HTTP server needs recv, send, shutdown,
setsockopt and close, each waiting on the hub the way gevent's own socket does. Timeouts are
the server's sweep, which shuts a stuck socket down from another greenlet: the blocked call
then returns (EOF) or fails (EPIPE) and the owner closes it.
"""

from __future__ import annotations

import _socket
from typing import Any

from gevent import get_hub

_READ, _WRITE = 1, 2


class RawSocket:
    """A non-blocking ``_socket.socket`` whose calls wait on the hub when they would block."""

    __slots__ = ("_sock", "_hub", "_read", "_write")

    def __init__(self, sock: _socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        hub = self._hub = get_hub()
        fileno = sock.fileno()
        self._read = hub.loop.io(fileno, _READ)
        self._write = hub.loop.io(fileno, _WRITE)

    @classmethod
    def accepted(cls, listener: Any) -> tuple[RawSocket, Any] | None:
        """The next connection on a listening socket, or None when none is waiting."""
        try:
            fileno, address = listener._accept()
        except BlockingIOError:
            return None
        return cls(_socket.socket(listener.family, listener.type, 0, fileno)), address

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self._sock.recv(size)
            except BlockingIOError:
                self._hub.wait(self._read)

    def recv_when_readable(self, size: int) -> bytes:
        """recv() for when the peer has surely sent nothing yet (it awaits our answer): waiting
        first spares the recv() that would fail with EAGAIN, and its exception."""
        self._hub.wait(self._read)
        return self.recv(size)

    def send(self, data: bytes | memoryview) -> int:
        while True:
            try:
                return self._sock.send(data)
            except BlockingIOError:
                self._hub.wait(self._write)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        """Only from the greenlet that owns the socket (which is then not waiting on it)."""
        self._read.close()
        self._write.close()
        self._sock.close()

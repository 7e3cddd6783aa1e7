"""What every daemon does the same way: bind listeners, name addresses, live until signalled."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent import socket
from gevent.event import Event

from .gosyntax import split_host_port

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class ListenError(OSError):
    """A listener could not be bound; names the address the operator configured."""

    def __init__(self, address: str, cause: OSError, kind: str = "") -> None:
        prefix = f"{kind}: " if kind else ""
        super().__init__(f"{prefix}listen ({address}) failed - {cause}")
        self.address = address


def listen(address: str, kind: str = "") -> socket.socket:
    """Bind and listen on `address` with SO_REUSEADDR (a restart rebinds at once); port 0
    picks a free port."""
    try:
        host, port = split_host_port(address)
        family, sock_type, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, sock_type, proto)
    except (OSError, ValueError) as exc:
        raise ListenError(address, OSError(str(exc)), kind) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(address, exc, kind) from exc
    return sock


def format_address(address: Any) -> str:
    """`ip:port` as Go's net.Addr prints it (IPv6 in brackets)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Daemon(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_until_signalled(server: Daemon, background: Callable[[], None] | None = None) -> int:
    """Start, serve until SIGTERM or SIGINT, stop cleanly: the CLI's exit status.

    The handlers go in before start() so that a signal arriving while starting still stops
    cleanly; a failure to start (a listener, the data path) is one line and status 1.
    """
    stop_requested = Event()
    handlers = [
        gevent.signal_handler(signum, stop_requested.set)
        for signum in (signal.SIGTERM, signal.SIGINT)
    ]
    try:
        try:
            server.start()
        except OSError as err:
            log.critical("%s", err.strerror or err)
            return 1
        helper = gevent.spawn(background) if background is not None else None
        stop_requested.wait()
        if helper is not None:
            helper.kill()
        server.stop()
        return 0
    finally:
        for handler in handlers:
            handler.cancel()

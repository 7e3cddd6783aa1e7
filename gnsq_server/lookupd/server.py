"""Wiring and lifecycle of nsqlookupd: one registration db, a TCP and an HTTP listener."""

from __future__ import annotations

import logging
import socket as stdlib_socket

from gevent.server import StreamServer

from gnsq_server import NSQ_VERSION
from gnsq_server.config import Options
from gnsq_server.httpapi import make_server
from gnsq_server.httpserver import HTTPServer
from gnsq_server.lookupd.http import create_app
from gnsq_server.lookupd.protocol_v1 import LookupProtocolV1
from gnsq_server.lookupd.registry import RegistrationDB
from gnsq_server.lookupd.tcp import TCPHandler
from gnsq_server.serving import ListenError, format_address, listen, run_until_signalled

logger = logging.getLogger(__name__)

#: How long stop() lets client greenlets finish after their sockets were shut down.
STOP_TIMEOUT = 1.0


class LookupdServer:
    """An nsqlookupd: `start()` binds both listeners and returns; `stop()` closes everything."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.db = RegistrationDB()
        self.hostname = stdlib_socket.gethostname()
        self.protocol = LookupProtocolV1(self.db, self.identify_info)
        self.tcp_handler = TCPHandler(self.protocol)
        self.app = create_app(self.db, opts.inactive_producer_timeout, opts.tombstone_lifetime)
        self.tcp_port: int | None = None
        self.http_port: int | None = None
        self._tcp_server: StreamServer | None = None
        self._http_server: HTTPServer | None = None

    def identify_info(self) -> dict[str, object]:
        """What IDENTIFY answers; nsqd uses broadcast_address and http_port to call /channels."""
        return {
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "version": NSQ_VERSION,
            "broadcast_address": self.opts.broadcast_address,
            "hostname": self.hostname,
        }

    def start(self) -> None:
        """Bind TCP then HTTP (raising ListenError, with nothing left open) and start serving."""
        tcp_listener = listen(self.opts.tcp_address)
        try:
            http_listener = listen(self.opts.http_address)
        except ListenError:
            tcp_listener.close()
            raise
        tcp_name = tcp_listener.getsockname()
        http_name = http_listener.getsockname()
        self.tcp_port, self.http_port = tcp_name[1], http_name[1]

        self._tcp_server = StreamServer(tcp_listener, self.tcp_handler)
        self._tcp_server.start()
        logger.info("TCP: listening on %s", format_address(tcp_name))
        self._http_server = make_server(self.app, http_listener)
        self._http_server.start()
        logger.info("HTTP: listening on %s", format_address(http_name))

    def stop(self) -> None:
        """Close the listeners, then the client connections (which unregister as they go)."""
        logger.info("LOOKUPD: closing")
        if self._tcp_server is not None:
            logger.info("TCP: closing %s", format_address(self._tcp_server.socket.getsockname()))
            self._tcp_server.close()
            self.tcp_handler.close_all()
            self._tcp_server.stop(timeout=STOP_TIMEOUT)
            self._tcp_server = None
        if self._http_server is not None:
            logger.info("HTTP: closing %s", format_address(self._http_server.socket.getsockname()))
            self._http_server.stop(timeout=STOP_TIMEOUT)
            self._http_server = None
        logger.info("LOOKUPD: bye")


def run(opts: Options) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop, 1 when a listener cannot be bound."""
    return run_until_signalled(LookupdServer(opts))

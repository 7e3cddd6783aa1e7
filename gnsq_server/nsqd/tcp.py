"""The TCP listener's per-connection handler: check the magic, then run protocol V2."""

from __future__ import annotations

import itertools
import logging
import socket

from ..serving import format_address
from ..wire import MAGIC_V2, FatalClientError, error_frame
from .client import CLIENT_TIMEOUT, Client
from .protocol_v2 import ProtocolV2
from .transport import make_reader

log = logging.getLogger(__name__)

#: bytes read from the socket at a time; MPUB batches arrive in few large reads
READ_BUFFER_SIZE = 64 * 1024


class TCPHandler:
    """Called by gevent's StreamServer in a new greenlet for each connection."""

    def __init__(self, nsqd) -> None:
        self.nsqd = nsqd
        self._numbers = itertools.count(1)

    def __call__(self, sock: socket.socket, address: tuple) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CLIENT_TIMEOUT)
        # a reader whose source TLS/compression upgrades can swap underneath it
        reader = make_reader(sock, READ_BUFFER_SIZE)
        try:
            self._serve(sock, address, reader)
        finally:
            reader.close()

    def _serve(self, sock: socket.socket, address: tuple, reader) -> None:
        remote = format_address(address)
        try:
            magic = reader.read(4)
        except OSError:
            return
        if len(magic) < 4:
            return
        if magic != MAGIC_V2:
            log.error("client(%s) bad protocol magic %r", remote, magic)
            try:
                sock.sendall(error_frame(FatalClientError("E_BAD_PROTOCOL")))
            except OSError:
                pass
            return
        log.info("TCP: new client(%s)", remote)
        client = Client(self.nsqd, sock, address, next(self._numbers))
        self.nsqd.clients[client.id] = client
        try:
            ProtocolV2(self.nsqd, client, reader).run()
        except OSError as err:
            log.info("PROTOCOL(V2): [%s] %s", remote, err or type(err).__name__)
        finally:
            client.wait_flushed()
            client.release()
            if client.sock is not sock:
                client.sock.close()  # the TLS socket that took over the connection
            self.nsqd.clients.pop(client.id, None)
            log.info(
                "PROTOCOL(V2): [%s] exiting ioloop (user agent %r)", remote, client.user_agent
            )

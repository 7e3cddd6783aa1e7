"""The TCP listener's per-connection handler: read the magic, then run protocol V1.

Each connection gets its own greenlet (gevent's StreamServer pool) written in blocking style.
"""

from __future__ import annotations

import logging
from typing import Any

from gevent.socket import socket as GeventSocket

from gnsq_server.lookupd.protocol_v1 import ClientV1, LookupProtocolV1, encode_response
from gnsq_server.serving import format_address
from gnsq_server.wire import MAGIC_V1

logger = logging.getLogger(__name__)

BAD_PROTOCOL_RESPONSE = encode_response(b"E_BAD_PROTOCOL")


class TCPHandler:
    """The StreamServer handler; tracks open connections so stop() can close them."""

    def __init__(self, protocol: LookupProtocolV1) -> None:
        self.protocol = protocol
        self.connections: set[GeventSocket] = set()

    def __call__(self, sock: GeventSocket, address: Any) -> None:
        remote = format_address(address)
        logger.info("TCP: new client(%s)", remote)
        self.connections.add(sock)
        reader = sock.makefile("rb")
        try:
            magic = reader.read(4)
            if len(magic) != 4:
                logger.error("failed to read protocol version from %s", remote)
                return
            if magic != MAGIC_V1:
                logger.error("client(%s) bad protocol magic %r", remote, magic)
                sock.sendall(BAD_PROTOCOL_RESPONSE)
                return
            logger.info("CLIENT(%s): desired protocol magic %r", remote, magic.decode("latin-1"))
            self.protocol.io_loop(ClientV1(remote), reader, sock.sendall)
        except OSError as exc:
            logger.info("CLIENT(%s): connection error - %s", remote, exc)
        finally:
            logger.info("CLIENT(%s): closing", remote)
            self.connections.discard(sock)
            reader.close()
            sock.close()

    def close_all(self) -> None:
        """Shut every client connection down; their greenlets then see EOF and unregister."""
        for sock in list(self.connections):
            try:
                sock.shutdown(2)
            except OSError:
                pass

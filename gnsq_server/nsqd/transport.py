"""What a connection reads from and writes to, and nsqd's in-band upgrades of it.

The command loop reads through one ``io.BufferedReader`` over a `ConnectionSource`. An
upgrade swaps the function the source reads with, so the reader object (and any bound method
the loop holds) stays valid. Writes go through ``Client.upgrade``, which runs each step in the
client's writer greenlet once everything queued before it has left by the old transport.

Upgrades happen in nsqd's order: TLS on the raw socket, then snappy or deflate on top of
whichever transport is current. Each is followed by an ``OK`` sent through the new transport.
"""

from __future__ import annotations

import io
import logging
import ssl
import time
from collections.abc import Callable

import gevent

from ..wire import OK_FRAME, FatalClientError
from . import tls as tls_names
from .compression import (
    CompressionError,
    Decoder,
    DeflateDecoder,
    DeflateEncoder,
    Encoder,
    SnappyDecoder,
    SnappyEncoder,
)

log = logging.getLogger(__name__)

RECV_SIZE = 64 * 1024
#: outgoing buffers are compressed this much at a time, yielding in between, so one client's
#: big batch cannot hold the hub for long
COMPRESS_SLICE = 64 * 1024


class ConnectionSource(io.RawIOBase):
    """The raw stream under a connection's BufferedReader; ``recv_into`` is swappable.

    It also keeps nsqd's read deadline: the command loop sets ``deadline`` (a monotonic
    time) before each command, and every read of that command, body included, must finish by
    then. The socket's own timeout is the shorter write deadline, so a read that times out
    before the command's deadline is simply retried. ``before_read`` runs before each read of
    the socket, when the commands buffered so far have all been handled.
    """

    def __init__(self, recv_into: Callable[[memoryview], int]) -> None:
        super().__init__()
        self.recv_into = recv_into
        self.deadline: float | None = None
        self.before_read: Callable[[], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.before_read is not None:
            self.before_read()
        while True:
            deadline = self.deadline
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("read deadline exceeded")
            try:
                return self.recv_into(buffer)
            except TimeoutError:
                if deadline is None:
                    raise


def _at_eof(buffer) -> int:
    return 0


def make_reader(sock, buffer_size: int) -> io.BufferedReader:
    return io.BufferedReader(ConnectionSource(sock.recv_into), buffer_size)


def peek_buffered(reader: io.BufferedReader) -> bytes:
    """The bytes the reader holds already, without touching the socket (b"" when none)."""
    source = reader.raw
    recv_into, source.recv_into = source.recv_into, _at_eof
    try:
        return reader.peek(1)
    finally:
        source.recv_into = recv_into


def take_buffered(reader: io.BufferedReader) -> bytes:
    """The bytes ``reader`` has already pulled off the wire but not handed out."""
    source = reader.raw
    recv_into, source.recv_into = source.recv_into, _at_eof
    try:
        return reader.read() or b""
    finally:
        source.recv_into = recv_into


class DecodingStream:
    """The plain stream under a compressed one: feeds wire bytes to a decoder as needed."""

    def __init__(self, decoder: Decoder, recv: Callable[[int], bytes], pending: bytes) -> None:
        self.decoder = decoder
        self.recv = recv
        if pending:
            decoder.feed(pending)

    def recv_into(self, buffer) -> int:
        decoder = self.decoder
        size = len(buffer)
        while True:
            try:
                data = decoder.read(size)
            except CompressionError as err:
                raise OSError(f"failed to read command - {err}") from None
            if data:
                count = len(data)
                buffer[:count] = data
                return count
            if decoder.finished:
                return 0
            chunk = self.recv(RECV_SIZE)
            if not chunk:
                return 0
            decoder.feed(chunk)
            gevent.sleep(0)  # decoding is CPU work: let other connections in between reads


def plain_writer(sock) -> Callable[[bytes], None]:
    """sendall for a plain gevent socket that first tries one non-blocking send: a small
    reply usually fits the socket buffer at once, and gevent's sendall costs a getsockopt
    call and a clock reading or two per buffer even then."""
    send, sendall = sock.send, sock.sendall

    def write(data: bytes) -> None:
        try:
            sent = send(data, 0, 0.0)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            sendall(memoryview(data)[sent:])

    return write


def compressed_writer(encoder: Encoder, sendall: Callable[[bytes], None]):
    """A write function that compresses each buffer (sliced for big ones) before sending."""
    encode = encoder.encode

    def write(data: bytes) -> None:
        if len(data) <= COMPRESS_SLICE:
            sendall(encode(data))
            return
        for start in range(0, len(data), COMPRESS_SLICE):
            sendall(encode(data[start : start + COMPRESS_SLICE]))
            gevent.sleep(0)

    return write


def upgrade(
    client,
    reader: io.BufferedReader,
    tls_context: ssl.SSLContext | None,
    snappy: bool,
    deflate_level: int,
) -> None:
    """Run the negotiated upgrades after IDENTIFY's JSON reply has been queued."""
    if tls_context is not None:
        log.info("PROTOCOL(V2): [%s] upgrading connection to TLS", client.remote_address)
        _upgrade_tls(client, reader, tls_context)
        client.send(OK_FRAME)
    if snappy:
        log.info("PROTOCOL(V2): [%s] upgrading connection to snappy", client.remote_address)
        _upgrade_compression(client, reader, SnappyEncoder(), SnappyDecoder())
        client.snappy = True
        client.send(OK_FRAME)
    if deflate_level:
        log.info("PROTOCOL(V2): [%s] upgrading connection to deflate", client.remote_address)
        _upgrade_compression(client, reader, DeflateEncoder(deflate_level), DeflateDecoder())
        client.deflate = True
        client.send(OK_FRAME)


def _upgrade_tls(client, reader: io.BufferedReader, context: ssl.SSLContext) -> None:
    def handshake() -> None:
        plain = client.sock
        timeout = plain.gettimeout()
        tls_sock = context.wrap_socket(plain, server_side=True, do_handshake_on_connect=False)
        client.sock = tls_sock  # the client closes it from now on
        tls_sock.settimeout(tls_names.HANDSHAKE_TIMEOUT)
        tls_sock.do_handshake()
        tls_sock.settimeout(timeout)
        client.set_write(tls_sock.sendall)

    try:
        client.upgrade(handshake)
    except OSError as err:
        raise FatalClientError("E_IDENTIFY_FAILED", f"IDENTIFY failed {err}") from err
    tls_sock = client.sock
    # Like nsqd, bytes a client sent before its handshake are not part of the TLS stream.
    take_buffered(reader)
    reader.raw.recv_into = tls_sock.recv_into
    client.tls = True
    client.tls_version = tls_names.version_name(tls_sock)
    client.tls_cipher_suite = tls_names.cipher_suite_name(tls_sock)


def _upgrade_compression(
    client, reader: io.BufferedReader, encoder: Encoder, decoder: Decoder
) -> None:
    sock = client.sock

    def start() -> None:
        client.set_write(compressed_writer(encoder, plain_writer(sock)))

    client.upgrade(start)
    # Bytes already read past IDENTIFY belong to the compressed stream: decode them first.
    stream = DecodingStream(decoder, sock.recv, take_buffered(reader))
    reader.raw.recv_into = stream.recv_into

"""bench.py's self-test sink: a trivial server that answers OK per request by byte count, or
plays a channel streaming message frames, to show the rate the generator itself can drive."""

from __future__ import annotations

import select
import socket
import threading

from benchwire import FIN_SIZE, OK_FRAME, RECV_SIZE


def sink_main(
    listener: socket.socket, skip: int, request_size: int, reply: bytes, message: bytes
) -> None:
    """Answer `reply` per `request_size` bytes after `skip`; with `message`, play a channel."""

    def serve(conn: socket.socket) -> None:
        try:
            if message:
                sink_channel(conn, message)
            else:
                sink_replies(conn, skip, request_size, reply)
        except OSError:
            pass  # the generator hung up mid-stream
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def sink_replies(conn: socket.socket, skip: int, request_size: int, reply: bytes) -> None:
    received, answered = -skip, 0
    while data := conn.recv(RECV_SIZE):
        received += len(data)
        due = max(received, 0) // request_size - answered
        if due > 0:
            conn.sendall(reply * due)
            answered += due


def sink_channel(conn: socket.socket, message: bytes) -> None:
    """OK the SUB, then stream `message` frames while in-flight < RDY; FINs are counted."""
    buf = b""
    while b"\nRDY " not in buf or not buf.endswith(b"\n"):
        data = conn.recv(RECV_SIZE)
        if not data:
            return
        if b"SUB " in data:
            conn.sendall(OK_FRAME)
        buf += data
    rdy = int(buf.rsplit(b"RDY ", 1)[1])
    conn.setblocking(False)
    in_flight, fin_bytes, pending = 0, 0, memoryview(b"")
    while True:
        writable = [conn] if pending or in_flight < rdy else []
        readable, writable, _ = select.select([conn], writable, [], 1)
        if readable:
            data = conn.recv(RECV_SIZE)
            if not data:
                return
            fin_bytes += len(data)
            in_flight -= fin_bytes // FIN_SIZE
            fin_bytes %= FIN_SIZE
        if writable:
            if not pending:
                count = min(rdy - in_flight, 512)
                pending = memoryview(message * count)
                in_flight += count
            pending = pending[conn.send(pending) :]

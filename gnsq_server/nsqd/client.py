"""One TCP connection's state and its writer.

Every frame for a client, whoever produces it (its own command loop, a publisher handing it a
message, the sweeper), is appended to one output list; a single writer greenlet per client
sends whatever has piled up in one `sendall` and sends the heartbeats. Publishers therefore
never block on a slow consumer's socket, and frames stay in order. The command loop saves
the writer a wake-up per command: replies are queued without waking it, and before the loop
reads the socket again it writes whatever is queued itself (one write for a pipelined run of
commands; blocking, as nsqd's writes do) unless the writer is busy. Heartbeats come from one
repeating timer per client rather than a timeout on every wait of the writer.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import gevent
from gevent.event import AsyncResult, Event

from ..serving import format_address
from ..wire import HEARTBEAT_FRAME
from .message import Message, encode_frames
from .transport import plain_writer

log = logging.getLogger(__name__)

STATE_INIT = 0
STATE_SUBSCRIBED = 3
STATE_CLOSING = 4

#: nsqd's internal client timeout; the default heartbeat interval is half of it
CLIENT_TIMEOUT = 60.0
DEFAULT_OUTPUT_BUFFER_SIZE = 16 * 1024
#: a command loop that finds more to read every time lets other greenlets run this often
YIELD_INTERVAL = 0.001
#: frames queued for a client that is not reading them before its command loop stops reading
#: more commands (nsqd's writes block the loop the same way); RDY bounds message frames anyway
OUTPUT_BACKLOG_LIMIT = 4096


class Client:
    def __init__(self, nsqd, sock: socket.socket, address: tuple, client_number: int) -> None:
        opts = nsqd.opts
        self.nsqd = nsqd
        self.sock = sock
        self.id = client_number
        self.remote_address = format_address(address)
        self.client_id = address[0]
        self.hostname = address[0]
        self.user_agent = ""
        self.state = STATE_INIT
        self.ready_count = 0
        self.in_flight_count = 0
        self.message_count = 0
        self.finish_count = 0
        self.requeue_count = 0
        self.connect_ts = int(time.time())
        self.heartbeat_interval = CLIENT_TIMEOUT / 2
        self.msg_timeout = opts.msg_timeout
        self.output_buffer_size = DEFAULT_OUTPUT_BUFFER_SIZE
        self.output_buffer_timeout = opts.output_buffer_timeout
        self.sample_rate = 0
        self.deflate = False
        self.snappy = False
        self.tls = False
        self.tls_version = ""
        self.tls_cipher_suite = ""
        self.tls_negotiated_protocol = ""
        self.tls_negotiated_protocol_is_mutual = False
        self.authed = False
        self.auth_identity = ""
        self.auth_identity_url = ""
        self.pub_counts: dict[str, int] = {}
        self.channel = None
        self.identified = False
        self._out: list[bytes] = []
        self._write = plain_writer(sock)  # replaced by TLS / compression upgrades
        self._upgrade_step: tuple | None = None
        self._wake = Event()
        self._wake_pending = False  # set() already called since the writer last looked
        self._drained = Event()  # the writer finished a write: a backlogged loop may go on
        self._closing = False
        self._writing = False  # a write is under way (by the writer or by before_read())
        self._heartbeat_due = False
        self._heartbeat_timer = None
        #: when the command loop should next let other greenlets run (see take_turn)
        self.yield_at = 0.0
        self._writer = gevent.spawn(self._write_loop)
        self._apply_timeouts()

    def __repr__(self) -> str:
        return f"<Client {self.remote_address}>"

    # -- flow control -------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.in_flight_count < self.ready_count

    def set_ready_count(self, count: int) -> None:
        self.ready_count = count
        if self.channel is not None:
            self.channel.update_ready(self)

    def start_close(self) -> None:
        """CLS: stop deliveries; the client closes the socket once it has finished up."""
        self.state = STATE_CLOSING
        self.set_ready_count(0)

    def set_heartbeat_interval(self, seconds: float) -> None:
        """0 disables heartbeats and the read/write deadlines that go with them."""
        self.heartbeat_interval = seconds
        self._apply_timeouts()
        self._wake.set()

    def _apply_timeouts(self) -> None:
        # The socket timeout is nsqd's write deadline, one heartbeat interval; the command
        # loop keeps the two-interval read deadline itself (transport.ConnectionSource).
        interval = self.heartbeat_interval
        self.sock.settimeout(interval if interval > 0 else None)
        self._stop_heartbeats()
        if interval > 0:
            self._heartbeat_timer = gevent.get_hub().loop.timer(interval, interval)
            self._heartbeat_timer.start(self._heartbeat_tick)

    def _heartbeat_tick(self) -> None:
        self._heartbeat_due = True
        self._wake.set()

    def _stop_heartbeats(self) -> None:
        timer, self._heartbeat_timer = self._heartbeat_timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    # -- output -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()

    def respond(self, data: bytes) -> None:
        """A command's reply, from the command loop: before_read() writes it."""
        self._out.append(data)

    def before_read(self) -> None:
        """The command loop is about to read the socket: write what its commands queued."""
        out = self._out
        if not out:
            return
        if self._writing or self._upgrade_step is not None or self._closing:
            self._wake.set()
            return
        try:
            self._write_out()
        finally:
            if out or self._heartbeat_due or self._closing:
                self._wake.set()  # what arrived meanwhile was left to the writer

    def _write_out(self) -> None:
        """Send everything queued in one write; nobody else writes meanwhile."""
        data = b"".join(self._out)
        self._out.clear()
        self._writing = True
        try:
            self._write(data)
        finally:
            self._writing = False
        self._drained.set()

    def take_turn(self, now: float) -> None:
        """Called by a command loop that has run for YIELD_INTERVAL without waiting for data:
        send its replies and let the other greenlets (everyone's deliveries) run."""
        self.yield_at = now + YIELD_INTERVAL
        self.before_read()
        gevent.sleep(0)

    def send_messages(self, msgs: list[Message]) -> None:
        self.message_count += len(msgs)
        self._out.append(encode_frames(msgs))
        if not self._wake_pending:
            self._wake_pending = True
            self._wake.set()

    def backlogged(self) -> bool:
        return len(self._out) > OUTPUT_BACKLOG_LIMIT

    def wait_for_writer(self) -> None:
        """Block the command loop while the client leaves a backlog of frames unread."""
        while len(self._out) > OUTPUT_BACKLOG_LIMIT and not self._closing:
            self._wake.set()  # replies are queued without waking the writer
            self._drained.clear()
            self._drained.wait()

    def close(self) -> None:
        """Flush what is queued, then close the connection (the command loop sees EOF)."""
        self._closing = True
        self._wake.set()

    def wait_flushed(self, timeout: float = 1.0) -> None:
        """Let the writer finish sending (used before closing on a fatal error)."""
        self._closing = True
        self._wake.set()
        self._writer.join(timeout)

    def set_write(self, write: Callable[[bytes], None]) -> None:
        """Send buffers through ``write`` from now on (TLS and compression upgrades)."""
        self._write = write

    def upgrade(self, step: Callable[[], None], timeout: float = 10.0) -> None:
        """Run ``step`` in the writer greenlet, after everything queued so far has left by the
        current transport and before anything else is written; re-raise what it raised."""
        if self._writer.dead:
            raise OSError("connection closed")
        result = AsyncResult()
        self._upgrade_step = (step, result)
        self._wake.set()
        try:
            result.get(timeout=timeout)
        except gevent.Timeout:
            raise OSError("upgrade timed out") from None

    def _run_upgrade_step(self) -> None:
        step, result = self._upgrade_step
        self._upgrade_step = None
        try:
            step()
        except Exception as err:
            result.set_exception(err)
        else:
            result.set(None)

    def _write_loop(self) -> None:
        out, wake = self._out, self._wake
        try:
            while True:
                if self._writing or not (out or self._heartbeat_due or self._closing):
                    wake.wait()
                wake.clear()
                self._wake_pending = False
                if self._writing:
                    continue  # the command loop is writing; it wakes us when it is done
                if self._upgrade_step is not None:
                    if out:
                        data = b"".join(out)
                        out.clear()
                        self._write(data)
                    self._run_upgrade_step()
                    continue
                if self._heartbeat_due:
                    self._heartbeat_due = False
                    out.append(HEARTBEAT_FRAME)
                if out:
                    self._write_out()
                elif self._closing:
                    break
        except OSError as err:
            log.info("CLIENT(%s): write failed - %s", self.remote_address, err)
        finally:
            self._closing = True
            self._stop_heartbeats()
            self._drained.set()
            if self._upgrade_step is not None:
                self._upgrade_step[1].set_exception(OSError("connection closed"))
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Final cleanup once the command loop has ended."""
        self._closing = True
        self._stop_heartbeats()
        self._wake.set()
        if gevent.getcurrent() is not self._writer:
            self._writer.join(1.0)
            self._writer.kill(block=False)
        if self.channel is not None:
            self.channel.remove_client(self)

"""Wiring and lifecycle of gnsqd: listeners, the HTTP app, signals, clean shutdown."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from .. import version_line
from ..httpapi import make_server
from ..httpserver import HTTPServer
from ..serving import format_address, listen, run_until_signalled
from .e2e import E2ELatency
from .lookup_peer import Lookup
from .nsqd import NSQD
from .policy import PolicyError
from .statsd import StatsdLoop
from .tcp import TCPHandler
from .tls import server_context

log = logging.getLogger(__name__)

class NSQDServer:
    """gnsqd in one object: start() binds and serves, stop() shuts down cleanly."""

    def __init__(self, opts) -> None:
        self.opts = opts
        self.nsqd = NSQD(opts)
        self.lookup = Lookup(self.nsqd)
        self.e2e = E2ELatency(self.nsqd)  # before open(): channels loaded get their streams
        self.statsd = StatsdLoop(self.nsqd, self.e2e)
        self._tcp_server: StreamServer | None = None
        self._http_server: HTTPServer | None = None
        self._https_server: HTTPServer | None = None
        self._stopping = False
        self._stopped = Event()

    @property
    def tcp_port(self) -> int:
        return self.nsqd.tcp_port

    @property
    def http_port(self) -> int:
        return self.nsqd.http_port

    def start(self) -> None:
        """Lock and load the data path, bind every listener (an OSError names the address),
        then start serving."""
        log.info("%s", version_line("nsqd"))
        log.info("ID: %d", self.opts.id)
        # one TLS context for the TCP upgrade and HTTPS; a bad cert or key stops the start
        try:
            tls_context = self.nsqd.tls_context = server_context(self.opts)
        except OSError as err:  # ssl.SSLError included
            raise OSError(err.errno, f"failed to build TLS config - {err}") from err
        self.nsqd.open()
        tcp_sock = listen(self.opts.tcp_address, "TCP")
        https_sock = None
        if tls_context is not None and self.opts.https_address:
            https_sock = listen(self.opts.https_address, "HTTPS")
            self.nsqd.https_port = https_sock.getsockname()[1]
        http_sock = listen(self.opts.http_address, "HTTP") if self.opts.http_address else None
        self.nsqd.tcp_port = tcp_sock.getsockname()[1]
        if http_sock is not None:
            self.nsqd.http_port = http_sock.getsockname()[1]
        self.nsqd.start()
        self._tcp_server = StreamServer(tcp_sock, TCPHandler(self.nsqd))
        self._tcp_server.start()
        log.info("TCP: listening on %s", format_address(tcp_sock.getsockname()))
        if https_sock is not None:
            from .http import create_app

            app = create_app(self.nsqd, https=True, e2e=self.e2e)
            self._https_server = make_server(app, https_sock, ssl_context=tls_context)
            self._https_server.start()
            log.info("HTTPS: listening on %s", format_address(https_sock.getsockname()))
        if http_sock is not None:
            from .http import create_app

            self._http_server = make_server(create_app(self.nsqd, e2e=self.e2e), http_sock)
            self._http_server.start()
            log.info("HTTP: listening on %s", format_address(http_sock.getsockname()))
        self.lookup.start()  # after open(): topics loaded from nsqd.dat need no pre-creation
        if self.opts.statsd_address:
            self.statsd.start()

    def stop(self) -> None:
        """Stop accepting, close clients, persist everything; wait() returns after that."""
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        log.info("NSQ: closing")
        self.lookup.stop()
        self.statsd.stop()
        if self._tcp_server is not None:
            log.info("TCP: closing %s", format_address(self._tcp_server.socket.getsockname()))
            self._tcp_server.close()
        held = self._drain(self.opts.drain_timeout) if self.opts.drain_timeout > 0 else []
        log.info("NSQ: closing %d client connections", len(self.nsqd.clients))
        for client in list(self.nsqd.clients.values()):
            client.close()
        if self._http_server is not None:
            self._http_server.close()
        if self._https_server is not None:
            self._https_server.close()
        gevent.sleep(0)  # let the closed clients' greenlets run their cleanup
        for channel in held:
            channel.paused = False  # the drain's hold is never persisted to nsqd.dat
        log.info("NSQ: writing queued, in-flight and deferred messages to disk")
        try:
            self.nsqd.stop()
        finally:
            log.info("NSQ: bye")
            self._stopped.set()

    def _drain(self, timeout: float) -> list:
        """--drain-timeout: deliver nothing new and give consumers up to ``timeout`` to FIN or
        REQ what they hold (nsqio/nsq#1254). Returns the channels held back (paused in memory)."""
        channels = [c for t in list(self.nsqd.topics.values()) for c in list(t.channels.values())]
        held = [c for c in channels if not c.paused]
        for channel in held:
            channel.paused = True
        deadline = time.monotonic() + timeout

        def in_flight() -> int:
            return sum(c.in_flight_count() for c in channels)

        log.info("NSQ: draining %d in-flight messages (up to %gs)", in_flight(), timeout)
        while in_flight() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        log.info("NSQ: drain done, %d messages still in flight", in_flight())
        return held

    def wait(self) -> None:
        self._stopped.wait()


#: messages held before the collector stops rescanning them (see govern_gc)
GC_FREEZE_THRESHOLD = 100_000


def held_messages(nsqd) -> int:
    total = 0
    for topic in list(nsqd.topics.values()):
        total += len(topic.memory)
        for channel in list(topic.channels.values()):
            total += len(channel.memory) + len(channel.in_flight) + len(channel.deferred)
    return total


def govern_gc(nsqd, interval: float = 1.0) -> None:
    """Keep Python's cyclic collector from stalling the daemon when it holds many messages.

    A full collection walks every tracked object: with a million queued messages that is a
    pause of hundreds of milliseconds (p99.9 publish latency went from ~10 ms to ~230 ms).
    Messages form no reference cycles, so while many are held, freeze what exists (the
    collector then skips it; reference counting still frees it) and collect young objects
    less often. Once the backlog drains, unfreeze so any old cyclic garbage is collected.
    """
    gc.set_threshold(20_000, 50, 100)
    while True:
        gevent.sleep(interval)
        if held_messages(nsqd) > GC_FREEZE_THRESHOLD:
            gc.freeze()
        elif gc.get_freeze_count():
            gc.unfreeze()


def run(opts) -> int:
    """Serve until SIGTERM or SIGINT; the exit status for the CLI."""
    # A file-size limit must fail the write (EFBIG, reported to the publisher), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        server = NSQDServer(opts)
    except PolicyError as err:
        flag = "channel-" + err.field.replace("_", "-")  # the flag (or cfg key) behind it
        print(f"gnsqd: --{flag}: {err.text}", file=sys.stderr)
        return 2
    return run_until_signalled(server, background=lambda: govern_gc(server.nsqd))

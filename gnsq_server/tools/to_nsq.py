"""to_gnsq: to_nsq 1.3.0. Publishes stdin, split on ``--delimiter`` (a newline by default), to
``--topic`` on every ``--nsqd-tcp-address``, at most ``--rate`` messages a second.

Each PUB waits for nsqd's ``OK``. Unlike to_nsq, an nsqd that goes away is retried (with a
growing pause) until it answers again, so a restart loses nothing read from stdin; an error
nsqd answers (a bad topic, a message too big) stops the tool with status 1, as in NSQ. Empty
pieces are skipped, as to_nsq does; a last piece without the delimiter is published whole (to_nsq
drops its last byte)."""

from __future__ import annotations

import fcntl
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent
from gevent.event import Event
from gevent.os import make_nonblocking, nb_read
from gnsq.errors import NSQException

from gnsq_server.options import INT, STR, STRS, Option
from gnsq_server.tools.client import (
    ClientSettings,
    Publisher,
    UsageError,
    check_address,
    check_names,
    describe,
    is_refusal,
    on_stop_signals,
    parse_client_opts,
    user_agent,
)

log = logging.getLogger(__name__)

PROG = "to_gnsq"
SUMMARY = (
    "Publish lines from stdin to an NSQ topic (to_nsq). "
    "Flags take Go's forms (-flag=value, --flag value, bare booleans)."
)
OPTIONS: tuple[Option, ...] = (
    Option("topic", STR, "", "NSQ topic to publish to"),
    Option("delimiter", STR, "\n", "character to split input from stdin"),
    Option(
        "nsqd-tcp-address", STRS, [],
        "destination nsqd TCP address (may be given multiple times)", cfg="nsqd_tcp_addresses",
    ),
    Option(
        "producer-opt", STRS, [],
        "option to passthrough to the producer (may be given multiple times): a go-nsq Config "
        "option and its value, comma separated (tls_v1,true; snappy; deflate_level,3)",
        cfg="producer_opts",
    ),
    Option("rate", INT, 0, "Throttle messages to n/second. 0 to disable", minimum=0),
)


def check(opts: Any) -> None:
    if not opts.topic:
        raise UsageError("--topic required")
    check_names("topic", [opts.topic])
    if len(opts.delimiter.encode()) != 1:
        raise UsageError("--delimiter must be a single byte")
    if not opts.nsqd_tcp_addresses:
        raise UsageError("--nsqd-tcp-address required")
    for address in opts.nsqd_tcp_addresses:
        check_address("nsqd-tcp-address", address)
    parse_client_opts("producer-opt", opts.producer_opts, user_agent(PROG))


def split_stream(chunks: Iterator[bytes], delimiter: bytes) -> Iterator[list[bytes]]:
    """The non-empty pieces between delimiters, a list for each chunk read (what is at hand
    is published together), the last piece too when the input ends."""
    pending = b""
    for chunk in chunks:
        pieces = (pending + chunk).split(delimiter)
        pending = pieces.pop()
        pieces = [piece for piece in pieces if piece]
        if pieces:
            yield pieces
    if pending:
        yield [pending]


def read_stdin(fd: int) -> Iterator[bytes]:
    """stdin's bytes as they come, without blocking the other greenlets (signals included).
    The descriptor's flags are restored at the end: a terminal shares them with the shell."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    make_nonblocking(fd)
    try:
        while True:
            data = nb_read(fd, 65536)
            if not data:
                return
            yield data
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class Throttle:
    """to_nsq's --rate: a bucket of up to ``rate`` messages, refilled at ``rate`` a second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = 1.0
        self.last = time.monotonic()

    def wait(self) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self.last) * self.rate, float(self.rate))
        self.last = now
        if self.tokens < 1:
            gevent.sleep((1 - self.tokens) / self.rate)
            self.tokens, self.last = 1.0, time.monotonic()
        self.tokens -= 1


_WINDOW = 200  # PUBs in flight at once on a connection


class Pump:
    """Reads pieces and publishes each to every nsqd; ``status`` is the exit status."""

    def __init__(self, opts: Any, settings: ClientSettings) -> None:
        self.topic = opts.topic
        self.delimiter = opts.delimiter.encode()
        self.publishers = [Publisher(address, settings) for address in opts.nsqd_tcp_addresses]
        self.throttle = Throttle(opts.rate)
        self.stopping = False
        self.busy = False  # between reading a piece and its last OK
        self.status = 0

    def run(self, chunks: Iterator[bytes]) -> None:
        for pieces in split_stream(chunks, self.delimiter):
            self.busy = True
            if self.throttle.rate:
                batches = [[piece] for piece in pieces]
            else:
                batches = [pieces[i : i + _WINDOW] for i in range(0, len(pieces), _WINDOW)]
            for batch in batches:
                self.throttle.wait()
                for publisher in self.publishers:
                    if self.stopping or not self._publish(publisher, batch):
                        return
            self.busy = False

    def _publish(self, publisher: Publisher, bodies: list[bytes]) -> bool:
        delay = 0.25
        while not self.stopping:
            try:
                publisher.publish(self.topic, bodies)
                return True
            except (NSQException, OSError) as exc:
                publisher.close()
                if is_refusal(exc):
                    log.critical("[%s] publish refused - %s", publisher.address, describe(exc))
                    self.status = 1
                    return False
                # those without an OK are sent again: nsqd may have some (at least once)
                bodies = bodies[publisher.acked :]
                log.error("[%s] publish failed, retrying in %.2fs - %s",
                          publisher.address, delay, exc)
            gevent.sleep(delay)
            delay = min(delay * 2, 5.0)
        return False

    def close(self) -> None:
        for publisher in self.publishers:
            publisher.close()


def run(opts: Any) -> int:
    settings = parse_client_opts("producer-opt", opts.producer_opts, user_agent(PROG))
    pump = Pump(opts, settings)
    if opts.rate:
        log.info("Throttling messages rate to max:%d/second", opts.rate)
    stop = Event()
    chunks = read_stdin(sys.stdin.fileno())
    worker = gevent.spawn(pump.run, chunks)
    worker.link(lambda _greenlet: stop.set())
    on_stop_signals(stop.set)
    stop.wait()
    pump.stopping = True
    if pump.busy:
        worker.join(5)  # let the piece being published get its OK
    worker.kill()
    chunks.close()  # restores stdin's flags
    pump.close()
    if worker.exception is not None and not isinstance(worker.exception, gevent.GreenletExit):
        return 1
    return pump.status

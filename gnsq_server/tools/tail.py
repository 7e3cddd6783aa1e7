"""gnsq_tail: nsq_tail 1.3.0. Prints each message of one or more topics on stdout, one per line
(``topic | body`` with ``--print-topic``), on an ephemeral channel unless one is given; ``-n``
stops after that many messages. SIGINT/SIGTERM stop it cleanly (CLS, then close)."""

from __future__ import annotations

import logging
import random
import sys
from typing import Any, BinaryIO

from gevent.event import Event
from gnsq.message import Message

from gnsq_server.options import BOOL, INT, STR, Option
from gnsq_server.tools.client import (
    CONSUMER_OPT,
    LOOKUPD_HTTP_ADDRESS,
    MAX_IN_FLIGHT,
    NSQD_TCP_ADDRESS,
    TOPIC,
    Subscriber,
    UsageError,
    check_names,
    finish,
    on_stop_signals,
    parse_client_opts,
    requeue,
    require_sources,
    user_agent,
)

log = logging.getLogger(__name__)

PROG = "gnsq_tail"
SUMMARY = (
    "Print the messages of NSQ topics to stdout, one per line (nsq_tail). "
    "Flags take Go's forms (-flag=value, --flag value, bare booleans)."
)
OPTIONS: tuple[Option, ...] = (
    Option("channel", STR, "", "NSQ channel (default: tail<random>#ephemeral)"),
    MAX_IN_FLIGHT,
    Option("n", INT, 0, "total messages to show (will wait if starved)", minimum=0),
    Option("print-topic", BOOL, False, "print topic name where message was received"),
    NSQD_TCP_ADDRESS,
    LOOKUPD_HTTP_ADDRESS,
    TOPIC,
    CONSUMER_OPT,
)


def check(opts: Any) -> None:
    require_sources("nsqd-tcp-address", opts.nsqd_tcp_addresses, opts.lookupd_http_addresses)
    if not opts.topics:
        raise UsageError("--topic required")
    check_names("topic", opts.topics)
    check_names("channel", [opts.channel] if opts.channel else [])
    parse_client_opts("consumer-opt", opts.consumer_opts, user_agent(PROG))


def ephemeral_channel() -> str:
    """nsq_tail's default channel: ``tail`` + six random digits, ephemeral."""
    return f"tail{random.randrange(999999):06d}#ephemeral"


class Printer:
    """Writes one topic's messages to ``out``; ``done`` is set once ``total`` were shown. What
    arrives after that (or could not be written) is kept in ``leftover``, to be sent back once
    nsqd has stopped sending (REQ before CLS would have it redelivered at once)."""

    def __init__(self, topic: str, out: BinaryIO, total: int, print_topic: bool, done: Event):
        self.prefix = f"{topic} | ".encode() if print_topic else b""
        self.out = out
        self.total = total
        self.shown = 0
        self.done = done
        self.failed = False
        self.leftover: list[Message] = []

    def __call__(self, message: Message) -> None:
        if self.done.is_set():
            self.leftover.append(message)
            return
        try:
            self.out.write(self.prefix + message.body + b"\n")
            self.out.flush()
        except OSError as exc:
            log.error("failed to write to stdout - %s", exc)
            self.failed = True
            self.leftover.append(message)
            self.done.set()
            return
        finish(message)
        self.shown += 1
        if self.total and self.shown >= self.total:
            self.done.set()


def run(opts: Any) -> int:
    settings = parse_client_opts("consumer-opt", opts.consumer_opts, user_agent(PROG))
    channel = opts.channel or ephemeral_channel()
    max_in_flight = opts.max_in_flight
    if 0 < opts.n < max_in_flight:
        max_in_flight = opts.n  # don't ask for more messages than we want
    done = Event()
    printers, subscribers = [], []
    for topic in opts.topics:
        log.info("Adding consumer for topic: %s", topic)
        printer = Printer(topic, sys.stdout.buffer, opts.n, opts.print_topic, done)
        subscriber = Subscriber(
            topic, channel, printer, settings,
            nsqd_tcp_addresses=opts.nsqd_tcp_addresses,
            lookupd_http_addresses=opts.lookupd_http_addresses,
            max_in_flight=max_in_flight,
        )
        printers.append(printer)
        subscribers.append(subscriber)
        subscriber.start()
    on_stop_signals(done.set)
    done.wait()
    for subscriber in subscribers:
        subscriber.close_wait()
    for printer in printers:
        for message in printer.leftover:
            requeue(message)  # back to the channel for its other consumers
    for subscriber in subscribers:
        subscriber.close()
    return 1 if any(printer.failed for printer in printers) else 0

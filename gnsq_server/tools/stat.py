"""gnsq_stat: nsq_stat 1.3.0. Polls ``/stats`` of every nsqd holding a topic and prints, every
``--interval``, one row for a channel summed over them: ingress and egress rates, depth (total,
memory, disk), in-flight, deferred, requeued, timed out, messages and clients; the header again
every 25 rows. ``--count N`` stops after N rows.

Unlike nsq_stat, which exits on the first failed query, a failed poll (an nsqd restarting, a
channel not created yet) is reported on stderr and polling goes on; the rates restart from the
next good sample."""

from __future__ import annotations

import logging
import sys
import urllib.parse
from dataclasses import dataclass, fields
from typing import Any, TextIO

import gevent

from gnsq_server.options import DURATION, INT, STR, STRS, Option
from gnsq_server.tools.client import (
    HTTP_CONNECT_TIMEOUT,
    HTTP_REQUEST_TIMEOUT,
    LOOKUPD_HTTP_ADDRESS,
    UsageError,
    get_json,
    lookupd_producers,
    on_stop_signals,
    require_positive,
    require_sources,
)

log = logging.getLogger(__name__)

PROG = "gnsq_stat"
SUMMARY = (
    "Print a topic/channel's rates, depths and counts every interval, summed over its nsqds "
    "(nsq_stat). Flags take Go's forms (-flag=value, --flag value)."
)
OPTIONS: tuple[Option, ...] = (
    Option("topic", STR, "", "NSQ topic"),
    Option("channel", STR, "", "NSQ channel"),
    Option("interval", DURATION, 2.0, "duration of time between polling/printing output"),
    HTTP_CONNECT_TIMEOUT,
    HTTP_REQUEST_TIMEOUT,
    Option("count", INT, 0, "number of reports (0: until stopped)", minimum=0),
    Option(
        "nsqd-http-address", STRS, [], "nsqd HTTP address (may be given multiple times)",
        cfg="nsqd_http_addresses",
    ),
    LOOKUPD_HTTP_ADDRESS,
)

HEADER = (
    "------rate------+----------------depth----------------+--------------metadata---------------\n"
    f"{'ingress':>7} {'egress':>7} | {'total':>7} {'mem':>7} {'disk':>7} {'inflt':>5} {'def':>5} | "
    f"{'req':>7} {'t-o':>7} {'msgs':>12} {'clients':>7}\n"
)


def check(opts: Any) -> None:
    if not opts.topic or not opts.channel:
        raise UsageError("--topic and --channel are required")
    require_positive(opts, "interval", "http-client-connect-timeout", "http-client-request-timeout")
    for flag, addresses in (
        ("nsqd-http-address", opts.nsqd_http_addresses),
        ("lookupd-http-address", opts.lookupd_http_addresses),
    ):
        if any(address.startswith("http") for address in addresses):
            raise UsageError(f"--{flag} error - address should not contain scheme")
    require_sources("nsqd-http-address", opts.nsqd_http_addresses, opts.lookupd_http_addresses)


@dataclass
class ChannelStats:
    """A channel's counters summed over nodes (clusterinfo.ChannelStats in NSQ)."""

    depth: int = 0
    memory_depth: int = 0
    backend_depth: int = 0
    in_flight_count: int = 0
    deferred_count: int = 0
    requeue_count: int = 0
    timeout_count: int = 0
    message_count: int = 0
    client_count: int = 0

    def add(self, channel: dict) -> None:
        for field in fields(self):
            if field.name != "memory_depth":
                setattr(self, field.name, getattr(self, field.name) + channel[field.name])
        self.memory_depth += channel["depth"] - channel["backend_depth"]


def format_row(now: ChannelStats, before: ChannelStats, interval: float) -> str:
    """One line of the table; rates are per second over ``interval``, truncated as Go does."""
    messages = now.message_count - before.message_count
    ingress = int(messages / interval)
    egress = int((messages - (now.depth - before.depth)) / interval)
    return (
        f"{ingress:7d} {egress:7d} | {now.depth:7d} {now.memory_depth:7d} "
        f"{now.backend_depth:7d} {now.in_flight_count:5d} {now.deferred_count:5d} | "
        f"{now.requeue_count:7d} {now.timeout_count:7d} {now.message_count:12d} "
        f"{now.client_count:7d}\n"
    )


def _nodes(opts: Any, timeout: float) -> list[str]:
    if opts.nsqd_http_addresses:
        return list(opts.nsqd_http_addresses)
    producers = lookupd_producers(opts.lookupd_http_addresses, opts.topic, timeout)
    return [f"{p['broadcast_address']}:{p['http_port']}" for p in producers]


def sample(opts: Any) -> ChannelStats:
    """The channel summed over the topic's nsqds; OSError/LookupError/ValueError on failure."""
    timeout = opts.http_client_request_timeout
    query = urllib.parse.urlencode({
        "format": "json", "topic": opts.topic, "channel": opts.channel,
        "include_clients": "false",
    })
    total, found = ChannelStats(), False
    for node in _nodes(opts, timeout):
        for topic in get_json(node, f"/stats?{query}", timeout).get("topics") or []:
            if topic["topic_name"] != opts.topic:
                continue
            for channel in topic.get("channels") or []:
                if channel["channel_name"] == opts.channel:
                    total.add(channel)
                    found = True
    if not found:
        raise LookupError(
            f"failed to find channel({opts.channel}) in stats metadata for topic({opts.topic})"
        )
    return total


def stat_loop(opts: Any, out: TextIO) -> None:
    """nsq_stat's loop: a header every 25 samples (the first sample only starts the rates)."""
    previous: ChannelStats | None = None
    samples = 0
    while not opts.count or samples <= opts.count:
        try:
            now = sample(opts)
        except (OSError, LookupError, ValueError, KeyError) as exc:
            log.error("failed to get nsqd stats - %s", exc)
            previous = None
            gevent.sleep(opts.interval)
            continue
        if samples % 25 == 0:
            out.write(HEADER)
        if previous is not None:
            out.write(format_row(now, previous, opts.interval))
        out.flush()
        previous = now
        samples += 1
        if opts.count and samples > opts.count:
            return
        gevent.sleep(opts.interval)


def run(opts: Any) -> int:
    loop = gevent.spawn(stat_loop, opts, sys.stdout)
    on_stop_signals(loop.kill)
    loop.join()
    return 0 if loop.successful() or isinstance(loop.value, gevent.GreenletExit) else 1

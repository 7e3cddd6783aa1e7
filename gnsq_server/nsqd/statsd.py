"""Push stats to statsd over UDP as nsqd does (PROTOCOL.md 4.9).

Every ``--statsd-interval``: one ``STATSD: pushing stats to <addr>`` line, a fresh UDP socket,
``<prefix><stat>:<value>|c`` (counters, as deltas since the previous push) and ``|g`` (gauges)
lines, each ending in ``\\n``, packed whole into packets of at most ``--statsd-udp-packet-size``
bytes (a longer line goes alone), and the packets spread evenly over ``interval - 1s``. The first
push is one interval after start; stopping skips the remaining spread and pushes nothing more.

``stat_lines`` and ``pack`` are pure; ``StatsdLoop`` is the glue that sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent
from gevent import socket
from gevent.event import Event

from ..config import expand_statsd_prefix
from ..gosyntax import split_host_port
from ..wire import is_ephemeral
from . import stats

log = logging.getLogger(__name__)

#: nsqd sends the memory figures as gauges, and the GC run count as a counter of its own
MEM_GAUGES = tuple(key for key in stats.MEMORY_KEYS if key != "gc_total_runs")


def _by_name(items: Iterable[Mapping[str, Any]] | None, key: str) -> dict[str, Mapping]:
    return {item[key]: item for item in items or ()}


def _percentile_name(quantile: float) -> str:
    return f"{quantile * 100.0:.0f}"  # Go's %.0f: correctly rounded, half to even


def stat_lines(
    prefix: str,
    topics: list[dict],
    last_topics: list[dict],
    memory: Mapping[str, int] | None = None,
    last_memory: Mapping[str, int] | None = None,
    exclude_ephemeral: bool = False,
) -> list[str]:
    """The lines of one push, in nsqd's order; ``topics`` as ``stats.collect`` returns them."""
    lines: list[str] = []

    def counter(stat: str, value: int) -> None:
        lines.append(f"{prefix}{stat}:{int(value)}|c\n")

    def gauge(stat: str, value: float) -> None:
        lines.append(f"{prefix}{stat}:{int(value)}|g\n")

    last_by_name = _by_name(last_topics, "topic_name")
    for topic in topics:
        name = topic["topic_name"]
        if exclude_ephemeral and is_ephemeral(name):
            continue
        last = last_by_name.get(name, {})
        base = f"topic.{name}"
        counter(f"{base}.message_count", topic["message_count"] - last.get("message_count", 0))
        counter(f"{base}.message_bytes", topic["message_bytes"] - last.get("message_bytes", 0))
        gauge(f"{base}.depth", topic["depth"])
        gauge(f"{base}.backend_depth", topic["backend_depth"])
        for item in topic["e2e_processing_latency"].get("percentiles") or ():
            gauge(f"{base}.e2e_processing_latency_{_percentile_name(item['quantile'])}",
                  item["value"])
        last_channels = _by_name(last.get("channels"), "channel_name")
        for channel in topic["channels"]:
            channel_name = channel["channel_name"]
            if exclude_ephemeral and is_ephemeral(channel_name):
                continue
            prev = last_channels.get(channel_name, {})
            cbase = f"{base}.channel.{channel_name}"
            counter(f"{cbase}.message_count",
                    channel["message_count"] - prev.get("message_count", 0))
            gauge(f"{cbase}.depth", channel["depth"])
            gauge(f"{cbase}.backend_depth", channel["backend_depth"])
            gauge(f"{cbase}.in_flight_count", channel["in_flight_count"])
            gauge(f"{cbase}.deferred_count", channel["deferred_count"])
            counter(f"{cbase}.requeue_count",
                    channel["requeue_count"] - prev.get("requeue_count", 0))
            counter(f"{cbase}.timeout_count",
                    channel["timeout_count"] - prev.get("timeout_count", 0))
            gauge(f"{cbase}.clients", channel["client_count"])
            for item in channel["e2e_processing_latency"].get("percentiles") or ():
                gauge(f"{cbase}.e2e_processing_latency_{_percentile_name(item['quantile'])}",
                      item["value"])
    if memory is not None:
        for key in MEM_GAUGES:
            gauge(f"mem.{key}", memory[key])
        previous_runs = (last_memory or {}).get("gc_total_runs", 0)
        counter("mem.gc_runs", memory["gc_total_runs"] - previous_runs)
    return lines


def pack(lines: Iterable[str], packet_size: int) -> list[bytes]:
    """Whole lines into packets of at most ``packet_size`` bytes (nsqd's boundary writer)."""
    packets: list[bytes] = []
    current = bytearray()
    for line in lines:
        data = line.encode()
        if len(data) > packet_size - len(current) and current:
            packets.append(bytes(current))
            current.clear()
        if len(data) > packet_size:
            packets.append(data)  # too long for any packet: sent alone, as bufio does
        else:
            current += data
    if current:
        packets.append(bytes(current))
    return packets


class StatsdLoop:
    """The statsd greenlet of one gnsqd; ``start()`` only when ``--statsd-address`` is set."""

    def __init__(
        self,
        nsqd: Any,
        e2e: stats.E2ESource = stats.empty_e2e,
        memory: Callable[[], dict] = stats.memory_stats,
    ) -> None:
        self.nsqd = nsqd
        self.e2e = e2e
        self.memory = memory
        self._exiting = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._last_topics: list[dict] = []
        self._last_memory: dict | None = None

    @property
    def prefix(self) -> str:
        opts = self.nsqd.opts
        port = opts.broadcast_http_port or self.nsqd.http_port
        return expand_statsd_prefix(opts.statsd_prefix, opts.broadcast_address, port)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        """Finish a push in progress without its pauses, then stop (no final push)."""
        self._exiting.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            self._greenlet.kill()
            self._greenlet = None
            log.info("STATSD: closing")

    def _run(self) -> None:
        interval = self.nsqd.opts.statsd_interval
        while not self._exiting.wait(interval):
            try:
                self.push()
            except Exception:
                log.exception("STATSD: push failed")

    def push(self) -> None:
        """One round: collect, diff against the previous round, send spread over the interval."""
        opts = self.nsqd.opts
        address = opts.statsd_address
        try:
            host, port = split_host_port(address)
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                host or "127.0.0.1", port, 0, socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError):
            log.error("failed to create UDP socket to statsd(%s)", address)
            return
        try:
            sock.connect(sockaddr)
            log.info("STATSD: pushing stats to %s", address)
            topics, _ = stats.collect(self.nsqd, include_clients=False, e2e=self.e2e)
            memory = self.memory() if opts.statsd_mem_stats else None
            lines = stat_lines(
                self.prefix, topics or [], self._last_topics, memory, self._last_memory,
                opts.statsd_exclude_ephemeral,
            )
            self._last_topics = topics or []
            if memory is not None:
                self._last_memory = memory
            self._send_spread(sock, pack(lines, opts.statsd_udp_packet_size))
        finally:
            sock.close()

    def _send_spread(self, sock: socket.socket, packets: list[bytes]) -> None:
        if not packets:
            return
        pause = max(self.nsqd.opts.statsd_interval - 1.0, 0.0) / len(packets)
        for packet in packets:
            try:
                sock.send(packet)
            except OSError as err:  # e.g. ECONNREFUSED from an earlier packet: keep going
                log.debug("STATSD: send failed - %s", err)
            if pause and not self._exiting.is_set():
                self._exiting.wait(pause)

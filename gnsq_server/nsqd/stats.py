"""Plain-dict snapshots of nsqd state for /stats (JSON and text), later statsd and /metrics.

Dicts are built in nsqd 1.3.0's struct order so that serialising them in insertion order gives
the same JSON as nsqd (nsqadmin and scripts diff it). Nothing here does I/O or knows about HTTP.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from gnsq_server import NSQ_VERSION
from gnsq_server.gosyntax import format_duration_ns

#: Stats a caller asks for per topic or channel: ``{"count": N, "percentiles": [...] | None}``.
#: The e2e-latency feature plugs in here; until then every object reports the empty result.
E2ESource = Callable[[Any], dict]

_BOOL_PARAMS = {"true": True, "1": True, "false": False, "0": False}


def empty_e2e(_obj: Any = None) -> dict:
    """The e2e result nsqd reports when no percentile is configured or nothing was FINed."""
    return {"count": 0, "percentiles": None}


def parse_bool_param(value: str | None, default: bool = True) -> bool:
    """nsqd's /stats booleans: only true/1/false/0 count; anything else is the default."""
    if value is None:
        return default
    return _BOOL_PARAMS.get(value, default)


# ---------------------------------------------------------------------------------------------
# JSON shape


def client_stats(client: Any, topic_filter: str = "") -> dict:
    """One ClientStats; ``pub_counts`` narrowed to ``topic_filter`` as nsqd's Stats(topic) does."""
    stats: dict[str, Any] = {
        "client_id": client.client_id,
        "hostname": client.hostname,
        "version": "V2",
        "remote_address": client.remote_address,
        "state": client.state,
        "ready_count": client.ready_count,
        "in_flight_count": client.in_flight_count,
        "message_count": client.message_count,
        "finish_count": client.finish_count,
        "requeue_count": client.requeue_count,
        "connect_ts": int(client.connect_ts),
        "sample_rate": client.sample_rate,
        "deflate": bool(client.deflate),
        "snappy": bool(client.snappy),
        "user_agent": client.user_agent,
    }
    # omitempty fields
    if client.authed:
        stats["authed"] = True
    if client.auth_identity:
        stats["auth_identity"] = client.auth_identity
    if client.auth_identity_url:
        stats["auth_identity_url"] = client.auth_identity_url
    pub_counts = _pub_counts(client, topic_filter)
    if pub_counts:
        stats["pub_counts"] = pub_counts
    stats.update(
        {
            "tls": bool(client.tls),
            "tls_cipher_suite": client.tls_cipher_suite,
            "tls_version": client.tls_version,
            "tls_negotiated_protocol": client.tls_negotiated_protocol,
            "tls_negotiated_protocol_is_mutual": bool(client.tls_negotiated_protocol_is_mutual),
        }
    )
    return stats


def _pub_counts(client: Any, topic_filter: str) -> list[dict]:
    counts: Mapping[str, int] = client.pub_counts
    if topic_filter:
        if topic_filter in counts:
            return [{"topic": topic_filter, "count": counts[topic_filter]}]
        return []
    return [{"topic": topic, "count": count} for topic, count in counts.items()]


def channel_stats(
    channel: Any,
    *,
    include_clients: bool = True,
    topic_filter: str = "",
    e2e: E2ESource = empty_e2e,
) -> dict:
    """One ChannelStats; ``clients`` is None (JSON null) when clients are not asked for."""
    clients = list(channel.clients.values())
    doc = {
        "channel_name": channel.name,
        "depth": channel.depth(),
        "backend_depth": channel.backend_depth(),
        "in_flight_count": channel.in_flight_count(),
        "deferred_count": channel.deferred_count(),
        "message_count": channel.message_count,
        "requeue_count": channel.requeue_count,
        "timeout_count": channel.timeout_count,
        "client_count": len(clients),
        "clients": [client_stats(c, topic_filter) for c in clients] if include_clients else None,
        "paused": bool(channel.paused),
        "e2e_processing_latency": e2e(channel),
    }
    policy = getattr(channel, "policy", None)  # gnsq only: a delivery policy (nsqd/policy.py)
    if policy is not None:
        doc["policy"] = policy.stats()
    if getattr(channel, "durable", False):
        # crash-safe mode (gnsq only): the channel's cursor in the topic log
        cursor = channel.backend
        doc["log_position"] = cursor.read_seq
        doc["log_committed"] = cursor.committed()
    return doc


def topic_stats(
    topic: Any,
    channels: Iterable[Any],
    *,
    include_clients: bool = True,
    topic_filter: str = "",
    e2e: E2ESource = empty_e2e,
) -> dict:
    """One TopicStats over the given channels (already filtered and sorted by the caller)."""
    doc = {
        "topic_name": topic.name,
        "channels": [
            channel_stats(c, include_clients=include_clients, topic_filter=topic_filter, e2e=e2e)
            for c in channels
        ],
        "depth": topic.depth(),
        "backend_depth": topic.backend_depth(),
        "message_count": topic.message_count,
        "message_bytes": topic.message_bytes,
        "paused": bool(topic.paused),
        "e2e_processing_latency": e2e(topic),
    }
    if getattr(topic, "durable", False):
        # crash-safe mode (gnsq only): the topic log, what retention keeps, replay's reach
        log = topic.backend
        retention = log.retention()
        doc.update(
            log_bytes=log.size(),
            log_retained_bytes=log.retained_bytes(),
            log_first_seq=log.first_seq(),
            log_end_seq=log.end,
            retention_time=int(retention.seconds * 1e9),
            retention_bytes=retention.max_bytes,
        )
    return doc


def collect(
    nsqd: Any,
    topic_name: str = "",
    channel_name: str = "",
    include_clients: bool = True,
    e2e: E2ESource = empty_e2e,
) -> tuple[list[dict] | None, list[dict] | None]:
    """nsqd's GetStats: (topics, producers), with its filter quirks.

    A ``topic_name`` that does not exist gives ``(None, None)`` (JSON nulls); a missing
    ``channel_name`` just drops that topic. ``producers`` is None when clients are not asked for
    or when no connection has published (nsqd leaves its slice nil).
    """
    if topic_name:
        topic = nsqd.topics.get(topic_name)
        if topic is None:
            return None, None
        topics = [topic]
    else:
        topics = sorted(nsqd.topics.values(), key=lambda t: t.name)

    topic_list = []
    for topic in topics:
        if channel_name:
            channel = topic.channels.get(channel_name)
            if channel is None:
                continue
            channels = [channel]
        else:
            channels = sorted(topic.channels.values(), key=lambda c: c.name)
        topic_list.append(
            topic_stats(
                topic,
                channels,
                include_clients=include_clients,
                topic_filter=topic_name,
                e2e=e2e,
            )
        )

    producers = None
    if include_clients:
        for client in list(nsqd.clients.values()):
            stats = client_stats(client, topic_name)
            if "pub_counts" in stats:
                producers = producers or []
                producers.append(stats)
    return topic_list, producers


def snapshot(
    nsqd: Any,
    *,
    topic_name: str = "",
    channel_name: str = "",
    include_clients: bool = True,
    include_mem: bool = True,
    e2e: E2ESource = empty_e2e,
) -> dict:
    """The whole /stats?format=json document; ``memory`` is left out unless ``include_mem``."""
    topics, producers = collect(nsqd, topic_name, channel_name, include_clients, e2e)
    doc: dict[str, Any] = {
        "version": NSQ_VERSION,
        "health": nsqd.health(),
        "start_time": int(nsqd.start_time),
        "topics": topics,
    }
    if include_mem:
        doc["memory"] = memory_stats()
    doc["producers"] = producers
    return doc


# ---------------------------------------------------------------------------------------------
# Memory: Python figures under Go's runtime.MemStats names

_GC_PAUSES_NS: deque[int] = deque(maxlen=256)  # Go keeps the last 256 pauses too
_gc_started: list[int] = []


def _on_gc(phase: str, _info: dict) -> None:
    if phase == "start":
        _gc_started.append(time.perf_counter_ns())
    elif _gc_started:
        _GC_PAUSES_NS.append(time.perf_counter_ns() - _gc_started.pop())


def track_gc_pauses() -> None:
    """Start timing collector pauses (idempotent); /stats reports their percentiles."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def _percentile(perc: float, ordered: list[int]) -> int:
    """nsqd's percentile(): nearest rank, rounded half up, clamped to the last element."""
    if not ordered:
        return 0
    index = int(perc / 100.0 * len(ordered) + 0.5)
    return ordered[min(index, len(ordered) - 1)]


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        # ru_maxrss is the peak, in KiB on Linux and bytes on macOS: the best fallback there is.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def memory_stats() -> dict:
    """nsqd's memStats keys filled with the nearest CPython figure.

    Approximations (Go's runtime has no CPython equivalent for these):
    - ``heap_objects``: ``sys.getallocatedblocks()`` (live allocator blocks, not GC objects);
    - ``heap_in_use_bytes``: the process resident set size (``/proc/self/statm``, else peak RSS);
    - ``heap_idle_bytes``, ``heap_released_bytes``: 0, no CPython counterpart;
    - ``gc_pause_usec_*``: percentiles of the last 256 collector pauses timed through
      ``gc.callbacks`` (after :func:`track_gc_pauses`), in microseconds, as nsqd computes them;
    - ``next_gc_bytes``: allocations left before the next generation-0 collection
      (threshold minus ``gc.get_count()[0]``): an object count, not bytes;
    - ``gc_total_runs``: collections over all generations (``gc.get_stats()``).
    """
    track_gc_pauses()
    pauses = sorted(_GC_PAUSES_NS)
    threshold0 = gc.get_threshold()[0]
    return {
        "heap_objects": sys.getallocatedblocks(),
        "heap_idle_bytes": 0,
        "heap_in_use_bytes": _resident_bytes(),
        "heap_released_bytes": 0,
        "gc_pause_usec_100": _percentile(100.0, pauses) // 1000,
        "gc_pause_usec_99": _percentile(99.0, pauses) // 1000,
        "gc_pause_usec_95": _percentile(95.0, pauses) // 1000,
        "next_gc_bytes": max(threshold0 - gc.get_count()[0], 0),
        "gc_total_runs": sum(gen["collections"] for gen in gc.get_stats()),
    }


# ---------------------------------------------------------------------------------------------
# Text rendering (/stats without format=json)

MEMORY_KEYS = (
    "heap_objects",
    "heap_idle_bytes",
    "heap_in_use_bytes",
    "heap_released_bytes",
    "gc_pause_usec_100",
    "gc_pause_usec_99",
    "gc_pause_usec_95",
    "next_gc_bytes",
    "gc_total_runs",
)


def _human_ns(value: float) -> str:
    """nsqd's NanoSecondToHuman, used for the e2e% column."""
    if value > 1e9:
        return f"{value / 1e9:.2f}s"
    if value > 1e6:
        return f"{value / 1e6:.2f}ms"
    if value > 1e3:
        return f"{value / 1e3:.2f}us"
    return f"{value:.2f}ns"


def _e2e_text(e2e: Mapping[str, Any]) -> str:
    return ", ".join(_human_ns(item["value"]) for item in e2e.get("percentiles") or ())


def rfc3339(unix_seconds: float) -> str:
    """Go's time.Unix(s, 0).Format(time.RFC3339) in the local zone (``Z`` for UTC)."""
    stamp = datetime.fromtimestamp(int(unix_seconds)).astimezone()
    text = stamp.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _client_line(client: Mapping[str, Any], now: float) -> str:
    connected = format_duration_ns(int(now - client["connect_ts"]) * 1_000_000_000)
    port = client["remote_address"].rpartition(":")[2]
    ident = f"{client['hostname']}:{port} {client['user_agent']}"
    pub_counts = client.get("pub_counts")
    if pub_counts:
        total = sum(pc["count"] for pc in pub_counts)
        topics = ",".join(f"{pc['topic']}={pc['count']}" for pc in pub_counts)
        return (
            f"[{client['version']} {ident:<21}] msgs: {total:<8d} topics: {topics} "
            f"connected: {connected}"
        )
    return (
        f"[{client['version']} {ident:<21}] state: {client['state']} "
        f"inflt: {client['in_flight_count']:<4d} rdy: {client['ready_count']:<4d} "
        f"fin: {client['finish_count']:<8d} re-q: {client['requeue_count']:<8d} "
        f"msgs: {client['message_count']:<8d} connected: {connected}"
    )


def _policy_line(policy: Mapping[str, Any]) -> str:
    """A channel's delivery policy and what it took out (gnsq only)."""
    ttl = format_duration_ns(policy["msg_ttl"] * 1_000_000)
    dead, dropped = policy["dead_lettered"], policy["dropped"]
    return (
        f"policy: max-attempts: {policy['max_attempts']} msg-ttl: {ttl} "
        f"max-depth: {policy['max_depth']} ({policy['overflow']}) "
        f"dlq: {policy['dead_letter_topic']} "
        f"dead-lettered: {sum(dead.values())} (attempts {dead['max_attempts']}, "
        f"ttl {dead['msg_ttl']}, depth {dead['max_depth']}) "
        f"dropped: ttl {dropped['msg_ttl']}, depth {dropped['max_depth']} "
        f"rejected: {policy['rejected']}"
    )


def render_text(
    doc: Mapping[str, Any], *, now: float | None = None, uptime_ns: int | None = None
) -> str:
    """Render a :func:`snapshot` document as nsqd's plain-text /stats page."""
    now = time.time() if now is None else now
    if uptime_ns is None:
        uptime_ns = int((now - doc["start_time"]) * 1e9)
    out = [
        f"nsqd v{NSQ_VERSION} (built w/python{sys.version.split()[0]})\n",
        f"start_time {rfc3339(doc['start_time'])}\n",
        f"uptime {format_duration_ns(uptime_ns)}\n",
        f"\nHealth: {doc['health']}\n",
    ]
    memory = doc.get("memory")
    if memory is not None:
        out.append("\nMemory:\n")
        out.extend(f"   {key:<25}\t{memory[key]}\n" for key in MEMORY_KEYS)

    topics = doc.get("topics") or []
    out.append("\nTopics:" if topics else "\nTopics: None\n")
    for topic in topics:
        prefix = "*P " if topic["paused"] else "   "
        out.append(
            f"\n{prefix}[{topic['topic_name']:<15}] depth: {topic['depth']:<5d} "
            f"be-depth: {topic['backend_depth']:<5d} msgs: {topic['message_count']:<8d} "
            f"e2e%: {_e2e_text(topic['e2e_processing_latency'])}\n"
        )
        for channel in topic["channels"]:
            prefix = "   *P " if channel["paused"] else "      "
            out.append(
                f"{prefix}[{channel['channel_name']:<25}] depth: {channel['depth']:<5d} "
                f"be-depth: {channel['backend_depth']:<5d} "
                f"inflt: {channel['in_flight_count']:<4d} def: {channel['deferred_count']:<4d} "
                f"re-q: {channel['requeue_count']:<5d} timeout: {channel['timeout_count']:<5d} "
                f"msgs: {channel['message_count']:<8d} "
                f"e2e%: {_e2e_text(channel['e2e_processing_latency'])}\n"
            )
            if "policy" in channel:
                out.append(f"        {_policy_line(channel['policy'])}\n")
            for client in channel["clients"] or ():
                out.append(f"        {_client_line(client, now)}\n")

    producers = doc.get("producers") or []
    if not producers:
        out.append("\nProducers: None\n")
    else:
        out.append("\nProducers:\n")
        out.extend(f"   {_client_line(client, now)}\n" for client in producers)
    return "".join(out)

"""nsqadmin's TopicStats, ChannelStats and ClientStats shapes, built from nsqd ``/stats`` documents.

Mirrors nsqadmin's ``internal/clusterinfo/types.go``: each node's topic and channel keep their own
entry (``nodes``), the sums have ``node`` ``*``; e2e processing-latency percentiles are merged
weighted by each node's sample count, as ``quantile.E2eProcessingLatencyAggregate.Add`` does.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: ClientStats fields that nsqadmin types as bool (nsqd may send them as 0/1 or true/false).
_CLIENT_BOOLS = ("deflate", "snappy", "authed", "tls", "tls_negotiated_protocol_is_mutual")
_CLIENT_TEXTS = (
    "version", "client_id", "hostname", "user_agent", "auth_identity", "auth_identity_url",
    "tls_cipher_suite", "tls_version", "tls_negotiated_protocol",
)
_CLIENT_NUMBERS = (
    "connect_ts", "in_flight_count", "ready_count", "finish_count", "requeue_count",
    "message_count", "sample_rate",
)


def client_stats(node: str, client: dict[str, Any], now: float) -> dict[str, Any]:
    """One nsqd client entry in nsqadmin's shape (``connected`` in nanoseconds)."""
    out: dict[str, Any] = {"node": node, "remote_address": client.get("remote_address", "")}
    for key in _CLIENT_TEXTS:
        out[key] = str(client.get(key) or "")
    for key in _CLIENT_NUMBERS:
        out[key] = int(client.get(key) or 0)
    for key in _CLIENT_BOOLS:
        out[key] = bool(client.get(key))
    out["connected"] = max(0, int(now) - out["connect_ts"]) * 1_000_000_000
    return out


#: What gnsqd adds to a node's /stats beyond nsqd's (passed through where present): a channel's
#: delivery policy (nsqd/policy.py) and, in --crash-safe mode, the topic log's figures.
GNSQ_CHANNEL_KEYS = ("policy", "log_position", "log_committed")
GNSQ_TOPIC_KEYS = ("log_bytes", "log_retained_bytes", "log_first_seq", "log_end_seq")


def node_channel_stats(
    producer: dict[str, Any], topic: str, channel: dict[str, Any], now: float
) -> dict[str, Any]:
    """One node's channel, as nsqadmin's ChannelStats (``memory_depth`` = depth - backend)."""
    node = producer["node"]
    clients = [client_stats(node, c, now) for c in channel.get("clients") or []]
    depth = int(channel.get("depth", 0))
    backend = int(channel.get("backend_depth", 0))
    return {
        "node": node,
        "hostname": producer["hostname"],
        "topic_name": topic,
        "channel_name": channel["channel_name"],
        "depth": depth,
        "memory_depth": depth - backend,
        "backend_depth": backend,
        "in_flight_count": int(channel.get("in_flight_count", 0)),
        "deferred_count": int(channel.get("deferred_count", 0)),
        "requeue_count": int(channel.get("requeue_count", 0)),
        "timeout_count": int(channel.get("timeout_count", 0)),
        "message_count": int(channel.get("message_count", 0)),
        "client_count": int(channel.get("client_count", len(clients))),
        "nodes": [],
        "clients": sorted(clients, key=lambda c: (c["hostname"], c["client_id"])),
        "paused": bool(channel.get("paused", False)),
        "e2e_processing_latency": node_e2e(channel.get("e2e_processing_latency"), topic,
                                           channel["channel_name"], node),
        **{key: channel[key] for key in GNSQ_CHANNEL_KEYS if key in channel},
    }


def node_topic_stats(producer: dict[str, Any], topic: dict[str, Any], now: float) -> dict[str, Any]:
    """One node's topic, as nsqadmin's TopicStats, with that node's channels."""
    name = topic["topic_name"]
    depth = int(topic.get("depth", 0))
    backend = int(topic.get("backend_depth", 0))
    return {
        "node": producer["node"],
        "hostname": producer["hostname"],
        "topic_name": name,
        "depth": depth,
        "memory_depth": depth - backend,
        "backend_depth": backend,
        "message_count": int(topic.get("message_count", 0)),
        "nodes": [],
        "channels": [
            node_channel_stats(producer, name, channel, now)
            for channel in topic.get("channels") or []
        ],
        "paused": bool(topic.get("paused", False)),
        "e2e_processing_latency": node_e2e(topic.get("e2e_processing_latency"), name, "",
                                           producer["node"]),
        **{key: topic[key] for key in GNSQ_TOPIC_KEYS if key in topic},
    }


def node_e2e(raw: dict[str, Any] | None, topic: str, channel: str, host: str) -> dict[str, Any]:
    """One node's ``e2e_processing_latency`` as nsqadmin reads it: every percentile gets
    min = max = average = its value and, as its weight, the node's sample ``count``."""
    count = int((raw or {}).get("count", 0))
    percentiles = [
        {"quantile": p["quantile"], "value": p["value"], "max": p["value"], "min": p["value"],
         "average": p["value"], "count": count}
        for p in (raw or {}).get("percentiles") or []
    ]
    return {"count": count, "percentiles": percentiles, "topic": topic, "channel": channel,
            "host": host}


def merge_e2e(parts: list[dict[str, Any]], topic: str, channel: str) -> dict[str, Any]:
    """Per-node percentiles merged per quantile: max, min, and the average weighted by count."""
    by_quantile: dict[float, list[dict[str, Any]]] = {}
    for part in parts:
        for p in part["percentiles"]:
            by_quantile.setdefault(p["quantile"], []).append(p)
    percentiles = []
    for quantile in sorted(by_quantile, reverse=True):
        items = by_quantile[quantile]
        count = sum(p["count"] for p in items)
        average = sum(p["average"] * p["count"] for p in items) / count if count else 0
        items = [p for p in items if p["count"]] or items  # a node without samples has no min
        percentiles.append({
            "quantile": quantile,
            "max": max(p["max"] for p in items),
            "min": min(p["min"] for p in items),
            "average": average,
            "count": count,
        })
    return {"count": sum(p["count"] for p in parts), "percentiles": percentiles,
            "topic": topic, "channel": channel, "host": "*"}


_SUMMED_CHANNEL = (
    "depth", "memory_depth", "backend_depth", "in_flight_count", "deferred_count",
    "requeue_count", "timeout_count", "message_count", "client_count",
)


def aggregate_channel(topic: str, name: str, per_node: list[dict[str, Any]]) -> dict[str, Any]:
    """A channel summed over nodes (``node`` is ``*``), with ``nodes`` and all clients."""
    per_node = sorted(per_node, key=lambda c: (c["hostname"], c["node"]))
    out: dict[str, Any] = {"node": "*", "hostname": "", "topic_name": topic, "channel_name": name}
    for key in _SUMMED_CHANNEL:
        out[key] = sum(c[key] for c in per_node)
    out["nodes"] = per_node
    clients = [client for c in per_node for client in c["clients"]]
    out["clients"] = sorted(clients, key=lambda c: (c["hostname"], c["client_id"]))
    out["paused"] = any(c["paused"] for c in per_node)
    out["e2e_processing_latency"] = merge_e2e(
        [c["e2e_processing_latency"] for c in per_node], topic, name
    )
    policies = [{"node": c["node"], **c["policy"]} for c in per_node if "policy" in c]
    if policies:
        out["policies"] = policies
    return out


def aggregate_topic(name: str, per_node: list[dict[str, Any]]) -> dict[str, Any]:
    """A topic summed over nodes: ``nodes`` holds each node's entry, ``channels`` the sums."""
    per_node = sorted(per_node, key=lambda t: (t["hostname"], t["node"]))
    channels: dict[str, list[dict[str, Any]]] = {}
    for topic in per_node:
        for channel in topic["channels"]:
            channels.setdefault(channel["channel_name"], []).append(channel)
    return {
        "node": "*",
        "hostname": "",
        "topic_name": name,
        "depth": sum(t["depth"] for t in per_node),
        "memory_depth": sum(t["memory_depth"] for t in per_node),
        "backend_depth": sum(t["backend_depth"] for t in per_node),
        "message_count": sum(t["message_count"] for t in per_node),
        "nodes": per_node,
        "channels": [aggregate_channel(name, c, channels[c]) for c in sorted(channels)],
        "paused": any(t["paused"] for t in per_node),
        "e2e_processing_latency": merge_e2e(
            [t["e2e_processing_latency"] for t in per_node], name, ""
        ),
    }


def aggregate_topics(
    node_stats: Iterable[tuple[dict[str, Any], dict[str, Any]]], now: float,
    names: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Every topic in (producer, ``/stats`` document) pairs, summed; ``names`` adds empty ones."""
    per_topic: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for producer, stats in node_stats:
        for topic in (stats or {}).get("topics") or []:
            per_topic.setdefault(topic["topic_name"], []).append(
                node_topic_stats(producer, topic, now)
            )
    return [aggregate_topic(name, per_topic[name]) for name in sorted(per_topic)]

"""What gnsqadmin knows about the cluster, read from nsqlookupd's and nsqd's HTTP APIs.

Mirrors nsqadmin's ``internal/clusterinfo``: nodes come from every lookupd's ``/nodes`` (merged by
TCP address) and from each ``--nsqd-http-address``'s ``/info`` and ``/stats``; per-node
``/stats?format=json`` documents are summed into the topic and channel shapes nsqadmin's JSON API
returns. I/O goes through an injected ``fetch(method, url)``, so the merging is tested with plain
dicts; requests to several daemons run in parallel greenlets. A failure on some daemons is a
warning string; a failure on all of them raises :class:`UpstreamError`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import gevent

from gnsq_server.admin.stats import (
    aggregate_topic,
    aggregate_topics,
    node_topic_stats,
)

#: ``fetch(method, url)`` returns the decoded JSON body (None when empty) or raises.
Fetch = Callable[[str, str], Any]

TOPIC_ACTIONS = ("pause", "unpause", "empty")


class UpstreamError(Exception):
    """Every daemon asked failed; ``str()`` lists each failure."""


def http_url(address: str, path: str, params: dict[str, str] | None = None) -> str:
    """``http://address/path?params``; an address with a scheme keeps it."""
    base = address if "://" in address else f"http://{address}"
    query = f"?{urlencode(params)}" if params else ""
    return f"{base.rstrip('/')}{path}{query}"


def node_address(host: str, port: int) -> str:
    """``host:port`` as nsqadmin names a node (brackets around IPv6 hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_version(text: str) -> tuple[int, ...]:
    """The numeric part of a semver (``1.3.0-alpha`` -> (1, 3, 0)); (0, 0, 0) if unparseable."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


# --- nodes -----------------------------------------------------------------------------------


def _producer(peer: dict[str, Any], http_address: str | None = None) -> dict[str, Any]:
    broadcast = peer.get("broadcast_address", "")
    http_port = int(peer.get("http_port", 0))
    return {
        "remote_addresses": [],
        "remote_address": peer.get("remote_address", ""),
        "hostname": peer.get("hostname", ""),
        "broadcast_address": broadcast,
        "tcp_port": int(peer.get("tcp_port", 0)),
        "http_port": http_port,
        "version": peer.get("version", ""),
        "topics": [],
        "out_of_date": False,
        # gnsq extras: the node's name in URLs, and where gnsqadmin sends its requests.
        "node": node_address(broadcast, http_port),
        "http_address": http_address or node_address(broadcast, http_port),
    }


def merge_producers(
    lookupd_replies: Iterable[tuple[str, dict[str, Any]]],
    nsqd_replies: Iterable[tuple[str, dict[str, Any], dict[str, Any]]] = (),
) -> list[dict[str, Any]]:
    """Nodes from lookupd ``/nodes`` replies and nsqd (``/info``, ``/stats``) replies, merged.

    A node seen by several lookupds (or also given with --nsqd-http-address) appears once, keyed by
    its TCP address; ``remote_addresses`` lists ``lookupd/remote_address`` per lookupd; a topic is
    tombstoned if any lookupd says so. Sorted by hostname, then node.
    """
    nodes: dict[str, dict[str, Any]] = {}
    topics: dict[str, dict[str, bool]] = {}

    def entry(peer: dict[str, Any], http_address: str | None = None) -> dict[str, Any]:
        producer = _producer(peer, http_address)
        key = node_address(producer["broadcast_address"], producer["tcp_port"])
        if key not in nodes:
            nodes[key] = producer
            topics[key] = {}
        elif http_address:
            nodes[key]["http_address"] = http_address
        return nodes[key]

    for lookupd, reply in lookupd_replies:
        for peer in (reply or {}).get("producers") or []:
            producer = entry(peer)
            producer["remote_addresses"].append(f"{lookupd}/{peer.get('remote_address', '')}")
            if not producer["remote_address"]:
                producer["remote_address"] = peer.get("remote_address", "")
            tombstones = peer.get("tombstones") or []
            node_topics = topics[node_address(producer["broadcast_address"], producer["tcp_port"])]
            for index, topic in enumerate(peer.get("topics") or []):
                stone = bool(tombstones[index]) if index < len(tombstones) else False
                node_topics[topic] = node_topics.get(topic, False) or stone
    for address, info, stats in nsqd_replies:
        producer = entry(info, address)
        node_topics = topics[node_address(producer["broadcast_address"], producer["tcp_port"])]
        for topic in (stats or {}).get("topics") or []:
            node_topics.setdefault(topic["topic_name"], False)
    newest = max((parse_version(p["version"]) for p in nodes.values()), default=(0, 0, 0))
    for key, producer in nodes.items():
        producer["topics"] = [
            {"topic": name, "tombstoned": stone} for name, stone in sorted(topics[key].items())
        ]
        producer["out_of_date"] = parse_version(producer["version"]) < newest
    return sorted(nodes.values(), key=lambda p: (p["hostname"], p["node"]))


def find_node(producers: Iterable[dict[str, Any]], node: str) -> dict[str, Any] | None:
    """The producer named ``node`` (its broadcast HTTP address, or the address it was given as)."""
    return next((p for p in producers if node in (p["node"], p["http_address"])), None)


def warning(messages: list[str]) -> str:
    """nsqadmin's ``message`` field: empty, or ``WARNING: a; b``."""
    return "WARNING: " + "; ".join(messages) if messages else ""


# --- the cluster -----------------------------------------------------------------------------


class ClusterInfo:
    """Reads and changes the cluster through lookupd and nsqd HTTP APIs (as nsqadmin does).

    Every method returns its value together with a list of per-daemon failures (warnings), and
    raises UpstreamError when all the daemons it asked failed.
    """

    def __init__(
        self,
        fetch: Fetch,
        lookupd_http_addresses: Iterable[str] = (),
        nsqd_http_addresses: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fetch = fetch
        self.lookupd_addresses = list(lookupd_http_addresses)
        self.nsqd_addresses = list(nsqd_http_addresses)
        self.clock = clock

    def _gather(
        self, requests: list[tuple[str, str]], errors: list[str]
    ) -> list[tuple[int, Any]]:
        """Run (method, url) requests in parallel: (index, reply) of the ones that succeeded."""

        jobs = [gevent.spawn(self._call, method, url) for method, url in requests]
        gevent.joinall(jobs)
        results: list[tuple[int, Any]] = []
        failures: list[str] = []
        for index, job in enumerate(jobs):
            ok, value = job.value
            if ok:
                results.append((index, value))
            else:
                method, url = requests[index]
                failures.append(f"{method} {url}: {value}")
        if failures and not results:
            raise UpstreamError("; ".join(failures))
        errors.extend(failures)
        return results

    def _call(self, method: str, url: str) -> tuple[bool, Any]:
        """(True, reply) or (False, error): a greenlet that raised would print a traceback."""
        try:
            return True, self.fetch(method, url)
        except Exception as exc:  # any failure of one daemon is that daemon's warning
            return False, exc

    # reads

    def topics(self, errors: list[str]) -> list[str]:
        """Topic names: lookupds' ``/topics`` and the configured nsqds' ``/stats``, merged."""
        names: set[str] = set()
        if self.lookupd_addresses:
            urls = [("GET", http_url(a, "/topics")) for a in self.lookupd_addresses]
            for _index, reply in self._gather(urls, errors):
                names.update((reply or {}).get("topics") or [])
        if self.nsqd_addresses:
            params = {"format": "json", "include_clients": "false", "include_mem": "false"}
            urls = [("GET", http_url(a, "/stats", params)) for a in self.nsqd_addresses]
            for _index, reply in self._gather(urls, errors):
                names.update(t["topic_name"] for t in (reply or {}).get("topics") or [])
        return sorted(names)

    def producers(self, errors: list[str]) -> list[dict[str, Any]]:
        """All nodes (see :func:`merge_producers`)."""
        lookupd_replies: list[tuple[str, dict[str, Any]]] = []
        nsqd_replies: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        requests = [("GET", http_url(a, "/nodes")) for a in self.lookupd_addresses]
        stats_params = {"format": "json", "include_clients": "false", "include_mem": "false"}
        for address in self.nsqd_addresses:
            requests.append(("GET", http_url(address, "/info")))
            requests.append(("GET", http_url(address, "/stats", stats_params)))
        replies = dict(self._gather(requests, errors)) if requests else {}
        count = len(self.lookupd_addresses)
        for index, address in enumerate(self.lookupd_addresses):
            if index in replies:
                lookupd_replies.append((address, replies[index]))
        for offset, address in enumerate(self.nsqd_addresses):
            info, stats = count + 2 * offset, count + 2 * offset + 1
            if info in replies:
                nsqd_replies.append((address, replies[info], replies.get(stats) or {}))
        return merge_producers(lookupd_replies, nsqd_replies)

    def topic_producers(self, topic: str, errors: list[str]) -> list[dict[str, Any]]:
        """The nodes that have ``topic`` (tombstoned ones included, so actions reach them).

        A topic no node has must at least be registered in a lookupd, else UpstreamError with
        ``TOPIC_NOT_FOUND``, as nsqadmin answers (its lookupd ``/lookup`` gives 404).
        """
        producers = [
            p for p in self.producers(errors) if any(t["topic"] == topic for t in p["topics"])
        ]
        if not producers:
            self._require_registered(topic, errors)
        return producers

    def _require_registered(self, topic: str, errors: list[str]) -> None:
        if not self.lookupd_addresses:
            raise UpstreamError("failed to query any nsqd: TOPIC_NOT_FOUND")
        if topic not in self.topics(errors):
            raise UpstreamError("failed to query any nsqlookupd: TOPIC_NOT_FOUND")

    def nsqd_stats(
        self,
        producers: list[dict[str, Any]],
        errors: list[str],
        topic: str = "",
        include_clients: bool = True,
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(producer, ``/stats?format=json`` document) for each producer that answered."""
        params = {"format": "json", "include_mem": "false",
                  "include_clients": "true" if include_clients else "false"}
        if topic:
            params["topic"] = topic
        urls = [("GET", http_url(p["http_address"], "/stats", params)) for p in producers]
        if not urls:
            return []
        return [(producers[index], reply or {}) for index, reply in self._gather(urls, errors)]

    def topic_stats(self, topic: str, errors: list[str]) -> dict[str, Any]:
        """One topic summed over its nodes, with its channels and their clients."""
        producers = self.topic_producers(topic, errors)
        stats = self.nsqd_stats(producers, errors, topic=topic)
        found = aggregate_topics(stats, self.clock())
        return next((t for t in found if t["topic_name"] == topic), aggregate_topic(topic, []))

    def channel_stats(self, topic: str, channel: str, errors: list[str]) -> dict[str, Any] | None:
        """One channel summed over nodes, with its clients; None if no node has it."""
        summed = self.topic_stats(topic, errors)
        return next((c for c in summed["channels"] if c["channel_name"] == channel), None)

    def node_stats(self, node: str, errors: list[str]) -> dict[str, Any] | None:
        """One node's topics (nsqadmin's ``/api/nodes/<node>``); None if no such node."""
        producer = find_node(self.producers(errors), node)
        if producer is None:
            return None
        now = self.clock()
        stats = self.nsqd_stats([producer], [])
        topics = [
            node_topic_stats(producer, topic, now)
            for _producer, doc in stats
            for topic in doc.get("topics") or []
        ]
        return {
            "node": node,
            "topics": topics,
            "total_messages": sum(t["message_count"] for t in topics),
            "total_clients": sum(len(c["clients"]) for t in topics for c in t["channels"]),
        }

    def overview(self, errors: list[str]) -> dict[str, Any]:
        """Every node and every topic summed (no clients): one refresh of the UI."""
        producers = self.producers(errors)
        names = self.topics(errors) if self.lookupd_addresses else []
        stats = self.nsqd_stats(producers, errors, include_clients=False)
        return {"topics": aggregate_topics(stats, self.clock(), names), "nodes": producers}

    # writes

    def _post_all(self, requests: list[tuple[str, str]], errors: list[str]) -> None:
        if requests:
            self._gather(requests, errors)

    def create_topic_channel(self, topic: str, channel: str, errors: list[str]) -> None:
        """Register the topic (and channel) on every lookupd; a channel is also created on every
        nsqd that has the topic, so it keeps the messages published before its first consumer.
        """
        requests = [("POST", http_url(a, "/topic/create", {"topic": topic}))
                    for a in self.lookupd_addresses]
        if channel:
            params = {"topic": topic, "channel": channel}
            requests += [("POST", http_url(a, "/channel/create", params))
                         for a in self.lookupd_addresses]
            producers = [p for p in self.producers(errors)
                         if any(t["topic"] == topic and not t["tombstoned"] for t in p["topics"])]
            requests += [("POST", http_url(p["http_address"], "/channel/create", params))
                         for p in producers]
        self._post_all(requests, errors)

    def topic_action(self, topic: str, action: str, errors: list[str]) -> None:
        """``pause``, ``unpause`` or ``empty`` the topic on every node that has it."""
        producers = self.topic_producers(topic, errors)
        self._post_all(
            [("POST", http_url(p["http_address"], f"/topic/{action}", {"topic": topic}))
             for p in producers],
            errors,
        )

    def channel_action(self, topic: str, channel: str, action: str, errors: list[str]) -> None:
        """``pause``, ``unpause`` or ``empty`` the channel on every node that has the topic."""
        producers = self.topic_producers(topic, errors)
        params = {"topic": topic, "channel": channel}
        self._post_all(
            [("POST", http_url(p["http_address"], f"/channel/{action}", params))
             for p in producers],
            errors,
        )

    def replay_channel(self, topic: str, channel: str, since: str, errors: list[str]) -> None:
        """gnsqd --crash-safe: deliver again what was published since `since` on every node."""
        producers = self.topic_producers(topic, errors)
        params = {"topic": topic, "channel": channel, "since": since}
        self._post_all(
            [("POST", http_url(p["http_address"], "/channel/replay", params))
             for p in producers],
            errors,
        )

    def delete_topic(self, topic: str, errors: list[str]) -> None:
        """Delete from every lookupd, then from every node that has it."""
        producers = self.topic_producers(topic, errors)
        params = {"topic": topic}
        requests = [("POST", http_url(a, "/topic/delete", params)) for a in self.lookupd_addresses]
        requests += [("POST", http_url(p["http_address"], "/topic/delete", params))
                     for p in producers]
        self._post_all(requests, errors)

    def delete_channel(self, topic: str, channel: str, errors: list[str]) -> None:
        """Delete from every lookupd, then from every node that has the topic."""
        producers = self.topic_producers(topic, errors)
        params = {"topic": topic, "channel": channel}
        requests = [("POST", http_url(a, "/channel/delete", params))
                    for a in self.lookupd_addresses]
        requests += [("POST", http_url(p["http_address"], "/channel/delete", params))
                     for p in producers]
        self._post_all(requests, errors)

    def tombstone_topic(self, topic: str, node: str, errors: list[str]) -> None:
        """Tombstone ``node``'s registration of ``topic`` on every lookupd, then delete the topic
        on that node: a tombstone alone lapses when the node registers the topic again."""
        producer = find_node(self.producers(errors), node)
        if producer is None:  # nsqadmin would dial whatever address the URL names
            raise UpstreamError(f"failed to query any nsqd: NODE_NOT_FOUND {node}")
        params = {"topic": topic, "node": node}
        self._post_all(
            [("POST", http_url(a, "/topic/tombstone", params)) for a in self.lookupd_addresses],
            errors,
        )
        delete = http_url(producer["http_address"], "/topic/delete", {"topic": topic})
        self._gather([("POST", delete)], errors)

    def inactive_topics(self, errors: list[str]) -> dict[str, list[str]]:
        """Lookupd topics that no node has, each with its lookupd channels (``?inactive=true``)."""
        if not self.lookupd_addresses:
            return {}
        active = {t["topic"] for p in self.producers(errors) for t in p["topics"]}
        result: dict[str, list[str]] = {}
        for name in self.topics(errors):
            if name in active:
                continue
            urls = [("GET", http_url(a, "/channels", {"topic": name}))
                    for a in self.lookupd_addresses]
            channels: set[str] = set()
            for _index, reply in self._gather(urls, errors):
                channels.update((reply or {}).get("channels") or [])
            result[name] = sorted(channels)
        return result

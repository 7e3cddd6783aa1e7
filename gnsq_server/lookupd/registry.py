"""nsqlookupd's registration db: which producers (nsqd instances) hold which topics and channels.

Pure state, no I/O. Keys are `(category, key, subkey)`:

    ("client", "", "")          every IDENTIFYed connection
    ("topic", topic, "")        producers of a topic
    ("channel", topic, channel) producers of a channel

Each key maps producer id (the connection's `ip:port`) to a `Producer`, a per-key wrapper around
the connection's shared `PeerInfo`: tombstones are per (key, producer), liveness (`last_update`) is
per connection. Keys outlive their producers, as in nsqlookupd, so `/topics` and `/channels` keep
listing them until they are deleted over HTTP. All access happens on one gevent hub, so no lock is
needed: no method here yields.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from gnsq_server.wire import is_ephemeral

CATEGORY_CLIENT = "client"
CATEGORY_TOPIC = "topic"
CATEGORY_CHANNEL = "channel"

#: Matches any key or subkey in `find_*` (never a valid topic or channel name).
WILDCARD = "*"

#: Go's zero `time.Time` as UnixNano (an int64 overflow), which nsqlookupd's /debug reports for
#: `tombstoned_at` when a producer was never tombstoned.
GO_ZERO_TIME_UNIX_NANO = -6795364578871345152

Clock = Callable[[], int]
"""Returns wall-clock time in nanoseconds since the epoch (time.time_ns)."""


class Registration(NamedTuple):
    category: str
    key: str
    subkey: str

    def matches(self, category: str, key: str, subkey: str) -> bool:
        """nsqlookupd's IsMatch: exact category; `*` matches any key or subkey."""
        return (
            self.category == category
            and (key == WILDCARD or self.key == key)
            and (subkey == WILDCARD or self.subkey == subkey)
        )


CLIENT_REGISTRATION = Registration(CATEGORY_CLIENT, "", "")


def topic_registration(topic: str) -> Registration:
    return Registration(CATEGORY_TOPIC, topic, "")


def channel_registration(topic: str, channel: str) -> Registration:
    return Registration(CATEGORY_CHANNEL, topic, channel)


@dataclass
class PeerInfo:
    """What a producer told us in IDENTIFY, shared by all of its registrations."""

    id: str
    remote_address: str
    hostname: str
    broadcast_address: str
    tcp_port: int
    http_port: int
    version: str
    #: ns since the epoch of the last IDENTIFY or PING
    last_update: int = 0

    def public_fields(self) -> dict[str, object]:
        """The producer as /lookup shows it, in nsqlookupd's struct field order."""
        return {
            "remote_address": self.remote_address,
            "hostname": self.hostname,
            "broadcast_address": self.broadcast_address,
            "tcp_port": self.tcp_port,
            "http_port": self.http_port,
            "version": self.version,
        }


@dataclass
class Producer:
    """One producer under one key; the tombstone lives here, not on the peer."""

    peer_info: PeerInfo
    tombstoned: bool = False
    #: ns since the epoch; 0 until tombstoned
    tombstoned_at: int = field(default=0)

    @property
    def id(self) -> str:
        return self.peer_info.id

    def tombstone(self, now_ns: int) -> None:
        self.tombstoned = True
        self.tombstoned_at = now_ns

    def is_tombstoned(self, lifetime_ns: int, now_ns: int) -> bool:
        """A tombstone hides the producer for `lifetime_ns`, then it counts as live again."""
        return self.tombstoned and now_ns - self.tombstoned_at < lifetime_ns


def filter_by_active(
    producers: Iterable[Producer], inactive_timeout_ns: int, tombstone_lifetime_ns: int, now_ns: int
) -> list[Producer]:
    """Drop producers silent for longer than the timeout, and those under a live tombstone."""
    return [
        p
        for p in producers
        if now_ns - p.peer_info.last_update <= inactive_timeout_ns
        and not p.is_tombstoned(tombstone_lifetime_ns, now_ns)
    ]


class RegistrationDB:
    """Registration -> {producer id: Producer}, in insertion order (Go's map order is random)."""

    def __init__(self, clock: Clock = time.time_ns) -> None:
        self.clock = clock
        self._map: dict[Registration, dict[str, Producer]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, registration: object) -> bool:
        return registration in self._map

    def items(self) -> Iterator[tuple[Registration, list[Producer]]]:
        """Every key with its producers (for /debug)."""
        for registration, producers in self._map.items():
            yield registration, list(producers.values())

    def add_registration(self, registration: Registration) -> None:
        """Create an empty key if missing (HTTP /topic/create, /channel/create)."""
        self._map.setdefault(registration, {})

    def add_producer(self, registration: Registration, producer: Producer) -> bool:
        """Add unless this producer id is already there (an existing tombstone survives).

        Returns whether it was added.
        """
        producers = self._map.setdefault(registration, {})
        if producer.id in producers:
            return False
        producers[producer.id] = producer
        return True

    def remove_producer(self, registration: Registration, producer_id: str) -> tuple[bool, int]:
        """Remove a producer from one key, leaving the key. Returns (removed, producers left)."""
        producers = self._map.get(registration)
        if producers is None:
            return False, 0
        removed = producers.pop(producer_id, None) is not None
        return removed, len(producers)

    def remove_registration(self, registration: Registration) -> None:
        self._map.pop(registration, None)

    def find_registrations(self, category: str, key: str, subkey: str) -> list[Registration]:
        return [r for r in self._map if r.matches(category, key, subkey)]

    def find_producers(self, category: str, key: str, subkey: str) -> list[Producer]:
        """Producers under every matching key, each producer id once (first key wins)."""
        found: dict[str, Producer] = {}
        for registration, producers in self._map.items():
            if registration.matches(category, key, subkey):
                for producer_id, producer in producers.items():
                    found.setdefault(producer_id, producer)
        return list(found.values())

    def lookup_registrations(self, producer_id: str) -> list[Registration]:
        """Every key this producer id is registered under."""
        return [r for r, producers in self._map.items() if producer_id in producers]

    def remove_producer_everywhere(self, producer_id: str) -> list[Registration]:
        """What a closing connection does: leave every key (keys stay, even ephemeral ones).

        Returns the keys it was removed from.
        """
        removed = []
        for registration in self.lookup_registrations(producer_id):
            if self.remove_producer(registration, producer_id)[0]:
                removed.append(registration)
        return removed

    # -- the operations of the V1 protocol and the HTTP API, in nsqlookupd's semantics --

    def register(self, peer_info: PeerInfo, topic: str, channel: str = "") -> None:
        """REGISTER: a channel registration also registers its topic."""
        if channel:
            self.add_producer(channel_registration(topic, channel), Producer(peer_info))
        self.add_producer(topic_registration(topic), Producer(peer_info))

    def unregister(self, producer_id: str, topic: str, channel: str = "") -> None:
        """UNREGISTER: leave a channel, or a topic and all of its channels.

        An `#ephemeral` channel (or topic) key is removed once no producer is left in it; the
        channel keys of an unregistered topic stay, as in nsqlookupd.
        """
        if channel:
            key = channel_registration(topic, channel)
            _, left = self.remove_producer(key, producer_id)
            if left == 0 and is_ephemeral(channel):
                self.remove_registration(key)
            return
        for key in self.find_registrations(CATEGORY_CHANNEL, topic, WILDCARD):
            self.remove_producer(key, producer_id)
        key = topic_registration(topic)
        _, left = self.remove_producer(key, producer_id)
        if left == 0 and is_ephemeral(topic):
            self.remove_registration(key)

    def topics(self) -> list[str]:
        return [r.key for r in self.find_registrations(CATEGORY_TOPIC, WILDCARD, "")]

    def channels(self, topic: str) -> list[str]:
        return [r.subkey for r in self.find_registrations(CATEGORY_CHANNEL, topic, WILDCARD)]

    def has_topic(self, topic: str) -> bool:
        """Whether the topic key exists (`*` asks whether any topic does, as in nsqlookupd)."""
        return bool(self.find_registrations(CATEGORY_TOPIC, topic, ""))

    def active_topic_producers(
        self, topic: str, inactive_timeout_ns: int, tombstone_lifetime_ns: int
    ) -> list[Producer]:
        """The producers /lookup hands to consumers: recently seen and not tombstoned."""
        return filter_by_active(
            self.find_producers(CATEGORY_TOPIC, topic, ""),
            inactive_timeout_ns,
            tombstone_lifetime_ns,
            self.clock(),
        )

    def nodes(
        self, inactive_timeout_ns: int, tombstone_lifetime_ns: int
    ) -> list[tuple[PeerInfo, list[str], list[bool]]]:
        """/nodes: every recently seen producer (tombstoned ones too) with its topics and, for
        each topic, whether it is tombstoned there."""
        now = self.clock()
        result = []
        clients = self.find_producers(CATEGORY_CLIENT, "", "")
        for client in filter_by_active(clients, inactive_timeout_ns, 0, now):
            topics = [
                r.key
                for r in self.lookup_registrations(client.id)
                if r.matches(CATEGORY_TOPIC, WILDCARD, "")
            ]
            tombstones = [
                self._map[topic_registration(t)][client.id].is_tombstoned(
                    tombstone_lifetime_ns, now
                )
                for t in topics
            ]
            result.append((client.peer_info, topics, tombstones))
        return result

    def tombstone_topic_producer(self, topic: str, node: str) -> None:
        """Tombstone the producers of `topic` whose `broadcast_address:http_port` is `node`."""
        now = self.clock()
        for producer in self.find_producers(CATEGORY_TOPIC, topic, ""):
            info = producer.peer_info
            if f"{info.broadcast_address}:{info.http_port}" == node:
                producer.tombstone(now)

    def create_topic(self, topic: str) -> None:
        self.add_registration(topic_registration(topic))

    def create_channel(self, topic: str, channel: str) -> None:
        self.add_registration(channel_registration(topic, channel))
        self.add_registration(topic_registration(topic))

    def delete_topic(self, topic: str) -> None:
        """Drop the topic key and its channel keys (producers are not told).

        The name is not validated, so `*` drops every topic and channel, as in nsqlookupd.
        """
        keys = self.find_registrations(CATEGORY_CHANNEL, topic, WILDCARD)
        keys += self.find_registrations(CATEGORY_TOPIC, topic, "")
        for key in keys:
            self.remove_registration(key)

    def delete_channel(self, topic: str, channel: str) -> bool:
        """Returns False when there was no such channel key."""
        key = channel_registration(topic, channel)
        if key not in self._map:
            return False
        self.remove_registration(key)
        return True

"""The nsqd registry: topics, live clients, health, and the one timeout sweeper."""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from .. import logs
from ..wire import is_ephemeral
from .channel import Channel
from .topic import DiscardBackend, Topic

log = logging.getLogger(__name__)


class Sweeper:
    """The daemon's single timer: wakes each channel when its earliest deadline is due.

    Channels ask to be woken at a time; the sweeper sleeps until the earliest request
    (no fixed polling interval), then lets the channel requeue timed-out messages and
    release deferred ones. A request superseded by an earlier one is skipped when popped.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Channel]] = []
        self._order = itertools.count()
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None

    def schedule(self, channel: Channel, when: float) -> None:
        heap = self._heap
        earliest = heap[0][0] if heap else None
        heapq.heappush(heap, (when, next(self._order), channel))
        if earliest is None or when < earliest:
            self._wake.set()

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def _run(self) -> None:
        heap = self._heap
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                when, _, channel = heapq.heappop(heap)
                if channel.wake_at != when or channel.exiting:
                    continue  # superseded by an earlier request, or the channel is gone
                try:
                    next_when = channel.sweep(now)
                except Exception:
                    log.exception("sweeping %r failed", channel)
                    next_when = None
                    channel.wake_at = None
                if next_when is not None:
                    heapq.heappush(heap, (next_when, next(self._order), channel))
            self._wake.clear()
            self._wake.wait(heap[0][0] - now if heap else None)


class NSQD:
    def __init__(self, opts) -> None:
        self.opts = opts
        self.start_time = int(time.time())
        self.hostname = socket.gethostname()
        self.tcp_port = 0
        self.http_port = 0
        self.https_port = 0
        self.topics: dict[str, Topic] = {}
        self.clients: dict = {}
        self.sweeper = Sweeper()
        self._listeners: dict[str, list[Callable]] = {}
        self._unhealthy: str | None = None
        self.exiting = False

    # -- health -------------------------------------------------------------------------

    def health(self) -> str:
        return "OK" if self._unhealthy is None else f"NOK - {self._unhealthy}"

    def is_healthy(self) -> bool:
        return self._unhealthy is None

    def set_unhealthy(self, err: Exception | str) -> None:
        self._unhealthy = str(err)

    def set_healthy(self) -> None:
        self._unhealthy = None

    # -- events for metadata, lookupd and others ----------------------------------------

    def subscribe(self, event: str, callback: Callable) -> None:
        self._listeners.setdefault(event, []).append(callback)

    def notify(self, event: str, subject) -> None:
        for callback in self._listeners.get(event, ()):
            try:
                callback(subject)
            except Exception:
                log.exception("%s listener failed", event)

    # -- topics -------------------------------------------------------------------------

    def get_topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            ephemeral = is_ephemeral(name)
            topic = Topic(self, name, ephemeral, self.new_backend(name, ephemeral))
            self.topics[name] = topic
            log.info("TOPIC(%s): created", name)
            self.notify("topic_created", topic)
        return topic

    def find_topic(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def delete_topic(self, name: str) -> None:
        topic = self.topics.pop(name)  # KeyError when missing
        topic.exiting = True
        log.info("TOPIC(%s): deleting", name)
        for channel_name in list(topic.channels):
            topic.delete_channel(channel_name)
        topic.empty()
        if topic.backend is not None:
            topic.backend.delete()
        self.notify("topic_deleted", topic)

    def new_channel(self, topic: Topic, name: str) -> Channel:
        ephemeral = is_ephemeral(name)
        backend = self.new_backend(f"{topic.name}:{name}", ephemeral)
        return Channel(topic, name, ephemeral, backend, self.opts, self.sweeper)

    def new_backend(self, name: str, ephemeral: bool):
        """Where overflow goes: nowhere for ephemeral queues; refused (None) without disk."""
        return DiscardBackend() if ephemeral else None

    # -- runtime configuration ----------------------------------------------------------

    def set_log_level(self, name: str) -> None:
        logs.set_level(name)
        self.opts.log_level = name.lower()

    def set_lookupd_addresses(self, addresses: list[str]) -> None:
        self.opts.nsqlookupd_tcp_addresses = list(addresses)
        self.notify("lookupd_addresses_changed", list(addresses))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.sweeper.start()

    def stop(self) -> None:
        self.exiting = True
        self.sweeper.stop()
        for topic in self.topics.values():
            topic.exiting = True
            for channel in topic.channels.values():
                channel.exiting = True

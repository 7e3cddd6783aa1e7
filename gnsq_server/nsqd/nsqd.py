"""The nsqd registry: topics, live clients, health, and the one timeout sweeper."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from .. import logs
from ..wire import is_ephemeral
from . import metadata, policy
from .channel import Channel
from .commit import GroupCommit
from .cursor import Cursor
from .diskqueue import DiskQueue, message_size_bounds
from .topic import DiscardBackend, Topic
from .topiclog import Retention, TopicLog

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
        self._group_commit = GroupCommit()
        self._listeners: dict[str, list[Callable]] = {}
        self._unhealthy: str | None = None
        self.exiting = False
        self.data_path = opts.data_path or os.getcwd()
        self._lock = metadata.DataPathLock(self.data_path)
        self._loading = False
        self._metadata_dirty = Event()
        self._background: list[gevent.Greenlet] = []
        self.policies = policy.PolicyBook(self, policy.defaults_from(opts))
        for event in (
            "topic_created",
            "topic_deleted",
            "channel_created",
            "channel_deleted",
            "topic_paused",
            "topic_unpaused",
            "channel_paused",
            "channel_unpaused",
            "channel_policy_changed",
            "dead_letters_recorded",
        ):
            self.subscribe(event, self._metadata_changed)

    # -- health -------------------------------------------------------------------------

    def health(self) -> str:
        return "OK" if self._unhealthy is None else f"NOK - {self._unhealthy}"

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
            topic = Topic(self, name, ephemeral, self.new_topic_backend(name, ephemeral))
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
        queue_name = f"{topic.name}:{name}"
        if isinstance(topic.backend, TopicLog):
            # crash-safe: a cursor over the topic log; a channel created at run time starts
            # where the topic hands out next, one without a cursor file at the oldest record
            log_ = topic.backend
            start = log_.first_seq() if self._loading else log_.fanout
            backend = Cursor(log_, name, persist=not ephemeral, start=start)
            deferred_file = None
        else:
            backend = self.new_backend(queue_name, ephemeral)
            deferred_file = (
                None if ephemeral else metadata.deferred_path(self.data_path, queue_name)
            )
        channel = Channel(topic, name, ephemeral, backend, self.opts, self.sweeper, deferred_file)
        channel.restore_deferred()
        self.policies.attach(channel)
        return channel

    def new_topic_backend(self, name: str, ephemeral: bool):
        """Crash-safe mode keeps a durable topic in its log; otherwise as new_backend."""
        opts = self.opts
        if not opts.crash_safe or ephemeral:
            return self.new_backend(name, ephemeral)
        return TopicLog(
            name,
            self.data_path,
            opts.max_bytes_per_file,
            opts.max_msg_size,
            opts.sync_every,
            Retention(opts.retention_time, opts.retention_bytes),
        )

    def new_backend(self, name: str, ephemeral: bool):
        """Overflow goes to a disk queue in nsqd's format; ephemeral queues drop it."""
        if ephemeral:
            return DiscardBackend()
        opts = self.opts
        min_size, max_size = message_size_bounds(opts.max_msg_size)
        return DiskQueue(
            name,
            self.data_path,
            opts.max_bytes_per_file,
            min_size,
            max_size,
            opts.sync_every,
            opts.sync_timeout,
        )

    def commit(self, queues) -> None:
        """Crash-safe mode: wait until these topic logs are fsynced (shared group commit)."""
        self._group_commit.commit(queues)

    def backends(self) -> list:
        queues = []
        for topic in list(self.topics.values()):
            queues.append(topic.backend)
            queues.extend(channel.backend for channel in list(topic.channels.values()))
        return queues

    # -- metadata -----------------------------------------------------------------------

    def _metadata_changed(self, subject) -> None:
        if not self._loading and not getattr(subject, "ephemeral", False):
            self._metadata_dirty.set()

    def persist_metadata(self) -> None:
        data = metadata.encode_metadata(list(self.topics.values()))
        path = os.path.join(self.data_path, metadata.METADATA_FILE)
        metadata.write_atomic(path, data)
        self.policies.save()

    def load_metadata(self) -> None:
        """Recreate the topics and channels of nsqd.dat with their paused flags."""
        self._loading = True
        self.policies.load()
        try:
            for entry in metadata.load_metadata(self.data_path):
                topic = self.get_topic(entry["name"])
                topic.paused = entry["paused"]
                for channel_entry in entry["channels"]:
                    channel = topic.get_channel(channel_entry["name"])
                    channel.paused = channel_entry["paused"]
        finally:
            self._loading = False

    def _metadata_loop(self) -> None:
        """Write nsqd.dat after changes, coalescing bursts, with the fsync off the hub."""
        threadpool = gevent.get_hub().threadpool
        while True:
            self._metadata_dirty.wait()
            self._metadata_dirty.clear()
            try:
                threadpool.apply(self.persist_metadata)
            except OSError as err:
                log.error("failed to persist metadata - %s", err)
            gevent.sleep(0.05)

    def _sync_loop(self) -> None:
        """go-diskqueue fsyncs every --sync-timeout when anything changed; one loop for all."""
        while True:
            gevent.sleep(self.opts.sync_timeout)
            for backend in self.backends():
                try:
                    backend_sync = getattr(backend, "sync_if_needed", None)
                    if backend_sync is not None:
                        backend_sync()
                except OSError as err:
                    log.error("sync failed - %s", err)

    # -- runtime configuration ----------------------------------------------------------

    def set_log_level(self, name: str) -> None:
        logs.set_level(name)
        self.opts.log_level = name.lower()

    def set_lookupd_addresses(self, addresses: list[str]) -> None:
        self.opts.nsqlookupd_tcp_addresses = list(addresses)
        self.notify("lookupd_addresses_changed", list(addresses))

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Lock the data path and load what it holds (before any listener serves)."""
        self._lock.acquire()
        self.load_metadata()
        self.persist_metadata()

    def start(self) -> None:
        self.sweeper.start()
        for topic in list(self.topics.values()):
            topic.start()
        self._background = [gevent.spawn(self._metadata_loop), gevent.spawn(self._sync_loop)]

    def stop(self) -> None:
        """Persist everything held in memory; the listeners are already closed."""
        self.exiting = True
        self.sweeper.stop()
        gevent.killall(self._background)
        for topic in list(self.topics.values()):
            try:
                topic.flush()
            except OSError as err:
                log.error("TOPIC(%s): failed to flush to disk - %s", topic.name, err)
        try:
            self.persist_metadata()
        except OSError as err:
            log.error("failed to persist metadata - %s", err)
        self._lock.release()

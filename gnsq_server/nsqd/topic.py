"""A topic: accepts publishes and gives every channel its own copy of each message.

In crash-safe mode the backend is the topic's log (topiclog.py): a publish is appended once,
fsynced, and each channel reads it through its own cursor; the topic only decides how far
its channels may read (it holds messages back while it has no channel or is paused).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import gevent

from .channel import Channel, QueueFull
from .message import IdFactory, Message, encode_many

if TYPE_CHECKING:
    from .nsqd import NSQD

log = logging.getLogger(__name__)

#: messages handed on per turn while a backlog drains, before yielding to other greenlets
_DRAIN_BATCH = 512


class PublishError(Exception):
    """A publish the topic could not accept (nsqd answers E_PUB_FAILED / HTTP 500)."""


class TopicExiting(PublishError):
    """The topic is being deleted or the daemon is stopping (HTTP 503 EXITING)."""


class DiscardBackend:
    """Ephemeral topics and channels drop what does not fit in memory, as nsqd does."""

    def put(self, data: bytes) -> None:
        pass

    def put_many(self, items: list[bytes]) -> None:
        pass

    def get(self) -> bytes | None:
        return None

    def depth(self) -> int:
        return 0

    def readable(self) -> bool:
        return False

    def empty(self) -> None:
        pass

    def close(self) -> None:
        pass

    def delete(self) -> None:
        pass


class Topic:
    def __init__(self, nsqd: NSQD, name: str, ephemeral: bool, backend) -> None:
        self.nsqd = nsqd
        self.name = name
        self.ephemeral = ephemeral
        self.backend = backend
        self.paused = False
        self.exiting = False
        #: False while channels known to lookupd are being pre-created: publishes wait in the topic
        self.started = True
        self.channels: dict[str, Channel] = {}
        self.memory: deque[Message] = deque()
        #: crash-safe mode: publishes are acknowledged only once fsynced to the topic log
        self.durable = bool(getattr(backend, "acknowledged", False))
        self._mem_capacity = nsqd.opts.mem_queue_size
        self._ids = IdFactory(nsqd.opts.id)
        self._drainer: gevent.Greenlet | None = None
        self.message_count = 0
        self.message_bytes = 0

    def __repr__(self) -> str:
        return f"<Topic {self.name}>"

    def depth(self) -> int:
        return len(self.memory) + self.backend_depth()

    def backend_depth(self) -> int:
        return self.backend.depth() if self.backend is not None else 0

    def has_backlog(self) -> bool:
        """Messages wait in the topic (by disk position, not the possibly stale depth)."""
        return bool(self.memory) or (self.backend is not None and self.backend.readable())

    # -- publishing ---------------------------------------------------------------------

    def publish(self, bodies: list[bytes], defer: float = 0.0) -> list[Message]:
        """Accept a batch all or nothing; `defer` (seconds) holds it back in every channel.
        Returns the messages (their ids are the ones consumers see)."""
        if self.exiting:
            raise TopicExiting("exiting")
        msgs = self._ids.new_messages(bodies)
        if defer > 0:
            for msg in msgs:
                msg.defer = defer
        channels = list(self.channels.values())  # a snapshot: a disk write may yield
        durable = self.durable
        holding = durable or self._holding() or self.has_backlog()
        self._admit(channels, len(msgs), holding)
        try:
            if durable:
                self._append(msgs)  # the channels read it once released
            elif holding:
                self._hold(msgs)
            else:
                self._fan_out(msgs, channels)
        except OSError as err:
            log.error("TOPIC(%s): failed to write messages to disk - %s", self.name, err)
            self.nsqd.set_unhealthy(err)
            raise PublishError(str(err)) from err
        self.nsqd.set_healthy()
        self.message_count += len(msgs)
        self.message_bytes += sum(map(len, bodies))
        if holding:
            self._start_draining()
        return msgs

    def _admit(self, channels: list[Channel], count: int, holding: bool) -> None:
        """Refuse a batch that may not or would not fit (rather than drop it): a channel
        policy's max_depth (policy.DepthExceeded), or a memory queue without a disk queue."""
        for channel in channels:
            if channel.policy is not None:
                channel.policy.admit(count, self)
        if holding:
            if self.backend is None and len(self.memory) + count > self._mem_capacity:
                raise PublishError(f"topic {self.name} memory queue is full")
            return
        for channel in channels:
            room = channel.room()
            if room is not None and room < count:
                raise PublishError(f"channel {self.name}:{channel.name} memory queue is full")

    def _hold(self, msgs: list[Message]) -> None:
        """Keep messages in the topic until it has an unpaused channel to give them to."""
        room = self._mem_capacity - len(self.memory)
        if room > 0:
            self.memory.extend(msgs[:room])
            msgs = msgs[room:]
        if msgs and self.backend is not None:
            self.backend.put_many(encode_many(msgs))

    def _append(self, msgs: list[Message]) -> None:
        """Crash-safe mode: one write to the topic log, fsynced (shared with concurrent
        publishers) before the publisher gets OK."""
        self.backend.append(msgs)
        self.nsqd.commit([self.backend])

    def _fan_out(self, msgs: list[Message], channels: list[Channel]) -> None:
        """Every channel gets its own copy of the batch (the first one the originals)."""
        for channel in channels[1:]:
            channel.put_many([msg.copy() for msg in msgs])
        channels[0].put_many(msgs)

    def _take(self) -> Message | None:
        if self.memory:
            return self.memory.popleft()
        if self.backend is not None and self.backend.readable():
            data = self.backend.get()
            if data is not None:
                return Message.decode(data)
        return None

    def _holding(self) -> bool:
        return self.paused or not self.started or not self.channels

    def hold_until_started(self) -> None:
        """Keep publishes in the topic until start(), as nsqd does while it asks lookupd for
        the topic's channels, so that the first messages reach every known channel."""
        self.started = False

    def start(self) -> None:
        self.started = True
        self._start_draining()

    def _start_draining(self) -> None:
        if self.durable:
            self._release_log()
        elif self._drainer is None and not self._holding() and self.has_backlog():
            self._drainer = gevent.spawn(self._drain)

    def _release_log(self) -> None:
        """Crash-safe mode: let the channels' cursors read what the log holds."""
        if self._holding():
            return
        count = self.backend.release()
        if count:
            for channel in list(self.channels.values()):
                channel.log_grew(count)

    def _drain(self) -> None:
        """Hand a backlog to the channels in batches, yielding between batches."""
        try:
            while not self._holding() and not self.exiting:
                batch = []
                while len(batch) < _DRAIN_BATCH:
                    msg = self._take()
                    if msg is None:
                        break
                    batch.append(msg)
                if not batch:
                    return
                try:
                    self._fan_out(batch, list(self.channels.values()))
                except (OSError, QueueFull) as err:
                    # Disk trouble, or channels without a disk queue are full: keep the batch
                    # in front of the backlog and try again shortly.
                    log.warning("TOPIC(%s): holding backlog - %s", self.name, err)
                    self.memory.extendleft(reversed(batch))
                    gevent.sleep(0.5)
                    continue
                gevent.sleep(0)
        finally:
            self._drainer = None

    # -- channels -----------------------------------------------------------------------

    def get_channel(self, name: str) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.nsqd.new_channel(self, name)
            self.channels[name] = channel
            log.info("TOPIC(%s): new channel(%s)", self.name, name)
            self.nsqd.notify("channel_created", channel)
            self._start_draining()
        return channel

    def find_channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def delete_channel(self, name: str) -> None:
        channel = self.channels.pop(name)  # KeyError when missing
        channel.exiting = True
        log.info("TOPIC(%s): deleting channel(%s)", self.name, name)
        channel.close_clients()
        channel.empty()
        channel.remove_files()
        self.nsqd.notify("channel_deleted", channel)
        if self.ephemeral and not self.channels and not self.exiting:
            self.nsqd.delete_topic(self.name)

    # -- administration -----------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        self.nsqd.notify("topic_paused", self)

    def unpause(self) -> None:
        self.paused = False
        self.nsqd.notify("topic_unpaused", self)
        self._start_draining()

    def empty(self) -> None:
        self.memory.clear()
        if self.backend is not None:
            self.backend.empty()

    def flush(self) -> None:
        """Clean shutdown: every channel's messages, then the topic's own, go to disk."""
        self.exiting = True
        for channel in self.channels.values():
            channel.exiting = True
            channel.flush()
        if self.backend is None or self.ephemeral:
            return
        if self.memory:
            self.backend.put_many(encode_many(self.memory))
        self.memory.clear()
        self.backend.close()

"""Delivery policies per channel: dead letters, message TTL and bounded queues (gnsq only).

nsqd redelivers a failing message forever, never expires one and lets a queue grow without
bound (nsqio/nsq#591, #974, #1309, #1518). A channel may carry a policy, either its own (set
through ``POST /channel/policy``) or the daemon-wide default of the ``--channel-*`` flags:

- ``max_attempts``: a message delivered that many times that times out or is requeued again
  goes to the channel's dead-letter topic instead of back to the channel;
- ``msg_ttl``: a message older than this (from its publish time) is not delivered; it is
  dead-lettered when ``dead_letter_topic`` is set explicitly, else dropped. The check is made
  when the message would be delivered, so deferred messages expire when they come due;
- ``max_depth`` with ``overflow``: ``reject`` refuses a whole publish that would take the
  channel (plus the topic's own backlog) past the limit, before anything is applied;
  ``drop_oldest`` and ``dead_letter_oldest`` take the oldest queued messages out after the
  publish. Depth is the queued count of /stats: in-flight and deferred messages not included.

Dead letters keep their body byte for byte and travel as ordinary NSQ messages (the frame is
unchanged): they are published into the dead-letter topic through ``Topic.publish``, which in
crash-safe mode returns only after the copy is fsynced, and only then is the source copy
finished (at-least-once: a crash in between can dead-letter a message twice, never lose it).
Where they came from is in the dead-letter ledger, keyed by the id the message has in the
dead-letter topic (the id a consumer sees): source topic and channel, the original id and
publish time, attempts and reason, readable with ``GET /topic/dead_letters?topic=..&id=..``
and kept across restarts (the newest ``LEDGER_SIZE`` per dead-letter topic). The default
dead-letter topic name, ``<topic>.<channel>.dlq``, names the source as well.

Why not an envelope or a header: NSQ frames have none, and a wrapped body would break every
consumer that decodes the dead-letter topic with the original message's decoder.

Dead letters are published by one greenlet per channel, in batches, never from inside the
channel's delivery path (a crash-safe publish waits for an fsync). This module is the channel's
friend: it takes queued messages with ``Channel._take`` and lets a copy go with
``Channel._forget``, so how messages are stored stays the channel's business.

Policies and the ledger live in ``gnsq-policies.json`` in the data path, beside nsqd.dat which
stays exactly nsqd's, so nsqd 1.3.0 loads a data path gnsqd wrote and the reverse.
A channel without a policy has ``channel.policy is None`` and pays that one check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import gevent

from ..wire import MAX_NAME_LENGTH, is_valid_name
from . import metadata
from .topic import PublishError

if TYPE_CHECKING:
    from .channel import Channel
    from .message import Message
    from .nsqd import NSQD
    from .topic import Topic

log = logging.getLogger(__name__)

POLICY_FILE = "gnsq-policies.json"
OVERFLOW_MODES = ("reject", "drop_oldest", "dead_letter_oldest")
DEAD_LETTER_SUFFIX = ".dlq"
#: dead-letter ledger entries kept per dead-letter topic (the oldest are forgotten)
LEDGER_SIZE = 10_000
REASONS = ("max_attempts", "msg_ttl", "max_depth")
#: dead letters published per batch
_BATCH = 512
_EPHEMERAL = "#ephemeral"


class PolicyError(ValueError):
    """A policy setting out of range (HTTP 400 INVALID_<FIELD>, or exit status 2 for a flag)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(f"{field} {text}")
        self.field = field
        self.text = text


class DepthExceeded(PublishError):
    """A publish refused by a channel's max_depth (E_PUB_FAILED / E_MPUB_FAILED, HTTP 503)."""


@dataclass(frozen=True)
class Settings:
    """A channel's policy; zero (or "") turns a limit off."""

    max_attempts: int = 0
    msg_ttl: float = 0.0  # seconds
    max_depth: int = 0
    overflow: str = "reject"
    dead_letter_topic: str = ""  # "" = <topic>.<channel>.dlq where a dead-letter topic is needed

    def active(self) -> bool:
        return bool(self.max_attempts or self.msg_ttl or self.max_depth)

    def checked(self, topic_name: str) -> Settings:
        """These settings, or PolicyError naming the first bad field."""
        for field in ("max_attempts", "max_depth"):
            value = getattr(self, field)
            if not isinstance(value, int) or not 0 <= value < 1 << 31:
                raise PolicyError(field, "must be an integer in [0, 2147483647]")
        if self.max_attempts > 65535:
            raise PolicyError("max_attempts", "must be at most 65535 (the frame's attempts field)")
        if not 0 <= self.msg_ttl < 1 << 31:
            raise PolicyError("msg_ttl", "must not be negative")
        if self.overflow not in OVERFLOW_MODES:
            raise PolicyError("overflow", f"must be one of {', '.join(OVERFLOW_MODES)}")
        name = self.dead_letter_topic
        if name and (not is_valid_name(name) or name.endswith(_EPHEMERAL)):
            raise PolicyError("dead_letter_topic", f"{name!r} is not a valid non-ephemeral name")
        if name and name == topic_name:
            raise PolicyError("dead_letter_topic", "must differ from the channel's own topic")
        return self


def defaults_from(opts: Any) -> Settings:
    """The daemon-wide default policy of the --channel-* flags (PolicyError when invalid)."""
    return Settings(
        max_attempts=opts.channel_max_attempts,
        msg_ttl=opts.channel_msg_ttl,
        max_depth=opts.channel_max_depth,
        overflow=opts.channel_overflow,
    ).checked("")


def dead_letter_name(topic_name: str, channel_name: str) -> str:
    """``<topic>.<channel>.dlq``, shortened with a hash to stay a valid 64-character name."""
    base = f"{topic_name.removesuffix(_EPHEMERAL)}.{channel_name.removesuffix(_EPHEMERAL)}"
    if len(base) + len(DEAD_LETTER_SUFFIX) <= MAX_NAME_LENGTH:
        return base + DEAD_LETTER_SUFFIX
    digest = hashlib.sha1(base.encode()).hexdigest()[:8]
    keep = MAX_NAME_LENGTH - len(DEAD_LETTER_SUFFIX) - len(digest) - 1
    return f"{base[:keep]}.{digest}{DEAD_LETTER_SUFFIX}"


class ChannelPolicy:
    """One channel's policy in force, its counters, and its dead letters on their way out."""

    def __init__(self, book: PolicyBook, channel: Channel, settings: Settings) -> None:
        self.book = book
        self.channel = channel
        self.settings = settings
        self.dead_lettered = dict.fromkeys(REASONS, 0)
        self.dropped = dict.fromkeys(("msg_ttl", "max_depth"), 0)
        self.rejected = 0
        #: dead letters (message, reason) not yet safely in the dead-letter topic
        self.pending: list[tuple[Message, str]] = []
        self._worker: gevent.Greenlet | None = None

    @property
    def dead_letter_topic(self) -> str:
        return self.settings.dead_letter_topic or dead_letter_name(
            self.channel.topic_name, self.channel.name
        )

    # -- the channel's hooks ------------------------------------------------------------

    def retry(self, msg: Message) -> bool:
        """A REQ or a timeout: True when the message was taken out as a dead letter."""
        limit = self.settings.max_attempts
        if limit and msg.attempts >= limit:
            self._dead_letter(msg, "max_attempts")
            return True
        return False

    def expired(self, msg: Message) -> bool:
        """About to be delivered: True when the message outlived msg_ttl and was taken out."""
        ttl = self.settings.msg_ttl
        if not ttl or time.time_ns() - msg.timestamp <= ttl * 1e9:
            return False
        if self.settings.dead_letter_topic:
            self._dead_letter(msg, "msg_ttl")
        else:
            self._drop(msg, "msg_ttl")
        return True

    def admit(self, count: int, topic: Topic) -> None:
        """Publish admission: refuse the whole batch when it would take the channel, with what
        still waits in the topic, past max_depth (overflow=reject)."""
        limit = self.settings.max_depth
        if not limit or self.settings.overflow != "reject":
            return
        if self.channel.depth() + topic.depth() + count > limit:
            self.rejected += count
            raise DepthExceeded(
                f"channel {self.channel.topic_name}:{self.channel.name} max_depth {limit} reached"
            )

    def trim(self) -> None:
        """After messages came in: take the oldest queued ones (in the channel's delivery
        order) out, down to max_depth."""
        limit, overflow = self.settings.max_depth, self.settings.overflow
        if not limit or overflow == "reject":
            return
        channel = self.channel
        while channel.depth() > limit:  # re-read: a take may also move DPUB records aside
            msg = channel._take()
            if msg is None:
                return
            if overflow == "drop_oldest":
                self._drop(msg, "max_depth")
            else:
                self._dead_letter(msg, "max_depth")

    def take_pending(self) -> list[Message]:
        """Clean shutdown: dead letters not yet published go back with the channel's queue."""
        msgs = [msg for msg, _ in self.pending]
        self.pending.clear()
        return msgs

    # -- taking messages out ------------------------------------------------------------

    def _drop(self, msg: Message, reason: str) -> None:
        self.channel._forget(msg)
        self.dropped[reason] += 1

    def _dead_letter(self, msg: Message, reason: str) -> None:
        msg.client = None
        self.pending.append((msg, reason))
        if self._worker is None:
            self._worker = gevent.spawn(self._publish_pending)

    def _stopped(self) -> bool:
        return self.channel.exiting or self.book.nsqd.exiting

    def _publish_pending(self) -> None:
        """Publish dead letters in batches; each source copy is finished only once its dead
        letter is accepted (in crash-safe mode: fsynced) by the dead-letter topic."""
        failing = False
        try:
            while self.pending and not self._stopped():
                batch = self.pending[:_BATCH]
                target = self.book.nsqd.get_topic(self.dead_letter_topic)
                try:
                    copies = target.publish([msg.body for msg, _ in batch])
                except PublishError as err:
                    if not failing:  # once per streak: the pending gauge shows the rest
                        log.warning(
                            "CHANNEL(%s:%s): dead letters to %s held, retrying - %s",
                            self.channel.topic_name, self.channel.name, target.name, err,
                        )
                    failing = True
                    gevent.sleep(0.5)
                    continue
                failing = False
                del self.pending[: len(batch)]
                if self.channel.exiting:
                    return  # deleted meanwhile: its disk queue is gone with its messages
                for (msg, reason), copy in zip(batch, copies, strict=True):
                    self.channel._forget(msg)
                    self.dead_lettered[reason] += 1
                    self.book.remember(target.name, copy.id, self.channel, msg, reason)
                self.book.nsqd.notify("dead_letters_recorded", self.channel)
                gevent.sleep(0)
        finally:
            self._worker = None

    # -- reporting ----------------------------------------------------------------------

    def stats(self) -> dict:
        """The ``policy`` object of this channel in /stats."""
        settings = self.settings
        return {
            "max_attempts": settings.max_attempts,
            "msg_ttl": int(settings.msg_ttl * 1000),
            "max_depth": settings.max_depth,
            "overflow": settings.overflow,
            "dead_letter_topic": self.dead_letter_topic,
            "dead_lettered": dict(self.dead_lettered),
            "dropped": dict(self.dropped),
            "rejected": self.rejected,
            "dead_letter_pending": len(self.pending),
        }


def redrive(channel: Channel, target: Topic, limit: int = 0) -> int:
    """Move the messages queued in ``channel`` (not in flight or deferred) into ``target``,
    each finished in the channel only once ``target`` accepted it; returns how many moved."""
    moved = 0
    while not limit or moved < limit:
        batch = channel._take_many(min(_BATCH, limit - moved) if limit else _BATCH)
        if not batch:
            break
        try:
            target.publish([msg.body for msg in batch])
        except PublishError:
            channel.memory.extendleft(reversed(batch))
            raise
        for msg in batch:
            channel._forget(msg)
        moved += len(batch)
    return moved


class PolicyBook:
    """The daemon's policies: defaults, per-channel settings, the ledger, and their file."""

    def __init__(self, nsqd: NSQD, defaults: Settings) -> None:
        self.nsqd = nsqd
        self.defaults = defaults
        #: explicit per-channel fields, keyed by (topic, channel)
        self.overrides: dict[tuple[str, str], dict[str, Any]] = {}
        #: dead-letter topic -> {id there: where the message came from}
        self.ledger: dict[str, OrderedDict[str, dict]] = {}
        self.path = os.path.join(nsqd.data_path, POLICY_FILE)
        nsqd.subscribe("channel_deleted", self._channel_deleted)
        nsqd.subscribe("topic_deleted", self._topic_deleted)

    # -- settings -----------------------------------------------------------------------

    def settings_for(self, topic_name: str, channel_name: str) -> Settings:
        """A channel's own fields over the defaults; dead-letter topics take no defaults."""
        fields = self.overrides.get((topic_name, channel_name))
        base = Settings() if self._is_dead_letter_topic(topic_name) else self.defaults
        return replace(base, **fields) if fields else base

    def has_own(self, channel: Channel) -> bool:
        return (channel.topic_name, channel.name) in self.overrides

    def _is_dead_letter_topic(self, name: str) -> bool:
        return name.endswith(DEAD_LETTER_SUFFIX) or any(
            fields.get("dead_letter_topic") == name for fields in self.overrides.values()
        )

    def attach(self, channel: Channel) -> None:
        """Give a channel its policy in force (None when it has none); counters carry over."""
        settings = self.settings_for(channel.topic_name, channel.name)
        current = channel.policy
        if not settings.active():
            channel.policy = None
        elif current is None:
            channel.policy = ChannelPolicy(self, channel, settings)
        else:
            current.settings = settings

    def update(self, channel: Channel, fields: dict[str, Any]) -> Settings:
        """Set some of a channel's own fields (PolicyError when the result is invalid)."""
        key = (channel.topic_name, channel.name)
        merged = {**self.overrides.get(key, {}), **fields}
        replace(self.settings_for(*key), **merged).checked(channel.topic_name)
        self.overrides[key] = merged
        self._changed(channel)
        return self.settings_for(*key)

    def reset(self, channel: Channel) -> Settings:
        """Drop a channel's own fields: the defaults apply again."""
        self.overrides.pop((channel.topic_name, channel.name), None)
        self._changed(channel)
        return self.settings_for(channel.topic_name, channel.name)

    def _changed(self, channel: Channel) -> None:
        self.attach(channel)
        if not channel.ephemeral:
            self.nsqd.notify("channel_policy_changed", channel)

    def redrive_target(self, dead_letter_topic: str) -> str | None:
        """The one source topic whose channels dead-letter into this topic, if there is one."""
        sources = {
            topic.name
            for topic in list(self.nsqd.topics.values())
            for channel in list(topic.channels.values())
            if channel.policy is not None and channel.policy.dead_letter_topic == dead_letter_topic
        }
        return sources.pop() if len(sources) == 1 else None

    # -- the dead-letter ledger ---------------------------------------------------------

    def remember(self, topic_name: str, new_id: bytes, channel: Channel, msg: Message,
                 reason: str) -> None:
        entries = self.ledger.setdefault(topic_name, OrderedDict())
        key = new_id.decode()
        entries[key] = {
            "id": key,
            "topic": channel.topic_name,
            "channel": channel.name,
            "message_id": msg.id.decode(),
            "timestamp": msg.timestamp,
            "attempts": msg.attempts,
            "reason": reason,
            "dead_lettered_at": time.time_ns(),
        }
        if len(entries) > LEDGER_SIZE:
            entries.popitem(last=False)

    def lookup(self, topic_name: str, msg_id: str | None = None, count: int = 100) -> list[dict]:
        """One ledger entry by id, or the newest ``count`` of a dead-letter topic."""
        entries = self.ledger.get(topic_name) or {}
        if msg_id is not None:
            entry = entries.get(msg_id)
            return [entry] if entry is not None else []
        return list(entries.values())[-count:] if count > 0 else []

    # -- events and persistence ---------------------------------------------------------

    def _channel_deleted(self, channel: Channel) -> None:
        if self.overrides.pop((channel.topic_name, channel.name), None) is not None:
            self.nsqd.notify("channel_policy_changed", channel)

    def _topic_deleted(self, topic: Topic) -> None:
        self.ledger.pop(topic.name, None)

    def save(self) -> None:
        """Write gnsq-policies.json (atomically; may run off the hub, so it reads snapshots)."""
        channels = [
            {"topic": topic, "channel": channel, **fields}
            for (topic, channel), fields in list(self.overrides.items())
            if not channel.endswith(_EPHEMERAL) and not topic.endswith(_EPHEMERAL)
        ]
        ledger = {name: list(entries.values()) for name, entries in list(self.ledger.items())}
        if not channels and not ledger:
            if os.path.exists(self.path):
                os.unlink(self.path)
            return
        document = {"version": 1, "channels": channels, "dead_letters": ledger}
        metadata.write_atomic(self.path, json.dumps(document, separators=(",", ":")).encode())

    def load(self) -> None:
        """Read gnsq-policies.json; entries that no longer validate are skipped with a warning."""
        try:
            with open(self.path, "rb") as f:
                document = json.loads(f.read())
        except FileNotFoundError:
            return
        except ValueError as err:
            # kept aside, not overwritten by the next save
            log.error("%s is unreadable, policies not restored (kept as .bad) - %s",
                      self.path, err)
            os.replace(self.path, self.path + ".bad")
            return
        known = set(asdict(Settings()))
        for entry in document.get("channels") or []:
            topic, channel = entry.get("topic", ""), entry.get("channel", "")
            fields = {k: v for k, v in entry.items() if k in known}
            try:
                replace(Settings(), **fields).checked(topic)
            except (TypeError, ValueError) as err:
                log.warning("policy for %s:%s skipped - %s", topic, channel, err)
                continue
            if is_valid_name(topic) and is_valid_name(channel):
                self.overrides[(topic, channel)] = fields
        for name, entries in (document.get("dead_letters") or {}).items():
            kept = [e for e in entries if isinstance(e, dict) and "id" in e]
            self.ledger[name] = OrderedDict((e["id"], e) for e in kept[-LEDGER_SIZE:])


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """Settings for the HTTP API: msg_ttl in milliseconds, as /stats shows it."""
    fields = asdict(settings)
    fields["msg_ttl"] = int(settings.msg_ttl * 1000)
    return fields

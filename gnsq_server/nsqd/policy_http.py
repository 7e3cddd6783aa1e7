"""HTTP routes of the delivery policies (nsqd/policy.py): gnsq-only, not in nsqd.

- ``GET /channel/policy?topic=T&channel=C``: the policy in force and where it comes from.
- ``POST /channel/policy?topic=T&channel=C&max_attempts=5&msg_ttl=30s&max_depth=1000
  &overflow=reject&dead_letter_topic=X``: set some of the channel's own fields (the channel is
  created, as by /channel/create); ``reset=true`` goes back to the daemon-wide default.
  ``msg_ttl`` is a Go duration (``30s``, ``1m``) or milliseconds.
- ``POST /channel/redrive?topic=DLQ&channel=C[&to=T][&count=N]``: move what is queued in a
  dead-letter topic's channel back into its source topic; answers ``{"redriven": N, ...}``.
- ``GET /topic/dead_letters?topic=DLQ[&id=ID][&count=N]``: where dead letters came from.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from gnsq_server.gosyntax import parse_duration
from gnsq_server.httpapi import HTTPError, first, query_params, required, route
from gnsq_server.nsqd import policy
from gnsq_server.nsqd.http_lookups import (
    existing_channel,
    existing_topic,
    existing_topic_and_channel_name,
)
from gnsq_server.nsqd.topic import PublishError, TopicExiting
from gnsq_server.wire import is_valid_name

_INT_FIELDS = ("max_attempts", "max_depth")
_TEXT_FIELDS = ("overflow", "dead_letter_topic")


def register(app: Flask, nsqd: Any) -> None:
    """Add the policy routes to nsqd's HTTP app (http.create_app calls this)."""

    @route(app, "/channel/policy", ["GET", "POST"])
    def channel_policy() -> dict:
        book: policy.PolicyBook = nsqd.policies
        if request.method == "GET":
            return _describe(book, existing_channel(nsqd))
        topic, channel_name = existing_topic_and_channel_name(nsqd)
        params = query_params()
        channel = topic.get_channel(channel_name)
        if first(params, "reset") in ("true", "1"):
            book.reset(channel)
        else:
            try:
                book.update(channel, _fields(params))
            except policy.PolicyError as err:
                raise HTTPError(400, f"INVALID_{err.field.upper()}", detail=str(err)) from None
        return _describe(book, channel)

    @route(app, "/channel/redrive", ["POST"])
    def channel_redrive() -> dict:
        channel = existing_channel(nsqd)
        params = query_params()
        target_name = first(params, "to") or nsqd.policies.redrive_target(channel.topic_name)
        if target_name is None:
            raise HTTPError(400, "MISSING_ARG_TO")
        if not is_valid_name(target_name) or target_name == channel.topic_name:
            raise HTTPError(400, "INVALID_ARG_TO")
        limit = _count(params, default=0)
        try:
            moved = policy.redrive(channel, nsqd.get_topic(target_name), limit)
        except TopicExiting:
            raise HTTPError(503, "EXITING") from None
        except policy.DepthExceeded:
            raise HTTPError(503, "MAX_DEPTH") from None
        except PublishError as err:
            raise HTTPError(500, "INTERNAL_ERROR") from err
        return {"redriven": moved, "topic": target_name}

    @route(app, "/topic/dead_letters", ["GET"])
    def dead_letters() -> dict:
        params = query_params()
        topic = existing_topic(nsqd, required(params, "topic"))
        msg_id = first(params, "id")
        entries = nsqd.policies.lookup(topic.name, msg_id, _count(params, default=100))
        if msg_id is not None and not entries:
            raise HTTPError(404, "MESSAGE_NOT_FOUND")
        return {"dead_letters": entries}


def _describe(book: policy.PolicyBook, channel: Any) -> dict:
    settings = book.settings_for(channel.topic_name, channel.name)
    answer = {
        "topic": channel.topic_name,
        "channel": channel.name,
        "source": "channel" if book.has_own(channel) else "default",
        **policy.settings_as_dict(settings),
        "dead_letter_topic": settings.dead_letter_topic
        or policy.dead_letter_name(channel.topic_name, channel.name),
    }
    if channel.policy is not None:
        answer.update(channel.policy.stats())
    return answer


def _fields(params: dict[str, list[str]]) -> dict[str, Any]:
    """The policy fields given in the query, typed; 400 INVALID_<FIELD> when unreadable."""
    fields: dict[str, Any] = {}
    for name in _INT_FIELDS:
        raw = first(params, name)
        if raw is not None:
            if not raw.isdigit():
                raise HTTPError(400, f"INVALID_{name.upper()}")
            fields[name] = int(raw)
    raw = first(params, "msg_ttl")
    if raw is not None:
        try:
            fields["msg_ttl"] = int(raw) / 1000 if raw.isdigit() else parse_duration(raw)
        except ValueError:
            raise HTTPError(400, "INVALID_MSG_TTL") from None
    for name in _TEXT_FIELDS:
        raw = first(params, name)
        if raw is not None:
            fields[name] = raw
    return fields


def _count(params: dict[str, list[str]], default: int) -> int:
    raw = first(params, "count")
    if raw is None:
        return default
    if not raw.isdigit():
        raise HTTPError(400, "INVALID_ARG_COUNT")
    return int(raw)

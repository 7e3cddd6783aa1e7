"""Topics and channels named by an HTTP query, looked up with nsqd's error texts.

Shared by nsqd's routes (``http``) and gnsq's policy routes (``policy_http``).
"""

from __future__ import annotations

from typing import Any

from gnsq_server.httpapi import HTTPError, query_params, topic_channel_args


def existing_topic(nsqd: Any, name: str) -> Any:
    """The topic, which must exist: 404 TOPIC_NOT_FOUND otherwise."""
    topic = nsqd.find_topic(name)
    if topic is None:
        raise HTTPError(404, "TOPIC_NOT_FOUND")
    return topic


def existing_topic_and_channel_name(nsqd: Any) -> tuple[Any, str]:
    """nsqd's getExistingTopicFromQuery: both names present and valid, then the topic exists."""
    topic_name, channel_name = topic_channel_args(query_params())
    return existing_topic(nsqd, topic_name), channel_name


def existing_channel(nsqd: Any) -> Any:
    """The channel named by the query, which must exist: 404 CHANNEL_NOT_FOUND otherwise."""
    topic, channel_name = existing_topic_and_channel_name(nsqd)
    channel = topic.find_channel(channel_name)
    if channel is None:
        raise HTTPError(404, "CHANNEL_NOT_FOUND")
    return channel

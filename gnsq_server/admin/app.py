"""gnsqadmin's Flask app: the UI page, its static files, and nsqadmin's JSON API.

``/api/topics``, ``/api/topics/<topic>[/<channel>]``, ``/api/nodes[/<node>]`` and
``/api/counter`` answer in nsqadmin's shapes, with its POST/DELETE actions (``{"action":
"pause"}`` bodies, ``{"message": ""}`` replies, ``502 UPSTREAM_ERROR: ...`` when every daemon
failed). ``/api/overview`` (gnsq-only) is what the page polls: all topics summed, all nodes and
the rate history for the charts, in one request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, render_template, request

from gnsq_server import NSQ_VERSION, __version__
from gnsq_server.admin.cluster import TOPIC_ACTIONS, ClusterInfo, UpstreamError, warning
from gnsq_server.admin.rates import RateHistory
from gnsq_server.httpapi import HTTPError, create_flask_app, first, query_params, read_body, route
from gnsq_server.wire import is_valid_name

logger = logging.getLogger(__name__)

MAX_BODY = 1 << 20
UI_PATHS = (
    "/",
    "/topics",
    "/topics/<topic>",
    "/topics/<topic>/<channel>",
    "/nodes",
    "/nodes/<node>",
)


def _json_body() -> dict[str, Any]:
    body = read_body(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise HTTPError(413, "BODY_TOO_BIG")
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    if not isinstance(data, dict):
        raise HTTPError(400, "INVALID_BODY")
    return data


def _upstream(call: Callable[[list[str]], Any]) -> tuple[Any, str]:
    """Run a cluster call; its warnings become nsqadmin's ``message``, a total failure a 502."""
    errors: list[str] = []
    try:
        value = call(errors)
    except UpstreamError as exc:
        logger.error("upstream request failed - %s", exc)
        raise HTTPError(502, f"UPSTREAM_ERROR: {exc}") from None
    for error in errors:
        logger.warning("%s", error)
    return value, warning(errors)


def create_app(
    cluster: ClusterInfo, history: RateHistory, refresh_interval: float = 2.0
) -> Flask:
    """The gnsqadmin app over ``cluster``; ``history`` gets a sample on every overview."""
    app = create_flask_app(__name__)

    def page(**_names: str) -> Response:
        config = {
            "refresh_ms": int(refresh_interval * 1000),
            "lookupd": cluster.lookupd_addresses,
            "nsqd": cluster.nsqd_addresses,
            "version": NSQ_VERSION,
        }
        html = render_template("index.html", config=config, version=__version__)
        return Response(html, content_type="text/html; charset=utf-8")

    for index, path in enumerate(UI_PATHS):
        app.add_url_rule(path, endpoint=f"page{index}", view_func=page, methods=["GET"])

    @route(app, "/ping", ["GET"], v1=False)
    def ping() -> str:
        return "OK"

    @route(app, "/api/overview", ["GET"], log=False)
    def overview() -> dict[str, Any]:
        data, message = _upstream(cluster.overview)
        history.record(time.time(), data["topics"])
        return {**data, "rates": history.as_json(), "message": message}

    @route(app, "/api/topics", ["GET", "POST"])
    def topics() -> dict[str, Any]:
        if request.method == "POST":
            body = _json_body()
            topic, channel = str(body.get("topic") or ""), str(body.get("channel") or "")
            if not is_valid_name(topic):
                raise HTTPError(400, "INVALID_TOPIC")
            if channel and not is_valid_name(channel):
                raise HTTPError(400, "INVALID_CHANNEL")
            _, message = _upstream(
                lambda errors: cluster.create_topic_channel(topic, channel, errors)
            )
            return {"message": message}
        if first(query_params(), "inactive") == "true":
            inactive, message = _upstream(cluster.inactive_topics)
            return {"topics": inactive, "message": message}
        names, message = _upstream(cluster.topics)
        return {"topics": names, "message": message}

    @route(app, "/api/topics/<topic>", ["GET", "POST", "DELETE"])
    def topic(topic: str) -> dict[str, Any]:
        if request.method == "POST":
            action = _action()
            _, message = _upstream(lambda errors: cluster.topic_action(topic, action, errors))
            return {"message": message}
        if request.method == "DELETE":
            _, message = _upstream(lambda errors: cluster.delete_topic(topic, errors))
            return {"message": message}
        stats, message = _upstream(lambda errors: cluster.topic_stats(topic, errors))
        return {**stats, "message": message}

    @route(app, "/api/topics/<topic>/<channel>", ["GET", "POST", "DELETE"])
    def channel(topic: str, channel: str) -> dict[str, Any]:
        if request.method == "POST":
            body = _json_body()
            if body.get("action") == "replay":  # gnsqd --crash-safe only
                since = _since(body)
                _, message = _upstream(
                    lambda errors: cluster.replay_channel(topic, channel, since, errors)
                )
                return {"message": message}
            action = _action(body)
            _, message = _upstream(
                lambda errors: cluster.channel_action(topic, channel, action, errors)
            )
            return {"message": message}
        if request.method == "DELETE":
            _, message = _upstream(lambda errors: cluster.delete_channel(topic, channel, errors))
            return {"message": message}
        stats, message = _upstream(lambda errors: cluster.channel_stats(topic, channel, errors))
        return {**stats, "message": message}

    @route(app, "/api/nodes", ["GET"])
    def nodes() -> dict[str, Any]:
        producers, message = _upstream(cluster.producers)
        return {"nodes": producers, "message": message}

    @route(app, "/api/nodes/<node>", ["GET", "DELETE"])
    def node(node: str) -> dict[str, Any]:
        if request.method == "DELETE":
            body = _json_body()
            topic = str(body.get("topic") or "")
            if not is_valid_name(topic):
                raise HTTPError(400, "INVALID_TOPIC")
            _, message = _upstream(lambda errors: cluster.tombstone_topic(topic, node, errors))
            return {"message": message}
        stats, message = _upstream(lambda errors: cluster.node_stats(node, errors))
        if stats is None:
            raise HTTPError(404, "NODE_NOT_FOUND")
        return {**stats, "message": message}

    @route(app, "/api/counter", ["GET"])
    def counter() -> dict[str, Any]:
        data, message = _upstream(cluster.overview)
        stats: dict[str, dict[str, Any]] = {}
        for topic_stats in data["topics"]:
            for channel_stats in topic_stats["channels"]:
                for per_node in channel_stats["nodes"]:
                    key = f"{topic_stats['topic_name']}:{channel_stats['channel_name']}:" \
                          f"{per_node['node']}"
                    stats[key] = {
                        "node": per_node["node"],
                        "topic_name": topic_stats["topic_name"],
                        "channel_name": channel_stats["channel_name"],
                        "message_count": per_node["message_count"],
                    }
        return {"stats": stats, "message": message}

    return app


def _since(body: dict[str, Any]) -> str:
    """A replay's start as the nodes take it (RFC 3339, unix ns or "oldest"); they judge it."""
    since = body.get("since")
    if not isinstance(since, str) or not since:
        raise HTTPError(400, "MISSING_ARG_SINCE")
    return since


def _action(body: dict[str, Any] | None = None) -> str:
    action = (_json_body() if body is None else body).get("action")
    if action not in TOPIC_ACTIONS:
        raise HTTPError(400, "INVALID_ACTION")
    return str(action)

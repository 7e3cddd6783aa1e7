"""gnsqadmin's Flask app: the UI page, its static files, and nsqadmin's JSON API.

``/api/topics``, ``/api/topics/<topic>[/<channel>]``, ``/api/nodes[/<node>]``,
``/api/counter``, ``/api/graphite`` and ``/config/<opt>`` answer in nsqadmin's shapes and
statuses, with its POST/DELETE actions (``{"action": "pause"}`` bodies, ``{"message": ""}``
replies, ``403 FORBIDDEN`` for non-admins, ``502 UPSTREAM_ERROR: ...`` when every daemon failed
or the topic is unknown), each action announced to the notification endpoint.
``/api/overview`` (gnsq-only) is what the page polls: all topics summed, all nodes and the rate
history for the charts, in one request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, render_template, request

from gnsq_server import NSQ_VERSION, __version__, logs
from gnsq_server.admin.access import Access
from gnsq_server.admin.cluster import TOPIC_ACTIONS, ClusterInfo, UpstreamError, warning
from gnsq_server.admin.notify import Notifier, admin_action
from gnsq_server.admin.rates import RateHistory
from gnsq_server.config import ConfigError, Options, config_endpoint_value
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
    "/lookup",
    "/counter",
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


def _remote_addr() -> str:
    """Go's ``req.RemoteAddr``: ``ip:port``."""
    host = request.environ.get("REMOTE_ADDR", "")
    port = request.environ.get("REMOTE_PORT", "")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def create_app(
    cluster: ClusterInfo,
    history: RateHistory,
    refresh_interval: float = 2.0,
    *,
    opts: Options | None = None,
    access: Access | None = None,
    notifier: Notifier | None = None,
) -> Flask:
    """The gnsqadmin app over ``cluster``; ``history`` gets a sample on every overview.

    ``opts`` are what ``/config`` shows and changes; ``access`` decides who may act (by default
    from ``opts``, else everyone) and ``notifier`` announces each action.
    """
    app = create_flask_app(__name__)
    if access is None:
        access = Access(opts.admin_users, opts.acl_http_header,
                        opts.allow_config_from_cidr) if opts else Access()
    settings = {"opts": opts}

    def require_admin() -> None:
        if not access.is_admin(request.headers):
            raise HTTPError(403, "FORBIDDEN")

    def notify(action: str, topic: str, channel: str = "", node: str = "") -> None:
        if notifier is not None:
            scheme = "https" if request.headers.get("X-Scheme") == "https" else request.scheme
            path = request.script_root + request.full_path.rstrip("?")  # with --base-path
            url = f"{scheme}://{request.host}{path}"
            notifier.notify(admin_action(
                action, topic, channel, node,
                headers=request.headers, remote_addr=_remote_addr(), url=url,
            ))

    def page(**_names: str) -> Response:
        config = {
            "refresh_ms": int(refresh_interval * 1000),
            "lookupd": cluster.lookupd_addresses,
            "nsqd": cluster.nsqd_addresses,
            "version": NSQ_VERSION,
            "base": request.script_root,
            "is_admin": access.is_admin(request.headers),
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
            require_admin()
            body = _json_body()
            topic, channel = str(body.get("topic") or ""), str(body.get("channel") or "")
            if not is_valid_name(topic):
                raise HTTPError(400, "INVALID_TOPIC")
            if channel and not is_valid_name(channel):
                raise HTTPError(400, "INVALID_CHANNEL")
            _, message = _upstream(
                lambda errors: cluster.create_topic_channel(topic, channel, errors)
            )
            notify("create_topic", topic)
            if channel:
                notify("create_channel", topic, channel)
            return {"message": message}
        if first(query_params(), "inactive") == "true":
            inactive, message = _upstream(cluster.inactive_topics)
            return {"topics": inactive, "message": message}
        names, message = _upstream(cluster.topics)
        return {"topics": names, "message": message}

    @route(app, "/api/topics/<topic>", ["GET", "POST", "DELETE"])
    def topic(topic: str) -> dict[str, Any]:
        if request.method == "POST":
            require_admin()
            action = _action()
            _, message = _upstream(lambda errors: cluster.topic_action(topic, action, errors))
            notify(f"{action}_topic", topic)
            return {"message": message}
        if request.method == "DELETE":
            require_admin()
            _, message = _upstream(lambda errors: cluster.delete_topic(topic, errors))
            notify("delete_topic", topic)
            return {"message": message}
        stats, message = _upstream(lambda errors: cluster.topic_stats(topic, errors))
        return {**stats, "message": message}

    @route(app, "/api/topics/<topic>/<channel>", ["GET", "POST", "DELETE"])
    def channel(topic: str, channel: str) -> dict[str, Any]:
        if request.method == "POST":
            require_admin()
            body = _json_body()
            if body.get("action") == "replay":  # gnsqd --crash-safe only
                since = _since(body)
                _, message = _upstream(
                    lambda errors: cluster.replay_channel(topic, channel, since, errors)
                )
                notify("replay_channel", topic, channel)
                return {"message": message}
            action = _action(body)
            _, message = _upstream(
                lambda errors: cluster.channel_action(topic, channel, action, errors)
            )
            notify(f"{action}_channel", topic, channel)
            return {"message": message}
        if request.method == "DELETE":
            require_admin()
            _, message = _upstream(lambda errors: cluster.delete_channel(topic, channel, errors))
            notify("delete_channel", topic, channel)
            return {"message": message}
        stats, message = _upstream(lambda errors: cluster.channel_stats(topic, channel, errors))
        # nsqadmin renders an unknown channel of a known topic as just the message.
        return {**(stats or {}), "message": message}

    @route(app, "/api/nodes", ["GET"])
    def nodes() -> dict[str, Any]:
        producers, message = _upstream(cluster.producers)
        return {"nodes": [_without(p, GNSQ_NODE_KEYS) for p in producers], "message": message}

    @route(app, "/api/nodes/<node>", ["GET", "DELETE"])
    def node(node: str) -> dict[str, Any]:
        if request.method == "DELETE":
            require_admin()
            try:
                body = _json_body()
            except HTTPError:
                raise HTTPError(400, "INVALID_BODY") from None
            topic = str(body.get("topic") or "")
            if not is_valid_name(topic):
                raise HTTPError(400, "INVALID_TOPIC")
            _, message = _upstream(lambda errors: cluster.tombstone_topic(topic, node, errors))
            notify("tombstone_topic_producer", topic, "", node)
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

    @route(app, "/api/graphite", ["GET"])
    def graphite() -> dict[str, Any]:
        params = query_params()
        if first(params, "metric") != "rate":
            raise HTTPError(400, "INVALID_ARG_METRIC")
        if first(params, "target") is None:
            raise HTTPError(400, "INVALID_ARG_TARGET")
        # nsqadmin's answer when graphite cannot be read: gnsqadmin has no graphite.
        raise HTTPError(500, "INTERNAL_ERROR")

    @route(app, "/config/<opt>", ["GET", "PUT"])
    def config(opt: str) -> Any:
        allowed = access.may_configure(request.environ.get("REMOTE_ADDR", ""))
        if allowed is None:
            raise HTTPError(400, "INVALID_REMOTE_ADDR")
        if not allowed:
            raise HTTPError(403, "FORBIDDEN")
        current = settings["opts"]
        if current is None:
            raise HTTPError(400, "INVALID_OPTION")
        if request.method == "PUT":
            current = settings["opts"] = _put_config(current, opt)
            cluster.lookupd_addresses = list(current.nsqlookupd_http_addresses)
            logs.set_level(current.log_level)
        if opt == "statsd_prefix":
            return current.statsd_prefix  # nsqadmin shows it unexpanded
        try:
            return config_endpoint_value(current, opt)
        except KeyError:
            raise HTTPError(400, "INVALID_OPTION") from None

    return app


def _put_config(opts: Options, opt: str) -> Options:
    """nsqadmin's ``PUT /config/<opt>``: ``nsqlookupd_http_addresses`` (a JSON list) and
    ``log_level`` (a name) may change at run time."""
    body = read_body(MAX_BODY + 1)
    if not body or len(body) > MAX_BODY:
        raise HTTPError(413, "INVALID_VALUE")
    try:
        if opt == "nsqlookupd_http_addresses":
            addresses = json.loads(body)
            if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                raise ValueError(opt)
            return opts.replace(nsqlookupd_http_addresses=addresses)
        if opt == "log_level":
            return opts.replace(log_level=body.decode("utf-8", "replace").strip())
    except (ValueError, ConfigError, RecursionError):
        raise HTTPError(400, "INVALID_VALUE") from None
    raise HTTPError(400, "INVALID_OPTION")


#: Node keys gnsqadmin adds for its own page (the node's name and where requests go); nsqadmin's
#: ``/api/nodes`` has no such keys.
GNSQ_NODE_KEYS = ("node", "http_address")


def _without(entry: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in keys}


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

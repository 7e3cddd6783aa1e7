"""nsqd's HTTP API (PROTOCOL.md 2.2) as a Flask app over the NSQD core.

Every check happens in nsqd 1.3.0's order, because clients and scripts see which error wins:
for /pub the body is judged before the query, for /mpub the query before the body, and a topic
is created as soon as its name validates, even if a later parameter is bad. Go's pprof and
debug endpoints are not offered (404).
"""

from __future__ import annotations

import json
import logging
import re
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Flask, Response, request

from gnsq_server import NSQ_VERSION, config, gosyntax
from gnsq_server.httpapi import (
    HTTPError,
    PlainRequest,
    create_flask_app,
    first,
    query_params,
    read_body,
    request_params,
    required,
    route,
)
from gnsq_server.nsqd import metrics, policy_http, stats
from gnsq_server.nsqd.http_lookups import (
    existing_channel,
    existing_topic,
    existing_topic_and_channel_name,
)
from gnsq_server.nsqd.policy import DepthExceeded
from gnsq_server.nsqd.topic import PublishError, TopicExiting
from gnsq_server.nsqd.topiclog import TopicLog
from gnsq_server.wire import is_valid_name

logger = logging.getLogger(__name__)

_BOOL_PARAMS = {"true": True, "1": True, "false": False, "0": False}
_LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_INT64_RE = re.compile(r"[+-]?[0-9]+\Z")
_INT32 = struct.Struct(">i")
_NS = 1_000_000_000
_MICROSECOND = timedelta(microseconds=1)

TLS_REQUIRED_MODE = 2  # --tls-required=true: plain HTTP is refused


def create_app(
    nsqd: Any,
    *,
    https: bool = False,
    e2e: stats.E2ESource = stats.empty_e2e,
) -> Flask:
    """The nsqd HTTP API over ``nsqd``; ``https`` marks the app behind the HTTPS listener.

    ``e2e`` supplies e2e-processing-latency results per topic/channel for /stats.
    """
    app = create_flask_app(__name__)
    opts = nsqd.opts

    if opts.tls_required == TLS_REQUIRED_MODE and not https:

        @app.before_request
        def tlsrequired() -> None:
            raise HTTPError(403, "TLS_REQUIRED", https_port=nsqd.https_port)

    @route(app, "/ping", ["GET"], v1=False, fast_lane=True)
    def ping(req: PlainRequest) -> str:
        health = nsqd.health()
        if health != "OK":
            raise HTTPError(500, health)
        return health

    @route(app, "/info", ["GET"])
    def info() -> dict:
        return {
            "version": NSQ_VERSION,
            "broadcast_address": opts.broadcast_address,
            "hostname": nsqd.hostname,
            "http_port": nsqd.http_port,
            "tcp_port": nsqd.tcp_port,
            "start_time": int(nsqd.start_time),
            "max_heartbeat_interval": _ns(opts.max_heartbeat_interval),
            "max_output_buffer_size": opts.max_output_buffer_size,
            "max_output_buffer_timeout": _ns(opts.max_output_buffer_timeout),
            "max_deflate_level": opts.max_deflate_level,
        }

    # -- publishing ---------------------------------------------------------------------

    @route(app, "/pub", ["POST"], log=False, fast_lane=True)
    def pub(req: PlainRequest) -> str:
        publish_message(nsqd, req)
        return "OK"

    @route(app, "/mpub", ["POST"], log=False, fast_lane=True)
    def mpub(req: PlainRequest) -> str:
        publish_messages(nsqd, req)
        return "OK"

    # -- stats --------------------------------------------------------------------------

    @route(app, "/stats", ["GET"])
    def stats_view() -> Any:
        params = query_params()
        doc = stats.snapshot(
            nsqd,
            topic_name=first(params, "topic") or "",
            channel_name=first(params, "channel") or "",
            include_clients=stats.parse_bool_param(first(params, "include_clients")),
            include_mem=stats.parse_bool_param(first(params, "include_mem")),
            e2e=e2e,
        )
        if first(params, "format") == "json":
            return doc
        return stats.render_text(doc)

    registry = metrics.make_registry(nsqd, e2e)

    @route(app, "/metrics", ["GET"], log=False)
    def metrics_view() -> Response:
        """Prometheus exposition format (a gnsq extra; see nsqd/metrics.py)."""
        body, content_type = metrics.render(registry, request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)

    # -- topics -------------------------------------------------------------------------

    @route(app, "/topic/create", ["POST"])
    def topic_create() -> None:
        _topic_from_params(nsqd, query_params())

    @route(app, "/topic/delete", ["POST"])
    def topic_delete() -> None:
        name = required(query_params(), "topic")
        try:
            nsqd.delete_topic(name)
        except KeyError:
            raise HTTPError(404, "TOPIC_NOT_FOUND") from None

    @route(app, "/topic/empty", ["POST"])
    def topic_empty() -> None:
        name = required(query_params(), "topic")
        if not is_valid_name(name):
            raise HTTPError(400, "INVALID_TOPIC")
        _guarded(existing_topic(nsqd, name).empty)

    @route(app, "/topic/pause", ["POST"])
    def topic_pause() -> None:
        topic = existing_topic(nsqd, required(query_params(), "topic"))
        _guarded(topic.pause)

    @route(app, "/topic/unpause", ["POST"])
    def topic_unpause() -> None:
        topic = existing_topic(nsqd, required(query_params(), "topic"))
        _guarded(topic.unpause)

    # -- channels -----------------------------------------------------------------------

    @route(app, "/channel/create", ["POST"])
    def channel_create() -> None:
        topic, channel_name = existing_topic_and_channel_name(nsqd)
        topic.get_channel(channel_name)

    @route(app, "/channel/delete", ["POST"])
    def channel_delete() -> None:
        topic, channel_name = existing_topic_and_channel_name(nsqd)
        try:
            topic.delete_channel(channel_name)
        except KeyError:
            raise HTTPError(404, "CHANNEL_NOT_FOUND") from None

    @route(app, "/channel/empty", ["POST"])
    def channel_empty() -> None:
        _guarded(existing_channel(nsqd).empty)

    @route(app, "/channel/pause", ["POST"])
    def channel_pause() -> None:
        _guarded(existing_channel(nsqd).pause)

    @route(app, "/channel/unpause", ["POST"])
    def channel_unpause() -> None:
        _guarded(existing_channel(nsqd).unpause)

    # -- crash-safe topic log (gnsq only) -----------------------------------------------

    @route(app, "/channel/replay", ["POST"])
    def channel_replay() -> dict:
        """Deliver again on one channel what was published since `since` (RFC 3339, unix
        ns, or "oldest": the oldest retained message); other channels are untouched."""
        channel = existing_channel(nsqd)
        since = _parse_since(required(query_params(), "since"))
        _topic_log(channel.topic)
        position, queued = channel.replay(since)
        logger.info(
            "CHANNEL(%s:%s): replay from seq %d (%d queued)",
            channel.topic_name, channel.name, position, queued,
        )
        return {"position": position, "queued": queued}

    @route(app, "/topic/retention", ["GET", "POST"])
    def topic_retention() -> dict:
        """Read or set how long (``time``, a duration) and how much (``bytes``) of a topic's
        consumed log is kept for replay; "default" returns to the daemon's flags."""
        params = query_params()
        log = _topic_log(existing_topic(nsqd, required(params, "topic")))
        if request.method == "POST":
            seconds, max_bytes = log.retention_seconds, log.retention_bytes
            if (raw := first(params, "time")) is not None:
                seconds = _retention_param(raw, gosyntax.parse_duration, "INVALID_TIME")
            if (raw := first(params, "bytes")) is not None:
                max_bytes = _retention_param(raw, int, "INVALID_BYTES")
            log.set_retention(seconds, max_bytes)
        effective = log.retention()
        return {"retention_time": _ns(effective.seconds), "retention_bytes": effective.max_bytes}

    # -- runtime configuration ----------------------------------------------------------

    @route(app, "/config/<opt>", ["GET", "PUT"])
    def config_view(opt: str) -> Any:
        if request.method == "PUT":
            _put_config(nsqd, opt)
        try:
            value = config.config_endpoint_value(opts, opt, nsqd.http_port)
        except KeyError:
            raise HTTPError(400, "INVALID_OPTION") from None
        # nsqd fills unset broadcast ports with the bound ones at startup.
        if opt == "broadcast_tcp_port" and not value:
            return nsqd.tcp_port
        if opt == "broadcast_http_port" and not value:
            return nsqd.http_port
        return value

    policy_http.register(app, nsqd)
    return app


# ---------------------------------------------------------------------------------------------
# Parameters and lookups, with nsqd's error texts


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


def _topic_from_params(nsqd: Any, params: dict[str, list[str]]) -> Any:
    """nsqd's getTopicFromQuery: validate the topic name, then get (and so create) the topic."""
    return nsqd.get_topic(_valid_topic_name(params))


def _valid_topic_name(params: dict[str, list[str]]) -> str:
    name = required(params, "topic")
    if not is_valid_name(name):
        raise HTTPError(400, "INVALID_TOPIC")
    return name


#: query string -> (its parameters, its valid topic name), for queries that passed (see below)
_PUBLISH_QUERIES: dict[str, tuple[dict[str, list[str]], str]] = {}
_PUBLISH_QUERIES_MAX = 256
_PUBLISH_QUERY_MAX_LEN = 256


def _publish_query(raw: str) -> tuple[dict[str, list[str]], str]:
    """The parameters of a /pub or /mpub query and its valid topic name (nsqd's errors when
    not). A publisher sends the same short ``topic=name`` thousands of times a second: parsing
    and validating it again was a tenth of /pub's work, so short queries that pass are kept
    (read-only). Failures are never kept: they are judged and logged afresh each time."""
    known = _PUBLISH_QUERIES.get(raw)
    if known is None:
        params = request_params(raw)
        known = (params, _valid_topic_name(params))
        if len(raw) <= _PUBLISH_QUERY_MAX_LEN:
            if len(_PUBLISH_QUERIES) >= _PUBLISH_QUERIES_MAX:
                _PUBLISH_QUERIES.clear()
            _PUBLISH_QUERIES[raw] = known
    return known


def _topic_log(topic: Any) -> TopicLog:
    if not isinstance(topic.backend, TopicLog):
        raise HTTPError(400, "NOT_CRASH_SAFE")
    return topic.backend


def _parse_since(raw: str) -> int | None:
    """Unix ns, an RFC 3339 time with its offset, or "oldest" (None)."""
    if raw == "oldest":
        return None
    if _INT64_RE.match(raw):
        return int(raw)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPError(400, "INVALID_SINCE") from None
    if when.tzinfo is None:
        raise HTTPError(400, "INVALID_SINCE")
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (when - epoch) // _MICROSECOND * 1000


def _retention_param(raw: str, parse: Any, error: str) -> Any:
    """A retention value: "default" is None (the daemon's flag), else >= 0."""
    if raw == "default":
        return None
    try:
        value = parse(raw)
    except ValueError:
        raise HTTPError(400, error) from None
    if value < 0:
        raise HTTPError(400, error)
    return value


def _guarded(action: Any) -> None:
    """Run an empty/pause/unpause; a failure (e.g. disk) is nsqd's 500 INTERNAL_ERROR."""
    try:
        action()
    except Exception as err:
        logger.error("failure in %s - %s", request.path, err)
        raise HTTPError(500, "INTERNAL_ERROR") from None


def _parse_defer(raw: str, max_req_timeout: float) -> int:
    """`defer` in ms as strconv.ParseInt reads it, within 0..max-req-timeout."""
    if not _INT64_RE.match(raw):
        raise HTTPError(400, "INVALID_DEFER")
    value = int(raw)
    if not -(1 << 63) <= value < 1 << 63:
        raise HTTPError(400, "INVALID_DEFER")
    if value < 0 or value * 1_000_000 > _ns(max_req_timeout):
        raise HTTPError(400, "INVALID_DEFER")
    return value


# ---------------------------------------------------------------------------------------------
# Publishing: the code behind /pub and /mpub on both paths (Flask's view and the server's fast
# lane call these with a PlainRequest), in nsqd's order of checks


def publish_message(nsqd: Any, req: PlainRequest) -> None:
    """/pub: the body is judged before the query; ``defer`` is in milliseconds."""
    opts = nsqd.opts
    max_msg_size = opts.max_msg_size
    if (req.content_length or 0) > max_msg_size:
        raise HTTPError(413, "MSG_TOO_BIG")
    body = req.read(max_msg_size + 1)
    if len(body) > max_msg_size:
        raise HTTPError(413, "MSG_TOO_BIG")
    if not body:
        raise HTTPError(400, "MSG_EMPTY")
    params, topic_name = _publish_query(req.query_string)
    topic = nsqd.get_topic(topic_name)
    defer_ms = 0
    if "defer" in params:
        defer_ms = _parse_defer(params["defer"][0], opts.max_req_timeout)
    _publish(topic, [body], defer_ms / 1000.0)


def publish_messages(nsqd: Any, req: PlainRequest) -> None:
    """/mpub: the query is judged before the body, which is text lines or ``binary``."""
    opts = nsqd.opts
    if (req.content_length or 0) > opts.max_body_size:
        raise HTTPError(413, "BODY_TOO_BIG")
    params, topic_name = _publish_query(req.query_string)
    topic = nsqd.get_topic(topic_name)
    binary = False
    if "binary" in params:
        # nsqd treats any unrecognised value as binary (deprecated spelling).
        binary = _BOOL_PARAMS.get(params["binary"][0], True)
    if binary:
        bodies = _binary_mpub(req.read(opts.max_body_size), opts.max_msg_size, opts.max_body_size)
    else:
        bodies = _text_mpub(req.read(opts.max_body_size + 1), opts.max_msg_size, opts.max_body_size)
    _publish(topic, bodies)


def _publish(topic: Any, bodies: list[bytes], defer: float = 0.0) -> None:
    """A topic being deleted or a stopping daemon is 503 EXITING, as in nsqd; a channel
    policy's max_depth is 503 MAX_DEPTH (gnsq); a failed disk write is 500, so that a full
    disk does not read as a shutdown."""
    try:
        topic.publish(bodies, defer)
    except TopicExiting:
        raise HTTPError(503, "EXITING") from None
    except DepthExceeded:
        raise HTTPError(503, "MAX_DEPTH") from None
    except PublishError as err:
        raise HTTPError(500, "INTERNAL_ERROR") from err


# ---------------------------------------------------------------------------------------------
# /mpub bodies


def _text_mpub(data: bytes, max_msg_size: int, max_body_size: int) -> list[bytes]:
    """Newline-separated messages, judged line by line as nsqd's bufio loop does; ``data`` was
    read with a bound of max-body-size + 1."""
    read_max = max_body_size + 1
    if len(data) < read_max:  # not too big as a whole: only the lines' sizes can fail
        bodies = [line for line in data.split(b"\n") if line]
        if bodies and max(map(len, bodies)) > max_msg_size:
            raise HTTPError(413, "MSG_TOO_BIG")
        return bodies
    bodies = []
    total = 0
    start = 0
    while start <= len(data):
        end = data.find(b"\n", start)
        stop = len(data) if end < 0 else end + 1
        block = data[start:stop]
        total += len(block)
        if total == read_max:
            raise HTTPError(413, "BODY_TOO_BIG")
        if block.endswith(b"\n"):
            block = block[:-1]
        if block:
            if len(block) > max_msg_size:
                raise HTTPError(413, "MSG_TOO_BIG")
            bodies.append(block)
        if end < 0:
            break
        start = stop
    return bodies


def _binary_mpub(data: bytes, max_msg_size: int, max_body_size: int) -> list[bytes]:
    """``[int32 count]([int32 size][body])*``: TCP MPUB without its body-size prefix.

    Errors are 413 with the TCP code minus ``E_``. The body is read with a bound of
    max-body-size (nsqd only checks Content-Length here, so a chunked body bigger than that is
    refused by us and accepted by nsqd).
    """
    if len(data) < 4:
        raise HTTPError(413, "BAD_BODY")
    (count,) = _INT32.unpack_from(data)
    if count <= 0 or count > (max_body_size - 4) // 5:
        raise HTTPError(413, "BAD_BODY")
    bodies: list[bytes] = []
    offset = 4
    for _ in range(count):
        if offset + 4 > len(data):
            raise HTTPError(413, "BAD_MESSAGE")
        (size,) = _INT32.unpack_from(data, offset)
        offset += 4
        if size <= 0 or size > max_msg_size:
            raise HTTPError(413, "BAD_MESSAGE")
        if offset + size > len(data):
            raise HTTPError(413, "BAD_MESSAGE")
        bodies.append(data[offset : offset + size])
        offset += size
    return bodies


# ---------------------------------------------------------------------------------------------
# PUT /config/<opt>


def _put_config(nsqd: Any, opt: str) -> None:
    body = read_body(nsqd.opts.max_msg_size + 1)
    if not body or len(body) > nsqd.opts.max_msg_size:
        raise HTTPError(413, "INVALID_VALUE")
    if opt == "nsqlookupd_tcp_addresses":
        try:
            addresses = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
            raise HTTPError(400, "INVALID_VALUE") from None
        if addresses is None:
            addresses = []
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise HTTPError(400, "INVALID_VALUE")
        # Like nsqd, addresses are not validated here: bad ones fail when dialled.
        nsqd.set_lookupd_addresses(addresses)
    elif opt == "log_level":
        name = body.decode("utf-8", "replace")
        if name.lower() not in _LOG_LEVELS:
            raise HTTPError(400, "INVALID_VALUE")
        nsqd.set_log_level(name.lower())
    else:
        raise HTTPError(400, "INVALID_OPTION")

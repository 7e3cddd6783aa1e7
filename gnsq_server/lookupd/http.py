"""nsqlookupd's HTTP API as a Flask app, on the shared conventions of `gnsq_server.httpapi`.

Consumers (pynsq, gnsq, go-nsq) call /lookup; nsqd calls /channels; nsqadmin calls the rest.
Handlers return plain data in nsqlookupd's key order and raise `HTTPError` for failures.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response

from gnsq_server import NSQ_VERSION
from gnsq_server.httpapi import (
    HTML_CONTENT_TYPE,
    HTTPError,
    create_flask_app,
    query_params,
    required,
    route,
    topic_channel_args,
)
from gnsq_server.lookupd.registry import GO_ZERO_TIME_UNIX_NANO, RegistrationDB
from gnsq_server.wire import is_valid_name

_NS = 1_000_000_000


def create_app(
    db: RegistrationDB, inactive_producer_timeout: float, tombstone_lifetime: float
) -> Flask:
    """The nsqlookupd HTTP API over `db`; timeouts in seconds, as in the Options object."""
    app = create_flask_app(__name__)
    inactive_ns = int(inactive_producer_timeout * _NS)
    tombstone_ns = int(tombstone_lifetime * _NS)

    @route(app, "/ping", ["GET"], v1=False)
    def ping() -> str:
        return "OK"

    @route(app, "/info", ["GET"])
    def info() -> dict[str, Any]:
        return {"version": NSQ_VERSION}

    @route(app, "/debug", ["GET"])
    def debug() -> dict[str, Any]:
        """Every key that has producers, as `category:key:subkey`, sorted like a Go map."""
        data: dict[str, list[dict[str, Any]]] = {}
        for registration, producers in db.items():
            for producer in producers:
                peer = producer.peer_info
                entry = {
                    "broadcast_address": peer.broadcast_address,
                    "hostname": peer.hostname,
                    "http_port": peer.http_port,
                    "id": peer.id,
                    "last_update": peer.last_update,
                    "tcp_port": peer.tcp_port,
                    "tombstoned": producer.tombstoned,
                    "tombstoned_at": (
                        producer.tombstoned_at if producer.tombstoned else GO_ZERO_TIME_UNIX_NANO
                    ),
                    "version": peer.version,
                }
                data.setdefault(":".join(registration), []).append(entry)
        return dict(sorted(data.items()))

    @route(app, "/lookup", ["GET"])
    def lookup() -> dict[str, Any]:
        """A topic's channels and live producers; 404 only when the topic key does not exist."""
        topic = required(query_params(), "topic")
        if not db.has_topic(topic):
            raise HTTPError(404, "TOPIC_NOT_FOUND")
        producers = db.active_topic_producers(topic, inactive_ns, tombstone_ns)
        return {
            "channels": db.channels(topic),
            "producers": [p.peer_info.public_fields() for p in producers],
        }

    @route(app, "/topics", ["GET"])
    def topics() -> dict[str, Any]:
        return {"topics": db.topics()}

    @route(app, "/channels", ["GET"])
    def channels() -> dict[str, Any]:
        return {"channels": db.channels(required(query_params(), "topic"))}

    @route(app, "/nodes", ["GET"])
    def nodes() -> dict[str, Any]:
        """Producers seen recently, tombstoned or not, each with `tombstones[]` parallel to
        `topics[]`."""
        return {
            "producers": [
                {
                    **peer.public_fields(),
                    "tombstones": tombstones,
                    "topics": topic_names,
                }
                for peer, topic_names, tombstones in db.nodes(inactive_ns, tombstone_ns)
            ]
        }

    @route(app, "/topic/create", ["POST"])
    def topic_create() -> None:
        topic = required(query_params(), "topic")
        if not is_valid_name(topic):
            raise HTTPError(400, "INVALID_ARG_TOPIC")
        db.create_topic(topic)

    @route(app, "/topic/delete", ["POST"])
    def topic_delete() -> None:
        """The name is not validated: deleting an unknown or invalid topic is a 200."""
        db.delete_topic(required(query_params(), "topic"))

    @route(app, "/channel/create", ["POST"])
    def channel_create() -> None:
        db.create_channel(*topic_channel_args(query_params()))

    @route(app, "/channel/delete", ["POST"])
    def channel_delete() -> None:
        if not db.delete_channel(*topic_channel_args(query_params())):
            raise HTTPError(404, "CHANNEL_NOT_FOUND")

    @route(app, "/topic/tombstone", ["POST"])
    def topic_tombstone() -> None:
        """Hide `node` (`broadcast_address:http_port`) from /lookup of `topic` for a while."""
        params = query_params()
        topic = required(params, "topic")
        node = required(params, "node")
        db.tombstone_topic_producer(topic, node)

    @route(app, "/debug/pprof", ["GET"], v1=False)
    def pprof_index() -> Response:
        """nsqlookupd mounts Go's pprof index here (no trailing slash); we have no Go profiles
        to show, so the page lists none."""
        return Response(_PPROF_INDEX, status=200, content_type=HTML_CONTENT_TYPE)

    return app


_PPROF_INDEX = """<html>
<head>
<title>/debug/pprof/</title>
</head>
<body>
/debug/pprof/<br>
<br>
No profiles are available: this nsqlookupd is gnsq_server, written in Python.
</body>
</html>
"""

"""nsqadmin 1.3.0's API URLs on gnsqadmin: the same statuses and the same keys, found and not
found, against a real gnsqlookupd + 2 gnsqd.

The expected statuses and top-level keys below were recorded from nsqadmin 1.3.0 on such a
cluster. With NSQADMIN_REFERENCE_BIN=<path to nsqadmin 1.3.0> the real nsqadmin is also started on
the same cluster and every reply's nested key shape is compared with it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import requests

from ..conftest import RawConnection
from ..ops import wait_for
from ..servers import ServerProcess
from .test_admin_api import AdminCluster

REFERENCE = os.environ.get("NSQADMIN_REFERENCE_BIN", "")

TOPIC_KEYS = ["backend_depth", "channels", "depth", "e2e_processing_latency", "hostname",
              "memory_depth", "message", "message_count", "node", "nodes", "paused", "topic_name"]
CHANNEL_KEYS = ["backend_depth", "channel_name", "client_count", "clients", "deferred_count",
                "depth", "e2e_processing_latency", "hostname", "in_flight_count", "memory_depth",
                "message", "message_count", "node", "nodes", "paused", "requeue_count",
                "timeout_count", "topic_name"]
MESSAGE = ["message"]

#: nsqadmin's /api/topics/<t> sums each channel into the first node's own entry, whose
#: percentiles keep that node's "value"; gnsqadmin's sums are fresh entries, as in
#: /api/topics/<t>/<c> (where nsqadmin has no "value" either).
QUIRKS = [".channels[0].e2e_processing_latency.percentiles[0]: ours only [], theirs only "
          "['value']"]

#: (method, path, body, status, top-level keys) as nsqadmin 1.3.0 answers; {node0} is nsqd 0.
CASES: list[tuple[str, str, Any, int, list[str]]] = [
    ("GET", "/api/topics", None, 200, ["message", "topics"]),
    ("GET", "/api/topics?inactive=true", None, 200, ["message", "topics"]),
    ("GET", "/api/topics/orders", None, 200, TOPIC_KEYS),
    ("GET", "/api/topics/orders/billing", None, 200, CHANNEL_KEYS),
    ("GET", "/api/topics/orders/nope", None, 200, MESSAGE),
    ("GET", "/api/topics/nope", None, 502, MESSAGE),
    ("GET", "/api/topics/nope/billing", None, 502, MESSAGE),
    ("GET", "/api/nodes", None, 200, ["message", "nodes"]),
    ("GET", "/api/nodes/{node0}", None, 200,
     ["message", "node", "topics", "total_clients", "total_messages"]),
    ("GET", "/api/nodes/127.0.0.1:1", None, 404, MESSAGE),
    ("GET", "/api/counter", None, 200, ["message", "stats"]),
    ("GET", "/api/graphite", None, 400, MESSAGE),
    ("POST", "/api/topics/orders", {"action": "explode"}, 400, MESSAGE),
    ("POST", "/api/topics/nope", {"action": "pause"}, 502, MESSAGE),
    ("POST", "/api/topics/nope/billing", {"action": "pause"}, 502, MESSAGE),
    ("DELETE", "/api/topics/nope", None, 502, MESSAGE),
    ("DELETE", "/api/topics/nope/billing", None, 502, MESSAGE),
    ("DELETE", "/api/nodes/127.0.0.1:1", {"topic": "orders"}, 502, MESSAGE),
    ("DELETE", "/api/nodes/{node0}", {"topic": "bad topic"}, 400, MESSAGE),
    ("POST", "/api/topics", {"topic": "bad topic"}, 400, MESSAGE),
    ("POST", "/api/topics", {"topic": "fine", "channel": "b/d"}, 400, MESSAGE),
    ("POST", "/api/topics/orders", {"action": "pause"}, 200, MESSAGE),
    ("POST", "/api/topics/orders", {"action": "unpause"}, 200, MESSAGE),
    ("GET", "/config/nsqlookupd_http_addresses", None, 200, []),
    ("GET", "/config/nope", None, 400, MESSAGE),
    ("PUT", "/config/log_level", "loud", 400, MESSAGE),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = AdminCluster(
        tmp_path_factory.mktemp("compat"),
        nsqd_args=("--e2e-processing-latency-percentile=0.99",),
    ).start()
    consumer = RawConnection(started.nsqds[0].tcp_port)
    try:
        started.publish(0, "orders", 2)
        started.publish(1, "orders", 1)
        consumer.command(b"IDENTIFY", json.dumps({"client_id": "c1"}).encode())
        consumer.read_frame()
        consumer.command(b"SUB orders billing")
        consumer.read_frame()
        started.create_channel("orders", "billing")
        wait_for(lambda: len(started.lookupd_get("/lookup?topic=orders")["producers"]) == 2,
                 what="orders on both nodes")
        yield started
    finally:
        consumer.close()
        started.stop()


@pytest.fixture(scope="module")
def reference(cluster):
    """The real nsqadmin 1.3.0 on the same cluster, when NSQADMIN_REFERENCE_BIN names it."""
    if not REFERENCE:
        yield None
        return
    process = ServerProcess("gnsqadmin", "--http-address=127.0.0.1:0",
                            f"--lookupd-http-address=127.0.0.1:{cluster.lookupd.http_port}")
    process.args[0] = REFERENCE
    process.start(expect=("HTTP",))
    yield f"http://127.0.0.1:{process.http_port}"
    process.stop()


def call(base: str, cluster: AdminCluster, method: str, path: str, body: Any):
    path = path.format(node0=f"127.0.0.1:{cluster.nsqds[0].http_port}")
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    reply = requests.request(method, base + path, data=data, timeout=10)
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, reply.text


def shape(value: Any) -> Any:
    """Keys all the way down (lists by their first item); values, and empty or null lists, aside."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list) and value:
        return [shape(value[0])]
    return None


def differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """Where the two shapes' keys differ (a list one side has empty or null is no difference)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{where}: ours only {sorted(set(ours) - set(theirs))}, theirs only "
                 f"{sorted(set(theirs) - set(ours))}"] if ours.keys() != theirs.keys() else []
        for key in ours.keys() & theirs.keys():
            found += differences(ours[key], theirs[key], f"{where}.{key}")
        return found
    if isinstance(ours, list) and isinstance(theirs, list):
        return differences(ours[0], theirs[0], f"{where}[0]")
    return []


@pytest.mark.parametrize(("method", "path", "body", "status", "keys"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_status_and_keys_match_nsqadmin(cluster, reference, method, path, body, status, keys):
    got_status, got = call(cluster.url, cluster, method, path, body)
    assert got_status == status, got
    assert (sorted(got) if isinstance(got, dict) else []) == keys
    if reference is not None:
        ref_status, ref = call(reference, cluster, method, path, body)
        assert ref_status == status, ref
        assert [d for d in differences(shape(got), shape(ref)) if d not in QUIRKS] == []

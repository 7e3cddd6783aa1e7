"""/stats snapshots and text on hand-built state, checked against nsqd 1.3.0's captured output."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from gnsq_server.gosyntax import format_duration_ns
from gnsq_server.httpapi import go_json
from gnsq_server.nsqd import stats

from ..captures import CAPTURES

FIXTURES = CAPTURES / "http-transcripts.json"
CAPTURED = {c["name"]: c for c in json.loads(FIXTURES.read_text()) if c["server"] == "nsqd"}

TLS_OFF = {
    "tls": False,
    "tls_version": "",
    "tls_cipher_suite": "",
    "tls_negotiated_protocol": "",
    "tls_negotiated_protocol_is_mutual": False,
}


def make_client(client_id: str, port: int, **fields) -> SimpleNamespace:
    base = {
        "id": port,
        "client_id": client_id,
        "hostname": "nsq-fixture",
        "user_agent": "fixture/1.0",
        "remote_address": f"127.0.0.1:{port}",
        "state": 0,
        "ready_count": 0,
        "in_flight_count": 0,
        "message_count": 0,
        "finish_count": 0,
        "requeue_count": 0,
        "connect_ts": 1795716719,
        "sample_rate": 0,
        "deflate": False,
        "snappy": False,
        "authed": False,
        "auth_identity": "",
        "auth_identity_url": "",
        "pub_counts": {},
        **TLS_OFF,
    }
    base.update(fields)
    return SimpleNamespace(**base)


def make_channel(name: str, depth: int, in_flight: int, deferred: int, paused: bool, clients=()):
    return SimpleNamespace(
        name=name,
        paused=paused,
        clients={c.id: c for c in clients},
        message_count=4,
        requeue_count=0,
        timeout_count=0,
        depth=lambda: depth,
        backend_depth=lambda: 0,
        in_flight_count=lambda: in_flight,
        deferred_count=lambda: deferred,
    )


@pytest.fixture()
def nsqd() -> SimpleNamespace:
    """The state the fixture's /stats captures were taken in (see its `note`)."""
    consumer = make_client(
        "fixture-consumer", 55726, state=3, ready_count=1, in_flight_count=1, message_count=1
    )
    producer = make_client("fixture-producer", 55716, pub_counts={"http_stats": 4})
    # Channels inserted out of order: stats sorts by name.
    channels = {
        "d": make_channel("d", 3, 0, 1, True),
        "c": make_channel("c", 2, 1, 1, False, [consumer]),
    }
    topic = SimpleNamespace(
        name="http_stats",
        paused=False,
        channels=channels,
        message_count=4,
        message_bytes=17,
        depth=lambda: 0,
        backend_depth=lambda: 0,
    )
    return SimpleNamespace(
        start_time=1795716719,
        topics={"http_stats": topic},
        clients={1: producer, 2: consumer},
        health=lambda: "OK",
    )


def _masked_json(text: str) -> str:
    doc = json.loads(text)
    if "memory" in doc:
        doc["memory"] = dict.fromkeys(doc["memory"], 0)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("stats_json", {}),
        ("stats_json_no_clients", {"include_clients": False}),
        ("stats_json_no_mem", {"include_mem": False}),
        ("stats_json_topic", {"topic_name": "http_stats", "include_mem": False}),
        (
            "stats_json_topic_channel",
            {"topic_name": "http_stats", "channel_name": "d", "include_mem": False},
        ),
        ("stats_json_channel_only", {"channel_name": "c", "include_mem": False}),
        ("stats_json_missing_topic", {"topic_name": "http_nope", "include_mem": False}),
        (
            "stats_json_missing_channel",
            {"topic_name": "http_stats", "channel_name": "nope", "include_mem": False},
        ),
    ],
)
def test_snapshot_matches_capture(nsqd, name, kwargs):
    doc = stats.snapshot(nsqd, **kwargs)
    assert _masked_json(go_json(doc)) == _masked_json(CAPTURED[name]["body"])


def test_snapshot_is_byte_exact_without_memory(nsqd):
    doc = stats.snapshot(nsqd, topic_name="http_stats", channel_name="d", include_mem=False)
    assert go_json(doc) == CAPTURED["stats_json_topic_channel"]["body"]


def test_no_producers_is_null(nsqd):
    nsqd.clients = {}
    assert stats.snapshot(nsqd, include_mem=False)["producers"] is None


def test_empty_nsqd_has_empty_topics(nsqd):
    nsqd.topics = {}
    assert stats.snapshot(nsqd, include_mem=False)["topics"] == []


def test_producer_listed_only_for_topics_it_published_to(nsqd):
    nsqd.topics["other"] = SimpleNamespace(
        name="other",
        paused=False,
        channels={},
        message_count=0,
        message_bytes=0,
        depth=lambda: 0,
        backend_depth=lambda: 0,
    )
    assert stats.snapshot(nsqd, topic_name="other", include_mem=False)["producers"] is None


def test_pub_counts_filtered_to_the_topic(nsqd):
    producer = nsqd.clients[1]
    producer.pub_counts = {"a": 1, "http_stats": 4}
    doc = stats.snapshot(nsqd, topic_name="http_stats", include_mem=False)
    assert doc["producers"][0]["pub_counts"] == [{"topic": "http_stats", "count": 4}]
    doc = stats.snapshot(nsqd, include_mem=False)
    assert doc["producers"][0]["pub_counts"] == [
        {"topic": "a", "count": 1},
        {"topic": "http_stats", "count": 4},
    ]


def test_auth_fields_are_omitempty_in_nsqd_order():
    client = make_client("x", 1, authed=True, auth_identity="me", pub_counts={"t": 1})
    keys = list(stats.client_stats(client))
    assert keys[keys.index("user_agent") + 1 :][:5] == [
        "authed",
        "auth_identity",
        "pub_counts",
        "tls",
        "tls_cipher_suite",
    ]


def test_memory_keys_and_types():
    memory = stats.memory_stats()
    assert list(memory) == list(stats.MEMORY_KEYS)
    assert all(isinstance(v, int) and v >= 0 for v in memory.values())
    assert memory["heap_in_use_bytes"] > 0


def test_percentile_is_nsqds_nearest_rank():
    assert stats._percentile(99.0, []) == 0
    ordered = list(range(10))
    assert stats._percentile(100.0, ordered) == 9
    assert stats._percentile(95.0, ordered) == 9  # floor(9.5 + 0.5) = 10 -> clamped
    assert stats._percentile(50.0, ordered) == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("true", True), ("1", True), ("false", False), ("0", False), ("f", True)],
)
def test_bool_params(value, expected):
    assert stats.parse_bool_param(value) is expected


def _masked_text(text: str) -> list[str]:
    lines = text.split("\n")
    lines[0:3] = ["VERSION", "START", "UPTIME"]
    return [re.sub(r"^(   \w+ +\t)\d+$", r"\1N", line) for line in lines]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("stats_text", {}),
        ("stats_text_no_mem", {"include_mem": False}),
        ("stats_text_no_clients_no_mem", {"include_clients": False, "include_mem": False}),
        (
            "stats_text_topic_filter",
            {"topic_name": "http_stats", "channel_name": "d", "include_mem": False},
        ),
        ("stats_text_missing_topic", {"topic_name": "http_nope", "include_mem": False}),
    ],
)
def test_text_matches_capture(nsqd, name, kwargs):
    doc = stats.snapshot(nsqd, **kwargs)
    text = stats.render_text(doc, now=nsqd.start_time + 0.5)
    assert _masked_text(text) == _masked_text(CAPTURED[name]["body"])


def test_text_header_lines(nsqd):
    doc = stats.snapshot(nsqd, include_mem=False)
    lines = stats.render_text(doc, now=nsqd.start_time, uptime_ns=360_297_373).split("\n")
    assert lines[0].startswith("nsqd v1.3.0 (built w/")
    assert re.fullmatch(r"start_time \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", lines[1])
    assert lines[2] == "uptime 360.297373ms"


def test_e2e_source_seam(nsqd):
    result = {"count": 5, "percentiles": [{"quantile": 0.99, "value": 1_500_000.0}]}
    doc = stats.snapshot(nsqd, include_mem=False, e2e=lambda obj: result)
    topic = doc["topics"][0]
    assert topic["e2e_processing_latency"] == result
    assert '"percentiles":[{"quantile":0.99,"value":1500000}]' in go_json(doc)
    text = stats.render_text(doc, now=nsqd.start_time)
    assert "e2e%: 1.50ms\n" in text


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (360_297_373, "360.297373ms"),
        (1_000_000_000, "1s"),
        (61_500_000_000, "1m1.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (-2_000_000, "-2ms"),
    ],
)
def test_go_duration(ns, expected):
    assert format_duration_ns(ns) == expected


def test_rfc3339_utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    try:
        assert stats.rfc3339(1795716719) == "2026-11-26T18:11:59Z"
    finally:
        monkeypatch.undo()
        time.tzset()

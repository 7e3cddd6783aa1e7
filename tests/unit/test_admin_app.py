"""gnsqadmin's Flask app on a fake cluster: nsqadmin's JSON shapes, actions, errors, the page."""

from __future__ import annotations

import json

import pytest

from gnsq_server import config
from gnsq_server.admin.app import create_app
from gnsq_server.admin.cluster import ClusterInfo, UpstreamError
from gnsq_server.admin.rates import RateHistory

from .test_admin_cluster import NOW, FakeCluster, channel, topic, two_node_cluster


@pytest.fixture
def fake() -> FakeCluster:
    return two_node_cluster()


@pytest.fixture
def client(fake: FakeCluster):
    cluster = ClusterInfo(fake, ["l1"], clock=lambda: NOW)
    app = create_app(cluster, RateHistory(min_interval=0), refresh_interval=1.5)
    return app.test_client()


def test_topics_and_nodes_in_nsqadmin_shapes(client) -> None:
    assert client.get("/api/topics").get_json() == {
        "topics": ["lonely", "other", "t"], "message": ""
    }
    assert client.get("/api/topics?inactive=true").get_json() == {
        "topics": {"lonely": ["x"]}, "message": ""
    }
    nodes = client.get("/api/nodes").get_json()
    assert nodes["message"] == ""
    assert [n["node"] for n in nodes["nodes"]] == ["127.0.0.1:4151", "127.0.0.1:5151"]
    keys = {"remote_addresses", "remote_address", "hostname", "broadcast_address", "tcp_port",
            "http_port", "version", "topics", "out_of_date"}
    assert keys <= set(nodes["nodes"][0])


def test_topic_channel_and_node_detail(client) -> None:
    topic = client.get("/api/topics/t").get_json()
    summary = (topic["topic_name"], topic["node"], topic["depth"], topic["message"])
    assert summary == ("t", "*", 5, "")
    channel = client.get("/api/topics/t/c").get_json()
    assert (channel["channel_name"], channel["depth"], channel["clients"]) == ("c", 1, [])
    node = client.get("/api/nodes/127.0.0.1:5151").get_json()
    assert [t["topic_name"] for t in node["topics"]] == ["t", "other"]
    missing = client.get("/api/nodes/nowhere:1")
    assert (missing.status_code, missing.get_json()) == (404, {"message": "NODE_NOT_FOUND"})


def test_overview_feeds_rate_history(client) -> None:
    first = client.get("/api/overview").get_json()
    second = client.get("/api/overview").get_json()
    assert [t["topic_name"] for t in first["topics"]] == ["lonely", "other", "t"]
    assert len(second["rates"]["topics"]["t"]) == 1
    assert second["message"] == ""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/topics/t", ["127.0.0.1:4151/topic/pause", "127.0.0.1:5151/topic/pause"]),
        ("/api/topics/t/c", ["127.0.0.1:4151/channel/pause", "127.0.0.1:5151/channel/pause"]),
    ],
)
def test_pause_action(client, fake: FakeCluster, path: str, expected: list[str]) -> None:
    response = client.post(path, data=json.dumps({"action": "pause"}))
    assert (response.status_code, response.get_json()) == (200, {"message": ""})
    assert [p for p, _q in fake.posts()] == expected


def test_replay_action_reaches_every_node_with_its_start(client, fake: FakeCluster) -> None:
    body = {"action": "replay", "since": "2026-12-07T03:00:00Z"}
    response = client.post("/api/topics/t/c", data=json.dumps(body))
    assert (response.status_code, response.get_json()) == (200, {"message": ""})
    params = {"topic": "t", "channel": "c", "since": "2026-12-07T03:00:00Z"}
    assert fake.posts() == [
        ("127.0.0.1:4151/channel/replay", params),
        ("127.0.0.1:5151/channel/replay", params),
    ]
    missing = client.post("/api/topics/t/c", data=json.dumps({"action": "replay"}))
    assert (missing.status_code, missing.get_json()) == (400, {"message": "MISSING_ARG_SINCE"})
    on_topic = client.post("/api/topics/t", data=json.dumps(body))
    assert (on_topic.status_code, on_topic.get_json()) == (400, {"message": "INVALID_ACTION"})


def test_crash_safe_nodes_show_their_topic_log(fake: FakeCluster) -> None:
    log = {"log_bytes": 900, "log_retained_bytes": 300, "log_first_seq": 4, "log_end_seq": 20}
    crash_safe = {**topic("t", 2, [{**channel("c", 1), "log_position": 18, "log_committed": 15}])}
    fake.replies["GET 127.0.0.1:4151/stats"] = {"topics": [{**crash_safe, **log}]}
    cluster = ClusterInfo(fake, ["l1"], clock=lambda: NOW)
    app = create_app(cluster, RateHistory(min_interval=0), refresh_interval=1.5)
    client = app.test_client()
    nodes = {n["node"]: n for n in client.get("/api/topics/t").get_json()["nodes"]}
    assert {k: nodes["127.0.0.1:4151"][k] for k in log} == log
    assert "log_bytes" not in nodes["127.0.0.1:5151"], "a default-mode node has no log"
    channel_nodes = client.get("/api/topics/t/c").get_json()["nodes"]
    assert [(n["log_position"], n["log_committed"]) for n in channel_nodes] == [(18, 15)]


def test_delete_tombstone_create(client, fake: FakeCluster) -> None:
    assert client.delete("/api/topics/t/c").status_code == 200
    assert "l1/channel/delete" in [p for p, _q in fake.posts()]
    fake.calls.clear()
    response = client.delete("/api/nodes/127.0.0.1:4151", data=json.dumps({"topic": "t"}))
    assert response.status_code == 200
    assert fake.posts() == [("l1/topic/tombstone", {"topic": "t", "node": "127.0.0.1:4151"})]
    fake.calls.clear()
    assert client.post("/api/topics", data=json.dumps({"topic": "new"})).status_code == 200
    assert fake.posts() == [("l1/topic/create", {"topic": "new"})]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/topics/t", {"action": "explode"}, 400, "INVALID_ACTION"),
        ("POST", "/api/topics/t", [1], 400, "INVALID_BODY"),
        ("POST", "/api/topics", {"topic": "bad topic"}, 400, "INVALID_TOPIC"),
        ("POST", "/api/topics", {"topic": "ok", "channel": "b/d"}, 400, "INVALID_CHANNEL"),
        ("DELETE", "/api/nodes/x:1", {"topic": ""}, 400, "INVALID_TOPIC"),
        ("PUT", "/api/topics", {}, 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_bad_requests(client, method, path, body, status, message) -> None:
    response = client.open(path, method=method, data=json.dumps(body))
    assert (response.status_code, response.get_json()["message"]) == (status, message)


def test_upstream_failure_is_502(fake: FakeCluster, client) -> None:
    fake.replies["GET l1/topics"] = UpstreamError("connection refused")
    response = client.get("/api/topics")
    assert response.status_code == 502
    assert response.get_json()["message"] == (
        "UPSTREAM_ERROR: GET http://l1/topics: connection refused"
    )


@pytest.mark.parametrize("path", ["/", "/topics", "/topics/t", "/topics/t/c", "/nodes",
                                  "/nodes/127.0.0.1:4151"])
def test_pages_serve_the_app_shell(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    page = response.get_data(as_text=True)
    assert '"refresh_ms": 1500' in page and '"lookupd": ["l1"]' in page
    assert "/static/admin.js" in page


def test_static_assets_and_ping(client) -> None:
    for name in ("admin.js", "admin.css", "favicon.svg"):
        with client.get(f"/static/{name}") as response:
            assert response.status_code == 200 and response.get_data()
    assert client.get("/ping").get_data() == b"OK"


def test_options_need_an_upstream() -> None:
    with pytest.raises(config.ConfigError, match="--lookupd-http-address or --nsqd-http-address"):
        config.load_options("nsqadmin", {})
    opts = config.load_options(
        "nsqadmin",
        {"lookupd-http-address": ["a:4161", "b:4161"], "refresh-interval": "500ms"},
    )
    assert opts.nsqlookupd_http_addresses == ["a:4161", "b:4161"]
    assert opts.refresh_interval == 0.5 and opts.http_address == "0.0.0.0:4171"


def test_ini_config_file(tmp_path) -> None:
    path = tmp_path / "nsqadmin.ini"
    path.write_text("[nsqadmin]\nnsqd_http_addresses = 127.0.0.1:4151\nhttp_address = :4171\n")
    opts = config.load_options("nsqadmin", {}, str(path))
    assert opts.nsqd_http_addresses == ["127.0.0.1:4151"]

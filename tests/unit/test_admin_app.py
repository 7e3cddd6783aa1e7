"""gnsqadmin's Flask app on a fake cluster: nsqadmin's JSON shapes, actions, errors, the page."""

from __future__ import annotations

import base64
import json

import pytest

from gnsq_server import config
from gnsq_server.admin.access import Access
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
    assert [n["http_port"] for n in nodes["nodes"]] == [4151, 5151]
    keys = {"remote_addresses", "remote_address", "hostname", "broadcast_address", "tcp_port",
            "http_port", "version", "topics", "out_of_date"}
    assert keys == set(nodes["nodes"][0])  # exactly nsqadmin's Producer keys


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
    assert fake.posts() == [
        ("127.0.0.1:4151/topic/delete", {"topic": "t"}),
        ("l1/topic/tombstone", {"topic": "t", "node": "127.0.0.1:4151"}),
    ]
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
        ("DELETE", "/api/nodes/x:1", [1], 400, "INVALID_BODY"),
        ("GET", "/api/graphite", None, 400, "INVALID_ARG_METRIC"),
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
                                  "/nodes/127.0.0.1:4151", "/lookup", "/counter"])
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


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/topics/nope", None),
        ("GET", "/api/topics/nope/c", None),
        ("POST", "/api/topics/nope", {"action": "pause"}),
        ("POST", "/api/topics/nope/c", {"action": "empty"}),
        ("DELETE", "/api/topics/nope", None),
        ("DELETE", "/api/topics/nope/c", None),
    ],
)
def test_unknown_topic_is_502_topic_not_found(client, fake, method, path, body) -> None:
    """As nsqadmin 1.3.0 (its lookupd /lookup answers 404), and nothing is posted anywhere."""
    response = client.open(path, method=method, data=json.dumps(body))
    assert response.status_code == 502
    assert list(response.get_json()) == ["message"]
    assert response.get_json()["message"].startswith("UPSTREAM_ERROR: ")
    assert "TOPIC_NOT_FOUND" in response.get_json()["message"]
    assert fake.posts() == []


def test_unknown_channel_of_a_known_topic_is_just_the_message(client) -> None:
    response = client.get("/api/topics/t/nope")
    assert (response.status_code, response.get_json()) == (200, {"message": ""})


def test_unknown_node_tombstone_is_502(client, fake) -> None:
    response = client.delete("/api/nodes/10.1.1.1:1", data=json.dumps({"topic": "t"}))
    assert response.status_code == 502 and "NODE_NOT_FOUND" in response.get_json()["message"]
    assert fake.posts() == []


class Recorder:
    """A notifier stand-in that keeps what it would POST."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def notify(self, document: dict) -> None:
        self.sent.append(document)


def admin_client(fake: FakeCluster, **kwargs):
    cluster = ClusterInfo(fake, ["l1"], clock=lambda: NOW)
    opts = config.default_options("nsqadmin", nsqlookupd_http_addresses=["l1"])
    app = create_app(cluster, RateHistory(min_interval=0), opts=opts, **kwargs)
    return app.test_client(), cluster


def test_non_admins_get_403_and_no_buttons(fake: FakeCluster) -> None:
    client, _ = admin_client(fake, access=Access(["alice"], "X-Forwarded-User"))
    actions = [
        ("POST", "/api/topics", {"topic": "n"}), ("POST", "/api/topics/t", {"action": "pause"}),
        ("POST", "/api/topics/t/c", {"action": "pause"}), ("DELETE", "/api/topics/t", None),
        ("DELETE", "/api/topics/t/c", None),
        ("DELETE", "/api/nodes/127.0.0.1:4151", {"topic": "t"}),
    ]
    for method, path, body in actions:
        response = client.open(path, method=method, data=json.dumps(body),
                               headers={"X-Forwarded-User": "mallory"})
        assert (response.status_code, response.get_json()) == (403, {"message": "FORBIDDEN"})
    assert fake.posts() == []
    assert '"is_admin": false' in client.get("/topics").get_data(as_text=True)
    page = client.get("/topics", headers={"X-Forwarded-User": "alice"}).get_data(as_text=True)
    assert '"is_admin": true' in page
    ok = client.post("/api/topics/t", data=json.dumps({"action": "pause"}),
                     headers={"X-Forwarded-User": "alice"})
    assert ok.status_code == 200 and len(fake.posts()) == 2
    assert client.get("/api/topics/t", headers={"X-Forwarded-User": "bob"}).status_code == 200


def test_every_action_is_notified_in_nsqadmins_shape(fake: FakeCluster) -> None:
    recorder = Recorder()
    client, _ = admin_client(fake, notifier=recorder)
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode(),
            "User-Agent": "curl/8"}
    client.post("/api/topics", data=json.dumps({"topic": "n", "channel": "c"}), headers=auth)
    client.post("/api/topics/t", data=json.dumps({"action": "pause"}))
    client.post("/api/topics/t/c", data=json.dumps({"action": "empty"}))
    client.delete("/api/topics/t/c")
    client.delete("/api/topics/t")
    client.delete("/api/nodes/127.0.0.1:4151", data=json.dumps({"topic": "t"}))
    client.post("/api/topics/nope", data=json.dumps({"action": "pause"}))  # 502: not notified
    assert [(d["action"], d["topic"], d.get("channel"), d.get("node")) for d in recorder.sent] == [
        ("create_topic", "n", None, None), ("create_channel", "n", "c", None),
        ("pause_topic", "t", None, None), ("empty_channel", "t", "c", None),
        ("delete_channel", "t", "c", None), ("delete_topic", "t", None, None),
        ("tombstone_topic_producer", "t", None, "127.0.0.1:4151"),
    ]
    first = recorder.sent[0]
    assert set(first) == {"action", "topic", "timestamp", "user", "remote_ip", "user_agent",
                          "url", "via"}
    assert (first["user"], first["user_agent"]) == ("ops", "curl/8")
    assert first["url"] == "http://localhost/api/topics"
    assert "user" not in recorder.sent[2]


def test_config_endpoint(fake: FakeCluster) -> None:
    client, cluster = admin_client(fake)
    assert client.get("/config/nsqlookupd_http_addresses").get_json() == ["l1"]
    assert client.get("/config/http_client_connect_timeout").get_json() == 2_000_000_000
    assert client.get("/config/admin_users").get_json() == []
    # Strings are text/plain, as nsqadmin writes them.
    assert client.get("/config/statsd_prefix").get_data(as_text=True) == "nsq.%s"
    assert client.get("/config/base_path").get_data(as_text=True) == "/"
    assert client.get("/config/proxy_graphite").get_json() is False
    missing = client.get("/config/nope")
    assert (missing.status_code, missing.get_json()) == (400, {"message": "INVALID_OPTION"})
    put = client.put("/config/nsqlookupd_http_addresses", data=json.dumps(["l1", "l2"]))
    assert put.get_json() == ["l1", "l2"] and cluster.lookupd_addresses == ["l1", "l2"]
    for body, status in ((b"", 413), (b"{", 400), (b'"x"', 400)):
        response = client.put("/config/nsqlookupd_http_addresses", data=body)
        assert response.status_code == status
    assert client.put("/config/log_level", data=b"warn").get_json() == 3
    assert client.put("/config/log_level", data=b"loud").status_code == 400
    client.put("/config/log_level", data=b"info")
    assert client.put("/config/base_path", data=b"/x").status_code == 400
    outsider = client.get("/config/base_path", environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert (outsider.status_code, outsider.get_json()) == (403, {"message": "FORBIDDEN"})


#: Every flag of nsqadmin 1.3.0 (apps/nsqadmin/main.go).
NSQADMIN_FLAGS = (
    "log-level", "log-prefix", "verbose", "http-address", "base-path", "dev-static-dir",
    "graphite-url", "proxy-graphite", "statsd-counter-format", "statsd-gauge-format",
    "statsd-prefix", "statsd-interval", "notification-http-endpoint",
    "http-client-connect-timeout", "http-client-request-timeout",
    "http-client-tls-insecure-skip-verify", "http-client-tls-root-ca-file", "http-client-tls-cert",
    "http-client-tls-key", "allow-config-from-cidr", "acl-http-header", "lookupd-http-address",
    "nsqd-http-address", "admin-user",
)


def test_every_nsqadmin_flag_is_accepted() -> None:
    flags = {opt.flag for opt in config.option_table("nsqadmin")}
    assert set(NSQADMIN_FLAGS) <= flags
    nsqd_flags = {opt.flag for opt in config.option_table("nsqd")}
    assert "admin-user" not in nsqd_flags and "base-path" not in nsqd_flags


def test_an_nsqadmin_config_with_graphite_loads(tmp_path) -> None:
    path = tmp_path / "nsqadmin.ini"
    path.write_text(
        "[nsqadmin]\nnsqlookupd_http_addresses = 127.0.0.1:4161\n"
        "graphite_url = http://graphite:8080\nproxy_graphite = true\nstatsd_interval = 10s\n"
        "admin_users = alice\nacl_http_header = X-Auth-User\nbase_path = /nsq\n"
    )
    opts = config.load_options("nsqadmin", {}, str(path))
    assert (opts.graphite_url, opts.proxy_graphite, opts.statsd_interval) == (
        "http://graphite:8080", True, 10.0)
    assert (opts.admin_users, opts.acl_http_header, opts.base_path) == (
        ["alice"], "X-Auth-User", "/nsq")

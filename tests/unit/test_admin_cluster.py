"""gnsqadmin's cluster view: node merging, stats summing and the requests actions make."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from gnsq_server.admin.cluster import (
    ClusterInfo,
    UpstreamError,
    aggregate_topics,
    find_node,
    http_url,
    merge_producers,
    parse_version,
    warning,
)

from ..captures import CAPTURES

NOW = 1_800_000_000.0


def peer(port: int, topics=(), tombstones=(), version="1.3.0", remote="127.0.0.1:50000"):
    return {
        "remote_address": remote,
        "hostname": f"host{port}",
        "broadcast_address": "127.0.0.1",
        "tcp_port": port,
        "http_port": port + 1,
        "version": version,
        "tombstones": list(tombstones) or [False] * len(topics),
        "topics": list(topics),
    }


def channel(name: str, depth: int, **extra):
    return {
        "channel_name": name, "depth": depth, "backend_depth": extra.pop("backend_depth", 0),
        "in_flight_count": 1, "deferred_count": 2, "message_count": 10, "requeue_count": 3,
        "timeout_count": 4, "client_count": len(extra.get("clients", [])),
        "clients": extra.pop("clients", []), "paused": extra.pop("paused", False),
        "e2e_processing_latency": {"count": 0, "percentiles": None},
    }


def topic(name: str, depth: int, channels=(), backend_depth=0, message_count=7, paused=False):
    return {
        "topic_name": name, "channels": list(channels), "depth": depth,
        "backend_depth": backend_depth, "message_count": message_count, "message_bytes": 1,
        "paused": paused, "e2e_processing_latency": {"count": 0, "percentiles": None},
    }


def test_http_url() -> None:
    assert http_url("127.0.0.1:4161", "/nodes") == "http://127.0.0.1:4161/nodes"
    assert http_url("https://h:1/", "/x", {"topic": "a#ephemeral"}) == (
        "https://h:1/x?topic=a%23ephemeral"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.3.0", (1, 3, 0)), ("v1.2.1-alpha", (1, 2, 1)), ("", (0, 0, 0)), ("x", (0, 0, 0))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


def test_merge_producers_dedupes_across_lookupds_and_nsqds() -> None:
    replies = [
        ("l1:4161", {"producers": [peer(4150, ["b", "a"], [False, True])]}),
        ("l2:4161", {"producers": [peer(4150, ["a"], remote="127.0.0.1:1"), peer(5150, ["c"],
                                                                                 version="1.2.1")]}),
    ]
    info = {"broadcast_address": "127.0.0.1", "hostname": "host4150", "tcp_port": 4150,
            "http_port": 4151, "version": "1.3.0"}
    nsqds = [("localhost:4151", info, {"topics": [topic("d", 0)]})]
    nodes = merge_producers(replies, nsqds)
    assert [n["node"] for n in nodes] == ["127.0.0.1:4151", "127.0.0.1:5151"]
    first = nodes[0]
    assert first["remote_addresses"] == ["l1:4161/127.0.0.1:50000", "l2:4161/127.0.0.1:1"]
    assert first["topics"] == [
        {"topic": "a", "tombstoned": True},
        {"topic": "b", "tombstoned": False},
        {"topic": "d", "tombstoned": False},
    ]
    assert first["http_address"] == "localhost:4151"  # the configured address is used for I/O
    assert not first["out_of_date"]
    assert nodes[1]["out_of_date"]


def test_aggregate_topics_sums_nodes_and_channels() -> None:
    client = {"client_id": "c1", "hostname": "worker", "remote_address": "1.2.3.4:5",
              "connect_ts": int(NOW) - 90, "ready_count": 5, "state": 3}
    p1 = merge_producers([("l", {"producers": [peer(4150)]})])[0]
    p2 = merge_producers([("l", {"producers": [peer(5150)]})])[0]
    stats = [
        (p1, {"topics": [topic("t", 3, [channel("c", 4, clients=[client], backend_depth=1)],
                               backend_depth=2)]}),
        (p2, {"topics": [topic("t", 5, [channel("c", 6, paused=True), channel("d", 1)]),
                         topic("u", 1)]}),
    ]
    topics = aggregate_topics(stats, NOW, names=["empty"])
    assert [t["topic_name"] for t in topics] == ["empty", "t", "u"]
    empty, t, _u = topics
    assert empty["depth"] == 0 and empty["nodes"] == [] and empty["channels"] == []
    assert (t["node"], t["depth"], t["memory_depth"], t["backend_depth"]) == ("*", 8, 6, 2)
    assert t["message_count"] == 14
    assert [n["depth"] for n in t["nodes"]] == [3, 5]
    c, d = t["channels"]
    assert (c["channel_name"], c["depth"], c["memory_depth"], c["paused"]) == ("c", 10, 9, True)
    assert (c["in_flight_count"], c["deferred_count"], c["requeue_count"]) == (2, 4, 6)
    assert c["timeout_count"] == 8 and c["client_count"] == 1
    assert d["depth"] == 1 and not d["paused"]
    (seen,) = c["clients"]
    assert seen["node"] == "127.0.0.1:4151" and seen["connected"] == 90 * 1_000_000_000
    assert seen["ready_count"] == 5


def test_e2e_percentiles_are_merged() -> None:
    p1 = merge_producers([("l", {"producers": [peer(4150)]})])[0]
    p2 = merge_producers([("l", {"producers": [peer(5150)]})])[0]
    doc = topic("t", 0)
    doc2 = topic("t", 0)
    doc["e2e_processing_latency"] = {"count": 2, "percentiles": [{"quantile": 0.99, "value": 10}]}
    doc2["e2e_processing_latency"] = {"count": 1, "percentiles": [{"quantile": 0.99, "value": 40}]}
    (t,) = aggregate_topics([(p1, {"topics": [doc]}), (p2, {"topics": [doc2]})], NOW)
    e2e = t["e2e_processing_latency"]
    assert e2e["count"] == 3
    # Weighted by each node's sample count (2 and 1), as nsqadmin does: (2*10 + 1*40) / 3.
    assert e2e["percentiles"] == [
        {"quantile": 0.99, "max": 40, "min": 10, "average": 20.0, "count": 3}
    ]
    node_entry = t["nodes"][0]["e2e_processing_latency"]["percentiles"][0]
    assert node_entry == {"quantile": 0.99, "value": 10, "max": 10, "min": 10, "average": 10,
                          "count": 2}


def test_e2e_node_without_samples_does_not_halve_the_percentile() -> None:
    """The issue's case: one node has every sample; nsqadmin shows its p99 unchanged."""
    p1 = merge_producers([("l", {"producers": [peer(4150)]})])[0]
    p2 = merge_producers([("l", {"producers": [peer(5150)]})])[0]
    busy, idle = topic("orders", 0), topic("orders", 0)
    busy["e2e_processing_latency"] = {
        "count": 500, "percentiles": [{"quantile": 0.99, "value": 34365450}]}
    idle["e2e_processing_latency"] = {"count": 0, "percentiles": [{"quantile": 0.99, "value": 0}]}
    (t,) = aggregate_topics([(p1, {"topics": [busy]}), (p2, {"topics": [idle]})], NOW)
    (p99,) = t["e2e_processing_latency"]["percentiles"]
    assert p99["average"] == 34365450 and p99["count"] == 500


def test_client_booleans_are_booleans() -> None:
    """nsqd may send 0/1; nsqadmin's ClientStats has bools (``authed`` false, never 0)."""
    (p1,) = merge_producers([("l", {"producers": [peer(4150)]})])
    doc = topic("t", 0, [channel("c", 0, clients=[{"authed": 0, "tls": 1, "snappy": False,
                                                    "client_id": "w1", "sample_rate": 25}])])
    (t,) = aggregate_topics([(p1, {"topics": [doc]})], NOW)
    (client,) = t["channels"][0]["clients"]
    assert client["authed"] is False and client["tls"] is True and client["snappy"] is False
    assert client["deflate"] is False and client["tls_negotiated_protocol_is_mutual"] is False
    assert (client["client_id"], client["sample_rate"]) == ("w1", 25)


class FakeCluster:
    """Answers the daemons' URLs from a table and records every request."""

    def __init__(self, replies: dict[str, object]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, method: str, url: str) -> object:
        parts = urlsplit(url)
        self.calls.append((method, f"{parts.netloc}{parts.path}", dict(parse_qsl(parts.query))))
        key = f"{method} {parts.netloc}{parts.path}"
        reply = self.replies.get(key)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def posts(self) -> list[tuple[str, dict[str, str]]]:
        return sorted((path, query) for method, path, query in self.calls if method == "POST")


def two_node_cluster() -> FakeCluster:
    return FakeCluster({
        "GET l1/nodes": {"producers": [peer(4150, ["t"]), peer(5150, ["t", "other"])]},
        "GET l1/topics": {"topics": ["t", "other", "lonely"]},
        "GET l1/channels": {"channels": ["x"]},
        "GET 127.0.0.1:4151/stats": {"topics": [topic("t", 2, [channel("c", 1)])]},
        "GET 127.0.0.1:5151/stats": {"topics": [topic("t", 3), topic("other", 1)]},
    })


def test_topic_stats_reads_the_nodes_that_have_the_topic() -> None:
    fake = two_node_cluster()
    errors: list[str] = []
    stats = ClusterInfo(fake, ["l1"], clock=lambda: NOW).topic_stats("t", errors)
    assert errors == []
    assert stats["depth"] == 5 and len(stats["nodes"]) == 2
    stats_calls = [q for m, p, q in fake.calls if p.endswith("/stats")]
    assert all(q["topic"] == "t" and q["include_clients"] == "true" for q in stats_calls)


def test_overview_includes_lookupd_topics_without_nodes() -> None:
    cluster = ClusterInfo(two_node_cluster(), ["l1"], clock=lambda: NOW)
    overview = cluster.overview([])
    assert [t["topic_name"] for t in overview["topics"]] == ["lonely", "other", "t"]
    assert cluster.inactive_topics([]) == {"lonely": ["x"]}


def test_actions_post_to_every_node_with_the_topic_and_every_lookupd() -> None:
    fake = two_node_cluster()
    cluster = ClusterInfo(fake, ["l1"], clock=lambda: NOW)
    cluster.channel_action("other", "c", "pause", [])
    assert fake.posts() == [("127.0.0.1:5151/channel/pause", {"topic": "other", "channel": "c"})]
    fake.calls.clear()
    cluster.delete_topic("t", [])
    assert fake.posts() == [
        ("127.0.0.1:4151/topic/delete", {"topic": "t"}),
        ("127.0.0.1:5151/topic/delete", {"topic": "t"}),
        ("l1/topic/delete", {"topic": "t"}),
    ]
    fake.calls.clear()
    # Tombstoning also deletes the topic on that node, or it re-registers within seconds.
    cluster.tombstone_topic("t", "127.0.0.1:4151", [])
    assert fake.posts() == [
        ("127.0.0.1:4151/topic/delete", {"topic": "t"}),
        ("l1/topic/tombstone", {"topic": "t", "node": "127.0.0.1:4151"}),
    ]
    fake.calls.clear()
    with pytest.raises(UpstreamError, match="NODE_NOT_FOUND"):
        cluster.tombstone_topic("t", "10.9.9.9:4151", [])
    assert fake.posts() == []
    cluster.create_topic_channel("n", "c", [])
    assert fake.posts() == [
        ("l1/channel/create", {"topic": "n", "channel": "c"}),
        ("l1/topic/create", {"topic": "n"}),
    ]
    fake.calls.clear()
    # A channel is created on every nsqd with the topic too, so it keeps what is published.
    cluster.create_topic_channel("t", "c2", [])
    assert fake.posts() == [
        ("127.0.0.1:4151/channel/create", {"topic": "t", "channel": "c2"}),
        ("127.0.0.1:5151/channel/create", {"topic": "t", "channel": "c2"}),
        ("l1/channel/create", {"topic": "t", "channel": "c2"}),
        ("l1/topic/create", {"topic": "t"}),
    ]


def test_unknown_topic_is_topic_not_found_and_unknown_channel_none() -> None:
    cluster = ClusterInfo(two_node_cluster(), ["l1"], clock=lambda: NOW)
    for call in (lambda e: cluster.topic_stats("nope", e),
                 lambda e: cluster.channel_stats("nope", "c", e),
                 lambda e: cluster.topic_action("nope", "pause", e),
                 lambda e: cluster.delete_channel("nope", "c", e)):
        with pytest.raises(UpstreamError, match="TOPIC_NOT_FOUND"):
            call([])
    assert cluster.channel_stats("t", "nope", []) is None
    # Registered in lookupd without producers: found, with no nodes.
    assert cluster.topic_stats("lonely", [])["nodes"] == []
    fake = two_node_cluster()
    fake.replies["GET 127.0.0.1:4151/info"] = {"broadcast_address": "127.0.0.1",
                                               "http_port": 4151, "tcp_port": 4150}
    nsqd_only = ClusterInfo(fake, [], ["127.0.0.1:4151"], clock=lambda: NOW)
    with pytest.raises(UpstreamError, match="TOPIC_NOT_FOUND"):
        nsqd_only.topic_stats("nope", [])


def test_failed_upstream_calls_print_no_traceback(capfd) -> None:
    """A hung or dead daemon is one warning line per call, not a gevent traceback each."""
    fake = two_node_cluster()
    fake.replies["GET 127.0.0.1:5151/stats"] = UpstreamError("timed out")
    errors: list[str] = []
    ClusterInfo(fake, ["l1"], clock=lambda: NOW).overview(errors)
    assert errors == [
        "GET http://127.0.0.1:5151/stats?format=json&include_mem=false&include_clients=false: "
        "timed out"
    ]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_partial_failure_is_a_warning_total_failure_raises() -> None:
    fake = two_node_cluster()
    fake.replies["GET l2/nodes"] = UpstreamError("connection refused")
    errors: list[str] = []
    nodes = ClusterInfo(fake, ["l1", "l2"]).producers(errors)
    assert len(nodes) == 2
    assert errors == ["GET http://l2/nodes: connection refused"]
    assert warning(errors) == "WARNING: GET http://l2/nodes: connection refused"
    fake.replies["GET l1/nodes"] = UpstreamError("timed out")
    with pytest.raises(UpstreamError, match="timed out"):
        ClusterInfo(fake, ["l1", "l2"]).producers([])


def test_nsqd_only_mode_reads_info_and_stats() -> None:
    info = {"broadcast_address": "box", "hostname": "box", "tcp_port": 4150, "http_port": 4151,
            "version": "1.3.0"}
    fake = FakeCluster({
        "GET 10.0.0.1:4151/info": info,
        "GET 10.0.0.1:4151/stats": {"topics": [topic("t", 4)]},
    })
    cluster = ClusterInfo(fake, [], ["10.0.0.1:4151"], clock=lambda: NOW)
    (node,) = cluster.producers([])
    assert node["node"] == "box:4151" and node["http_address"] == "10.0.0.1:4151"
    assert cluster.topics([]) == ["t"]
    assert cluster.topic_stats("t", [])["depth"] == 4
    assert cluster.node_stats("box:4151", [])["total_messages"] == 7
    assert cluster.node_stats("nope:1", []) is None


def _captured(server: str, name: str) -> object:
    path = CAPTURES / "http-transcripts.json"
    if not path.exists():
        pytest.skip(f"no captures at {path}")
    for exchange in json.loads(path.read_text()):
        if exchange["server"] == server and exchange["name"] == name:
            return json.loads(exchange["body"])
    pytest.skip(f"no {server} {name} capture")


def test_reads_real_nsq_1_3_0_replies() -> None:
    """Bodies captured from the real nsqlookupd and nsqd 1.3.0 go through unchanged."""
    nodes = _captured("nsqlookupd", "nodes_after_tombstone")
    stats = _captured("nsqd", "stats_json")
    fake = FakeCluster({"GET l1/nodes": nodes, "GET 127.0.0.1:4151/stats": stats})
    cluster = ClusterInfo(fake, ["l1"], clock=lambda: NOW)
    producers = cluster.producers([])
    real = find_node(producers, "127.0.0.1:4151")
    assert real["hostname"] == "nsq-fixture"
    assert {"topic": "lk_topic", "tombstoned": True} in real["topics"]
    summed = aggregate_topics(cluster.nsqd_stats([real], []), NOW)
    (doc_topic,) = [t for t in stats["topics"] if t["topic_name"] == "http_stats"]
    (ours,) = [t for t in summed if t["topic_name"] == "http_stats"]
    assert ours["depth"] == doc_topic["depth"]
    assert [c["channel_name"] for c in ours["channels"]] == [
        c["channel_name"] for c in doc_topic["channels"]
    ]
    clients = [c for channel in ours["channels"] for c in channel["clients"]]
    assert clients and all(c["node"] == "127.0.0.1:4151" for c in clients)

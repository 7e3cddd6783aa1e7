"""gnsqadmin against a real gnsqlookupd + 2 gnsqd (processes): its JSON API and actions.

`AdminCluster` also serves the browser tests in test_admin_ui.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests

from ..ops import wait_for
from ..servers import ServerProcess


class AdminCluster:
    """Start with ``start()``, stop with ``stop()``; ``nsqd_http`` lists the nsqds' HTTP URLs."""

    def __init__(
        self, tmp_path: Path, admin_args: tuple[str, ...] = (), extra_args: tuple[str, ...] = (),
        nsqd_args: tuple[str, ...] = (),
    ) -> None:
        self.tmp_path = tmp_path
        self.nsqd_args = nsqd_args
        self.admin_args = admin_args  # replace the lookupd address
        self.extra_args = extra_args  # added to it
        self.processes: list[ServerProcess] = []
        self.nsqds: list[ServerProcess] = []

    def _start(self, program: str, *args: str, expect=("TCP", "HTTP")) -> ServerProcess:
        process = ServerProcess(program, *args).start(expect=expect)
        self.processes.append(process)
        return process

    def start(self) -> AdminCluster:
        local = ("--http-address=127.0.0.1:0", "--broadcast-address=127.0.0.1")
        self.lookupd = self._start("gnsqlookupd", "--tcp-address=127.0.0.1:0", *local)
        for index in range(2):
            data = self.tmp_path / f"nsqd{index}"
            data.mkdir()
            self.nsqds.append(self._start(
                "gnsqd", "--tcp-address=127.0.0.1:0", *local, f"--data-path={data}",
                f"--lookupd-tcp-address=127.0.0.1:{self.lookupd.tcp_port}", *self.nsqd_args,
            ))
        wait_for(lambda: len(self.lookupd_get("/nodes")["producers"]) == 2, what="registration")
        self.admin = self._start(
            "gnsqadmin", "--http-address=127.0.0.1:0", "--refresh-interval=300ms",
            *(self.admin_args or (f"--lookupd-http-address=127.0.0.1:{self.lookupd.http_port}",)),
            *self.extra_args, expect=("HTTP",),
        )
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin.http_port}"

    def nsqd_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.nsqds[index].http_port}"

    def lookupd_get(self, path: str) -> dict:
        return requests.get(f"http://127.0.0.1:{self.lookupd.http_port}{path}", timeout=5).json()

    def publish(self, index: int, topic: str, count: int) -> None:
        body = "\n".join(f"message {n}" for n in range(count))
        reply = requests.post(f"{self.nsqd_url(index)}/mpub", params={"topic": topic},
                              data=body, timeout=5)
        assert reply.text == "OK"

    def create_channel(self, topic: str, channel: str) -> None:
        for index in range(len(self.nsqds)):
            requests.post(f"{self.nsqd_url(index)}/channel/create",
                          params={"topic": topic, "channel": channel}, timeout=5)

    def channel_stats(self, index: int, topic: str, channel: str) -> dict:
        stats = requests.get(f"{self.nsqd_url(index)}/stats",
                             params={"format": "json", "topic": topic}, timeout=5).json()
        for topic_stats in stats["topics"] or []:
            for channel_stats in topic_stats["channels"]:
                if channel_stats["channel_name"] == channel:
                    return channel_stats
        raise AssertionError(f"no channel {topic}/{channel} on nsqd {index}")

    def topic_stats(self, index: int, topic: str) -> dict | None:
        stats = requests.get(f"{self.nsqd_url(index)}/stats",
                             params={"format": "json", "topic": topic}, timeout=5).json()
        return (stats["topics"] or [None])[0]

    def api(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", json=body, timeout=10)


@pytest.fixture
def cluster(tmp_path):
    started = AdminCluster(tmp_path).start()
    yield started
    started.stop()


def test_topics_nodes_and_depth_per_node(cluster: AdminCluster) -> None:
    cluster.publish(0, "orders", 3)
    cluster.publish(1, "orders", 2)
    wait_for(lambda: "orders" in cluster.api("GET", "/api/topics").json()["topics"],
             what="orders in /api/topics")
    nodes = cluster.api("GET", "/api/nodes").json()
    assert nodes["message"] == ""
    assert sorted(n["http_port"] for n in nodes["nodes"]) == sorted(
        p.http_port for p in cluster.nsqds
    )
    topic = wait_for(
        lambda: (t := cluster.api("GET", "/api/topics/orders").json())["depth"] == 5 and t,
        what="depth 5",
    )
    assert sorted(n["depth"] for n in topic["nodes"]) == [2, 3]
    assert topic["message_count"] == 5 and topic["message"] == ""
    assert cluster.admin.stop() == 0  # SIGTERM: a clean stop
    assert "INFO: HTTP: listening on 127.0.0.1:" in cluster.admin.log_text()


def test_actions_reach_every_nsqd(cluster: AdminCluster, connect) -> None:
    cluster.publish(0, "jobs", 2)
    cluster.publish(1, "jobs", 1)
    # the channel is created on the nodes lookupd knows hold the topic: wait for both
    wait_for(lambda: all(any(t["topic"] == "jobs" for t in n["topics"])
                         for n in cluster.api("GET", "/api/nodes").json()["nodes"]),
             what="jobs registered on both nodes")
    cluster.create_channel("jobs", "work")
    consumer = connect(cluster.nsqds[0].tcp_port)
    consumer.command(b"SUB jobs work")
    consumer.read_frame()
    channel = cluster.api("GET", "/api/topics/jobs/work").json()
    assert (channel["depth"], len(channel["clients"])) == (3, 1)
    assert channel["clients"][0]["node"] == f"127.0.0.1:{cluster.nsqds[0].http_port}"

    assert cluster.api("POST", "/api/topics/jobs/work", {"action": "pause"}).json() == {
        "message": ""
    }
    assert all(cluster.channel_stats(i, "jobs", "work")["paused"] for i in range(2))
    cluster.api("POST", "/api/topics/jobs/work", {"action": "unpause"})
    assert not any(cluster.channel_stats(i, "jobs", "work")["paused"] for i in range(2))
    cluster.api("POST", "/api/topics/jobs", {"action": "pause"})
    assert all(cluster.topic_stats(i, "jobs")["paused"] for i in range(2))
    cluster.api("POST", "/api/topics/jobs/work", {"action": "empty"})
    assert [cluster.channel_stats(i, "jobs", "work")["depth"] for i in range(2)] == [0, 0]

    node = f"127.0.0.1:{cluster.nsqds[1].http_port}"
    assert cluster.api("DELETE", f"/api/nodes/{node}", {"topic": "jobs"}).status_code == 200
    producers = cluster.lookupd_get("/lookup?topic=jobs")["producers"]
    assert [p["http_port"] for p in producers] == [cluster.nsqds[0].http_port]

    assert cluster.api("DELETE", "/api/topics/jobs/work").status_code == 200
    assert cluster.topic_stats(0, "jobs")["channels"] == []
    assert cluster.api("DELETE", "/api/topics/jobs").status_code == 200
    assert [cluster.topic_stats(i, "jobs") for i in range(2)] == [None, None]
    assert "jobs" not in cluster.lookupd_get("/topics")["topics"]


def test_nsqd_addresses_without_lookupd_and_a_dead_one(cluster: AdminCluster) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
    try:
        nsqd_only = ServerProcess(
            "gnsqadmin", "--http-address=127.0.0.1:0",
            *(f"--nsqd-http-address=127.0.0.1:{p.http_port}" for p in cluster.nsqds),
            f"--nsqd-http-address={dead_address}",
        ).start(expect=("HTTP",))
        cluster.processes.append(nsqd_only)
        cluster.publish(0, "solo", 4)
        base = f"http://127.0.0.1:{nsqd_only.http_port}"
        topics = requests.get(f"{base}/api/topics", timeout=5).json()
        assert topics["topics"] == ["solo"]
        assert topics["message"].startswith(f"WARNING: GET http://{dead_address}/stats")
        assert requests.get(f"{base}/api/topics/solo", timeout=5).json()["depth"] == 4
        assert len(requests.get(f"{base}/api/nodes", timeout=5).json()["nodes"]) == 2
    finally:
        dead.close()


def test_bad_options_exit_2() -> None:
    process = ServerProcess("gnsqadmin")
    process.start(expect=())
    assert process.wait() == 2
    assert "--lookupd-http-address or --nsqd-http-address required" in process.log_text()

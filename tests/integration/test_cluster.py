"""A real cluster on loopback: 2 gnsqlookupd + 3 gnsqd processes, consumed by pynsq and gnsq
clients that know only the lookupds' HTTP addresses."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time

import gevent
import pytest
import requests

from gnsq_server.nsqd import server as nsqd_server

from ..ops import wait_for
from ..servers import ServerProcess

pytestmark = pytest.mark.skipif(
    "Lookup(" not in inspect.getsource(nsqd_server),
    reason="gnsq_server/nsqd/server.py does not start the lookupd connections yet",
)

POLL = 1  # the clients' lookupd poll interval (pynsq wants an int)


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.lookupds: list[ServerProcess] = []
        self.nodes: list[ServerProcess] = []

    def start_lookupd(self, tcp_port: int = 0, http_port: int = 0) -> ServerProcess:
        return ServerProcess(
            "gnsqlookupd",
            f"--tcp-address=127.0.0.1:{tcp_port}",
            f"--http-address=127.0.0.1:{http_port}",
            "--broadcast-address=127.0.0.1",
        ).start()

    def start_node(self, number: int) -> ServerProcess:
        data_path = self.tmp_path / f"node{number}"
        data_path.mkdir(exist_ok=True)
        return ServerProcess(
            "gnsqd",
            "--tcp-address=127.0.0.1:0",
            "--http-address=127.0.0.1:0",
            "--broadcast-address=127.0.0.1",
            f"--data-path={data_path}",
            *(f"--lookupd-tcp-address=127.0.0.1:{lookupd.tcp_port}" for lookupd in self.lookupds),
        ).start()

    def lookupd_http(self) -> list[str]:
        return [f"127.0.0.1:{lookupd.http_port}" for lookupd in self.lookupds]

    def stop(self) -> None:
        for process in [*self.nodes, *self.lookupds]:
            process.stop()


def get(address: str, path: str, **params) -> requests.Response:
    return requests.get(f"http://{address}{path}", params=params, timeout=5)


def post(address: str, path: str, data: bytes = b"", **params) -> requests.Response:
    response = requests.post(f"http://{address}{path}", params=params, data=data, timeout=5)
    assert response.status_code == 200, response.text
    return response


def producer_ports(lookupd: str, topic: str) -> set[int]:
    response = get(lookupd, "/lookup", topic=topic)
    if response.status_code != 200:
        return set()
    return {p["tcp_port"] for p in response.json()["producers"]}


def node_topics(node: ServerProcess) -> list[str]:
    stats = get(f"127.0.0.1:{node.http_port}", "/stats", format="json").json()
    return [topic["topic_name"] for topic in stats["topics"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.lookupds = [cluster.start_lookupd() for _ in range(2)]
        cluster.nodes = [cluster.start_node(number) for number in range(3)]
        yield cluster
    finally:
        cluster.stop()


class PynsqReader:
    """pynsq's Reader on its own thread and tornado IOLoop."""

    def __init__(self, topic: str, channel: str, lookupds: list[str]) -> None:
        self.bodies: list[bytes] = []
        self._args = (topic, channel, [f"http://{address}" for address in lookupds])
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        import nsq
        import tornado.ioloop

        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = tornado.ioloop.IOLoop.current()
        topic, channel, lookupds = self._args
        try:
            self.reader = nsq.Reader(
                topic,
                channel,
                message_handler=self._handle,
                lookupd_http_addresses=lookupds,
                lookupd_poll_interval=POLL,
                max_in_flight=100,
            )
        except BaseException as err:  # reported to the starting thread
            self._error = err
            self.loop.close(all_fds=True)
            return
        finally:
            self._ready.set()
        self.loop.start()
        self.loop.close(all_fds=True)

    def _handle(self, message) -> bool:
        self.bodies.append(bytes(message.body))
        return True

    def stop(self) -> None:
        def shutdown() -> None:
            self.reader.close()
            self.loop.stop()

        self.loop.add_callback(shutdown)
        self._thread.join(10)


class GnsqConsumer:
    """gnsq's Consumer on this thread's gevent hub (driven by wait())."""

    def __init__(self, topic: str, channel: str, lookupds: list[str]) -> None:
        import gnsq

        self.bodies: list[bytes] = []
        self.consumer = gnsq.Consumer(
            topic,
            channel,
            lookupd_http_addresses=lookupds,
            lookupd_poll_interval=POLL,
            max_in_flight=100,
        )
        self.consumer.on_message.connect(self._handle, weak=False)
        self.consumer.start(block=False)

    def _handle(self, consumer, message) -> None:
        self.bodies.append(bytes(message.body))

    def wait(self, predicate, timeout: float = 15.0, what: str = "messages") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            gevent.sleep(0.05)

    def stop(self) -> None:
        self.consumer.close()
        self.consumer.join(5)


def test_nodes_lists_three_producers(cluster) -> None:
    tcp_ports = {node.tcp_port for node in cluster.nodes}
    for lookupd in cluster.lookupd_http():
        producers = wait_for(
            lambda lookupd=lookupd: (
                len(ps := get(lookupd, "/nodes").json()["producers"]) == 3 and ps
            ),
            what="three producers",
        )
        assert {p["tcp_port"] for p in producers} == tcp_ports
        assert {p["http_port"] for p in producers} == {node.http_port for node in cluster.nodes}
        assert {(p["broadcast_address"], p["version"]) for p in producers} == {
            ("127.0.0.1", "1.3.0")
        }
    for node in cluster.nodes:
        assert "LOOKUP(127.0.0.1:" in node.log_text()


def test_clients_consume_from_every_node_through_lookupd(cluster) -> None:
    # Channels known to lookupd are created on each node before its first message.
    for lookupd in cluster.lookupd_http():
        for channel in ("pynsq", "gnsq"):
            post(lookupd, "/channel/create", topic="spread", channel=channel)
    sent = set()
    for number, node in enumerate(cluster.nodes):
        for k in range(10):
            body = f"node{number}-{k}".encode()
            post(f"127.0.0.1:{node.http_port}", "/pub", body, topic="spread")
            sent.add(body)
    tcp_ports = {node.tcp_port for node in cluster.nodes}
    for lookupd in cluster.lookupd_http():
        wait_for(lambda lookupd=lookupd: producer_ports(lookupd, "spread") == tcp_ports)

    reader = PynsqReader("spread", "pynsq", cluster.lookupd_http())
    consumer = GnsqConsumer("spread", "gnsq", cluster.lookupd_http())
    try:
        consumer.wait(lambda: set(consumer.bodies) == sent and set(reader.bodies) == sent)
    finally:
        consumer.stop()
        reader.stop()
    assert sorted(consumer.bodies) == sorted(reader.bodies) == sorted(sent)


def test_killed_node_disappears_from_lookup(cluster) -> None:
    for node in cluster.nodes:
        post(f"127.0.0.1:{node.http_port}", "/topic/create", topic="everywhere")
    victim = cluster.nodes[2]
    survivors = {node.tcp_port for node in cluster.nodes[:2]}
    metadata = cluster.tmp_path / "node2" / "nsqd.dat"
    wait_for(lambda: b"everywhere" in metadata.read_bytes(), what="metadata written")
    victim.proc.kill()
    victim.wait()
    for lookupd in cluster.lookupd_http():
        wait_for(lambda lookupd=lookupd: producer_ports(lookupd, "everywhere") == survivors)
        wait_for(lambda lookupd=lookupd: len(get(lookupd, "/nodes").json()["producers"]) == 2)
    # Restarted on its data path, it registers its topics again.
    cluster.nodes[2] = cluster.start_node(2)
    everyone = {node.tcp_port for node in cluster.nodes}
    for lookupd in cluster.lookupd_http():
        wait_for(lambda lookupd=lookupd: producer_ports(lookupd, "everywhere") == everyone)


def test_restarted_lookupd_learns_every_topic_back(cluster) -> None:
    node = cluster.nodes[0]
    post(f"127.0.0.1:{node.http_port}", "/topic/create", topic="relearn")
    post(f"127.0.0.1:{node.http_port}", "/channel/create", topic="relearn", channel="c")
    old = cluster.lookupds[0]
    old.stop()
    time.sleep(0.3)
    cluster.lookupds[0] = cluster.start_lookupd(old.tcp_port, old.http_port)
    lookupd = cluster.lookupd_http()[0]
    expected = set().union(*(node_topics(node) for node in cluster.nodes))
    assert {"relearn", "everywhere"} <= expected
    wait_for(
        lambda: set(get(lookupd, "/topics").json()["topics"]) == expected,
        what=f"topics {expected}",
    )
    everyone = {node.tcp_port for node in cluster.nodes}
    wait_for(lambda: producer_ports(lookupd, "everywhere") == everyone)
    assert get(lookupd, "/lookup", topic="relearn").json()["channels"] == ["c"]
    wait_for(lambda: len(get(lookupd, "/nodes").json()["producers"]) == 3)


def test_tombstone_then_delete_keeps_consumers_from_recreating_the_topic(cluster) -> None:
    node = cluster.nodes[0]
    node_http = f"127.0.0.1:{node.http_port}"
    post(node_http, "/pub", b"last", topic="retired")
    for lookupd in cluster.lookupd_http():
        wait_for(lambda lookupd=lookupd: producer_ports(lookupd, "retired") == {node.tcp_port})
    consumer = GnsqConsumer("retired", "c", cluster.lookupd_http())
    try:
        consumer.wait(lambda: consumer.bodies == [b"last"])
        for lookupd in cluster.lookupd_http():
            post(lookupd, "/topic/tombstone", topic="retired", node=node_http)
            assert producer_ports(lookupd, "retired") == set()
        post(node_http, "/topic/delete", topic="retired")
        # Several lookupd polls later the consumer has not found the node again.
        deadline = time.monotonic() + 3 * POLL
        consumer.wait(lambda: time.monotonic() > deadline)
        assert "retired" not in node_topics(node)
        for lookupd in cluster.lookupd_http():
            response = get(lookupd, "/lookup", topic="retired").json()
            assert response["producers"] == []
    finally:
        consumer.stop()

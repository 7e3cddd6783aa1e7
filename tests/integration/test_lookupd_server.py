"""gnsqlookupd as a whole: bad input on both interfaces, disconnects, stop and run()."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gnsq_server import config
from gnsq_server.lookupd.protocol_v1 import encode_response
from gnsq_server.lookupd.server import LookupdServer, run
from tests.servers import ThreadedServer

REPO = Path(__file__).resolve().parents[2]
OK = encode_response(b"OK")
PEER = {
    "broadcast_address": "127.0.0.1",
    "hostname": "good",
    "http_port": 4151,
    "tcp_port": 4150,
    "version": "1.3.0",
}


def lookupd_options(**overrides):
    settings = {
        "tcp_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "broadcast_address": "127.0.0.1",
        **overrides,
    }
    return config.default_options("nsqlookupd", **settings)


@pytest.fixture
def lookupd():
    server = ThreadedServer(lambda: LookupdServer(lookupd_options())).start()
    yield server.server
    server.stop()


class V1:
    """A raw V1 connection."""

    def __init__(self, port: int, magic: bytes = b"  V1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(magic)

    def identify(self, peer: dict) -> dict:
        body = json.dumps(peer).encode()
        self.sock.sendall(b"IDENTIFY\n" + struct.pack(">i", len(body)) + body)
        return json.loads(self.read_response())

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\n")
        return self.read_response()

    def read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError(data)
            data += chunk
        return data

    def read_response(self) -> bytes:
        (size,) = struct.unpack(">i", self.read_exact(4))
        return self.read_exact(size)

    def closed(self, wait: float = 3.0) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def url(server: LookupdServer, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def lookup(server: LookupdServer, topic: str) -> dict:
    return requests.get(url(server, f"/lookup?topic={topic}"), timeout=5).json()


@pytest.fixture
def good_producer(lookupd):
    """A well-behaved producer of topic `good`, to check nothing disturbs it."""
    producer = V1(lookupd.tcp_port)
    reply = producer.identify(PEER)
    assert reply["tcp_port"] == lookupd.tcp_port
    assert reply["http_port"] == lookupd.http_port
    assert reply["broadcast_address"] == "127.0.0.1"
    assert producer.command(b"REGISTER good ch") == b"OK"
    yield producer
    producer.sock.close()


def assert_still_serving(server: LookupdServer, producer: V1) -> None:
    assert producer.command(b"PING") == b"OK"
    assert [p["hostname"] for p in lookup(server, "good")["producers"]] == ["good"]


BAD_TCP = [
    # (bytes after connect, expected reply); all of these end with the server closing
    (b"  V2", b"E_BAD_PROTOCOL"),
    (b"GET / HTTP/1.1\r\n\r\n", b"E_BAD_PROTOCOL"),
    (b"  V1IDENTIFY\n\xff\xff\xff\xff", b"E_BAD_BODY IDENTIFY invalid body size -1"),
    (b"  V1IDENTIFY\n\x7f\xff\xff\xff", b"E_BAD_BODY IDENTIFY invalid body size 2147483647"),
    (b"  V1IDENTIFY\n\x00\x00\x00\x05[1,2]", b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
    (b"  V1REGISTER t\n", b"E_INVALID client must IDENTIFY"),
    (b"  V1\x00\x01\x02\n", b"E_INVALID invalid command \x00\x01\x02"),
]


@pytest.mark.parametrize(("data", "reply"), BAD_TCP)
def test_bad_tcp_input_errors_and_closes(lookupd, good_producer, data, reply):
    conn = V1(lookupd.tcp_port, magic=data)
    try:
        assert conn.read_response() == reply
        assert conn.closed()
    finally:
        conn.sock.close()
    assert_still_serving(lookupd, good_producer)


def test_silent_close_on_eof_mid_magic(lookupd, good_producer):
    with socket.create_connection(("127.0.0.1", lookupd.tcp_port), timeout=5) as conn:
        conn.sendall(b"  ")
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(100) == b""
    assert_still_serving(lookupd, good_producer)


def test_disconnect_unregisters_but_keys_stay(lookupd, good_producer):
    other = V1(lookupd.tcp_port)
    other.identify({**PEER, "hostname": "other", "broadcast_address": "127.0.0.9"})
    assert other.command(b"REGISTER good ch") == b"OK"
    assert other.command(b"REGISTER solo") == b"OK"
    assert len(lookup(lookupd, "good")["producers"]) == 2
    other.sock.close()
    deadline = time.monotonic() + 5
    while len(lookup(lookupd, "good")["producers"]) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert lookup(lookupd, "solo") == {"channels": [], "producers": []}
    nodes = requests.get(url(lookupd, "/nodes"), timeout=5).json()["producers"]
    assert [n["hostname"] for n in nodes] == ["good"]


def test_tombstone_hides_producer_until_reregistered_elsewhere(lookupd, good_producer):
    response = requests.post(url(lookupd, "/topic/tombstone?topic=good&node=127.0.0.1:4151"))
    assert response.status_code == 200
    assert lookup(lookupd, "good")["producers"] == []
    assert requests.get(url(lookupd, "/nodes"), timeout=5).json()["producers"][0]["tombstones"] == [
        True
    ]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/lookup?topic=%zz", 400, "INVALID_REQUEST"),
        ("GET", "/lookup?topic=a;b", 400, "INVALID_REQUEST"),
        ("GET", "/channels?topic=%", 400, "INVALID_REQUEST"),
        ("POST", "/topic/create?topic=" + "x" * 65, 400, "INVALID_ARG_TOPIC"),
        ("POST", "/channel/create?topic=t&channel=", 400, "INVALID_ARG_CHANNEL"),
        ("POST", "/topic/tombstone?node=x", 400, "MISSING_ARG_TOPIC"),
        ("DELETE", "/topics", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/" + "x" * 5000, 404, "NOT_FOUND"),
    ],
)
def test_bad_http_input(lookupd, good_producer, method, path, status, message):
    # http.client sends the path as given (requests would re-quote a stray %)
    conn = http.client.HTTPConnection("127.0.0.1", lookupd.http_port, timeout=5)
    try:
        conn.request(method, path, body=b"ignored body")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == status
    assert json.loads(body) == {"message": message}
    assert response.getheader("X-NSQ-Content-Type") == "nsq; version=1.0"
    assert_still_serving(lookupd, good_producer)


def test_http_garbage_request_does_not_disturb_tcp(lookupd, good_producer):
    with socket.create_connection(("127.0.0.1", lookupd.http_port), timeout=5) as sock:
        sock.sendall(b"\x00\x01garbage\r\n\r\n")
        sock.recv(4096)
    assert_still_serving(lookupd, good_producer)


def test_stop_closes_client_connections():
    threaded = ThreadedServer(lambda: LookupdServer(lookupd_options())).start()
    server = threaded.server
    client = V1(server.tcp_port)
    client.identify(PEER)
    threaded.stop()
    assert client.closed()
    client.sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.tcp_port), timeout=1)


def test_run_returns_1_when_the_address_is_taken(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with caplog.at_level(logging.ERROR, logger="gnsq_server.lookupd.server"):
            assert run(lookupd_options(http_address=address)) == 1
    assert f"listen ({address}) failed" in caplog.text


RUN_SCRIPT = """
import logging, sys
from gnsq_server import config
from gnsq_server.lookupd.server import run
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
opts = config.default_options(
    "nsqlookupd", tcp_address="127.0.0.1:0", http_address="127.0.0.1:0"
)
sys.exit(run(opts))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_on_signal(signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline().decode(), proc.stdout.readline().decode()]
        assert lines[0].startswith("TCP: listening on 127.0.0.1:")
        assert lines[1].startswith("HTTP: listening on 127.0.0.1:")
        http_port = int(lines[1].rsplit(":", 1)[1])
        assert requests.get(f"http://127.0.0.1:{http_port}/ping", timeout=5).text == "OK"
        proc.send_signal(signum)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_gnsq_lookupd_client(lookupd, good_producer):
    """gnsq's LookupdClient (a real client library) reads our answers."""
    import gnsq

    client = gnsq.LookupdClient("127.0.0.1", lookupd.http_port)
    assert client.ping() == b"OK"
    result = client.lookup("good")
    assert result["channels"] == ["ch"]
    assert [(p["broadcast_address"], p["tcp_port"]) for p in result["producers"]] == [
        ("127.0.0.1", 4150)
    ]
    client.create_topic("made")
    client.create_channel("made", "c")
    assert set(client.topics()["topics"]) == {"good", "made"}
    assert client.channels("made") == {"channels": ["c"]}
    client.delete_topic("made")
    assert client.topics() == {"topics": ["good"]}

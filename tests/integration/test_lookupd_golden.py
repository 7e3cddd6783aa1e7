"""Replay nsqlookupd 1.3.0's captured exchanges against an in-process gnsqlookupd.

TCP: every case of lookupd-tcp-transcripts.json, byte for byte; only the IDENTIFY reply is masked
(hostname, broadcast_address and ports vary, per the fixture README). HTTP: every nsqlookupd case
of http-transcripts.json, in capture order on one server whose state is rebuilt as each case's
`note` describes; status, content types and body are compared, lists as sets.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import pytest

from gnsq_server import config
from gnsq_server.lookupd.protocol_v1 import encode_response
from gnsq_server.lookupd.registry import GO_ZERO_TIME_UNIX_NANO
from gnsq_server.lookupd.server import LookupdServer
from tests.servers import ThreadedServer

from ..captures import CAPTURES

FIXTURES = CAPTURES
TCP_CASES = json.loads((FIXTURES / "lookupd-tcp-transcripts.json").read_text())
HTTP_CASES = [
    case
    for case in json.loads((FIXTURES / "http-transcripts.json").read_text())
    if case["server"] == "nsqlookupd"
]

#: The real lookupd's IDENTIFY reply in the fixtures (hostname nsq-fixture, ports 4160/4161).
FIXTURE_IDENTIFY_REPLY = encode_response(
    b'{"broadcast_address":"127.0.0.1","hostname":"nsq-fixture","http_port":4161,'
    b'"tcp_port":4160,"version":"1.3.0"}'
)

#: Cases where we knowingly differ from nsqlookupd 1.3.0: name -> (reply, closed).
DEVIATIONS = {
    # nsqlookupd panics and the whole process exits; we refuse the size and close.
    "identify_negative_body_size_crashes_lookupd": (
        encode_response(b"E_BAD_BODY IDENTIFY invalid body size -1"),
        True,
    ),
}


def lookupd_options(**overrides):
    settings = {
        "tcp_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "broadcast_address": "127.0.0.1",
        **overrides,
    }
    return config.default_options("nsqlookupd", **settings)


@pytest.fixture(scope="module")
def lookupd():
    server = ThreadedServer(lambda: LookupdServer(lookupd_options())).start()
    yield server.server
    server.stop()


def our_identify_reply(server: LookupdServer) -> bytes:
    info = {
        "broadcast_address": "127.0.0.1",
        "hostname": server.hostname,
        "http_port": server.http_port,
        "tcp_port": server.tcp_port,
        "version": "1.3.0",
    }
    return encode_response(json.dumps(info, separators=(",", ":")).encode())


def read_exactly(sock: socket.socket, size: int, timeout: float = 3.0) -> bytes:
    """Up to `size` bytes; fewer only if the server closed first or went quiet for `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def closed_after(sock: socket.socket, wait: float) -> tuple[bool, bytes]:
    """Whether the server closes within `wait` seconds, and any bytes it sent meanwhile."""
    sock.settimeout(wait)
    extra = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, extra
            extra += chunk
    except TimeoutError:
        return False, extra
    except ConnectionResetError:
        return True, extra


@pytest.mark.parametrize("case", TCP_CASES, ids=[c["name"] for c in TCP_CASES])
def test_tcp_transcript(lookupd, case):
    identify_reply = our_identify_reply(lookupd)
    steps = case.get("send") or [{"send_hex": case["send_hex"], "recv_hex": case["recv_hex"]}]
    expected_closed = case["closed"]
    with socket.create_connection(("127.0.0.1", lookupd.tcp_port), timeout=5) as sock:
        for index, step in enumerate(steps):
            sock.sendall(bytes.fromhex(step["send_hex"]))
            if index == len(steps) - 1 and case.get("then_client_shuts_down_write_side"):
                sock.shutdown(socket.SHUT_WR)
            expected = bytes.fromhex(step["recv_hex"])
            expected = expected.replace(FIXTURE_IDENTIFY_REPLY, identify_reply)
            if case["name"] in DEVIATIONS:
                expected, expected_closed = DEVIATIONS[case["name"]]
            assert read_exactly(sock, len(expected)) == expected
        closed, extra = closed_after(sock, 3.0 if expected_closed else 0.3)
    assert extra == b""
    assert closed == expected_closed


# -- HTTP --------------------------------------------------------------------------------------

NSQD_IDENTIFY = {
    "broadcast_address": "127.0.0.1",
    "hostname": "nsq-fixture",
    "http_port": 4151,
    "tcp_port": 4150,
    "version": "1.3.0",
}
FAKE_IDENTIFY = {
    "broadcast_address": "127.0.0.2",
    "hostname": "fake-producer",
    "http_port": 5151,
    "tcp_port": 5150,
    "version": "1.2.1",
}


class Producer:
    """A V1 connection registering topics, as nsqd (or the fixture's hand-made producer) did."""

    def __init__(self, port: int, peer: dict, registrations: list[bytes]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        body = json.dumps(peer, separators=(",", ":")).encode()
        self.sock.sendall(b"  V1IDENTIFY\n" + struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", read_exactly(self.sock, 4))
        read_exactly(self.sock, size)
        for line in registrations:
            self.sock.sendall(line + b"\n")
            assert read_exactly(self.sock, 6) == b"\x00\x00\x00\x02OK"
        host, port = self.sock.getsockname()[:2]
        self.address = f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()


def http_request(port: int, method: str, raw_head: str, body: bytes = b""):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw_head.encode("latin-1") + body)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response, response.read()


class HTTPReplay:
    """The fixture's lookupd HTTP session: state carries over from case to case, so running case
    N first replays (unchecked) every earlier case that has not run yet; `-k` works."""

    def __init__(self, server: LookupdServer) -> None:
        self.server = server
        self.next_index = 0
        self.nsqd = Producer(
            server.tcp_port,
            NSQD_IDENTIFY,
            [b"REGISTER lk_topic lk_chan1", b"REGISTER lk_topic lk_chan2", b"REGISTER lk_solo"],
        )
        self.fake = Producer(
            server.tcp_port, FAKE_IDENTIFY, [b"REGISTER lk_topic lk_chan1", b"REGISTER lk_other"]
        )
        # the fixture's producer ids (ephemeral ports) -> ours, matched by hostname
        debug = next(c for c in HTTP_CASES if c["name"] == "debug")
        ours = {"nsq-fixture": self.nsqd.address, "fake-producer": self.fake.address}
        self.address_map = {
            entry["id"]: ours[entry["hostname"]]
            for entries in json.loads(debug["body"]).values()
            for entry in entries
        }

    def request(self, case: dict):
        if case["name"] == "nodes_after_fake_producer_left":
            self._fake_producer_leaves()
        request = case["request"]
        return http_request(self.server.http_port, request["method"], request["raw_head"])

    def run_until(self, index: int) -> None:
        while self.next_index < index:
            self.request(HTTP_CASES[self.next_index])
            self.next_index += 1
        self.next_index = index + 1

    def _fake_producer_leaves(self) -> None:
        self.fake.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, body = http_request(
                self.server.http_port, "GET", "GET /nodes HTTP/1.1\r\nConnection: close\r\n\r\n"
            )
            if len(json.loads(body)["producers"]) == 1:
                return
            time.sleep(0.02)
        raise AssertionError("the fake producer's registrations did not go away")


@pytest.fixture(scope="module")
def http_replay():
    server = ThreadedServer(lambda: LookupdServer(lookupd_options())).start()
    replay = HTTPReplay(server.server)
    yield replay
    replay.nsqd.close()
    replay.fake.close()
    server.stop()


class _Object(tuple):
    """A JSON object as its ordered (key, value) pairs, so key order is compared too."""


def canonical(value, address_map: dict[str, str]):
    """Mask what varies between runs: producer addresses mapped, timestamps reduced to their
    presence, every list (all of them unordered in lookupd's answers) sorted; /nodes'
    `tombstones` is paired with `topics` before sorting."""
    if isinstance(value, list):
        return sorted((canonical(v, address_map) for v in value), key=repr)
    if not isinstance(value, _Object):
        return value
    pairs = dict(value)
    out = []
    for key, item in value:
        if key in ("remote_address", "id"):
            item = address_map.get(item, item)
        elif key == "last_update" or (key == "tombstoned_at" and item != GO_ZERO_TIME_UNIX_NANO):
            item = "<ns>" if isinstance(item, int) and item > 0 else item
        elif key == "tombstones" and "topics" in pairs:
            item = list(zip(pairs["topics"], item, strict=True))
        out.append((key, canonical(item, address_map)))
    return _Object(out)


def load_ordered(text: str):
    return json.loads(text, object_pairs_hook=_Object)


@pytest.mark.parametrize("index", range(len(HTTP_CASES)), ids=[c["name"] for c in HTTP_CASES])
def test_http_transcript(http_replay, index):
    case = HTTP_CASES[index]
    http_replay.run_until(index)
    response, body = http_replay.request(case)
    assert response.status == case["status"]
    assert response.getheader("Content-Type") == case["content_type"]
    assert response.getheader("X-NSQ-Content-Type") == case["x_nsq_content_type"]
    if case.get("body_omitted"):
        return  # Go's pprof page; only its status and headers are comparable
    text = body.decode("utf-8")
    if case["varies"] == ["Date header"]:
        assert text == case["body"]
    else:
        address_map = http_replay.address_map
        got = canonical(load_ordered(text), address_map)
        assert got == canonical(load_ordered(case["body"]), address_map)


def test_nsqd_session_replay(lookupd):
    """Everything nsqd 1.3.0 sent a lookupd (nsqd-to-lookupd.json), answered as the real one
    answered, and the state it leaves behind."""
    session = json.loads((FIXTURES / "nsqd-to-lookupd.json").read_text())
    identify_reply = our_identify_reply(lookupd)
    connections: dict[int, socket.socket] = {}
    try:
        for event in session["events"]:
            for exchange in event["exchanges"]:
                number, data = exchange["connection"], bytes.fromhex(exchange["hex"])
                if exchange["direction"] == "nsqd->lookupd":
                    if number not in connections:
                        connections[number] = socket.create_connection(
                            ("127.0.0.1", lookupd.tcp_port), timeout=5
                        )
                    connections[number].sendall(data)
                elif exchange["direction"] == "lookupd->nsqd":
                    expected = data.replace(FIXTURE_IDENTIFY_REPLY, identify_reply)
                    got = read_exactly(connections[number], len(expected))
                    assert got == expected, event["trigger"]
                else:
                    connections.pop(number).close()
        assert not connections  # nsqd closed its last connection at SIGTERM
    finally:
        for sock in connections.values():
            sock.close()
    _, body = http_request(
        lookupd.http_port, "GET", "GET /channels?topic=lk_a HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    # UNREGISTER drops only the ephemeral channel's key; c1's stays until deleted over HTTP
    assert json.loads(body) == {"channels": ["c1"]}

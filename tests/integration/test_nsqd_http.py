"""nsqd's HTTP API against a real gnsqd: golden replay of nsqd 1.3.0's captures, then the
clients users drive it with (requests, curl, gnsq's NsqdHTTPClient)."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import struct
import subprocess
import time

import gnsq
import pytest
import requests

from gnsq_server.nsqd.server import NSQDServer

from ..captures import CAPTURES
from ..conftest import nsqd_options
from ..ops import free_port
from ..servers import ThreadedServer

FIXTURES = CAPTURES / "http-transcripts.json"
CASES = [c for c in json.loads(FIXTURES.read_text()) if c["server"].startswith("nsqd")]

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
NSQ = "nsq; version=1.0"

#: Cases that need work not in this tree yet, or that we deliberately do not offer.
XFAIL = {
    # This replay's server has no certificate; test_tls.py checks the 403 gate and HTTPS.
    "tls_required_plain_http_ping": "replayed without TLS here; see test_tls.py",
    "tls_required_plain_http_unknown_path": "replayed without TLS here; see test_tls.py",
    "tls_required_https_ping": "replayed without TLS here; see test_tls.py",
    "tls_required_https_info": "replayed without TLS here; see test_tls.py",
    "debug_setblockrate_ok": "Go runtime debug endpoint: deliberately not offered (404)",
    "debug_setblockrate_bad": "Go runtime debug endpoint: deliberately not offered (404)",
    "debug_freememory": "Go runtime debug endpoint: deliberately not offered (404)",
    "debug_pprof_cmdline": "Go pprof: deliberately not offered (404)",
    "debug_pprof_index": "Go pprof: deliberately not offered (404)",
    "debug_pprof_no_slash": "Go pprof: deliberately not offered (404)",
}


# ---------------------------------------------------------------------------------------------
# A small V2 client over a raw socket, to set up the state the captures were taken in


class V2:
    def __init__(self, port: int, **identify) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"  V2")
        if identify:
            self.command(b"IDENTIFY", json.dumps(identify).encode())
            assert self.frame()[0] == 0

    def command(self, line: bytes, body: bytes | None = None) -> None:
        data = line + b"\n"
        if body is not None:
            data += struct.pack(">i", len(body)) + body
        self.sock.sendall(data)

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def frame(self) -> tuple[int, bytes]:
        size, frame_type = struct.unpack(">ii", self._exact(8))
        return frame_type, self._exact(size - 4)

    def ok(self, line: bytes, body: bytes | None = None) -> None:
        self.command(line, body)
        assert self.frame() == (0, b"OK")

    def messages(self, quiet: float = 0.3) -> list[tuple[bytes, bytes]]:
        """(id, body) of every message until `quiet` seconds pass without one."""
        self.sock.settimeout(quiet)
        received = []
        try:
            while True:
                frame_type, data = self.frame()
                if frame_type == 2:
                    received.append((data[10:26], data[26:]))
        except TimeoutError:
            pass
        self.sock.settimeout(5)
        return received

    def close(self) -> None:
        self.sock.close()


def consume_all(port: int, topic: str, channel: str = "fixture_check") -> list[bytes]:
    conn = V2(port)
    conn.ok(b"SUB " + topic.encode() + b" " + channel.encode())
    conn.command(b"RDY 100")
    received = conn.messages()
    for msg_id, _ in received:
        conn.command(b"FIN " + msg_id)
    time.sleep(0.05)
    conn.close()
    return [body for _, body in received]


# ---------------------------------------------------------------------------------------------
# Golden replay


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """One gnsqd for the whole replay, flags as the capture's nsqd; state carries over."""
    tcp_port, http_port = free_port(), free_port()
    data_path = tmp_path_factory.mktemp("golden")
    opts = nsqd_options(
        data_path,
        tcp_address=f"127.0.0.1:{tcp_port}",
        http_address=f"127.0.0.1:{http_port}",
        id=302,
    )
    server = ThreadedServer(lambda: NSQDServer(opts)).start()
    state: dict = {"server": server, "tcp": tcp_port, "http": http_port, "conns": []}
    yield state
    for conn in state["conns"]:
        conn.close()
    server.stop()


def _request_body(request: dict) -> bytes:
    if request.get("body_b64") is not None:
        return base64.b64decode(request["body_b64"])
    repeat = request.get("body_repeat")
    if repeat:
        tail = bytes.fromhex(repeat.get("then_hex", ""))
        if "byte_hex" in repeat:
            return bytes.fromhex(repeat["byte_hex"]) * repeat["count"] + tail
        line = b"a" * 1023 + b"\n"
        return line * repeat["lines"] + tail
    return (request.get("body") or "").encode("latin-1")


def exchange(port: int, request: dict) -> tuple[http.client.HTTPResponse, bytes]:
    """Send the captured request bytes as they were sent, and read the answer."""
    head = request["raw_head"].replace("127.0.0.1:4151", f"127.0.0.1:{port}")
    body = _request_body(request)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode("latin-1"))
    if not request.get("answered_before_body_was_sent"):
        sock.sendall(body)
    response = http.client.HTTPResponse(sock, method=request["method"])
    response.begin()
    data = response.read()
    sock.close()
    return response, data


def _setup_stats_state(golden) -> None:
    """The capture's state: 3 PUB + 1 DPUB from one producer, a consumer on c holding one."""
    port = golden["tcp"]
    ident = {"hostname": "nsq-fixture", "user_agent": "fixture/1.0"}
    producer = V2(port, client_id="fixture-producer", **ident)
    for body in (b"one", b"two", b"three"):
        producer.ok(b"PUB http_stats", body)
    producer.ok(b"DPUB http_stats 3600000", b"later!")  # message_bytes 3 + 3 + 5 + 6 = 17
    consumer = V2(port, client_id="fixture-consumer", **ident)
    consumer.ok(b"SUB http_stats c")
    consumer.command(b"RDY 1")
    assert len(consumer.messages()) == 1
    golden["conns"] += [producer, consumer]


def _close_clients(golden) -> None:
    for conn in golden["conns"]:
        conn.close()
    golden["conns"].clear()
    nsqd = golden["server"].server.nsqd
    deadline = time.monotonic() + 5
    while golden["server"].call(lambda: len(nsqd.clients)) and time.monotonic() < deadline:
        time.sleep(0.02)


BEFORE = {"stats_json": _setup_stats_state, "stats_json_after_clients_left": _close_clients}


def _mask_client(client: dict) -> None:
    client["remote_address"] = "127.0.0.1:PORT"
    client["connect_ts"] = 0


def _normal_stats_json(text: str) -> dict:
    doc = json.loads(text)
    doc["start_time"] = 0
    if "memory" in doc:
        doc["memory"] = dict.fromkeys(doc["memory"], 0)
    for topic in doc["topics"] or ():
        for channel in topic["channels"]:
            for client in channel["clients"] or ():
                _mask_client(client)
    for client in doc["producers"] or ():
        _mask_client(client)
    return doc


def _normal_stats_text(text: str) -> str:
    lines = text.split("\n")
    lines[0:3] = ["VERSION", "START_TIME", "UPTIME"]
    out = []
    for line in lines:
        line = re.sub(r"^(   \w+ +\t)\d+$", r"\1N", line)
        line = re.sub(r"^(\s+\[V2 [^:]+):\d+", r"\1:PORT", line)
        line = re.sub(r"connected: \S+$", "connected: D", line)
        out.append(line)
    return "\n".join(out)


def _expected_body(case: dict, golden) -> str:
    body = case["body"]
    if case["name"].startswith(("info", "config_get")):
        body = body.replace("4150", str(golden["tcp"])).replace("4151", str(golden["http"]))
    return body


def _compare_body(case: dict, actual: bytes, golden) -> None:
    name = case["name"]
    expected = _expected_body(case, golden)
    text = actual.decode("utf-8", "replace")
    if name == "config_get_data_path":
        assert text  # a temp path
    elif name.startswith("info") and case["status"] == 200:
        got, want = json.loads(text), json.loads(expected)
        for key in ("start_time", "hostname"):
            got[key] = want[key] = None
        assert list(got.items()) == list(want.items())
    elif name.startswith("stats") and case["content_type"] == JSON and case["status"] == 200:
        got, want = _normal_stats_json(text), _normal_stats_json(expected)
        assert json.dumps(got) == json.dumps(want)
    elif name.startswith("stats") and case["content_type"] == TEXT:
        assert _normal_stats_text(text) == _normal_stats_text(expected)
    else:
        assert text == expected


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c["name"], marks=pytest.mark.xfail(reason=XFAIL[c["name"]], strict=True))
        if c["name"] in XFAIL
        else pytest.param(c, id=c["name"])
        for c in CASES
    ],
)
def test_golden_http(golden, case):
    if case["server"] != "nsqd":
        pytest.fail(f"needs a differently configured nsqd: {case['server']}")
    if case["request"].get("scheme") == "https":
        pytest.fail("needs HTTPS")
    if case["name"] in BEFORE:
        BEFORE[case["name"]](golden)
    response, data = exchange(golden["http"], case["request"])
    assert response.status == case["status"]
    assert response.reason == case["reason"]
    assert response.getheader("Content-Type") == case["content_type"]
    assert response.getheader("X-NSQ-Content-Type") == case["x_nsq_content_type"]
    if case["status"] == 405:
        assert response.getheader("Allow") == dict(case["headers"])["Allow"]
    if case["status"] in (301, 307):
        assert response.getheader("Location") == dict(case["headers"])["Location"]
    _compare_body(case, data, golden)
    if "consumed_bodies_b64" in case:
        topic = re.search(r"topic=([^&]+)", case["request"]["path"]).group(1)
        want = [base64.b64decode(b) for b in case["consumed_bodies_b64"]]
        assert consume_all(golden["tcp"], topic) == want


# ---------------------------------------------------------------------------------------------
# As users drive it: requests, curl, gnsq


@pytest.fixture()
def base(nsqd) -> str:
    return f"http://127.0.0.1:{nsqd.server.http_port}"


def test_requests_publish_defer_and_consume(nsqd, base):
    assert requests.post(f"{base}/pub?topic=rq", data=b"now").text == "OK"
    assert requests.post(f"{base}/pub?topic=rq&defer=60000", data=b"later").text == "OK"
    channel = requests.get(f"{base}/stats?format=json&topic=rq&include_mem=false").json()
    assert channel["topics"][0]["message_count"] == 2
    assert consume_all(nsqd.server.tcp_port, "rq") == [b"now"]  # 'later' is deferred
    doc = requests.get(f"{base}/stats?format=json&topic=rq").json()
    [chan] = doc["topics"][0]["channels"]
    assert chan["deferred_count"] == 1
    assert list(doc) == ["version", "health", "start_time", "topics", "memory", "producers"]


def test_requests_mpub_text_and_binary(nsqd, base):
    assert requests.post(f"{base}/mpub?topic=mp", data=b"a\r\nb\n\nc").text == "OK"
    binary = struct.pack(">i", 2) + struct.pack(">i", 2) + b"\x00\xff" + struct.pack(">i", 1) + b"z"
    assert requests.post(f"{base}/mpub?topic=mp&binary=true", data=binary).text == "OK"
    assert consume_all(nsqd.server.tcp_port, "mp") == [b"a\r", b"b", b"c", b"\x00\xff", b"z"]


def test_requests_chunked_pub(nsqd, base):
    resp = requests.post(f"{base}/pub?topic=chunked", data=iter([b"he", b"llo"]))
    assert resp.text == "OK"
    assert consume_all(nsqd.server.tcp_port, "chunked") == [b"hello"]


def test_chunked_pub_too_big_is_read_with_a_bound(start_nsqd):
    server = start_nsqd(max_msg_size=10)
    url = f"http://127.0.0.1:{server.server.http_port}/pub?topic=t"
    resp = requests.post(url, data=iter([b"x" * 8, b"x" * 8]))
    assert (resp.status_code, resp.json()) == (413, {"message": "MSG_TOO_BIG"})


def test_oversized_body_is_refused_before_it_is_read(start_nsqd):
    server = start_nsqd(max_msg_size=1024, max_body_size=4096)
    base = f"http://127.0.0.1:{server.server.http_port}"
    # the client sends the whole body anyway; it must still read the 413, not a reset
    resp = requests.post(f"{base}/pub?topic=t", data=b"x" * 1_000_000)
    assert (resp.status_code, resp.json()) == (413, {"message": "MSG_TOO_BIG"})
    resp = requests.post(f"{base}/mpub?topic=t", data=b"x\n" * 500_000)
    assert (resp.status_code, resp.json()) == (413, {"message": "BODY_TOO_BIG"})
    resp = requests.post(f"{base}/mpub?topic=t", data=b"y" * 1025 + b"\n")
    assert (resp.status_code, resp.json()) == (413, {"message": "MSG_TOO_BIG"})
    resp = requests.put(f"{base}/config/log_level", data=b"d" * 1025)
    assert (resp.status_code, resp.json()) == (413, {"message": "INVALID_VALUE"})
    # only Content-Length sent: the answer comes without the body
    sock = socket.create_connection(("127.0.0.1", server.server.http_port), timeout=5)
    sock.sendall(b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    assert (response.status, response.read()) == (413, b'{"message":"MSG_TOO_BIG"}')
    sock.close()
    assert requests.get(f"{base}/ping").text == "OK"


def test_topic_exiting_is_503(nsqd, base):
    requests.post(f"{base}/topic/create?topic=bye")
    topic = nsqd.call(lambda: nsqd.server.nsqd.find_topic("bye"))
    nsqd.call(lambda: setattr(topic, "exiting", True))
    resp = requests.post(f"{base}/pub?topic=bye", data=b"x")
    assert (resp.status_code, resp.json()) == (503, {"message": "EXITING"})
    resp = requests.post(f"{base}/mpub?topic=bye", data=b"x\n")
    assert (resp.status_code, resp.json()) == (503, {"message": "EXITING"})


def test_unhealthy_ping_and_stats(nsqd, base):
    core = nsqd.server.nsqd
    nsqd.call(lambda: core.set_unhealthy("disk full"))
    try:
        resp = requests.get(f"{base}/ping")
        assert (resp.status_code, resp.text) == (500, "NOK - disk full")
        assert resp.headers["Content-Type"] == TEXT
        assert requests.get(f"{base}/stats?format=json").json()["health"] == "NOK - disk full"
        assert "\nHealth: NOK - disk full\n" in requests.get(f"{base}/stats").text
    finally:
        nsqd.call(core.set_healthy)


def test_admin_endpoints_change_state(nsqd, base):
    core = nsqd.server.nsqd
    assert requests.post(f"{base}/topic/create?topic=adm").status_code == 200
    assert requests.post(f"{base}/channel/create?topic=adm&channel=ch").status_code == 200
    requests.post(f"{base}/pub?topic=adm", data=b"1")
    channel = nsqd.call(lambda: core.find_topic("adm").find_channel("ch"))
    assert nsqd.call(channel.depth) == 1
    requests.post(f"{base}/channel/pause?topic=adm&channel=ch")
    assert channel.paused
    requests.post(f"{base}/channel/unpause?topic=adm&channel=ch")
    assert not channel.paused
    requests.post(f"{base}/channel/empty?topic=adm&channel=ch")
    assert nsqd.call(channel.depth) == 0
    requests.post(f"{base}/topic/pause?topic=adm")
    requests.post(f"{base}/pub?topic=adm", data=b"2")
    topic = nsqd.call(lambda: core.find_topic("adm"))
    assert topic.paused and nsqd.call(topic.depth) == 1
    requests.post(f"{base}/topic/empty?topic=adm")
    assert nsqd.call(topic.depth) == 0
    requests.post(f"{base}/topic/unpause?topic=adm")
    assert not topic.paused
    requests.post(f"{base}/channel/delete?topic=adm&channel=ch")
    assert nsqd.call(lambda: core.find_topic("adm").find_channel("ch")) is None
    requests.post(f"{base}/topic/delete?topic=adm")
    assert nsqd.call(lambda: core.find_topic("adm")) is None


def test_config_put_reaches_the_core(nsqd, base):
    core = nsqd.server.nsqd
    resp = requests.put(f"{base}/config/nsqlookupd_tcp_addresses", data=b'["127.0.0.1:1"]')
    assert resp.text == '["127.0.0.1:1"]'
    assert core.opts.nsqlookupd_tcp_addresses == ["127.0.0.1:1"]
    requests.put(f"{base}/config/nsqlookupd_tcp_addresses", data=b"[]")
    resp = requests.put(f"{base}/config/nsqlookupd_tcp_addresses", data=b'["a", 1]')
    assert (resp.status_code, resp.json()) == (400, {"message": "INVALID_VALUE"})
    assert requests.put(f"{base}/config/log_level", data=b"Error").text == "4"
    assert requests.get(f"{base}/config/log_level").text == "4"
    resp = requests.put(f"{base}/config/log_level", data=b"warning")
    assert resp.status_code == 400  # nsqd knows only debug/info/warn/error/fatal
    requests.put(f"{base}/config/log_level", data=b"info")


def test_stats_text_shows_clients_and_producers(nsqd, base):
    producer = V2(nsqd.server.tcp_port, client_id="p", hostname="hp", user_agent="ua/1")
    producer.ok(b"PUB txt", b"x")
    consumer = V2(nsqd.server.tcp_port, hostname="hc", user_agent="ua/2")
    consumer.ok(b"SUB txt ch")
    try:
        text = requests.get(f"{base}/stats?topic=txt").text
        assert re.search(r"\n   \[txt            \] depth: 0     be-depth: 0     msgs: 1 ", text)
        assert re.search(r"\n        \[V2 hc:\d+ ua/2\s*\] state: 3 inflt: 0    rdy: 0 ", text)
        assert re.search(
            r"\nProducers:\n   \[V2 hp:\d+ ua/1\s*\] msgs: 1        topics: txt=1 ", text
        )
    finally:
        producer.close()
        consumer.close()


def test_wrong_methods_and_unknown_paths(base):
    for method, path in [
        ("GET", "/pub"),
        ("GET", "/mpub"),
        ("POST", "/stats"),
        ("GET", "/topic/create"),
        ("DELETE", "/channel/delete"),
        ("POST", "/config/log_level"),
        ("PUT", "/info"),
    ]:
        resp = requests.request(method, base + path)
        assert (resp.status_code, resp.json()) == (405, {"message": "METHOD_NOT_ALLOWED"}), path
    for path in ["/nope", "/debug/pprof/", "/debug/pprof/heap", "/put", "/create_topic"]:
        assert requests.get(base + path).status_code == 404
    resp = requests.options(f"{base}/config/log_level")
    assert (resp.status_code, resp.headers["Allow"]) == (200, "GET, OPTIONS, PUT")


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_curl_as_the_docs_show(nsqd, base, tmp_path):
    assert curl("-d", "hello world 1", f"{base}/pub?topic=curl") == (200, "OK")
    assert curl("-d", "m1\nm2", f"{base}/mpub?topic=curl") == (200, "OK")
    assert curl("-X", "POST", f"{base}/channel/create?topic=curl&channel=c") == (200, "")
    code, body = curl(f"{base}/stats?format=json&topic=curl")
    assert code == 200 and json.loads(body)["topics"][0]["message_count"] == 3
    assert curl("-X", "PUT", "-d", "debug", f"{base}/config/log_level") == (200, "1")
    assert curl("-X", "PUT", "-d", "info", f"{base}/config/log_level") == (200, "2")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20))
    assert curl("--data-binary", f"@{big}", f"{base}/pub?topic=curl") == (
        413,
        '{"message":"MSG_TOO_BIG"}',
    )
    assert curl(f"{base}/ping") == (200, "OK")
    assert consume_all(nsqd.server.tcp_port, "curl", "c") == [b"hello world 1", b"m1", b"m2"]


def test_gnsq_http_client(nsqd):
    client = gnsq.NsqdHTTPClient("127.0.0.1", nsqd.server.http_port)
    assert client.ping() in (b"OK", "OK")
    assert client.info()["version"] == "1.3.0"
    client.create_topic("gq")
    client.create_channel("gq", "c")
    client.publish("gq", b"one")
    client.publish("gq", b"deferred", defer=60000)
    client.multipublish("gq", [b"two", b"three"])
    client.multipublish("gq", [b"four\n", b"five"], binary=True)
    client.pause_channel("gq", "c")
    stats = client.stats(topic="gq")
    [topic] = stats["topics"]
    assert topic["message_count"] == 6
    assert topic["channels"][0]["paused"] is True
    assert b"\n   [gq             ] depth: 0 " in client.stats(text=True)
    client.unpause_channel("gq", "c")
    assert consume_all(nsqd.server.tcp_port, "gq", "c") == [
        b"one",
        b"two",
        b"three",
        b"four\n",
        b"five",
    ]
    client.empty_channel("gq", "c")
    client.empty_topic("gq")
    client.pause_topic("gq")
    client.unpause_topic("gq")
    client.delete_channel("gq", "c")
    client.delete_topic("gq")
    with pytest.raises(gnsq.errors.NSQHttpError):
        client.delete_topic("gq")


def test_tls_required_refuses_plain_http():
    """create_app's --tls-required=true gate, on a stand-in core (the HTTPS listener is pending)."""
    from types import SimpleNamespace

    from gnsq_server.nsqd.http import create_app

    core = SimpleNamespace(opts=SimpleNamespace(tls_required=2), https_port=4152)
    for path in ("/ping", "/nope", "/stats"):
        resp = create_app(core).test_client().get(path)
        assert resp.status_code == 403
        assert resp.data == b'{"message": "TLS_REQUIRED", "https_port": 4152}'
        assert resp.headers["X-NSQ-Content-Type"] == NSQ
    core.health = lambda: "OK"
    assert create_app(core, https=True).test_client().get("/ping").data == b"OK"


def test_gnsqd_console_script(tmp_path):
    """The installed daemon, as an operator starts it, answers curl."""
    from ..servers import ServerProcess

    proc = ServerProcess(
        "gnsqd",
        "--tcp-address=127.0.0.1:0",
        "--http-address=127.0.0.1:0",
        "--broadcast-address=127.0.0.1",
        f"--data-path={tmp_path}",
    ).start()
    try:
        base = f"http://127.0.0.1:{proc.http_port}"
        assert curl(f"{base}/ping") == (200, "OK")
        code, body = curl(f"{base}/info")
        assert code == 200 and json.loads(body)["tcp_port"] == proc.tcp_port
        assert curl("-d", "x", f"{base}/pub?topic=cli") == (200, "OK")
        assert "[cli            ] depth: 1 " in curl(f"{base}/stats")[1]
    finally:
        assert proc.stop() == 0

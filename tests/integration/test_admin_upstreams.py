"""gnsqadmin (a real process) against stand-in upstreams it cannot tell from nsqd: a slow one, a
hung one, one behind TLS, and a notification endpoint that records what it is sent."""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ..ops import wait_for
from ..servers import ServerProcess
from ..tlscerts import make_certs
from .test_admin_api import AdminCluster

INFO = {"version": "1.3.0", "broadcast_address": "127.0.0.1", "hostname": "slowbox",
        "tcp_port": 4150}


class FakeNSQD:
    """An HTTP server answering /info and /stats like nsqd, after ``delay`` seconds; it records
    every POST body (so it also serves as a notification endpoint)."""

    def __init__(self, delay: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.delay = delay
        self.posts: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_GET(self) -> None:
                time.sleep(owner.delay)
                path = self.path.split("?")[0]
                body = {"/info": {**INFO, "http_port": owner.port},
                        "/stats": {"version": "1.3.0", "health": "OK", "topics": []}}.get(path)
                self._reply(200 if body else 404, body or {"message": "NOT_FOUND"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                owner.posts.append(json.loads(self.rfile.read(length) or b"null"))
                self._reply(200, {})

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting: what a hung nsqd looks like

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams():
    started: list[FakeNSQD] = []

    def make(*args, **kwargs) -> FakeNSQD:
        fake = FakeNSQD(*args, **kwargs)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


def url(process: ServerProcess) -> str:
    return f"http://127.0.0.1:{process.http_port}"


@pytest.fixture
def admin():
    processes: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        process = ServerProcess("gnsqadmin", "--http-address=127.0.0.1:0", *args)
        processes.append(process.start(expect=("HTTP",)))
        return process

    yield start
    for process in processes:
        process.stop()


def test_connect_timeout_bounds_the_connect_and_request_timeout_the_reply(upstreams, admin):
    """An nsqd answering in 0.8 s is fine with a 0.3 s connect timeout (it used to cut every
    read); one that hangs is given up after the 2 s request timeout, with one warning line."""
    slow, hung = upstreams(delay=0.8), upstreams(delay=4.0)
    base = url(admin(f"--nsqd-http-address=127.0.0.1:{slow.port}",
                 f"--nsqd-http-address=127.0.0.1:{hung.port}",
                 "--http-client-connect-timeout=300ms", "--http-client-request-timeout=2s"))
    started = time.monotonic()
    reply = requests.get(f"{base}/api/nodes", timeout=10)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200
    assert [n["hostname"] for n in reply.json()["nodes"]] == ["slowbox"]
    assert "timed out" in reply.json()["message"]
    assert 1.9 <= elapsed < 6.0  # cut by the 2 s request timeout, not the 0.3 s connect one


def test_failed_upstreams_are_one_line_each_without_traceback(upstreams, admin):
    hung = upstreams(delay=2.0)
    process = admin(f"--nsqd-http-address=127.0.0.1:{hung.port}",
                    "--http-client-request-timeout=300ms", "--refresh-interval=200ms")
    assert requests.get(f"{url(process)}/api/topics", timeout=10).status_code == 502
    time.sleep(0.5)  # the rate sampler fails a few times meanwhile too
    text = process.log_text()
    assert "upstream request failed" in text
    assert "Traceback" not in text


def test_notifications_reach_the_endpoint(tmp_path, upstreams) -> None:
    endpoint = upstreams()
    cluster = AdminCluster(tmp_path, extra_args=(
        f"--notification-http-endpoint=http://127.0.0.1:{endpoint.port}/audit",
    ))
    cluster.start()
    try:
        cluster.publish(0, "audited", 1)
        wait_for(lambda: "audited" in cluster.api("GET", "/api/topics").json()["topics"],
                 what="audited topic")
        reply = requests.post(f"{cluster.url}/api/topics/audited", json={"action": "pause"},
                              headers={"User-Agent": "ops-test"}, timeout=5)
        assert reply.status_code == 200
        (sent,) = wait_for(lambda: endpoint.posts, what="a notification")
        assert sent["action"] == "pause_topic" and sent["topic"] == "audited"
        assert sent["user_agent"] == "ops-test"
        assert sent["url"] == f"{cluster.url}/api/topics/audited"
        assert sent["remote_ip"].startswith("127.0.0.1:")
        assert set(sent) == {"action", "topic", "timestamp", "remote_ip", "user_agent", "url",
                             "via"}
        assert cluster.topic_stats(0, "audited")["paused"] is True
    finally:
        cluster.stop()


def test_base_path_and_tls_client(upstreams, admin, tmp_path) -> None:
    certs = make_certs(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs.server_cert, certs.server_key)
    secure = upstreams(tls=server_tls)
    address = f"--nsqd-http-address=https://127.0.0.1:{secure.port}"
    base = url(admin(address, "--base-path=/nsq/admin/",
                     f"--http-client-tls-root-ca-file={certs.ca}"))
    nodes = requests.get(f"{base}/nsq/admin/api/nodes", timeout=10)
    assert nodes.status_code == 200 and nodes.json()["message"] == ""
    assert [n["hostname"] for n in nodes.json()["nodes"]] == ["slowbox"]
    page = requests.get(f"{base}/nsq/admin/topics", timeout=5).text
    assert '"base": "/nsq/admin"' in page and "/nsq/admin/static/admin.js" in page
    assert requests.get(f"{base}/nsq/admin/static/admin.js", timeout=5).status_code == 200
    assert requests.get(f"{base}/api/nodes", timeout=5).status_code == 404
    # Without the CA the same upstream is refused (certificate verify failed) ...
    untrusting = url(admin(address))
    failed = requests.get(f"{untrusting}/api/nodes", timeout=10)
    assert failed.status_code == 502 and "CERTIFICATE_VERIFY_FAILED" in failed.text
    # ... unless verification is switched off, as nsqadmin's flag does.
    skipping = url(admin(address, "--http-client-tls-insecure-skip-verify"))
    assert requests.get(f"{skipping}/api/nodes", timeout=10).status_code == 200


def test_graphite_flags_start_and_half_a_client_cert_does_not() -> None:
    """An nsqadmin config with graphite settings starts (they are documented as unsupported)."""
    process = ServerProcess(
        "gnsqadmin", "--http-address=127.0.0.1:0", "--lookupd-http-address=127.0.0.1:1",
        "--graphite-url=http://graphite:8080", "--proxy-graphite", "--statsd-prefix=nsq.%s",
        "--statsd-interval=10s", "--statsd-counter-format=", "--dev-static-dir=/tmp", "--verbose",
    ).start(expect=("HTTP",))
    try:
        assert "graphite is not supported" in process.log_text()
    finally:
        assert process.stop() == 0
    half = ServerProcess("gnsqadmin", "--http-address=127.0.0.1:0",
                         "--lookupd-http-address=127.0.0.1:1", "--http-client-tls-cert=/x.pem")
    half.start(expect=())
    assert half.wait() == 2
    assert "--http-client-tls-key must be given together" in half.log_text() or \
        "must be given together" in half.log_text()

"""AUTH against a small auth server started by the test: allow, deny, no authorizations, expired
TTL (re-query), server down, several servers, full URLs, TLS identity, and /stats."""

from __future__ import annotations

import json
import socket
import ssl
import time

import gnsq
import pytest
import requests

from ..authserver import GOOD, AuthServer
from ..conftest import RawConnection
from ..exchange import gnsq_exchange, pynsq_exchange
from ..tlscerts import make_certs

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)


@pytest.fixture
def auth_server():
    server = AuthServer().start()
    yield server
    server.stop()


@pytest.fixture
def raw():
    opened: list[RawConnection] = []

    def connect(port: int) -> RawConnection:
        opened.append(RawConnection(port))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()


def unused_address() -> str:
    """An address where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"127.0.0.1:{port}"


def auth(conn: RawConnection, secret: bytes) -> tuple[int, bytes]:
    conn.command(b"AUTH", secret)
    return conn.read_frame()


def publish(conn: RawConnection, topic: bytes = b"auth_ok") -> tuple[int, bytes]:
    conn.command(b"PUB " + topic, b"x")
    return conn.read_frame()


def closed(conn: RawConnection) -> bool:
    conn.sock.settimeout(3)
    return conn.sock.recv(1) == b""


def test_clients_exchange_500_messages_when_allowed(start_nsqd, auth_server):
    server = start_nsqd(auth_http_addresses=[auth_server.address])
    port = server.server.tcp_port
    gnsq_exchange(port, "auth_ok_gnsq", auth_secret=b"good")
    pynsq_exchange(port, "auth_ok_pynsq", auth_secret="good")
    queries = [r["params"] for r in auth_server.requests]
    assert queries and all(q["secret"] == "good" and q["tls"] == "false" for q in queries)


def test_identify_reports_auth_required_and_stats_show_the_identity(start_nsqd, auth_server):
    server = start_nsqd(auth_http_addresses=[auth_server.address])
    conn = gnsq.NsqdTCPClient("127.0.0.1", server.server.tcp_port, timeout=5, auth_secret=b"good")
    conn.connect()
    try:
        assert conn.identify()["auth_required"] is True  # gnsq sends AUTH after it
        conn.publish("auth_ok", b"x")
        assert conn.read_response() == (0, b"OK")
        url = f"http://127.0.0.1:{server.server.http_port}/stats?format=json"
        (producer,) = requests.get(url, timeout=5).json()["producers"]
    finally:
        conn.close_stream()
    assert producer["authed"] is True
    assert producer["auth_identity"] == "fixture-user"
    assert producer["auth_identity_url"] == "http://auth.invalid/fixture-user"


@pytest.mark.parametrize(
    "secret, error",
    [
        (b"denied", b"E_AUTH_FAILED AUTH failed"),  # the server answered 403
        (b"bad-permission", b"E_AUTH_FAILED AUTH failed"),
        (b"none", b"E_UNAUTHORIZED AUTH no authorizations found"),
    ],
)
def test_refusals_are_fatal(start_nsqd, auth_server, raw, secret, error):
    conn = raw(start_nsqd(auth_http_addresses=[auth_server.address]).server.tcp_port)
    assert auth(conn, secret) == (1, error)
    assert closed(conn)


def test_gnsq_sees_the_denial(start_nsqd, auth_server):
    port = start_nsqd(auth_http_addresses=[auth_server.address]).server.tcp_port
    conn = gnsq.NsqdTCPClient("127.0.0.1", port, timeout=5, auth_secret=b"denied")
    conn.connect()
    try:
        with pytest.raises(gnsq.errors.NSQAuthFailed):
            conn.identify()
    finally:
        conn.close_stream()


def test_expired_ttl_queries_again(start_nsqd, auth_server, raw):
    auth_server.answers["short"] = (200, {**GOOD, "ttl": 1})
    conn = raw(start_nsqd(auth_http_addresses=[auth_server.address]).server.tcp_port)
    assert auth(conn, b"short")[0] == 0
    assert publish(conn) == (0, b"OK")
    assert len(auth_server.requests) == 1  # cached within the TTL
    # the server now grants subscribe only: the next check after the TTL sees it
    auth_server.answers["short"] = (200, {**GOOD, "ttl": 1, "authorizations": [
        {"topic": ".*", "channels": [".*"], "permissions": ["subscribe"]}
    ]})
    time.sleep(1.05)
    assert publish(conn) == (1, b'E_UNAUTHORIZED AUTH failed for PUB on "auth_ok" ""')
    assert len(auth_server.requests) == 2
    assert closed(conn)


def test_expired_ttl_with_the_server_down(start_nsqd, raw):
    auth_server = AuthServer({"short": (200, {**GOOD, "ttl": 1})}).start()
    conn = raw(start_nsqd(auth_http_addresses=[auth_server.address]).server.tcp_port)
    assert auth(conn, b"short")[0] == 0
    auth_server.stop()
    time.sleep(1.05)
    assert publish(conn) == (1, b"E_AUTH_FAILED AUTH failed")
    assert closed(conn)


def test_server_down(start_nsqd, raw):
    conn = raw(start_nsqd(auth_http_addresses=[unused_address()]).server.tcp_port)
    assert auth(conn, b"good") == (1, b"E_AUTH_FAILED AUTH failed")


def test_a_down_server_is_skipped_for_the_next(start_nsqd, auth_server, raw):
    addresses = [unused_address(), f"http://{auth_server.address}/auth"]  # full URLs work too
    port = start_nsqd(auth_http_addresses=addresses).server.tcp_port
    for _ in range(4):  # the first server tried is random: both orders
        conn = raw(port)
        status, body = auth(conn, b"good")
        assert status == 0 and json.loads(body)["identity"] == "fixture-user"


def test_commands_before_auth_and_outside_the_grant(start_nsqd, auth_server, raw):
    port = start_nsqd(auth_http_addresses=[auth_server.address]).server.tcp_port
    conn = raw(port)
    conn.command(b"SUB auth_ok c")
    assert conn.read_frame() == (1, b"E_AUTH_FIRST AUTH required before SUB")
    conn = raw(port)
    assert auth(conn, b"sub-only")[0] == 0
    conn.command(b"SUB auth_ok allowed")
    assert conn.read_frame() == (0, b"OK")
    conn = raw(port)
    assert auth(conn, b"good")[0] == 0
    conn.command(b"MPUB other", b"\x00\x00\x00\x01\x00\x00\x00\x01x")
    assert conn.read_frame() == (1, b'E_UNAUTHORIZED AUTH failed for MPUB on "other" ""')


def test_auth_disabled(start_nsqd, raw):
    conn = raw(start_nsqd().server.tcp_port)
    assert auth(conn, b"good") == (1, b"E_AUTH_DISABLED AUTH disabled")


def test_tls_clients_are_reported_with_their_certificate_name(
    start_nsqd, auth_server, tmp_path
):
    certs = make_certs(tmp_path)
    server = start_nsqd(
        auth_http_addresses=[auth_server.address],
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_root_ca_file=str(certs.ca),
        tls_client_auth_policy="require-verify",
    )
    options = {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": str(certs.ca),
        "certfile": str(certs.client_cert),
        "keyfile": str(certs.client_key),
    }
    gnsq_exchange(server.server.tcp_port, "auth_ok_tls", n=50, tls_v1=True,
                  tls_options=options, auth_secret=b"good")
    params = auth_server.requests[0]["params"]
    assert params["tls"] == "true" and params["common_name"] == "test-client"
    assert auth_server.requests[0]["accept"] == "application/vnd.nsq; version=1.0"

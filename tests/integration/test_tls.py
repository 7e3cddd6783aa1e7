"""TLS: the in-band upgrade after IDENTIFY (alone and under snappy/deflate) with gnsq and pynsq,
client-certificate policies, --tls-required on TCP and HTTP, --tls-min-version, HTTPS, /stats.

Certificates (a CA, the server, a CA-signed client and a self-signed "rogue" client) are made
for the test session in a temporary directory.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct

import gnsq
import pytest
import requests

from ..captures import CAPTURES
from ..conftest import RawConnection
from ..exchange import gnsq_exchange, pynsq_exchange
from ..tlscerts import make_certs

# gnsq and pynsq pin ssl.PROTOCOL_TLSv1_2 themselves (deprecated since Python 3.10)
pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

CASES = {c["name"]: c for c in json.loads((CAPTURES / "tcp-transcripts.json").read_text())}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def start_tls_nsqd(start_nsqd, certs):
    def start(**overrides):
        settings = {
            "tls_cert": str(certs.server_cert),
            "tls_key": str(certs.server_key),
            "https_address": "127.0.0.1:0",
            **overrides,
        }
        return start_nsqd(**settings)

    return start


@pytest.fixture
def server(start_tls_nsqd):
    return start_tls_nsqd()


def verify(certs, **extra) -> dict:
    """tls_options for gnsq / pynsq: check the server against the test CA."""
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(certs.ca), **extra}


def client_cert(certs, which: str = "client") -> dict:
    cert, key = getattr(certs, f"{which}_cert"), getattr(certs, f"{which}_key")
    return verify(certs, certfile=str(cert), keyfile=str(key))


def tls_client_context(certs, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert:
        context.load_cert_chain(getattr(certs, f"{cert}_cert"), getattr(certs, f"{cert}_key"))
    return context


def read_frame(sock) -> tuple[int, bytes]:
    header = b""
    while len(header) < 8:
        chunk = sock.recv(8 - len(header))
        if not chunk:
            raise EOFError("closed")
        header += chunk
    size, frame_type = struct.unpack(">ii", header)
    data = b""
    while len(data) < size - 4:
        chunk = sock.recv(size - 4 - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return frame_type, data


def upgrade(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """IDENTIFY with tls_v1 on a raw socket, then the handshake and nsqd's OK inside TLS."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    body = json.dumps({"feature_negotiation": True, "tls_v1": True}).encode()
    sock.sendall(b"  V2IDENTIFY\n" + struct.pack(">i", len(body)) + body)
    frame_type, reply = read_frame(sock)
    assert frame_type == 0 and json.loads(reply)["tls_v1"] is True
    try:
        tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise
    try:
        assert read_frame(tls) == (0, b"OK")
    except BaseException:
        tls.close()
        raise
    return tls


# -- clients carrying traffic -----------------------------------------------------------------


@pytest.mark.parametrize("compression", [{}, {"snappy": True}, {"deflate": True}],
                         ids=["tls", "tls+snappy", "tls+deflate"])
def test_gnsq_exchanges_500_messages(server, certs, compression):
    gnsq_exchange(server.server.tcp_port, "gnsq_tls", tls_v1=True,
                  tls_options=verify(certs), **compression)


@pytest.mark.parametrize("compression", [{}, {"deflate": True}], ids=["tls", "tls+deflate"])
def test_pynsq_exchanges_500_messages(server, certs, compression):
    # pynsq 0.9.1's snappy-over-TLS breaks inside the client on tornado >= 6.1 (PROTOCOL.md 8):
    # that combination is covered by gnsq above.
    pynsq_exchange(server.server.tcp_port, "pynsq_tls", tls_v1=True,
                   tls_options=verify(certs), **compression)


def test_the_captured_tls_upgrade_plaintext(start_tls_nsqd, certs):
    """Replays nsqd 1.3.0's `tls_v1_upgrade_plaintext` with a real handshake: the JSON on the
    wire, then OK and the PUB's OK inside TLS."""
    case = CASES["tls_v1_upgrade_plaintext"]
    port = start_tls_nsqd(tls_required=2).server.tcp_port
    first, handshake, pub = case["send"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(bytes.fromhex(first["send_hex"]))
    expected = bytes.fromhex(first["recv_hex"])
    frame_type, reply = read_frame(sock)
    assert struct.pack(">ii", len(reply) + 4, frame_type) + reply == expected
    tls = tls_client_context(certs).wrap_socket(sock, server_hostname="127.0.0.1")
    got = read_frame(tls)
    assert struct.pack(">ii", len(got[1]) + 4, got[0]) + got[1] == bytes.fromhex(
        handshake["recv_hex"]
    )
    tls.sendall(bytes.fromhex(pub["send_hex"]))
    got = read_frame(tls)
    assert struct.pack(">ii", len(got[1]) + 4, got[0]) + got[1] == bytes.fromhex(pub["recv_hex"])
    tls.close()


def test_stats_show_the_tls_connection(server, certs):
    tls = upgrade(server.server.tcp_port, tls_client_context(certs))
    cipher = tls.cipher()[0]
    try:
        tls.sendall(b"PUB tls_stats\n" + struct.pack(">i", 1) + b"x")
        assert read_frame(tls) == (0, b"OK")
        port = server.server.http_port
        (producer,) = requests.get(
            f"http://127.0.0.1:{port}/stats?format=json", timeout=5
        ).json()["producers"]
    finally:
        tls.close()
    assert producer["tls"] is True
    assert producer["tls_version"] == "TLS1.3"
    assert producer["tls_cipher_suite"] == cipher  # TLS 1.3 names are IANA's already
    assert producer["tls_negotiated_protocol"] == ""
    assert producer["tls_negotiated_protocol_is_mutual"] is False


def test_stats_name_tls12_suites_as_go_does(server, certs):
    context = tls_client_context(certs)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    tls = upgrade(server.server.tcp_port, context)
    try:
        tls.sendall(b"PUB tls_stats\n" + struct.pack(">i", 1) + b"x")
        assert read_frame(tls) == (0, b"OK")
        stats = requests.get(
            f"http://127.0.0.1:{server.server.http_port}/stats?format=json", timeout=5
        ).json()
    finally:
        tls.close()
    (producer,) = stats["producers"]
    assert producer["tls_version"] == "TLS1.2"
    assert producer["tls_cipher_suite"].startswith("TLS_ECDHE_ECDSA_WITH_")


# -- client certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["require", "require-verify"])
def test_client_certificate_policies(start_tls_nsqd, certs, policy):
    server = start_tls_nsqd(tls_client_auth_policy=policy, tls_root_ca_file=str(certs.ca))
    port = server.server.tcp_port
    gnsq_exchange(port, "client_cert", tls_v1=True, tls_options=client_cert(certs))
    pynsq_exchange(port, "client_cert_pynsq", tls_v1=True, tls_options=client_cert(certs))
    # without a certificate, or with one the CA did not sign, the handshake fails
    for context in (tls_client_context(certs), tls_client_context(certs, "rogue")):
        with pytest.raises((ssl.SSLError, OSError, EOFError)):
            tls = upgrade(port, context)
            try:
                tls.sendall(b"NOP\n")
                read_frame(tls)  # TLS 1.3 reports the server's refusal on first read
            finally:
                tls.close()


def test_policy_implies_tls_required(start_tls_nsqd, certs):
    server = start_tls_nsqd(tls_client_auth_policy="require-verify",
                            tls_root_ca_file=str(certs.ca))
    conn = RawConnection(server.server.tcp_port)
    try:
        conn.command(b"PUB t", b"x")
        assert conn.read_frame() == (1, b"E_INVALID cannot PUB in current state (TLS required)")
    finally:
        conn.close()


def test_min_version_refuses_older_clients(start_tls_nsqd, certs):
    server = start_tls_nsqd(tls_min_version=0x0304)
    context = tls_client_context(certs)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, OSError)):
        upgrade(server.server.tcp_port, context).close()
    # a TLS 1.3 client is fine
    upgrade(server.server.tcp_port, tls_client_context(certs)).close()


def test_a_failed_handshake_closes_only_that_connection(server, certs):
    sock = socket.create_connection(("127.0.0.1", server.server.tcp_port), timeout=5)
    body = json.dumps({"feature_negotiation": True, "tls_v1": True}).encode()
    sock.sendall(b"  V2IDENTIFY\n" + struct.pack(">i", len(body)) + body)
    read_frame(sock)
    sock.sendall(b"this is not a ClientHello" * 10)
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk  # an alert and/or the error frame, then EOF
    sock.close()
    gnsq_exchange(server.server.tcp_port, "after_bad_handshake", n=20, tls_v1=True,
                  tls_options=verify(certs))


# -- --tls-required and HTTPS -----------------------------------------------------------------


def test_https_serves_the_api(server, certs):
    nsqd = server.server.nsqd
    base = f"https://127.0.0.1:{nsqd.https_port}"
    assert requests.get(f"{base}/ping", verify=str(certs.ca), timeout=5).text == "OK"
    assert requests.post(f"{base}/pub?topic=https_t", data=b"hi", verify=str(certs.ca),
                         timeout=5).text == "OK"
    # plain HTTP is still served without --tls-required=true
    assert requests.get(f"http://127.0.0.1:{nsqd.http_port}/ping", timeout=5).text == "OK"


def test_tls_required_true_refuses_plain_http_with_the_https_port(start_tls_nsqd, certs):
    server = start_tls_nsqd(tls_required=2)
    nsqd = server.server.nsqd
    response = requests.get(f"http://127.0.0.1:{nsqd.http_port}/stats", timeout=5)
    assert response.status_code == 403
    assert response.json() == {"message": "TLS_REQUIRED", "https_port": nsqd.https_port}
    https = requests.get(f"https://127.0.0.1:{nsqd.https_port}/ping", verify=str(certs.ca),
                         timeout=5)
    assert https.status_code == 200


def test_tls_required_tcp_https_keeps_plain_http(start_tls_nsqd, certs):
    server = start_tls_nsqd(tls_required=1)
    nsqd = server.server.nsqd
    assert requests.get(f"http://127.0.0.1:{nsqd.http_port}/ping", timeout=5).text == "OK"
    conn = RawConnection(nsqd.tcp_port)
    try:
        conn.command(b"SUB t c")
        assert conn.read_frame() == (1, b"E_INVALID cannot SUB in current state (TLS required)")
    finally:
        conn.close()
    gnsq_exchange(nsqd.tcp_port, "tcp_https", n=50, tls_v1=True, tls_options=verify(certs))


def test_no_certificate_means_no_tls(start_nsqd):
    nsqd = start_nsqd(http_address="").server.nsqd
    conn = gnsq.NsqdTCPClient("127.0.0.1", nsqd.tcp_port, timeout=5, tls_v1=True, tls_options={})
    conn.connect()
    try:
        assert conn.identify()["tls_v1"] is False
    finally:
        conn.close_stream()
    assert nsqd.https_port == 0


# -- the gnsqd process ------------------------------------------------------------------------


def test_gnsqd_process_listens_on_https(certs, tmp_path):
    """The console script (monkey-patched) logs `HTTPS: listening on`, serves HTTPS, refuses
    plain HTTP with --tls-required=true and upgrades TCP clients."""
    from ..servers import ServerProcess

    process = ServerProcess(
        "gnsqd", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
        "--https-address=127.0.0.1:0", f"--data-path={tmp_path}",
        f"--tls-cert={certs.server_cert}", f"--tls-key={certs.server_key}",
        "--tls-required=true",
    ).start(expect=("TCP", "HTTP", "HTTPS"))
    try:
        https_port = process.ports["HTTPS"]
        assert requests.get(f"https://127.0.0.1:{https_port}/ping", verify=str(certs.ca),
                            timeout=5).text == "OK"
        refused = requests.get(f"http://127.0.0.1:{process.http_port}/ping", timeout=5)
        assert (refused.status_code, refused.json()["https_port"]) == (403, https_port)
        gnsq_exchange(process.tcp_port, "process_tls", n=50, tls_v1=True, snappy=True,
                      tls_options=verify(certs))
    finally:
        assert process.stop() == 0


def test_gnsqd_process_refuses_a_bad_key(certs, tmp_path):
    from ..servers import ServerProcess

    process = ServerProcess(
        "gnsqd", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
        f"--data-path={tmp_path}", f"--tls-cert={certs.server_cert}",
        f"--tls-key={certs.rogue_key}",
    )
    with pytest.raises(RuntimeError, match="did not start"):
        process.start(timeout=10)
    assert process.wait() != 0
    assert "failed to build TLS config" in process.log_text()

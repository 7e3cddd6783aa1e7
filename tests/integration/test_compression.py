"""Snappy and deflate upgrades with pynsq and gnsq: 500 messages each way, switches, levels,
both-at-once refused, and a plain client's latency while another one compresses heavily."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from ..conftest import RawConnection
from ..exchange import gnsq_exchange, pynsq_exchange


@pytest.fixture
def port(start_nsqd) -> int:
    return start_nsqd(http_address="").server.tcp_port


@pytest.fixture
def raw():
    """Factory for RawConnections, closed at teardown."""
    opened: list[RawConnection] = []

    def connect(port: int) -> RawConnection:
        opened.append(RawConnection(port))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()


def identify(conn: RawConnection, **fields) -> dict:
    conn.command(b"IDENTIFY", json.dumps({"feature_negotiation": True, **fields}).encode())
    frame_type, data = conn.read_frame()
    assert frame_type == 0, data
    return json.loads(data)


@pytest.mark.parametrize("feature", ["snappy", "deflate"])
def test_gnsq_exchanges_500_messages(port, feature):
    gnsq_exchange(port, f"gnsq_{feature}", **{feature: True})


@pytest.mark.parametrize("feature", ["snappy", "deflate"])
def test_pynsq_exchanges_500_messages(port, feature):
    pynsq_exchange(port, f"pynsq_{feature}", **{feature: True})


def test_gnsq_deflate_at_the_highest_level(port):
    gnsq_exchange(port, "gnsq_deflate9", n=100, deflate=True, deflate_level=9)


def test_compressed_bytes_sent_right_after_identify_are_decoded(port, raw):
    """A client that does not wait for the JSON: its snappy bytes were read with the IDENTIFY
    and must go through the decoder, not be taken as plain commands."""
    from gnsq_server.nsqd.compression import SnappyDecoder, SnappyEncoder

    conn = raw(port)
    body = json.dumps({"feature_negotiation": True, "snappy": True}).encode()
    pub = SnappyEncoder().encode(b"PUB eager\n" + struct.pack(">i", 2) + b"hi")
    conn.send(b"IDENTIFY\n" + struct.pack(">i", len(body)) + body + pub)
    frame_type, reply = conn.read_frame()
    assert frame_type == 0 and json.loads(reply)["snappy"] is True
    decoder, plain = SnappyDecoder(), b""
    conn.sock.settimeout(5)
    while len(plain) < 20:
        decoder.feed(conn.sock.recv(4096))
        plain += decoder.read(4096)
    assert plain == (struct.pack(">ii", 6, 0) + b"OK") * 2


def test_deflate_and_snappy_together_get_the_error_frame(port, raw):
    conn = raw(port)
    conn.command(
        b"IDENTIFY",
        json.dumps({"feature_negotiation": True, "snappy": True, "deflate": True}).encode(),
    )
    assert conn.read_frame() == (
        1, b"E_IDENTIFY_FAILED cannot enable both deflate and snappy compression"
    )
    assert conn.sock.recv(10) == b""


def test_deflate_level_is_capped_by_max_deflate_level(start_nsqd, raw):
    port = start_nsqd(http_address="", max_deflate_level=3).server.tcp_port
    reply = identify(raw(port), deflate=True, deflate_level=9)
    assert (reply["deflate"], reply["deflate_level"], reply["max_deflate_level"]) == (True, 3, 3)
    gnsq_exchange(port, "capped", n=50, deflate=True, deflate_level=9)


@pytest.mark.parametrize("switch", ["snappy", "deflate"])
def test_switched_off_features_are_not_negotiated(start_nsqd, raw, switch):
    port = start_nsqd(http_address="", **{switch: False}).server.tcp_port
    conn = raw(port)
    reply = identify(conn, **{switch: True})
    assert reply[switch] is False
    conn.command(b"PUB t", b"x")  # still plain
    assert conn.read_frame() == (0, b"OK")
    gnsq_exchange(port, f"no_{switch}", n=50, **{switch: True})


@pytest.mark.parametrize("feature", ["snappy", "deflate"])
def test_stats_show_the_compression(start_nsqd, feature):
    import gnsq
    import requests

    server = start_nsqd()
    conn = gnsq.NsqdTCPClient("127.0.0.1", server.server.tcp_port, timeout=5, **{feature: True})
    conn.connect()
    conn.identify()
    conn.publish("stats_topic", b"x")
    assert conn.read_response() == (0, b"OK")
    url = f"http://127.0.0.1:{server.server.http_port}/stats?format=json"
    (producer,) = requests.get(url, timeout=5).json()["producers"]
    conn.close_stream()
    assert producer[feature] is True
    assert producer["snappy" if feature == "deflate" else "deflate"] is False
    assert producer["tls"] is False


def _pub_latencies(port: int, stop: threading.Event) -> list[float]:
    """A plain producer's PUB round trips while `stop` is unset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"  V2")
    latencies = []
    try:
        while not stop.is_set():
            started = time.perf_counter()
            sock.sendall(b"PUB plain_latency\n" + struct.pack(">i", 5) + b"hello")
            data = b""
            while len(data) < 10:
                data += sock.recv(10 - len(data))
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
    finally:
        sock.close()
    return latencies


def test_heavy_compression_does_not_starve_a_plain_client(port):
    """One deflate-9 client pushes ~24 MB of MPUBs and gets them back compressed while a plain
    client keeps publishing: the plain client's worst round trip stays small."""
    stop = threading.Event()
    result: list[list[float]] = []
    watcher = threading.Thread(target=lambda: result.append(_pub_latencies(port, stop)))
    watcher.start()
    try:
        baseline_until = time.monotonic() + 0.3
        while time.monotonic() < baseline_until:
            time.sleep(0.01)
        started = time.monotonic()
        gnsq_exchange(port, "heavy_deflate", n=6000, deflate=True, deflate_level=9)
        heavy_seconds = time.monotonic() - started
    finally:
        stop.set()
        watcher.join(10)
    latencies = sorted(result[0])
    worst, median = latencies[-1], latencies[len(latencies) // 2]
    print(f"heavy exchange {heavy_seconds:.2f}s; plain PUB rtt median {median * 1000:.2f} ms, "
          f"worst {worst * 1000:.2f} ms over {len(latencies)} PUBs")
    assert len(latencies) > 20
    assert worst < 0.5, f"plain client stalled {worst * 1000:.0f} ms"

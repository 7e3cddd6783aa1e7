"""A real gnsqd pushing to a UDP socket in the test: every line and packet checked."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.conftest import RawConnection
from tests.ops import curl
from tests.servers import ServerProcess

PACKET_SIZE = 200
LINE = re.compile(r"^(?P<name>[^:\s]+):(?P<value>-?\d+)\|(?P<kind>[cg])$")


def receive_push(sock: socket.socket, deadline: float) -> list[bytes]:
    """The packets of one push: they arrive together (interval - 1s of spread is 0 here)."""
    packets = []
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    packets.append(sock.recv(65536))
    sock.settimeout(0.3)
    try:
        while True:
            packets.append(sock.recv(65536))
    except TimeoutError:
        pass
    return packets


def parse(packets: list[bytes], prefix: str) -> dict[str, tuple[int, str]]:
    stats: dict[str, tuple[int, str]] = {}
    for packet in packets:
        assert len(packet) <= PACKET_SIZE and packet.endswith(b"\n")
        for line in packet.decode().splitlines():
            match = LINE.match(line)
            assert match, line
            name = match["name"]
            assert name.startswith(prefix) and name not in stats, line
            stats[name[len(prefix):]] = (int(match["value"]), match["kind"])
    return stats


@pytest.mark.timeout(60)
def test_statsd_push_lines_packets_and_deltas(tmp_path):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp_port = udp.getsockname()[1]
    nsqd = ServerProcess(
        "gnsqd", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0",
        "--broadcast-address=127.0.0.1", f"--data-path={tmp_path}",
        f"--statsd-address=127.0.0.1:{udp_port}", "--statsd-interval=1s",
        f"--statsd-udp-packet-size={PACKET_SIZE}", "--statsd-exclude-ephemeral",
        "--e2e-processing-latency-percentile=0.99,0.5",
    ).start()
    try:
        http = f"http://127.0.0.1:{nsqd.http_port}"
        curl("-X", "POST", f"{http}/channel/create?topic=orders&channel=billing")
        curl("-X", "POST", f"{http}/channel/create?topic=orders&channel=audit%23ephemeral")
        curl("-X", "POST", f"{http}/topic/create?topic=scratch%23ephemeral")
        curl("-X", "POST", "--data-binary", "a\nbb\nccc", f"{http}/mpub?topic=orders")
        conn = RawConnection(nsqd.tcp_port)
        conn.command(b"SUB orders billing")
        assert conn.read_frame() == (0, b"OK")
        conn.command(b"RDY 1")
        frame_type, data = conn.read_frame()
        assert frame_type == 2
        conn.command(b"FIN " + data[10:26])
        conn.command(b"NOP")
        time.sleep(0.2)

        prefix = f"nsq.127_0_0_1_{nsqd.http_port}."
        deadline = time.monotonic() + 5
        # the push that follows the FIN (an earlier one may have gone out before it)
        while True:
            first = parse(receive_push(udp, deadline), prefix)
            if first["topic.orders.e2e_processing_latency_99"][0] > 0:
                break
        assert len(receive_push(udp, time.monotonic() + 3)) >= 1  # one push per interval
        assert set(first) == {
            "topic.orders.message_count", "topic.orders.message_bytes", "topic.orders.depth",
            "topic.orders.backend_depth", "topic.orders.e2e_processing_latency_99",
            "topic.orders.e2e_processing_latency_50",
            *(f"topic.orders.channel.billing.{stat}" for stat in (
                "message_count", "depth", "backend_depth", "in_flight_count", "deferred_count",
                "requeue_count", "timeout_count", "clients", "e2e_processing_latency_99",
                "e2e_processing_latency_50",
            )),
            *(f"mem.{stat}" for stat in (
                "heap_objects", "heap_idle_bytes", "heap_in_use_bytes", "heap_released_bytes",
                "gc_pause_usec_100", "gc_pause_usec_99", "gc_pause_usec_95", "next_gc_bytes",
                "gc_runs",
            )),
        }
        kinds = {name: kind for name, (_, kind) in first.items()}
        counters = {n for n, k in kinds.items() if k == "c"}
        assert counters == {
            "topic.orders.message_count", "topic.orders.message_bytes",
            "topic.orders.channel.billing.message_count",
            "topic.orders.channel.billing.requeue_count",
            "topic.orders.channel.billing.timeout_count", "mem.gc_runs",
        }
        # RDY 1 stays: after the FIN the second message went out, the third waits
        assert first["topic.orders.channel.billing.depth"][0] == 1
        assert first["topic.orders.channel.billing.in_flight_count"][0] == 1
        assert first["topic.orders.channel.billing.clients"][0] == 1
        latency = first["topic.orders.channel.billing.e2e_processing_latency_99"][0]
        assert 0 < latency < 30 * 10**9  # ns

        # later pushes: counters are deltas, so nothing new is 0; gauges stay
        conn.command(b"CLS")
        later = parse(receive_push(udp, time.monotonic() + 3), prefix)
        assert later["topic.orders.message_count"] == (0, "c")
        assert later["topic.orders.message_bytes"] == (0, "c")
        assert later["topic.orders.depth"] == (0, "g")
        assert later["topic.orders.channel.billing.depth"] == (1, "g")
        conn.close()
    finally:
        assert nsqd.stop() == 0
        udp.close()
    log = nsqd.log_text()
    assert f"STATSD: pushing stats to 127.0.0.1:{udp_port}" in log
    assert "STATSD: closing" in log

"""GET /metrics scraped with curl and read by prometheus_client's text-format parser."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.ops import curl


def scrape(port: int) -> dict[str, list]:
    text = curl(f"http://127.0.0.1:{port}/metrics")
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, **labels) -> list:
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def value(families, name: str, **labels) -> float:
    (sample,) = [s for f in families.values() for s in samples(f, **labels) if s.name == name]
    return sample.value


def test_metrics_per_topic_channel_and_client(start_nsqd, connect):
    server = start_nsqd(e2e_processing_latency_percentiles=[0.99, 0.5])
    port = server.server.http_port
    headers = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True, text=True, timeout=20,
    ).stdout
    assert "content-type: text/plain; version=" in headers.lower()

    curl("-X", "POST", f"http://127.0.0.1:{port}/channel/create?topic=jobs&channel=workers")
    producer = connect(server.server.tcp_port)
    producer.command(b"IDENTIFY", b'{"user_agent":"test-producer/1.0"}')
    assert producer.read_frame()[0] == 0
    for body in (b"one", b"three"):
        producer.command(b"PUB jobs", body)
        assert producer.read_frame() == (0, b"OK")
    consumer = connect(server.server.tcp_port)
    consumer.command(b"IDENTIFY", b'{"user_agent":"test-consumer/2.0"}')
    assert consumer.read_frame()[0] == 0
    consumer.command(b"SUB jobs workers")
    assert consumer.read_frame() == (0, b"OK")
    consumer.command(b"RDY 1")
    frame_type, data = consumer.read_frame()
    assert frame_type == 2
    consumer.command(b"FIN " + data[10:26])
    consumer.read_frame()  # the second message, now in flight

    families = scrape(port)
    assert families["nsq_healthy"].type == "gauge" and value(families, "nsq_healthy") == 1
    assert families["nsq_topic_messages"].type == "counter"
    assert value(families, "nsq_topic_messages_total", topic="jobs") == 2
    assert value(families, "nsq_topic_message_bytes_total", topic="jobs") == 8
    assert value(families, "nsq_topic_depth", topic="jobs") == 0
    channel = {"topic": "jobs", "channel": "workers"}
    assert value(families, "nsq_channel_messages_total", **channel) == 2
    assert value(families, "nsq_channel_in_flight", **channel) == 1
    assert value(families, "nsq_channel_depth", **channel) == 0
    assert value(families, "nsq_channel_clients", **channel) == 1
    assert value(families, "nsq_channel_paused", **channel) == 0
    latency = samples(families["nsq_channel_e2e_processing_latency_seconds"], **channel)
    assert sorted(s.labels["quantile"] for s in latency) == ["0.5", "0.99"]
    assert all(0 < s.value < 30 for s in latency)
    assert samples(families["nsq_topic_e2e_processing_latency_seconds"], topic="jobs")

    client = {**channel, "user_agent": "test-consumer/2.0"}
    assert value(families, "nsq_client_finished_total", **client) == 1
    assert value(families, "nsq_client_messages_total", **client) == 2
    assert value(families, "nsq_client_in_flight", **client) == 1
    assert value(families, "nsq_client_ready", **client) == 1
    (remote,) = {s.labels["remote_address"] for s in families["nsq_client_finished"].samples}
    assert remote.startswith("127.0.0.1:")
    assert value(families, "nsq_client_published_total", topic="jobs",
                 user_agent="test-producer/1.0") == 2

    # label values are escaped by the library: odd user agents still parse
    odd = connect(server.server.tcp_port)
    odd.command(b"IDENTIFY", b'{"user_agent":"a \\"quoted\\" agent\\\\ with\\nnewline"}')
    assert odd.read_frame()[0] == 0
    odd.command(b"PUB jobs", b"x")
    assert odd.read_frame() == (0, b"OK")
    families = scrape(port)
    assert value(families, "nsq_client_published_total",
                 user_agent='a "quoted" agent\\ with\nnewline') == 1

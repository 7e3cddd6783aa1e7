"""Crash-safe mode's topic log against real gnsqd processes: persisted acknowledgements,
one write whatever the number of channels, replay and retention over HTTP."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone

import gevent
import gnsq
import pytest

from ..durable import (
    FullDisk,
    ServerError,
    Wire,
    assert_silent,
    bodies,
    channel_stats,
    dpub,
    drain,
    http,
    publish,
    receive,
    stats,
    stop_cleanly,
    subscribe,
)


def crash_safe(run_gnsqd, data, *flags: str):
    return run_gnsqd(data, "--crash-safe", *flags)


def kill_9(server) -> None:
    server.signal(signal.SIGKILL)
    server.wait()


def test_kill_9_with_held_messages_redelivers_only_unfinished(run_gnsqd, tmp_path):
    """A consumer holds 10 messages and finishes 1,990 others; the FINs are older than
    --sync-timeout at the kill. After the restart the 10 come back, and at most 5% of the
    finished ones (the old design re-delivered everything after the oldest held one)."""
    data = tmp_path / "data"
    server = crash_safe(run_gnsqd, data, "--sync-timeout=300ms")
    consumer = subscribe(server.tcp_port, "hold", "worker")
    idle = subscribe(server.tcp_port, "hold", "idle")
    sent = bodies("hold", 2000)
    publish(server.tcp_port, "hold", sent, batch=100)
    consumer.command(b"RDY 100")
    held, finished = [], []
    while len(held) + len(finished) < 2000:
        msg = consumer.message()
        assert msg is not None, f"{len(held) + len(finished)} of 2000 arrived"
        if len(held) < 10 and msg.body.endswith((b"0", b"7")):
            held.append(msg)
        else:
            finished.append(msg)
            consumer.queue(b"FIN " + msg.id)
    consumer.flush()
    time.sleep(1.0)  # the FINs are now older than --sync-timeout
    kill_9(server)
    consumer.close()
    idle.close()

    server = crash_safe(run_gnsqd, data, "--sync-timeout=300ms")
    again = drain(subscribe(server.tcp_port, "hold", "worker", rdy=200), quiet=1.5)
    again_bodies = {msg.body for msg in again}
    assert {msg.body for msg in held} <= again_bodies, "a held message was lost"
    redelivered = again_bodies & {msg.body for msg in finished}
    assert len(redelivered) <= 0.05 * len(finished), f"{len(redelivered)} finished came back"
    idle_got = drain(subscribe(server.tcp_port, "hold", "idle", rdy=500), quiet=1.5)
    assert {msg.body for msg in idle_got} == set(sent), "the idle channel lost messages"
    stop_cleanly(server)


def test_deferred_and_delayed_requeue_keep_their_due_times_across_kill_9(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = crash_safe(run_gnsqd, data, "--sync-timeout=100ms")
    consumer = subscribe(server.tcp_port, "due", "ch", rdy=1)
    dpub(server.tcp_port, "due", 3000, [b"dpub-3s"])
    published = time.monotonic()
    publish(server.tcp_port, "due", [b"req-3s"])
    msg = consumer.message()
    assert msg is not None and msg.body == b"req-3s"
    consumer.command(b"REQ %s 3000" % msg.id)
    requeued = time.monotonic()
    time.sleep(0.5)  # past --sync-timeout: the cursor has the requeue's due time
    kill_9(server)
    consumer.close()

    server = crash_safe(run_gnsqd, data, "--sync-timeout=100ms")
    consumer = subscribe(server.tcp_port, "due", "ch", rdy=10)
    assert channel_stats(server, "due", "ch")["deferred_count"] == 2
    arrived = {}
    while len(arrived) < 2:
        msg = consumer.message(timeout=6.0)
        assert msg is not None, f"only {sorted(arrived)} arrived"
        arrived[msg.body] = time.monotonic()
        consumer.queue(b"FIN " + msg.id)
    consumer.flush()
    assert 2.8 <= arrived[b"dpub-3s"] - published <= 4.5, arrived[b"dpub-3s"] - published
    assert 2.8 <= arrived[b"req-3s"] - requeued <= 4.5, arrived[b"req-3s"] - requeued
    stop_cleanly(server)


def test_two_subs_racing_to_create_a_channel_share_it(run_gnsqd, tmp_path):
    """Creating a crash-safe channel must not yield: two SUBs arriving together once made
    two channel objects reading the same cursor position, so both consumers got everything."""
    server = crash_safe(run_gnsqd, tmp_path / "data")
    wires = [Wire(server.tcp_port) for _ in range(2)]
    for wire in wires:
        wire.command(b"SUB race ch")
    for wire in wires:
        assert wire.response() == b"OK"
    publish(server.tcp_port, "race", bodies("race", 1000), batch=100)
    for wire in wires:
        wire.command(b"RDY 300")
    got = [msg.body for wire in wires for msg in drain(wire, quiet=1.0)]
    assert sorted(got) == bodies("race", 1000), f"{len(got)} deliveries of 1000 messages"
    channel = channel_stats(server, "race", "ch")
    assert channel["client_count"] == 2
    stop_cleanly(server)


def _bytes_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"])


def _written_per_message(run_gnsqd, data, channels: int, count: int) -> float:
    server = crash_safe(run_gnsqd, data, "--sync-timeout=200ms")
    consumers = [subscribe(server.tcp_port, "once", f"ch{i}") for i in range(channels)]
    before = _bytes_written(server.proc.pid)
    payload = [body + b"." * 200 for body in bodies("once", count)]
    publish(server.tcp_port, "once", payload, batch=200)
    for consumer in consumers:
        consumer.command(b"RDY 500")
        receive(consumer, count)
    time.sleep(0.8)  # the FINs are read and the cursors persisted at least once since
    written = _bytes_written(server.proc.pid) - before
    stop_cleanly(server)
    return written / count


def test_three_channels_write_each_message_once(run_gnsqd, tmp_path):
    try:
        open("/proc/self/io").close()
    except OSError:
        pytest.skip("no /proc/<pid>/io here")
    one = _written_per_message(run_gnsqd, tmp_path / "one", 1, 5000)
    three = _written_per_message(run_gnsqd, tmp_path / "three", 3, 5000)
    assert one > 200, f"{one:.0f} bytes per message: is the log written at all?"
    assert three <= 1.2 * one, f"3 channels: {three:.0f} B/msg, 1 channel: {one:.0f} B/msg"


# -- replay with real clients ----------------------------------------------------------------


class Collector:
    """A gnsq.Consumer (auto-FIN) on one channel that keeps every body it gets."""

    def __init__(self, port: int, topic: str, channel: str) -> None:
        self.bodies: list[bytes] = []
        self.consumer = gnsq.Consumer(
            topic, channel, nsqd_tcp_addresses=[f"127.0.0.1:{port}"], max_in_flight=100
        )
        self.consumer.on_message.connect(self._got, weak=False)
        self.consumer.start(block=False)

    def _got(self, _consumer, message) -> None:
        self.bodies.append(message.body)

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count:
            assert time.monotonic() < deadline, f"{len(self.bodies)} of {count} arrived"
            gevent.sleep(0.02)

    def close(self) -> None:
        self.consumer.close()
        self.consumer.join(timeout=5)




def replay(server, channel: str, since: str, topic: str = "rp"):
    params = {"topic": topic, "channel": channel, "since": since}
    return http(server, "POST", "/channel/replay", params=params)


def test_replay_from_a_time_redelivers_exactly_what_was_published_since(run_gnsqd, tmp_path):
    server = crash_safe(run_gnsqd, tmp_path / "data", "--max-bytes-per-file=4096")
    port = server.tcp_port
    a, b = Collector(port, "rp", "a"), Collector(port, "rp", "b")
    producer = gnsq.Producer([f"127.0.0.1:{port}"])
    producer.start()
    before, after = bodies("before", 300), bodies("after", 200)
    try:
        for start in range(0, 300, 30):  # several segments
            producer.multipublish("rp", before[start : start + 30])
        a.wait_for(300)
        b.wait_for(300)
        gevent.sleep(0.01)
        since = datetime.now(timezone.utc)
        gevent.sleep(0.01)
        producer.multipublish("rp", after)
        a.wait_for(500)
        b.wait_for(500)
        gevent.sleep(0.3)  # the FINs reach gnsqd

        reply = replay(server, "a", since.isoformat())
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"position": 300, "queued": 200}
        a.wait_for(700)
        gevent.sleep(0.5)
        assert sorted(a.bodies[500:]) == after, "a replay delivers exactly what came since"
        assert len(b.bodies) == 500, "other channels are untouched"

        # unix ns works too, and "oldest" goes back to the first retained message
        reply = replay(server, "b", str(time.time_ns() + 10**9))
        assert reply.json()["queued"] == 0
        reply = replay(server, "b", "oldest")
        assert reply.status_code == 200
        b.wait_for(1000)
        gevent.sleep(0.3)
        assert sorted(b.bodies[500:]) == sorted(before + after)
        assert len(a.bodies) == 700
    finally:
        a.close()
        b.close()
        producer.close()
        producer.join(timeout=5)
    stop_cleanly(server)


def test_replay_and_retention_reject_bad_input_and_keep_serving(run_gnsqd, tmp_path):
    server = crash_safe(run_gnsqd, tmp_path / "data")
    consumer = subscribe(server.tcp_port, "rp", "a")
    for since, status, message in [
        ("yesterday", 400, "INVALID_SINCE"),
        ("2026-01-01T00:00:00", 400, "INVALID_SINCE"),  # no offset: ambiguous
    ]:
        reply = replay(server, "a", since)
        assert (reply.status_code, reply.json()["message"]) == (status, message)
    reply = http(server, "POST", "/channel/replay", params={"topic": "rp", "channel": "a"})
    assert (reply.status_code, reply.json()["message"]) == (400, "MISSING_ARG_SINCE")
    reply = replay(server, "nope", "oldest")
    assert reply.status_code == 404
    reply = http(server, "POST", "/topic/retention", params={"topic": "rp", "time": "-1s"})
    assert (reply.status_code, reply.json()["message"]) == (400, "INVALID_TIME")
    reply = http(server, "POST", "/topic/retention", params={"topic": "rp", "bytes": "lots"})
    assert (reply.status_code, reply.json()["message"]) == (400, "INVALID_BYTES")
    publish(server.tcp_port, "rp", [b"still-serving"])
    consumer.command(b"RDY 1")
    assert [m.body for m in receive(consumer, 1)] == [b"still-serving"]
    stop_cleanly(server)

    plain = run_gnsqd(tmp_path / "plain")
    subscribe(plain.tcp_port, "rp", "a").close()
    reply = replay(plain, "a", "oldest")
    assert (reply.status_code, reply.json()["message"]) == (400, "NOT_CRASH_SAFE")
    stop_cleanly(plain)


# -- retention and stats ---------------------------------------------------------------------


def test_retention_keeps_consumed_segments_for_replay_and_stats_show_them(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    flags = ("--max-bytes-per-file=4096", "--sync-timeout=100ms")
    server = crash_safe(run_gnsqd, data, *flags)
    consumer = subscribe(server.tcp_port, "ret", "ch", rdy=500)
    for start in range(0, 400, 40):
        publish(server.tcp_port, "ret", bodies("first", 400)[start : start + 40])
    receive(consumer, 400)
    time.sleep(0.5)  # a sync deletes what every channel is done with
    topic = stats(server)["topics"][0]
    assert topic["log_retained_bytes"] == 0 and topic["log_first_seq"] > 0
    assert topic["log_end_seq"] == 400 and 0 < topic["log_bytes"] <= 8192
    channel = channel_stats(server, "ret", "ch")
    assert (channel["log_position"], channel["log_committed"]) == (400, 400)

    reply = http(server, "POST", "/topic/retention", params={"topic": "ret", "time": "1h"})
    assert reply.json() == {"retention_time": 3600 * 10**9, "retention_bytes": 0}
    for start in range(0, 400, 40):
        publish(server.tcp_port, "ret", bodies("second", 400)[start : start + 40])
    receive(consumer, 400)
    time.sleep(0.5)
    topic = stats(server)["topics"][0]
    assert topic["log_retained_bytes"] > 10_000, topic
    assert topic["retention_time"] == 3600 * 10**9
    metrics = http(server, "GET", "/metrics").text
    assert 'nsq_topic_log_retained_bytes{topic="ret"}' in metrics
    assert 'nsq_channel_log_position{channel="ch",topic="ret"} 800.0' in metrics
    stop_cleanly(server)

    server = crash_safe(run_gnsqd, data, *flags)  # the override survives a restart
    reply = http(server, "GET", "/topic/retention", params={"topic": "ret"})
    assert reply.json()["retention_time"] == 3600 * 10**9
    first_seq = stats(server)["topics"][0]["log_first_seq"]
    assert first_seq <= 400, "the second batch is retained whole"
    reply = replay(server, "ch", "oldest", topic="ret")
    assert reply.json() == {"position": first_seq, "queued": 800 - first_seq}
    consumer = subscribe(server.tcp_port, "ret", "ch", rdy=1000)
    expected = (bodies("first", 400) + bodies("second", 400))[first_seq:]
    assert sorted(m.body for m in receive(consumer, 800 - first_seq)) == sorted(expected)
    stop_cleanly(server)


# -- holding, deleting, a full disk ----------------------------------------------------------


def test_held_messages_survive_a_crash_and_pause_holds_them_for_every_channel(
    run_gnsqd, tmp_path
):
    data = tmp_path / "data"
    server = crash_safe(run_gnsqd, data, "--sync-timeout=100ms")
    publish(server.tcp_port, "held", bodies("held", 30))  # no channel yet: the topic holds
    assert stats(server)["topics"][0]["depth"] == 30
    kill_9(server)

    server = crash_safe(run_gnsqd, data, "--sync-timeout=100ms")
    assert stats(server)["topics"][0]["depth"] == 30
    first = subscribe(server.tcp_port, "held", "first", rdy=100)
    assert sorted(m.body for m in receive(first, 30)) == bodies("held", 30)

    assert http(server, "POST", "/topic/pause", params={"topic": "held"}).status_code == 200
    publish(server.tcp_port, "held", bodies("paused", 5))
    late = subscribe(server.tcp_port, "held", "late", rdy=100)
    assert_silent(first, 0.5)
    assert_silent(late, 0.1)
    assert http(server, "POST", "/topic/unpause", params={"topic": "held"}).status_code == 200
    assert [m.body for m in receive(first, 5)] == bodies("paused", 5)
    assert [m.body for m in receive(late, 5)] == bodies("paused", 5), "held for a new channel too"

    log_dir = data / "held.gnsq-log"
    time.sleep(0.3)
    assert (log_dir / "late.cursor").exists()
    params = {"topic": "held", "channel": "late"}
    assert http(server, "POST", "/channel/delete", params=params).status_code == 200
    assert not (log_dir / "late.cursor").exists()
    assert http(server, "POST", "/topic/delete", params={"topic": "held"}).status_code == 200
    assert not log_dir.exists()
    stop_cleanly(server)


def test_full_disk_fails_crash_safe_publishes_and_loses_nothing_accepted(run_gnsqd, tmp_path):
    disk = FullDisk("tmpfs", tmp_path / "disk")
    try:
        disk.setup()
        server = crash_safe(run_gnsqd, disk.data)
        consumer = subscribe(server.tcp_port, "full", "ch")
        wire = Wire(server.tcp_port)
        accepted, error = [], None
        for i in range(2000):
            body = b"%05d-" % i + b"x" * 1000
            wire.command(b"PUB full", body)
            try:
                assert wire.response() == b"OK"
            except ServerError as err:
                error = str(err)
                break
            accepted.append(body)
        assert error is not None and error.startswith("E_PUB_FAILED"), error
        assert accepted, "not a single publish fitted"
        assert http(server, "GET", "/ping").status_code == 500
        disk.free(server)
        publish(server.tcp_port, "full", [b"after-space-came-back"])
        accepted.append(b"after-space-came-back")
        assert http(server, "GET", "/ping").text == "OK"
        consumer.command(b"RDY 100")
        assert [m.body for m in drain(consumer, quiet=1.5)] == accepted
        stop_cleanly(server)
    finally:
        disk.teardown()

"""e2e latency quantile streams (nsqd/e2e.py) and the statsd line builder (nsqd/statsd.py)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from gnsq_server.nsqd import e2e
from gnsq_server.nsqd.statsd import pack, stat_lines

QUANTILES = (0.5, 0.95, 0.99, 1.0)


def exact(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered)) - 1))]


def test_small_sets_are_exact_nearest_rank():
    sketch = e2e.TargetedQuantiles(QUANTILES)
    for value in (50, 10, 40, 20, 30):
        sketch.insert(value)
    assert [sketch.query(q) for q in QUANTILES] == [20, 40, 40, 50]
    assert sketch.count() == 5
    assert e2e.TargetedQuantiles(QUANTILES).query(0.99) == 0  # nothing yet: 0, as perks


@pytest.mark.parametrize("seed", [1, 2])
def test_large_sets_stay_within_the_rank_error(seed):
    rng = random.Random(seed)
    values = [rng.randrange(10**9) for _ in range(20_000)]
    sketch = e2e.TargetedQuantiles(QUANTILES)
    for value in values:
        sketch.insert(value)
    ordered = sorted(values)
    assert sketch.count() == len(values)
    assert len(sketch.samples) < 500  # compressed, not every value kept
    for q in QUANTILES:
        rank = ordered.index(sketch.query(q))
        # CKMS targeted error is eps*n around the target; perks' query adds up to f(t)/2
        assert abs(rank - q * len(values)) <= 3 * e2e.EPSILON * len(values), q
    assert sketch.query(1.0) == ordered[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * 10**9

    def __call__(self) -> int:
        return self.now


def test_window_rolls_over_in_halves():
    clock = Clock()
    stream = e2e.E2EStream([0.5], window=10.0, clock=clock)  # halves of 5 s
    stream.insert(clock.now - 100)  # 100 ns latency
    clock.now += 4 * 10**9
    stream.insert(clock.now - 300)
    assert stream.result()["count"] == 2
    clock.now += 2 * 10**9  # 6 s: one move, the first half still counts
    stream.insert(clock.now - 500)
    assert stream.result()["count"] == 3
    clock.now += 5 * 10**9  # 11 s: the first half (100 and 300) is dropped
    result = stream.result()
    assert result == {"count": 1, "percentiles": [{"quantile": 0.5, "value": 500}]}
    clock.now += 60 * 10**9  # idle for many windows: everything is gone
    assert stream.result()["count"] == 0


def fake_channel(latencies: list[int], clock: Clock, percentiles=(0.99, 0.5)):
    channel = SimpleNamespace(e2e=e2e.E2EStream(percentiles, 600.0, clock=clock))
    for latency in latencies:
        channel.e2e.insert(clock.now - latency)
    return channel


def test_latency_source_shapes_as_nsqd():
    clock = Clock()
    nsqd = SimpleNamespace(
        opts=SimpleNamespace(
            e2e_processing_latency_percentiles=[0.99, 0.5],
            e2e_processing_latency_window_time=600.0,
        ),
        subscribe=lambda event, callback: None,
    )
    source = e2e.E2ELatency(nsqd)
    a = fake_channel([10, 20, 30, 40], clock)
    b = fake_channel([1000], clock)
    idle = SimpleNamespace(e2e=e2e.E2EStream((0.99, 0.5), 600.0, clock=clock))
    topic = SimpleNamespace(channels={"a": a, "b": b, "idle": idle})
    assert source(a) == {
        "count": 4,
        "percentiles": [{"quantile": 0.99, "value": 30}, {"quantile": 0.5, "value": 20}],
    }
    assert source(idle) == {
        "count": 0,
        "percentiles": [{"quantile": 0.99, "value": 0}, {"quantile": 0.5, "value": 0}],
    }
    merged = source(topic)
    assert merged["count"] == 5 and merged["percentiles"][0]["value"] == 40
    # a topic without channels has no stream at all: nsqd's nil result
    assert source(SimpleNamespace(channels={})) == {"count": 0, "percentiles": None}
    nsqd.opts.e2e_processing_latency_percentiles = []
    assert e2e.E2ELatency(nsqd)(a) == {"count": 0, "percentiles": None}


# --- statsd lines and packets ----------------------------------------------------------------


def topic(name: str, count: int, channels: list[dict], percentiles=None) -> dict:
    return {
        "topic_name": name, "channels": channels, "depth": 3, "backend_depth": 1,
        "message_count": count, "message_bytes": count * 10, "paused": False,
        "e2e_processing_latency": {"count": 0, "percentiles": percentiles},
    }


def channel(name: str, count: int, percentiles=None) -> dict:
    return {
        "channel_name": name, "depth": 2, "backend_depth": 0, "in_flight_count": 1,
        "deferred_count": 0, "message_count": count, "requeue_count": 4, "timeout_count": 1,
        "client_count": 1, "clients": None, "paused": False,
        "e2e_processing_latency": {"count": 0, "percentiles": percentiles},
    }


def test_stat_lines_match_nsqd_names_kinds_and_deltas():
    p99 = [{"quantile": 0.99, "value": 1234.9}, {"quantile": 0.995, "value": 7}]
    before = [topic("t", 5, [channel("c", 5)])]
    now = [
        topic("t", 8, [channel("c", 8, p99), channel("c2#ephemeral", 1)], p99),
        topic("x#ephemeral", 1, []),
    ]
    memory = {key: 1 for key in ("heap_objects", "heap_idle_bytes", "heap_in_use_bytes",
                                 "heap_released_bytes", "gc_pause_usec_100", "gc_pause_usec_99",
                                 "gc_pause_usec_95", "next_gc_bytes")}
    memory["gc_total_runs"] = 12
    lines = stat_lines("nsq.h_4151.", now, before, memory, {"gc_total_runs": 10},
                       exclude_ephemeral=True)
    assert lines[:6] == [
        "nsq.h_4151.topic.t.message_count:3|c\n",
        "nsq.h_4151.topic.t.message_bytes:30|c\n",
        "nsq.h_4151.topic.t.depth:3|g\n",
        "nsq.h_4151.topic.t.backend_depth:1|g\n",
        "nsq.h_4151.topic.t.e2e_processing_latency_99:1234|g\n",
        "nsq.h_4151.topic.t.e2e_processing_latency_100:7|g\n",  # %.0f of 99.5: half to even
    ]
    assert lines[6:16] == [
        "nsq.h_4151.topic.t.channel.c.message_count:3|c\n",
        "nsq.h_4151.topic.t.channel.c.depth:2|g\n",
        "nsq.h_4151.topic.t.channel.c.backend_depth:0|g\n",
        "nsq.h_4151.topic.t.channel.c.in_flight_count:1|g\n",
        "nsq.h_4151.topic.t.channel.c.deferred_count:0|g\n",
        "nsq.h_4151.topic.t.channel.c.requeue_count:0|c\n",
        "nsq.h_4151.topic.t.channel.c.timeout_count:0|c\n",
        "nsq.h_4151.topic.t.channel.c.clients:1|g\n",
        "nsq.h_4151.topic.t.channel.c.e2e_processing_latency_99:1234|g\n",
        "nsq.h_4151.topic.t.channel.c.e2e_processing_latency_100:7|g\n",
    ]
    assert not any("ephemeral" in line for line in lines)
    assert lines[16:] == [f"nsq.h_4151.mem.{key}:1|g\n" for key in list(memory)[:8]] + [
        "nsq.h_4151.mem.gc_runs:2|c\n"
    ]
    with_ephemeral = stat_lines("", now, before)
    assert "topic.x#ephemeral.message_count:1|c\n" in with_ephemeral
    assert not any(line.startswith("mem.") for line in with_ephemeral)


def test_pack_keeps_lines_whole_within_the_packet_size():
    lines = [f"nsq.topic.t{i}.depth:{i}|g\n" for i in range(40)]
    packets = pack(lines, 100)
    assert b"".join(packets) == "".join(lines).encode()
    assert all(len(packet) <= 100 for packet in packets)
    assert all(packet.endswith(b"\n") for packet in packets)
    # a packet is closed only when the next line does not fit
    for packet, following in zip(packets, packets[1:], strict=False):
        assert len(packet) + len(following.split(b"\n")[0]) + 1 > 100
    long_line = "x" * 150 + ":1|c\n"
    assert pack(["a:1|c\n", long_line, "b:1|c\n"], 100) == [
        b"a:1|c\n", long_line.encode(), b"b:1|c\n"
    ]
    assert pack([], 508) == []

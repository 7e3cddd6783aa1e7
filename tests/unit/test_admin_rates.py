"""gnsqadmin's rate history: deltas over time, bounded length, vanished topics dropped."""

from __future__ import annotations

from gnsq_server.admin.rates import RateHistory, series


def snapshot(count: int, depth: int, channel_count: int | None = None) -> list[dict]:
    channels = [] if channel_count is None else [
        {"channel_name": "c", "message_count": channel_count, "depth": 1}
    ]
    return [{"topic_name": "t", "message_count": count, "depth": depth, "channels": channels}]


def test_series_is_rate_per_second_never_negative() -> None:
    samples = [(0.0, 0, 5), (2.0, 10, 6), (4.0, 4, 7), (4.0, 8, 7)]
    assert series(samples) == [[2.0, 5.0, 6], [4.0, 0.0, 7], [4.0, 0.0, 7]]
    assert series([(1.0, 3, 0)]) == []


def test_history_records_topics_and_channels() -> None:
    history = RateHistory(points=3, min_interval=0.5)
    assert history.record(0.0, snapshot(0, 0, 0))
    assert not history.record(0.2, snapshot(100, 0, 100))  # too soon: ignored
    for second in range(1, 6):
        history.record(float(second), snapshot(second * 10, second, second * 4))
    data = history.as_json()
    assert data["topics"]["t"] == [[3.0, 10.0, 3], [4.0, 10.0, 4], [5.0, 10.0, 5]]
    assert data["channels"]["t"]["c"][-1] == [5.0, 4.0, 1]


def test_history_forgets_deleted_topics_and_channels() -> None:
    history = RateHistory(min_interval=0)
    history.record(0.0, snapshot(0, 0, 0))
    history.record(1.0, snapshot(1, 0))
    assert history.as_json()["channels"] == {}
    history.record(2.0, [])
    assert history.as_json() == {"topics": {}, "channels": {}}

"""Message-rate history for the UI's charts, from successive cluster snapshots.

nsqadmin draws rates from graphite; gnsqadmin has no graphite, so it samples the summed
``message_count`` and ``depth`` of every topic and channel each refresh and keeps the last
``points`` samples in memory. Rates are count deltas over time deltas, never negative (a count that
drops means a node restarted or the topic was re-created).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

#: A sample: (unix time, message_count, depth).
Sample = tuple[float, int, int]


class RateHistory:
    """The last ``points`` samples per topic and per channel; topics gone from a sample drop."""

    def __init__(self, points: int = 60, min_interval: float = 0.5) -> None:
        self.points = points
        self.min_interval = min_interval
        self._topics: dict[str, deque[Sample]] = {}
        self._channels: dict[tuple[str, str], deque[Sample]] = {}
        self._last = float("-inf")

    def record(self, now: float, topics: Iterable[dict[str, Any]]) -> bool:
        """Add a sample of aggregated topics; False (ignored) if the last one is too recent."""
        if now - self._last < self.min_interval:
            return False
        self._last = now
        seen_topics: set[str] = set()
        seen_channels: set[tuple[str, str]] = set()
        for topic in topics:
            name = topic["topic_name"]
            seen_topics.add(name)
            self._add(self._topics, name, (now, topic["message_count"], topic["depth"]))
            for channel in topic.get("channels") or []:
                key = (name, channel["channel_name"])
                seen_channels.add(key)
                self._add(self._channels, key, (now, channel["message_count"], channel["depth"]))
        for gone in set(self._topics) - seen_topics:
            del self._topics[gone]
        for gone_channel in set(self._channels) - seen_channels:
            del self._channels[gone_channel]
        return True

    def _add(self, table: dict[Any, deque[Sample]], key: Any, sample: Sample) -> None:
        table.setdefault(key, deque(maxlen=self.points + 1)).append(sample)

    def as_json(self) -> dict[str, Any]:
        """``{"topics": {t: points}, "channels": {t: {c: points}}}``; a point: [ts, rate, depth]."""
        channels: dict[str, dict[str, list[list[float]]]] = {}
        for (topic, channel), samples in sorted(self._channels.items()):
            channels.setdefault(topic, {})[channel] = series(samples)
        return {
            "topics": {name: series(samples) for name, samples in sorted(self._topics.items())},
            "channels": channels,
        }


def series(samples: Iterable[Sample]) -> list[list[float]]:
    """``[ts, messages per second, depth]`` for each sample after the first."""
    out: list[list[float]] = []
    previous: Sample | None = None
    for sample in samples:
        if previous is not None:
            elapsed = sample[0] - previous[0]
            delta = sample[1] - previous[1]
            rate = max(0.0, delta / elapsed) if elapsed > 0 else 0.0
            out.append([round(sample[0], 3), round(rate, 3), sample[2]])
        previous = sample
    return out

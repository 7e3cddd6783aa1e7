"""End-to-end processing latency: per-channel rolling quantile streams (PROTOCOL.md 4.8).

As nsqd: every FIN inserts ``now - message.timestamp`` (ns) into the channel's stream; a stream
is two CKMS targeted-quantile sketches (bmizerany/perks ``NewTargeted``, epsilon 0.01), each
covering half of ``--e2e-processing-latency-window-time``, the older one reset every half window.
A topic reports the merge of its channels' streams.

Where perks gives wrong answers we do not copy it: its ``Samples()`` drops up to 499 buffered
values once the sketch has been flushed, and merging unsorted samples into an empty sketch keeps
them unsorted (so small sets report the last value inserted, not the quantile). Here merged
samples are always sorted and buffered values always count.

Core module: no I/O. The hot path (``E2EStream.insert``) appends one int and compares one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from .stats import empty_e2e

EPSILON = 0.01
#: values buffered before they are merged into the sketch (perks' buffer size)
BUFFER_SIZE = 500


class TargetedQuantiles:
    """A CKMS sketch with error bounds targeted at a few quantiles known up front."""

    __slots__ = ("quantiles", "n", "samples", "buffer")

    def __init__(self, quantiles: Iterable[float]) -> None:
        self.quantiles = tuple(quantiles)
        self.n = 0.0  # total width merged into ``samples``
        self.samples: list[list[float]] = []  # sorted [value, width, delta]
        self.buffer: list[int] = []  # raw values not merged yet

    def reset(self) -> None:
        self.n = 0.0
        self.samples = []
        self.buffer.clear()

    def _invariant(self, rank: float) -> float:
        """The allowed error (width + delta) at ``rank``: the tightest over the targets."""
        n = self.n
        best = math.inf
        for q in self.quantiles:
            if q * n <= rank:
                f = 2 * EPSILON * rank / q
            elif q >= 1:
                f = math.inf
            else:
                f = 2 * EPSILON * (n - rank) / (1 - q)
            if f < best:
                best = f
        return best

    def insert(self, value: int) -> None:
        self.buffer.append(value)
        if len(self.buffer) >= BUFFER_SIZE:
            self.flush()

    def flush(self) -> None:
        """Merge the buffered values into the sketch and compress it."""
        if self.buffer:
            self.buffer.sort()
            self.merge([(value, 1.0) for value in self.buffer])
            self.buffer.clear()
            self._compress()

    def merge(self, incoming: Iterable[tuple[float, float]]) -> None:
        """Merge (value, width) pairs sorted by value, as perks' stream.merge does."""
        old = self.samples
        out: list[list[float]] = []
        i, size, rank = 0, len(old), 0.0
        for value, width in incoming:
            while i < size and old[i][0] <= value:
                out.append(old[i])
                rank += old[i][1]
                i += 1
            delta = math.floor(self._invariant(rank)) - 1 if i < size else 0.0
            out.append([value, width, delta])
            self.n += width
        out.extend(old[i:])
        self.samples = out

    def _compress(self) -> None:
        samples = self.samples
        if len(samples) < 2:
            return
        x = samples[-1]
        rank = self.n - 1 - x[1]
        kept = [x]
        for c in reversed(samples[:-1]):
            if c[1] + x[1] + x[2] <= self._invariant(rank):
                x[1] += c[1]
            else:
                x = c
                kept.append(c)
            rank -= c[1]
        kept.reverse()
        self.samples = kept

    def weighted(self) -> list[tuple[float, float]]:
        """Everything held, as (value, width) sorted by value: what another sketch merges."""
        pairs = [(s[0], s[1]) for s in self.samples]
        pairs.extend((value, 1.0) for value in self.buffer)
        pairs.sort()
        return pairs

    def count(self) -> int:
        return int(self.n) + len(self.buffer)

    def query(self, q: float) -> float:
        if not self.samples:
            # Few values: exact nearest rank over the sorted buffer (perks' fast path).
            if not self.buffer:
                return 0
            ordered = sorted(self.buffer)
            index = int(len(ordered) * q)
            return ordered[index - 1 if index > 0 else 0]
        self.flush()
        samples = self.samples
        target = math.ceil(q * self.n)
        target += math.ceil(self._invariant(target) / 2)
        prev = samples[0]
        rank = 0.0
        for cur in samples[1:]:
            if rank + cur[1] + cur[2] > target:
                return prev[0]
            rank += prev[1]
            prev = cur
        return prev[0]


def _go_number(value: float) -> float | int:
    """Go's JSON for a float64: integral values print without ``.0``."""
    return int(value) if float(value).is_integer() else value


def _result(sketch: TargetedQuantiles, percentiles: tuple[float, ...]) -> dict:
    return {
        "count": sketch.count(),
        "percentiles": [
            {"quantile": _go_number(q), "value": _go_number(sketch.query(q))} for q in percentiles
        ],
    }


class E2EStream:
    """One channel's rolling window: two sketches, each covering half of the window."""

    __slots__ = ("percentiles", "_move_ns", "_streams", "_index", "_current", "_last_move",
                 "_next_move", "_clock")

    def __init__(
        self,
        percentiles: Iterable[float],
        window: float,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.percentiles = tuple(percentiles)
        self._move_ns = max(1, round(window * 1e9 / 2))
        self._streams = (TargetedQuantiles(self.percentiles), TargetedQuantiles(self.percentiles))
        self._index = 0
        self._current = self._streams[0]
        self._clock = clock
        self._last_move = clock()
        self._next_move = self._last_move + self._move_ns

    def insert(self, timestamp_ns: int) -> None:
        """Record one FIN of a message created at ``timestamp_ns`` (ns since the epoch)."""
        now = self._clock()
        if now > self._next_move:
            self._rotate(now)
        self._current.insert(now - timestamp_ns)

    def _rotate(self, now: int) -> None:
        """Move the window forward: the sketch that now starts is emptied first."""
        moves = (now - self._last_move - 1) // self._move_ns
        if moves <= 0:
            return
        if moves >= 2:  # idle for a whole window: both halves are stale
            for stream in self._streams:
                stream.reset()
            self._index = (self._index + moves) % 2
        else:
            self._index ^= 1
            self._streams[self._index].reset()
        self._current = self._streams[self._index]
        self._last_move += moves * self._move_ns
        self._next_move = self._last_move + self._move_ns

    def sketches(self) -> tuple[TargetedQuantiles, TargetedQuantiles]:
        """Both halves of the window, after dropping what fell out of it."""
        self._rotate(self._clock())
        return self._streams

    def result(self) -> dict:
        return merged_result([self], self.percentiles)


def merged_result(streams: Iterable[E2EStream], percentiles: tuple[float, ...]) -> dict:
    """nsqd's quantile.Result over the union of some streams' windows."""
    merged = TargetedQuantiles(percentiles)
    pairs: list[tuple[float, float]] = []
    for stream in streams:
        for sketch in stream.sketches():
            pairs.extend(sketch.weighted())
    if len(pairs) < BUFFER_SIZE and all(width == 1 for _, width in pairs):
        merged.buffer.extend(int(value) for value, _ in pairs)  # few values: stay exact
    else:
        pairs.sort()
        merged.merge(pairs)
    return _result(merged, percentiles)


class E2ELatency:
    """Gives every channel a stream when percentiles are configured; the /stats e2e source.

    Call it with a topic or a channel for its ``{"count", "percentiles"}`` (``stats.E2ESource``).
    """

    def __init__(self, nsqd: Any) -> None:
        opts = nsqd.opts
        self.percentiles = tuple(opts.e2e_processing_latency_percentiles)
        self.window = opts.e2e_processing_latency_window_time
        if self.percentiles:
            nsqd.subscribe("channel_created", self._attach)

    @property
    def enabled(self) -> bool:
        return bool(self.percentiles)

    def _attach(self, channel: Any) -> None:
        channel.e2e = E2EStream(self.percentiles, self.window)

    def __call__(self, obj: Any) -> dict:
        if not self.percentiles:
            return empty_e2e()
        channels = getattr(obj, "channels", None)
        if channels is not None:  # a topic: the merge of its channels (nil without any)
            streams = [c.e2e for c in list(channels.values()) if c.e2e is not None]
        else:
            stream = getattr(obj, "e2e", None)
            streams = [stream] if stream is not None else []
        if not streams:
            return empty_e2e()
        return merged_result(streams, self.percentiles)

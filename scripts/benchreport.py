"""bench.py's report: medians and spread over repeated runs, the table it prints, and JSON
without NaN."""

from __future__ import annotations

import math
import statistics
from typing import Any

FIGURES = (
    "msg_per_s",
    "gen_cores",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "rss_kb",
    "rss_per_queued_msg_b",
)


def summarize(runs: list[dict[str, Any]], body_size: int) -> dict[str, Any]:
    """Medians over the measured runs, the msg/s spread as (max - min) / median, and the
    status: ok, or the first run's reason for not being ok."""
    measured = [run for run in runs if "msg_per_s" in run]
    status = next((run["status"] for run in runs if run.get("status") != "ok"), "ok")
    summary: dict[str, Any] = {"status": status, "runs": runs}
    if not measured:
        return summary
    for key in FIGURES:
        values = [run[key] for run in measured if run.get(key) is not None]
        values = [value for value in values if not math.isnan(value)]
        if values:
            summary[key] = statistics.median(values)
    rates = [run["msg_per_s"] for run in measured]
    median = summary["msg_per_s"]
    summary["mb_per_s"] = median * body_size / 1e6
    summary["spread_pct"] = (max(rates) - min(rates)) / median * 100 if median else 0.0
    return summary


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]], repeat: int) -> None:
    """The figures, then notes: statuses, server notes (once if every row has them)."""
    spread = f"spread/{repeat}" if repeat > 1 else ""
    head = (
        f"{'mode':<16}{'msg/s':>11}{spread:>10}{'MB/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}{'RSS MB':>8}{'RSS B/msg':>10}{'gen cores':>10}"
    )
    print(f"\n{title}\n{head}\n{'-' * len(head)}")
    notes: dict[str, set[str]] = {}
    for name, s in rows:
        notes[name] = mine = {note for run in s["runs"] for note in run.get("notes", [])}
        if "msg_per_s" not in s:
            print(f"{name:<16}  {s['status']}")
            continue
        if s["status"] != "ok":
            mine.add(s["status"])
        rss = s.get("rss_kb")
        print(
            f"{name:<16}{fmt(s['msg_per_s'], ',.0f'):>11}"
            f"{fmt(s['spread_pct'], '.0f') + '%' if repeat > 1 else '':>10}"
            f"{fmt(s['mb_per_s'], '.1f'):>8}{fmt(s.get('p50_ms'), '.2f'):>9}"
            f"{fmt(s.get('p99_ms'), '.2f'):>9}{fmt(s.get('p999_ms'), '.2f'):>10}"
            f"{fmt(rss / 1024 if rss else None, '.0f'):>8}"
            f"{fmt(s.get('rss_per_queued_msg_b'), '.0f'):>10}{fmt(s.get('gen_cores'), '.2f'):>10}"
        )
        last = s["runs"][-1]
        if "published" in last:
            mine.add(
                f"publisher: {last['published']} sent at {last['publish_rate']:,.0f} "
                f"msg/s, {last['lost']} not delivered, throttled {last['throttled']}x"
            )
        if "filled" in last:
            mine.add(f"drained {last['msgs']} of {last['filled']} pre-filled messages")
    common = set.intersection(*notes.values()) if len(notes) > 1 else set()
    for note in sorted(common):
        print(f"  all modes: {note}")
    for name, mine in notes.items():
        for note in sorted(mine - common):
            print(f"  {name}: {note}")


def without_nan(value: Any) -> Any:
    """JSON has no NaN: percentiles of no samples become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value

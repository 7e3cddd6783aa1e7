#!/usr/bin/env python3
"""gnsqd side by side with a reference nsqd: the same loads, alternately, and the ratio.

Each mode starts a fresh server (fresh data dir, ``--mem-queue-size=1000000``, loopback port 0),
pre-creates its topic with channel ``ch``, runs one load and stops the server; the servers
alternate nsqd, gnsqd, nsqd, gnsqd... for ``--pairs`` pairs. The loads are NSQ's own Go tools
(``bench_writer``, ``bench_reader``, ``bench_pub``), ``wrk`` and ``ab`` for HTTP, and the
generators of scripts/bench.py for prefill and latency, identical for both servers. Printed:
each mode's median figure per server and the gnsqd/nsqd ratio (median of the pairs' ratios).

  .venv/bin/python scripts/compare_nsqd.py --nsq-bin /path/to/nsq/bin --pairs 2

Modes (``--modes``, comma separated; default all):
  mpub        bench_writer: MPUB batches of 200 x 200-byte messages, one connection per core
  consume     prefill --fill-count messages (pipelined MPUB), then bench_reader (RDY 2500);
              the same run gives ``rss``: RSS growth per queued message while they sit queued
  pub         bench_pub: PUB one message at a time, waiting for each OK
  crash-safe  bench_writer against ``gnsqd --crash-safe`` vs nsqd's default mode
  latency     p99 publish-to-deliver at --latency-rate msg/s (scripts/bench.py's generator)
  http-pub    wrk, 4 keep-alive connections, POST /pub with a 200-byte body
  http-pub-new  ab -c 4 (no keep-alive): a new connection per POST /pub
  http-mpub   wrk, 2 keep-alive connections, POST /mpub with 100 messages each
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the generators of bench.py live beside this file

import bench  # noqa: E402
from benchload import Crew, Job, Target, combine, produce, read_rss_kb  # noqa: E402
from benchwire import encode_mpub  # noqa: E402

CHANNEL = "ch"
MEM_QUEUE = "--mem-queue-size=1000000"
LISTEN_RE = re.compile(r"(TCP|HTTP): listening on (\S+):(\d+)")

# mode -> (unit, whether more is better, target ratio or None); "rss" comes from "consume".
FIGURES: dict[str, tuple[str, bool, float | None]] = {
    "mpub": ("msg/s", True, 0.5),
    "consume": ("msg/s", True, 1.0),
    "rss": ("B/msg", False, 2.0),
    "pub": ("msg/s", True, 0.5),
    "crash-safe": ("msg/s", True, 0.25),
    "latency": ("p99 ms", False, 1.0),
    "http-pub": ("msg/s", True, None),
    "http-pub-new": ("msg/s", True, None),
    "http-mpub": ("msg/s", True, None),
}
MODES = tuple(mode for mode in FIGURES if mode != "rss")

# -- parsing the tools' output (pure) ------------------------------------------------------------

GO_TOOL_RE = re.compile(r"duration: (\S+) - ([\d.]+)mb/s - ([\d.]+)ops/s")
WRK_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
WRK_ERRORS_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)")
AB_RE = re.compile(r"^Requests per second:\s+([\d.]+)", re.M)
AB_FAILED_RE = re.compile(r"^(?:Failed requests|Non-2xx responses):\s+(\d+)", re.M)


class CompareError(Exception):
    """A load could not run or its tool's output could not be read."""


def parse_go_tool(text: str) -> float:
    """ops/s from bench_writer/bench_reader/bench_pub's closing line."""
    match = GO_TOOL_RE.search(text)
    if not match:
        raise CompareError(f"no 'duration: ... ops/s' line in: {text.strip()[-300:]!r}")
    return float(match.group(3))


def parse_wrk(text: str) -> float:
    """Requests/sec from wrk; any non-2xx reply or socket error makes the figure void."""
    match = WRK_RE.search(text)
    if not match:
        raise CompareError(f"no 'Requests/sec' in wrk output: {text.strip()[-300:]!r}")
    errors = WRK_ERRORS_RE.search(text)
    if errors:
        raise CompareError(f"wrk saw errors: {errors.group(0)}")
    return float(match.group(1))


def parse_ab(text: str) -> float:
    """Requests per second from ab; failed or non-2xx requests make the figure void."""
    match = AB_RE.search(text)
    if not match:
        raise CompareError(f"no 'Requests per second' in ab output: {text.strip()[-300:]!r}")
    failed = sum(int(count) for count in AB_FAILED_RE.findall(text))
    if failed:
        raise CompareError(f"ab saw {failed} failed requests")
    return float(match.group(1))


def ratio(gnsqd: float, nsqd: float) -> float:
    return gnsqd / nsqd if nsqd else float("nan")


def summarize(runs: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """Rows per figure: median per server and the median over pairs of gnsqd/nsqd.

    `runs[figure]["nsqd"][i]` and `runs[figure]["gnsqd"][i]` form pair i.
    """
    rows = []
    for name, (unit, higher_better, target) in FIGURES.items():
        if name not in runs:
            continue
        ours, theirs = runs[name].get("gnsqd", []), runs[name].get("nsqd", [])
        pairs = [ratio(g, n) for g, n in zip(ours, theirs, strict=False)]
        med = statistics.median(pairs) if pairs else float("nan")
        met = None
        if target is not None and pairs:
            met = med >= target if higher_better else med <= target
        rows.append(
            {
                "figure": name,
                "unit": unit,
                "nsqd": statistics.median(theirs) if theirs else float("nan"),
                "gnsqd": statistics.median(ours) if ours else float("nan"),
                "pair_ratios": pairs,
                "ratio": med,
                "target": (">=" if higher_better else "<=") + f" {target}" if target else "",
                "met": met,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'figure':<13} {'unit':<7} {'nsqd':>11} {'gnsqd':>11} {'pairs':<17} "
    lines = [head + f"{'ratio':>6}  target", "-" * 78]
    for row in rows:
        pairs = " ".join(f"{r:.2f}" for r in row["pair_ratios"])
        met = {True: " ok", False: " MISSED", None: ""}[row["met"]]
        lines.append(
            f"{row['figure']:<13} {row['unit']:<7} {row['nsqd']:>11,.1f} {row['gnsqd']:>11,.1f} "
            f"{pairs:<17} {row['ratio']:>6.2f}  {row['target']}{met}"
        )
    return "\n".join(lines)


# -- the servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    """One daemon on loopback port 0 with a fresh data dir, stopped with SIGTERM."""

    name: str
    argv: list[str]
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="compare-nsqd-")))
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Target:
        data = self.tmp / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        log_path = self.tmp / "log"
        args = [
            *self.argv,
            "--tcp-address=127.0.0.1:0",
            "--http-address=127.0.0.1:0",
            f"--data-path={data}",
            MEM_QUEUE,
        ]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            ports = {kind: (host, int(port)) for kind, host, port in LISTEN_RE.findall(text)}
            if "TCP" in ports and "HTTP" in ports:
                return Target(ports["TCP"], ports["HTTP"], self.proc.pid, data)
            if self.proc.poll() is not None:
                raise CompareError(f"{self.name} exited: {text.strip()[-300:]}")
            time.sleep(0.05)
        self.stop()
        raise CompareError(f"{self.name} did not report its ports within 30 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        shutil.rmtree(self.tmp / "data", ignore_errors=True)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def http_post(address: tuple[str, int], path: str) -> None:
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("POST", path)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise CompareError(f"POST {path}: {reply.status} {body[:200]!r}")
    finally:
        conn.close()


def create_channel(target: Target, topic: str) -> None:
    assert target.http is not None
    http_post(target.http, f"/topic/create?topic={topic}")
    http_post(target.http, f"/channel/create?topic={topic}&channel={CHANNEL}")


# -- the loads -----------------------------------------------------------------------------------


def run_tool(argv: Sequence[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise CompareError(f"{Path(argv[0]).name} ran past {timeout:.0f} s") from err
    if done.returncode:
        raise CompareError(f"{Path(argv[0]).name} exit {done.returncode}: {done.stderr[-300:]}")
    return done.stdout + done.stderr


def go_tool(
    opts: argparse.Namespace, tool: str, target: Target, topic: str, runfor: float = 0.0
) -> float:
    argv = [
        str(Path(opts.nsq_bin) / tool),
        f"--nsqd-tcp-address={target.tcp[0]}:{target.tcp[1]}",
        f"--topic={topic}",
        f"--runfor={runfor or opts.duration}s",
    ]
    return parse_go_tool(run_tool(argv, opts.duration + 60))


def prefill(target: Target, count: int, topic: str) -> float:
    """MPUB `count` 200-byte messages over two pipelined connections; the count acknowledged."""
    body, batch = bench.make_body(200), 200
    frame = encode_mpub(topic, [body] * batch)
    per_conn = -(-count // (batch * 2))
    crew = Crew()
    for _ in range(2):
        crew.add(produce, Job(target.tcp, frame, batch, False, 4, 3600.0, per_conn))
    crew.start()
    crew.phase()
    return combine(crew.finish(600))["msgs"]


def load_consume(opts: argparse.Namespace, target: Target, topic: str) -> dict[str, float]:
    """Prefill, note the RSS growth per queued message, then drain with bench_reader."""
    create_channel(target, topic)
    before = read_rss_kb(target.pid) if target.pid else None
    filled = prefill(target, opts.fill_count, topic)
    time.sleep(0.5)  # let the last batches land in the channel
    after = read_rss_kb(target.pid) if target.pid else None
    rate = go_tool(opts, "bench_reader", target, topic, opts.consume_duration)
    out = {"consume": rate}
    if before is not None and after is not None and filled:
        out["rss"] = (after - before) * 1024 / filled
    if rate * opts.consume_duration >= 0.95 * filled:
        print(f"  note: bench_reader may have drained all {filled:.0f} messages", file=sys.stderr)
    return out


def load_latency(opts: argparse.Namespace, target: Target, topic: str) -> dict[str, float]:
    create_channel(target, topic)
    params = argparse.Namespace(
        channel=CHANNEL,
        rdy=2500,
        duration=opts.duration,
        latency_rate=opts.latency_rate,
        body_size=200,
    )
    result = bench.bench_latency(target, params, topic)
    if result.get("lost"):
        raise CompareError(f"latency: {result['lost']} messages not delivered")
    return {"latency": result["p99_ms"]}


def whole_seconds(opts: argparse.Namespace) -> int:
    """wrk and ab take whole seconds."""
    return max(1, round(opts.duration))


WRK_LUA = """
local count = tonumber(os.getenv("COMPARE_BODIES") or "1")
local body = string.rep("x", 200)
local bodies = {}
for i = 1, count do bodies[i] = body end
wrk.method = "POST"
wrk.body = table.concat(bodies, "\\n")
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def load_wrk(
    opts: argparse.Namespace, target: Target, topic: str, path: str, conns: int, bodies: int
) -> float:
    create_channel(target, topic)
    assert target.http is not None
    script = Path(tempfile.mkdtemp(prefix="compare-wrk-")) / "post.lua"
    script.write_text(WRK_LUA)
    url = "http://{}:{}{}?topic={}".format(*target.http, path, topic)
    argv = ["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{whole_seconds(opts)}s"]
    argv += ["-s", str(script)]
    env = {**os.environ, "COMPARE_BODIES": str(bodies)}
    try:
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=opts.duration + 60, env=env
        )
    finally:
        shutil.rmtree(script.parent, ignore_errors=True)
    return parse_wrk(done.stdout + done.stderr) * bodies


def load_ab(opts: argparse.Namespace, target: Target, topic: str) -> float:
    """A new connection per POST /pub (no keep-alive), 4 at a time."""
    create_channel(target, topic)
    assert target.http is not None
    with tempfile.NamedTemporaryFile(prefix="compare-ab-") as body:
        body.write(b"x" * 200)
        body.flush()
        url = "http://{}:{}/pub?topic={}".format(*target.http, topic)
        argv = ["ab", "-q", "-c", "4", "-t", str(whole_seconds(opts)), "-n", "10000000"]
        argv += ["-p", body.name, "-T", "application/octet-stream", url]
        return parse_ab(run_tool(argv, opts.duration + 60))


def load(mode: str) -> Callable[[argparse.Namespace, Target, str], dict[str, float]]:
    """The load of one mode: it returns its figures by name."""

    def tool(name: str) -> Callable[[argparse.Namespace, Target, str], dict[str, float]]:
        def run(opts: argparse.Namespace, target: Target, topic: str) -> dict[str, float]:
            create_channel(target, topic)
            return {mode: go_tool(opts, name, target, topic)}

        return run

    loads: dict[str, Callable[[argparse.Namespace, Target, str], dict[str, float]]] = {
        "mpub": tool("bench_writer"),
        "crash-safe": tool("bench_writer"),
        "pub": tool("bench_pub"),
        "consume": load_consume,
        "latency": load_latency,
        "http-pub": lambda o, t, topic: {"http-pub": load_wrk(o, t, topic, "/pub", 4, 1)},
        "http-mpub": lambda o, t, topic: {"http-mpub": load_wrk(o, t, topic, "/mpub", 2, 100)},
        "http-pub-new": lambda o, t, topic: {"http-pub-new": load_ab(o, t, topic)},
    }
    return loads[mode]


# -- the run -------------------------------------------------------------------------------------


def servers_for(mode: str, opts: argparse.Namespace) -> list[Server]:
    """nsqd then gnsqd; crash-safe mode runs gnsqd with --crash-safe against nsqd's default."""
    extra = ["--crash-safe"] if mode == "crash-safe" else []
    return [
        Server("nsqd", [str(Path(opts.nsq_bin) / "nsqd")]),
        Server("gnsqd", [opts.gnsqd, *opts.gnsqd_arg, *extra]),
    ]


def run_mode(mode: str, opts: argparse.Namespace, runs: dict[str, dict[str, list[float]]]) -> None:
    """Pairs of nsqd then gnsqd, each on a fresh server; figures appended to `runs`."""
    for pair in range(opts.pairs):
        for server in servers_for(mode, opts):
            try:
                target = server.start()
                figures = load(mode)(opts, target, "sub_bench")
            finally:
                server.cleanup()
            for name, value in figures.items():
                runs.setdefault(name, {}).setdefault(server.name, []).append(value)
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in figures.items())
            print(f"  {mode} pair {pair + 1} {server.name}: {shown}", file=sys.stderr)


def default_gnsqd() -> str:
    local = HERE.parent / ".venv" / "bin" / "gnsqd"
    return str(local) if local.exists() else (shutil.which("gnsqd") or str(local))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--nsq-bin",
        default=os.environ.get("NSQ_REFERENCE_BIN"),
        help="folder with nsqd, bench_writer, bench_reader, bench_pub (default $NSQ_REFERENCE_BIN)",
    )
    p.add_argument("--gnsqd", default=default_gnsqd(), help="gnsqd executable")
    p.add_argument("--gnsqd-arg", action="append", default=[], help="extra gnsqd flag (repeatable)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default all)")
    p.add_argument("--pairs", type=int, default=2, help="nsqd/gnsqd pairs per mode (default 2)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load (default 3)")
    p.add_argument(
        "--consume-duration",
        type=float,
        default=1.5,
        help="seconds bench_reader runs: short enough not to drain the fill (default 1.5)",
    )
    p.add_argument(
        "--fill-count", type=int, default=1_000_000, help="messages queued before consume"
    )
    p.add_argument("--latency-rate", type=float, default=10_000, help="latency mode's msg/s")
    p.add_argument("--json", metavar="FILE", help="also write the runs and table as JSON")
    opts = p.parse_args(argv)
    if not opts.nsq_bin:
        p.error("--nsq-bin (or NSQ_REFERENCE_BIN) is required")
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    unknown = [m for m in opts.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    runs: dict[str, dict[str, list[float]]] = {}
    failed = []
    for mode in opts.modes:
        try:
            run_mode(mode, opts, runs)
        except (CompareError, bench.BenchError, OSError) as err:
            failed.append(f"{mode}: {err}")
            print(f"  {mode} failed: {err}", file=sys.stderr)
    rows = summarize(runs)
    print(format_table(rows))
    for line in failed:
        print(f"FAILED {line}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"runs": runs, "rows": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

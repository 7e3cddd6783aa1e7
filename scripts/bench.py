#!/usr/bin/env python3
"""Load generator for nsqd-compatible servers (gnsqd, nsqd): TCP and HTTP publishing, consuming
and publish-to-deliver latency.

Built not to be the bottleneck: every connection runs in its own worker process on a raw
blocking socket, frames are encoded once before the clock starts, MPUB batches are pipelined,
and producer replies are counted as whole ``OK`` frames with one ``bytes.count`` per read
instead of being parsed one by one. ``--self-test`` points the same generators at a trivial
in-script sink server to show the rate they can drive on this machine.

Examples::

  .venv/bin/python scripts/bench.py --start-gnsqd --mode all --duration 5
  .venv/bin/python scripts/bench.py --tcp-address 127.0.0.1:4150 --http-address 127.0.0.1:4151
  .venv/bin/python scripts/bench.py --self-test --duration 3 --json selftest.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchwire beside this file

from benchload import (  # noqa: E402
    GNSQD,
    BenchError,
    Crew,
    Gnsqd,
    Job,
    Target,
    combine,
    consume,
    delete_topic,
    dir_bytes,
    parse_address,
    produce,
    publish_paced,
)
from benchreport import print_table, summarize, without_nan  # noqa: E402
from benchsink import sink_main  # noqa: E402
from benchwire import (  # noqa: E402
    MAGIC,
    OK_FRAME,
    encode_http_mpub_body,
    encode_http_post,
    encode_mpub,
    encode_pub,
    message_frame,
)

# -- modes ---------------------------------------------------------------------------------------

MODES = ("pub", "mpub", "http-pub", "http-mpub", "consume", "latency", "crash-safe")
SELF_TEST_MODES = ("pub", "mpub", "http-pub", "http-mpub", "consume")
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"


def make_body(size: int) -> bytes:
    return (b"0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[:size]


def producer_jobs(mode: str, target: Target, opts: argparse.Namespace, topic: str) -> list[Job]:
    """The worker jobs of a publishing mode, frames encoded up front."""
    body = make_body(opts.body_size)
    batch = [body] * opts.batch
    connections = opts.connections
    if mode == "pub":
        frame, per, inflight = encode_pub(topic, body), 1, 1
    elif mode == "mpub":
        frame, per, inflight = encode_mpub(topic, batch), opts.batch, opts.mpub_inflight
    else:
        if target.http is None:
            raise BenchError("no HTTP address")
        host = "{}:{}".format(*target.http)
        if mode == "http-pub":
            frame, per = encode_http_post(host, f"/pub?topic={topic}", body), 1
        else:
            path = f"/mpub?topic={topic}&binary=true"
            frame, per = encode_http_post(host, path, encode_http_mpub_body(batch)), opts.batch
        inflight = 1
    frames = -(-opts.count // (per * connections)) if opts.count else 0
    is_http = mode.startswith("http")
    address = target.http if is_http else target.tcp
    assert address is not None
    return [
        Job(address, frame, per, is_http, inflight, opts.duration, frames)
        for _ in range(connections)
    ]


def run_producers(jobs: Sequence[Job], timeout: float) -> dict[str, Any]:
    crew = Crew()
    for job in jobs:
        crew.add(produce, job)
    crew.start()
    crew.phase()
    return combine(crew.finish(timeout))


def mode_timeout(opts: argparse.Namespace) -> float:
    return opts.duration + 120 if not opts.count else 3600


def bench_producers(mode: str, target: Target, opts: argparse.Namespace, topic: str) -> dict:
    before = target.rss_kb()
    result = run_producers(producer_jobs(mode, target, opts, topic), mode_timeout(opts))
    after = target.rss_kb()
    if before is not None and after is not None and result["msgs"]:
        result["rss_per_queued_msg_b"] = (after - before) * 1024 / result["msgs"]
    return result


def bench_consume(
    target: Target, opts: argparse.Namespace, topic: str, fill: Callable[[], int] | None
) -> dict[str, Any]:
    """Consumers SUB first (so the channel exists), the topic is filled, then they drain it."""
    ctx = mp.get_context("fork")
    done, wanted = ctx.Value("q", 0), ctx.Value("q", opts.fill_count)
    crew = Crew(phases=2)
    for _ in range(opts.consumers):
        job = Job(
            target.tcp, topic=topic, channel=opts.channel, rdy=opts.rdy, duration=opts.duration
        )
        crew.add(consume, job, done, wanted)
    crew.start()
    crew.phase()
    before = target.rss_kb()
    try:
        filled = fill() if fill else opts.fill_count
    except BaseException:
        crew.abort()
        raise
    after = target.rss_kb()
    wanted.value = filled
    crew.phase()
    result = combine(crew.finish(opts.duration + 60))
    result["filled"] = filled
    if before is not None and after is not None and filled:
        result["rss_per_queued_msg_b"] = (after - before) * 1024 / filled
    return result


def fill_topic(target: Target, opts: argparse.Namespace, topic: str) -> int:
    """MPUB `--fill-count` messages over `--connections` connections; the count published."""
    fill_opts = argparse.Namespace(**{**vars(opts), "count": opts.fill_count, "duration": 3600})
    jobs = producer_jobs("mpub", target, fill_opts, topic)
    result = run_producers(jobs, 3600)
    print(
        f"  filled {result['msgs']} messages at {result['msg_per_s']:,.0f} msg/s", file=sys.stderr
    )
    return result["msgs"]


def bench_latency(target: Target, opts: argparse.Namespace, topic: str) -> dict[str, Any]:
    """One paced publisher and one consumer; latency = consumer's clock - body's send time."""
    ctx = mp.get_context("fork")
    done, sent = ctx.Value("q", 0), ctx.Value("q", 1 << 62)
    crew = Crew(phases=2)
    sub = Job(
        target.tcp,
        topic=topic,
        channel=opts.channel,
        rdy=opts.rdy,
        duration=opts.duration + 10,
        stamps=True,
    )
    crew.add(consume, sub, done, sent)
    pub = Job(
        target.tcp,
        topic=topic,
        duration=opts.duration,
        rate=opts.latency_rate,
        body_size=max(opts.body_size, 8),
    )
    crew.add(publish_paced, pub, sent)
    crew.start()
    crew.phase()
    crew.phase()
    outs = crew.finish(opts.duration + 60)
    publisher = next(out for out in outs if "throttled" in out)
    consumer = next(out for out in outs if out is not publisher)
    result = combine([consumer])
    result.update(
        published=publisher["msgs"],
        publish_rate=publisher["msgs"] / publisher["seconds"] if publisher["seconds"] else 0.0,
        throttled=publisher["throttled"],
        lost=publisher["msgs"] - consumer["msgs"],
    )
    return result


def run_mode(
    mode: str, target: Target, opts: argparse.Namespace, tag: str, delete: bool = False
) -> dict[str, Any]:
    """One mode on its own topic; the server's RSS is read before the topic is deleted."""
    topic = f"bench-{tag}-{mode}"[:64]
    try:
        if mode == "consume":
            result = bench_consume(target, opts, topic, lambda: fill_topic(target, opts, topic))
        elif mode == "latency":
            result = bench_latency(target, opts, topic)
        else:
            result = bench_producers(mode, target, opts, topic)
        result["rss_kb"] = target.rss_kb()
    finally:
        if delete:
            delete_topic(target.http, topic)
    return result


@contextmanager
def started_gnsqd(opts: argparse.Namespace, extra: Sequence[str] = ()) -> Iterator[Target]:
    """A fresh gnsqd; its exit status and log complaints are added to the target's notes."""
    server = Gnsqd(Path(opts.gnsqd), [*opts.gnsqd_arg, *extra])
    try:
        target = server.start()
        yield target
        server.stop()
        problems = server.log_problems()
        if server.exit_code:
            target.notes.append(f"gnsqd exited with status {server.exit_code} on SIGTERM")
        if problems:
            target.notes.append(
                f"gnsqd log: {len(problems)} warning/error lines, first: {problems[0][:200]}"
            )
    finally:
        server.stop()
        server.cleanup()


@contextmanager
def server_for(opts: argparse.Namespace, shared: Target | None) -> Iterator[Target]:
    """The target of one run: the --one-server gnsqd, a fresh one, or the given addresses."""
    if shared is not None:
        yield shared
    elif opts.start_gnsqd:
        with started_gnsqd(opts) as target:
            yield target
    else:
        yield Target(
            parse_address(opts.tcp_address),
            parse_address(opts.http_address) if opts.http_address else None,
            opts.server_pid,
        )


def run_once(
    mode: str, opts: argparse.Namespace, rep: int, shared: Target | None
) -> dict[str, Any]:
    """One run of one mode; failures and missing features become a status, not an exit."""
    tag = f"{os.getpid()}-{rep}"
    if mode == "crash-safe":
        return run_crash_safe(opts, tag)
    target: Target | None = None
    try:
        with server_for(opts, shared) as target:
            if mode.startswith("http") and target.http is None:
                raise BenchError("unavailable: no HTTP listener")
            # Servers bench.py stops itself need no cleaning up.
            delete = not opts.keep_topics and (shared is not None or not opts.start_gnsqd)
            result = run_mode(mode, target, opts, tag, delete)
        result["status"] = "ok"
    except (BenchError, OSError, threading.BrokenBarrierError) as err:
        result = {"status": str(err) or type(err).__name__}
    if target is not None and target.notes:
        result["notes"] = list(target.notes)
    return result


def run_crash_safe(opts: argparse.Namespace, tag: str) -> dict[str, dict[str, Any]]:
    """mpub and pub against a gnsqd started with --crash-safe: one result per inner mode."""
    if not opts.start_gnsqd:
        return dict.fromkeys(("mpub", "pub"), {"status": "unavailable: needs --start-gnsqd"})
    out: dict[str, dict[str, Any]] = {}
    try:
        with started_gnsqd(opts, extra=["--crash-safe"]) as target:
            assert target.data_path is not None
            for mode in ("mpub", "pub"):
                before = dir_bytes(target.data_path)
                out[mode] = result = run_mode(mode, target, opts, tag + "-cs")
                result["bytes_on_disk"] = on_disk = dir_bytes(target.data_path) - before
                # An fsync before OK leaves at least the bodies on disk while gnsqd still runs.
                result["status"] = (
                    "ok"
                    if on_disk >= result["msgs"] * opts.body_size
                    else (
                        f"unavailable: --crash-safe accepted but not implemented ({result['msgs']} "
                        f"msgs acknowledged, data path grew {on_disk} bytes before shutdown)"
                    )
                )
        for result in out.values():
            result["notes"] = target.notes
    except (BenchError, OSError, threading.BrokenBarrierError) as err:
        out = dict.fromkeys(("mpub", "pub"), {"status": f"unavailable: {err}"})
    return out


# -- the self-test sink --------------------------------------------------------------------------


@contextmanager
def sink_for(mode: str, opts: argparse.Namespace) -> Iterator[tuple[Target, list[Job]]]:
    """A sink process shaped for a mode's frames, and the mode's jobs aimed at it."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    address = listener.getsockname()[:2]
    target = Target(address, address)
    jobs = [] if mode == "consume" else producer_jobs(mode, target, opts, f"selftest-{mode}")
    if mode == "consume":
        frame = message_frame(b"0123456789abcdef", make_body(opts.body_size))
        args = (listener, 0, 1, b"", frame)
    else:
        reply = HTTP_OK if mode.startswith("http") else OK_FRAME
        args = (listener, 0 if jobs[0].http else len(MAGIC), len(jobs[0].frame), reply, b"")
    proc = mp.get_context("fork").Process(target=sink_main, args=args, daemon=True)
    proc.start()
    listener.close()
    try:
        yield target, jobs
    finally:
        proc.kill()
        proc.join()


def self_test_once(mode: str, opts: argparse.Namespace) -> dict[str, Any]:
    with sink_for(mode, opts) as (target, jobs):
        if mode == "consume":
            result = bench_consume(target, opts, "selftest", fill=None)
        else:
            result = run_producers(jobs, mode_timeout(opts))
    result["status"] = "ok"
    return result


# -- command line --------------------------------------------------------------------------------

MODE_HELP = """\
modes (--mode, comma-separated or repeated; 'all' = pub,mpub,http-pub,http-mpub,consume,latency,
crash-safe):
  pub         N connections (--connections), each sends PUB and waits for its OK;
              latency = per request
  mpub        N connections, MPUB batches of --batch messages, up to --mpub-inflight batches
              outstanding per connection; latency = per batch
  http-pub    N keep-alive HTTP/1.1 connections, POST /pub, one request at a time
  http-mpub   N keep-alive connections, POST /mpub?binary=true with --batch messages
  consume     --consumers connections SUB one channel (RDY --rdy) before the topic is pre-filled
              with --fill-count messages by MPUB, then drain it, FINs batched per read;
              RSS B/msg = server RSS growth per pre-filled message
  latency     one publisher PUBs at --latency-rate msg/s for --duration, bodies carry the send
              time; one consumer records publish-to-deliver latency (p50/p99/p99.9)
  crash-safe  mpub and pub against a gnsqd started with --crash-safe (needs --start-gnsqd);
              reported unavailable if gnsqd rejects the flag or persists nothing before OK

With --start-gnsqd each mode (and each --repeat) gets a fresh gnsqd unless --one-server, so RSS
figures start from an empty server. Publishing modes leave their messages queued in a topic
without channels, so 'RSS B/msg' = RSS growth / messages published. msg/s is messages
acknowledged (or consumed) / the longest worker's time; MB/s counts message bodies only;
'gen cores' = CPU seconds the generator's workers used / wall time (2 would saturate 2 cores).
--self-test runs pub, mpub, http-pub, http-mpub and consume against an in-script sink
(another process that answers OK per request by byte count, or streams message frames) to show
the rate the generator itself can drive on this machine.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        epilog=MODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--mode", action="append", metavar="MODE", help="mode(s) to run (see below); default all"
    )
    target = p.add_argument_group("target")
    target.add_argument(
        "--tcp-address",
        default="127.0.0.1:4150",
        metavar="HOST:PORT",
        help="TCP address of a running server (default %(default)s)",
    )
    target.add_argument(
        "--http-address",
        default="127.0.0.1:4151",
        metavar="HOST:PORT",
        help="HTTP address of a running server; '' = none (default %(default)s)",
    )
    target.add_argument(
        "--server-pid", type=int, metavar="PID", help="pid of the running server, to report its RSS"
    )
    target.add_argument(
        "--start-gnsqd",
        action="store_true",
        help="start gnsqd on port 0 with a temporary data path and "
        "--mem-queue-size=1000000; stop it with SIGTERM",
    )
    target.add_argument(
        "--gnsqd", default=str(GNSQD), metavar="PATH", help="gnsqd executable (default %(default)s)"
    )
    target.add_argument(
        "--gnsqd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra gnsqd argument, e.g. --gnsqd-arg=--mem-queue-size=10000 (repeatable)",
    )
    target.add_argument(
        "--one-server",
        action="store_true",
        help="with --start-gnsqd: one gnsqd for all modes instead of one each",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds per mode (default %(default)s)",
    )
    load.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="publish N messages per mode instead of running for --duration",
    )
    load.add_argument(
        "--body-size",
        type=int,
        default=200,
        metavar="BYTES",
        help="message body size (default %(default)s)",
    )
    load.add_argument(
        "--connections",
        type=int,
        default=2,
        metavar="N",
        help="publishing connections = worker processes (default %(default)s)",
    )
    load.add_argument(
        "--batch",
        type=int,
        default=200,
        metavar="B",
        help="messages per MPUB or /mpub (default %(default)s)",
    )
    load.add_argument(
        "--mpub-inflight",
        type=int,
        default=4,
        metavar="K",
        help="MPUB batches outstanding per connection (default %(default)s)",
    )
    load.add_argument(
        "--consumers",
        type=int,
        default=2,
        metavar="C",
        help="consumer connections in consume mode (default %(default)s)",
    )
    load.add_argument(
        "--rdy",
        type=int,
        default=2500,
        metavar="R",
        help="RDY count of each consumer (default %(default)s)",
    )
    load.add_argument(
        "--fill-count",
        type=int,
        default=200_000,
        metavar="M",
        help="messages pre-filled for consume mode (default %(default)s)",
    )
    load.add_argument(
        "--latency-rate",
        type=float,
        default=10_000,
        metavar="MSG/S",
        help="publish rate of latency mode (default %(default)s)",
    )
    load.add_argument("--channel", default="ch", help="channel name (default %(default)s)")
    load.add_argument(
        "--keep-topics",
        action="store_true",
        help="do not POST /topic/delete for bench topics on a running server",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run each mode K times; report medians and the msg/s spread",
    )
    out.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    out.add_argument(
        "--self-test",
        action="store_true",
        help="run the generators against an in-script sink instead of a server",
    )
    return p


def selected_modes(opts: argparse.Namespace, choices: Sequence[str]) -> list[str]:
    names = [n.strip() for arg in (opts.mode or ["all"]) for n in arg.split(",") if n.strip()]
    if "all" in names:
        return list(choices)
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise SystemExit(
            f"bench.py: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)} or all"
        )
    return [n for n in choices if n in names]


def run_modes(
    opts: argparse.Namespace, modes: Sequence[str], shared: Target | None
) -> dict[str, dict[str, Any]]:
    """Every mode --repeat times: mode name -> summary (crash-safe gives two rows)."""
    summaries: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs = []
        for rep in range(opts.repeat):
            print(f"{mode} run {rep + 1}/{opts.repeat} ...", file=sys.stderr, flush=True)
            if not opts.self_test:
                runs.append(run_once(mode, opts, rep, shared))
                continue
            try:
                runs.append(self_test_once(mode, opts))
            except (BenchError, OSError, threading.BrokenBarrierError) as err:
                runs.append({"status": f"failed: {err}"})
        if mode == "crash-safe":
            for inner in ("mpub", "pub"):
                summaries[f"{mode}:{inner}"] = summarize([r[inner] for r in runs], opts.body_size)
        else:
            summaries[mode] = summarize(runs, opts.body_size)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    opts.http_address = opts.http_address or None
    modes = selected_modes(opts, SELF_TEST_MODES if opts.self_test else MODES)
    report: dict[str, Any] = {"config": dict(vars(opts))}
    if opts.one_server and opts.start_gnsqd and not opts.self_test:
        with started_gnsqd(opts) as shared:
            report["modes"] = run_modes(opts, modes, shared)
        report["server_notes"] = shared.notes
    else:
        report["modes"] = run_modes(opts, modes, None)
    where = (
        "self-test sink (generator ceiling)"
        if opts.self_test
        else ("gnsqd started by bench.py" if opts.start_gnsqd else f"server at {opts.tcp_address}")
    )
    print_table(
        f"{where}; {opts.body_size}-byte bodies, {opts.duration:g} s per mode",
        list(report["modes"].items()),
        opts.repeat,
    )
    for note in report.get("server_notes", []):
        print(f"  server: {note}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(without_nan(report), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

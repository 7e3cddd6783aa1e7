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
import http.client
import json
import math
import multiprocessing as mp
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GNSQD = REPO / ".venv" / "bin" / "gnsqd"

# -- wire encoding (PROTOCOL.md 1.2, 1.3, 2.2) -------------------------------------------------

MAGIC = b"  V2"
FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2
OK_FRAME = struct.pack(">ii", 6, FRAME_RESPONSE) + b"OK"
HEARTBEAT = b"_heartbeat_"
NOP = b"NOP\n"
FIN_SIZE = len(b"FIN 0123456789abcdef\n")
RECV_SIZE = 1 << 20
# A message frame: [int32 size][int32 type=2][int64 ts][uint16 attempts][16-byte id][body]
MSG_ID_AT, MSG_BODY_AT = 18, 34


def encode_pub(topic: str, body: bytes) -> bytes:
    """``PUB <topic>\\n[int32 size][body]``."""
    return b"PUB %s\n%s%s" % (topic.encode(), struct.pack(">i", len(body)), body)


def encode_mpub(topic: str, bodies: Sequence[bytes]) -> bytes:
    """``MPUB <topic>\\n[int32 body size][int32 count]([int32 size][body])*count``."""
    records = b"".join(struct.pack(">i", len(body)) + body for body in bodies)
    header = struct.pack(">ii", len(records) + 4, len(bodies))
    return b"MPUB %s\n%s%s" % (topic.encode(), header, records)


def encode_sub(topic: str, channel: str) -> bytes:
    return b"SUB %s %s\n" % (topic.encode(), channel.encode())


def encode_rdy(count: int) -> bytes:
    return b"RDY %d\n" % count


def encode_fins(ids: Sequence[bytes]) -> bytes:
    """``FIN <id>\\n`` for every message ID, as one buffer for one send."""
    return b"FIN " + b"\nFIN ".join(ids) + b"\n" if ids else b""


def encode_http_post(host: str, path: str, body: bytes) -> bytes:
    """A keep-alive HTTP/1.1 POST request."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def encode_http_mpub_body(bodies: Sequence[bytes]) -> bytes:
    """The ``/mpub?binary=true`` body: ``[int32 count]([int32 size][body])*count``."""
    return struct.pack(">i", len(bodies)) + b"".join(
        struct.pack(">i", len(body)) + body for body in bodies
    )


def message_frame(msg_id: bytes, body: bytes, timestamp: int = 0, attempts: int = 1) -> bytes:
    """A server message frame (used by the self-test sink)."""
    data = struct.pack(">qH", timestamp, attempts) + msg_id + body
    return struct.pack(">ii", len(data) + 4, FRAME_MESSAGE) + data


# -- reply parsing -------------------------------------------------------------------------------


class ServerError(Exception):
    """The server answered with an error frame or a non-200 HTTP status."""


def split_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete frames in data as (type, payload), and the incomplete tail."""
    frames = []
    off, end = 0, len(data)
    while off + 8 <= end:
        size, frame_type = struct.unpack_from(">ii", data, off)
        stop = off + 4 + size
        if stop > end:
            break
        frames.append((frame_type, data[off + 8 : stop]))
        off = stop
    return frames, data[off:]


def count_oks(data: bytes) -> tuple[int, int, bytes]:
    """(OK frames, heartbeats, incomplete tail) in data; an error frame raises ServerError.

    The usual case, nothing but OKs, costs one ``bytes.count``: non-overlapping 10-byte matches
    whose lengths add up to ``len(data)`` can only tile it exactly.
    """
    oks = data.count(OK_FRAME)
    if oks * len(OK_FRAME) == len(data):
        return oks, 0, b""
    frames, tail = split_frames(data)
    oks = heartbeats = 0
    for frame_type, payload in frames:
        if frame_type == FRAME_ERROR:
            raise ServerError(payload.decode(errors="replace"))
        if payload == b"OK":
            oks += 1
        elif payload == HEARTBEAT:
            heartbeats += 1
    return oks, heartbeats, tail


def scan_messages(data: bytes, stamps: array | None = None) -> tuple[list[bytes], int, bytes]:
    """(message IDs, heartbeats, incomplete tail) of a consumer's read.

    With ``stamps``, the int64 send time each body starts with is appended to it.
    """
    ids: list[bytes] = []
    heartbeats = 0
    off, end = 0, len(data)
    unpack = struct.unpack_from
    while off + 8 <= end:
        size, frame_type = unpack(">ii", data, off)
        stop = off + 4 + size
        if stop > end:
            break
        if frame_type == FRAME_MESSAGE:
            ids.append(data[off + MSG_ID_AT : off + MSG_BODY_AT])
            if stamps is not None:
                stamps.append(unpack(">q", data, off + MSG_BODY_AT)[0])
        elif frame_type == FRAME_ERROR:
            raise ServerError(data[off + 8 : stop].decode(errors="replace"))
        elif data[off + 8 : stop] == HEARTBEAT:
            heartbeats += 1
        off = stop
    return ids, heartbeats, data[off:]


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def parse_http_response(data: bytes) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete response in data, or None."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    match = _CONTENT_LENGTH.search(data, 0, head_end + 2)
    if match is None:
        raise ServerError(f"response without Content-Length: {data[:head_end]!r}")
    used = head_end + 4 + int(match.group(1))
    if len(data) < used:
        return None
    return int(data[9:12]), data[head_end + 4 : used], used


class OKReader:
    """Counts OK replies on a producer connection and answers heartbeats with NOP."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tail = b""

    def read(self) -> int:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        if self.tail:
            data = self.tail + data
        oks, heartbeats, self.tail = count_oks(data)
        if heartbeats:
            self.sock.sendall(NOP * heartbeats)
        return oks


class HTTPReader:
    """Reads keep-alive HTTP responses; anything but 200 raises ServerError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> int:
        count = 0
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data
        while (parsed := parse_http_response(self.buf)) is not None:
            status, body, used = parsed
            if status != 200:
                raise ServerError(f"HTTP {status} {body[:200]!r}")
            self.buf = self.buf[used:]
            count += 1
        return count


# -- statistics ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolating linearly like numpy."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def latency_figures(samples: Sequence[float]) -> dict[str, float]:
    """p50/p99/p99.9 in milliseconds of latencies given in seconds."""
    ordered = sorted(samples)
    return {f"{name}_ms": percentile(ordered, q) * 1e3 for name, q in LATENCY_POINTS}


LATENCY_POINTS = (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))

# -- worker processes ----------------------------------------------------------------------------


@dataclass
class Job:
    """One worker process: a connection, what it sends, and when it stops."""

    address: tuple[str, int]
    frame: bytes = b""  # pre-encoded request, sent as is
    msgs_per_frame: int = 1
    http: bool = False
    inflight: int = 1  # requests outstanding on the connection
    duration: float = 10.0
    frames: int = 0  # frames to send; 0 = until the duration is over
    topic: str = ""
    channel: str = ""
    rdy: int = 2500
    body_size: int = 200
    rate: float = 0.0  # messages per second (latency publisher)
    stamps: bool = False  # consumer: record publish-to-deliver latency


def connect(address: tuple[str, int], nsq: bool) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if nsq:
        sock.sendall(MAGIC)
    return sock


def produce(job: Job, sync: Callable[[], None]) -> dict[str, Any]:
    """PUB, MPUB, /pub or /mpub as fast as replies allow, `job.inflight` requests outstanding."""
    sock = connect(job.address, nsq=not job.http)
    reader = HTTPReader(sock) if job.http else OKReader(sock)
    frame, window, limit = job.frame, job.inflight, job.frames
    sent_at: deque[float] = deque()
    latencies = array("d")
    sent = acked = 0
    clock = time.perf_counter
    sync()
    start = clock()
    deadline = start + job.duration
    while True:
        if clock() < deadline and (not limit or sent < limit):
            while len(sent_at) < window and (not limit or sent < limit):
                sock.sendall(frame)
                sent_at.append(clock())
                sent += 1
        if not sent_at:
            break
        replies = reader.read()
        now = clock()
        for _ in range(replies):
            latencies.append(now - sent_at.popleft())
        acked += replies
    seconds = clock() - start
    sock.close()
    return {"msgs": acked * job.msgs_per_frame, "seconds": seconds, "latency": latencies}


def consume(job: Job, done: Any, target: Any, sync: Callable[[], None]) -> dict[str, Any]:
    """SUB, RDY, and FIN everything read, one send per read, until `target` messages are in."""
    sock = connect(job.address, nsq=True)
    sock.sendall(encode_sub(job.topic, job.channel))
    reader = OKReader(sock)
    while not reader.read():
        pass
    sync()  # subscribed: the channel exists
    sync()  # go: the topic is filled
    stamps = array("q") if job.stamps else None
    latencies = array("d")
    got, tail = 0, b""
    start = last = time.perf_counter()
    deadline = start + job.duration
    sock.sendall(encode_rdy(job.rdy))
    while done.value < target.value and time.perf_counter() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        data = sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        if tail:
            data = tail + data
        ids, heartbeats, tail = scan_messages(data, stamps)
        if stamps:
            now = time.monotonic_ns()
            latencies.extend((now - stamp) / 1e9 for stamp in stamps)
            del stamps[:]
        out = encode_fins(ids) + NOP * heartbeats
        if out:
            sock.sendall(out)
        if ids:
            got += len(ids)
            last = time.perf_counter()
            with done.get_lock():
                done.value += len(ids)
    sock.close()
    return {"msgs": got, "seconds": last - start, "latency": latencies}


def publish_paced(job: Job, sent_total: Any, sync: Callable[[], None]) -> dict[str, Any]:
    """PUB at `job.rate` msg/s, each body starting with its int64 monotonic send time (ns).

    Sends are pipelined and made once a millisecond or so; the publisher skips a send while a
    second's worth of messages is unacknowledged. Passes two phases, like the consumer.
    """
    sock = connect(job.address, nsq=True)
    reader = OKReader(sock)
    sync()
    prefix = b"PUB %s\n%s" % (job.topic.encode(), struct.pack(">i", job.body_size))
    pad = b"x" * (job.body_size - 8)
    max_unacked = max(int(job.rate), 1)
    sent = acked = throttled = 0
    clock = time.perf_counter
    sync()
    start = clock()
    while (elapsed := clock() - start) < job.duration:
        due = int(elapsed * job.rate) + 1 - sent
        if due > 0:
            if sent - acked < max_unacked:
                sock.sendall((prefix + struct.pack(">q", time.monotonic_ns()) + pad) * due)
                sent += due
            else:
                throttled += 1
        wait = max(start + sent / job.rate - clock(), 0.001)
        if select.select([sock], [], [], wait)[0]:
            acked += reader.read()
    seconds = clock() - start
    sent_total.value = sent
    sock.settimeout(10)
    while acked < sent:
        acked += reader.read()
    sock.close()
    return {"msgs": acked, "seconds": seconds, "throttled": throttled, "latency": array("d")}


class Crew:
    """Worker processes that start together: each passes `phases` barriers with the parent."""

    def __init__(self, phases: int = 1) -> None:
        self.ctx = mp.get_context("fork")
        self.phases = phases
        self.work: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = []
        self.procs: list[Any] = []
        self.barriers: list[Any] = []
        self.passed = 0
        self.results = self.ctx.Queue()

    def add(self, func: Callable[..., dict[str, Any]], *args: Any) -> None:
        self.work.append((func, args))

    def start(self) -> None:
        self.barriers = [self.ctx.Barrier(len(self.work) + 1) for _ in range(self.phases)]
        for func, args in self.work:
            proc = self.ctx.Process(target=self._main, args=(func, args), daemon=True)
            proc.start()
            self.procs.append(proc)

    def _main(self, func: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
        passed = iter(self.barriers)
        try:
            cpu = time.process_time()
            out = func(*args, lambda: next(passed).wait(600))
            out["cpu"] = time.process_time() - cpu
            out["latency"] = out["latency"].tobytes()
        except BaseException as err:
            self.abort()
            out = {"error": f"{type(err).__name__}: {err}"}
        self.results.put(out)

    def phase(self) -> None:
        """Wait at the next barrier with the workers; a broken barrier reports their errors."""
        try:
            self.barriers[self.passed].wait(60)
        except threading.BrokenBarrierError:
            self.abort()
            self.finish(timeout=5)
            raise
        self.passed += 1

    def abort(self) -> None:
        for barrier in self.barriers:
            barrier.abort()

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        """Every worker's result; a failed worker raises BenchError."""
        outs = []
        deadline = time.monotonic() + timeout
        try:
            for _ in self.procs:
                outs.append(self.results.get(timeout=max(deadline - time.monotonic(), 0.1)))
        except Exception:
            outs.append({"error": "a worker did not report in time"})
        for proc in self.procs:
            proc.join(1)
            if proc.is_alive():
                proc.kill()
        errors = sorted({out["error"] for out in outs if "error" in out})
        if errors:
            raise BenchError("; ".join(errors))
        for out in outs:
            out["latency"] = array("d", out["latency"])
        return outs


class BenchError(Exception):
    """A mode could not run (a worker failed, or the server is missing a feature)."""


def combine(outs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over workers: messages, the longest worker's time, pooled latencies."""
    latencies: list[float] = []
    for out in outs:
        latencies.extend(out["latency"])
    msgs = sum(out["msgs"] for out in outs)
    seconds = max((out["seconds"] for out in outs), default=0.0)
    return {
        "msgs": msgs,
        "seconds": seconds,
        "msg_per_s": msgs / seconds if seconds > 0 else 0.0,
        # CPU the generator's workers used, in cores: how close it is to being the bottleneck
        "gen_cores": sum(out["cpu"] for out in outs) / seconds if seconds > 0 else 0.0,
        **latency_figures(latencies),
    }


# -- the server under test -----------------------------------------------------------------------

LISTEN_RE = re.compile(r"(TCP|HTTP): listening on (\S+):(\d+)")


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def read_rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@dataclass
class Target:
    """Where the generators connect, and the server's pid when its RSS can be read."""

    tcp: tuple[str, int]
    http: tuple[str, int] | None
    pid: int | None = None
    data_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def rss_kb(self) -> int | None:
        return read_rss_kb(self.pid) if self.pid else None


class Gnsqd:
    """`.venv/bin/gnsqd` on port 0 with a temporary data path, stopped with SIGTERM."""

    http_broken: str | None = None  # why gnsqd could not start with HTTP, once seen

    def __init__(self, binary: Path, extra_args: Sequence[str]) -> None:
        self.binary = binary
        self.extra_args = list(extra_args)
        # The caller may set the HTTP address itself (or none, with --http-address=).
        self.own_http = not any(a.lstrip("-").startswith("http-address") for a in extra_args)
        self.tmp = Path(tempfile.mkdtemp(prefix="gnsqd-bench-"))
        self.log_path = self.tmp / "gnsqd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self) -> Target:
        """Start with HTTP; if only that fails, remember it for later runs and go without."""
        if not self.own_http:
            return self._start(http=None)
        if Gnsqd.http_broken is None:
            try:
                return self._start(http=True)
            except BenchError as err:
                target = self._start(http=False)  # raises when gnsqd fails for another reason
                Gnsqd.http_broken = str(err)
        else:
            target = self._start(http=False)
        target.notes.append(f"HTTP disabled: gnsqd failed to start with it ({Gnsqd.http_broken})")
        return target

    def _start(self, http: bool | None) -> Target:
        """Run gnsqd and read its ports from its log; `http` None = as the extra args say."""
        data = self.tmp / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        args = [str(self.binary), "--tcp-address=127.0.0.1:0", f"--data-path={data}",
                "--mem-queue-size=1000000", *self.extra_args]
        if http is not None:
            args.insert(2, "--http-address=127.0.0.1:0" if http else "--http-address=")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        ports: dict[str, tuple[str, int]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            for kind, host, port in LISTEN_RE.findall(text):
                ports[kind] = (host.strip("[]"), int(port))
            if "TCP" in ports and ("HTTP" in ports or http is not True):
                return Target(ports["TCP"], ports.get("HTTP"), self.proc.pid, data)
            if (code := self.proc.poll()) is not None:
                tail = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
                self.proc = None
                raise BenchError(f"exit status {code}: {tail[0].strip()}")
            time.sleep(0.05)
        self.stop()
        raise BenchError("gnsqd did not report its listening ports within 30 s")

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or worse, and traceback lines, for the report."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        keys = ("WARN", "ERROR", "FATAL", "Traceback", "Error:", "Exception")
        return [line for line in lines if any(key in line for key in keys)]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def delete_topic(address: tuple[str, int] | None, topic: str) -> None:
    """Best effort, so a long run against one server does not keep every bench topic."""
    if address is None:
        return
    try:
        conn = http.client.HTTPConnection(*address, timeout=10)
        conn.request("POST", f"/topic/delete?topic={topic}")
        conn.getresponse().read()
        conn.close()
    except OSError:
        pass


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


def bench_consume(target: Target, opts: argparse.Namespace, topic: str,
                  fill: Callable[[], int] | None) -> dict[str, Any]:
    """Consumers SUB first (so the channel exists), the topic is filled, then they drain it."""
    ctx = mp.get_context("fork")
    done, wanted = ctx.Value("q", 0), ctx.Value("q", opts.fill_count)
    crew = Crew(phases=2)
    for _ in range(opts.consumers):
        job = Job(target.tcp, topic=topic, channel=opts.channel, rdy=opts.rdy,
                  duration=opts.duration)
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
    print(f"  filled {result['msgs']} messages at {result['msg_per_s']:,.0f} msg/s",
          file=sys.stderr)
    return result["msgs"]


def bench_latency(target: Target, opts: argparse.Namespace, topic: str) -> dict[str, Any]:
    """One paced publisher and one consumer; latency = consumer's clock - body's send time."""
    ctx = mp.get_context("fork")
    done, sent = ctx.Value("q", 0), ctx.Value("q", 1 << 62)
    crew = Crew(phases=2)
    sub = Job(target.tcp, topic=topic, channel=opts.channel, rdy=opts.rdy,
              duration=opts.duration + 10, stamps=True)
    crew.add(consume, sub, done, sent)
    pub = Job(target.tcp, topic=topic, duration=opts.duration, rate=opts.latency_rate,
              body_size=max(opts.body_size, 8))
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


def run_mode(mode: str, target: Target, opts: argparse.Namespace, tag: str,
             delete: bool = False) -> dict[str, Any]:
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
            target.notes.append(f"gnsqd log: {len(problems)} warning/error lines, first: "
                                f"{problems[0][:200]}")
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
        yield Target(parse_address(opts.tcp_address),
                     parse_address(opts.http_address) if opts.http_address else None,
                     opts.server_pid)


def run_once(mode: str, opts: argparse.Namespace, rep: int, shared: Target | None
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
                result["status"] = "ok" if on_disk >= result["msgs"] * opts.body_size else (
                    f"unavailable: --crash-safe accepted but not implemented ({result['msgs']} "
                    f"msgs acknowledged, data path grew {on_disk} bytes before shutdown)"
                )
        for result in out.values():
            result["notes"] = target.notes
    except (BenchError, OSError, threading.BrokenBarrierError) as err:
        out = dict.fromkeys(("mpub", "pub"), {"status": f"unavailable: {err}"})
    return out


# -- the self-test sink --------------------------------------------------------------------------


def sink_main(listener: socket.socket, skip: int, request_size: int, reply: bytes,
              message: bytes) -> None:
    """Answer `reply` per `request_size` bytes after `skip`; with `message`, play a channel."""
    def serve(conn: socket.socket) -> None:
        try:
            if message:
                sink_channel(conn, message)
            else:
                sink_replies(conn, skip, request_size, reply)
        except OSError:
            pass  # the generator hung up mid-stream
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def sink_replies(conn: socket.socket, skip: int, request_size: int, reply: bytes) -> None:
    received, answered = -skip, 0
    while data := conn.recv(RECV_SIZE):
        received += len(data)
        due = max(received, 0) // request_size - answered
        if due > 0:
            conn.sendall(reply * due)
            answered += due


def sink_channel(conn: socket.socket, message: bytes) -> None:
    """OK the SUB, then stream `message` frames while in-flight < RDY; FINs are counted."""
    buf = b""
    while b"\nRDY " not in buf or not buf.endswith(b"\n"):
        data = conn.recv(RECV_SIZE)
        if not data:
            return
        if b"SUB " in data:
            conn.sendall(OK_FRAME)
        buf += data
    rdy = int(buf.rsplit(b"RDY ", 1)[1])
    conn.setblocking(False)
    in_flight, fin_bytes, pending = 0, 0, memoryview(b"")
    while True:
        writable = [conn] if pending or in_flight < rdy else []
        readable, writable, _ = select.select([conn], writable, [], 1)
        if readable:
            data = conn.recv(RECV_SIZE)
            if not data:
                return
            fin_bytes += len(data)
            in_flight -= fin_bytes // FIN_SIZE
            fin_bytes %= FIN_SIZE
        if writable:
            if not pending:
                count = min(rdy - in_flight, 512)
                pending = memoryview(message * count)
                in_flight += count
            pending = pending[conn.send(pending):]


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


# -- report --------------------------------------------------------------------------------------

FIGURES = (
    "msg_per_s", "gen_cores", "p50_ms", "p99_ms", "p999_ms", "rss_kb", "rss_per_queued_msg_b",
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
    head = (f"{'mode':<16}{'msg/s':>11}{spread:>10}{'MB/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'p99.9 ms':>10}{'RSS MB':>8}{'RSS B/msg':>10}{'gen cores':>10}")
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
            mine.add(f"publisher: {last['published']} sent at {last['publish_rate']:,.0f} "
                     f"msg/s, {last['lost']} not delivered, throttled {last['throttled']}x")
        if "filled" in last:
            mine.add(f"drained {last['msgs']} of {last['filled']} pre-filled messages")
    common = set.intersection(*notes.values()) if len(notes) > 1 else set()
    for note in sorted(common):
        print(f"  all modes: {note}")
    for name, mine in notes.items():
        for note in sorted(mine - common):
            print(f"  {name}: {note}")


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
        prog="bench.py", description=__doc__.split("\n\n")[0],
        epilog=MODE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", action="append", metavar="MODE",
                   help="mode(s) to run (see below); default all")
    target = p.add_argument_group("target")
    target.add_argument("--tcp-address", default="127.0.0.1:4150", metavar="HOST:PORT",
                        help="TCP address of a running server (default %(default)s)")
    target.add_argument("--http-address", default="127.0.0.1:4151", metavar="HOST:PORT",
                        help="HTTP address of a running server; '' = none (default %(default)s)")
    target.add_argument("--server-pid", type=int, metavar="PID",
                        help="pid of the running server, to report its RSS")
    target.add_argument("--start-gnsqd", action="store_true",
                        help="start gnsqd on port 0 with a temporary data path and "
                             "--mem-queue-size=1000000; stop it with SIGTERM")
    target.add_argument("--gnsqd", default=str(GNSQD), metavar="PATH",
                        help="gnsqd executable (default %(default)s)")
    target.add_argument("--gnsqd-arg", action="append", default=[], metavar="ARG",
                        help="extra gnsqd argument, e.g. --gnsqd-arg=--mem-queue-size=10000 "
                             "(repeatable)")
    target.add_argument("--one-server", action="store_true",
                        help="with --start-gnsqd: one gnsqd for all modes instead of one each")
    load = p.add_argument_group("load")
    load.add_argument("--duration", type=float, default=10.0, metavar="S",
                      help="seconds per mode (default %(default)s)")
    load.add_argument("--count", type=int, default=0, metavar="N",
                      help="publish N messages per mode instead of running for --duration")
    load.add_argument("--body-size", type=int, default=200, metavar="BYTES",
                      help="message body size (default %(default)s)")
    load.add_argument("--connections", type=int, default=2, metavar="N",
                      help="publishing connections = worker processes (default %(default)s)")
    load.add_argument("--batch", type=int, default=200, metavar="B",
                      help="messages per MPUB or /mpub (default %(default)s)")
    load.add_argument("--mpub-inflight", type=int, default=4, metavar="K",
                      help="MPUB batches outstanding per connection (default %(default)s)")
    load.add_argument("--consumers", type=int, default=2, metavar="C",
                      help="consumer connections in consume mode (default %(default)s)")
    load.add_argument("--rdy", type=int, default=2500, metavar="R",
                      help="RDY count of each consumer (default %(default)s)")
    load.add_argument("--fill-count", type=int, default=200_000, metavar="M",
                      help="messages pre-filled for consume mode (default %(default)s)")
    load.add_argument("--latency-rate", type=float, default=10_000, metavar="MSG/S",
                      help="publish rate of latency mode (default %(default)s)")
    load.add_argument("--channel", default="ch", help="channel name (default %(default)s)")
    load.add_argument("--keep-topics", action="store_true",
                      help="do not POST /topic/delete for bench topics on a running server")
    out = p.add_argument_group("output")
    out.add_argument("--repeat", type=int, default=1, metavar="K",
                     help="run each mode K times; report medians and the msg/s spread")
    out.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    out.add_argument("--self-test", action="store_true",
                     help="run the generators against an in-script sink instead of a server")
    return p


def selected_modes(opts: argparse.Namespace, choices: Sequence[str]) -> list[str]:
    names = [n.strip() for arg in (opts.mode or ["all"]) for n in arg.split(",") if n.strip()]
    if "all" in names:
        return list(choices)
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise SystemExit(f"bench.py: unknown mode(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(MODES)} or all")
    return [n for n in choices if n in names]


def run_modes(opts: argparse.Namespace, modes: Sequence[str], shared: Target | None
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
    where = "self-test sink (generator ceiling)" if opts.self_test else (
        "gnsqd started by bench.py" if opts.start_gnsqd else f"server at {opts.tcp_address}")
    print_table(f"{where}; {opts.body_size}-byte bodies, {opts.duration:g} s per mode",
                list(report["modes"].items()), opts.repeat)
    for note in report.get("server_notes", []):
        print(f"  server: {note}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(without_nan(report), indent=2, default=str) + "\n")
    return 0


def without_nan(value: Any) -> Any:
    """JSON has no NaN: percentiles of no samples become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())

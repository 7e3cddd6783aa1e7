"""The bench's load: worker processes that publish and consume, and the server under test."""

from __future__ import annotations

import http.client
import multiprocessing as mp
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchwire import (  # bench.py puts this folder on sys.path
    MAGIC,
    NOP,
    RECV_SIZE,
    HTTPReader,
    OKReader,
    encode_fins,
    encode_rdy,
    encode_sub,
    latency_figures,
    scan_messages,
)

GNSQD = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "gnsqd"

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
        args = [
            str(self.binary),
            "--tcp-address=127.0.0.1:0",
            f"--data-path={data}",
            "--mem-queue-size=1000000",
            *self.extra_args,
        ]
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

"""Helpers for the command-line tools' tests: the installed console scripts as processes, real
gnsqd/gnsqlookupd processes (restartable on the same ports), and HTTP pokes at them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .servers import BIN, ServerProcess


class Tool:
    """One run of a tool's console script, its stdout and stderr collected as they come."""

    def __init__(self, program: str, *args: str, stdin: bool = False, cwd=None) -> None:
        self.args = [str(BIN / program), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._readers = [
            threading.Thread(target=self._collect, args=pair, daemon=True)
            for pair in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, into: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            into += chunk

    def lines(self) -> list[bytes]:
        return bytes(self.stdout).splitlines()

    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.args[0]} did not exit:\n{self.err()}") from None
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass

    def stop(self) -> None:
        """Kill it if still running (a test's cleanup) and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._close_pipes()


class Nsqd:
    """A gnsqd process (or Go's nsqd, given its path) that can be stopped and started again on
    the same ports and data path."""

    def __init__(self, data_path: Path, *flags: str, binary: str | None = None) -> None:
        self.data_path = data_path
        self.flags = flags
        self.binary = binary
        self.tcp_port = self.http_port = 0
        self.proc: ServerProcess | None = None

    def start(self) -> Nsqd:
        self.data_path.mkdir(parents=True, exist_ok=True)  # Go's nsqd does not create it
        proc = ServerProcess(
            "gnsqd",
            f"--tcp-address=127.0.0.1:{self.tcp_port}",
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--data-path={self.data_path}",
            "--broadcast-address=127.0.0.1",
            *self.flags,
        )
        if self.binary:
            proc.args[0] = self.binary
            proc.args.append("--https-address=")  # no TLS listener for Go's nsqd either
        deadline = time.monotonic() + 10
        while True:  # the old process's ports may take a moment to be free again
            try:
                self.proc = proc.start()
                break
            except RuntimeError:
                if time.monotonic() > deadline or not self.tcp_port:
                    raise
                time.sleep(0.2)
        self.tcp_port, self.http_port = self.proc.tcp_port, self.proc.http_port
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def post(self, path: str, body: bytes = b"", **params: str) -> bytes:
        url = f"http://{self.http}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as reply:
            return reply.read()

    def create_channel(self, topic: str, channel: str) -> None:
        """The topic, then the channel (nsqd wants an existing topic for /channel/create)."""
        self.post("/topic/create", topic=topic)
        self.post("/channel/create", topic=topic, channel=channel)

    def mpub(self, topic: str, bodies: list[bytes], batch: int = 5000) -> None:
        for start in range(0, len(bodies), batch):
            self.post("/mpub", b"\n".join(bodies[start : start + batch]), topic=topic)

    def stats(self, topic: str) -> dict | None:
        url = f"http://{self.http}/stats?format=json&topic={urllib.parse.quote(topic)}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            topics = json.loads(reply.read())["topics"] or []
        return next((t for t in topics if t["topic_name"] == topic), None)

    def channel(self, topic: str, channel: str) -> dict | None:
        stats = self.stats(topic)
        channels = stats["channels"] if stats else []
        return next((c for c in channels or [] if c["channel_name"] == channel), None)

    def drained(self, topic: str, channel: str) -> bool:
        stats = self.channel(topic, channel)
        return bool(stats) and stats["depth"] == 0 and stats["in_flight_count"] == 0


def reference_nsqd() -> str | None:
    """Go's nsqd from NSQ_REFERENCE_BIN (the binary or its directory), if given."""
    path = os.environ.get("NSQ_REFERENCE_BIN", "")
    if path and os.path.isdir(path):
        path = os.path.join(path, "nsqd")
    return path if path and os.access(path, os.X_OK) else None


def start_lookupd() -> ServerProcess:
    return ServerProcess(
        "gnsqlookupd",
        "--tcp-address=127.0.0.1:0",
        "--http-address=127.0.0.1:0",
        "--broadcast-address=127.0.0.1",
    ).start()

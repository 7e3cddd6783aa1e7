"""Start real gnsqd / gnsqlookupd instances for tests: in-process (own thread) or as processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gevent
from gevent.event import Event

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LISTEN_RE = re.compile(rb"(TCP|HTTP|HTTPS): listening on (\S+):(\d+)")


class ThreadedServer:
    """Runs a server object (start/stop) on its own gevent hub in a background thread.

    Tests then talk to it with ordinary blocking sockets and clients from the main thread,
    without monkey-patching the test process.
    """

    def __init__(self, factory) -> None:
        self._factory = factory
        self.server = None
        self._hub = None
        self._done = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> ThreadedServer:
        ready = threading.Event()

        def main() -> None:
            try:
                self._hub = gevent.get_hub()
                self._done = Event()
                self.server = self._factory()
                self.server.start()
            except BaseException as err:  # reported to the starting thread
                self._error = err
                ready.set()
                return
            ready.set()
            self._done.wait()
            self.server.stop()

        self._thread = threading.Thread(target=main, name="server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def call(self, func, *args):
        """Run func on the server's hub and return its result (for poking at core state)."""
        result: dict = {}
        finished = threading.Event()

        def run() -> None:
            try:
                result["value"] = func(*args)
            except BaseException as err:
                result["error"] = err
            finished.set()

        self._hub.loop.run_callback_threadsafe(run)
        finished.wait(30)
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def stop(self) -> None:
        if self._thread is None:
            return
        self._hub.loop.run_callback_threadsafe(self._done.set)
        self._thread.join(30)
        self._thread = None


class ServerProcess:
    """A real daemon started from its console script; ports read from its log lines."""

    def __init__(self, program: str, *args: str, cwd: str | None = None) -> None:
        self.args = [str(BIN / program), *args]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.output = bytearray()

    def start(self, timeout: float = 20.0, expect=("TCP", "HTTP")) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind, _host, port in LISTEN_RE.findall(bytes(self.output)):
                self.ports[kind.decode()] = int(port)
            if all(kind in self.ports for kind in expect):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.args} did not start:\n{self.output.decode(errors='replace')}")

    def _collect(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            self.output += line

    @property
    def tcp_port(self) -> int:
        return self.ports["TCP"]

    @property
    def http_port(self) -> int:
        return self.ports["HTTP"]

    def log_text(self) -> str:
        return self.output.decode(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self.proc.stdout.close()
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(timeout)

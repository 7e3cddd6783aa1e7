"""Helpers every kind of test shares: free ports, bounded waits, curl, console scripts run to
completion."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.servers import BIN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def curl(*args: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_cli(program: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run a console script to completion: a daemon that must refuse to start, a tool's usage."""
    return subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )

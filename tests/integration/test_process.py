"""The real `gnsqd` console script as a process: version string, port-0 binding and the log lines
that report it, clean exit on SIGTERM / SIGINT, and a clear failure when the port is taken."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time

import pytest

from ..conftest import RawConnection
from ..servers import BIN, ServerProcess
from .test_delivery import expect_response, publish, read_message

GNSQD = str(BIN / "gnsqd")
# gnsq's integration harness parses `--version` with this expression.
VERSION_RE = re.compile(
    r"(?P<name>[a-z]+) v(?P<version>[0-9]+\.[0-9]+\.[0-9]+)(?:-[a-z]+)? "
    r"\(built w\/(?P<go_version>[a-z0-9.-]+)\)"
)
LOG_LINE_RE = re.compile(
    r"\[nsqd\] \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{6} (DEBUG|INFO|WARNING|ERROR|FATAL): .*"
)
LISTENING_RE = re.compile(
    r"\[nsqd\] \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{6} INFO: TCP: listening on "
    r"127\.0\.0\.1:(\d+)"
)


def gnsqd(tmp_path, *flags: str) -> ServerProcess:
    return ServerProcess(
        "gnsqd",
        "--tcp-address=127.0.0.1:0",
        "--http-address=",
        f"--data-path={tmp_path}",
        *flags,
    )


def test_version_shape():
    result = subprocess.run([GNSQD, "--version"], capture_output=True, timeout=30, text=True)
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1
    match = VERSION_RE.fullmatch(result.stdout.strip())
    assert match is not None, result.stdout
    assert match["name"] == "gnsqd"
    assert match["version"] == "1.3.0"


def test_binds_port_zero_and_logs_the_real_port(tmp_path, connect):
    proc = gnsqd(tmp_path).start(expect=("TCP",))
    try:
        assert proc.tcp_port != 0
        publish(connect(proc.tcp_port), "proc", b"hello")
    finally:
        assert proc.stop() == 0


def test_logs_go_to_stdout_in_nsqd_format(tmp_path):
    child = subprocess.Popen(
        [GNSQD, "--tcp-address=127.0.0.1:0", "--http-address=", f"--data-path={tmp_path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if LISTENING_RE.fullmatch(lines[-1]):
                break
        port = int(LISTENING_RE.fullmatch(lines[-1])[1])
        conn = RawConnection(port)
        publish(conn, "logged", b"x")  # a full round trip: the daemon is serving
        conn.close()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0
    lines += out.splitlines()
    for line in lines:
        assert LOG_LINE_RE.fullmatch(line), line
    assert err == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_promptly_with_busy_clients(tmp_path, connect, signum):
    proc = gnsqd(tmp_path).start(expect=("TCP",))
    try:
        consumer = connect(proc.tcp_port)
        producer = connect(proc.tcp_port)
        consumer.command(b"SUB busy c")
        expect_response(consumer)
        consumer.command(b"RDY 1")
        publish(producer, "busy", b"in flight", b"queued")
        assert read_message(consumer).body == b"in flight"

        started = time.monotonic()
        proc.signal(signum)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert consumer.is_closed(2) and producer.is_closed(2)
    finally:
        proc.stop()
    assert "Traceback" not in proc.log_text()


def test_sigterm_keeps_queued_and_in_flight_messages(tmp_path, connect):
    first = gnsqd(tmp_path).start(expect=("TCP",))
    try:
        conn = connect(first.tcp_port)
        conn.command(b"SUB kept c")
        expect_response(conn)
        conn.command(b"RDY 1")
        publish(connect(first.tcp_port), "kept", b"survivor-1", b"survivor-2", b"survivor-3")
        assert read_message(conn).body == b"survivor-1"  # in flight at shutdown
    finally:
        assert first.stop() == 0
    assert "NSQ: bye" in first.log_text()
    second = gnsqd(tmp_path).start(expect=("TCP",))
    try:
        conn = connect(second.tcp_port)
        conn.command(b"SUB kept c")
        expect_response(conn)
        conn.command(b"RDY 10")
        bodies = sorted(read_message(conn).body for _ in range(3))
        assert bodies == [b"survivor-1", b"survivor-2", b"survivor-3"]
    finally:
        assert second.stop() == 0


def test_port_in_use_exits_non_zero_naming_the_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                GNSQD,
                f"--tcp-address=127.0.0.1:{port}",
                "--http-address=",
                f"--data-path={tmp_path}",
            ],
            capture_output=True,
            timeout=30,
            text=True,
        )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in output
    assert "FATAL" in output
    assert "Traceback" not in output

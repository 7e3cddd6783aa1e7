"""Process lifecycle: options refused before any bind (exit 2), bind failures, signals, drain."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from tests.conftest import RawConnection
from tests.ops import curl, free_port, run_cli, wait_for
from tests.servers import ServerProcess

FRAME_MESSAGE = 2

# (program, argv, ini text or None, key, source): every class of config error
CONFIG_ERRORS = [
    ("gnsqd", [], "[nsqd]\nmem_queue_sise = 5\n", "mem_queue_sise", "file"),
    ("gnsqd", ["--msg-timeout=60"], None, "msg_timeout", "flag --msg-timeout"),
    ("gnsqd", [], "[nsqd]\nsync_timeout = 2 seconds\n", "sync_timeout", "file"),
    ("gnsqd", ["--http-address=localhost"], None, "http_address", "flag --http-address"),
    ("gnsqd", [], "[nsqd]\nlookupd_tcp_address = x\n", "lookupd_tcp_address", "file"),
    ("gnsqd", ["--max-deflate-level=12"], None, "max_deflate_level", "flag --max-deflate-level"),
    ("gnsqd", [], "[nsqd]\nnode_id = 1\n", "node_id", "file"),
    (
        "gnsqd", ["--min-output-buffer-timeout=1m"], "[nsqd]\nmax_output_buffer_timeout = 1s\n",
        "min_output_buffer_timeout", "flag --min-output-buffer-timeout",
    ),
    ("gnsqd", ["--tls-required=true"], None, "tls_required", "flag --tls-required"),
    ("gnsqlookupd", [], "[nsqlookupd]\ntombstone = 1s\n", "tombstone", "file"),
    ("gnsqlookupd", ["--tcp-address=127.0.0.1:65536"], None, "tcp_address", "flag --tcp-address"),
    (
        "gnsqlookupd", [], "[nsqlookupd]\ninactive_producer_timeout = 5\n",
        "inactive_producer_timeout", "file",
    ),
]


@pytest.mark.parametrize(
    ("program", "argv", "ini", "key", "source"),
    CONFIG_ERRORS,
    ids=[f"{e[0]}-{e[3]}" for e in CONFIG_ERRORS],
)
def test_config_errors_exit_2_with_one_line_before_binding(
    tmp_path, program, argv, ini, key, source
):
    # the TCP port is free and must stay unbound: validation comes before any listener
    port = free_port()
    args = [*argv, f"--data-path={tmp_path}"] if program == "gnsqd" else list(argv)
    if not any(a.startswith("--tcp-address") for a in args):
        args.append(f"--tcp-address=127.0.0.1:{port}")
    if ini is not None:
        path = tmp_path / "bad.ini"
        path.write_text(ini)
        args += ["-c", str(path)]
        source = f"file {path}" if source == "file" else source
    done = run_cli(program, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""  # not even the version line: nothing started
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{program}: {key}: ")
    assert lines[0].endswith(f"(from {source})")
    if ini is not None and source.startswith("flag"):  # a conflict names the other side too
        assert f"from file {path})" in lines[0]


@pytest.mark.parametrize("program", ["gnsqd", "gnsqlookupd"])
def test_bind_failure_exits_non_zero_naming_the_address(tmp_path, program):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        extra = [f"--data-path={tmp_path}"] if program == "gnsqd" else []
        done = run_cli(program, f"--tcp-address={address}", "--http-address=127.0.0.1:0", *extra)
    assert done.returncode not in (0, 2)
    failure = [line for line in done.stdout.splitlines() if address in line]
    assert failure and "listen" in failure[0] and "in use" in failure[0].lower()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_gnsqlookupd_signal_exits_zero(signum):
    proc = ServerProcess(
        "gnsqlookupd", "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0"
    ).start()
    proc.signal(signum)
    assert proc.wait() == 0


def _message(conn: RawConnection) -> tuple[bytes, bytes]:
    while True:
        frame_type, data = conn.read_frame()
        if frame_type == FRAME_MESSAGE:
            return data[10:26], data[26:]


@pytest.mark.timeout(60)
def test_drain_timeout_lets_consumers_finish_before_close(tmp_path):
    flags = ("--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0", f"--data-path={tmp_path}")
    nsqd = ServerProcess("gnsqd", *flags, "--drain-timeout=10s").start()
    http = f"http://127.0.0.1:{nsqd.http_port}"
    curl("-X", "POST", f"{http}/channel/create?topic=work&channel=c")
    curl("-X", "POST", f"{http}/topic/create?topic=work")
    for body in ("first", "second"):
        assert curl("-X", "POST", "--data-binary", body, f"{http}/pub?topic=work") == "OK"
    conn = RawConnection(nsqd.tcp_port, timeout=10)
    conn.command(b"SUB work c")
    assert conn.read_frame() == (0, b"OK")
    conn.command(b"RDY 1")
    msg_id, body = _message(conn)
    assert body == b"first"

    nsqd.signal(signal.SIGTERM)
    wait_for(lambda: "draining 1 in-flight" in nsqd.log_text(), what="drain start")
    conn.command(b"RDY 5")  # more credit: still nothing new is delivered while draining
    time.sleep(0.5)
    assert nsqd.proc.poll() is None  # waiting for the consumer, not gone
    conn.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.read_frame()
    conn.sock.settimeout(10)
    started = time.monotonic()
    conn.command(b"FIN " + msg_id)
    assert nsqd.wait(15) == 0
    assert time.monotonic() - started < 5  # exited once the in-flight message was done
    assert "drain done, 0 messages still in flight" in nsqd.log_text()
    conn.close()

    # the finished message is gone, the undelivered one was kept, the channel is not paused
    again = ServerProcess("gnsqd", *flags).start()
    try:
        stats = json.loads(curl(f"http://127.0.0.1:{again.http_port}/stats?format=json"))
        channel = stats["topics"][0]["channels"][0]
        assert (channel["depth"], channel["paused"]) == (1, False)
    finally:
        assert again.stop() == 0

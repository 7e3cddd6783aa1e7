"""--log-file: lines go to the file (not stdout), rotate by size, and SIGHUP reopens the path."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.ops import curl, free_port, read, wait_for
from tests.servers import BIN


def start(program: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    tcp, http = free_port(), free_port()
    proc = subprocess.Popen(
        [str(BIN / program), f"--tcp-address=127.0.0.1:{tcp}",
         f"--http-address=127.0.0.1:{http}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    return proc, http


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(60)
def test_gnsqd_log_file_rotates_by_size_and_reopens_on_sighup(tmp_path):
    log = tmp_path / "logs/gnsqd.log"  # the folder is created
    proc, http = start(
        "gnsqd", tmp_path, f"--data-path={tmp_path}", f"--log-file={log}",
        "--log-file-max-bytes=4000", "--log-file-backups=2",
    )
    try:
        wait_for(lambda: "HTTP: listening on" in read(log), what="listening line in the file")
        # every /topic/create logs one INFO line of ~100 bytes: enough for several rotations
        for i in range(150):
            curl("-X", "POST", f"http://127.0.0.1:{http}/topic/create?topic=rot{i}")
        wait_for(lambda: "TOPIC(rot149): created" in read(log), what="last line")
        backups = sorted(p.name for p in log.parent.iterdir())
        assert backups == ["gnsqd.log", "gnsqd.log.1", "gnsqd.log.2"]
        for path in log.parent.iterdir():
            assert path.stat().st_size <= 4000
            assert all(line.startswith("[nsqd] ") for line in read(path).splitlines())

        # logrotate's way: move the file away, then SIGHUP
        moved = log.with_name("gnsqd.log.rotated")
        log.rename(moved)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "LOG: reopened" in read(log), what="a new file after SIGHUP")
        curl("-X", "POST", f"http://127.0.0.1:{http}/topic/create?topic=after_hup")
        wait_for(lambda: "TOPIC(after_hup): created" in read(log), what="line in the new file")
        assert "after_hup" not in read(moved)
        assert proc.poll() is None  # SIGHUP did not stop it
    finally:
        code, stdout = stop(proc)
    assert code == 0
    assert stdout == ""  # nothing on stdout once --log-file is set
    assert read(log).rstrip().endswith("INFO: NSQ: bye")


@pytest.mark.timeout(30)
def test_gnsqlookupd_log_file_and_sighup(tmp_path):
    log = tmp_path / "lookupd.log"
    proc, _ = start("gnsqlookupd", tmp_path, f"--log-file={log}", "--log-level=debug")
    try:
        wait_for(lambda: "HTTP: listening on" in read(log), what="listening line in the file")
        assert read(log).startswith("[nsqlookupd] ")
        log.rename(tmp_path / "lookupd.log.old")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "LOG: reopened" in read(log), what="a new file after SIGHUP")
    finally:
        code, stdout = stop(proc)
    assert code == 0 and stdout == ""


def test_unwritable_log_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [str(BIN / "gnsqd"), f"--log-file={blocker}/sub/gnsqd.log",
         "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0"],
        capture_output=True, text=True, timeout=20, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gnsqd: log_file: ") and done.stdout == ""

"""conf/supervisord.conf under a real supervisord: start, publish with curl, stop all, restart.

The conf folder is copied beside a ``.venv`` link to the test's own environment, with the .ini
ports moved to free ones; supervisord.conf itself is used as it is.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.ops import curl, free_port, read, wait_for
from tests.servers import BIN, REPO

pytestmark = pytest.mark.skipif(
    not (BIN / "supervisord").exists(), reason="supervisor is not installed (test extras)"
)


@pytest.fixture
def deployment(tmp_path):
    """A copy of conf/ with free ports, ../.venv pointing at this environment, data/ made."""
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(REPO / "conf/supervisord.conf", conf / "supervisord.conf")
    ports = {name: free_port() for name in ("lookupd_tcp", "lookupd_http", "tcp", "http")}
    lookupd = (REPO / "conf/nsqlookupd.ini").read_text()
    lookupd = lookupd.replace("127.0.0.1:4160", f"127.0.0.1:{ports['lookupd_tcp']}")
    lookupd = lookupd.replace("127.0.0.1:4161", f"127.0.0.1:{ports['lookupd_http']}")
    (conf / "nsqlookupd.ini").write_text(lookupd)
    nsqd = (REPO / "conf/nsqd.ini").read_text()
    nsqd = nsqd.replace("127.0.0.1:4160", f"127.0.0.1:{ports['lookupd_tcp']}")
    nsqd = nsqd.replace("127.0.0.1:4150", f"127.0.0.1:{ports['tcp']}")
    nsqd = nsqd.replace("127.0.0.1:4151", f"127.0.0.1:{ports['http']}")
    (conf / "nsqd.ini").write_text(nsqd)
    (tmp_path / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    (tmp_path / "data/logs").mkdir(parents=True)
    (tmp_path / "data/nsqd").mkdir()
    return tmp_path, ports


def ctl(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(root / "conf/supervisord.conf"), *args],
        capture_output=True, text=True, timeout=90,
    )


@pytest.mark.timeout(90)
def test_supervisord_runs_both_and_stops_them_cleanly(deployment):
    root, ports = deployment
    logs = root / "data/logs"
    supervisord = subprocess.Popen(
        [str(BIN / "supervisord"), "-n", "-c", str(root / "conf/supervisord.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "HTTP: listening on" in read(logs / "gnsqd.log"), what="gnsqd")
        wait_for(lambda: "HTTP: listening on" in read(logs / "gnsqlookupd.log"), what="lookupd")
        http = f"http://127.0.0.1:{ports['http']}"
        assert curl("-X", "POST", "--data-binary", "kept across restarts",
                    f"{http}/pub?topic=ops") == "OK"
        wait_for(lambda: "TOPIC(ops): created" in read(logs / "gnsqd.log"), what="topic line")

        nsqd_log = read(logs / "gnsqd.log")
        assert f"INFO: TCP: listening on 127.0.0.1:{ports['tcp']}" in nsqd_log
        assert f"INFO: HTTP: listening on 127.0.0.1:{ports['http']}" in nsqd_log
        assert nsqd_log.startswith("[nsqd] ")
        lookupd_log = read(logs / "gnsqlookupd.log")
        assert f"TCP: listening on 127.0.0.1:{ports['lookupd_tcp']}" in lookupd_log
        # gnsqd registered with the lookupd named in nsqd.ini
        wait_for(lambda: "LOOKUP(" in read(logs / "gnsqd.log"), what="lookupd peer")

        stopped = ctl(root, "stop", "all")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "gnsqd: stopped" in stopped.stdout and "gnsqlookupd: stopped" in stopped.stdout
        nsqd_log = read(logs / "gnsqd.log")
        assert "NSQ: closing" in nsqd_log and nsqd_log.rstrip().endswith("INFO: NSQ: bye")
        main_log = read(logs / "supervisord.log")
        assert "stopped: gnsqd (exit status 0)" in main_log
        assert "stopped: gnsqlookupd (exit status 0)" in main_log
        status = ctl(root, "status")
        assert status.stdout.count("STOPPED") == 2, status.stdout

        # the message was written to disk at the stop and is there after a restart
        started = ctl(root, "start", "gnsqd")
        assert started.returncode == 0, started.stdout + started.stderr
        # RUNNING means it outlived startsecs; on a loaded machine it may not be listening yet
        wait_for(lambda: read(logs / "gnsqd.log").count("HTTP: listening on") == 2,
                 what="gnsqd listening again")
        stats = json.loads(curl(f"{http}/stats?format=json&topic=ops"))
        assert stats["topics"][0]["depth"] == 1
    finally:
        ctl(root, "shutdown")
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.send_signal(signal.SIGKILL)
            supervisord.wait(10)
    assert supervisord.returncode == 0

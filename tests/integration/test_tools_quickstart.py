"""The README's quick start on a fresh clone: scripts/run.sh in one process, gnsq_tail in
another, a message published with curl shows up. Slow (a fresh venv is installed) and needs the
quick start's fixed ports (4150, 4151, 4160, 4161) free."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import pytest

from ..ops import wait_for
from ..servers import REPO

PORTS = (4150, 4151, 4160, 4161)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ping() -> bool:
    result = subprocess.run(["curl", "-s", "http://127.0.0.1:4151/ping"], capture_output=True,
                            timeout=10)
    return result.stdout == b"OK"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_sh_then_gnsq_tail_shows_a_curl_publish(tmp_path):
    if any(_port_in_use(port) for port in PORTS) or not shutil.which("curl"):
        pytest.skip("the quick start's ports are in use, or curl is missing")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen([str(clone / "scripts" / "run.sh")], stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    tail = None
    try:
        wait_for(lambda: run.poll() is None and _ping(), timeout=400, what="run.sh serving")
        tail = subprocess.Popen(
            [str(clone / ".venv" / "bin" / "gnsq_tail"), "--topic=test",
             "--nsqd-tcp-address=127.0.0.1:4150", "-n", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(1.5)  # let it subscribe: its ephemeral channel must exist before the publish
        published = subprocess.run(
            ["curl", "-s", "-d", "hello", "http://127.0.0.1:4151/pub?topic=test"],
            capture_output=True, timeout=10,
        )
        assert published.stdout == b"OK"
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        assert out == b"hello\n"
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
            tail.communicate()
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        log.close()

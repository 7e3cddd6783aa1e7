"""The tools against Go's nsqd 1.3.0 (NSQ_REFERENCE_BIN: the nsqd binary or its directory):
what works with gnsqd works with NSQ's own daemon."""

from __future__ import annotations

import gzip
import signal

import pytest

from ..ops import run_cli, wait_for
from ..toolproc import Nsqd, Tool, reference_nsqd

pytestmark = pytest.mark.skipif(reference_nsqd() is None, reason="NSQ_REFERENCE_BIN not set")


@pytest.fixture
def go_nsqd(tmp_path):
    server = Nsqd(tmp_path / "nsqd", binary=reference_nsqd()).start()
    yield server
    server.stop()


@pytest.mark.parametrize("compression", ["", "--producer-opt=snappy", "--producer-opt=deflate"])
def test_to_gnsq_then_gnsq_tail(go_nsqd, compression):
    pub = Tool("to_gnsq", "--topic=ref", f"--nsqd-tcp-address={go_nsqd.tcp}",
               *([compression] if compression else []), stdin=True)
    pub.write(b"one\ntwo\nthree\n")
    pub.close_stdin()
    assert pub.wait() == 0, pub.err()
    consumer_opt = compression.replace("producer", "consumer")
    tail = Tool("gnsq_tail", "--topic=ref", "--channel=c", f"--nsqd-tcp-address={go_nsqd.tcp}",
                "-n", "3", "--print-topic", *([consumer_opt] if consumer_opt else []))
    assert tail.wait() == 0, tail.err()
    assert tail.lines() == [b"ref | one", b"ref | two", b"ref | three"]


def test_gnsq_stat_and_gnsq_to_file(go_nsqd, tmp_path):
    go_nsqd.create_channel("files", "nsq_to_file")
    go_nsqd.mpub("files", [b"line-%d" % i for i in range(1000)])
    stat = run_cli("gnsq_stat", "--topic=files", "--channel=nsq_to_file", "--count=1",
                    "--interval=100ms", f"--nsqd-http-address={go_nsqd.http}")
    assert stat.returncode == 0, stat.stderr
    assert " 1000 " in stat.stdout.splitlines()[2]
    out = tmp_path / "out"
    out.mkdir()
    writer = Tool("gnsq_to_file", "--topic=files", f"--nsqd-tcp-address={go_nsqd.tcp}",
                  f"--output-dir={out}", "--filename-format=<TOPIC><REV>.log", "--gzip",
                  "--sync-interval=200ms")
    try:
        wait_for(lambda: go_nsqd.drained("files", "nsq_to_file"), what="all written")
        writer.signal(signal.SIGTERM)
        assert writer.wait() == 0, writer.err()
    finally:
        writer.stop()
    lines = gzip.decompress((out / "files-000000.log.gz").read_bytes()).splitlines()
    assert sorted(lines) == sorted(b"line-%d" % i for i in range(1000))

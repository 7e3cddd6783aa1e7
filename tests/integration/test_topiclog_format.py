"""A crash-safe data path written by format version 1 is read by this gnsqd.

``tests/fixtures/gnsq-topiclog-v1/datadir`` was written once by :func:`make_fixture` (the
version-1 code) and is committed as it came out: later versions must keep reading it. Its
README lists what it holds; this test starts gnsqd --crash-safe on a copy and checks that
every channel delivers exactly what it had not finished, with the original ids, timestamps
and due times, and that the topic's retention override survived.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..durable import (
    channel_stats,
    drain,
    gnsqd_processes,
    stats,
    stop_cleanly,
    subscribe,
)
from ..servers import BIN

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gnsq-topiclog-v1" / "datadir"
BASE_TS = 1_700_000_000_000_000_000
COUNT = 40
HELD = (3, 17)  # read by channel a and never finished
DEFERRED = 20  # requeued by channel a until 2100-01-01
READ = 30  # channel a read seqs 0..29; channel b read nothing
DPUB = 5  # published with a 1 s delay (long past)


def fixture_body(seq: int) -> bytes:
    return b"fixture-%02d" % seq


def fixture_id(seq: int) -> bytes:
    return b"%016x" % (0x1000 + seq)


def make_fixture(data_path: Path) -> None:
    """Write the fixture (run once: python -m tests.integration.test_topiclog_format DIR)."""
    from gnsq_server.nsqd.cursor import Cursor
    from gnsq_server.nsqd.message import Message
    from gnsq_server.nsqd.topiclog import Retention, TopicLog

    data_path.mkdir(parents=True)
    log = TopicLog("fixture", str(data_path), 1024, 1 << 20, 2500, Retention())
    msgs = []
    for seq in range(COUNT):
        msg = Message(fixture_id(seq), fixture_body(seq), BASE_TS + seq * 1_000_000_000)
        msg.defer = 1.0 if seq == DPUB else 0.0
        msgs.append(msg)
    for start in range(0, COUNT, 4):
        log.append(msgs[start : start + 4])
    log.release()
    a = Cursor(log, "a", persist=True, start=0)
    b = Cursor(log, "b", persist=True, start=0)
    for _ in range(READ):
        seq = a.read().token
        if seq == DEFERRED:
            a.defer(seq, time.monotonic() + (4_102_444_800 - time.time()))
        elif seq not in HELD:
            a.ack(seq)
    log.set_retention(3600.0, 123456)
    a.close()
    b.close()
    log.close()
    channels = [{"name": "a", "paused": False}, {"name": "b", "paused": False}]
    document = {"topics": [{"name": "fixture", "paused": False, "channels": channels}]}
    document["version"] = "1.3.0"
    (data_path / "nsqd.dat").write_text(json.dumps(document, separators=(",", ":")))


def test_a_version_1_data_path_is_read(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    with gnsqd_processes() as start:
        server = start(data, "--crash-safe")
        topic = stats(server)["topics"][0]
        assert topic["topic_name"] == "fixture"
        assert (topic["log_first_seq"], topic["log_end_seq"]) == (0, COUNT)
        assert (topic["retention_time"], topic["retention_bytes"]) == (3600 * 10**9, 123456)

        a = drain(subscribe(server.tcp_port, "fixture", "a", rdy=100))
        expected_a = [*HELD, *range(READ, COUNT)]
        assert [m.body for m in a] == [fixture_body(seq) for seq in expected_a]
        assert [m.id for m in a] == [fixture_id(seq) for seq in expected_a]
        assert [m.timestamp for m in a] == [BASE_TS + seq * 10**9 for seq in expected_a]
        assert channel_stats(server, "fixture", "a")["deferred_count"] == 1

        b = drain(subscribe(server.tcp_port, "fixture", "b", rdy=100))
        assert [m.body for m in b] == [fixture_body(seq) for seq in range(COUNT)]
        stop_cleanly(server)


if __name__ == "__main__":
    make_fixture(Path(sys.argv[1]))


def test_a_newer_version_stops_the_start_with_one_clear_line(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    segment = data / "fixture.gnsq-log" / "00000000000000000000.seg"
    raw = bytearray(segment.read_bytes())
    raw[8:12] = (2).to_bytes(4, "big")  # the header's version field
    segment.write_bytes(bytes(raw))
    result = subprocess.run(
        [str(BIN / "gnsqd"), "--crash-safe", "--tcp-address=127.0.0.1:0", "--http-address=",
         f"--data-path={data}"],
        capture_output=True, timeout=30,
    )
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert "FATAL: " in output and "log version 2 is newer than this gnsqd's 1" in output

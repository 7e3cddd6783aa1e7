"""gnsq_to_file (nsq_to_file) as a process against real gnsqd/gnsqlookupd: file names, gzip,
work dir, rotation, exactly-once over a rotation and a SIGTERM, SIGHUP, topic discovery, bad
flags and an nsqd that restarts."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from ..ops import run_cli, wait_for
from ..toolproc import Nsqd, Tool, start_lookupd

CHANNEL = "nsq_to_file"


@pytest.fixture
def nsqd(tmp_path):
    server = Nsqd(tmp_path / "nsqd").start()
    yield server
    server.stop()


@pytest.fixture
def dirs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    return out, work


def read_lines(directory: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            lines += (gzip.decompress(data) if path.suffix == ".gz" else data).splitlines()
    return lines


def stop(tool: Tool, signum: int = signal.SIGTERM) -> None:
    tool.signal(signum)
    assert tool.wait(30) == 0, tool.err()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_default_file_name_and_content(nsqd, dirs, signum):
    out, _work = dirs
    nsqd.mpub("plain", [b"one", b"two", b"three"])
    tool = Tool("gnsq_to_file", "--topic=plain", f"--nsqd-tcp-address={nsqd.tcp}",
                f"--output-dir={out}", "--sync-interval=200ms")
    try:
        wait_for(lambda: nsqd.drained("plain", CHANNEL), what="messages finished")
        stop(tool, signum)
    finally:
        tool.stop()
    host = socket.gethostname().split(".")[0]
    name = f"plain.{host}.{datetime.now().strftime('%Y-%m-%d_%H')}.log"
    assert [p.name for p in out.iterdir()] == [name]
    assert (out / name).read_bytes() == b"one\ntwo\nthree\n"


@pytest.mark.parametrize(
    "count", [10_000, pytest.param(100_000, marks=pytest.mark.slow)], ids=["10k", "100k"]
)
def test_exactly_once_across_rotation_and_sigterm(tmp_path, dirs, count):
    out, work = dirs
    nsqd = Nsqd(tmp_path / "nsqd").start()
    try:
        bodies = [b"msg-%07d" % i for i in range(count)]
        nsqd.create_channel("archive", CHANNEL)
        nsqd.mpub("archive", bodies)
        args = ["--topic=archive", f"--nsqd-tcp-address={nsqd.tcp}", f"--output-dir={out}",
                f"--work-dir={work}", "--gzip", f"--rotate-size={count * 2}", "--sync-interval=1s"]
        first = Tool("gnsq_to_file", *args)
        try:
            wait_for(lambda: nsqd.channel("archive", CHANNEL)["depth"] < count * 2 // 3,
                     timeout=60, what="a third consumed")
            stop(first)
        finally:
            first.stop()
        assert list(work.iterdir()) == []  # every file finished and moved
        written = len(read_lines(out))
        channel = nsqd.channel("archive", CHANNEL)
        # FIN only after the line is written, and every line written was FINed
        assert channel["in_flight_count"] == 0
        assert channel["depth"] + written == count
        assert 0 < written < count

        second = Tool("gnsq_to_file", *args)
        try:
            wait_for(lambda: nsqd.drained("archive", CHANNEL), timeout=60, what="all consumed")
            stop(second)
        finally:
            second.stop()
    finally:
        nsqd.stop()
    lines = read_lines(out)
    assert len(lines) == count
    assert sorted(lines) == bodies
    files = sorted(p.name for p in out.iterdir())
    assert len(files) >= 6  # rotated by size (and restarted)
    assert all(name.endswith(".log.gz") and "-0000" in name for name in files)
    assert list(work.iterdir()) == []


def test_rotate_size_without_gzip_and_sighup(nsqd, dirs):
    out, work = dirs
    tool = Tool("gnsq_to_file", "--topic=rot", f"--nsqd-tcp-address={nsqd.tcp}",
                f"--output-dir={out}", f"--work-dir={work}", "--rotate-size=25",
                "--filename-format=<TOPIC><REV>.log", "--sync-interval=200ms")
    try:
        nsqd.mpub("rot", [b"%09d" % i for i in range(6)])  # 10 bytes a line: 3 lines a file
        wait_for(lambda: nsqd.drained("rot", CHANNEL), what="finished")
        # the next sync tick finds rot-000001 full too: moved, and an empty rot-000002 opened
        wait_for(lambda: len(list(out.iterdir())) == 2, what="second file moved")
        wait_for(lambda: [p.name for p in work.iterdir()] == ["rot-000002.log"], what="third")
        tool.signal(signal.SIGHUP)  # closes and moves the current file
        wait_for(lambda: len(list(out.iterdir())) == 3, what="file moved on SIGHUP")
        assert list(work.iterdir()) == []
        nsqd.post("/pub", b"after hup", topic="rot")
        wait_for(lambda: nsqd.drained("rot", CHANNEL), what="finished")
        stop(tool)
    finally:
        tool.stop()
    assert sorted(p.name for p in out.iterdir()) == [
        "rot-000000.log", "rot-000001.log", "rot-000002.log", "rot-000003.log"
    ]
    assert (out / "rot-000000.log").read_bytes() == b"000000000\n000000001\n000000002\n"
    assert (out / "rot-000002.log").read_bytes() == b""
    assert (out / "rot-000003.log").read_bytes() == b"after hup\n"
    assert len(read_lines(out)) == 7


def test_rotate_interval(nsqd, dirs):
    out, _work = dirs
    tool = Tool("gnsq_to_file", "--topic=tick", f"--nsqd-tcp-address={nsqd.tcp}",
                f"--output-dir={out}", "--rotate-interval=500ms", "--sync-interval=100ms",
                "--skip-empty-files", "--filename-format=<TOPIC><REV>.<DATETIME>.log",
                "--datetime-format=%Y%%")
    try:
        nsqd.post("/pub", b"first", topic="tick")
        wait_for(lambda: nsqd.drained("tick", CHANNEL), what="first finished")
        time.sleep(1.0)
        nsqd.post("/pub", b"second", topic="tick")
        wait_for(lambda: nsqd.drained("tick", CHANNEL), what="second finished")
        stop(tool)
    finally:
        tool.stop()
    year = datetime.now().strftime("%Y")
    assert sorted(p.name for p in out.iterdir()) == [
        f"tick-000000.{year}%.log", f"tick-000001.{year}%.log"
    ]


def test_topic_pattern_discovers_new_topics(tmp_path, dirs):
    out, _work = dirs
    lookupd = start_lookupd()
    nsqd = Nsqd(tmp_path / "nsqd", f"--lookupd-tcp-address=127.0.0.1:{lookupd.tcp_port}").start()
    tool = Tool("gnsq_to_file", "--topic-pattern=^keep", "--topic-refresh=200ms",
                f"--lookupd-http-address=127.0.0.1:{lookupd.http_port}", f"--output-dir={out}",
                "--filename-format=<TOPIC>.log", "--consumer-opt=lookupd_poll_interval,200ms")
    try:
        for topic in ("keep1", "skip1", "keep2"):
            nsqd.create_channel(topic, CHANNEL)
            nsqd.post("/pub", topic.encode(), topic=topic)
        wait_for(lambda: nsqd.drained("keep1", CHANNEL) and nsqd.drained("keep2", CHANNEL),
                 what="keep topics archived")
        # A refresh may see keep2 before lookupd has skip1's registration (each is a command of
        # its own): skip1's line can then come a refresh after both keep topics drained.
        skipped = "skipping topic skip1 (doesn't match pattern ^keep)"
        wait_for(lambda: skipped in tool.err(), what="skip1 skipped")
        stop(tool)
    finally:
        tool.stop()
        nsqd.stop()
        lookupd.stop()
    assert sorted(p.name for p in out.iterdir()) == ["keep1.log", "keep2.log"]
    assert (out / "keep2.log").read_bytes() == b"keep2\n"


def test_nsqd_goes_away_and_comes_back(nsqd, dirs):
    out, work = dirs
    nsqd.create_channel("bounce", CHANNEL)
    tool = Tool("gnsq_to_file", "--topic=bounce", f"--nsqd-tcp-address={nsqd.tcp}",
                f"--output-dir={out}", f"--work-dir={work}", "--sync-interval=200ms")
    try:
        nsqd.mpub("bounce", [b"before-%d" % i for i in range(100)])
        wait_for(lambda: nsqd.drained("bounce", CHANNEL), what="first batch")
        nsqd.stop()
        wait_for(lambda: "reconnecting" in tool.err(), what="reconnect attempts")
        nsqd.start()
        nsqd.mpub("bounce", [b"after-%d" % i for i in range(100)])
        wait_for(lambda: nsqd.drained("bounce", CHANNEL), what="second batch")
        stop(tool)
    finally:
        tool.stop()
    lines = read_lines(out)
    assert sorted(set(lines)) == sorted(
        [b"before-%d" % i for i in range(100)] + [b"after-%d" % i for i in range(100)]
    )
    assert len(lines) == 200


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topic=t"], "--nsqd-tcp-address or --lookupd-http-address required"),
        (["--nsqd-tcp-address=127.0.0.1:1"], "--topic or --topic-pattern required"),
        (["--topic-pattern=x", "--nsqd-tcp-address=127.0.0.1:1"],
         "--lookupd-http-address must be specified when no --topic specified"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--gzip", "--filename-format=x.log"],
         "missing <REV> in --filename-format when gzip, rotation, or work dir enabled"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--gzip-level=10"],
         "invalid --gzip-level value (10), should be 1-9"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--channel="], "--channel is required"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--rotate-interval=soon"],
         "invalid duration"),
        (["--topic-pattern=(", "--lookupd-http-address=127.0.0.1:1"], "--topic-pattern '('"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--log-level=loud"], "invalid log level"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args, message):
    result = run_cli("gnsq_to_file", *args)
    assert result.returncode == 2, result
    assert message in result.stderr


def test_a_file_that_cannot_be_written_stops_the_tool(nsqd, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be")
    tool = Tool("gnsq_to_file", "--topic=nowhere", f"--nsqd-tcp-address={nsqd.tcp}",
                f"--output-dir={blocked}/sub")
    try:
        nsqd.post("/pub", b"lost?", topic="nowhere")
        assert tool.wait(30) == 1
    finally:
        tool.stop()
    assert os.path.exists(blocked)
    channel = nsqd.channel("nowhere", CHANNEL)
    assert channel["depth"] + channel["in_flight_count"] == 1  # not finished: nsqd keeps it

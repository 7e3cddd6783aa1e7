"""gnsq_stat (nsq_stat) as a process against real gnsqd/gnsqlookupd: the table, --count,
lookupd discovery, summing over nsqds, signals, bad flags and an nsqd that restarts."""

from __future__ import annotations

import json
import re
import signal
import urllib.request

import pytest

from ..ops import run_cli, wait_for
from ..toolproc import Nsqd, Tool, start_lookupd

HEADER = [
    b"------rate------+----------------depth----------------+--------------metadata---------------",
    b"ingress  egress |   total     mem    disk inflt   def |     req     t-o         msgs clients",
]
ROW = re.compile(rb"^ *(-?\d+) +(-?\d+) \| +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) \| "
                 rb"+(\d+) +(\d+) +(\d+) +(\d+)$")


@pytest.fixture
def nsqd(tmp_path):
    server = Nsqd(tmp_path / "nsqd").start()
    yield server
    server.stop()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


def rows(tool: Tool) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in m.groups()) for line in tool.lines()
            if (m := ROW.match(line))]


def test_count_rows_with_depths(nsqd):
    nsqd.create_channel("watched", "ch")
    nsqd.mpub("watched", [b"x"] * 7)
    result = run_cli("gnsq_stat", "--topic=watched", "--channel=ch",
                      f"--nsqd-http-address={nsqd.http}", "--interval=100ms", "--count=2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.encode().splitlines()
    assert lines[:2] == HEADER
    assert len(lines) == 4
    for line in lines[2:]:
        ingress, egress, total, mem, disk, inflt, deferred, req, timed_out, msgs, clients = (
            int(v) for v in ROW.match(line).groups()
        )
        assert (ingress, egress, total, mem, disk) == (0, 0, 7, 7, 0)
        assert (inflt, deferred, req, timed_out, msgs, clients) == (0, 0, 0, 0, 7, 0)


def test_rates_and_sum_over_nsqds_found_through_lookupd(tmp_path):
    lookupd = start_lookupd()
    flag = f"--lookupd-tcp-address=127.0.0.1:{lookupd.tcp_port}"
    nodes = [Nsqd(tmp_path / f"n{i}", flag).start() for i in range(2)]
    stat = None
    try:
        for node in nodes:
            node.create_channel("spread", "ch")
            node.mpub("spread", [b"y"] * 5)
        lookup = f"http://127.0.0.1:{lookupd.http_port}/lookup?topic=spread"
        wait_for(lambda: len(get_json(lookup)["producers"]) == 2, what="both nsqds registered")
        stat = Tool("gnsq_stat", "--topic=spread", "--channel=ch", "--interval=500ms",
                    f"--lookupd-http-address=127.0.0.1:{lookupd.http_port}")
        wait_for(lambda: len(rows(stat)) >= 1, what="a first row")
        nodes[0].mpub("spread", [b"z"] * 50)
        wait_for(lambda: any(row[9] == 60 for row in rows(stat)), what="the new messages")
        row = next(row for row in rows(stat) if row[9] == 60)
        assert row[2] == 60  # depth summed over both nsqds
        assert row[0] == 100  # 50 messages in a 0.5 s interval
        assert row[1] == 0  # nothing consumed
        stat.signal(signal.SIGINT)
        assert stat.wait() == 0
    finally:
        if stat is not None:
            stat.stop()
        for node in nodes:
            node.stop()
        lookupd.stop()


def test_nsqd_goes_away_and_comes_back(nsqd):
    nsqd.create_channel("flaky", "ch")
    stat = Tool("gnsq_stat", "--topic=flaky", "--channel=ch", f"--nsqd-http-address={nsqd.http}",
                "--interval=100ms")
    try:
        wait_for(lambda: len(rows(stat)) >= 1, what="a first row")
        nsqd.stop()
        wait_for(lambda: "failed to get nsqd stats" in stat.err(), what="an error reported")
        nsqd.start()
        before = len(rows(stat))
        wait_for(lambda: len(rows(stat)) > before, what="rows again")
        assert stat.proc.poll() is None
        stat.signal(signal.SIGTERM)
        assert stat.wait() == 0
    finally:
        stat.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topic=t", "--nsqd-http-address=127.0.0.1:1"], "--topic and --channel are required"),
        (["--topic=t", "--channel=c"], "--nsqd-http-address or --lookupd-http-address required"),
        (["--topic=t", "--channel=c", "--nsqd-http-address=http://127.0.0.1:1"],
         "--nsqd-http-address error - address should not contain scheme"),
        (["--topic=t", "--channel=c", "--nsqd-http-address=127.0.0.1:1", "--interval=0s"],
         "--interval should be positive"),
        (["--topic=t", "--channel=c", "--nsqd-http-address=127.0.0.1:1", "--count=-1"],
         "out of range"),
        (["--topic=t", "--channel=c", "--nsqd-http-address=127.0.0.1:1",
          "--lookupd-http-address=127.0.0.1:2"],
         "use --nsqd-http-address or --lookupd-http-address not both"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args, message):
    result = run_cli("gnsq_stat", *args)
    assert result.returncode == 2, result
    assert message in result.stderr

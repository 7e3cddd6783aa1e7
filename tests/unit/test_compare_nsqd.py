"""scripts/compare_nsqd.py: reading the load tools' output and the ratio table."""

from __future__ import annotations

import math

import pytest

from ..scriptload import load_script

compare = load_script("compare_nsqd")

GO_OUT = (
    "[bench_writer] 2026/12/07 02:48:57 duration: 1.022397042s - 52.348mb/s - "
    "274453.063ops/s - 3.644us/op\n"
)
WRK_OUT = """Running 1s test @ http://127.0.0.1:4151/pub?topic=t
  2 threads and 4 connections
  17000 requests in 1.00s, 1.90MB read
Requests/sec:  16938.80
Transfer/sec:      1.90MB
"""
AB_OUT = """Complete requests:      7051
Failed requests:        0
Requests per second:    7051.40 [#/sec] (mean)
"""


def test_parse_go_tool_reads_ops_per_second():
    assert compare.parse_go_tool(GO_OUT) == pytest.approx(274453.063)


def test_parse_go_tool_without_closing_line_is_an_error():
    with pytest.raises(compare.CompareError, match="ops/s"):
        compare.parse_go_tool("panic: dial tcp: connection refused\n")


def test_parse_wrk_reads_requests_per_second():
    assert compare.parse_wrk(WRK_OUT) == pytest.approx(16938.80)


@pytest.mark.parametrize(
    "extra", ["  Non-2xx or 3xx responses: 12\n", "  Socket errors: connect 0, read 3\n"]
)
def test_parse_wrk_refuses_a_run_with_errors(extra):
    with pytest.raises(compare.CompareError, match="errors"):
        compare.parse_wrk(WRK_OUT + extra)


def test_parse_ab_reads_requests_per_second_and_refuses_failures():
    assert compare.parse_ab(AB_OUT) == pytest.approx(7051.40)
    with pytest.raises(compare.CompareError, match="3 failed"):
        compare.parse_ab(AB_OUT.replace("Failed requests:        0", "Failed requests: 3"))
    with pytest.raises(compare.CompareError):
        compare.parse_ab("apr_socket_recv: Connection refused (111)\n")


def test_summarize_takes_the_median_of_pair_ratios_and_checks_targets():
    runs = {
        "consume": {"nsqd": [100.0, 200.0, 100.0], "gnsqd": [110.0, 100.0, 150.0]},
        "rss": {"nsqd": [100.0, 100.0], "gnsqd": [250.0, 150.0]},
        "http-pub": {"nsqd": [10.0], "gnsqd": [5.0]},
    }
    rows = {row["figure"]: row for row in compare.summarize(runs)}
    consume = rows["consume"]
    assert consume["pair_ratios"] == pytest.approx([1.1, 0.5, 1.5])
    assert consume["ratio"] == pytest.approx(1.1)
    assert consume["nsqd"] == 100.0 and consume["gnsqd"] == 110.0
    assert consume["met"] is True
    # lower is better for memory: a median ratio of 2.0 meets "<= 2.0"
    assert rows["rss"]["ratio"] == pytest.approx(2.0) and rows["rss"]["met"] is True
    assert rows["http-pub"]["met"] is None and rows["http-pub"]["target"] == ""
    table = compare.format_table(compare.summarize(runs))
    assert "consume" in table and "1.10" in table and ">= 1.0 ok" in table


def test_summarize_marks_a_missed_target_and_survives_a_zero():
    rows = compare.summarize({"pub": {"nsqd": [0.0, 10.0, 10.0], "gnsqd": [1.0, 2.0, 3.0]}})
    assert math.isnan(rows[0]["pair_ratios"][0])
    assert rows[0]["met"] is False
    assert "MISSED" in compare.format_table(rows)


def test_unknown_mode_is_refused(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--nsq-bin", "/nowhere", "--modes", "mpub,bogus"])
    assert "bogus" in capsys.readouterr().err

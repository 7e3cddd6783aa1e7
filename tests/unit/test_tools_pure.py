"""The tools' pure parts: nsq_to_file's names, to_nsq's splitting, nsq_stat's row, go-nsq's
--consumer-opt forms."""

from __future__ import annotations

import os
import socket
import ssl
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from gnsq_server.tools.client import UsageError, parse_client_opts
from gnsq_server.tools.stat import ChannelStats, format_row
from gnsq_server.tools.to_file import filename_format, strftime
from gnsq_server.tools.to_nsq import split_stream

WHEN = datetime(2026, 3, 4, 15, 6, 7, tzinfo=timezone(timedelta(hours=-7), "MST"))


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("%Y-%m-%d_%H", "2026-03-04_15"),
        ("%y%m%d %I:%M:%S %p", "260304 03:06:07 PM"),
        ("%A %a %B %b", "Wednesday Wed March Mar"),
        ("%Z %z", "MST -0700"),
        ("100%% %Q %", "100% %Q %"),  # unknown directives and a trailing % stay as written
    ],
)
def test_strftime_directives(fmt, expected):
    assert strftime(fmt, WHEN) == expected


def _opts(**changes):
    base = dict(
        filename_format="<TOPIC>.<HOST><REV>.<DATETIME>.log", host_identifier="", gzip=False,
        rotate_size=0, rotate_interval=0.0, output_dir="/out", work_dir="",
    )
    return SimpleNamespace(**{**base, **changes})


def test_filename_format_like_nsq_to_file():
    host = socket.gethostname()
    short = host.split(".")[0]
    assert filename_format(_opts(), "t") == f"t.{short}.<DATETIME>.log"  # <REV> dropped
    assert filename_format(_opts(gzip=True), "t") == f"t.{short}<REV>.<DATETIME>.log.gz"
    assert filename_format(_opts(work_dir="/work"), "t") == f"t.{short}<REV>.<DATETIME>.log"
    opts = _opts(filename_format="<PID>-<HOST>", host_identifier="<SHORT_HOST>+<HOSTNAME>")
    assert filename_format(opts, "t") == f"{os.getpid()}-{short}+{host}"
    with pytest.raises(UsageError, match="missing <REV>"):
        filename_format(_opts(filename_format="<TOPIC>.log", rotate_size=10), "t")


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([b"a\nb\n"], [[b"a", b"b"]]),
        ([b"a", b"b\n\n", b"c"], [[b"ab"], [b"c"]]),
        ([b"\n\n"], []),
        ([b"last"], [[b"last"]]),
    ],
)
def test_split_stream(chunks, expected):
    assert list(split_stream(iter(chunks), b"\n")) == expected


def test_format_row_rates_and_columns():
    before = ChannelStats(message_count=100, depth=10)
    now = ChannelStats(depth=30, memory_depth=20, backend_depth=10, in_flight_count=3,
                       deferred_count=1, requeue_count=2, timeout_count=4, message_count=150,
                       client_count=5)
    assert format_row(now, before, 2.0) == (
        "     25      15 |      30      20      10     3     1 |       2       4          150"
        "       5\n"
    )


def test_consumer_opts_map_to_gnsq_keywords():
    settings = parse_client_opts(
        "consumer-opt",
        ["tls-v1", "snappy,false", "deflate,true", "deflate_level,3", "heartbeat_interval,10s",
         "output_buffer_timeout,100ms", "max_attempts,2", "lookupd_poll_interval,1m",
         "tls_insecure_skip_verify,true", "user_agent,mine"],
        "agent/1",
    )
    kwargs = settings.connection_kwargs()
    assert kwargs["tls_v1"] is True and kwargs["snappy"] is False and kwargs["deflate"] is True
    assert kwargs["deflate_level"] == 3
    assert kwargs["heartbeat_interval"] == 10.0
    assert kwargs["output_buffer_timeout"] == 100
    assert kwargs["user_agent"] == "mine"
    assert kwargs["tls_options"]["cert_reqs"] == ssl.CERT_NONE
    assert (settings.max_attempts, settings.lookupd_poll_interval) == (2, 60.0)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("msg_timeout,1s", "unsupported option msg_timeout"),
        ("sample_rate,100", "out of range"),
        ("snappy,yes", "invalid boolean"),
        ("tls_cert,/c.pem", "tls_cert and tls_key must be given together"),
    ],
)
def test_bad_consumer_opts(value, problem):
    with pytest.raises(UsageError, match=problem):
        parse_client_opts("consumer-opt", [value], "agent/1")

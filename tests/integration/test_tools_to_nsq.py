"""to_gnsq (to_nsq) as a process against real gnsqd: stdin lines (or --delimiter pieces) to a
topic on every nsqd given, --rate, signals, bad flags, nsqd refusals and an nsqd that restarts."""

from __future__ import annotations

import signal
import time

import pytest

from ..ops import run_cli, wait_for
from ..tlscerts import make_certs
from ..toolproc import Nsqd, Tool


@pytest.fixture
def nsqd(tmp_path):
    server = Nsqd(tmp_path / "nsqd").start()
    yield server
    server.stop()


def tail(nsqd: Nsqd, topic: str, count: int) -> list[bytes]:
    """The first ``count`` messages of ``topic`` (read with gnsq_tail from the channel "t")."""
    reader = Tool("gnsq_tail", f"--topic={topic}", "--channel=t", f"--nsqd-tcp-address={nsqd.tcp}",
                  f"-n={count}")
    assert reader.wait() == 0, reader.err()
    return reader.lines()


def depth(nsqd: Nsqd, topic: str) -> int:
    stats = nsqd.stats(topic)
    return stats["depth"] if stats else 0


def test_lines_from_stdin_to_every_nsqd(tmp_path, nsqd):
    other = Nsqd(tmp_path / "other").start()
    try:
        pub = Tool("to_gnsq", "--topic=lines", f"--nsqd-tcp-address={nsqd.tcp}",
                   f"--nsqd-tcp-address={other.tcp}", stdin=True)
        pub.write(b"first\nsecond\n\n")
        pub.write(b"third\nlast without newline")
        pub.close_stdin()
        assert pub.wait() == 0, pub.err()
        expected = [b"first", b"second", b"third", b"last without newline"]
        assert tail(nsqd, "lines", 4) == expected
        assert tail(other, "lines", 4) == expected
    finally:
        other.stop()


def test_delimiter_and_producer_opts(nsqd):
    result = Tool("to_gnsq", "--topic=csv", "--delimiter=,", f"--nsqd-tcp-address={nsqd.tcp}",
                  "--producer-opt=snappy", stdin=True)
    result.write(b"a,b,,c d")
    result.close_stdin()
    assert result.wait() == 0, result.err()
    assert tail(nsqd, "csv", 3) == [b"a", b"b", b"c d"]


def test_tls_and_deflate_producer(tmp_path):
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    nsqd = Nsqd(tmp_path / "nsqd", f"--tls-cert={certs.server_cert}",
                f"--tls-key={certs.server_key}", "--https-address=").start()
    try:
        pub = Tool("to_gnsq", "--topic=sealed", f"--nsqd-tcp-address={nsqd.tcp}",
                   "--producer-opt=tls_v1,true", f"--producer-opt=tls_root_ca_file,{certs.ca}",
                   "--producer-opt=deflate", stdin=True)
        pub.write(b"one\ntwo\n")
        pub.close_stdin()
        assert pub.wait() == 0, pub.err()
        assert depth(nsqd, "sealed") == 2
    finally:
        nsqd.stop()


def test_rate_limits_publishing(nsqd):
    pub = Tool("to_gnsq", "--topic=slow", "--rate=20", f"--nsqd-tcp-address={nsqd.tcp}",
               stdin=True)
    started = time.monotonic()
    pub.write(b"".join(b"%d\n" % i for i in range(30)))
    pub.close_stdin()
    assert pub.wait() == 0, pub.err()
    elapsed = time.monotonic() - started
    assert elapsed >= 1.2  # 30 messages at 20/s, the first one free: at least ~1.45 s
    assert "Throttling messages rate to max:20/second" in pub.err()
    assert depth(nsqd, "slow") == 30


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_waiting_for_stdin(nsqd, signum):
    pub = Tool("to_gnsq", "--topic=waiting", f"--nsqd-tcp-address={nsqd.tcp}", stdin=True)
    try:
        pub.write(b"one\ntwo\n")
        wait_for(lambda: depth(nsqd, "waiting") == 2, what="two published")
        pub.signal(signum)
        assert pub.wait(5) == 0
    finally:
        pub.stop()
    assert depth(nsqd, "waiting") == 2


def test_nsqd_goes_away_and_comes_back(nsqd):
    pub = Tool("to_gnsq", "--topic=restart", f"--nsqd-tcp-address={nsqd.tcp}", stdin=True)
    try:
        pub.write(b"a\nb\n")
        wait_for(lambda: depth(nsqd, "restart") == 2, what="two published")
        nsqd.stop()
        pub.write(b"c\nd\n")
        wait_for(lambda: "retrying" in pub.err(), what="a failed publish")
        nsqd.start()
        pub.close_stdin()
        assert pub.wait() == 0, pub.err()
    finally:
        pub.stop()
    assert depth(nsqd, "restart") == 4  # two kept on disk over the restart, two published after
    assert sorted(tail(nsqd, "restart", 4)) == [b"a", b"b", b"c", b"d"]  # NSQ: no order


def test_an_error_from_nsqd_exits_1(tmp_path):
    nsqd = Nsqd(tmp_path / "nsqd", "--max-msg-size=10").start()
    try:
        pub = Tool("to_gnsq", "--topic=big", f"--nsqd-tcp-address={nsqd.tcp}", stdin=True)
        pub.write(b"small\n" + b"x" * 20 + b"\nnever\n")
        pub.close_stdin()
        assert pub.wait() == 1
        assert "E_BAD_MESSAGE" in pub.err()
        assert depth(nsqd, "big") == 1
    finally:
        nsqd.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nsqd-tcp-address=127.0.0.1:4150"], "--topic required"),
        (["--topic=t"], "--nsqd-tcp-address required"),
        (["--topic=bad topic!", "--nsqd-tcp-address=127.0.0.1:1"], "not a valid topic name"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--delimiter=ab"],
         "--delimiter must be a single byte"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--rate=fast"], "invalid integer"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--producer-opt=snappy,maybe"],
         "invalid value 'snappy,maybe' for flag --producer-opt"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--lookupd-http-address=x:1"],
         "No such option"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args, message):
    result = run_cli("to_gnsq", *args)
    assert result.returncode == 2, result
    assert message in result.stderr


def test_help_shows_the_newline_default_escaped():
    result = run_cli("to_gnsq", "--help")
    assert result.returncode == 0
    assert "[default: \\n]" in result.stdout
    assert run_cli("to_gnsq", "-version").stdout == "to_gnsq v1.3.0\n"

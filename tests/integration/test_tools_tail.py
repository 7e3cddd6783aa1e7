"""gnsq_tail (nsq_tail) as a process against real gnsqd/gnsqlookupd: output, -n, --print-topic,
lookupd discovery, TLS/snappy/deflate, signals, bad flags and an nsqd that restarts."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from ..ops import run_cli, wait_for
from ..servers import BIN
from ..tlscerts import make_certs
from ..toolproc import Nsqd, Tool, start_lookupd


@pytest.fixture
def nsqd(tmp_path):
    server = Nsqd(tmp_path / "nsqd").start()
    yield server
    server.stop()


def connected(tool: Tool, times: int = 1) -> bool:
    return tool.err().count(") connected") >= times


def test_prints_messages_published_with_curl_then_exits_after_n(nsqd):
    tail = Tool("gnsq_tail", "--topic=quick", f"--nsqd-tcp-address={nsqd.tcp}", "-n", "2")
    try:
        wait_for(lambda: connected(tail), what="tail connected")
        curl = shutil.which("curl")
        for body in (b"hello", b"world"):
            if curl:
                subprocess.run([curl, "-s", "-d", body, f"http://{nsqd.http}/pub?topic=quick"],
                               check=True, capture_output=True, timeout=10)
            else:
                nsqd.post("/pub", body, topic="quick")
        assert tail.wait() == 0
        assert tail.lines() == [b"hello", b"world"]
    finally:
        tail.stop()
    # the channel was nsq_tail's ephemeral tail<6 digits>#ephemeral, gone with its only client
    channels = nsqd.stats("quick")["channels"]
    assert channels == [] or all(c["channel_name"].endswith("#ephemeral") for c in channels)


def test_print_topic_and_several_topics(nsqd):
    tail = Tool("gnsq_tail", "-topic", "alpha", "-topic", "beta", "-print-topic",
                f"-nsqd-tcp-address={nsqd.tcp}", "--channel=watch")
    try:
        wait_for(lambda: connected(tail, 2), what="two consumers")
        nsqd.post("/pub", b"one", topic="alpha")
        nsqd.post("/pub", b"two", topic="beta")
        wait_for(lambda: len(tail.lines()) == 2, what="two lines")
        assert sorted(tail.lines()) == [b"alpha | one", b"beta | two"]
        assert nsqd.channel("alpha", "watch")["client_count"] == 1
    finally:
        tail.signal(signal.SIGTERM)
        assert tail.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_finishes_what_it_printed(nsqd, signum):
    nsqd.mpub("sig", [b"m%d" % i for i in range(50)])
    tail = Tool("gnsq_tail", "--topic=sig", "--channel=keep", f"--nsqd-tcp-address={nsqd.tcp}")
    wait_for(lambda: len(tail.lines()) == 50, what="50 lines")
    tail.signal(signum)
    assert tail.wait(10) == 0
    assert "connection closed" in tail.err()
    channel = nsqd.channel("sig", "keep")
    assert (channel["depth"], channel["in_flight_count"], channel["client_count"]) == (0, 0, 0)


def test_lookupd_discovery(tmp_path):
    lookupd = start_lookupd()
    nsqd = Nsqd(tmp_path / "nsqd", f"--lookupd-tcp-address=127.0.0.1:{lookupd.tcp_port}").start()
    tail = Tool("gnsq_tail", "--topic=found",
                f"--lookupd-http-address=127.0.0.1:{lookupd.http_port}",
                "--consumer-opt=lookupd_poll_interval,200ms", "--n=1")
    try:
        nsqd.post("/topic/create", topic="found")  # registered with the lookupd after start
        wait_for(lambda: connected(tail), what="tail found the nsqd")
        nsqd.post("/pub", b"via lookupd", topic="found")
        assert tail.wait() == 0
        assert tail.lines() == [b"via lookupd"]
    finally:
        tail.stop()
        nsqd.stop()
        lookupd.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize(
    "opts",
    [
        ["--consumer-opt=snappy"],
        ["--consumer-opt=deflate,true", "--consumer-opt=deflate_level,3"],
        ["--consumer-opt=tls_v1,true", "--consumer-opt=snappy,true"],
        ["--consumer-opt=tls_v1", "--consumer-opt=deflate"],
    ],
    ids=["snappy", "deflate", "tls+snappy", "tls+deflate"],
)
def test_tls_and_compression(tmp_path, certs, opts):
    nsqd = Nsqd(tmp_path / "nsqd", f"--tls-cert={certs.server_cert}",
                f"--tls-key={certs.server_key}", "--https-address=").start()
    if any("tls_v1" in opt for opt in opts):
        opts = [*opts, f"--consumer-opt=tls_root_ca_file,{certs.ca}"]
    tail = Tool("gnsq_tail", "--topic=secret", f"--nsqd-tcp-address={nsqd.tcp}", "-n=3", *opts)
    try:
        wait_for(lambda: connected(tail), what="tail connected")
        nsqd.mpub("secret", [b"x" * 2000, b"y", b"z"])
        assert tail.wait() == 0, tail.err()
        assert tail.lines() == [b"x" * 2000, b"y", b"z"]
        client = nsqd.stats("secret")
        assert client is not None
    finally:
        tail.stop()
        nsqd.stop()


def test_tls_refuses_a_server_it_cannot_verify(tmp_path, certs):
    nsqd = Nsqd(tmp_path / "nsqd", f"--tls-cert={certs.server_cert}",
                f"--tls-key={certs.server_key}", "--https-address=").start()
    tail = Tool("gnsq_tail", "--topic=secret", f"--nsqd-tcp-address={nsqd.tcp}",
                "--consumer-opt=tls_v1,true", f"--consumer-opt=tls_root_ca_file,{certs.rogue_cert}")
    try:
        wait_for(lambda: "connection failed" in tail.err(), what="a refused handshake")
        assert not connected(tail)
    finally:
        tail.signal(signal.SIGTERM)
        assert tail.wait() == 0
        nsqd.stop()


def test_nsqd_goes_away_and_comes_back(nsqd):
    tail = Tool("gnsq_tail", "--topic=bounce", f"--nsqd-tcp-address={nsqd.tcp}", "-n", "2")
    try:
        wait_for(lambda: connected(tail), what="first connection")
        nsqd.post("/pub", b"before", topic="bounce")
        wait_for(lambda: tail.lines() == [b"before"], what="first line")
        nsqd.stop()
        wait_for(lambda: "reconnecting" in tail.err(), what="a reconnect attempt")
        nsqd.start()
        wait_for(lambda: connected(tail, 2), what="reconnected")
        nsqd.post("/pub", b"after", topic="bounce")
        assert tail.wait() == 0
        assert tail.lines() == [b"before", b"after"]
    finally:
        tail.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nsqd-tcp-address=127.0.0.1:4150"], "--topic required"),
        (["--topic=t"], "--nsqd-tcp-address or --lookupd-http-address required"),
        (["--topic=t", "--channel=a/b", "--nsqd-tcp-address=127.0.0.1:1"],
         "--channel 'a/b' is not a valid channel name"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--lookupd-http-address=127.0.0.1:2"],
         "use --nsqd-tcp-address or --lookupd-http-address not both"),
        (["--topic=t", "--nsqd-tcp-address=nowhere"], "nsqd-tcp-address 'nowhere'"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "-n", "many"], "invalid integer 'many'"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--max-in-flight=-1"], "out of range"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--consumer-opt=warp_speed,9"],
         "unsupported option warp_speed"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--consumer-opt=deflate_level,12"],
         "invalid value 'deflate_level,12' for flag --consumer-opt"),
        (["--topic=t", "--nsqd-tcp-address=127.0.0.1:1", "--bogus"], "No such option"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args, message):
    result = run_cli("gnsq_tail", *args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert result.stdout == ""


def test_version_and_help():
    assert run_cli("gnsq_tail", "--version").stdout == "gnsq_tail v1.3.0\n"
    help_text = run_cli("gnsq_tail", "-h").stdout
    for flag in ("--channel", "--max-in-flight", "--n ", "--print-topic", "--topic",
                 "--nsqd-tcp-address", "--lookupd-http-address", "--consumer-opt"):
        assert flag in help_text


def test_n_leaves_the_rest_on_a_shared_channel(nsqd):
    nsqd.mpub("shared", [b"m%d" % i for i in range(10)])
    tail = Tool("gnsq_tail", "--topic=shared", "--channel=share", "-n=3",
                f"--nsqd-tcp-address={nsqd.tcp}")
    assert tail.wait() == 0, tail.err()
    assert len(tail.lines()) == 3
    channel = nsqd.channel("shared", "share")
    # what arrived after the third was sent back at once, not left to time out in flight
    assert (channel["depth"], channel["in_flight_count"]) == (7, 0)


def test_a_closed_stdout_exits_1_and_strands_nothing(nsqd):
    nsqd.post("/pub", b"first", topic="piped")
    reader = subprocess.Popen(
        [str(BIN / "gnsq_tail"), "--topic=piped", "--channel=p", f"--nsqd-tcp-address={nsqd.tcp}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert reader.stdout.readline() == b"first\n"
        reader.stdout.close()  # as `| head -1` does
        nsqd.mpub("piped", [b"more"] * 20)
        assert reader.wait(20) == 1
        assert b"failed to write to stdout" in reader.stderr.read()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        reader.stderr.close()
    wait_for(lambda: nsqd.channel("piped", "p")["in_flight_count"] == 0, timeout=5,
             what="nothing left in flight")

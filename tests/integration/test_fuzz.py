"""Protocol fuzzing with hypothesis against a live gnsqd: random command streams built from
V2's grammar (valid and broken parameters, bodies whose size prefix lies, random JSON) and raw
garbage after the magic.

The oracle, for every connection: the stream is sent, the write side is shut, and what comes
back must be whole V2 frames ending in a close; every error carries an nsqd code; only
E_FIN_FAILED / E_REQ_FAILED / E_TOUCH_FAILED may be followed by more frames. Meanwhile a
witness producer/consumer pair on the same server keeps working, and at the end the process
has the fds it started with (a real gnsqd) and the in-process server the greenlets it started
with. Examples are derandomized so CI replays the same streams.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..hostile import (
    FRAME_ERROR,
    FRAME_MESSAGE,
    FRAME_RESPONSE,
    HEARTBEAT,
    NON_FATAL,
    NSQ_CODES,
    gnsqd,
    live_greenlets,
    parse_frames,
    receive_until_closed,
    settle,
    size,
)
from .test_bad_input import Witness
from .test_delivery import wait_until

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the grammar --------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from(["fz", "fz2", "fz#ephemeral", "a" * 64, "a" * 65, "", "bad!", "x y"]),
    st.text(alphabet="abc._-#!\x00é", min_size=0, max_size=8),
)
numbers = st.one_of(
    st.integers(min_value=0, max_value=3000).map(str),
    st.sampled_from(["", "-1", "+5", "0x10", "1e3", "9" * 30, "4294967296", " "]),
)
msg_ids = st.one_of(
    st.just("0000000000000000"),
    st.text(alphabet="0123456789abcdef", min_size=0, max_size=20),
)
bodies = st.binary(min_size=0, max_size=64)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@st.composite
def sized(draw, body: bytes) -> bytes:
    """A size prefix that is usually right and sometimes lies (short, long, negative, huge)."""
    true = len(body)
    declared = draw(
        st.one_of(
            st.just(true),
            st.just(true),
            st.integers(min_value=-5, max_value=true + 8),
            st.sampled_from([0, -1, 0x7FFFFFFF, 5 * 1024 * 1024 + 1, 1024 * 1024 + 1]),
        )
    )
    return size(declared) + body


identify_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=100_000),
    st.sampled_from([1000, 30000, 60001, -1, 0, 2**40, 99]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
identify_keys = st.sampled_from(
    [
        "client_id",
        "hostname",
        "user_agent",
        "feature_negotiation",
        "heartbeat_interval",
        "output_buffer_size",
        "output_buffer_timeout",
        "tls_v1",
        "snappy",
        "deflate",
        "deflate_level",
        "sample_rate",
        "msg_timeout",
        "Heartbeat_Interval",
        "unknown",
    ]
)
identify_bodies = st.one_of(
    st.dictionaries(identify_keys, identify_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.sampled_from([b"", b"{", b"[]", b"null", b"{} {}", b'{"msg_timeout":1e3}']),
    st.binary(max_size=20),
)


@st.composite
def command(draw) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "NOP",
                "IDENTIFY",
                "AUTH",
                "SUB",
                "RDY",
                "FIN",
                "REQ",
                "TOUCH",
                "CLS",
                "PUB",
                "DPUB",
                "MPUB",
                "UNKNOWN",
                "SPACES",
            ]
        )
    )
    end = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b" \n"]))
    if kind == "NOP":
        return b"NOP" + end
    if kind == "IDENTIFY":
        return b"IDENTIFY" + end + draw(sized(draw(identify_bodies)))
    if kind == "AUTH":
        return b"AUTH" + end + draw(sized(draw(bodies)))
    if kind == "SUB":
        return encode(f"SUB {draw(names)} {draw(names)}") + end
    if kind == "RDY":
        return encode(f"RDY {draw(numbers)}") + end
    if kind in ("FIN", "TOUCH"):
        return encode(f"{kind} {draw(msg_ids)}") + end
    if kind == "REQ":
        return encode(f"REQ {draw(msg_ids)} {draw(numbers)}") + end
    if kind == "CLS":
        return b"CLS" + end
    if kind == "PUB":
        return encode(f"PUB {draw(names)}") + end + draw(sized(draw(bodies)))
    if kind == "DPUB":
        return encode(f"DPUB {draw(names)} {draw(numbers)}") + end + draw(sized(draw(bodies)))
    if kind == "MPUB":
        messages = draw(st.lists(bodies, max_size=4))
        count = draw(st.one_of(st.just(len(messages)), st.integers(-1, 6)))
        records = b"".join(draw(sized(body)) for body in messages)
        payload = size(count) + records
        return encode(f"MPUB {draw(names)}") + end + draw(sized(payload))
    if kind == "SPACES":
        return b"  SUB  fz  c" + end
    return draw(st.binary(min_size=0, max_size=12)).replace(b"\n", b"") + end


streams = st.lists(command(), min_size=1, max_size=8).map(b"".join)
garbage = st.one_of(
    st.binary(min_size=1, max_size=512),
    st.lists(st.sampled_from([b"\n", b"\r", b" ", b"\x00", b"\xff", b"NOP", b"PUB", b"MPUB"]))
    .map(b"".join)
    .filter(bool),
    st.binary(min_size=16 * 1024 - 8, max_size=16 * 1024 + 8),
)


# -- the oracle ------------------------------------------------------------------------------


def check_answer(received: bytes, closed: bool, sent: bytes) -> list[tuple[int, bytes]]:
    assert closed, f"connection left open after EOF; sent {sent[:200]!r}"
    frames, rest = parse_frames(received)
    assert rest == b"", f"partial frame {rest[:40]!r} after {frames[-3:]!r}"
    for index, (frame_type, data) in enumerate(frames):
        assert frame_type in (FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE), frame_type
        if frame_type == FRAME_RESPONSE:
            assert data in (b"OK", b"CLOSE_WAIT", HEARTBEAT) or data.startswith(b"{"), data
        elif frame_type == FRAME_MESSAGE:
            assert len(data) >= 26
        else:
            code = data.split(b" ", 1)[0]
            assert code in NSQ_CODES, data
            if code not in NON_FATAL:
                assert index == len(frames) - 1, f"frames after fatal {data!r}: {frames[index:]}"
    return frames


def exchange(port: int, stream: bytes) -> list[tuple[int, bytes]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        try:
            sock.sendall(b"  V2" + stream)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on a fatal error before everything was sent
        received, closed = receive_until_closed(sock, 5.0)
    finally:
        sock.close()
    return check_answer(received, closed, stream)


# -- against a gnsqd process: fds, RSS, the witness ---------------------------------------------


@pytest.fixture(scope="module")
def process(tmp_path_factory):
    with gnsqd(tmp_path_factory.mktemp("fuzz"), http=True) as running:
        running.witness = Witness(running.tcp_port)
        running.witness.check()
        running.fds_at_start = running.fds()
        running.rss_at_start = running.rss()
        running.examples = 0
        yield running
        running.witness.close()


@FUZZ
@given(stream=streams)
def test_fuzz_command_streams(process, stream):
    exchange(process.tcp_port, stream)
    process.examples += 1
    process.witness.check()


@FUZZ
@given(data=garbage)
def test_fuzz_garbage_after_magic(process, data):
    frames = exchange(process.tcp_port, data)
    process.examples += 1
    assert all(frame_type != FRAME_MESSAGE for frame_type, _ in frames)
    process.witness.check()


def test_fuzzed_process_kept_its_fds_and_memory(process):
    """Runs after the fuzz cases of this module: no fd leaked, RSS bounded, still serving."""
    process.witness.check()
    fds = settle(process.fds, process.fds_at_start)
    rss = process.rss()
    print(
        f"\nFIGURE fuzz_process: {process.examples} fuzzed connections, fds "
        f"{process.fds_at_start} before / {fds} after, RSS {process.rss_at_start} -> {rss} KiB "
        f"(peak {process.peak_rss()} KiB), witness round trips {process.witness.count}"
    )
    assert process.alive()
    assert fds <= process.fds_at_start
    assert rss - process.rss_at_start < 64 * 1024
    assert "Traceback" not in process.process.log_text()


# -- against an in-process server: greenlets --------------------------------------------------


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    from gnsq_server.nsqd.server import NSQDServer

    from ..conftest import nsqd_options
    from ..servers import ThreadedServer

    opts = nsqd_options(tmp_path_factory.mktemp("fuzz_inproc"), http_address="")
    server = ThreadedServer(lambda: NSQDServer(opts)).start()
    server.greenlets_at_start = server.call(live_greenlets)
    server.examples = 0
    yield server
    server.stop()


@settings(FUZZ, max_examples=60)
@given(stream=st.one_of(streams, garbage))
def test_fuzz_in_process(in_process, stream):
    exchange(in_process.server.tcp_port, stream)
    in_process.examples += 1


def test_fuzzed_in_process_server_kept_its_greenlets(in_process):
    start = in_process.greenlets_at_start
    assert wait_until(lambda: in_process.call(live_greenlets) <= start, timeout=5)
    after = in_process.call(live_greenlets)
    print(
        f"\nFIGURE fuzz_in_process: {in_process.examples} fuzzed connections, live greenlets "
        f"{start} before / {after} after"
    )
    witness = Witness(in_process.server.tcp_port)
    witness.check()
    witness.close()
    time.sleep(0.05)
    assert after <= start

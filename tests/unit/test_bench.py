"""scripts/bench.py: exact frame bytes, reply counting, percentiles, and one short real run."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

from ..scriptload import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench.py"
GNSQD = Path(sys.executable).parent / "gnsqd"


bench = load_script("bench")
import benchwire  # noqa: E402  (bench.py put scripts/ on sys.path)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (benchwire.encode_pub("t", b"hello"), b"PUB t\n\x00\x00\x00\x05hello"),
        (
            benchwire.encode_mpub("t", [b"ab", b"c"]),
            b"MPUB t\n\x00\x00\x00\x0f\x00\x00\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x01c",
        ),
        (benchwire.encode_sub("topic", "ch"), b"SUB topic ch\n"),
        (benchwire.encode_rdy(2500), b"RDY 2500\n"),
        (benchwire.encode_fins([b"0123456789abcdef"]), b"FIN 0123456789abcdef\n"),
        (
            benchwire.encode_fins([b"0123456789abcdef", b"fedcba9876543210"]),
            b"FIN 0123456789abcdef\nFIN fedcba9876543210\n",
        ),
        (benchwire.encode_fins([]), b""),
        (
            benchwire.encode_http_mpub_body([b"ab", b"c"]),
            b"\x00\x00\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x01c",
        ),
        (
            benchwire.encode_http_post("h:1", "/pub?topic=t", b"xy"),
            b"POST /pub?topic=t HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n\r\nxy",
        ),
    ],
)
def test_encoders_produce_exact_bytes(frame: bytes, expected: bytes) -> None:
    assert frame == expected


def test_mpub_body_size_counts_the_count_field() -> None:
    frame = benchwire.encode_mpub("t", [b"x" * 200] * 3)
    body_size, count = struct.unpack_from(">ii", frame, len(b"MPUB t\n"))
    assert (body_size, count) == (4 + 3 * 204, 3)
    assert len(frame) == len(b"MPUB t\n") + 4 + body_size


def frame(frame_type: int, data: bytes) -> bytes:
    return struct.pack(">ii", len(data) + 4, frame_type) + data


def test_count_oks_fast_path_and_mixed_frames() -> None:
    assert benchwire.OK_FRAME == frame(0, b"OK")
    assert benchwire.count_oks(benchwire.OK_FRAME * 7) == (7, 0, b"")
    mixed = (
        benchwire.OK_FRAME + frame(0, b"_heartbeat_") + benchwire.OK_FRAME + benchwire.OK_FRAME[:3]
    )
    assert benchwire.count_oks(mixed) == (2, 1, benchwire.OK_FRAME[:3])
    with pytest.raises(benchwire.ServerError, match="E_BAD_TOPIC"):
        benchwire.count_oks(benchwire.OK_FRAME + frame(1, b"E_BAD_TOPIC PUB topic name"))


def test_scan_messages_takes_ids_and_stamps() -> None:
    body = struct.pack(">q", 123456789) + b"rest"
    one = benchwire.message_frame(b"0123456789abcdef", body)
    two = benchwire.message_frame(b"fedcba9876543210", body)
    assert (
        one[4:8] == b"\x00\x00\x00\x02" and one[benchwire.MSG_ID_AT :][:16] == b"0123456789abcdef"
    )
    stamps = array("q")
    ids, heartbeats, tail = benchwire.scan_messages(
        one + frame(0, b"_heartbeat_") + two[:9], stamps
    )
    assert ids == [b"0123456789abcdef"] and heartbeats == 1 and tail == two[:9]
    assert list(stamps) == [123456789]


def test_parse_http_response() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nOK"
    assert benchwire.parse_http_response(reply + b"HTTP/1.1") == (200, b"OK", len(reply))
    assert benchwire.parse_http_response(reply[:-1]) is None
    error = b'HTTP/1.1 400 Bad Request\r\ncontent-length: 9\r\n\r\n{"m":"x"}'
    assert benchwire.parse_http_response(error) == (400, b'{"m":"x"}', len(error))


def test_percentile_interpolates_like_numpy() -> None:
    values = list(range(1, 101))
    assert benchwire.percentile(values, 50) == 50.5
    assert benchwire.percentile(values, 99) == pytest.approx(99.01)
    assert benchwire.percentile(values, 99.9) == pytest.approx(99.901)
    assert benchwire.percentile(values, 0) == 1 and benchwire.percentile(values, 100) == 100
    assert benchwire.percentile([7.0], 99.9) == 7.0
    assert math.isnan(benchwire.percentile([], 50))


def test_summarize_reports_median_and_spread() -> None:
    runs = [{"status": "ok", "msg_per_s": rate, "p50_ms": 1.0} for rate in (90.0, 100.0, 120.0)]
    summary = bench.summarize(runs, body_size=200)
    assert summary["status"] == "ok" and summary["msg_per_s"] == 100.0
    assert summary["spread_pct"] == pytest.approx(30.0)
    assert summary["mb_per_s"] == pytest.approx(0.02)
    assert bench.summarize([{"status": "unavailable: x"}], 200)["status"] == "unavailable: x"


@pytest.mark.skipif(not GNSQD.exists(), reason="gnsqd is not installed in this venv")
def test_short_real_run_against_gnsqd(tmp_path: Path) -> None:
    """bench.py starts gnsqd itself (without HTTP if gnsqd cannot serve it yet)."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--start-gnsqd",
        f"--gnsqd={GNSQD}",
        "--mode",
        "pub,mpub",
        "--duration",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    modes = json.loads(out.read_text())["modes"]
    for mode in ("pub", "mpub"):
        assert modes[mode]["status"] == "ok", modes[mode]
        assert modes[mode]["msg_per_s"] > 0 and modes[mode]["rss_kb"] > 0
        assert modes[mode]["p50_ms"] > 0
    assert "pub " in proc.stdout and "mpub " in proc.stdout

"""Snappy framing and raw deflate streams, fed in arbitrary pieces, against nsqd 1.3.0's bytes."""

from __future__ import annotations

import json
import os
import random
import zlib

import pytest

from gnsq_server.nsqd.compression import (
    SNAPPY_STREAM_IDENTIFIER,
    CompressionError,
    DeflateDecoder,
    DeflateEncoder,
    SnappyDecoder,
    SnappyEncoder,
    deflate_level,
)
from gnsq_server.wire import OK_FRAME

from ..captures import CAPTURES

CASES = {c["name"]: c for c in json.loads((CAPTURES / "tcp-transcripts.json").read_text())}


def drain(decoder, size: int = 1000) -> bytes:
    out = b""
    while chunk := decoder.read(size):
        out += chunk
    return out


def feed_in_pieces(decoder, data: bytes, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out, pos = b"", 0
    while pos < len(data):
        step = rng.randint(1, 700)
        decoder.feed(data[pos : pos + step])
        pos += step
        out += drain(decoder, rng.randint(1, 5000))
    return out


def test_snappy_ok_is_nsqds_bytes():
    """nsqd's first snappy OK carries the stream identifier, later ones only their chunk."""
    encoder = SnappyEncoder()
    first = encoder.encode(OK_FRAME)
    second = encoder.encode(OK_FRAME)
    assert first == bytes.fromhex("ff060000734e61507059010e000026982bcf00000006000000004f4b")
    assert second == first[len(SNAPPY_STREAM_IDENTIFIER) :]
    assert CASES["identify_snappy_roundtrip"]["recv_hex"].endswith((first + second).hex())


def test_snappy_decodes_the_captured_client_stream():
    sent = bytes.fromhex(CASES["identify_snappy_roundtrip"]["send"][1]["send_hex"])
    decoder = SnappyDecoder()
    decoder.feed(sent)
    assert drain(decoder) == b"PUB tcp_snappy\n\x00\x00\x00\x02hi"


@pytest.mark.parametrize("seed", range(3))
def test_snappy_roundtrip_in_pieces(seed):
    rng = random.Random(seed)
    encoder = SnappyEncoder()
    parts = [os.urandom(rng.randint(1, 3000)) + b"x" * rng.randint(0, 200_000) for _ in range(5)]
    wire = b"".join(encoder.encode(part) for part in parts)
    assert feed_in_pieces(SnappyDecoder(), wire, seed) == b"".join(parts)


def test_snappy_big_buffers_are_split_into_64k_chunks():
    data = os.urandom(200_000)
    wire = SnappyEncoder().encode(data)
    pos, sizes = len(SNAPPY_STREAM_IDENTIFIER), []
    while pos < len(wire):
        length = int.from_bytes(wire[pos + 1 : pos + 4], "little")
        sizes.append(length)
        pos += 4 + length
    assert max(sizes) <= 65536 + 4 and len(sizes) == 4


@pytest.mark.parametrize(
    "wire, problem",
    [
        (b"\x01\x06\x00\x00abcdef", "does not start"),
        (SNAPPY_STREAM_IDENTIFIER[:4] + b"sNaPpX", "identifier"),
        (SNAPPY_STREAM_IDENTIFIER + b"\x02\x01\x00\x00x", "reserved unskippable"),
        (SNAPPY_STREAM_IDENTIFIER + b"\x00\xff\xff\xff", "too long"),
        (SNAPPY_STREAM_IDENTIFIER + b"\x01\x02\x00\x00ab", "shorter than its checksum"),
        (SNAPPY_STREAM_IDENTIFIER + b"\x01\x06\x00\x00\x00\x00\x00\x00OK", "corrupt"),
    ],
)
def test_snappy_corrupt_streams(wire, problem):
    decoder = SnappyDecoder()
    decoder.feed(wire)
    with pytest.raises(CompressionError, match=problem):
        drain(decoder)


def test_snappy_skippable_chunks_are_ignored():
    encoder = SnappyEncoder()
    skippable = b"\xfe\x03\x00\x00pad" + b"\x80\x01\x00\x00z"
    wire = encoder.encode(b"one") + skippable + encoder.encode(b"two")
    decoder = SnappyDecoder()
    decoder.feed(wire)
    assert drain(decoder) == b"onetwo"


def test_deflate_roundtrip_matches_the_capture_after_inflating():
    """nsqd's deflate bytes depend on Go's compressor: the plain frames are what must match."""
    case = CASES["identify_deflate_roundtrip"]
    encoder = DeflateEncoder(1)
    wire = encoder.encode(OK_FRAME) + encoder.encode(OK_FRAME)
    inflated = zlib.decompressobj(-15).decompress(wire)
    assert inflated.hex() == case["decoded_after_json"]["inflated_hex"]
    assert wire.endswith(b"\x00\x00\xff\xff")  # each write ends with a sync flush


def test_deflate_decodes_the_captured_client_stream():
    sent = bytes.fromhex(CASES["identify_deflate_roundtrip"]["send"][1]["send_hex"])
    decoder = DeflateDecoder()
    decoder.feed(sent)
    assert drain(decoder).startswith(b"PUB tcp_deflate\n")


@pytest.mark.parametrize("level", [1, 6, 9])
def test_deflate_roundtrip_in_pieces(level):
    encoder = DeflateEncoder(level)
    parts = [os.urandom(500) + b"abc" * 20_000 for _ in range(4)]
    wire = b"".join(encoder.encode(part) for part in parts)
    assert feed_in_pieces(DeflateDecoder(), wire, level) == b"".join(parts)


def test_deflate_output_is_bounded_per_read():
    """A small bomb does not turn into one huge buffer: reads come out at most `size` long."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    wire = bomb.compress(b"\x00" * 10_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    decoder = DeflateDecoder()
    decoder.feed(wire)
    sizes = set()
    total = 0
    while chunk := decoder.read(65536):
        sizes.add(len(chunk))
        total += len(chunk)
    assert max(sizes) <= 65536 and total == 10_000_000


def test_deflate_corrupt_and_finished_streams():
    decoder = DeflateDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(CompressionError):
        decoder.read(100)
    finished = zlib.compressobj(6, zlib.DEFLATED, -15)
    decoder = DeflateDecoder()
    decoder.feed(finished.compress(b"bye") + finished.flush() + b"trailing")
    assert drain(decoder) == b"bye"
    assert decoder.finished


@pytest.mark.parametrize(
    "requested, max_level, expected", [(0, 6, 6), (-3, 6, 6), (1, 6, 1), (9, 6, 6), (0, 3, 3)]
)
def test_deflate_level(requested, max_level, expected):
    assert deflate_level(requested, max_level) == expected

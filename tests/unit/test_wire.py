"""Framing, command lines, names and the IDENTIFY decoder, byte for byte."""

from __future__ import annotations

import pytest

from gnsq_server.nsqd.protocol_v2 import decode_identify
from gnsq_server.wire import (
    CLOSE_WAIT_FRAME,
    HEARTBEAT_FRAME,
    OK_FRAME,
    ClientError,
    FatalClientError,
    error_frame,
    go_quote,
    is_ephemeral,
    is_valid_name,
    parse_uint,
    split_command,
)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (OK_FRAME, "00000006000000004f4b"),
        (HEARTBEAT_FRAME, "0000000f000000005f6865617274626561745f"),
        (CLOSE_WAIT_FRAME, "0000000e00000000434c4f53455f57414954"),
        (
            error_frame(FatalClientError("E_BAD_PROTOCOL")),
            "0000001200000001455f4241445f50524f544f434f4c",
        ),
        (
            error_frame(ClientError("E_FIN_FAILED", "FIN x failed ID not in flight")),
            "0000002e00000001" + b"E_FIN_FAILED FIN x failed ID not in flight".hex(),
        ),
    ],
)
def test_frames(frame, expected):
    assert frame.hex() == expected


def test_only_three_errors_are_not_fatal_by_construction():
    assert not ClientError("E_FIN_FAILED").fatal
    assert FatalClientError("E_INVALID").fatal


@pytest.mark.parametrize(
    ("line", "params"),
    [
        (b"PUB t\n", [b"PUB", b"t"]),
        (b"PUB t\r\n", [b"PUB", b"t"]),
        (b"PUB  t\n", [b"PUB", b"", b"t"]),
        (b"\n", [b""]),
        (b"RDY 1 \n", [b"RDY", b"1", b""]),
        (b"NOP\r\r\n", [b"NOP\r"]),
    ],
)
def test_split_command(line, params):
    assert split_command(line) == params


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("t", True),
        ("a.b_c-D9", True),
        ("t" * 64, True),
        ("t" * 65, False),
        ("", False),
        ("bad!topic", False),
        ("x#ephemeral", True),
        ("t" * 54 + "#ephemeral", True),
        ("t" * 55 + "#ephemeral", False),
        ("tcp#eph", False),
        ("#ephemeral", False),
        ("sp ace", False),
    ],
)
def test_names(name, valid):
    assert is_valid_name(name) is valid


def test_ephemeral_suffix():
    assert is_ephemeral("c#ephemeral") and not is_ephemeral("c")


@pytest.mark.parametrize(("raw", "value"), [(b"0", 0), (b"2500", 2500), (b"", 0), (b"007", 7)])
def test_parse_uint(raw, value):
    assert parse_uint(raw) == value


@pytest.mark.parametrize("raw", [b"-1", b"+1", b"1.0", b"abc", b" 1", "١".encode()])
def test_parse_uint_refuses(raw):
    with pytest.raises(ValueError):
        parse_uint(raw)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("bad!topic", '"bad!topic"'), ("", '""'), ('a"b', '"a\\"b"'), ("\x00", '"\\x00"')],
)
def test_go_quote(text, quoted):
    assert go_quote(text) == quoted


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"{}", {}),
        (b"null", {}),
        (b'{"short_id":"a","long_id":"b","bogus":[1]}', {}),
        (
            b'{"Feature_Negotiation":true,"HEARTBEAT_INTERVAL":2000}',
            {"feature_negotiation": True, "heartbeat_interval": 2000},
        ),
        (b'{"client_id":null}', {}),
        (b'{"client_id":"\xff"}', {"client_id": "\ufffd"}),
    ],
)
def test_decode_identify(body, fields):
    assert decode_identify(body) == fields


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"heartbeat_interval":"1000"}',
        b'{"heartbeat_interval":1.5}',
        b'{"feature_negotiation":1}',
        b'{"sample_rate":4294967296}',
        b'{"x":NaN}',
        b"[" * 5000,
    ],
)
def test_decode_identify_refuses(body):
    with pytest.raises(ValueError):
        decode_identify(body)

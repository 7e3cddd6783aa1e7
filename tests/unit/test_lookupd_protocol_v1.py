"""Protocol V1 without sockets: bytes in (after the magic), bytes out, and whether it closed."""

from __future__ import annotations

import io
import struct

import pytest

from gnsq_server.lookupd import protocol_v1
from gnsq_server.lookupd.protocol_v1 import (
    ClientV1,
    LookupProtocolV1,
    decode_peer_fields,
    encode_response,
    go_json_dumps,
    parse_command_line,
)
from gnsq_server.lookupd.registry import RegistrationDB

REMOTE = "127.0.0.1:55968"
SERVER_INFO = {
    "tcp_port": 4160,
    "http_port": 4161,
    "version": "1.3.0",
    "broadcast_address": "127.0.0.1",
    "hostname": "nsq-fixture",
}
NSQD_BODY = (
    b'{"broadcast_address":"127.0.0.1","hostname":"nsq-fixture","http_port":4151,'
    b'"tcp_port":4150,"version":"1.3.0"}'
)
IDENTIFY = b"IDENTIFY\n" + struct.pack(">i", len(NSQD_BODY)) + NSQD_BODY
IDENTIFY_REPLY = encode_response(
    b'{"broadcast_address":"127.0.0.1","hostname":"nsq-fixture","http_port":4161,'
    b'"tcp_port":4160,"version":"1.3.0"}'
)
OK = b"\x00\x00\x00\x02OK"


def body(data: bytes) -> bytes:
    return b"IDENTIFY\n" + struct.pack(">i", len(data)) + data


def err(text: bytes) -> bytes:
    return encode_response(text)


class Session:
    """One connection fed from a byte string; records what the server wrote."""

    def __init__(self, db: RegistrationDB | None = None) -> None:
        self.db = db or RegistrationDB()
        self.protocol = LookupProtocolV1(self.db, lambda: SERVER_INFO)
        self.client = ClientV1(REMOTE)
        self.written = bytearray()

    def run(self, data: bytes) -> bytes:
        self.protocol.io_loop(self.client, io.BytesIO(data), self.written.extend)
        return bytes(self.written)


# (name, bytes after the magic, exact reply); every case ends at the end of input or at the
# fatal error, so `closed_early` says whether input was left unread.
CASES = [
    ("identify_ok", IDENTIFY, IDENTIFY_REPLY),
    (
        "identify_again",
        IDENTIFY + IDENTIFY,
        IDENTIFY_REPLY + err(b"E_INVALID cannot IDENTIFY again"),
    ),
    ("identify_missing_fields", body(b"{}"), err(b"E_BAD_BODY IDENTIFY missing fields")),
    ("identify_null", body(b"null"), err(b"E_BAD_BODY IDENTIFY missing fields")),
    (
        "identify_zero_port",
        body(NSQD_BODY.replace(b"4150", b"0")),
        err(b"E_BAD_BODY IDENTIFY missing fields"),
    ),
    (
        "identify_invalid_json",
        body(b"not json"),
        err(b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
    ),
    ("identify_empty_body", body(b""), err(b"E_BAD_BODY IDENTIFY failed to decode JSON body")),
    ("identify_array", body(b"[]"), err(b"E_BAD_BODY IDENTIFY failed to decode JSON body")),
    (
        "identify_string_port",
        body(NSQD_BODY.replace(b"4150", b'"4150"')),
        err(b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
    ),
    (
        "identify_float_port",
        body(NSQD_BODY.replace(b"4150", b"4150.0")),
        err(b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
    ),
    (
        "identify_nan",
        body(b'{"tcp_port":NaN}'),
        err(b"E_BAD_BODY IDENTIFY failed to decode JSON body"),
    ),
    (
        "identify_eof_in_size",
        b"IDENTIFY\n\x00\x00",
        err(b"E_BAD_BODY IDENTIFY failed to read body size"),
    ),
    (
        "identify_eof_in_body",
        b"IDENTIFY\n\x00\x00\x00d{}",
        err(b"E_BAD_BODY IDENTIFY failed to read body"),
    ),
    (
        "identify_negative_size",
        b"IDENTIFY\n\xff\xff\xff\xff",
        err(b"E_BAD_BODY IDENTIFY invalid body size -1"),
    ),
    (
        "identify_huge_size",
        b"IDENTIFY\n\x7f\xff\xff\xff",
        err(b"E_BAD_BODY IDENTIFY invalid body size 2147483647"),
    ),
    ("register_topic", IDENTIFY + b"REGISTER t\n", IDENTIFY_REPLY + OK),
    ("register_channel_extra", IDENTIFY + b"REGISTER t c extra\n", IDENTIFY_REPLY + OK),
    ("register_trailing_space", IDENTIFY + b"REGISTER t \t \r\n", IDENTIFY_REPLY + OK),
    (
        "register_double_space",
        IDENTIFY + b"REGISTER  t\n",
        IDENTIFY_REPLY + err(b"E_BAD_TOPIC REGISTER topic name '' is not valid"),
    ),
    (
        "register_no_params",
        IDENTIFY + b"REGISTER\n",
        IDENTIFY_REPLY + err(b"E_INVALID REGISTER insufficient number of params"),
    ),
    (
        "register_bad_topic",
        IDENTIFY + b"REGISTER bad!topic\n",
        IDENTIFY_REPLY + err(b"E_BAD_TOPIC REGISTER topic name 'bad!topic' is not valid"),
    ),
    (
        "register_bad_channel",
        IDENTIFY + b"REGISTER t bad!chan\n",
        IDENTIFY_REPLY + err(b"E_BAD_CHANNEL REGISTER channel name 'bad!chan' is not valid"),
    ),
    (
        "register_undecodable_topic",
        IDENTIFY + b"REGISTER \xff\xfe\n",
        IDENTIFY_REPLY + err(b"E_BAD_TOPIC REGISTER topic name '\xff\xfe' is not valid"),
    ),
    ("register_before_identify", b"REGISTER t\n", err(b"E_INVALID client must IDENTIFY")),
    (
        "unregister_bad_topic",
        IDENTIFY + b"UNREGISTER bad!topic\n",
        IDENTIFY_REPLY + err(b"E_BAD_TOPIC UNREGISTER topic name 'bad!topic' is not valid"),
    ),
    (
        "unregister_no_params",
        IDENTIFY + b"UNREGISTER\n",
        IDENTIFY_REPLY + err(b"E_INVALID UNREGISTER insufficient number of params"),
    ),
    ("unregister_before_identify", b"UNREGISTER t\n", err(b"E_INVALID client must IDENTIFY")),
    ("ping_before_identify", b"PING\n", OK),
    ("ping_crlf_and_spaces", b"  PING \r\n", OK),
    ("ping_unicode_space", "\u3000PING\u00a0\n".encode(), OK),
    ("ping_extra_params", b"PING x y\n", OK),
    ("pipelined", b"PING\nPING\nPING\n", OK * 3),
    ("invalid_command", b"FOO\nPING\n", err(b"E_INVALID invalid command FOO")),
    ("invalid_command_lowercase", b"ping\n", err(b"E_INVALID invalid command ping")),
    ("invalid_command_unit_separator", b"PING\x1f\n", err(b"E_INVALID invalid command PING\x1f")),
    ("empty_line", b"\n", err(b"E_INVALID invalid command ")),
    ("eof_in_command_line", b"PING", b""),
]


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_session_bytes(name, data, expected):
    assert Session().run(data) == expected


def test_line_longer_than_the_limit_closes_silently(monkeypatch):
    monkeypatch.setattr(protocol_v1, "MAX_LINE_LENGTH", 16)
    assert Session().run(b"PING " + b"x" * 20 + b"\nPING\n") == b""
    assert Session().run(b"PING " + b"x" * 10 + b"\n") == OK  # 16 bytes with the newline


def test_identify_registers_the_client_and_close_unregisters():
    session = Session()
    session.run(IDENTIFY + b"REGISTER t c\n")
    db = session.db
    # the connection ended with the input: the producer left every key, the keys stay
    assert sorted(":".join(r) for r, _ in db.items()) == ["channel:t:c", "client::", "topic:t:"]
    assert all(not producers for _, producers in db.items())


def test_identify_peer_info_and_ping_refresh():
    ticks = iter(range(1000, 2000, 100))
    db = RegistrationDB(clock=lambda: next(ticks))
    protocol = LookupProtocolV1(db, lambda: SERVER_INFO)
    client = ClientV1(REMOTE)
    reader = io.BytesIO(IDENTIFY[len(b"IDENTIFY\n") :])
    protocol.exec(client, ["IDENTIFY"], reader)
    info = client.peer_info
    assert (info.id, info.remote_address, info.hostname, info.broadcast_address) == (
        REMOTE,
        REMOTE,
        "nsq-fixture",
        "127.0.0.1",
    )
    assert (info.tcp_port, info.http_port, info.version, info.last_update) == (
        4150,
        4151,
        "1.3.0",
        1000,
    )
    protocol.exec(client, ["PING"], reader)
    assert info.last_update == 1100


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (
            NSQD_BODY,
            {
                "broadcast_address": "127.0.0.1",
                "hostname": "nsq-fixture",
                "http_port": 4151,
                "tcp_port": 4150,
                "version": "1.3.0",
            },
        ),
        (b'{"TCP_Port":1,"tcp_port":2}', {"tcp_port": 2}),  # Go folds case; last one wins
        (b'{"tcp_port":null,"extra":[1]}', {}),
        (b'{"remote_address":"x"}', {"remote_address": "x"}),
        (b'{"hostname":"a\xffb"}', {"hostname": "a\ufffdb"}),
    ],
)
def test_decode_peer_fields(raw, fields):
    assert decode_peer_fields(raw) == fields


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b'"x"',
        b"1",
        b'{"tcp_port":true}',
        b'{"tcp_port":1e3}',
        b'{"tcp_port":9223372036854775808}',
        b'{"version":1}',
        b"{} x",
        b'{"a":Infinity}',
    ],
)
def test_decode_peer_fields_rejects(raw):
    with pytest.raises(ValueError):
        decode_peer_fields(raw)


@pytest.mark.parametrize(
    ("line", "params"),
    [
        (b"REGISTER t c\n", ["REGISTER", "t", "c"]),
        (b" \tREGISTER t  c \r\n", ["REGISTER", "t", "", "c"]),
        (b"\n", [""]),
        (b"PING\x1c\n", ["PING\x1c"]),  # Go does not count \x1c as space
    ],
)
def test_parse_command_line(line, params):
    assert parse_command_line(line) == params


def test_encode_response():
    assert encode_response(b"") == b"\x00\x00\x00\x00"
    assert encode_response(b"E_BAD_PROTOCOL").hex() == "0000000e455f4241445f50524f544f434f4c"


def test_go_json_dumps_sorted_and_html_safe():
    assert go_json_dumps({"b": "<&>", "a": [1, True, None]}, sort_keys=True) == (
        '{"a":[1,true,null],"b":"\\u003c\\u0026\\u003e"}'
    )

"""nsqd -> nsqlookupd commands, byte-exact against what nsqd 1.3.0 sent (no sockets)."""

from __future__ import annotations

import io
import json
import struct
from types import SimpleNamespace

import pytest

from gnsq_server.nsqd import lookup_peer
from gnsq_server.nsqd.lookup_peer import (
    PING,
    Lookup,
    LookupdError,
    LookupPeer,
    command_text,
    format_peer_info,
    go_map_json,
    identify_command,
    parse_peer_info,
    read_response,
    register_command,
    snapshot_registrations,
    unregister_command,
)

from ..captures import CAPTURES

FIXTURE = CAPTURES / "nsqd-to-lookupd.json"
FIXTURE_IDENTITY = {
    "version": "1.3.0",
    "tcp_port": 4150,
    "http_port": 4151,
    "hostname": "nsq-fixture",
    "broadcast_address": "127.0.0.1",
}


def fixture_exchanges() -> list[dict]:
    events = json.loads(FIXTURE.read_text())["events"]
    return [exchange for event in events for exchange in event["exchanges"]]


def sent_by_nsqd() -> list[bytes]:
    return [
        bytes.fromhex(x["hex"]) for x in fixture_exchanges() if x["direction"] == "nsqd->lookupd"
    ]


def lookupd_replies() -> list[bytes]:
    return [
        bytes.fromhex(x["hex"]) for x in fixture_exchanges() if x["direction"] == "lookupd->nsqd"
    ]


def reader(data: bytes):
    stream = io.BytesIO(data)

    def read_exactly(size: int) -> bytes:
        chunk = stream.read(size)
        if len(chunk) < size:
            raise EOFError("EOF")
        return chunk

    return read_exactly


def test_identify_is_byte_exact() -> None:
    sent = sent_by_nsqd()
    assert sent[0] == lookup_peer.MAGIC_V1
    assert identify_command(FIXTURE_IDENTITY) == sent[1]


def test_identify_body_is_go_map_json() -> None:
    body = go_map_json({"b": "<&>", "a": 1, "c": "\u2028é"})
    assert body == '{"a":1,"b":"\\u003c\\u0026\\u003e","c":"\\u2028é"}'.encode()


@pytest.mark.parametrize(
    "command, expected",
    [
        (register_command("lk_a"), b"REGISTER lk_a\n"),
        (register_command("lk_a", "c1"), b"REGISTER lk_a c1\n"),
        (register_command("lk_a", "e#ephemeral"), b"REGISTER lk_a e#ephemeral\n"),
        (unregister_command("lk_a", "e#ephemeral"), b"UNREGISTER lk_a e#ephemeral\n"),
        (unregister_command("lk_a", "c1"), b"UNREGISTER lk_a c1\n"),
        (unregister_command("lk_a"), b"UNREGISTER lk_a\n"),
        (PING, b"PING\n"),
    ],
)
def test_command_lines(command: bytes, expected: bytes) -> None:
    assert command == expected
    assert expected in sent_by_nsqd()


def test_every_line_nsqd_sent_is_one_we_encode() -> None:
    ours = {identify_command(FIXTURE_IDENTITY), lookup_peer.MAGIC_V1, PING}
    for line in sent_by_nsqd():
        if line in ours:
            continue
        verb, *params = line.rstrip(b"\n").decode().split(" ")
        encode = {"REGISTER": register_command, "UNREGISTER": unregister_command}[verb]
        assert encode(*params) == line


def test_lookupd_replies_decode() -> None:
    replies = lookupd_replies()
    info = parse_peer_info(read_response(reader(replies[0]), 5242880))
    assert info == {
        "broadcast_address": "127.0.0.1",
        "hostname": "nsq-fixture",
        "http_port": 4161,
        "tcp_port": 4160,
        "version": "1.3.0",
    }
    assert format_peer_info(info) == (
        "{TCPPort:4160 HTTPPort:4161 Version:1.3.0 BroadcastAddress:127.0.0.1}"
    )
    for reply in replies[1:]:
        if reply != replies[0]:
            assert read_response(reader(reply), 5242880) == b"OK"


def test_back_to_back_responses() -> None:
    read = reader(b"\x00\x00\x00\x02OK\x00\x00\x00\x00\x00\x00\x00\x04PONG")
    assert [read_response(read, 100) for _ in range(3)] == [b"OK", b"", b"PONG"]
    with pytest.raises(EOFError):
        read_response(read, 100)


@pytest.mark.parametrize(
    "data, limit",
    [
        (struct.pack(">i", 11) + b"x" * 11, 10),
        (b"\xff\xff\xff\xff", 10),
    ],
)
def test_response_size_is_bounded(data: bytes, limit: int) -> None:
    with pytest.raises(LookupdError, match="greater than limit"):
        read_response(reader(data), limit)


def test_truncated_response() -> None:
    with pytest.raises(EOFError):
        read_response(reader(b"\x00\x00\x00\x05OK"), 100)


@pytest.mark.parametrize("reply", [b"E_INVALID", b"not json", b"[1,2]"])
def test_unusable_identify_reply(reply: bytes) -> None:
    with pytest.raises(LookupdError):
        parse_peer_info(reply)


def test_command_text() -> None:
    assert command_text(register_command("t", "c")) == "REGISTER t c"
    assert command_text(identify_command({"a": 1})) == "IDENTIFY"


def fake_topic(name: str, *channels: str):
    return SimpleNamespace(name=name, channels=dict.fromkeys(channels))


def test_snapshot_registers_channels_or_the_bare_topic() -> None:
    topics = [fake_topic("lk_b", "c"), fake_topic("lk_c"), fake_topic("t", "a", "b#ephemeral")]
    assert snapshot_registrations(topics) == [
        b"REGISTER lk_b c\n",
        b"REGISTER lk_c\n",
        b"REGISTER t a\n",
        b"REGISTER t b#ephemeral\n",
    ]


def fake_nsqd(**opts):
    defaults = {
        "broadcast_address": "127.0.0.1",
        "broadcast_tcp_port": 0,
        "broadcast_http_port": 0,
        "nsqlookupd_tcp_addresses": [],
        "max_body_size": 5242880,
    }
    return SimpleNamespace(
        opts=SimpleNamespace(**{**defaults, **opts}),
        hostname="nsq-fixture",
        tcp_port=4150,
        http_port=4151,
        topics={},
    )


def test_identity_uses_bound_ports_unless_broadcast_ports_are_set() -> None:
    assert identify_command(Lookup(fake_nsqd()).identity()) == sent_by_nsqd()[1]
    identity = Lookup(fake_nsqd(broadcast_tcp_port=5150, broadcast_http_port=5151)).identity()
    assert (identity["tcp_port"], identity["http_port"]) == (5150, 5151)


def test_peer_queues_nothing_until_connected() -> None:
    peer = LookupPeer("127.0.0.1:4160", 100, dict, list)
    assert not peer.send(b"REGISTER t\n")
    assert peer.http_address is None
    peer.ready = True  # as after IDENTIFY and the registration snapshot
    assert peer.send(b"REGISTER t\n")
    peer.ping()
    peer.ping()
    assert list(peer._pending) == [b"REGISTER t\n", PING]


def test_peer_resyncs_instead_of_growing_without_bound(monkeypatch) -> None:
    monkeypatch.setattr(lookup_peer, "MAX_PENDING", 2)
    peer = LookupPeer("127.0.0.1:4160", 100, dict, list)
    peer.ready = True
    assert peer.send(b"a\n") and peer.send(b"b\n")
    assert not peer.send(b"c\n")
    assert not peer.ready and not peer._pending
    assert peer._resync_reason == "too many queued commands"


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"broadcast_address": "127.0.0.1", "http_port": 4161}, "127.0.0.1:4161"),
        ({"broadcast_address": "::1", "http_port": 4161}, "[::1]:4161"),
        ({"broadcast_address": "", "http_port": 4161}, None),
    ],
)
def test_peer_http_address(info: dict, expected: str | None) -> None:
    peer = LookupPeer("127.0.0.1:4160", 100, dict, list)
    peer.info = info
    assert peer.http_address == expected

"""Message encoding and nsqd's snowflake ids."""

from __future__ import annotations

import struct
import time

from gnsq_server.nsqd.message import IdFactory, Message, encode_frames

TWEPOCH = 1288834974288


def test_encoding_is_nsqd_disk_and_wire_layout():
    msg = Message(b"0123456789abcdef", b"hello", 1_700_000_000_123_456_789, attempts=3)
    encoded = msg.encode()
    assert (
        encoded == struct.pack(">qH", 1_700_000_000_123_456_789, 3) + b"0123456789abcdef" + b"hello"
    )
    assert encode_frames([msg]) == struct.pack(">ii", len(encoded) + 4, 2) + encoded
    again = Message.decode(encoded)
    assert (again.id, again.body, again.timestamp, again.attempts) == (
        msg.id,
        msg.body,
        msg.timestamp,
        3,
    )


def test_a_delivery_batch_is_its_frames_back_to_back():
    msgs = [Message(b"%016x" % i, b"body-%d" % i * i, 1_000 + i, attempts=i) for i in range(1, 4)]
    expected = b"".join(
        struct.pack(">ii", len(m.encode()) + 4, 2) + m.encode() for m in msgs
    )
    assert encode_frames(msgs) == expected
    assert encode_frames([]) == b""


def test_attempts_wrap_like_uint16_on_the_wire():
    assert Message(b"0" * 16, b"x", 0, attempts=65537).encode()[8:10] == b"\x00\x01"


def test_copy_shares_id_body_and_timestamp_but_not_state():
    msg = Message(b"0" * 16, b"x", 5, attempts=2)
    msg.defer = 1.5
    twin = msg.copy()
    assert (twin.id, twin.body, twin.timestamp, twin.attempts, twin.defer) == (
        msg.id,
        msg.body,
        5,
        2,
        1.5,
    )
    twin.attempts += 1
    assert msg.attempts == 2


def test_ids_carry_node_time_and_sequence_as_nsqd_does():
    before = time.time_ns() >> 20
    ids = IdFactory(302).next_ids(3)
    after = time.time_ns() >> 20
    values = [int(i, 16) for i in ids]
    assert all(len(i) == 16 and i == i.lower() for i in ids)
    assert [(v >> 12) & 0x3FF for v in values] == [302] * 3
    assert all(before <= (v >> 22) + TWEPOCH <= after for v in values)
    assert [v & 0xFFF for v in values] == list(range(values[0] & 0xFFF, (values[0] & 0xFFF) + 3))


def test_ids_are_unique_and_increasing_past_sequence_exhaustion():
    factory = IdFactory(1)
    ids = factory.next_ids(10_000) + [factory.next_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_a_clock_going_backwards_does_not_reuse_ids(monkeypatch):
    factory = IdFactory(1)
    first = factory.next_ids(5)
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now - 10_000_000_000)
    later = factory.next_ids(5)
    assert later[0] > first[-1]

"""Messages, their IDs, and the one byte layout used both on the wire and on disk."""

from __future__ import annotations

import struct
import time
from itertools import repeat

# [int64 timestamp_ns][uint16 attempts][16 bytes ASCII hex id][body ...]
_HEADER = struct.Struct(">qH16s")
HEADER_SIZE = _HEADER.size  # 26
# A message frame: [int32 size][int32 frame type = 2] followed by the message encoding.
_FRAME_HEADER = struct.Struct(">iiqH16s")
_FRAME_TYPE_MESSAGE = 2
_FRAME_OVERHEAD = HEADER_SIZE + 4  # the frame size counts the frame type field

# nsqd's guid.go snowflake: 41 bits of (ns >> 20) since twepoch, 10 bits node, 12 bits seq.
_TWEPOCH = 1288834974288
_NODE_SHIFT = 12
_TIME_SHIFT = 22
_SEQUENCE_MASK = 0xFFF


class Message:
    """One channel's copy of a message, plus its delivery state on that channel."""

    __slots__ = (
        "id",
        "body",
        "timestamp",
        "attempts",
        "defer",
        "client",
        "delivered_at",
        "deadline",
        "token",
    )

    def __init__(self, msg_id: bytes, body: bytes, timestamp: int, attempts: int = 0) -> None:
        self.id = msg_id
        self.body = body
        self.timestamp = timestamp
        self.attempts = attempts
        #: seconds to hold the message back when it reaches a channel (DPUB), 0 otherwise
        self.defer = 0.0
        self.client = None
        self.delivered_at = 0.0
        self.deadline = 0.0
        #: crash-safe mode: the disk queue token that keeps this copy durable until FIN
        self.token: int | None = None

    def copy(self) -> Message:
        """The copy a further channel gets: same id, body and timestamp, its own state."""
        twin = Message(self.id, self.body, self.timestamp, self.attempts)
        twin.defer = self.defer
        return twin

    def encode(self) -> bytes:
        """The disk encoding (also the payload of a message frame)."""
        return encode_many((self,))[0]

    @classmethod
    def decode(cls, data: bytes) -> Message:
        if len(data) < HEADER_SIZE:
            raise ValueError(f"message too short ({len(data)} bytes)")
        timestamp, attempts, msg_id = _HEADER.unpack_from(data)
        return cls(msg_id, data[HEADER_SIZE:], timestamp, attempts)

    def __repr__(self) -> str:
        return f"<Message {self.id.decode()} attempts={self.attempts} {len(self.body)}B>"


def encode_many(msgs) -> list[bytes]:
    """The disk encodings of a batch (one call instead of a method call per message)."""
    pack = _HEADER.pack
    return [pack(m.timestamp, m.attempts & 0xFFFF, m.id) + m.body for m in msgs]


def encode_frames(msgs: list[Message]) -> bytes:
    """The message frames of a delivery batch, back to back: one buffer for the writer."""
    pack, kind = _FRAME_HEADER.pack, _FRAME_TYPE_MESSAGE
    return b"".join(
        [
            pack(len(m.body) + _FRAME_OVERHEAD, kind, m.timestamp, m.attempts & 0xFFFF, m.id)
            + m.body
            for m in msgs
        ]
    )


class IdFactory:
    """nsqd's 64-bit snowflake ids, rendered as 16 lowercase hex characters.

    Within one clock tick (~1 ms) only the low 12 bits, the last three hex digits, change:
    the first 13 characters are formatted once per tick and kept.
    """

    def __init__(self, node_id: int) -> None:
        if not 0 <= node_id < 1024:
            raise ValueError(f"node id {node_id} must be in [0, 1024)")
        self._node_bits = node_id << _NODE_SHIFT
        self._last_ts = -1
        self._sequence = 0
        self._prefix = b""

    def next_ids(self, count: int, now_ns: int | None = None) -> list[bytes]:
        """`count` consecutive ids; a batch shares one clock reading (``now_ns`` when given)."""
        ids: list[bytes] = []
        while len(ids) < count:
            first = self._claim(count - len(ids), time.time_ns() if now_ns is None else now_ns)
            now_ns = None  # a batch that spills into the next tick reads the clock again
            digits = _SEQUENCE_HEX[first : self._sequence + 1]
            ids.extend([self._prefix + last for last in digits])
        return ids

    def next_id(self) -> bytes:
        return self.next_ids(1)[0]

    def _claim(self, wanted: int, now_ns: int) -> int:
        """Reserve up to `wanted` sequence numbers on the current tick; the first of them."""
        ts = now_ns >> 20
        if ts == self._last_ts and self._sequence + wanted <= _SEQUENCE_MASK:
            first = self._sequence + 1  # the common case: room left on this tick
            self._sequence += wanted
            return first
        # A clock that went backwards keeps counting on the last tick rather than reuse ids.
        ts = max(ts, self._last_ts)
        if ts == self._last_ts:
            first = self._sequence + 1
            if first > _SEQUENCE_MASK:
                # 4096 ids in one ~1 ms tick: wait for the next tick, as nsqd does.
                while ts <= self._last_ts:
                    time.sleep(0.0002)
                    ts = time.time_ns() >> 20
                first = 0
        else:
            first = 0
        if ts != self._last_ts:
            self._last_ts = ts
            self._prefix = (b"%016x" % (((ts - _TWEPOCH) << _TIME_SHIFT) | self._node_bits))[:13]
        self._sequence = min(first + wanted, _SEQUENCE_MASK + 1) - 1
        return first

    def new_messages(self, bodies: list[bytes]) -> list[Message]:
        """Messages for a publish: ids and timestamp from one clock reading."""
        now = time.time_ns()
        if len(bodies) == 1:  # /pub and PUB
            return [Message(self._one_id(now), bodies[0], now)]
        return list(map(Message, self.next_ids(len(bodies), now), bodies, repeat(now)))

    def _one_id(self, now_ns: int) -> bytes:
        """next_ids(1) without its batch machinery, while the tick has room (nearly always)."""
        if now_ns >> 20 == self._last_ts and self._sequence < _SEQUENCE_MASK:
            self._sequence += 1
            return self._prefix + _SEQUENCE_HEX[self._sequence]
        return self.next_ids(1, now_ns)[0]


_SEQUENCE_HEX = [b"%03x" % sequence for sequence in range(_SEQUENCE_MASK + 1)]

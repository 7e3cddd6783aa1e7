"""nsqlookupd's TCP protocol V1, the one nsqd speaks to register its topics and channels.

No sockets here: the I/O loop reads from any buffered binary reader and writes through a callable,
so tests feed it bytes. Requests are text lines `CMD [params]\\n` (IDENTIFY is followed by
`[int32 size][JSON]`); every reply, errors included, is `[int32 size][data]` with no frame type.
Every V1 error is fatal: the reply is sent, then the connection closes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from gnsq_server.lookupd.registry import (
    CLIENT_REGISTRATION,
    Clock,
    PeerInfo,
    Producer,
    RegistrationDB,
)
from gnsq_server.wire import (
    ClientError,
    FatalClientError,
    decode_name,
    is_valid_name,
    pack_int32,
    unpack_int32,
)

logger = logging.getLogger(__name__)

#: nsqlookupd reads lines and IDENTIFY bodies without any bound (a negative IDENTIFY size crashes
#: it). We bound both at nsqd's default --max-body-size; no nsqd ever sends close to that.
MAX_BODY_SIZE = 5 * 1024 * 1024
MAX_LINE_LENGTH = MAX_BODY_SIZE

#: Go's unicode.IsSpace set, which strings.TrimSpace strips (Python's str.strip also strips
#: \x1c-\x1f, which Go keeps).
_GO_SPACE = (
    "".join(map(chr, [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def encode_response(data: bytes) -> bytes:
    """`[int32 size][data]`: V1's only framing, for replies and errors alike."""
    return pack_int32(len(data)) + data


def parse_command_line(line: bytes) -> list[str]:
    """Trim the line as Go's strings.TrimSpace does, then split on single spaces.

    Undecodable bytes survive as surrogates, so they fail name checks and echo back unchanged.
    """
    return decode_name(line).strip(_GO_SPACE).split(" ")


# -- JSON as Go's encoding/json reads and writes it --

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
for _c in "<>&\u2028\u2029":
    _GO_ESCAPES[_c] = f"\\u{ord(_c):04x}"
for _i in range(0x20):
    _GO_ESCAPES.setdefault(chr(_i), f"\\u{_i:04x}")


def go_json_string(value: str) -> str:
    """A JSON string as Go marshals it: HTML-safe escapes, invalid UTF-8 replaced by U+FFFD."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return '"' + "".join(_GO_ESCAPES.get(c, c) for c in value) + '"'


def go_json_dumps(value: object, sort_keys: bool = False) -> str:
    """Compact JSON as Go's json.Marshal writes it (maps come out with sorted keys)."""
    if isinstance(value, str):
        return go_json_string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        keys = sorted(value) if sort_keys else list(value)
        return (
            "{"
            + ",".join(go_json_string(k) + ":" + go_json_dumps(value[k], sort_keys) for k in keys)
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json_dumps(v, sort_keys) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


_GO_INT64 = (-(1 << 63), (1 << 63) - 1)
_PEER_INFO_STR_FIELDS = ("remote_address", "hostname", "broadcast_address", "version")
_PEER_INFO_INT_FIELDS = ("tcp_port", "http_port")


def _reject_constant(name: str) -> None:
    raise ValueError(f"invalid JSON constant {name}")


def decode_peer_fields(body: bytes) -> dict[str, object]:
    """Decode an IDENTIFY body into PeerInfo fields as Go's json.Unmarshal would.

    Field names match case-insensitively, the last duplicate wins, `null` leaves a field unset,
    unknown keys are ignored; a wrong type or a non-integer port is an error. Raises ValueError.
    """
    try:
        value = json.loads(body.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"cannot unmarshal {type(value).__name__} into PeerInfo")
    fields: dict[str, object] = {}
    for key, item in value.items():
        name = key.lower()
        if item is None or name not in _PEER_INFO_STR_FIELDS + _PEER_INFO_INT_FIELDS:
            continue
        if name in _PEER_INFO_STR_FIELDS:
            if not isinstance(item, str):
                raise ValueError(f"{key}: want a string")
        elif isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{key}: want an integer")
        elif not _GO_INT64[0] <= item <= _GO_INT64[1]:
            raise ValueError(f"{key}: out of range")
        fields[name] = item
    return fields


# -- the protocol --


@dataclass
class ClientV1:
    """One V1 connection: its `ip:port` (the producer id) and, after IDENTIFY, its PeerInfo."""

    remote_address: str
    peer_info: PeerInfo | None = None


class LookupProtocolV1:
    """Executes V1 commands against the registration db."""

    def __init__(
        self,
        db: RegistrationDB,
        server_info: Callable[[], Mapping[str, object]],
        clock: Clock | None = None,
    ) -> None:
        """`server_info` gives the IDENTIFY reply fields (tcp_port, http_port, version,
        broadcast_address, hostname); it is called per IDENTIFY since ports are known late."""
        self.db = db
        self.server_info = server_info
        self.clock = clock or db.clock
        self._handlers = {
            "PING": self.ping,
            "IDENTIFY": self.identify,
            "REGISTER": self.register,
            "UNREGISTER": self.unregister,
        }

    def io_loop(self, client: ClientV1, reader: BinaryIO, write: Callable[[bytes], object]) -> None:
        """Serve one connection until EOF, a read error or a fatal error; then unregister it.

        A line without its newline (EOF, or longer than MAX_LINE_LENGTH) ends the connection
        without a reply, as nsqlookupd does on a read error.
        """
        try:
            while True:
                line = reader.readline(MAX_LINE_LENGTH)
                if not line.endswith(b"\n"):
                    break
                try:
                    response = self.exec(client, parse_command_line(line), reader)
                except ClientError as err:
                    logger.error("[%s] - %s", client.remote_address, err)
                    write(encode_response(bytes(err)))
                    if err.fatal:
                        break
                    continue
                write(encode_response(response))
        finally:
            self.close(client)

    def exec(self, client: ClientV1, params: list[str], reader: BinaryIO) -> bytes:
        """Run one command; commands are case-sensitive. Raises ClientError."""
        handler = self._handlers.get(params[0])
        if handler is None:
            raise FatalClientError("E_INVALID", f"invalid command {params[0]}")
        return handler(client, params[1:], reader)

    def close(self, client: ClientV1) -> None:
        """A closed connection leaves every key; the keys themselves stay."""
        if client.peer_info is None:
            return
        for registration in self.db.remove_producer_everywhere(client.peer_info.id):
            logger.info(
                "DB: client(%s) UNREGISTER category:%s key:%s subkey:%s",
                client.remote_address,
                *registration,
            )

    def ping(self, client: ClientV1, params: list[str], reader: BinaryIO) -> bytes:
        """Keeps a producer alive in /lookup; allowed (and a no-op) before IDENTIFY."""
        if client.peer_info is not None:
            client.peer_info.last_update = self.clock()
        return b"OK"

    def identify(self, client: ClientV1, params: list[str], reader: BinaryIO) -> bytes:
        if client.peer_info is not None:
            raise FatalClientError("E_INVALID", "cannot IDENTIFY again")
        raw_size = reader.read(4)
        if len(raw_size) != 4:
            raise FatalClientError("E_BAD_BODY", "IDENTIFY failed to read body size")
        (size,) = unpack_int32(raw_size)
        if size < 0 or size > MAX_BODY_SIZE:
            # nsqlookupd 1.3.0 panics on a negative size; we answer as nsqd does instead.
            raise FatalClientError("E_BAD_BODY", f"IDENTIFY invalid body size {size}")
        body = reader.read(size) if size else b""
        if len(body) != size:
            raise FatalClientError("E_BAD_BODY", "IDENTIFY failed to read body")
        try:
            fields = decode_peer_fields(body)
        except ValueError:
            raise FatalClientError("E_BAD_BODY", "IDENTIFY failed to decode JSON body") from None
        peer_info = PeerInfo(
            id=client.remote_address,
            remote_address=client.remote_address,
            hostname=fields.get("hostname", ""),
            broadcast_address=fields.get("broadcast_address", ""),
            tcp_port=fields.get("tcp_port", 0),
            http_port=fields.get("http_port", 0),
            version=fields.get("version", ""),
        )
        if (
            not peer_info.broadcast_address
            or not peer_info.tcp_port
            or not peer_info.http_port
            or not peer_info.version
        ):
            raise FatalClientError("E_BAD_BODY", "IDENTIFY missing fields")
        peer_info.last_update = self.clock()
        logger.info(
            "CLIENT(%s): IDENTIFY Address:%s TCP:%d HTTP:%d Version:%s",
            client.remote_address,
            peer_info.broadcast_address,
            peer_info.tcp_port,
            peer_info.http_port,
            peer_info.version,
        )
        client.peer_info = peer_info
        self.db.add_producer(CLIENT_REGISTRATION, Producer(peer_info))
        return go_json_dumps(self.server_info(), sort_keys=True).encode()

    def register(self, client: ClientV1, params: list[str], reader: BinaryIO) -> bytes:
        peer_info = _require_identified(client)
        topic, channel = _topic_channel("REGISTER", params)
        self.db.register(peer_info, topic, channel)
        return b"OK"

    def unregister(self, client: ClientV1, params: list[str], reader: BinaryIO) -> bytes:
        peer_info = _require_identified(client)
        topic, channel = _topic_channel("UNREGISTER", params)
        self.db.unregister(peer_info.id, topic, channel)
        return b"OK"


def _require_identified(client: ClientV1) -> PeerInfo:
    if client.peer_info is None:
        raise FatalClientError("E_INVALID", "client must IDENTIFY")
    return client.peer_info


def _topic_channel(command: str, params: list[str]) -> tuple[str, str]:
    """`<topic> [<channel>]`; extra params are ignored, an empty channel means none."""
    if not params:
        raise FatalClientError("E_INVALID", f"{command} insufficient number of params")
    topic = params[0]
    channel = params[1] if len(params) > 1 else ""
    if not is_valid_name(topic):
        raise FatalClientError("E_BAD_TOPIC", f"{command} topic name '{topic}' is not valid")
    if channel and not is_valid_name(channel):
        raise FatalClientError("E_BAD_CHANNEL", f"{command} channel name '{channel}' is not valid")
    return topic, channel

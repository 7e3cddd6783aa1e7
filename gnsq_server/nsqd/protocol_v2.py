"""nsqd's TCP protocol V2: one method per verb, dispatched from a table by the command loop.

Error codes and texts follow nsqd 1.3.0 byte for byte; every error is fatal except
E_FIN_FAILED, E_REQ_FAILED and E_TOUCH_FAILED.
"""

from __future__ import annotations

import json
import logging
import re
import time
from io import BufferedReader

from .. import NSQ_VERSION
from ..wire import (
    MAX_LINE_LENGTH,
    OK_FRAME,
    ClientError,
    FatalClientError,
    decode_name,
    error_frame,
    go_quote,
    is_valid_name,
    parse_uint,
    response_frame,
    split_command,
    unpack_int32,
)
from . import transport
from .auth import ClientAuth
from .channel import ChannelError
from .client import STATE_CLOSING, STATE_INIT, STATE_SUBSCRIBED, Client
from .compression import deflate_level
from .topic import PublishError

log = logging.getLogger(__name__)

CLOSE_WAIT = b"CLOSE_WAIT"
MSG_ID_LENGTH = 16
#: FIN lines exactly as nsqd would split them into a verb and a 16-byte id
_FIN_RUN = re.compile(rb"(?:FIN [^ \r\n]{16}\n)+")
_FIN_LINE_LENGTH = len(b"FIN 0123456789abcdef\n")

# IDENTIFY fields and the JSON types Go's decoder accepts for them.
_IDENTIFY_FIELDS = {
    "client_id": str,
    "hostname": str,
    "user_agent": str,
    "feature_negotiation": bool,
    "heartbeat_interval": int,
    "output_buffer_size": int,
    "output_buffer_timeout": int,
    "tls_v1": bool,
    "snappy": bool,
    "deflate": bool,
    "deflate_level": int,
    "sample_rate": int,
    "msg_timeout": int,
}
_IDENTIFY_FIELDS_FOLDED = {name.lower(): name for name in _IDENTIFY_FIELDS}
_INT64_RANGE = range(-(1 << 63), 1 << 63)
_INT32_RANGE = range(-(1 << 31), 1 << 31)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_identify(body: bytes) -> dict:
    """Decode an IDENTIFY body as Go's encoding/json would into nsqd's struct.

    Keys match case-insensitively, unknown keys are ignored, null leaves the default, invalid
    UTF-8 becomes U+FFFD, and a value of the wrong JSON type is an error.
    """
    try:
        data = json.loads(body.decode("utf-8", "replace"), parse_constant=_reject_constant)
    except RecursionError as err:  # nested deeper than Python's parser goes
        raise ValueError("IDENTIFY body nested too deeply") from err
    if data is None:
        return {}  # Go: unmarshalling null into a struct changes nothing
    if not isinstance(data, dict):
        raise ValueError("IDENTIFY body is not an object")
    fields: dict = {}
    for key, value in data.items():
        name = key if key in _IDENTIFY_FIELDS else _IDENTIFY_FIELDS_FOLDED.get(key.lower())
        if name is None or value is None:
            continue
        kind = _IDENTIFY_FIELDS[name]
        if kind is int:
            bounds = _INT32_RANGE if name == "sample_rate" else _INT64_RANGE
            if type(value) is not int or value not in bounds:
                raise ValueError(f"{name} must be an integer")
        elif type(value) is not kind:
            raise ValueError(f"{name} has the wrong type")
        fields[name] = value
    return fields


class ProtocolV2:
    """Reads commands from one connection and executes them against the daemon."""

    def __init__(self, nsqd, client: Client, reader: BufferedReader) -> None:
        self.nsqd = nsqd
        self.opts = nsqd.opts
        self.client = client
        self.reader = reader
        reader.raw.before_read = client.before_read
        self._tls_context = getattr(nsqd, "tls_context", None)
        # per-connection AUTH state; None when no --auth-http-address is set
        self._auth = ClientAuth(self.opts, client) if self.opts.auth_http_addresses else None
        self._handlers = {
            b"IDENTIFY": self.identify,
            b"AUTH": self.auth,
            b"SUB": self.sub,
            b"RDY": self.rdy,
            b"FIN": self.fin,
            b"REQ": self.req,
            b"TOUCH": self.touch,
            b"CLS": self.cls,
            b"NOP": self.nop,
            b"PUB": self.pub,
            b"MPUB": self.mpub,
            b"DPUB": self.dpub,
        }

    def run(self) -> None:
        """The command loop; returns when the client leaves or after a fatal error."""
        readline, handlers, client = self.reader.readline, self._handlers, self.client
        source, monotonic = self.reader.raw, time.monotonic
        tls_gate = self.opts.tls_required != 0  # --tls-required: only IDENTIFY before TLS
        while True:
            if client.backlogged():
                client.wait_for_writer()  # like nsqd's blocking writes: no reading meanwhile
            now = monotonic()
            if now >= client.yield_at:
                client.take_turn(now)
            # nsqd's read deadline: two heartbeat intervals for the whole command, body included
            interval = client.heartbeat_interval
            source.deadline = now + 2 * interval if interval > 0 else None
            line = readline(MAX_LINE_LENGTH)
            if not line.endswith(b"\n"):
                return  # EOF, or a full 16 KiB read buffer without a newline: close silently
            if len(line) == _FIN_LINE_LENGTH and not tls_gate and _FIN_RUN.fullmatch(line):
                # The commonest command, one per message consumed: take every FIN already
                # buffered behind this one and finish them together.
                handler, params = self.fin_run, [b"FIN", line[4:20]]
            else:
                params = split_command(line)
                handler = handlers.get(params[0])
            try:
                if tls_gate:
                    if client.tls:
                        tls_gate = False
                    elif params[0] != b"IDENTIFY":
                        raise FatalClientError(
                            "E_INVALID",
                            f"cannot {decode_name(params[0])} in current state (TLS required)",
                        )
                if handler is None:
                    raise FatalClientError("E_INVALID", f"invalid command {decode_name(params[0])}")
                response = handler(params)
            except ClientError as err:
                log.log(
                    logging.ERROR if err.fatal else logging.DEBUG,
                    "[%s] %s",
                    client.remote_address,
                    err,
                )
                client.send(error_frame(err))
                if err.fatal:
                    return
                continue
            if response is not None:
                client.respond(response)

    # -- reading bodies -----------------------------------------------------------------

    def _read_exact(self, size: int) -> bytes | None:
        """`size` bytes, or None when the client stopped sending (EOF or the read deadline)."""
        try:
            data = self.reader.read(size)
        except TimeoutError:
            return None
        return data if len(data) == size else None

    def _read_size(self, code: str, what: str) -> int:
        data = self._read_exact(4)
        if data is None:
            raise FatalClientError(code, f"{what} failed to read body size")
        return unpack_int32(data)[0]

    def _read_body(self, code: str, cmd: str, limit: int) -> bytes:
        """IDENTIFY/AUTH bodies: size checked against max-body-size before reading."""
        size = self._read_size(code, cmd)
        if size > limit:
            raise FatalClientError(code, f"{cmd} body too big {size} > {limit}")
        if size <= 0:
            raise FatalClientError(code, f"{cmd} invalid body size {size}")
        body = self._read_exact(size)
        if body is None:
            raise FatalClientError(code, f"{cmd} failed to read body")
        return body

    def _read_message_body(self, cmd: str) -> bytes:
        """PUB/DPUB bodies: size checked against max-msg-size before reading."""
        data = self._read_exact(4)
        if data is None:
            raise FatalClientError("E_BAD_MESSAGE", f"{cmd} failed to read message body size")
        size = unpack_int32(data)[0]
        if size <= 0:
            raise FatalClientError("E_BAD_MESSAGE", f"{cmd} invalid message body size {size}")
        limit = self.opts.max_msg_size
        if size > limit:
            raise FatalClientError("E_BAD_MESSAGE", f"{cmd} message too big {size} > {limit}")
        body = self._read_exact(size)
        if body is None:
            raise FatalClientError("E_BAD_MESSAGE", f"{cmd} failed to read message body")
        return body

    # -- helpers ------------------------------------------------------------------------

    def _topic_name(self, params: list[bytes], cmd: str, code_prefix: str = "") -> str:
        name = decode_name(params[1])
        if not is_valid_name(name):
            raise FatalClientError(
                "E_BAD_TOPIC", f"{code_prefix}{cmd} topic name {go_quote(name)} is not valid"
            )
        return name

    def _require_state(self, cmd: str, *states: int) -> None:
        if self.client.state not in states:
            raise FatalClientError("E_INVALID", f"cannot {cmd} in current state")

    def _message_id(self, raw: bytes) -> bytes:
        if len(raw) != MSG_ID_LENGTH:
            raise FatalClientError("E_INVALID", "invalid message ID")
        return raw

    def _published(self, topic_name: str, count: int) -> None:
        counts = self.client.pub_counts
        counts[topic_name] = counts.get(topic_name, 0) + count

    # -- verbs --------------------------------------------------------------------------

    def identify(self, params: list[bytes]) -> bytes | None:
        client, opts = self.client, self.opts
        self._require_state("IDENTIFY", STATE_INIT)
        body = self._read_body("E_BAD_BODY", "IDENTIFY", opts.max_body_size)
        try:
            fields = decode_identify(body)
        except ValueError as err:
            raise FatalClientError("E_BAD_BODY", "IDENTIFY failed to decode JSON body") from err
        settings = self._validate_identify(fields)
        client.client_id = fields.get("client_id", client.client_id)
        client.hostname = fields.get("hostname", client.hostname)
        client.user_agent = fields.get("user_agent", client.user_agent)
        if not client.identified:
            # Like nsqd, only the first IDENTIFY's timings reach the message pump.
            client.identified = True
            if settings["heartbeat_interval"] is not None:
                client.set_heartbeat_interval(settings["heartbeat_interval"])
            if settings["output_buffer_size"] is not None:
                client.output_buffer_size = settings["output_buffer_size"]
            if settings["output_buffer_timeout"] is not None:
                client.output_buffer_timeout = settings["output_buffer_timeout"]
        client.sample_rate = fields.get("sample_rate", 0)
        if settings["msg_timeout"] is not None:
            client.msg_timeout = settings["msg_timeout"]
        if not fields.get("feature_negotiation", False):
            return OK_FRAME
        tls = self._tls_context is not None and fields.get("tls_v1", False) and not client.tls
        snappy = opts.snappy and fields.get("snappy", False)
        deflate = opts.deflate and fields.get("deflate", False)
        requested_level = fields.get("deflate_level", 0) if deflate else 0
        level = deflate_level(requested_level, opts.max_deflate_level)
        if snappy and deflate:
            raise FatalClientError(
                "E_IDENTIFY_FAILED", "cannot enable both deflate and snappy compression"
            )
        reply = {
            "max_rdy_count": opts.max_rdy_count,
            "version": NSQ_VERSION,
            "max_msg_timeout": int(opts.max_msg_timeout * 1000),
            "msg_timeout": round(client.msg_timeout * 1000),
            "tls_v1": bool(tls),
            "deflate": bool(deflate),
            "deflate_level": level,
            "max_deflate_level": opts.max_deflate_level,
            "snappy": bool(snappy),
            "sample_rate": client.sample_rate,
            "auth_required": bool(opts.auth_http_addresses),
            "output_buffer_size": client.output_buffer_size,
            "output_buffer_timeout": round(client.output_buffer_timeout * 1000),
        }
        frame = response_frame(json.dumps(reply, separators=(",", ":")).encode())
        if not (tls or snappy or deflate):
            return frame
        # The upgrades follow the JSON reply, each confirmed by an OK through the new layer.
        client.send(frame)
        transport.upgrade(
            client,
            self.reader,
            self._tls_context if tls else None,
            bool(snappy),
            level if deflate else 0,
        )
        return None

    def _validate_identify(self, fields: dict) -> dict:
        """Check IDENTIFY's timing fields in nsqd's order; values in seconds, None = keep."""
        opts = self.opts
        settings: dict = {}

        def invalid(what: str, value: int) -> FatalClientError:
            return FatalClientError("E_BAD_BODY", f"IDENTIFY {what} ({value}) is invalid")

        heartbeat = fields.get("heartbeat_interval", 0)
        if heartbeat == -1:
            settings["heartbeat_interval"] = 0.0
        elif heartbeat == 0:
            settings["heartbeat_interval"] = None
        elif 1000 <= heartbeat <= opts.max_heartbeat_interval * 1000:
            settings["heartbeat_interval"] = heartbeat / 1000
        else:
            raise invalid("heartbeat interval", heartbeat)

        buffer_timeout = fields.get("output_buffer_timeout", 0)
        if buffer_timeout == -1:
            settings["output_buffer_timeout"] = 0.0
        elif buffer_timeout == 0:
            settings["output_buffer_timeout"] = None
        elif (
            opts.min_output_buffer_timeout * 1000
            <= buffer_timeout
            <= opts.max_output_buffer_timeout * 1000
        ):
            settings["output_buffer_timeout"] = buffer_timeout / 1000
        else:
            raise invalid("output buffer timeout", buffer_timeout)

        buffer_size = fields.get("output_buffer_size", 0)
        if buffer_size == -1:
            settings["output_buffer_size"] = 1
            settings["output_buffer_timeout"] = 0.0
        elif buffer_size == 0:
            settings["output_buffer_size"] = None
        elif 64 <= buffer_size <= opts.max_output_buffer_size:
            settings["output_buffer_size"] = buffer_size
        else:
            raise invalid("output buffer size", buffer_size)

        sample_rate = fields.get("sample_rate", 0)
        if not 0 <= sample_rate <= 99:
            raise invalid("sample rate", sample_rate)

        msg_timeout = fields.get("msg_timeout", 0)
        if msg_timeout == 0:
            settings["msg_timeout"] = None
        elif 1000 <= msg_timeout <= opts.max_msg_timeout * 1000:
            settings["msg_timeout"] = msg_timeout / 1000
        else:
            raise invalid("msg timeout", msg_timeout)
        return settings

    def auth(self, params: list[bytes]) -> bytes:
        self._require_state("AUTH", STATE_INIT)
        if len(params) != 1:
            raise FatalClientError("E_INVALID", "AUTH invalid number of parameters")
        secret = self._read_body("E_BAD_BODY", "AUTH", self.opts.max_body_size)
        if self._auth is None:
            raise FatalClientError("E_AUTH_DISABLED", "AUTH disabled")
        return self._auth.authenticate(secret)

    def sub(self, params: list[bytes]) -> bytes:
        client = self.client
        self._require_state("SUB", STATE_INIT)
        if client.heartbeat_interval <= 0:
            raise FatalClientError("E_INVALID", "cannot SUB with heartbeats disabled")
        if len(params) < 3:
            raise FatalClientError("E_INVALID", "SUB insufficient number of parameters")
        topic_name = self._topic_name(params, "SUB")
        channel_name = decode_name(params[2])
        if not is_valid_name(channel_name):
            raise FatalClientError(
                "E_BAD_CHANNEL", f"SUB channel name {go_quote(channel_name)} is not valid"
            )
        if self._auth is not None:
            self._auth.check("SUB", topic_name, channel_name)
        if self.nsqd.exiting:
            raise FatalClientError("E_SUB_FAILED", "SUB failed exiting")
        channel = self.nsqd.get_topic(topic_name).get_channel(channel_name)
        try:
            channel.add_client(client)
        except ChannelError as err:
            raise FatalClientError("E_SUB_FAILED", f"SUB failed {err}") from err
        client.channel = channel
        client.state = STATE_SUBSCRIBED
        return OK_FRAME

    def rdy(self, params: list[bytes]) -> None:
        client = self.client
        if client.state == STATE_CLOSING:
            return None  # nsqd ignores RDY after CLS
        self._require_state("RDY", STATE_SUBSCRIBED)
        count = 1
        if len(params) > 1:
            try:
                count = parse_uint(params[1])
            except ValueError:
                raise FatalClientError(
                    "E_INVALID", f"RDY could not parse count {decode_name(params[1])}"
                ) from None
        limit = self.opts.max_rdy_count
        if count > limit:
            raise FatalClientError("E_INVALID", f"RDY count {count} out of range 0-{limit}")
        client.set_ready_count(count)
        return None

    def fin(self, params: list[bytes]) -> None:
        client = self.client
        self._require_state("FIN", STATE_SUBSCRIBED, STATE_CLOSING)
        if len(params) < 2:
            raise FatalClientError("E_INVALID", "FIN insufficient number of params")
        msg_id = self._message_id(params[1])
        try:
            client.channel.finish(client, msg_id)
        except ChannelError as err:
            raise ClientError("E_FIN_FAILED", f"FIN {decode_name(msg_id)} failed {err}") from None
        client.finish_count += 1
        return None

    def fin_run(self, params: list[bytes]) -> None:
        """FIN params[1] and the run of well-formed FIN lines buffered right behind it."""
        client = self.client
        self._require_state("FIN", STATE_SUBSCRIBED, STATE_CLOSING)
        ids = [params[1]]
        buffered = transport.peek_buffered(self.reader)
        run = _FIN_RUN.match(buffered)
        if run is not None:
            end = run.end()
            ids += [buffered[at + 4 : at + 20] for at in range(0, end, _FIN_LINE_LENGTH)]
            self.reader.read(end)
        failed = client.channel.finish_many(client, ids)
        client.finish_count += len(ids) - len(failed)
        for msg_id, reason in failed:
            err = ClientError("E_FIN_FAILED", f"FIN {decode_name(msg_id)} failed {reason}")
            log.debug("[%s] %s", client.remote_address, err)
            client.send(error_frame(err))
        return None

    def req(self, params: list[bytes]) -> None:
        client = self.client
        self._require_state("REQ", STATE_SUBSCRIBED, STATE_CLOSING)
        if len(params) < 3:
            raise FatalClientError("E_INVALID", "REQ insufficient number of params")
        msg_id = self._message_id(params[1])
        try:
            timeout_ms = parse_uint(params[2])
        except ValueError:
            raise FatalClientError(
                "E_INVALID", f"REQ could not parse timeout {decode_name(params[2])}"
            ) from None
        # clamped since nsqd 1.1 (compared as integers: the digits may be any number of them)
        delay = min(timeout_ms, int(self.opts.max_req_timeout * 1000)) / 1000
        try:
            client.channel.requeue(client, msg_id, delay)
        except ChannelError as err:
            raise ClientError("E_REQ_FAILED", f"REQ {decode_name(msg_id)} failed {err}") from None
        client.requeue_count += 1
        return None

    def touch(self, params: list[bytes]) -> None:
        client = self.client
        self._require_state("TOUCH", STATE_SUBSCRIBED, STATE_CLOSING)
        if len(params) < 2:
            raise FatalClientError("E_INVALID", "TOUCH insufficient number of params")
        msg_id = self._message_id(params[1])
        try:
            client.channel.touch(client, msg_id)
        except ChannelError as err:
            raise ClientError(
                "E_TOUCH_FAILED", f"TOUCH {decode_name(msg_id)} failed {err}"
            ) from None
        return None

    def cls(self, params: list[bytes]) -> bytes:
        self._require_state("CLS", STATE_SUBSCRIBED)
        self.client.start_close()
        return response_frame(CLOSE_WAIT)

    def nop(self, params: list[bytes]) -> None:
        return None

    def pub(self, params: list[bytes]) -> bytes:
        if len(params) < 2:
            raise FatalClientError("E_INVALID", "PUB insufficient number of parameters")
        topic_name = self._topic_name(params, "PUB")
        body = self._read_message_body("PUB")
        if self._auth is not None:
            self._auth.check("PUB", topic_name, "")
        self._publish("PUB", topic_name, [body])
        return OK_FRAME

    def dpub(self, params: list[bytes]) -> bytes:
        if len(params) < 3:
            raise FatalClientError("E_INVALID", "DPUB insufficient number of parameters")
        topic_name = self._topic_name(params, "DPUB")
        try:
            timeout_ms = parse_uint(params[2])
        except ValueError:
            raise FatalClientError(
                "E_INVALID", f"DPUB could not parse timeout {decode_name(params[2])}"
            ) from None
        limit_ms = int(self.opts.max_req_timeout * 1000)
        if timeout_ms > limit_ms:
            raise FatalClientError(
                "E_INVALID", f"DPUB timeout {timeout_ms} out of range 0-{limit_ms}"
            )
        body = self._read_message_body("DPUB")
        if self._auth is not None:
            self._auth.check("DPUB", topic_name, "")
        self._publish("DPUB", topic_name, [body], timeout_ms / 1000)
        return OK_FRAME

    def mpub(self, params: list[bytes]) -> bytes:
        if len(params) < 2:
            raise FatalClientError("E_INVALID", "MPUB insufficient number of parameters")
        topic_name = self._topic_name(params, "MPUB", code_prefix="E_BAD_TOPIC ")
        if self._auth is not None:
            self._auth.check("MPUB", topic_name, "")  # nsqd checks before reading the body
        bodies = self._read_mpub_body()
        self._publish("MPUB", topic_name, bodies)
        return OK_FRAME

    def _read_mpub_body(self) -> list[bytes]:
        """`[int32 body size][int32 count]([int32 size][bytes])*count`, every size checked first.

        Like nsqd, the declared body size bounds the batch but the records are read by count.
        """
        opts = self.opts
        size = self._read_size("E_BAD_BODY", "MPUB")
        if size <= 0:
            raise FatalClientError("E_BAD_BODY", f"MPUB invalid body size {size}")
        if size > opts.max_body_size:
            raise FatalClientError("E_BAD_BODY", f"MPUB body too big {size} > {opts.max_body_size}")
        data = self._read_exact(4)
        if data is None:
            raise FatalClientError("E_BAD_BODY", "MPUB failed to read message count")
        count = unpack_int32(data)[0]
        if count <= 0 or count > (opts.max_body_size - 4) // 5:
            raise FatalClientError("E_BAD_BODY", f"MPUB invalid message count {count}")
        bodies: list[bytes] = []
        peek = getattr(self.reader, "peek", None)
        while len(bodies) < count:
            if peek is not None and self._take_buffered_records(self._peek(peek), count, bodies):
                continue
            bodies.append(self._read_mpub_record(len(bodies)))
        return bodies

    def _take_buffered_records(self, buffered: bytes, count: int, bodies: list[bytes]) -> bool:
        """Cut whole, valid records out of what the reader already holds, without a read call
        per record; anything doubtful is left to _read_mpub_record and its exact errors."""
        limit, offset, end = self.opts.max_msg_size, 0, len(buffered)
        append = bodies.append
        for _ in range(count - len(bodies)):
            start = offset + 4
            if start > end:
                break
            (size,) = unpack_int32(buffered, offset)
            stop = start + size
            if size <= 0 or size > limit or stop > end:
                break
            append(buffered[start:stop])
            offset = stop
        if offset:
            self.reader.read(offset)
        return offset > 0

    @staticmethod
    def _peek(peek) -> bytes:
        try:
            return peek(1)
        except TimeoutError:
            return b""  # _read_mpub_record then reports the failed read

    def _read_mpub_record(self, index: int) -> bytes:
        data = self._read_exact(4)
        if data is None:
            raise FatalClientError(
                "E_BAD_MESSAGE", f"MPUB failed to read message({index}) body size"
            )
        size = unpack_int32(data)[0]
        if size <= 0:
            raise FatalClientError(
                "E_BAD_MESSAGE", f"MPUB invalid message({index}) body size {size}"
            )
        limit = self.opts.max_msg_size
        if size > limit:
            raise FatalClientError("E_BAD_MESSAGE", f"MPUB message too big {size} > {limit}")
        body = self._read_exact(size)
        if body is None:
            raise FatalClientError("E_BAD_MESSAGE", "MPUB failed to read message body")
        return body

    def _publish(self, cmd: str, topic_name: str, bodies: list[bytes], defer: float = 0.0) -> None:
        try:
            self.nsqd.get_topic(topic_name).publish(bodies, defer)
        except PublishError as err:
            raise FatalClientError(f"E_{cmd}_FAILED", f"{cmd} failed {err}") from err
        self._published(topic_name, len(bodies))

"""Wire-level pieces shared by both daemons: framing, command lines, names, client errors.

Nothing here touches a socket; the protocol modules feed it bytes.
"""

from __future__ import annotations

import re
import struct

MAGIC_V1 = b"  V1"
MAGIC_V2 = b"  V2"

FRAME_TYPE_RESPONSE = 0
FRAME_TYPE_ERROR = 1
FRAME_TYPE_MESSAGE = 2

#: nsqd reads commands through a 16 KiB bufio.Reader: a line longer than this (the newline
#: included) is a read error that closes the connection.
MAX_LINE_LENGTH = 16 * 1024

MAX_NAME_LENGTH = 64
EPHEMERAL_SUFFIX = "#ephemeral"
_NAME_RE = re.compile(r"^[.a-zA-Z0-9_-]+(#ephemeral)?$")

_FRAME_HEADER = struct.Struct(">ii")
_INT32 = struct.Struct(">i")

unpack_int32 = _INT32.unpack_from
pack_int32 = _INT32.pack


class ClientError(Exception):
    """An error reported to the client as `<code> <text>`; the connection stays open."""

    fatal = False

    def __init__(self, code: str, text: str = "") -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.text else self.code

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")


class FatalClientError(ClientError):
    """An error after which the server closes the connection (every V2 error but three)."""

    fatal = True


def frame(frame_type: int, data: bytes) -> bytes:
    """Encode one V2 frame: `[int32 size][int32 frame_type][data]`, size counting the type."""
    return _FRAME_HEADER.pack(len(data) + 4, frame_type) + data


def response_frame(data: bytes) -> bytes:
    return frame(FRAME_TYPE_RESPONSE, data)


def error_frame(error: ClientError) -> bytes:
    return frame(FRAME_TYPE_ERROR, bytes(error))


OK_FRAME = response_frame(b"OK")
HEARTBEAT_FRAME = response_frame(b"_heartbeat_")
CLOSE_WAIT_FRAME = response_frame(b"CLOSE_WAIT")


def split_command(line: bytes) -> list[bytes]:
    """Split a command line as nsqd does: drop `\\n` and one `\\r`, split on single spaces."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.split(b" ")


def is_valid_name(name: str) -> bool:
    """Topic and channel names: 1..64 chars of `[.a-zA-Z0-9_-]`, optionally ending `#ephemeral`."""
    return 0 < len(name) <= MAX_NAME_LENGTH and _NAME_RE.match(name) is not None


def is_ephemeral(name: str) -> bool:
    return name.endswith(EPHEMERAL_SUFFIX)


def decode_name(raw: bytes) -> str:
    """Names arrive as bytes; undecodable bytes survive for the error text and fail validation."""
    return raw.decode("utf-8", "surrogateescape")


def parse_uint(raw: bytes) -> int:
    """Parse a count or timeout as nsqd's ByteToBase10: digits only (no sign), empty means 0."""
    if not raw:
        return 0
    if not (raw.isdigit() and raw.isascii()):
        raise ValueError(raw)
    return int(raw)


def go_quote(text: str) -> str:
    """Render a string as Go's %q does, for the names echoed in error texts."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}

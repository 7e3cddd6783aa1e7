"""The two stream compressions nsqd negotiates in IDENTIFY: snappy and raw deflate.

Pure code, no sockets: an encoder turns one buffer of outgoing frames into wire bytes, a
decoder is fed wire bytes in whatever pieces they arrive and hands back the plain stream.

- Snappy is the *framing format* as golang/snappy streams it: a stream identifier chunk first,
  then one chunk per write (compressed, or stored when compression gains under 1/8), each with
  the masked CRC-32C of its data. cramjam (Rust `snap`) writes exactly those bytes.
- Deflate is a raw DEFLATE stream (no zlib header) with a sync flush after every write, as
  nsqd's flate writer is flushed after every buffer flush.
"""

from __future__ import annotations

import zlib

import cramjam

#: the stream identifier chunk: type 0xff, length 6, "sNaPpY"
SNAPPY_STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"
#: golang/snappy refuses chunks longer than the worst-case encoding of a 64 KiB block + CRC
SNAPPY_MAX_CHUNK_LENGTH = 76490 + 4
_SNAPPY_COMPRESSED, _SNAPPY_UNCOMPRESSED, _SNAPPY_IDENTIFIER = 0x00, 0x01, 0xFF
_RAW_DEFLATE = -15  # zlib wbits for a headerless DEFLATE stream


class CompressionError(ValueError):
    """The peer's compressed stream is corrupt."""


class SnappyEncoder:
    """Frames written as a snappy framing-format stream (identifier before the first chunk)."""

    def __init__(self) -> None:
        self._compressor = cramjam.snappy.Compressor()

    def encode(self, data: bytes) -> bytes:
        self._compressor.compress(data)
        return bytes(self._compressor.flush())


class SnappyDecoder:
    """Incremental reader of a snappy framing-format stream; checksums are verified."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._out = b""
        self._started = False
        self.finished = False  # the framing format has no end marker

    def feed(self, data: bytes) -> None:
        self._pending += data

    def read(self, size: int) -> bytes:
        """Up to ``size`` plain bytes; b"" when more input is needed."""
        if not self._out:
            self._out = self._decode_complete_chunks()
        out, self._out = self._out[:size], self._out[size:]
        return out

    def _decode_complete_chunks(self) -> bytes:
        buf = self._pending
        end, total = 0, len(buf)
        while end + 4 <= total:
            kind = buf[end]
            length = buf[end + 1] | buf[end + 2] << 8 | buf[end + 3] << 16
            if length > SNAPPY_MAX_CHUNK_LENGTH:
                raise CompressionError(f"snappy chunk too long ({length} bytes)")
            if not self._started and kind != _SNAPPY_IDENTIFIER:
                raise CompressionError("snappy stream does not start with its identifier")
            if end + 4 + length > total:
                break
            if kind == _SNAPPY_IDENTIFIER:
                if buf[end : end + 4 + length] != SNAPPY_STREAM_IDENTIFIER:
                    raise CompressionError("bad snappy stream identifier")
                self._started = True
            elif kind in (_SNAPPY_COMPRESSED, _SNAPPY_UNCOMPRESSED):
                if length < 4:
                    raise CompressionError("snappy chunk shorter than its checksum")
            elif kind < 0x80:
                raise CompressionError(f"reserved unskippable snappy chunk type {kind:#x}")
            end += 4 + length  # skippable chunks (0x80-0xfe) pass through to cramjam
        if not end:
            return b""
        chunks = bytes(buf[:end])
        del buf[:end]
        try:
            # cramjam checks each chunk's CRC; prefixing the identifier lets it start anywhere
            return bytes(cramjam.snappy.decompress(SNAPPY_STREAM_IDENTIFIER + chunks))
        except cramjam.DecompressionError as err:
            raise CompressionError(f"corrupt snappy stream: {err}") from None


class DeflateEncoder:
    """Frames written as raw DEFLATE, sync-flushed so each write reaches the client whole."""

    def __init__(self, level: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, _RAW_DEFLATE)

    def encode(self, data: bytes) -> bytes:
        compressor = self._compressor
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class DeflateDecoder:
    """Incremental raw-DEFLATE reader; output is produced at most ``size`` bytes at a time, so
    a small compressed input cannot make us hold a huge plain buffer."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(_RAW_DEFLATE)
        self._tail = b""

    @property
    def finished(self) -> bool:
        """The client closed its DEFLATE stream: nothing more can be read from it."""
        return self._decompressor.eof

    def feed(self, data: bytes) -> None:
        self._tail = self._tail + data if self._tail else data

    def read(self, size: int) -> bytes:
        decompressor = self._decompressor
        while self._tail and not decompressor.eof:
            try:
                out = decompressor.decompress(self._tail, size)
            except zlib.error as err:
                raise CompressionError(f"corrupt deflate stream: {err}") from None
            self._tail = decompressor.unconsumed_tail
            if out:
                return out
        return b""


Encoder = SnappyEncoder | DeflateEncoder
Decoder = SnappyDecoder | DeflateDecoder


def deflate_level(requested: int, max_level: int) -> int:
    """The level nsqd uses for a client asking for ``requested`` (<= 0 means the default 6)."""
    return min(requested if requested > 0 else 6, max_level)

"""Crash-safe storage (``gnsqd --crash-safe``): one append-only log per topic.

Every message is written once, whatever the number of channels; each channel reads the log
through its own cursor (``cursor.py``), which remembers what the channel finished. A publish
is acknowledged only once the log is fsynced (``commit.GroupCommit``); cursors and this
topic's state are persisted on the ``--sync-every``/``--sync-timeout`` schedule, always after
the log itself, so a persisted position never names a record that a crash could take away.

Files, in ``<data_path>/<topic>.gnsq-log/``::

    <base seq, 20 digits>.seg   a segment: header, then records back to back
    topic.state                 where channels' view of the log ends, and retention overrides
    <channel>.cursor            one per channel (layout in cursor.py)

Segment header, 24 bytes, big-endian::

    [8s magic b"GNSQLOG\\n"][uint32 version = 1][uint32 header size = 24][uint64 base seq]

Record (version 1)::

    [uint32 n][uint32 crc32 of the n payload bytes][payload]
    payload = [uint64 seq][int64 timestamp ns][16s hex id][int64 defer ns][body]

Sequence numbers are consecutive across segments and never reused; a segment holds the
records from its base seq on. ``defer ns`` is a DPUB's delay: the message is due at
timestamp + defer. Readers accept any version up to theirs and skip ``header size`` bytes,
so a later version may grow the header; a newer record layout must bump the version.

``topic.state`` (written atomically)::

    [8s magic b"GNSQTOP\\n"][uint32 version = 1][uint64 fanout]
    [int64 retention ns][int64 retention bytes][uint32 crc32 of the preceding bytes]

``fanout`` is the first seq channels may not read yet: messages at or after it are held by
the topic (no channel, paused, or starting), as nsqd holds them in the topic's own queue.
A retention value of -1 means the daemon's ``--retention-time``/``--retention-bytes``.

Recovery: the last segment is read to its end and truncated after the last whole record
whose crc matches (the torn tail of a write that never got an ``OK``). A segment is deleted
once the fanout and every channel's cursor are past it, unless retention keeps it (the newest
such segments, while younger than the time limit by their last append, the file's mtime, and
within the byte limit); the last segment is never deleted, so the next seq survives restarts.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import shutil
import struct
import time
import zlib
from dataclasses import dataclass, field

import gevent
from gevent.lock import Semaphore

from . import metadata
from .diskqueue import pwrite_all
from .message import Message

__all__ = ["DamagedState", "LogFormatError", "LogReader", "Retention", "TopicLog"]

logger = logging.getLogger(__name__)

VERSION = 1
SEGMENT_MAGIC = b"GNSQLOG\n"
STATE_MAGIC = b"GNSQTOP\n"
SEGMENT_SUFFIX = ".seg"
STATE_FILE = "topic.state"
DIR_SUFFIX = ".gnsq-log"

_SEGMENT_NAME = re.compile(r"\d{20}\.seg\Z")
_HEADER = struct.Struct(">8sIIQ")
_RECORD = struct.Struct(">II")  # payload size, crc32
_PAYLOAD = struct.Struct(">qq16sq")  # seq, timestamp, id, defer ns
_STATE = struct.Struct(">8sIQqq")
_CRC = struct.Struct(">I")
RECORD_OVERHEAD = _RECORD.size + _PAYLOAD.size

#: recently appended messages kept in memory, so channels at the tail never read the disk
TAIL_MESSAGES = 16384
TAIL_BYTES = 8 * 1024 * 1024
READ_BUFFER_SIZE = 64 * 1024
INDEX_EVERY = 512


class LogFormatError(OSError):
    """A file this version cannot read (a newer version, or not a gnsq log at all); an
    OSError, so that the daemon's start reports it as one line and exits."""


class DamagedState(LogFormatError):
    """A state or cursor file that fails its checksum: the caller falls back to a position
    that re-delivers rather than loses."""


@dataclass
class Retention:
    """How long consumed segments are kept: 0 disables a limit, both 0 keep nothing."""

    seconds: float = 0.0
    max_bytes: int = 0


@dataclass
class Segment:
    base: int
    path: str
    size: int
    #: sparse (seq, file offset) pairs, so a reader seeks near a seq instead of scanning
    index: list[tuple[int, int]] = field(default_factory=list)

    def place(self, seq: int) -> tuple[int, int]:
        """(seq, offset) of an indexed record at or before `seq`, else the first record."""
        at = bisect.bisect_right(self.index, (seq, 1 << 62)) - 1
        return self.index[at] if at >= 0 else (self.base, _HEADER.size)

    def note(self, seq: int, offset: int) -> None:
        if not self.index or seq - self.index[-1][0] >= INDEX_EVERY:
            self.index.append((seq, offset))


def log_dir(data_path: str, topic: str) -> str:
    return os.path.join(data_path, topic + DIR_SUFFIX)


def encode_records(seq: int, msgs: list[Message]) -> bytes:
    """Records for `msgs` from `seq` on, joined once (the publish hot path)."""
    parts: list[bytes] = []
    append = parts.append
    pack_payload, pack_record, crc32 = _PAYLOAD.pack, _RECORD.pack, zlib.crc32
    for msg in msgs:
        defer_ns = int(msg.defer * 1e9) if msg.defer else 0
        payload = pack_payload(seq, msg.timestamp, msg.id, defer_ns) + msg.body
        append(pack_record(len(payload), crc32(payload)))
        append(payload)
        seq += 1
    return b"".join(parts)


def decode_payload(payload: bytes) -> tuple[int, Message]:
    seq, timestamp, msg_id, defer_ns = _PAYLOAD.unpack_from(payload)
    msg = Message(msg_id, payload[_PAYLOAD.size :], timestamp)
    msg.defer = defer_ns / 1e9
    return seq, msg


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def _read_header(f, path: str) -> int:
    """Check a segment header; return its base seq, leave `f` at the first record."""
    raw = f.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise DamagedState(f"{path}: short segment header")
    magic, version, size, base = _HEADER.unpack(raw)
    if magic != SEGMENT_MAGIC:
        raise LogFormatError(f"{path}: not a gnsq topic log segment")
    if version > VERSION:
        raise LogFormatError(f"{path}: log version {version} is newer than this gnsqd's {VERSION}")
    f.seek(size)
    return base


def _read_record(f, max_size: int) -> tuple[int, Message, int] | None:
    """(seq, message, record bytes) of the next whole, intact record, else None."""
    head = f.read(_RECORD.size)
    if len(head) < _RECORD.size:
        return None
    size, crc = _RECORD.unpack(head)
    if not _PAYLOAD.size <= size <= max_size:
        return None
    payload = f.read(size)
    if len(payload) < size or zlib.crc32(payload) != crc:
        return None
    seq, msg = decode_payload(payload)
    return seq, msg, _RECORD.size + size


class LogReader:
    """Sequential reads of one log from a seq on (each cursor owns one)."""

    def __init__(self, log: TopicLog) -> None:
        self._log = log
        self._file = None
        self._base = -1  # base seq of the open segment
        self._next = -1  # seq of the record the file is positioned at

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_from(self, seq: int) -> Message | None:
        """The first record at or after `seq` (with its seq in ``token``), None at the end."""
        log = self._log
        while True:
            if self._file is None or seq < self._next or seq - self._next > INDEX_EVERY:
                if not self._seek(seq):
                    return None
            got = _read_record(self._file, log.max_record_size)
            if got is None:
                self.close()  # the next call seeks again rather than trust this position
                segment = log.segment_after(self._base)
                if segment is None:
                    return None  # the end of the last segment
                if self._next < segment.base:
                    logger.error(
                        "TOPICLOG(%s) damaged record in segment %d: seqs %d..%d skipped",
                        log.name, self._base, self._next, segment.base - 1,
                    )
                seq = max(seq, segment.base)
                continue
            found, msg, _ = got
            self._next = found + 1
            if found >= seq:
                msg.token = found
                return msg

    def _seek(self, seq: int) -> bool:
        segment = self._log.segment_for(seq)
        if segment is None:
            return False
        self.close()
        try:
            f = open(segment.path, "rb", buffering=READ_BUFFER_SIZE)  # noqa: SIM115
        except FileNotFoundError:
            return False  # deleted under us; the caller asks again from a later seq
        try:
            _read_header(f, segment.path)
            start, offset = segment.place(seq)
            f.seek(offset)
        except (OSError, LogFormatError) as exc:
            f.close()
            logger.error("TOPICLOG(%s) cannot read %s - %s", self._log.name, segment.path, exc)
            return False
        self._file, self._base, self._next = f, segment.base, start
        return True


class TopicLog:
    """One topic's append-only log: segments, the in-memory tail, fanout and retention."""

    #: what channels and topics test to know they run crash-safe
    acknowledged = True

    def __init__(
        self,
        name: str,
        data_path: str,
        max_bytes_per_file: int,
        max_msg_size: int,
        sync_every: int,
        retention: Retention,
    ) -> None:
        self.name = name
        self.path = log_dir(data_path, name)
        self.sync_every = max(1, sync_every)
        self.max_record_size = _PAYLOAD.size + max_msg_size
        self._max_bytes_per_file = max_bytes_per_file
        self._default_retention = retention
        self.retention_seconds: float | None = None  # per-topic override
        self.retention_bytes: int | None = None
        self.cursors: dict = {}  # channel name -> cursor.Cursor
        self._segments: list[Segment] = []
        self.end = 0  # the next seq to append
        self.fanout = 0
        self._state_dirty = False
        self._data_dirty = False
        #: directories holding entries created since the last fsync (new segments, the log's
        #: own directory): a power cut must not lose a file whose data was fsynced
        self._new_entries: set[str] = set()
        self._fd: int | None = None
        self._retired: list[int] = []  # fds of rolled segments, fsynced and closed by sync_data
        self._tail: list[Message] = []
        self._tail_start = 0
        self._tail_bytes = 0
        #: appends and fsyncs take turns: a write into a file being fsynced costs the hub
        #: more (measured), and the publisher waits for the next fsync round either way
        self._io_lock = Semaphore()
        self._closed = False
        self.bytes_written = 0
        if not os.path.isdir(self.path):
            os.makedirs(self.path)
            self._new_entries.add(data_path)
        self._load()

    # ---- opening ------------------------------------------------------------------------

    def _load(self) -> None:
        names = sorted(n for n in os.listdir(self.path) if _SEGMENT_NAME.match(n))
        for name in names:
            path = os.path.join(self.path, name)
            try:
                with open(path, "rb") as f:
                    base = _read_header(f, path)
            except DamagedState as exc:
                self._set_aside(path, exc, newest=name == names[-1])
                continue
            self._segments.append(Segment(base, path, os.path.getsize(path)))
        self._segments.sort(key=lambda segment: segment.base)
        if self._segments:
            self.end = max(self.end, self._recover_tail(self._segments[-1]))
        self._read_state()
        if not self._segments:
            self._create_segment(self.end)
        self.fanout = min(max(self.fanout, self.first_seq()), self.end)
        self._tail_start = self.end

    def _set_aside(self, path: str, exc: DamagedState, newest: bool) -> None:
        """A segment without a whole header. The newest one was being created when the
        daemon died and holds nothing: it goes, its name keeping the next seq. An older one
        is damage: renamed .bad, never touched again."""
        if newest:
            logger.warning("TOPICLOG(%s) removing a segment torn at creation - %s", self.name, exc)
            os.remove(path)
            self.end = max(self.end, int(os.path.basename(path)[: -len(SEGMENT_SUFFIX)]))
        else:
            logger.error("TOPICLOG(%s) setting aside %s.bad - %s", self.name, path, exc)
            os.rename(path, path + ".bad")

    def _recover_tail(self, segment: Segment) -> int:
        """Read the last segment to its last intact record, truncate what follows it."""
        end, good = segment.base, None
        with open(segment.path, "rb") as f:
            _read_header(f, segment.path)
            good = f.tell()
            while (got := _read_record(f, self.max_record_size)) is not None:
                seq, _, size = got
                segment.note(seq, good)
                end, good = seq + 1, good + size
        if good < segment.size:
            logger.warning(
                "TOPICLOG(%s) %s: dropping %d bytes of torn tail after seq %d",
                self.name, segment.path, segment.size - good, end - 1,
            )
            with open(segment.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
            segment.size = good
        return end

    def _read_state(self) -> None:
        path = os.path.join(self.path, STATE_FILE)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.fanout = self.first_seq() if self._segments else 0
            return
        body, crc = raw[: _STATE.size], raw[_STATE.size : _STATE.size + _CRC.size]
        if len(crc) < _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(body):
            # never torn (written atomically): disk damage. Holding everything back again
            # re-delivers to a first channel rather than losing anything.
            logger.error("TOPICLOG(%s) %s is damaged, ignoring it", self.name, path)
            self.fanout = self.first_seq()
            return
        magic, version, fanout, seconds_ns, max_bytes = _STATE.unpack(body)
        if magic != STATE_MAGIC or version > VERSION:
            raise LogFormatError(f"{path}: unknown topic state format (version {version})")
        self.fanout = fanout
        self.retention_seconds = None if seconds_ns < 0 else seconds_ns / 1e9
        self.retention_bytes = None if max_bytes < 0 else max_bytes

    def _write_state(self) -> None:
        seconds = self.retention_seconds
        max_bytes = self.retention_bytes
        body = _STATE.pack(
            STATE_MAGIC,
            VERSION,
            self.fanout,
            -1 if seconds is None else int(seconds * 1e9),
            -1 if max_bytes is None else max_bytes,
        )
        data = body + _CRC.pack(zlib.crc32(body))
        self._state_dirty = False
        path = os.path.join(self.path, STATE_FILE)
        gevent.get_hub().threadpool.apply(metadata.write_atomic, (path, data))
        self.bytes_written += len(data)

    # ---- positions ----------------------------------------------------------------------

    def first_seq(self) -> int:
        """The oldest seq still on disk."""
        return self._segments[0].base if self._segments else self.end

    def segment_for(self, seq: int) -> Segment | None:
        """The segment holding `seq`, or the oldest one when `seq` was deleted already."""
        segments = self._segments
        if not segments or seq >= self.end:
            return None
        index = bisect.bisect_right([s.base for s in segments], seq) - 1
        return segments[max(0, index)]

    def segment_after(self, base: int) -> Segment | None:
        for segment in self._segments:
            if segment.base > base:
                return segment
        return None

    def cached(self, seq: int) -> Message | None:
        """A fresh copy of a recent message from memory, or None if only the disk has it."""
        index = seq - self._tail_start
        if 0 <= index < len(self._tail):
            msg = self._tail[index].copy()
            msg.token = seq
            return msg
        return None

    def size(self) -> int:
        return sum(segment.size for segment in self._segments)

    # ---- appending ----------------------------------------------------------------------

    def append(self, msgs: list[Message]) -> None:
        """Write a batch as one write; OSError leaves the log as it was before the call."""
        if self._closed:
            raise OSError(f"TOPICLOG({self.name}) is closed")
        with self._io_lock:
            seq = self.end
            data = encode_records(seq, msgs)
            segment = self._segments[-1]
            if segment.size > _HEADER.size and segment.size + len(data) > self._max_bytes_per_file:
                self._roll()
                segment = self._segments[-1]
            if self._fd is None:
                self._fd = os.open(segment.path, os.O_RDWR | os.O_CLOEXEC)
            pwrite_all(self._fd, data, segment.size)
            segment.note(seq, segment.size)
            segment.size += len(data)
            self.bytes_written += len(data)
            self.end = seq + len(msgs)
            self._data_dirty = True
        self._remember(msgs, len(data) - RECORD_OVERHEAD * len(msgs))

    def _remember(self, msgs: list[Message], body_bytes: int) -> None:
        tail = self._tail
        tail.extend(msgs)
        self._tail_bytes += body_bytes
        if len(tail) > TAIL_MESSAGES or self._tail_bytes > TAIL_BYTES:
            drop = len(tail) // 2
            # a memory bound, not an account: scale the byte count instead of re-summing
            self._tail_bytes = self._tail_bytes * (len(tail) - drop) // len(tail)
            del tail[:drop]
            self._tail_start += drop

    def _create_segment(self, base: int) -> None:
        path = os.path.join(self.path, f"{base:020d}{SEGMENT_SUFFIX}")
        header = _HEADER.pack(SEGMENT_MAGIC, VERSION, _HEADER.size, base)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header)
        except OSError:
            os.close(fd)
            raise
        self._segments.append(Segment(base, path, _HEADER.size))
        self._fd = fd
        self._new_entries.add(self.path)
        self.bytes_written += len(header)

    def _roll(self) -> None:
        if self._fd is not None:
            self._retired.append(self._fd)
            self._fd = None
        self._create_segment(self.end)

    # ---- durability ---------------------------------------------------------------------

    def sync_data(self) -> None:
        """fsync what was appended (and new segments' directory entries); the group commit
        calls this before publishers get OK, cursors before they persist."""
        with self._io_lock:
            if self._closed or not (self._data_dirty or self._retired or self._new_entries):
                return
            self._data_dirty = False
            retired, self._retired = self._retired, []
            directories, self._new_entries = self._new_entries, set()
            dir_fds = [
                os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                for path in directories
            ]
            fds = [*retired, *([self._fd] if self._fd is not None else []), *dir_fds]
            try:
                gevent.get_hub().threadpool.apply(_fsync_all, (fds,))
            except OSError:
                self._data_dirty = True
                self._new_entries |= directories
                self._retired = retired + self._retired
                raise
            finally:
                for fd in dir_fds:
                    os.close(fd)
            for fd in retired:
                os.close(fd)

    def sync_if_needed(self) -> None:
        """The --sync-timeout tick: data, then state, then segments nobody needs any more."""
        if self._closed:
            return
        self.sync_data()
        self.delete_consumed()
        if self._state_dirty:
            self._write_state()

    # ---- fanout and retention -----------------------------------------------------------

    def depth(self) -> int:
        """Messages the topic still holds back from its channels."""
        return self.end - self.fanout

    def readable(self) -> bool:
        return self.fanout < self.end

    def release(self) -> int:
        """Let channels read everything appended so far; returns how many became visible."""
        count = self.end - self.fanout
        if count:
            self.fanout = self.end
            self._state_dirty = True
        return count

    def empty(self) -> None:
        """/topic/empty: drop what the topic holds back (channels keep theirs)."""
        if self.fanout != self.end:
            self.fanout = self.end
            self._state_dirty = True

    def set_retention(self, seconds: float | None, max_bytes: int | None) -> None:
        """Per-topic retention (None: the daemon's default), persisted at the next sync."""
        self.retention_seconds, self.retention_bytes = seconds, max_bytes
        self._state_dirty = True

    def retention(self) -> Retention:
        default = self._default_retention
        seconds = default.seconds if self.retention_seconds is None else self.retention_seconds
        max_bytes = default.max_bytes if self.retention_bytes is None else self.retention_bytes
        return Retention(seconds, max_bytes)

    def consumed_seq(self) -> int:
        """Every seq below this is finished by every channel and released by the topic."""
        return min([self.fanout, *(c.committed() for c in self.cursors.values())])

    def retained_bytes(self) -> int:
        """Bytes of segments every channel is done with, kept only for retention (replay)."""
        return sum(segment.size for segment in self._consumed_segments())

    def _consumed_segments(self) -> list[Segment]:
        """Segments (never the last) wholly below every channel's and the topic's position."""
        floor = self.consumed_seq()
        segments = self._segments
        return [s for s, nxt in zip(segments, segments[1:], strict=False) if nxt.base <= floor]

    def delete_consumed(self, now: float | None = None) -> None:
        """Delete the oldest segments that every channel is past and retention lets go."""
        done = self._consumed_segments()
        keep = self.retention()
        now = time.time() if now is None else now
        deletable = len(done)
        if keep.seconds > 0 or keep.max_bytes > 0:
            kept_bytes = 0
            for index in range(len(done) - 1, -1, -1):  # newest first: keep a suffix
                kept_bytes += done[index].size
                too_old = keep.seconds > 0 and self._mtime(done[index]) < now - keep.seconds
                too_big = keep.max_bytes > 0 and kept_bytes > keep.max_bytes
                if too_old or too_big:
                    break
                deletable = index
        for segment in done[:deletable]:
            self._delete_segment(segment)

    def _mtime(self, segment: Segment) -> float:
        try:
            return os.stat(segment.path).st_mtime
        except OSError:
            return 0.0

    def _delete_segment(self, segment: Segment) -> None:
        try:
            os.remove(segment.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("TOPICLOG(%s) failed to remove %s - %s", self.name, segment.path, exc)
            return
        self._segments.remove(segment)
        logger.info("TOPICLOG(%s): deleted consumed segment %s", self.name, segment.path)

    # ---- replay -------------------------------------------------------------------------

    def seq_at(self, unix_ns: int | None) -> int:
        """The first retained seq published at or after `unix_ns` (None: the oldest)."""
        if unix_ns is None:
            return self.first_seq()
        start = self._segments[0]
        for segment in self._segments[1:]:
            first = self._first_timestamp(segment)
            if first is None or first >= unix_ns:
                break
            start = segment
        reader = LogReader(self)
        try:
            seq = start.base
            while (msg := reader.read_from(seq)) is not None:
                if msg.timestamp >= unix_ns:
                    return msg.token
                seq = msg.token + 1
        finally:
            reader.close()
        return self.end

    def _first_timestamp(self, segment: Segment) -> int | None:
        try:
            with open(segment.path, "rb") as f:
                _read_header(f, segment.path)
                got = _read_record(f, self.max_record_size)
        except (OSError, LogFormatError):
            return None
        return None if got is None else got[1].timestamp

    # ---- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Clean shutdown: fsync, persist the state, close (channels closed their cursors)."""
        if self._closed:
            return
        try:
            self.sync_data()
            self._write_state()
        finally:
            self._closed = True
            for fd in [*self._retired, *([self._fd] if self._fd is not None else [])]:
                os.close(fd)
            self._retired, self._fd = [], None

    def delete(self) -> None:
        """The topic is deleted: nothing of it may come back at the next start."""
        self._closed = True
        for fd in [*self._retired, *([self._fd] if self._fd is not None else [])]:
            os.close(fd)
        self._retired, self._fd = [], None
        shutil.rmtree(self.path, ignore_errors=True)

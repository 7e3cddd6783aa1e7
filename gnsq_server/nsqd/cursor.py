"""A channel's cursor over its topic's log (crash-safe mode), with its acknowledgements.

The channel reads the log through the cursor and tells it what was finished (FIN, a sample
drop, emptying) and what was requeued with a delay. The cursor persists, on the
``--sync-every``/``--sync-timeout`` schedule and after fsyncing the log, the seq below which
everything is finished plus the individually finished seqs above it (the "holes" a held or
slow message leaves behind, as Pulsar's cursors keep them), so a crash re-delivers only what
was not finished at the last sync, not everything after the oldest unfinished message.

File ``<channel>.cursor`` in the topic's log directory, written atomically (temp file,
fsync, rename), big-endian::

    [8s magic b"GNSQCUR\\n"][uint32 version = 1][uint64 committed]
    [uint32 n][n x ([uint64 first][uint64 end])]   finished seqs first..end-1, above committed
    [uint32 m][m x ([uint64 seq][int64 due ns])]   requeued with a delay: not before due
    [uint32 crc32 of all preceding bytes]

Every seq below ``committed`` is finished; above it, a seq is finished if a range holds it.
Readers accept versions up to theirs. Ephemeral channels have a cursor without a file.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections import deque

import gevent
from gevent.lock import Semaphore

from . import metadata
from .message import Message
from .topiclog import DamagedState, LogFormatError, LogReader, TopicLog

__all__ = ["Cursor"]

logger = logging.getLogger(__name__)

VERSION = 1
MAGIC = b"GNSQCUR\n"
SUFFIX = ".cursor"
_HEAD = struct.Struct(">8sIQ")
_COUNT = struct.Struct(">I")
_RANGE = struct.Struct(">QQ")
_DUE = struct.Struct(">Qq")


def encode_state(
    committed: int, ranges: list[tuple[int, int]], due: list[tuple[int, int]]
) -> bytes:
    parts = [_HEAD.pack(MAGIC, VERSION, committed), _COUNT.pack(len(ranges))]
    parts.extend(_RANGE.pack(first, end) for first, end in ranges)
    parts.append(_COUNT.pack(len(due)))
    parts.extend(_DUE.pack(seq, when) for seq, when in due)
    body = b"".join(parts)
    return body + _COUNT.pack(zlib.crc32(body))


def decode_state(data: bytes) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """(committed, finished ranges, due times); LogFormatError if damaged or too new."""
    if len(data) < _HEAD.size + 2 * _COUNT.size + _COUNT.size:
        raise DamagedState("short cursor file")
    body, (crc,) = data[:-4], _COUNT.unpack(data[-4:])
    if zlib.crc32(body) != crc:
        raise DamagedState("cursor file checksum mismatch")
    magic, version, committed = _HEAD.unpack_from(body)
    if magic != MAGIC or version > VERSION:
        raise LogFormatError(f"unknown cursor format (version {version})")
    offset = _HEAD.size
    (count,) = _COUNT.unpack_from(body, offset)
    offset += _COUNT.size
    ranges = [_RANGE.unpack_from(body, offset + i * _RANGE.size) for i in range(count)]
    offset += count * _RANGE.size
    (count,) = _COUNT.unpack_from(body, offset)
    offset += _COUNT.size
    due = [_DUE.unpack_from(body, offset + i * _DUE.size) for i in range(count)]
    return committed, ranges, due


class Cursor:
    """A channel's read position in a topic log plus its unfinished and finished messages.

    In memory: ``read_seq`` (the next seq to read), the unfinished messages read so far
    (seq -> due unix ns of a delayed requeue, 0 otherwise) and, after a restart, the
    finished ranges still ahead of ``read_seq``, which reading skips.
    """

    #: the channel's test for crash-safe mode
    acknowledged = True

    def __init__(self, log: TopicLog, name: str, persist: bool, start: int) -> None:
        self.log = log
        self.name = name
        self.path = os.path.join(log.path, name + SUFFIX) if persist else None
        self.read_seq = start
        self._unfinished: dict[int, int] = {}
        self._skip: deque[tuple[int, int]] = deque()
        self._skipped = 0
        self._restored_due: dict[int, int] = {}
        self._changes = 0
        self._persister: gevent.Greenlet | None = None
        self._persist_lock = Semaphore()
        self._closed = False
        self._reader = LogReader(log)
        if self.path is not None and not self._load():
            # Persisted at the next sync, not here: creating a channel must not yield, or a
            # second SUB would create it again. Until then a crash restarts this cursor at the
            # oldest record (see nsqd.new_channel): duplicates, never a loss.
            self._changes = 1
        log.cursors[name] = self

    # ---- state file ---------------------------------------------------------------------

    def _load(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False
        log = self.log
        try:
            committed, ranges, due = decode_state(data)
        except DamagedState as exc:
            # disk damage (the file is written atomically): from the oldest record on,
            # duplicates rather than losses
            logger.error("CURSOR(%s:%s) %s: %s", log.name, self.name, self.path, exc)
            self.read_seq = log.first_seq()
            return True
        except LogFormatError as exc:
            raise LogFormatError(f"{self.path}: {exc}") from exc
        # a log cut short by a torn tail (or segments gone) bounds what can be read
        self.read_seq = min(max(committed, log.first_seq()), log.end)
        for first, end in sorted(ranges):
            first, end = max(first, self.read_seq), min(end, log.end)
            if first < end:
                self._skip.append((first, end))
                self._skipped += end - first
        self._restored_due = {seq: when for seq, when in due if seq >= self.read_seq}
        return True

    def _snapshot(self) -> bytes:
        unfinished = sorted(self._unfinished)
        committed = unfinished[0] if unfinished else self.read_seq
        ranges, previous = [], committed
        for seq in unfinished:
            if seq > previous:
                ranges.append((previous, seq))
            previous = seq + 1
        if self.read_seq > previous:
            ranges.append((previous, self.read_seq))
        ranges.extend(self._skip)
        now = time.time_ns()
        due = [(seq, when) for seq, when in self._unfinished.items() if when > now]
        due.extend(self._restored_due.items())
        return encode_state(committed, ranges, due)

    def persist(self) -> None:
        """Write the state (after fsyncing the log it refers to); OSError is logged."""
        if self.path is None or self._closed:
            return
        with self._persist_lock:
            if not self._changes:
                return
            data, self._changes = self._snapshot(), 0
            try:
                self.log.sync_data()
                gevent.get_hub().threadpool.apply(metadata.write_atomic, (self.path, data))
                self.log.bytes_written += len(data)
            except OSError as exc:
                self._changes += 1
                logger.error("CURSOR(%s:%s) failed to persist - %s", self.log.name, self.name, exc)

    def sync_if_needed(self) -> None:
        """The --sync-timeout tick."""
        if self._changes:
            self.persist()

    def _changed(self) -> None:
        self._changes += 1
        if self._changes >= self.log.sync_every and self._persister is None and self.path:
            self._persister = gevent.spawn(self._persist_soon)

    def _persist_soon(self) -> None:
        try:
            self.persist()
        finally:
            self._persister = None

    # ---- reading ------------------------------------------------------------------------

    def committed(self) -> int:
        """Every seq below this is finished on this channel."""
        return min(self._unfinished) if self._unfinished else self.read_seq

    def depth(self) -> int:
        return max(0, self.log.fanout - self.read_seq - self._skipped)

    def readable(self) -> bool:
        return self.depth() > 0

    def unfinished_count(self) -> int:
        return len(self._unfinished)

    def read(self) -> Message | None:
        """The next message to deliver, None when the channel has read all it may.

        ``msg.token`` is its seq and ``msg.defer`` the seconds it must still wait (DPUB, or
        a delayed requeue before a restart)."""
        log = self.log
        while self.read_seq < log.fanout:
            seq = self.read_seq
            if self._skip and self._skip_finished(seq):
                continue
            msg = log.cached(seq) or self._reader.read_from(seq)
            if msg is None or msg.token >= log.fanout:
                self.read_seq = log.fanout  # nothing readable up to the fanout (damage)
                return None
            if msg.token != seq:
                self.read_seq = msg.token  # a gap (deleted or damaged records): skip it
                continue
            self.read_seq = seq + 1
            if seq in self._unfinished:
                continue  # a replay reached a message that is still out
            requeued_until = self._restored_due.pop(seq, 0) if self._restored_due else 0
            if requeued_until or msg.defer:
                due = requeued_until or msg.timestamp + int(msg.defer * 1e9)
                msg.defer = max(0.0, (due - time.time_ns()) / 1e9)
            self._unfinished[seq] = requeued_until
            return msg
        return None

    def _skip_finished(self, seq: int) -> bool:
        """Jump over a range finished before the restart; True if read_seq moved."""
        skip = self._skip
        while skip and skip[0][1] <= seq:
            first, end = skip.popleft()
            self._skipped -= end - first
        if skip and skip[0][0] <= seq:
            first, end = skip.popleft()
            self._skipped -= end - first
            self.read_seq = end
            return True
        return False

    # ---- acknowledgements ---------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """The message is finished on this channel."""
        if seq in self._unfinished:
            del self._unfinished[seq]
            self._changed()

    def defer(self, seq: int, deadline: float) -> None:
        """The message was requeued until `deadline` (monotonic): keep that across a crash."""
        if seq in self._unfinished:
            self._unfinished[seq] = time.time_ns() + int((deadline - time.monotonic()) * 1e9)
            self._changed()

    def empty(self) -> None:
        """Everything visible so far counts as finished."""
        self._unfinished.clear()
        self._restored_due.clear()
        self._skip.clear()
        self._skipped = 0
        self.read_seq = self.log.fanout
        self._changed()

    def rewind(self, seq: int) -> int:
        """Replay: deliver again everything from `seq` on (unfinished ones stay as they are).

        Only moves back; returns the seq the cursor now reads from."""
        seq = max(seq, self.log.first_seq())
        if seq < self.read_seq:
            self.read_seq = seq
            self._skip.clear()
            self._skipped = 0
            self._changed()
            self.persist()
        return self.read_seq

    # ---- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Clean shutdown: persist and let go of the log."""
        if self._closed:
            return
        self._changes += 1
        self.persist()
        self._release()

    def delete(self) -> None:
        """The channel is deleted: its file goes, so nothing of it comes back."""
        self._release()
        if self.path is not None:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def _release(self) -> None:
        self._closed = True
        self._reader.close()
        if self.log.cursors.get(self.name) is self:
            del self.log.cursors[self.name]

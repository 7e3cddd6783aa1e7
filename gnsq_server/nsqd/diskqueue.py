"""nsqd's disk queue: go-diskqueue v1.1.0's files and recovery rules, as a synchronous class.

go-diskqueue runs an I/O goroutine per queue; here the topic/channel greenlets call
``put``/``get`` directly and the daemon calls ``sync_if_needed`` every ``--sync-timeout``.
A per-queue gevent lock serialises callers, because ``sync`` yields to the hub while the
threadpool runs ``fsync``.

Files, in ``data_path`` (``name`` is ``<topic>`` or ``<topic>:<channel>``)::

    <name>.diskqueue.000000.dat   segment: records back to back, no file header
        record = [int32 BE payload length][payload]
        payload = nsqd message: [int64 ts_ns][uint16 attempts][16 hex id][body]
    <name>.diskqueue.meta.dat     text "%d\\n%d,%d\\n%d,%d\\n":
        depth, readFileNum,readPos, writeFileNum,writePos
    <name>.diskqueue.000000.dat.bad   a segment that failed to read; never touched again

Writes go to an in-memory buffer written with one ``pwrite`` when it fills, when the
reader catches up with it, or on sync; a failed write leaves the queue as it was before
that ``put``/``put_many``, so the caller can report the error and carry on.

Crash-safe mode (``gnsqd --crash-safe``) does not use these queues for durable topics: it
keeps one log per topic with a cursor per channel (``topiclog.py``, ``cursor.py``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import struct

import gevent
from gevent.lock import Semaphore

__all__ = ["DiskQueue", "MESSAGE_HEADER_SIZE", "message_size_bounds"]

logger = logging.getLogger(__name__)

#: [int64 timestamp][uint16 attempts][16-byte hex id]: the smallest valid payload.
MESSAGE_HEADER_SIZE = 8 + 2 + 16

#: Bytes buffered before a put writes them out (a sync or a catching-up reader writes sooner).
WRITE_BUFFER_SIZE = 64 * 1024
READ_BUFFER_SIZE = 64 * 1024

_LENGTH = struct.Struct(">i")  # record prefix: payload length, int32 big-endian
_META_RE = re.compile(rb"\s*(-?\d+)\n(-?\d+),(-?\d+)\n(-?\d+),(-?\d+)\n?\s*\Z")


def message_size_bounds(max_msg_size: int) -> tuple[int, int]:
    """(min, max) payload length nsqd gives its disk queues: a bare header .. header + body."""
    return MESSAGE_HEADER_SIZE, max_msg_size + MESSAGE_HEADER_SIZE


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of `data` at `offset`; on error truncate what got half-written and raise, so
    a torn record never stays in a segment."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError:
        try:
            os.ftruncate(fd, offset)
        except OSError:
            pass
        raise
    finally:
        view.release()


class DiskQueue:
    """A FIFO of byte strings in numbered segment files, byte-compatible with nsqd 1.3.0."""

    def __init__(
        self,
        name: str,
        data_path: str,
        max_bytes_per_file: int,
        min_msg_size: int,
        max_msg_size: int,
        sync_every: int,
        sync_timeout: float,
    ) -> None:
        self.name = name
        self.data_path = data_path
        self._max_bytes_per_file = max_bytes_per_file
        self._min_msg_size = min_msg_size
        self._max_msg_size = max_msg_size
        self._sync_every = max(1, sync_every)
        self.sync_timeout = sync_timeout  # the daemon's timer calls sync_if_needed this often

        # state persisted in the metadata file
        self._depth = 0
        self._read_file_num = 0
        self._read_pos = 0
        self._write_file_num = 0
        self._write_pos = 0

        self._count = 0  # reads + writes since the last sync
        self._need_sync = False
        self._new_segment = False  # a segment was created since the last directory fsync
        self._closed = False
        self._lock = Semaphore()

        # write side: bytes in _wbuf end at _write_pos; the file holds the rest
        self._wfd: int | None = None
        self._wbuf = bytearray()
        # read side: _read_end is the size of a finished segment (None while it is the write file)
        self._reader = None
        self._read_end: int | None = None

        self._retrieve_metadata()
        self._oldest_file_num = self._read_file_num  # no segment below this is kept

    # ---- file names ----------------------------------------------------------------------

    def _meta_file_name(self) -> str:
        return os.path.join(self.data_path, f"{self.name}.diskqueue.meta.dat")

    def _file_name(self, file_num: int) -> str:
        return os.path.join(self.data_path, f"{self.name}.diskqueue.{file_num:06d}.dat")

    # ---- public API ------------------------------------------------------------------------

    def depth(self) -> int:
        return self._depth

    def readable(self) -> bool:
        """Whether a record is left to read, by position: the depth in metadata an unclean
        stop left behind may be stale, and go-diskqueue reads by position too."""
        return self._read_file_num < self._write_file_num or self._read_pos < self._write_pos

    def put(self, data: bytes) -> None:
        """Append one record; OSError (disk full, ...) leaves the queue as it was."""
        self.put_many((data,))

    def put_many(self, items: list[bytes] | tuple[bytes, ...]) -> None:
        """Append records with one buffered write.

        On OSError the records not yet written are dropped from the queue; records before a
        file roll inside the batch stay (nsqd's MPUB to disk is not atomic either).
        """
        sizes = list(map(len, items))
        if sizes and not (self._min_msg_size <= min(sizes) and max(sizes) <= self._max_msg_size):
            bad = next(n for n in sizes if not self._min_msg_size <= n <= self._max_msg_size)
            raise ValueError(f"invalid message write size ({bad}) maxMsgSize={self._max_msg_size}")
        batch = 4 * len(sizes) + sum(sizes)
        fits = self._fits(batch)
        if fits and not self._lock.locked():
            # Nothing on this path yields (no roll, no fsync; pwrite blocks), so no other
            # greenlet can run inside it: the lock would only cost time.
            self._append(sizes, items, batch, fits)
        else:
            with self._lock:
                self._append(sizes, items, batch, self._fits(batch))  # as of now
        if self._count >= self._sync_every:
            with self._lock:
                if self._count >= self._sync_every:  # unless another greenlet just synced
                    self._sync_logged()

    def _fits(self, batch: int) -> bool:
        """Whether ``batch`` bytes of records fit the open segment."""
        return self._wfd is not None and self._write_pos + batch <= self._max_bytes_per_file

    def _append(self, sizes: list[int], items: list[bytes] | tuple[bytes, ...], batch: int,
                fits: bool) -> None:
        """put_many's records into the buffer (written out once it is full or a sync is due);
        ``fits``: the whole batch fits the open segment."""
        self._check_open()
        buf = self._wbuf
        mark, mark_pos, mark_depth = len(buf), self._write_pos, self._depth
        try:
            if fits:  # no roll to check record by record
                pack = _LENGTH.pack
                if len(sizes) == 1:  # a PUB's spill: spare the join
                    buf += pack(sizes[0])
                    buf += items[0]
                else:
                    buf += b"".join([pack(n) + data for n, data in zip(sizes, items, strict=True)])
                self._write_pos += batch
                self._depth += len(sizes)
                items = ()
            for data in items:
                total = 4 + len(data)
                if self._write_pos > 0 and self._write_pos + total > self._max_bytes_per_file:
                    self._roll()
                    mark, mark_pos, mark_depth = 0, 0, self._depth
                if self._wfd is None:
                    self._open_write_file()
                buf += _LENGTH.pack(len(data))
                buf += data
                self._write_pos += total
                self._depth += 1
            self._count += len(sizes)
            if len(buf) >= WRITE_BUFFER_SIZE or self._count >= self._sync_every:
                self._flush()
        except OSError:
            del buf[mark:]
            self._write_pos, self._depth = mark_pos, mark_depth
            raise

    def get(self) -> bytes | None:
        """Pop the next record, or None when there is nothing (or nothing readable) now."""
        with self._lock:
            self._check_open()
            data = self._read_one()
            if data is not None:
                self._count += 1
            if self._need_sync or self._count >= self._sync_every:
                self._sync_logged()
            return data

    def empty(self) -> None:
        """Drop everything: delete every segment from reader to writer, and the metadata."""
        with self._lock:
            self._check_open()
            logger.info("DISKQUEUE(%s): emptying", self.name)
            err = self._skip_to_next_rw_file()
            self._count = 0
            try:
                os.remove(self._meta_file_name())
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("DISKQUEUE(%s) failed to remove metadata file - %s", self.name, exc)
                raise
            if err is not None:
                raise err

    def sync(self) -> None:
        """Make every record put so far durable: write, fsync data, then metadata atomically."""
        with self._lock:
            self._check_open()
            self._sync()

    def sync_if_needed(self) -> None:
        """The sync-timeout tick: sync only if anything happened since the last sync."""
        with self._lock:
            if self._closed or (self._count == 0 and not self._need_sync):
                return
            self._sync_logged()

    def close(self) -> None:
        """Sync and close; the files stay for the next start."""
        with self._lock:
            if self._closed:
                return
            logger.info("DISKQUEUE(%s): closing", self.name)
            try:
                self._sync()
            finally:
                self._closed = True
                self._close_reader()
                self._close_writer(flush=False)

    def delete(self) -> None:
        """Close without persisting metadata (nsqd calls empty() first when deleting)."""
        with self._lock:
            if self._closed:
                return
            logger.info("DISKQUEUE(%s): deleting", self.name)
            self._closed = True
            self._close_reader()
            self._close_writer(flush=True)

    # ---- metadata ----------------------------------------------------------------------

    def _retrieve_metadata(self) -> None:
        path = self._meta_file_name()
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            logger.error("DISKQUEUE(%s) failed to retrieveMetaData - %s", self.name, exc)
            raw = None
        if raw is not None:
            m = _META_RE.match(raw)
            if m is None:
                logger.error(
                    "DISKQUEUE(%s) failed to retrieveMetaData - bad format %r", self.name, raw[:64]
                )
            else:
                (
                    self._depth,
                    self._read_file_num,
                    self._read_pos,
                    self._write_file_num,
                    self._write_pos,
                ) = (int(g) for g in m.groups())

        # Metadata not synced at the last stop: the write file holds more than writePos says.
        # Appending at writePos would overwrite those records, so write to a new file and let
        # the reader salvage the old one to its real end (go-diskqueue does the same).
        # Unlike go-diskqueue this also runs without metadata, so stray records are not clobbered.
        write_name = self._file_name(self._write_file_num)
        try:
            size = os.stat(write_name).st_size
        except OSError:
            size = -1
        if self._write_pos < size:
            logger.warning(
                "DISKQUEUE(%s) %s metadata writePos %d < file size of %d, skipping to new file",
                self.name,
                write_name,
                self._write_pos,
                size,
            )
            self._write_file_num += 1
            self._write_pos = 0
        self._check_tail_corruption()

    def _persist_metadata(self, data_fd: int | None) -> None:
        """fsync the data file, then write the metadata to a temp file, fsync it, rename it."""
        path = self._meta_file_name()
        tmp = f"{path}.{random.getrandbits(63)}.tmp"
        text = (
            f"{self._depth}\n{self._read_file_num},{self._read_pos}\n"
            f"{self._write_file_num},{self._write_pos}\n"
        ).encode()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, text)
                fds = [fd] if data_fd is None else [data_fd, fd]
                # fsync off the event loop: other queues and clients keep running meanwhile
                gevent.get_hub().threadpool.apply(_fsync_all, (fds,))
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise

    def _fsync_directory(self) -> None:
        """Make a new segment's directory entry durable (go-diskqueue skips this)."""
        fd = os.open(self.data_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            gevent.get_hub().threadpool.apply(_fsync_all, ([fd],))
        finally:
            os.close(fd)
        self._new_segment = False

    def _sync(self) -> None:
        if self._wfd is not None:
            self._flush()
        try:
            self._persist_metadata(self._wfd)
            if self._new_segment:
                self._fsync_directory()
        except OSError:
            # after a failed fsync the page cache cannot be trusted; reopen at writePos next time
            if self._wfd is not None:
                self._close_writer(flush=False)
            raise
        self._need_sync = False
        self._count = 0

    def _sync_logged(self) -> None:
        try:
            self._sync()
        except OSError as exc:
            logger.error("DISKQUEUE(%s) failed to sync - %s", self.name, exc)

    # ---- write side ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(f"DISKQUEUE({self.name}) is closed")

    def _open_write_file(self) -> None:
        path = self._file_name(self._write_file_num)
        self._wfd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._write_pos == 0:
            self._new_segment = True
        logger.info("DISKQUEUE(%s): writeOne() opened %s", self.name, path)

    def _flush(self) -> None:
        """Write the buffer at its file offset; on error truncate what got half-written."""
        buf = self._wbuf
        if not buf:
            return
        try:
            pwrite_all(self._wfd, buf, self._write_pos - len(buf))
        except OSError:
            if self._read_file_num == self._write_file_num:
                self._close_reader()  # it may hold read-ahead bytes of the discarded tail
            raise
        buf.clear()

    def _roll(self) -> None:
        """Start the next segment: the reader sees the old one as finished at its size."""
        if self._wfd is not None:
            self._flush()
        if self._read_file_num == self._write_file_num:
            self._read_end = self._write_pos
        self._write_file_num += 1
        self._write_pos = 0
        # sync on every roll: fsyncs the finished segment, records the new write file
        self._sync_logged()
        self._close_writer(flush=False)

    def _close_writer(self, flush: bool) -> None:
        if self._wfd is None:
            return
        if flush:
            try:
                self._flush()
            except OSError as exc:
                logger.error("DISKQUEUE(%s) failed to write - %s", self.name, exc)
        # callers move the write position on (or stop): anything still buffered is lost
        self._wbuf.clear()
        os.close(self._wfd)
        self._wfd = None

    # ---- read side ----------------------------------------------------------------------

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open_reader(self) -> None:
        path = self._file_name(self._read_file_num)
        reader = open(path, "rb", buffering=READ_BUFFER_SIZE)
        try:
            if self._read_file_num < self._write_file_num:
                self._read_end = os.fstat(reader.fileno()).st_size
            else:
                self._read_end = None
            if self._read_pos > 0:
                reader.seek(self._read_pos)
        except OSError:
            reader.close()
            raise
        logger.info("DISKQUEUE(%s): readOne() opened %s", self.name, path)
        self._reader = reader

    def _read_one(self) -> bytes | None:
        while self._read_file_num < self._write_file_num or self._read_pos < self._write_pos:
            try:
                if self._reader is None:
                    self._open_reader()
                end = self._read_end
                if self._read_file_num < self._write_file_num and end is not None:
                    if self._read_pos == end:
                        # a finished segment read to its end: go-diskqueue v1.1.0 renames it
                        # .bad here when the writer rolled under a caught-up reader (#42)
                        self._next_read_file()
                        continue
                    if self._read_pos > end:
                        raise OSError(f"read position beyond end of file ({end})")
                elif self._read_pos >= self._write_pos - len(self._wbuf):
                    # the record is still in the write buffer
                    try:
                        self._flush()
                    except OSError as exc:
                        logger.error("DISKQUEUE(%s) failed to write - %s", self.name, exc)
                        return None
                data = self._read_record()
            except OSError as exc:
                logger.error(
                    "DISKQUEUE(%s) reading at %d of %s - %s",
                    self.name,
                    self._read_pos,
                    self._file_name(self._read_file_num),
                    exc,
                )
                self._close_reader()
                self._handle_read_error()
                self._check_tail_corruption()
                continue

            self._read_pos += 4 + len(data)
            self._depth -= 1
            if self._read_file_num < self._write_file_num and self._read_pos >= self._read_end:
                self._next_read_file()
            self._check_tail_corruption()
            return data
        return None

    def _read_record(self) -> bytes:
        reader = self._reader
        header = reader.read(4)
        if len(header) < 4:
            raise OSError("EOF" if not header else "unexpected EOF")
        (size,) = _LENGTH.unpack(header)
        if size < self._min_msg_size or size > self._max_msg_size:
            # corrupt: there is no telling where the next record starts
            raise OSError(f"invalid message read size ({size})")
        data = reader.read(size)
        if len(data) < size:
            raise OSError("unexpected EOF")
        return data

    def _next_read_file(self) -> None:
        """The reader finished a segment: delete it and start on the next one."""
        self._close_reader()
        self._read_file_num += 1
        self._read_pos = 0
        self._need_sync = True  # sync every time we start reading a new file
        self._remove_consumed_files()

    def _remove_consumed_files(self) -> None:
        """Delete finished segments below the read position."""
        while self._oldest_file_num < self._read_file_num:
            old = self._file_name(self._oldest_file_num)
            self._oldest_file_num += 1
            try:
                os.remove(old)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("DISKQUEUE(%s) failed to Remove(%s) - %s", self.name, old, exc)

    def _handle_read_error(self) -> None:
        """Rename the unreadable segment to .bad and move on; drop the write file if it is it."""
        if self._read_file_num == self._write_file_num:
            self._close_writer(flush=True)
            self._write_file_num += 1
            self._write_pos = 0
        bad = self._file_name(self._read_file_num)
        logger.warning(
            "DISKQUEUE(%s) jump to next file and saving bad file as %s.bad", self.name, bad
        )
        try:
            os.rename(bad, bad + ".bad")
        except OSError:
            logger.error(
                "DISKQUEUE(%s) failed to rename bad diskqueue file %s to %s.bad",
                self.name,
                bad,
                bad,
            )
        self._read_file_num += 1
        self._read_pos = 0
        self._need_sync = True

    def _check_tail_corruption(self) -> None:
        """At the tail depth must be 0 and the positions equal; otherwise log and reset."""
        rfn, rpos, wfn, wpos = (
            self._read_file_num,
            self._read_pos,
            self._write_file_num,
            self._write_pos,
        )
        if rfn < wfn or rpos < wpos:
            return
        if self._depth < 0:
            logger.error(
                "DISKQUEUE(%s) negative depth at tail (%d), metadata corruption, resetting 0...",
                self.name,
                self._depth,
            )
        elif self._depth > 0:
            logger.error(
                "DISKQUEUE(%s) positive depth at tail (%d), data loss, resetting 0...",
                self.name,
                self._depth,
            )
        if self._depth != 0:
            self._depth = 0
            self._need_sync = True
        if rfn != wfn or rpos != wpos:
            if rfn > wfn:
                logger.error(
                    "DISKQUEUE(%s) readFileNum > writeFileNum (%d > %d), corruption, "
                    "skipping to next writeFileNum and resetting 0...",
                    self.name,
                    rfn,
                    wfn,
                )
            if rpos > wpos:
                logger.error(
                    "DISKQUEUE(%s) readPos > writePos (%d > %d), corruption, "
                    "skipping to next writeFileNum and resetting 0...",
                    self.name,
                    rpos,
                    wpos,
                )
            self._skip_to_next_rw_file()
            self._need_sync = True

    def _skip_to_next_rw_file(self) -> OSError | None:
        """Delete segments readFileNum..writeFileNum and restart both ends on a fresh file."""
        self._close_reader()
        self._close_writer(flush=False)
        err = None
        for num in range(self._read_file_num, self._write_file_num + 1):
            try:
                os.remove(self._file_name(num))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("DISKQUEUE(%s) failed to remove data file - %s", self.name, exc)
                err = exc
        self._write_file_num += 1
        self._write_pos = 0
        self._read_file_num = self._write_file_num
        self._oldest_file_num = self._read_file_num
        self._read_pos = 0
        self._depth = 0
        return err

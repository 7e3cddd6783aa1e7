"""What gnsqd keeps in its data path besides the disk queues.

- ``nsqd.dat``: nsqd's own JSON list of topics and channels with their paused flags, written
  atomically (temp file, fsync, rename) so nsqd and gnsqd can read each other's.
- ``<topic>:<channel>.gnsq-deferred.dat``: deferred messages with their due time, written at a
  clean shutdown so that a restart keeps their remaining delay (nsqd loses it). Records are
  ``[int64 due_unix_ns][int32 length][message encoding]``. nsqd does not read this file.
- the data path itself is locked with flock, as nsqd does, so two daemons never share it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import struct

from .. import NSQ_VERSION
from ..wire import is_valid_name

METADATA_FILE = "nsqd.dat"
DEFERRED_SUFFIX = ".gnsq-deferred.dat"
_DEFERRED_RECORD = struct.Struct(">qi")


class DataPathLocked(OSError):
    """Another daemon holds the data path."""


class DataPathLock:
    """An exclusive flock on the data directory, held for the daemon's lifetime."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise DataPathLocked(
                err.errno, f"failed to lock data-path {self.path}: another daemon is using it"
            ) from err
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_atomic(path: str, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new contents."""
    tmp = f"{path}.{secrets.randbelow(1 << 62)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def encode_metadata(topics) -> bytes:
    """nsqd.dat for the given topics (ephemeral ones left out), in nsqd's key order."""
    entries = []
    for topic in topics:
        if topic.ephemeral:
            continue
        channels = [
            {"name": channel.name, "paused": channel.paused}
            for channel in topic.channels.values()
            if not channel.ephemeral
        ]
        entries.append({"name": topic.name, "paused": topic.paused, "channels": channels})
    document = {"topics": entries, "version": NSQ_VERSION}
    return json.dumps(document, separators=(",", ":")).encode()


def load_metadata(data_path: str) -> list[dict]:
    """Topics from nsqd.dat as [{"name", "paused", "channels": [{"name", "paused"}]}].

    Invalid names are skipped, as nsqd does; a missing file means a fresh data path.
    """
    path = os.path.join(data_path, METADATA_FILE)
    try:
        with open(path, "rb") as f:
            document = json.loads(f.read())
    except FileNotFoundError:
        return []
    topics = []
    for topic in document.get("topics") or []:
        name = topic.get("name", "")
        if not is_valid_name(name):
            continue
        channels = [
            {"name": channel["name"], "paused": bool(channel.get("paused"))}
            for channel in topic.get("channels") or []
            if is_valid_name(channel.get("name", ""))
        ]
        topics.append({"name": name, "paused": bool(topic.get("paused")), "channels": channels})
    return topics


def deferred_path(data_path: str, queue_name: str) -> str:
    return os.path.join(data_path, queue_name + DEFERRED_SUFFIX)


def save_deferred(path: str, entries: list[tuple[int, bytes]]) -> None:
    """Persist (due_unix_ns, encoded message) pairs; no entries removes the file."""
    if not entries:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    data = b"".join(_DEFERRED_RECORD.pack(due, len(msg)) + msg for due, msg in entries)
    write_atomic(path, data)


def load_deferred(path: str) -> list[tuple[int, bytes]]:
    """Read a deferred file; a torn tail record is dropped.

    The file stays until the next clean shutdown rewrites it: after a crash its messages come
    back again (a duplicate, never a loss).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    entries, offset = [], 0
    while offset + _DEFERRED_RECORD.size <= len(data):
        due, size = _DEFERRED_RECORD.unpack_from(data, offset)
        offset += _DEFERRED_RECORD.size
        if size < 0 or offset + size > len(data):
            break
        entries.append((due, data[offset : offset + size]))
        offset += size
    return entries

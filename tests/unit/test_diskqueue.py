"""DiskQueue against real files: format, rolling, recovery, corruption, nsqd 1.3.0 data."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import pytest

from gnsq_server.nsqd.diskqueue import DiskQueue, message_size_bounds

from ..captures import CAPTURES

REPO = Path(__file__).resolve().parents[2]
FIXTURES = CAPTURES
MANIFEST = FIXTURES / "datadir-manifest.json"
MIN_SIZE, MAX_SIZE = message_size_bounds(1048576)
LOGGER = "gnsq_server.nsqd.diskqueue"


def message(i: int, body: bytes = b"", attempts: int = 0) -> bytes:
    """An nsqd message payload: [int64 ts][uint16 attempts][16 hex id][body]."""
    return struct.pack(">qH", 1_700_000_000_000_000_000 + i, attempts) + b"%016x" % i + body


def record(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@pytest.fixture
def open_queue(tmp_path):
    """Opens DiskQueues in tmp_path (small segments, no automatic sync); closes them after."""
    opened: list[DiskQueue] = []

    def factory(name="t", max_bytes_per_file=1024, sync_every=10_000, path=tmp_path, **kw):
        q = DiskQueue(
            name,
            str(path),
            max_bytes_per_file,
            kw.get("min_msg_size", MIN_SIZE),
            kw.get("max_msg_size", MAX_SIZE),
            sync_every,
            2.0,
        )
        opened.append(q)
        return q

    yield factory
    for q in opened:
        q.close()


def drain(q: DiskQueue) -> list[bytes]:
    out = []
    while (data := q.get()) is not None:
        out.append(data)
    return out


def data_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def read_meta(path: Path, name: str = "t") -> str:
    return (path / f"{name}.diskqueue.meta.dat").read_text()


# ---- basics ---------------------------------------------------------------------------------


def test_message_size_bounds():
    assert message_size_bounds(1048576) == (26, 1048602)


def test_round_trip_order_and_depth(open_queue):
    q = open_queue()
    assert q.get() is None and q.depth() == 0
    msgs = [message(i, b"body-%d" % i) for i in range(50)]
    for m in msgs[:20]:
        q.put(m)
    q.put_many(msgs[20:])
    assert q.depth() == 50
    assert [q.get() for _ in range(10)] == msgs[:10]
    assert q.depth() == 40
    assert drain(q) == msgs[10:]
    assert q.depth() == 0
    assert q.get() is None


def test_unflushed_records_are_readable(open_queue, tmp_path):
    q = open_queue(max_bytes_per_file=1 << 20)
    q.put(message(1))
    # still only in the write buffer
    assert (tmp_path / "t.diskqueue.000000.dat").stat().st_size == 0
    assert q.get() == message(1)
    q.put(message(2))
    q.put(message(3))
    assert q.get() == message(2)
    q.put(message(4))
    assert drain(q) == [message(3), message(4)]


def test_invalid_sizes_are_refused(open_queue):
    q = open_queue()
    with pytest.raises(ValueError):
        q.put(b"x" * (MIN_SIZE - 1))
    with pytest.raises(ValueError):
        q.put_many([message(1), b"x" * (MAX_SIZE + 1)])
    assert q.depth() == 0 and q.get() is None


# ---- byte layout ----------------------------------------------------------------------------


def test_segment_and_meta_bytes_exact(open_queue, tmp_path):
    payloads = [message(0), message(1, b"hello"), message(2, bytes(range(256)), attempts=3)]
    q = open_queue(name="topic:chan", max_bytes_per_file=4096)
    q.put(payloads[0])
    q.put_many(payloads[1:])
    q.sync()
    seg = (tmp_path / "topic:chan.diskqueue.000000.dat").read_bytes()
    expected = (
        b"\x00\x00\x00\x1a" + payloads[0]  # 26 = bare header
        + b"\x00\x00\x00\x1f" + payloads[1]  # 26 + 5
        + b"\x00\x00\x01\x1a" + payloads[2]  # 26 + 256
    )  # fmt: skip
    assert seg == expected
    assert len(seg) == 30 + 35 + 286
    assert read_meta(tmp_path, "topic:chan") == "3\n0,0\n0,351\n"
    q.get()
    q.sync()
    assert read_meta(tmp_path, "topic:chan") == "2\n0,30\n0,351\n"


def test_files_are_private_and_meta_write_is_atomic(open_queue, tmp_path):
    q = open_queue()
    for i in range(5):
        q.put(message(i))
        q.sync()
    assert data_files(tmp_path) == ["t.diskqueue.000000.dat", "t.diskqueue.meta.dat"]
    for name in data_files(tmp_path):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) & 0o077 == 0


# ---- rolling ----------------------------------------------------------------------------------


def test_roll_at_max_bytes_per_file(open_queue, tmp_path):
    # 30-byte payloads -> 34-byte records; 68 fits in 100, 102 does not
    q = open_queue(name="t:c", max_bytes_per_file=100)
    msgs = [message(i, b"abcd") for i in range(5)]
    q.put_many(msgs)
    q.sync()
    sizes = {p.name: p.stat().st_size for p in tmp_path.glob("*.dat") if "meta" not in p.name}
    assert sizes == {
        "t:c.diskqueue.000000.dat": 68,
        "t:c.diskqueue.000001.dat": 68,
        "t:c.diskqueue.000002.dat": 34,
    }
    assert read_meta(tmp_path, "t:c") == "5\n0,0\n2,34\n"
    assert (tmp_path / "t:c.diskqueue.000000.dat").read_bytes() == record(msgs[0]) + record(msgs[1])

    # a fully read segment is deleted as soon as the reader moves past it
    assert [q.get(), q.get()] == msgs[:2]
    assert not (tmp_path / "t:c.diskqueue.000000.dat").exists()
    assert read_meta(tmp_path, "t:c") == "3\n1,0\n2,34\n"  # synced on moving to a new file
    assert drain(q) == msgs[2:]
    assert data_files(tmp_path) == ["t:c.diskqueue.000002.dat", "t:c.diskqueue.meta.dat"]


def test_roll_boundaries(open_queue, tmp_path):
    # exactly filling a segment does not roll; an oversized record gets a segment of its own
    q = open_queue(max_bytes_per_file=68)
    q.put(message(0, b"abcd"))
    q.put(message(1, b"abcd"))
    big = message(2, b"z" * 200)
    q.put(big)
    q.put(message(3, b"abcd"))
    q.sync()
    assert (tmp_path / "t.diskqueue.000000.dat").stat().st_size == 68
    assert (tmp_path / "t.diskqueue.000001.dat").stat().st_size == 230
    assert (tmp_path / "t.diskqueue.000002.dat").stat().st_size == 34
    assert drain(q) == [message(0, b"abcd"), message(1, b"abcd"), big, message(3, b"abcd")]


def test_caught_up_reader_survives_writer_roll(open_queue, tmp_path, caplog):
    # go-diskqueue v1.1.0 renames the old segment .bad here (nsqio/go-diskqueue#42); we don't
    q = open_queue(max_bytes_per_file=68)
    q.put(message(0, b"abcd"))
    q.put(message(1, b"abcd"))
    assert drain(q) == [message(0, b"abcd"), message(1, b"abcd")]
    q.put(message(2, b"abcd"))
    assert q.get() == message(2, b"abcd")
    assert q.depth() == 0
    assert not list(tmp_path.glob("*.bad"))
    assert not (tmp_path / "t.diskqueue.000000.dat").exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---- sync policy -------------------------------------------------------------------------------


def test_sync_every_counts_reads_and_writes(open_queue, tmp_path):
    q = open_queue(sync_every=3)
    q.put(message(0))
    q.put(message(1))
    assert not (tmp_path / "t.diskqueue.meta.dat").exists()
    q.get()  # third operation
    assert read_meta(tmp_path) == "1\n0,30\n0,60\n"


def test_sync_if_needed_only_after_activity(open_queue, tmp_path):
    q = open_queue()
    q.sync_if_needed()
    assert not (tmp_path / "t.diskqueue.meta.dat").exists()
    q.put(message(0))
    q.sync_if_needed()
    assert read_meta(tmp_path) == "1\n0,0\n0,30\n"
    assert (tmp_path / "t.diskqueue.000000.dat").stat().st_size == 30
    os.remove(tmp_path / "t.diskqueue.meta.dat")
    q.sync_if_needed()  # nothing happened since
    assert not (tmp_path / "t.diskqueue.meta.dat").exists()


# ---- lifecycle ---------------------------------------------------------------------------------


def test_close_and_reopen_resumes_exactly(open_queue, tmp_path):
    msgs = [message(i, b"x" * i) for i in range(40)]
    q = open_queue(max_bytes_per_file=300)
    q.put_many(msgs[:30])
    assert [q.get() for _ in range(12)] == msgs[:12]
    q.close()
    meta = read_meta(tmp_path)
    files_before = data_files(tmp_path)

    q = open_queue(max_bytes_per_file=300)
    assert q.depth() == 18
    assert data_files(tmp_path) == files_before
    q.put_many(msgs[30:])
    assert drain(q) == msgs[12:]
    assert q.depth() == 0
    q.close()
    assert meta != read_meta(tmp_path)
    q = open_queue(max_bytes_per_file=300)
    assert q.depth() == 0 and q.get() is None
    q.close()
    with pytest.raises(OSError):
        q.put(message(0))


def test_empty_drops_everything(open_queue, tmp_path):
    q = open_queue(max_bytes_per_file=100)
    q.put_many([message(i) for i in range(10)])
    q.get()
    q.sync()
    q.empty()
    assert q.depth() == 0 and q.get() is None
    assert data_files(tmp_path) == []
    q.put(message(99))
    assert q.get() == message(99)
    q.close()
    assert data_files(tmp_path) == ["t.diskqueue.000004.dat", "t.diskqueue.meta.dat"]


def test_delete_closes_without_persisting(open_queue, tmp_path):
    q = open_queue()
    q.put(message(0))
    q.sync()
    q.put(message(1))
    q.delete()
    assert read_meta(tmp_path) == "1\n0,0\n0,30\n"
    with pytest.raises(OSError):
        q.put(message(2))
    q.close()  # no-op once deleted
    assert read_meta(tmp_path) == "1\n0,0\n0,30\n"


def test_empty_then_delete_leaves_nothing(open_queue, tmp_path):
    q = open_queue(name="a:b", max_bytes_per_file=100)
    q.put_many([message(i) for i in range(10)])
    q.sync()
    q.empty()
    q.delete()
    assert data_files(tmp_path) == []


# ---- nsqd 1.3.0 data -------------------------------------------------------------------------


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def nsqd_datadir(tmp_path) -> Path:
    dest = tmp_path / "datadir"
    shutil.copytree(FIXTURES / "datadir", dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest


@pytest.mark.parametrize("queue_name", sorted(_manifest()["queues"]))
def test_reads_nsqd_130_datadir(queue_name, nsqd_datadir, open_queue, caplog):
    manifest = _manifest()
    entry = manifest["queues"][queue_name]
    assert (nsqd_datadir / entry["meta_file"]).read_text() == entry["meta_raw"]
    bad_before = {p.name: _sha256(p) for p in nsqd_datadir.glob("*.bad")}

    q = open_queue(name=queue_name, max_bytes_per_file=4096, path=nsqd_datadir)
    assert q.depth() == entry["meta"]["depth"]
    got = []
    for payload in drain(q):
        ts, attempts = struct.unpack_from(">qH", payload)
        got.append(
            {
                "id": payload[10:26].decode(),
                "timestamp": ts,
                "attempts": attempts,
                "body": base64.b64encode(payload[26:]).decode(),
            }
        )
    want = [{k: m[k] for k in ("id", "timestamp", "attempts", "body")} for m in entry["messages"]]
    assert got == want
    assert len(got) == entry["meta"]["depth"]
    assert q.depth() == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    q.close()

    # reader sits where the writer is; finished segments are gone, the write file stays
    meta = entry["meta"]
    assert read_meta(nsqd_datadir, queue_name) == (
        f"0\n{meta['write_file_num']},{meta['write_pos']}\n"
        f"{meta['write_file_num']},{meta['write_pos']}\n"
    )
    segments = sorted(p.name for p in nsqd_datadir.glob(f"{queue_name}.diskqueue.*.dat"))
    assert segments == [
        f"{queue_name}.diskqueue.{meta['write_file_num']:06d}.dat",
        f"{queue_name}.diskqueue.meta.dat",
    ]
    # nsqd's .bad files are neither read nor touched
    assert {p.name: _sha256(p) for p in nsqd_datadir.glob("*.bad")} == bad_before
    assert sorted(bad_before) == sorted(f["file"] for f in manifest["ignored_files"])


def test_appends_to_nsqd_130_write_file(nsqd_datadir, open_queue):
    q = open_queue(name="beta:only", max_bytes_per_file=4096, path=nsqd_datadir)
    q.put(message(7, b"appended"))
    q.close()
    seg = nsqd_datadir / "beta:only.diskqueue.000000.dat"
    original = (FIXTURES / "datadir" / "beta:only.diskqueue.000000.dat").read_bytes()
    assert seg.read_bytes() == original + record(message(7, b"appended"))
    assert read_meta(nsqd_datadir, "beta:only") == "11\n0,39\n0,467\n"
    q = open_queue(name="beta:only", max_bytes_per_file=4096, path=nsqd_datadir)
    assert drain(q)[-1] == message(7, b"appended")


# ---- corruption ----------------------------------------------------------------------------


def _two_segments(open_queue, tmp_path) -> list[bytes]:
    """Segment 0 holds msgs 0..2, segment 1 msgs 3..5 (34-byte records, 110-byte files)."""
    msgs = [message(i, b"abcd") for i in range(6)]
    q = open_queue(max_bytes_per_file=110)
    q.put_many(msgs)
    q.close()
    assert (tmp_path / "t.diskqueue.000000.dat").stat().st_size == 102
    return msgs


def test_bad_length_mid_file_skips_to_next_file(open_queue, tmp_path, caplog):
    msgs = _two_segments(open_queue, tmp_path)
    seg0 = tmp_path / "t.diskqueue.000000.dat"
    data = bytearray(seg0.read_bytes())
    data[34:38] = struct.pack(">i", 5)  # second record's length below the 26-byte minimum
    seg0.write_bytes(bytes(data))

    q = open_queue(max_bytes_per_file=110)
    assert q.depth() == 6
    assert q.get() == msgs[0]
    assert q.get() == msgs[3]
    assert (tmp_path / "t.diskqueue.000000.dat.bad").read_bytes() == bytes(data)
    assert not seg0.exists()
    assert any(
        r.levelno == logging.ERROR and "invalid message read size (5)" in r.getMessage()
        for r in caplog.records
    )
    assert drain(q) == msgs[4:]
    # the two skipped records are noticed at the tail and depth is reset
    assert q.depth() == 0
    assert any("positive depth at tail (2)" in r.getMessage() for r in caplog.records)
    q.put(message(9))
    assert q.get() == message(9)


def test_truncated_record_skips_to_next_file(open_queue, tmp_path, caplog):
    msgs = _two_segments(open_queue, tmp_path)
    seg0 = tmp_path / "t.diskqueue.000000.dat"
    os.truncate(seg0, 102 - 3)
    q = open_queue(max_bytes_per_file=110)
    assert [q.get(), q.get()] == msgs[:2]
    assert q.get() == msgs[3]
    assert (tmp_path / "t.diskqueue.000000.dat.bad").stat().st_size == 99
    assert any(
        r.levelno == logging.ERROR and "unexpected EOF" in r.getMessage() for r in caplog.records
    )
    assert drain(q) == msgs[4:]


def test_truncated_write_file_moves_writes_to_new_file(open_queue, tmp_path, caplog):
    msgs = [message(i, b"abcd") for i in range(3)]
    q = open_queue()
    q.put_many(msgs)
    q.close()
    os.truncate(tmp_path / "t.diskqueue.000000.dat", 102 - 3)
    q = open_queue()
    assert [q.get(), q.get(), q.get()] == [msgs[0], msgs[1], None]
    assert (tmp_path / "t.diskqueue.000000.dat.bad").exists()
    assert q.depth() == 0
    assert any("positive depth at tail (1)" in r.getMessage() for r in caplog.records)
    q.put(message(5))
    assert q.get() == message(5)
    q.close()
    assert read_meta(tmp_path) == "0\n1,30\n1,30\n"


def test_missing_segment_is_skipped(open_queue, tmp_path, caplog):
    msgs = _two_segments(open_queue, tmp_path)
    os.remove(tmp_path / "t.diskqueue.000000.dat")
    q = open_queue(max_bytes_per_file=110)
    assert drain(q) == msgs[3:]
    assert q.depth() == 0
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_depth_inconsistent_at_tail_is_reset(open_queue, tmp_path, caplog):
    q = open_queue()
    q.put(message(0))
    q.close()
    (tmp_path / "t.diskqueue.meta.dat").write_text("5\n0,0\n0,30\n")
    q = open_queue()
    assert q.get() == message(0)
    assert q.depth() == 0
    assert any("positive depth at tail (4)" in r.getMessage() for r in caplog.records)


# ---- crashes and write failures (subprocesses) -------------------------------------------


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


CRASH_AFTER_UNSYNCED_WRITES = """
    import json, os, sys
    from gnsq_server.nsqd.diskqueue import DiskQueue
    q = DiskQueue("t", sys.argv[1], 1 << 20, 26, 2000, 10_000, 2.0)
    body = lambda i: b"%026d" % i + b"p" * 974
    for i in range(10):
        q.put(body(i))
    q.sync()
    for i in range(10, 100):  # 90 KB: the write buffer spills to the file, metadata lags
        q.put(body(i))
    print(json.dumps({"size": os.path.getsize(q._file_name(0))}), flush=True)
    os._exit(0)  # crash: no close, no sync
"""


def test_metadata_lagging_data_after_crash(open_queue, tmp_path, caplog):
    out = _run(CRASH_AFTER_UNSYNCED_WRITES, str(tmp_path))
    assert read_meta(tmp_path) == "10\n0,0\n0,10040\n"
    assert out["size"] > 10040
    flushed = out["size"] // 1004

    q = open_queue(max_bytes_per_file=1 << 20, max_msg_size=2000)
    assert q.depth() == 10
    assert any("metadata writePos 10040 < file size" in r.getMessage() for r in caplog.records)
    q.put(b"%026d" % 1000 + b"new")
    q.sync()
    assert read_meta(tmp_path) == "11\n0,0\n1,33\n"  # writes continue in a new segment
    got = drain(q)
    # every synced record, then what reached the file unsynced, then the new one
    assert [int(p[:26]) for p in got] == list(range(flushed)) + [1000]
    assert q.depth() == 0
    assert (tmp_path / "t.diskqueue.000000.dat").exists() is False


WRITE_FAILS_THEN_RECOVERS = """
    import json, resource, signal, sys
    from gnsq_server.nsqd.diskqueue import DiskQueue
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    q = DiskQueue("t", sys.argv[1], 1 << 20, 26, 2000, 1, 2.0)
    body = lambda i: b"%026d" % i + b"q" * 174  # 200-byte payloads, 204-byte records
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, hard))
    accepted, errors = [], []
    for i in range(40):
        try:
            q.put(body(i))
            accepted.append(i)
        except OSError as exc:
            errors.append(exc.errno)
    failed_batch = False
    try:
        q.put_many([body(100), body(101)])
    except OSError:
        failed_batch = True
    depth_while_full = q.depth()
    size_while_full = __import__("os").path.getsize(q._file_name(0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    q.put_many([body(200), body(201)])
    q.put(body(202))
    got = []
    while (p := q.get()) is not None:
        got.append(int(p[:26]))
    q.close()
    print(json.dumps({"accepted": accepted, "errors": errors, "failed_batch": failed_batch,
                      "depth_while_full": depth_while_full, "size_while_full": size_while_full,
                      "got": got}))
"""


def test_write_failure_raises_and_queue_recovers(tmp_path):
    out = _run(WRITE_FAILS_THEN_RECOVERS, str(tmp_path))
    accepted = out["accepted"]
    assert accepted == list(range(24))  # 24 * 204 = 4896 <= 5000 < 25 * 204
    assert len(out["errors"]) == 16 and set(out["errors"]) == {27}  # EFBIG
    assert out["failed_batch"] is True
    assert out["depth_while_full"] == 24
    assert out["size_while_full"] == 24 * 204  # the half-written record was cut off
    assert out["got"] == accepted + [200, 201, 202]


def test_concurrent_greenlets_while_fsync_yields(open_queue):
    q = open_queue(max_bytes_per_file=2000, sync_every=7)
    got: list[bytes] = []

    def producer(p: int) -> None:
        for i in range(150):
            q.put(message(p * 1000 + i, b"payload"))
            if i % 50 == 0:
                q.sync()

    def consumer() -> None:
        while len(got) < 600:
            data = q.get()
            if data is None:
                gevent.sleep(0)
            else:
                got.append(data)

    gevent.joinall([gevent.spawn(producer, p) for p in range(4)] + [gevent.spawn(consumer)])
    ids = [int(m[10:26], 16) for m in got]
    assert sorted(ids) == sorted(p * 1000 + i for p in range(4) for i in range(150))
    for p in range(4):  # each producer's records come out in its order
        mine = [i for i in ids if i // 1000 == p]
        assert mine == sorted(mine)
    assert q.depth() == 0 and q.get() is None


"""The crash-safe topic log and channel cursors against real files (no server)."""

from __future__ import annotations

import os
import struct
import time

import pytest

from gnsq_server.nsqd import cursor as cursor_module
from gnsq_server.nsqd import topiclog
from gnsq_server.nsqd.cursor import Cursor
from gnsq_server.nsqd.message import IdFactory, Message
from gnsq_server.nsqd.topiclog import LogFormatError, Retention, TopicLog

IDS = IdFactory(1)


def messages(count: int, prefix: bytes = b"m", size: int = 0) -> list[Message]:
    bodies = [b"%s-%05d" % (prefix, i) + b"x" * size for i in range(count)]
    return IDS.new_messages(bodies)


@pytest.fixture
def open_log(tmp_path):
    """Opens TopicLogs in tmp_path (small segments by default); closes them after."""
    opened: list[TopicLog] = []

    def factory(max_bytes: int = 4096, retention: Retention | None = None, name="t") -> TopicLog:
        log = TopicLog(name, str(tmp_path), max_bytes, 1 << 20, 10_000, retention or Retention())
        opened.append(log)
        return log

    yield factory
    for log in opened:
        for cur in list(log.cursors.values()):
            cur.close()
        log.close()


def read_all(cur: Cursor) -> list[Message]:
    got = []
    while (msg := cur.read()) is not None:
        got.append(msg)
    return got


def bodies(msgs: list[Message]) -> list[bytes]:
    return [msg.body for msg in msgs]


def test_append_release_read_across_segments_and_restart(open_log, tmp_path):
    log = open_log()
    sent = messages(300, size=20)
    for start in range(0, 300, 7):
        log.append(sent[start : start + 7])
    assert log.end == 300 and len(log._segments) > 3
    cur = Cursor(log, "ch", persist=True, start=0)
    assert cur.read() is None, "nothing is visible before the topic releases it"
    assert log.release() == 300
    got = read_all(cur)
    assert bodies(got) == bodies(sent)
    assert [msg.token for msg in got] == list(range(300))
    assert [msg.id for msg in got] == [msg.id for msg in sent]
    log.close()
    cur.close()

    again = open_log()
    assert (again.end, again.fanout) == (300, 300)
    fresh = Cursor(again, "other", persist=True, start=0)
    again.release()
    assert bodies(read_all(fresh)) == bodies(sent), "read from disk, not the memory tail"


def test_torn_tail_is_cut_and_seqs_continue(open_log, tmp_path):
    log = open_log(max_bytes=1 << 20)
    log.append(messages(10))
    log.close()
    segment = next((tmp_path / "t.gnsq-log").glob("*.seg"))
    with open(segment, "ab") as f:
        f.write(struct.pack(">II", 500, 0) + b"half a record")
    log = open_log(max_bytes=1 << 20)
    assert log.end == 10
    log.append(messages(1, b"after"))
    cur = Cursor(log, "c", persist=False, start=0)
    log.release()
    got = read_all(cur)
    assert [m.token for m in got] == list(range(11)) and got[-1].body == b"after-00000"


def test_cursor_persists_holes_so_a_restart_replays_only_unfinished(open_log):
    log = open_log()
    log.append(messages(100))
    log.release()
    cur = Cursor(log, "ch", persist=True, start=0)
    got = read_all(cur)
    held = {3, 50, 97}
    for msg in got:
        if msg.token not in held:
            cur.ack(msg.token)
    cur.persist()
    # the crash: nothing is closed, a new daemon opens the same files
    log2 = open_log()
    cur2 = Cursor(log2, "ch", persist=True, start=0)
    log2.release()
    assert {msg.token for msg in read_all(cur2)} == held
    log2.append(messages(2, b"new"))
    log2.release()
    assert bodies(read_all(cur2)) == [b"new-00000", b"new-00001"]


def test_delayed_requeue_keeps_its_due_time_across_a_crash(open_log):
    log = open_log()
    log.append(messages(3))
    log.release()
    cur = Cursor(log, "ch", persist=True, start=0)
    first, second, third = read_all(cur)
    cur.ack(first.token)
    cur.defer(second.token, time.monotonic() + 3600)
    cur.persist()
    cur2 = Cursor(open_log(), "ch", persist=True, start=0)
    cur2.log.release()
    again = read_all(cur2)
    assert [m.token for m in again] == [1, 2]
    assert 3500 < again[0].defer <= 3600 and again[1].defer == 0


def test_dpub_due_time_comes_from_the_record(open_log):
    log = open_log()
    msg = messages(1)[0]
    msg.defer = 60.0
    log.append([msg])
    log.close()
    log = open_log()
    cur = Cursor(log, "ch", persist=False, start=0)
    log.release()
    (got,) = read_all(cur)
    assert 58 < got.defer <= 60


def test_a_new_channel_reads_from_the_fanout_and_held_messages_wait(open_log):
    log = open_log()
    log.append(messages(5, b"before"))
    log.release()
    log.append(messages(2, b"held"))  # the topic holds these (e.g. paused)
    late = Cursor(log, "late", persist=True, start=log.fanout)
    assert late.depth() == 0 and log.depth() == 2
    log.release()
    assert bodies(read_all(late)) == [b"held-00000", b"held-00001"]


def test_segments_go_once_every_cursor_passed_them_unless_retained(open_log, tmp_path):
    log = open_log(max_bytes=2048)
    a = Cursor(log, "a", persist=True, start=0)
    b = Cursor(log, "b", persist=True, start=0)
    sent = messages(200, size=30)
    for start in range(0, 200, 10):
        log.append(sent[start : start + 10])
    log.release()
    for msg in read_all(a):
        a.ack(msg.token)
    segments = len(log._segments)
    log.delete_consumed()
    assert len(log._segments) == segments, "b has read nothing yet"
    for msg in read_all(b):
        b.ack(msg.token)
    assert log.retained_bytes() > 0
    log.set_retention(None, 4096)
    log.delete_consumed()
    kept = log._segments[:-1]
    assert 0 < sum(s.size for s in kept) <= 4096
    assert len(log._segments) < segments
    log.set_retention(3600.0, 0)
    log.delete_consumed()
    assert log._segments[:-1] == kept, "young segments stay under a time limit"
    log.delete_consumed(now=time.time() + 7200)
    assert len(log._segments) == 1
    names = os.listdir(tmp_path / "t.gnsq-log")
    assert len([n for n in names if n.endswith(".seg")]) == 1


def test_retention_override_is_persisted(open_log):
    log = open_log()
    log.set_retention(90.0, 12345)
    log.close()
    assert open_log().retention() == Retention(90.0, 12345)


def test_replay_rewinds_to_a_time_and_skips_what_is_still_out(open_log):
    log = open_log(max_bytes=2048)
    cur = Cursor(log, "ch", persist=True, start=0)
    old = messages(50, b"old", size=30)
    for start in range(0, 50, 10):
        log.append(old[start : start + 10])
    log.release()
    for msg in read_all(cur):
        cur.ack(msg.token)
    time.sleep(0.002)
    since = time.time_ns()
    new = messages(40, b"new", size=30)
    for start in range(0, 40, 10):
        log.append(new[start : start + 10])
    log.release()
    got = read_all(cur)
    for msg in got[:30]:
        cur.ack(msg.token)
    assert log.seq_at(since) == 50
    cur.rewind(log.seq_at(since))
    again = read_all(cur)
    assert bodies(again) == bodies(got[:30]), "the 10 still out are not delivered twice"
    for msg in again:
        cur.ack(msg.token)
    cur.rewind(log.seq_at(None))
    assert len(read_all(cur)) == 80


def test_a_newer_format_version_is_refused(open_log, tmp_path):
    log = open_log()
    log.append(messages(1))
    log.close()
    segment = next((tmp_path / "t.gnsq-log").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    struct.pack_into(">I", data, 8, topiclog.VERSION + 1)
    segment.write_bytes(bytes(data))
    with pytest.raises(LogFormatError, match="newer"):
        TopicLog("t", str(tmp_path), 4096, 1 << 20, 100, Retention())


def test_cursor_state_round_trip_and_damage():
    data = cursor_module.encode_state(7, [(9, 12), (20, 21)], [(8, 123)])
    assert cursor_module.decode_state(data) == (7, [(9, 12), (20, 21)], [(8, 123)])
    with pytest.raises(LogFormatError):
        cursor_module.decode_state(data[:-1] + bytes([data[-1] ^ 1]))


def test_failed_append_leaves_the_log_as_it_was(open_log, monkeypatch):
    log = open_log(max_bytes=1 << 20)
    log.append(messages(3))

    def no_space(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(OSError):
        log.append(messages(5))
    monkeypatch.undo()
    assert log.end == 3
    log.append(messages(1, b"ok"))
    cur = Cursor(log, "c", persist=False, start=0)
    log.release()
    assert [m.token for m in read_all(cur)] == [0, 1, 2, 3]


def test_a_damaged_record_skips_the_rest_of_its_segment_only(open_log, tmp_path, caplog):
    log = open_log(max_bytes=1024)
    sent = messages(60, size=20)
    for start in range(0, 60, 5):
        log.append(sent[start : start + 5])
    log.close()
    segments = sorted((tmp_path / "t.gnsq-log").glob("*.seg"))
    assert len(segments) >= 3
    second = segments[1]
    base = int(second.name.split(".")[0])
    data = bytearray(second.read_bytes())
    data[24 + 8 + 20] ^= 0xFF  # inside the first record's payload: its crc no longer matches
    second.write_bytes(bytes(data))
    next_base = int(segments[2].name.split(".")[0])

    log = open_log(max_bytes=1024)
    cur = Cursor(log, "c", persist=False, start=0)
    log.release()
    with caplog.at_level("ERROR", logger="gnsq_server.nsqd.topiclog"):
        got = [m.token for m in read_all(cur)]
    assert got == [*range(base), *range(next_base, 60)]
    assert f"seqs {base}..{next_base - 1} skipped" in caplog.text


def test_damaged_cursor_and_state_files_fall_back_to_redelivery(open_log, tmp_path, caplog):
    log = open_log()
    log.append(messages(10))
    log.release()
    cur = Cursor(log, "ch", persist=True, start=0)
    for msg in read_all(cur):
        cur.ack(msg.token)
    cur.close()
    log.close()
    directory = tmp_path / "t.gnsq-log"
    for name in ("ch.cursor", "topic.state"):
        data = bytearray((directory / name).read_bytes())
        data[10] ^= 0xFF
        (directory / name).write_bytes(bytes(data))
    with caplog.at_level("ERROR"):
        log = open_log()
        cur = Cursor(log, "ch", persist=True, start=log.fanout)
    assert "damaged" in caplog.text and "checksum mismatch" in caplog.text
    assert log.depth() == 10, "the topic holds everything back again"
    log.release()
    assert len(read_all(cur)) == 10, "the channel starts over at the oldest record"


def test_a_segment_torn_at_creation_goes_and_seqs_continue(open_log, tmp_path):
    log = open_log(max_bytes=1 << 20)
    log.append(messages(7))
    log.close()
    (tmp_path / "t.gnsq-log" / f"{7:020d}.seg").write_bytes(b"GNSQ")  # the crash: a torn header
    log = open_log(max_bytes=1 << 20)
    assert log.end == 7
    log.append(messages(1, b"next"))
    assert log.end == 8
    assert not (tmp_path / "t.gnsq-log" / f"{7:020d}.seg").exists()
    alone = tmp_path / "alone.gnsq-log"
    alone.mkdir()
    (alone / f"{42:020d}.seg").write_bytes(b"")  # every older segment was consumed and deleted
    assert open_log(name="alone").end == 42, "seqs are never reused"

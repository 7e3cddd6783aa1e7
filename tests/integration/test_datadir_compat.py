"""gnsqd and nsqd 1.3.0 read each other's --data-path.

nsqd -> gnsqd: the data directory real nsqd 1.3.0 wrote (fixtures/nsqd-1.3.0/datadir, described
by datadir-manifest.json) is copied, gnsqd is started on the copy with the fixture's datadir
flags, and every queue is drained with RDY 1 + FIN as the fixture README says: the messages must
be the manifest's, in order, with attempts + 1, and nothing more.

gnsqd -> nsqd: without a real nsqd here, the files gnsqd leaves after a clean stop are read
back by an independent reader written from the format description (PROTOCOL.md 4.3 and 4.7,
go-diskqueue v1.1.0's read rules), not with gnsq_server's own code.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import struct
import time
from pathlib import Path

import pytest

from ..captures import CAPTURES
from ..durable import (
    HAS_HTTP,
    Msg,
    assert_silent,
    channel_stats,
    decode_message,
    http,
    paused_flags,
    publish,
    receive,
    stats,
    stop_cleanly,
    subscribe,
    write_nsqd_dat,
)

FIXTURE = CAPTURES
DATADIR_FLAGS = ("--mem-queue-size=0", "--max-bytes-per-file=4096")
MAX_MSG_SIZE = 1024 * 1024  # nsqd's default --max-msg-size


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((FIXTURE / "datadir-manifest.json").read_text())


@pytest.fixture
def nsqd_datadir(tmp_path) -> Path:
    """A private, writable copy of the read-only fixture data directory."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "datadir", data)
    data.chmod(0o700)
    for path in data.iterdir():
        path.chmod(0o600)
    return data


def expected_messages(manifest: dict, queue: str) -> list[Msg]:
    """What a consumer must see: the stored messages, each with one more attempt."""
    return [
        Msg(m["timestamp"], m["attempts"] + 1, m["id"].encode(), base64.b64decode(m["body"]))
        for m in manifest["queues"][queue]["messages"]
    ]


def drain_exactly(wire, expected: list[Msg]) -> None:
    """RDY 1, FIN each, compare message by message, then make sure nothing else comes."""
    got = receive(wire, len(expected), timeout=5.0)
    for index, (msg, want) in enumerate(zip(got, expected, strict=True)):
        assert msg == want, f"message {index}: got {msg}, want {want}"
    assert_silent(wire, 0.5)


def fixture_flags(manifest: dict) -> dict[str, bool]:
    flags = {}
    for topic in manifest["nsqd_dat"]["topics"]:
        flags[topic["name"]] = topic["paused"]
        for channel in topic["channels"] or []:
            flags[f"{topic['name']}:{channel['name']}"] = channel["paused"]
    return flags


# -- nsqd 1.3.0 -> gnsqd -------------------------------------------------------------------


def test_gnsqd_keeps_nsqd_paused_flags_and_ignores_bad_files(run_gnsqd, nsqd_datadir, manifest):
    server = run_gnsqd(nsqd_datadir, *DATADIR_FLAGS)
    assert paused_flags(nsqd_datadir) == fixture_flags(manifest)
    if HAS_HTTP:
        want = manifest["verification"]["depths_after_restart"]
        for name, expected in want.items():
            if ":" in name:
                got = channel_stats(server, *name.split(":"))
            else:
                got = next(t for t in stats(server)["topics"] if t["topic_name"] == name)
            assert {key: got[key] for key in expected} == expected, name

    # paused channel: nothing; paused topic: only what already reached its channel
    paused_channel = subscribe(server.tcp_port, "alpha", "c2", rdy=1)
    assert_silent(paused_channel, 1.0)
    only = subscribe(server.tcp_port, "beta", "only", rdy=1)
    drain_exactly(only, expected_messages(manifest, "beta:only"))

    for ignored in manifest["ignored_files"]:
        assert (nsqd_datadir / ignored["file"]).stat().st_size == ignored["size"]


def test_gnsqd_drains_every_queue_nsqd_wrote(run_gnsqd, nsqd_datadir, manifest):
    if not HAS_HTTP:
        # No /channel/unpause or /topic/unpause yet: unpause alpha/c2 and topic beta in the
        # copy's nsqd.dat instead. beta's 10 then reach beta:only at start, behind the 10
        # already there, which is the same order the README's drain-then-unpause gives.
        topics = manifest["nsqd_dat"]["topics"]
        for topic in topics:
            topic["paused"] = False
            for channel in topic["channels"] or []:
                channel["paused"] = False
        write_nsqd_dat(nsqd_datadir, topics)
    server = run_gnsqd(nsqd_datadir, *DATADIR_FLAGS)

    c1 = subscribe(server.tcp_port, "alpha", "c1", rdy=1)
    drain_exactly(c1, expected_messages(manifest, "alpha:c1"))

    if HAS_HTTP:
        reply = http(server, "POST", "/channel/unpause?topic=alpha&channel=c2")
        assert reply.status_code == 200, reply.text
    c2 = subscribe(server.tcp_port, "alpha", "c2", rdy=1)
    drain_exactly(c2, expected_messages(manifest, "alpha:c2"))

    only = subscribe(server.tcp_port, "beta", "only", rdy=1)
    if HAS_HTTP:
        drain_exactly(only, expected_messages(manifest, "beta:only"))
        reply = http(server, "POST", "/topic/unpause?topic=beta")
        assert reply.status_code == 200, reply.text
        drain_exactly(only, expected_messages(manifest, "beta"))
    else:
        both = expected_messages(manifest, "beta:only") + expected_messages(manifest, "beta")
        drain_exactly(only, both)

    # the topic holds nothing more: a new channel gets no history
    late = subscribe(server.tcp_port, "alpha", "late", rdy=10)
    assert_silent(late, 0.3)
    if HAS_HTTP:
        for topic in stats(server)["topics"]:
            if topic["topic_name"] == "gamma":
                continue
            assert topic["depth"] == 0, topic["topic_name"]
            for channel in topic["channels"]:
                assert channel["depth"] == 0, (topic["topic_name"], channel["channel_name"])


def test_gnsqd_gives_nsqd_topic_backlog_to_first_channel(run_gnsqd, nsqd_datadir, manifest):
    server = run_gnsqd(nsqd_datadir, *DATADIR_FLAGS)
    gamma = subscribe(server.tcp_port, "gamma", "first", rdy=1)
    drain_exactly(gamma, expected_messages(manifest, "gamma"))
    if HAS_HTTP:
        topic = next(t for t in stats(server)["topics"] if t["topic_name"] == "gamma")
        assert topic["depth"] == 0 and topic["channels"][0]["depth"] == 0


def test_gnsqd_salvages_records_after_unsynced_nsqd_metadata(run_gnsqd, nsqd_datadir, manifest):
    """nsqd crashed after gamma rolled to segment 1 and wrote 48 records there, before it
    synced the metadata again: the meta file still says depth 102, write position (1, 0).

    go-diskqueue v1.1.0 moves writes to segment 2 and reads segment 1 to its real end, so
    nsqd 1.3.0 delivers all 150 (then logs the negative depth at the tail and resets it).
    """
    (nsqd_datadir / "gamma.diskqueue.meta.dat").write_text("102\n0,0\n1,0\n")
    server = run_gnsqd(nsqd_datadir, *DATADIR_FLAGS)
    gamma = subscribe(server.tcp_port, "gamma", "first", rdy=1)
    expected = expected_messages(manifest, "gamma")
    got = receive(gamma, 102, timeout=5.0)
    assert got == expected[:102]
    rest = []
    while (msg := gamma.message(1.0)) is not None:
        rest.append(msg)
        gamma.queue(b"FIN " + msg.id)
    gamma.flush()
    assert rest == expected[102:], f"{len(rest)} of the 48 unsynced records were delivered"


# -- gnsqd -> nsqd 1.3.0 -------------------------------------------------------------------

META_RE = re.compile(rb"\A(-?\d+)\n(-?\d+),(-?\d+)\n(-?\d+),(-?\d+)\n\Z")
SEGMENT_RE = re.compile(r"\A(?P<name>.+)\.diskqueue\.(?P<num>\d{6})\.dat\Z")


def nsqd_read_queue(data: Path, name: str) -> tuple[list[tuple[int, int, bytes, bytes]], tuple]:
    """Read one disk queue the way go-diskqueue v1.1.0 does when nsqd starts.

    Returns the records a reader gets next as (timestamp, attempts, id, body) and the meta tuple.
    The write file must end exactly at writePos (else nsqd would move writes on), every
    segment before readFileNum must be gone, and the depth must equal the record count.
    """
    raw = (data / f"{name}.diskqueue.meta.dat").read_bytes()
    match = META_RE.match(raw)
    assert match, f"{name}: meta file {raw!r} is not '%d\\n%d,%d\\n%d,%d\\n'"
    depth, read_num, read_pos, write_num, write_pos = (int(g) for g in match.groups())
    assert 0 <= read_num <= write_num and depth >= 0, raw

    def segment(num: int) -> Path:
        return data / f"{name}.diskqueue.{num:06d}.dat"

    for path in data.glob(f"{name}.diskqueue.*.dat"):
        found = SEGMENT_RE.match(path.name)
        if found and found["name"] == name:
            assert read_num <= int(found["num"]) <= write_num, f"stale segment {path.name}"
    write_file = segment(write_num)
    if write_file.exists():
        assert write_file.stat().st_size == write_pos, f"{name}: write file size != writePos"
    else:
        assert write_pos == 0, f"{name}: writePos {write_pos} but no {write_file.name}"

    records = []
    num, pos = read_num, read_pos
    while (num, pos) < (write_num, write_pos):
        path = segment(num)
        blob = path.read_bytes()
        end = len(blob) if num < write_num else write_pos
        assert pos <= end, f"{path.name}: read position {pos} beyond {end}"
        while pos < end:
            (size,) = struct.unpack_from(">i", blob, pos)
            assert 26 <= size <= MAX_MSG_SIZE + 26, f"{path.name}@{pos}: bad length {size}"
            payload = blob[pos + 4 : pos + 4 + size]
            assert len(payload) == size, f"{path.name}@{pos}: short record"
            timestamp, attempts = struct.unpack_from(">qH", payload)
            records.append((timestamp, attempts, payload[10:26], payload[26:]))
            pos += 4 + size
        if num < write_num:
            num, pos = num + 1, 0
    assert len(records) == depth, f"{name}: depth {depth} but {len(records)} records to read"
    return records, (depth, read_num, read_pos, write_num, write_pos)


NODE_ID = 302
TWEPOCH_MS = 1288834974288


def check_id(msg_id: bytes, timestamp_ns: int) -> None:
    assert re.fullmatch(rb"[0-9a-f]{16}", msg_id), msg_id
    value = int(msg_id, 16)
    assert (value >> 12) & 0x3FF == NODE_ID
    assert abs(((value >> 22) + TWEPOCH_MS) - (timestamp_ns >> 20)) <= 1000  # same second


def test_files_gnsqd_writes_are_what_nsqd_reads(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # topic rev: channel a consumes, channel b is paused; topic idle has no channel
    write_nsqd_dat(
        data,
        [
            {
                "name": "rev",
                "paused": False,
                "channels": [{"name": "a", "paused": False}, {"name": "b", "paused": True}],
            }
        ],
    )
    began = time.time_ns()
    server = run_gnsqd(data, *DATADIR_FLAGS, f"--node-id={NODE_ID}")
    pattern = bytes(97 + i % 26 for i in range(1024))
    specials = [b"x", bytes(range(256)), pattern, "žluť\r\n".encode()]
    published = [b"rev-%04d" % i for i in range(246)] + specials
    publish(server.tcp_port, "rev", published[:100], batch=1)  # PUB-sized batches
    publish(server.tcp_port, "rev", published[100:], batch=30)
    publish(server.tcp_port, "idle", [b"idle-%02d" % i for i in range(30)], batch=7)
    consumer = subscribe(server.tcp_port, "rev", "a", rdy=1)
    finished = receive(consumer, 120)
    assert [m.body for m in finished] == published[:120]
    (left_in_flight,) = receive(consumer, 1, fin=False)
    assert left_in_flight.body == published[120]
    stop_cleanly(server)
    ended = time.time_ns()

    allowed = re.compile(r"\A(nsqd\.dat|.+\.diskqueue\.(meta|\d{6})\.dat)\Z")
    names = sorted(path.name for path in data.iterdir())
    assert all(allowed.match(name) for name in names), names
    for path in data.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name

    document = json.loads(
        (data / "nsqd.dat").read_bytes(), object_pairs_hook=lambda pairs: [k for k, _ in pairs]
    )
    assert document == ["topics", "version"]  # nsqd's key order
    meta = json.loads((data / "nsqd.dat").read_bytes())
    assert meta["version"] == "1.3.0"
    topics = {t["name"]: t for t in meta["topics"]}
    assert set(topics) == {"rev", "idle"}
    assert list(topics["rev"]) == ["name", "paused", "channels"]
    assert topics["rev"]["channels"] == [
        {"name": "a", "paused": False},
        {"name": "b", "paused": True},
    ]
    assert topics["idle"]["paused"] is False and not topics["idle"]["channels"]

    queues = {name: nsqd_read_queue(data, name)[0] for name in ("rev", "rev:a", "rev:b", "idle")}
    assert queues["rev"] == []
    b = queues["rev:b"]
    assert [body for *_, body in b] == published
    assert {attempts for _, attempts, _, _ in b} == {0}
    ids = [msg_id for _, _, msg_id, _ in b]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for timestamp, _, msg_id, _ in b:
        assert began <= timestamp <= ended
        check_id(msg_id, timestamp)
    # channel a: the rest, then the message that was in flight, with its one attempt
    a = queues["rev:a"]
    assert a == b[121:] + [b[120][:1] + (1,) + b[120][2:]]
    assert (left_in_flight.id, left_in_flight.timestamp) == (b[120][2], b[120][0])
    idle = queues["idle"]
    assert sorted(body for *_, body in idle) == [b"idle-%02d" % i for i in range(30)]
    assert {attempts for _, attempts, _, _ in idle} == {0}

    # segments roll at --max-bytes-per-file like nsqd's: no file grows past 4096 bytes
    # unless a single record is bigger
    for path in data.glob("*.diskqueue.0*.dat"):
        assert path.stat().st_size <= 4096, path.name
    # what channel a had read and finished is gone from disk, as in nsqd
    assert not (data / "rev:a.diskqueue.000000.dat").exists()


def test_decode_message_matches_manifest(manifest):
    """The test's own reader agrees with the fixture's decoded records (reader self-check)."""
    blob = (FIXTURE / "datadir" / "alpha:c1.diskqueue.000001.dat").read_bytes()
    first = manifest["queues"]["alpha:c1"]["messages"][0]
    offset = first["offset"]
    (size,) = struct.unpack_from(">i", blob, offset)
    msg = decode_message(blob[offset + 4 : offset + 4 + size])
    assert (msg.id.decode(), msg.timestamp, msg.attempts) == (
        first["id"],
        first["timestamp"],
        first["attempts"],
    )
    records, meta = nsqd_read_queue(FIXTURE / "datadir", "alpha:c1")
    assert meta == (90, 1, 800, 2, 1689)
    assert [(r[2].decode(), r[3]) for r in records] == [
        (m["id"], base64.b64decode(m["body"])) for m in manifest["queues"]["alpha:c1"]["messages"]
    ]

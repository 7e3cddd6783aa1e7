"""Durability of real gnsqd processes: what a clean stop writes to --data-path comes back.

Every test runs the `gnsqd` console script on 127.0.0.1:0 with a tmp data path and talks to
it over raw V2 sockets. Expected behaviour is nsqd 1.3.0's (PROTOCOL.md 4.3, 4.4, 4.7), plus
gnsqd's own promises: deferred messages keep their due time across a clean restart, a failed
disk write fails the publish (E_PUB_FAILED) and makes health NOK until a publish succeeds.

Until gnsq_server/nsqd/http.py exists the daemons run without HTTP and the checks that need
/stats, /ping or /channel/pause fall back to nsqd.dat (pausing is seeded into nsqd.dat before
the first start, unpausing is done by editing it across a restart).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ..durable import (
    HAS_HTTP,
    FullDisk,
    ServerError,
    Wire,
    assert_silent,
    bodies,
    channel_stats,
    decode_message,
    dpub,
    drain,
    http,
    mpub_body,
    paused_flags,
    publish,
    receive,
    stats,
    stop_cleanly,
    subscribe,
    write_nsqd_dat,
)
from ..servers import BIN

# -- shutdown and restart ------------------------------------------------------------------


def test_20000_messages_with_some_in_flight_survive_sigterm(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = run_gnsqd(data, "--mem-queue-size=100")
    consumer = subscribe(server.tcp_port, "durable", "ch")
    expected = bodies("durable", 20_000)
    publish(server.tcp_port, "durable", expected)
    consumer.command(b"RDY 50")
    in_flight = receive(consumer, 50, fin=False)
    assert all(msg.attempts == 1 for msg in in_flight)
    if HAS_HTTP:
        channel = channel_stats(server, "durable", "ch")
        assert (channel["depth"], channel["in_flight_count"]) == (19_950, 50)

    stop_cleanly(server)
    consumer.close()
    assert any(data.glob("durable:ch.diskqueue.*.dat"))

    server = run_gnsqd(data, "--mem-queue-size=100")
    if HAS_HTTP:
        assert channel_stats(server, "durable", "ch")["depth"] == 20_000
    consumer = subscribe(server.tcp_port, "durable", "ch", rdy=1000)
    got = receive(consumer, 20_000)
    assert_silent(consumer, 0.5)

    delivered = [msg.body for msg in got]
    assert len(set(delivered)) == 20_000, "a message was delivered twice"
    assert set(delivered) == set(expected)
    was_in_flight = {msg.id for msg in in_flight}
    attempts = {msg.id: msg.attempts for msg in got}
    assert {attempts[msg_id] for msg_id in was_in_flight} == {2}
    assert {n for msg_id, n in attempts.items() if msg_id not in was_in_flight} == {1}
    # ids and timestamps are the original ones, not new ones
    assert {(m.id, m.timestamp) for m in in_flight} <= {(m.id, m.timestamp) for m in got}
    consumer.close()
    stop_cleanly(server)
    meta = (data / "durable:ch.diskqueue.meta.dat").read_text()
    assert meta.startswith("0\n"), meta


def test_topic_without_channel_keeps_its_messages(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = run_gnsqd(data, "--mem-queue-size=10")
    expected = bodies("held", 50)
    publish(server.tcp_port, "held", expected, batch=7)
    stop_cleanly(server)
    assert paused_flags(data) == {"held": False}
    assert (data / "held.diskqueue.meta.dat").read_text().startswith("50\n")

    server = run_gnsqd(data, "--mem-queue-size=10")
    if HAS_HTTP:
        topic = stats(server)["topics"][0]
        assert (topic["topic_name"], topic["depth"]) == ("held", 50)
    consumer = subscribe(server.tcp_port, "held", "late", rdy=100)
    got = receive(consumer, 50)
    assert_silent(consumer, 0.5)
    assert sorted(msg.body for msg in got) == expected
    assert {msg.attempts for msg in got} == {1}


def test_paused_topic_and_channel_flags_survive_restart(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    if not HAS_HTTP:
        # no /topic/pause yet: start from an nsqd.dat that has the flags, as nsqd would leave it
        write_nsqd_dat(
            data,
            [
                {"name": "ptopic", "paused": True, "channels": [{"name": "c", "paused": False}]},
                {"name": "pchan", "paused": False, "channels": [{"name": "c", "paused": True}]},
            ],
        )
    server = run_gnsqd(data)
    topic_consumer = subscribe(server.tcp_port, "ptopic", "c", rdy=10)
    channel_consumer = subscribe(server.tcp_port, "pchan", "c", rdy=10)
    if HAS_HTTP:
        assert http(server, "POST", "/topic/pause?topic=ptopic").status_code == 200
        assert http(server, "POST", "/channel/pause?topic=pchan&channel=c").status_code == 200
    publish(server.tcp_port, "ptopic", bodies("ptopic", 5))
    publish(server.tcp_port, "pchan", bodies("pchan", 5))
    assert_silent(topic_consumer, 0.5)
    assert_silent(channel_consumer, 0.1)
    flags = {"ptopic": True, "ptopic:c": False, "pchan": False, "pchan:c": True}
    time.sleep(0.3)  # nsqd.dat is rewritten asynchronously after changes
    assert paused_flags(data) == flags
    stop_cleanly(server)
    assert paused_flags(data) == flags

    server = run_gnsqd(data)
    assert paused_flags(data) == flags  # rewritten at start, flags kept
    if HAS_HTTP:
        topics = {t["topic_name"]: t for t in stats(server)["topics"]}
        assert topics["ptopic"]["paused"] is True
        assert topics["ptopic"]["depth"] == 5
        assert topics["pchan"]["paused"] is False
        assert topics["pchan"]["channels"][0]["paused"] is True
        assert topics["pchan"]["channels"][0]["depth"] == 5
    topic_consumer = subscribe(server.tcp_port, "ptopic", "c", rdy=10)
    channel_consumer = subscribe(server.tcp_port, "pchan", "c", rdy=10)
    assert_silent(topic_consumer, 1.0)
    assert_silent(channel_consumer, 0.1)

    if HAS_HTTP:
        assert http(server, "POST", "/topic/unpause?topic=ptopic").status_code == 200
        assert http(server, "POST", "/channel/unpause?topic=pchan&channel=c").status_code == 200
    else:
        topic_consumer.close()
        channel_consumer.close()
        stop_cleanly(server)
        write_nsqd_dat(
            data,
            [
                {"name": "ptopic", "paused": False, "channels": [{"name": "c", "paused": False}]},
                {"name": "pchan", "paused": False, "channels": [{"name": "c", "paused": False}]},
            ],
        )
        server = run_gnsqd(data)
        topic_consumer = subscribe(server.tcp_port, "ptopic", "c", rdy=10)
        channel_consumer = subscribe(server.tcp_port, "pchan", "c", rdy=10)
    assert [m.body for m in receive(topic_consumer, 5)] == bodies("ptopic", 5)
    assert [m.body for m in receive(channel_consumer, 5)] == bodies("pchan", 5)
    assert_silent(topic_consumer, 0.3)


# -- deferred messages ---------------------------------------------------------------------


def test_deferred_messages_stay_deferred_across_restarts(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = run_gnsqd(data)
    idle = subscribe(server.tcp_port, "later", "ch")  # the channel must exist to defer
    expected = bodies("later", 100)
    dpub(server.tcp_port, "later", 3_600_000, expected)
    stop_cleanly(server)
    idle.close()
    assert (data / "later:ch.gnsq-deferred.dat").exists()
    assert not any(data.glob("later:ch.diskqueue.0*.dat")), "deferred messages went to the queue"
    assert (data / "later:ch.diskqueue.meta.dat").read_text().startswith("0\n")

    for _restart in range(2):  # the second restart rewrites what the first one loaded
        server = run_gnsqd(data)
        if HAS_HTTP:
            channel = channel_stats(server, "later", "ch")
            assert (channel["deferred_count"], channel["depth"]) == (100, 0)
        consumer = subscribe(server.tcp_port, "later", "ch", rdy=100)
        assert_silent(consumer, 2.0)
        consumer.close()
        stop_cleanly(server)
    assert (data / "later:ch.gnsq-deferred.dat").exists()


def test_deferred_message_keeps_its_due_time_across_restart(run_gnsqd, tmp_path):
    """DPUB 3 s, stop 1 s later: gnsqd saves the due time, so the message arrives 3 s after
    the DPUB, about 2 s after the restart (nsqd would deliver it at once; a restarted delay
    would make it a full 3 s after the restart)."""
    data = tmp_path / "data"
    server = run_gnsqd(data)
    idle = subscribe(server.tcp_port, "soon", "ch")
    published = time.time()
    dpub(server.tcp_port, "soon", 3000, [b"due-in-3s"])
    time.sleep(1.0 - (time.time() - published))
    stop_cleanly(server)
    idle.close()
    server = run_gnsqd(data)
    restarted = time.time()
    consumer = subscribe(server.tcp_port, "soon", "ch", rdy=1)
    msg = consumer.message(timeout=6.0)
    arrived = time.time()
    assert msg is not None and msg.body == b"due-in-3s"
    assert msg.attempts == 1
    assert arrived - published >= 2.9, f"delivered {arrived - published:.2f}s after DPUB"
    assert arrived - published <= 3.6, f"delivered {arrived - published:.2f}s after DPUB"
    if restarted - published < 2.3:  # otherwise the restart itself took most of the delay
        assert arrived - restarted >= 0.5, "delivered at once after the restart"
    assert_silent(consumer, 0.3)


# -- ephemeral -----------------------------------------------------------------------------


def test_ephemeral_messages_do_not_survive_and_leave_no_files(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = run_gnsqd(data, "--mem-queue-size=10")
    eph_topic = subscribe(server.tcp_port, "eph#ephemeral", "c#ephemeral")
    eph_channel = subscribe(server.tcp_port, "solid", "c#ephemeral")
    publish(server.tcp_port, "eph#ephemeral", bodies("eph", 30))
    publish(server.tcp_port, "solid", bodies("solid", 30))
    dpub(server.tcp_port, "solid", 3_600_000, [b"solid-deferred"])
    eph_channel.command(b"RDY 3")
    assert len(receive(eph_channel, 3, fin=False)) == 3  # in flight at shutdown
    stop_cleanly(server)
    eph_topic.close()
    eph_channel.close()

    names = sorted(path.name for path in data.iterdir())
    assert not [name for name in names if "ephemeral" in name], names
    assert paused_flags(data) == {"solid": False}

    server = run_gnsqd(data, "--mem-queue-size=10")
    eph_topic = subscribe(server.tcp_port, "eph#ephemeral", "c#ephemeral", rdy=100)
    eph_channel = subscribe(server.tcp_port, "solid", "c#ephemeral", rdy=100)
    assert_silent(eph_topic, 1.0)
    assert_silent(eph_channel, 0.1)
    stop_cleanly(server)
    assert not [p.name for p in data.iterdir() if "ephemeral" in p.name]


# -- damage and failures -------------------------------------------------------------------


def _records(path: Path) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record in a segment file."""
    data, offset, out = path.read_bytes(), 0, []
    while offset < len(data):
        (size,) = struct.unpack_from(">i", data, offset)
        out.append((offset, data[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return out


def test_corrupt_segment_is_renamed_bad_and_later_segments_still_delivered(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    # a short --sync-timeout puts everything on disk before the stop, so this test does not
    # depend on what a SIGTERM writes
    flags = ("--mem-queue-size=0", "--max-bytes-per-file=4096", "--sync-timeout=100ms")
    server = run_gnsqd(data, *flags)
    subscribe(server.tcp_port, "dmg", "ch").close()
    publish(server.tcp_port, "dmg", bodies("dmg", 300), batch=50)
    time.sleep(0.5)
    stop_cleanly(server)

    segments = sorted(data.glob("dmg:ch.diskqueue.0*.dat"))
    assert len(segments) >= 3, segments
    per_segment = [[decode_message(p).body for _, p in _records(seg)] for seg in segments]
    assert sum(per_segment, []) == bodies("dmg", 300)
    # corrupt the length of a record in the middle of the second segment
    damaged = segments[1]
    records = _records(damaged)
    middle = len(records) // 2
    with open(damaged, "r+b") as f:
        f.seek(records[middle][0])
        f.write(struct.pack(">i", 0x7FFF0000))
    expected = per_segment[0] + per_segment[1][:middle] + sum(per_segment[2:], [])

    server = run_gnsqd(data, *flags)
    consumer = subscribe(server.tcp_port, "dmg", "ch", rdy=100)
    got = drain(consumer, quiet=1.5)
    assert [m.body for m in got] == expected
    assert Path(f"{damaged}.bad").exists()
    assert not damaged.exists()
    log = server.log_text().splitlines()
    errors = [line for line in log if "invalid message read size" in line]
    assert errors and "ERROR" in errors[0], log[-30:]

    # still serving: new messages go through, to this and to a new topic
    publish(server.tcp_port, "dmg", [b"after-damage"])
    assert [m.body for m in receive(consumer, 1)] == [b"after-damage"]
    other = subscribe(server.tcp_port, "fresh", "ch", rdy=1)
    publish(server.tcp_port, "fresh", [b"fresh"])
    assert [m.body for m in receive(other, 1)] == [b"fresh"]
    stop_cleanly(server)


def test_second_gnsqd_on_same_data_path_exits_and_first_keeps_serving(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    first = run_gnsqd(data)
    consumer = subscribe(first.tcp_port, "locked", "ch", rdy=10)
    second = subprocess.run(
        [
            str(BIN / "gnsqd"),
            "--tcp-address=127.0.0.1:0",
            "--http-address=",
            f"--data-path={data}",
        ],
        capture_output=True,
        timeout=30,
    )
    output = (second.stdout + second.stderr).decode(errors="replace")
    assert second.returncode != 0, output
    assert "failed to lock data-path" in output, output
    assert first.proc.poll() is None
    publish(first.tcp_port, "locked", [b"still-here"])
    assert [m.body for m in receive(consumer, 1)] == [b"still-here"]
    consumer.close()
    stop_cleanly(first)


# -- full disk -----------------------------------------------------------------------------


@pytest.fixture(params=["tmpfs", "rlimit"])
def full_disk(request, tmp_path):
    disk = FullDisk(request.param, tmp_path / "disk")
    try:
        disk.setup()
        yield disk
    finally:
        disk.teardown()


def test_full_disk_fails_publishes_then_recovers(run_gnsqd, full_disk):
    server = run_gnsqd(full_disk.data, "--mem-queue-size=0", wrapper=full_disk.wrapper)
    consumer = subscribe(server.tcp_port, "full", "ch")
    body = b"x" * 1000
    accepted: list[bytes] = []
    error = None
    wire = Wire(server.tcp_port)
    for i in range(2000):
        msg = b"%05d-" % i + body
        wire.command(b"PUB full", msg)
        try:
            assert wire.response() == b"OK"
        except ServerError as err:
            error = str(err)
            break
        accepted.append(msg)
    assert error is not None, "2 MB were accepted on a disk that holds far less"
    assert error.startswith("E_PUB_FAILED PUB failed"), error
    assert wire.is_closed(), "E_PUB_FAILED is fatal in nsqd: the connection must close"
    wire.close()
    assert server.proc.poll() is None, "gnsqd died on a full disk"
    assert accepted, "not a single publish fitted"

    # MPUB fails the same way, and health says why
    wire = Wire(server.tcp_port)
    wire.command(b"MPUB full", mpub_body([body] * 70))
    with pytest.raises(ServerError, match=r"^E_MPUB_FAILED MPUB failed"):
        wire.response()
    wire.close()
    if HAS_HTTP:
        ping = http(server, "GET", "/ping")
        assert ping.status_code == 500 and ping.text.startswith("NOK - "), ping.text
        assert stats(server)["health"].startswith("NOK - ")

    # what made it to disk is still consumed by another client
    consumer.command(b"RDY 5")
    first = receive(consumer, 5)
    assert [m.body for m in first] == accepted[:5]
    consumer.command(b"RDY 0")
    time.sleep(0.2)
    assert server.proc.poll() is None

    full_disk.free(server)
    publish(server.tcp_port, "full", [b"after-space-came-back"])
    accepted.append(b"after-space-came-back")
    if HAS_HTTP:
        assert http(server, "GET", "/ping").text == "OK"
        assert stats(server)["health"] == "OK"
    consumer.command(b"RDY 100")
    rest = drain(consumer, quiet=1.5)
    delivered = [m.body for m in first + rest]
    assert delivered == accepted, "publishes that got OK must be delivered once, failed ones never"
    consumer.close()
    stop_cleanly(server)
    log = server.log_text()
    assert "No space left on device" in log or "File too large" in log, log[-3000:]


def test_sigint_is_a_clean_stop_too(run_gnsqd, tmp_path):
    data = tmp_path / "data"
    server = run_gnsqd(data, "--mem-queue-size=1000")
    publish(server.tcp_port, "intr", bodies("intr", 20))
    server.signal(signal.SIGINT)
    assert server.wait(10) == 0
    server = run_gnsqd(data)
    consumer = subscribe(server.tcp_port, "intr", "ch", rdy=50)
    assert sorted(m.body for m in receive(consumer, 20)) == bodies("intr", 20)
    consumer.close()
    stop_cleanly(server)
    assert not [name for name in os.listdir(data) if name.endswith(".tmp")]


def test_failed_mpub_leaves_none_of_its_messages(run_gnsqd, tmp_path):
    disk = FullDisk("tmpfs", tmp_path / "disk")
    try:
        disk.setup()
        (disk.root / "filler").write_bytes(b"\0" * (512 - 100) * 1024)  # ~100 KiB free
        server = run_gnsqd(disk.data, "--mem-queue-size=0")
        consumer = subscribe(server.tcp_port, "atomic", "ch")
        batch = [b"%04d-" % i + b"y" * 1000 for i in range(150)]  # ~150 KiB: cannot fit
        wire = Wire(server.tcp_port)
        wire.command(b"MPUB atomic", mpub_body(batch))
        with pytest.raises(ServerError, match=r"^E_MPUB_FAILED MPUB failed"):
            wire.response()
        disk.free(server)
        publish(server.tcp_port, "atomic", [b"after"])
        consumer.command(b"RDY 200")
        delivered = [m.body for m in drain(consumer, quiet=1.0)]
        assert delivered == [b"after"], f"{len(delivered) - 1} messages of the failed MPUB"
        stop_cleanly(server)
    finally:
        disk.teardown()

"""Crash-safe mode's topic log against real gnsqd processes: persisted acknowledgements,
one write whatever the number of channels, replay and retention over HTTP."""

from __future__ import annotations

import signal
import time

import pytest

from .test_durability import (
    drain,
    gnsqd_processes,
    publish,
    receive,
    stop_cleanly,
    subscribe,
)


@pytest.fixture
def run_gnsqd():
    with gnsqd_processes() as start:
        yield start


def bodies(prefix: str, count: int) -> list[bytes]:
    return [b"%s-%05d" % (prefix.encode(), i) for i in range(count)]


def crash_safe(run_gnsqd, data, *flags: str):
    return run_gnsqd(data, "--crash-safe", *flags)


def kill_9(server) -> None:
    server.signal(signal.SIGKILL)
    server.wait()


def test_kill_9_with_held_messages_redelivers_only_unfinished(run_gnsqd, tmp_path):
    """A consumer holds 10 messages and finishes 1,990 others; the FINs are older than
    --sync-timeout at the kill. After the restart the 10 come back, and at most 5% of the
    finished ones (the old design re-delivered everything after the oldest held one)."""
    data = tmp_path / "data"
    server = crash_safe(run_gnsqd, data, "--sync-timeout=300ms")
    consumer = subscribe(server.tcp_port, "hold", "worker")
    idle = subscribe(server.tcp_port, "hold", "idle")
    sent = bodies("hold", 2000)
    publish(server.tcp_port, "hold", sent, batch=100)
    consumer.command(b"RDY 100")
    held, finished = [], []
    while len(held) + len(finished) < 2000:
        msg = consumer.message()
        assert msg is not None, f"{len(held) + len(finished)} of 2000 arrived"
        if len(held) < 10 and msg.body.endswith((b"0", b"7")):
            held.append(msg)
        else:
            finished.append(msg)
            consumer.queue(b"FIN " + msg.id)
    consumer.flush()
    time.sleep(1.0)  # the FINs are now older than --sync-timeout
    kill_9(server)
    consumer.close()
    idle.close()

    server = crash_safe(run_gnsqd, data, "--sync-timeout=300ms")
    again = drain(subscribe(server.tcp_port, "hold", "worker", rdy=200), quiet=1.5)
    again_bodies = {msg.body for msg in again}
    assert {msg.body for msg in held} <= again_bodies, "a held message was lost"
    redelivered = again_bodies & {msg.body for msg in finished}
    assert len(redelivered) <= 0.05 * len(finished), f"{len(redelivered)} finished came back"
    idle_got = drain(subscribe(server.tcp_port, "hold", "idle", rdy=500), quiet=1.5)
    assert {msg.body for msg in idle_got} == set(sent), "the idle channel lost messages"
    stop_cleanly(server)


def _bytes_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"])


def _written_per_message(run_gnsqd, data, channels: int, count: int) -> float:
    server = crash_safe(run_gnsqd, data, "--sync-timeout=200ms")
    consumers = [subscribe(server.tcp_port, "once", f"ch{i}") for i in range(channels)]
    before = _bytes_written(server.proc.pid)
    payload = [body + b"." * 200 for body in bodies("once", count)]
    publish(server.tcp_port, "once", payload, batch=200)
    for consumer in consumers:
        consumer.command(b"RDY 500")
        receive(consumer, count)
    time.sleep(0.8)  # the FINs are read and the cursors persisted at least once since
    written = _bytes_written(server.proc.pid) - before
    stop_cleanly(server)
    return written / count


def test_three_channels_write_each_message_once(run_gnsqd, tmp_path):
    try:
        open("/proc/self/io").close()
    except OSError:
        pytest.skip("no /proc/<pid>/io here")
    one = _written_per_message(run_gnsqd, tmp_path / "one", 1, 5000)
    three = _written_per_message(run_gnsqd, tmp_path / "three", 3, 5000)
    assert one > 200, f"{one:.0f} bytes per message: is the log written at all?"
    assert three <= 1.2 * one, f"3 channels: {three:.0f} B/msg, 1 channel: {one:.0f} B/msg"

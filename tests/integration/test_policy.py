"""Delivery policies (dead letters, msg_ttl, max_depth) with real gnsqd processes and real
clients: pynsq and gnsq consumers that always requeue, that time out, that are slow."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import gevent
import gnsq
import nsq
import pytest

from ..durable import (
    ServerError,
    Wire,
    bodies,
    channel_stats,
    dpub,
    drain,
    http,
    mpub_body,
    publish,
    receive,
    stop_cleanly,
    subscribe,
)

MODES = {"default": (), "crash-safe": ("--crash-safe",)}


@pytest.fixture(params=list(MODES))
def mode(request) -> tuple[str, ...]:
    return MODES[request.param]


def set_policy(server, topic: str, channel: str, **fields) -> dict:
    http(server, "POST", f"/topic/create?topic={topic}")
    reply = http(server, "POST", "/channel/policy", params={
        "topic": topic, "channel": channel, **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


def policy_stats(server, topic: str, channel: str) -> dict:
    return channel_stats(server, topic, channel)["policy"]


def topic_depth(server, topic: str) -> int:
    reply = http(server, "GET", f"/stats?format=json&topic={topic}").json()
    return reply["topics"][0]["depth"] if reply["topics"] else 0


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


def slow_consumers(
    server, topic: str, channel: str, max_in_flight: int, handler: Callable[..., None]
) -> list[gnsq.Consumer]:
    """Three gnsq consumers of one channel, each calling ``handler`` for every message."""
    address = [f"127.0.0.1:{server.tcp_port}"]
    consumers = [
        gnsq.Consumer(topic, channel, nsqd_tcp_addresses=address, max_in_flight=max_in_flight)
        for _ in range(3)
    ]
    for consumer in consumers:
        consumer.on_message.connect(handler, weak=False)
    return consumers


@contextlib.contextmanager
def running(*consumers: gnsq.Consumer) -> Iterator[None]:
    """Start gnsq consumers; on exit close them and wait (bounded) for them to stop."""
    for consumer in consumers:
        consumer.start(block=False)
    try:
        yield
    finally:
        for consumer in consumers:
            consumer.close()
            consumer.join(timeout=5)


def wait_drained(server, topic: str, channel: str, settle: float) -> None:
    """Until the channel's depth is 0 (30 s at most), then ``settle`` s for what is in flight."""
    deadline = time.monotonic() + 30
    while channel_stats(server, topic, channel)["depth"] and time.monotonic() < deadline:
        gevent.sleep(0.1)
    gevent.sleep(settle)


# -- max_attempts ---------------------------------------------------------------------------


def test_pynsq_consumer_that_always_requeues(run_gnsqd, tmp_path, mode):
    """Each message is seen max_attempts times, then is in the dead-letter topic exactly once."""
    server = run_gnsqd(tmp_path, *mode)
    set_policy(server, "orders", "billing", max_attempts=3)
    sent = bodies("order", 200)
    publish(server.tcp_port, "orders", sent)
    address = f"127.0.0.1:{server.tcp_port}"
    seen: collections.Counter[bytes] = collections.Counter()
    dead: list[nsq.Message] = []

    def always_requeue(message: nsq.Message) -> None:
        seen[message.body] += 1
        message.enable_async()
        message.requeue(backoff=False, time_ms=0)

    def collect(message: nsq.Message) -> bool:
        dead.append(message)
        return True

    async def main() -> None:
        common = {"nsqd_tcp_addresses": [address], "max_tries": 0, "max_in_flight": 50}
        failing = nsq.Reader("orders", "billing", message_handler=always_requeue, **common)
        dlq = nsq.Reader("orders.billing.dlq", "inspect", message_handler=collect, **common)
        deadline = time.monotonic() + 30
        while len(dead) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a duplicate or a fourth delivery would show up now
        failing.close()
        dlq.close()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert sorted(message.body for message in dead) == sent
    assert set(seen.values()) == {3} and sorted(seen) == sent
    state = channel_stats(server, "orders", "billing")
    assert (state["depth"], state["in_flight_count"], state["deferred_count"]) == (0, 0, 0)
    assert state["policy"]["dead_lettered"]["max_attempts"] == len(sent)
    assert state["policy"]["dead_letter_pending"] == 0
    # where each dead letter came from, by the id its consumer saw
    entry = http(server, "GET", "/topic/dead_letters", params={
        "topic": "orders.billing.dlq", "id": dead[0].id.decode()}).json()["dead_letters"][0]
    assert entry["topic"] == "orders" and entry["channel"] == "billing"
    assert (entry["attempts"], entry["reason"]) == (3, "max_attempts")


def test_gnsq_consumers_that_time_out_or_are_slow(run_gnsqd, tmp_path):
    """Timeouts count as failed attempts: a consumer that never answers and one that answers
    after its message timed out both end with every message dead-lettered once."""
    server = run_gnsqd(tmp_path, "--msg-timeout=1s")
    set_policy(server, "jobs", "work", max_attempts=2)
    sent = bodies("job", 20)
    publish(server.tcp_port, "jobs", sent)
    seen: collections.Counter[bytes] = collections.Counter()
    dead: list[bytes] = []
    address = [f"127.0.0.1:{server.tcp_port}"]
    silent = gnsq.Consumer("jobs", "work", nsqd_tcp_addresses=address, max_tries=0,
                           max_in_flight=20)
    slow = gnsq.Consumer("jobs", "work", nsqd_tcp_addresses=address, max_tries=0,
                         max_in_flight=20)
    dlq = gnsq.Consumer("jobs.work.dlq", "inspect", nsqd_tcp_addresses=address, max_tries=0,
                        max_in_flight=50)

    @silent.on_message.connect
    def never_answer(_consumer, message) -> None:
        seen[message.body] = max(seen[message.body], message.attempts)
        message.enable_async()

    @slow.on_message.connect
    def answer_too_late(_consumer, message) -> None:
        seen[message.body] = max(seen[message.body], message.attempts)
        gevent.sleep(1.3)  # past the 1 s timeout: gnsq's FIN then fails (E_FIN_FAILED)

    @dlq.on_message.connect
    def collect(_consumer, message) -> None:
        dead.append(message.body)

    with running(silent, slow, dlq):
        deadline = time.monotonic() + 30
        while len(dead) < len(sent) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        gevent.sleep(1.5)
    assert sorted(dead) == sent
    # a slow gnsq consumer's handler misses messages that timed out in its own buffer, so the
    # handlers see each message at most twice; the server timed out each one exactly twice
    assert max(seen.values()) <= 2
    state = channel_stats(server, "jobs", "work")
    assert state["timeout_count"] == 2 * len(sent)
    assert state["policy"]["dead_lettered"]["max_attempts"] == len(sent)
    assert state["depth"] == state["in_flight_count"] == 0


def test_message_that_succeeds_in_time_is_not_dead_lettered(run_gnsqd, tmp_path):
    server = run_gnsqd(tmp_path)
    set_policy(server, "t", "c", max_attempts=2)
    publish(server.tcp_port, "t", [b"flaky"])
    wire = subscribe(server.tcp_port, "t", "c", rdy=1)
    first = wire.message(5)
    wire.command(b"REQ " + first.id + b" 0")
    second = receive(wire, 1)[0]
    assert (second.body, second.attempts) == (b"flaky", 2)
    time.sleep(0.3)
    assert topic_depth(server, "t.c.dlq") == 0
    assert policy_stats(server, "t", "c")["dead_lettered"]["max_attempts"] == 0


# -- msg_ttl --------------------------------------------------------------------------------


@pytest.mark.parametrize("dead_letter", [False, True], ids=["drop", "dead-letter"])
def test_ttl_under_load_with_several_slow_consumers(run_gnsqd, tmp_path, dead_letter):
    """10,000 messages, three slow gnsq consumers, msg_ttl 1 s: nothing older than the TTL is
    delivered, and delivered + expired adds up to what was published, as /stats says."""
    server = run_gnsqd(tmp_path)
    fields = {"msg_ttl": "1s"}
    if dead_letter:
        fields["dead_letter_topic"] = "expired-events"
    set_policy(server, "events", "slow", **fields)
    sent = bodies("event", 10_000)
    publish(server.tcp_port, "events", sent, batch=500)
    ages: list[float] = []

    def slow_handler(_consumer, message) -> None:
        ages.append(time.time() - message.timestamp / 1e9)
        gevent.sleep(0.002)

    with running(*slow_consumers(server, "events", "slow", 5, slow_handler)):
        wait_drained(server, "events", "slow", settle=0.3)
    wait_until(lambda: policy_stats(server, "events", "slow")["dead_letter_pending"] == 0)
    policy = policy_stats(server, "events", "slow")
    expired = policy["dead_lettered"]["msg_ttl"] + policy["dropped"]["msg_ttl"]
    assert 0 < len(ages) < len(sent) and expired > 0
    assert len(ages) + expired == len(sent)
    assert max(ages) < 1.0 + 0.5  # the TTL, plus the hop and the client's own queue
    if dead_letter:
        assert policy["dead_lettered"]["msg_ttl"] == expired
        wait_until(lambda: topic_depth(server, "expired-events") == expired)
    else:
        assert policy["dropped"]["msg_ttl"] == expired
        assert topic_depth(server, "events.slow.dlq") == 0


def test_deferred_message_expires_when_it_comes_due(run_gnsqd, tmp_path, mode):
    server = run_gnsqd(tmp_path, *mode)
    set_policy(server, "later", "c", msg_ttl=500)
    wire = subscribe(server.tcp_port, "later", "c", rdy=5)
    dpub(server.tcp_port, "later", 800, [b"too late"])
    publish(server.tcp_port, "later", [b"in time"])
    assert [m.body for m in receive(wire, 1)] == [b"in time"]
    assert wire.message(1.5) is None
    state = channel_stats(server, "later", "c")
    assert state["deferred_count"] == 0 and state["policy"]["dropped"]["msg_ttl"] == 1


# -- max_depth ------------------------------------------------------------------------------


def test_max_depth_reject_refuses_whole_batches_on_tcp_and_http(run_gnsqd, tmp_path, mode):
    server = run_gnsqd(tmp_path, *mode)
    set_policy(server, "capped", "c", max_depth=100)
    http(server, "POST", "/channel/create?topic=capped&channel=other")
    publish(server.tcp_port, "capped", bodies("a", 60))
    wire = Wire(server.tcp_port)
    wire.command(b"MPUB capped", mpub_body(bodies("b", 60)))
    with pytest.raises(ServerError, match="E_MPUB_FAILED"):
        wire.response()
    wire = Wire(server.tcp_port)
    wire.command(b"PUB capped", b"one")
    assert wire.response() == b"OK"
    reply = http(server, "POST", "/mpub?topic=capped", data=b"\n".join(bodies("c", 40)))
    assert (reply.status_code, reply.json()) == (503, {"message": "MAX_DEPTH"})
    reply = http(server, "POST", "/pub?topic=capped", data=b"x")
    assert reply.status_code == 200
    # nothing half applied: each channel holds 60 + 1 + 1, and rejected counts the messages
    for name in ("c", "other"):
        assert channel_stats(server, "capped", name)["depth"] == 62
    assert policy_stats(server, "capped", "c")["rejected"] == 100
    # the server kept serving: consume and publish again
    assert len(drain(subscribe(server.tcp_port, "capped", "c", rdy=100), quiet=0.5)) == 62
    assert http(server, "POST", "/mpub?topic=capped", data=b"d\ne").status_code == 200


def test_max_depth_reject_under_load(run_gnsqd, tmp_path):
    """Publishers over HTTP and consumers race: what was accepted is exactly what the
    consumers got, and what was refused is the /stats rejected count."""
    server = run_gnsqd(tmp_path)
    set_policy(server, "load", "c", max_depth=500)
    accepted = refused = 0
    received: list[bytes] = []
    consumers = [subscribe(server.tcp_port, "load", "c", rdy=20) for _ in range(3)]
    sent = bodies("m", 10_000)
    for start in range(0, len(sent), 100):
        reply = http(server, "POST", "/mpub?topic=load", data=b"\n".join(sent[start:start + 100]))
        if reply.status_code == 200:
            accepted += 100
        else:
            assert (reply.status_code, reply.json()) == (503, {"message": "MAX_DEPTH"})
            refused += 100
        if start % 300 == 0:  # the consumers take some now and then
            for wire in consumers:
                received += [m.body for m in receive(wire, 20)]
    for wire in consumers:
        received += [m.body for m in drain(wire, quiet=0.5)]
    assert accepted and refused and accepted + refused == len(sent)
    assert len(received) == len(set(received)) == accepted
    assert policy_stats(server, "load", "c")["rejected"] == refused


@pytest.mark.parametrize("overflow", ["drop_oldest", "dead_letter_oldest"])
def test_max_depth_takes_out_the_oldest(run_gnsqd, tmp_path, mode, overflow):
    server = run_gnsqd(tmp_path, *mode)
    set_policy(server, "feed", "c", max_depth=100, overflow=overflow)
    sent = bodies("f", 1000)
    publish(server.tcp_port, "feed", sent, batch=50)
    state = channel_stats(server, "feed", "c")
    assert state["depth"] == 100
    kept = [m.body for m in drain(subscribe(server.tcp_port, "feed", "c", rdy=200), quiet=0.5)]
    assert kept == sent[-100:]
    policy = state["policy"]
    if overflow == "drop_oldest":
        assert policy["dropped"]["max_depth"] == 900
    else:
        wait_until(lambda: topic_depth(server, "feed.c.dlq") == 900)
        dead = drain(subscribe(server.tcp_port, "feed.c.dlq", "x", rdy=1000), quiet=0.5)
        assert [m.body for m in dead] == sent[:900]
        assert policy_stats(server, "feed", "c")["dead_lettered"]["max_depth"] == 900


@pytest.mark.parametrize("overflow", ["drop_oldest", "dead_letter_oldest"])
def test_max_depth_overflow_under_load(run_gnsqd, tmp_path, overflow):
    """10,000 messages published while three slow gnsq consumers take them: every message is
    either seen once by a consumer or taken out by max_depth, as /stats counts it."""
    server = run_gnsqd(tmp_path)
    set_policy(server, "burst", "c", max_depth=200, overflow=overflow)
    seen: list[bytes] = []

    def slow_handler(_consumer, message) -> None:
        seen.append(message.body)
        gevent.sleep(0.001)

    sent = bodies("b", 10_000)
    with running(*slow_consumers(server, "burst", "c", 10, slow_handler)):
        for start in range(0, len(sent), 250):
            wire = Wire(server.tcp_port)
            wire.command(b"MPUB burst", mpub_body(sent[start:start + 250]))
            assert wire.response() == b"OK"
            wire.close()
            gevent.sleep(0.01)
        wait_drained(server, "burst", "c", settle=0.5)
    wait_until(lambda: policy_stats(server, "burst", "c")["dead_letter_pending"] == 0)
    policy = policy_stats(server, "burst", "c")
    taken = policy["dropped"]["max_depth"] + policy["dead_lettered"]["max_depth"]
    assert len(seen) == len(set(seen)) and taken > 0
    assert len(seen) + taken == len(sent)
    if overflow == "dead_letter_oldest":
        assert topic_depth(server, "burst.c.dlq") == taken


def test_dead_letters_wait_while_the_dead_letter_topic_refuses_them(run_gnsqd, tmp_path):
    server = run_gnsqd(tmp_path)
    set_policy(server, "hq", "c", max_attempts=1)
    set_policy(server, "hq.c.dlq", "x", max_depth=2)
    publish(server.tcp_port, "hq", bodies("h", 5))
    wire = subscribe(server.tcp_port, "hq", "c", rdy=5)
    for msg in receive(wire, 5, fin=False):
        wire.command(b"REQ " + msg.id + b" 0")

    def held() -> tuple[int, int]:
        policy = policy_stats(server, "hq", "c")
        return policy["dead_letter_pending"], policy["dead_lettered"]["max_attempts"]

    def all_requeued_some_held() -> bool:
        pending, done = held()
        return pending + done == 5 and pending > 0

    wait_until(all_requeued_some_held)
    time.sleep(0.6)  # a retry round: still held, nothing lost, nothing past the limit
    pending, done = held()
    assert pending + done == 5 and done <= 2
    assert channel_stats(server, "hq.c.dlq", "x")["depth"] == done
    assert channel_stats(server, "hq", "c")["depth"] == 0
    set_policy(server, "hq.c.dlq", "x", max_depth=0)  # room again: they go through
    wait_until(lambda: held() == (0, 5))
    dead = drain(subscribe(server.tcp_port, "hq.c.dlq", "x", rdy=10), quiet=0.5)
    assert sorted(m.body for m in dead) == bodies("h", 5)


# -- redrive --------------------------------------------------------------------------------


def test_redrive_moves_dead_letters_back_to_the_source(run_gnsqd, tmp_path, mode):
    server = run_gnsqd(tmp_path, *mode)
    set_policy(server, "src", "c", max_attempts=1)
    http(server, "POST", "/topic/create?topic=src.c.dlq")
    http(server, "POST", "/channel/create?topic=src.c.dlq&channel=held")
    sent = bodies("r", 30)
    publish(server.tcp_port, "src", sent)
    wire = subscribe(server.tcp_port, "src", "c", rdy=30)
    for msg in receive(wire, 30, fin=False):
        wire.command(b"REQ " + msg.id + b" 0")
    wait_until(lambda: channel_stats(server, "src.c.dlq", "held")["depth"] == 30)
    reply = http(server, "POST", "/channel/redrive?topic=src.c.dlq&channel=held")
    assert reply.json() == {"redriven": 30, "topic": "src"}
    assert channel_stats(server, "src.c.dlq", "held")["depth"] == 0
    again = receive(wire, 30)
    assert sorted(m.body for m in again) == sent and {m.attempts for m in again} == {1}


# -- the HTTP API ---------------------------------------------------------------------------


def test_policy_api_errors_and_defaults(run_gnsqd, tmp_path):
    server = run_gnsqd(tmp_path, "--channel-max-attempts=4", "--channel-msg-ttl=1m")
    http(server, "POST", "/topic/create?topic=t")
    cases = [
        ({"max_attempts": "x"}, "INVALID_MAX_ATTEMPTS"),
        ({"max_attempts": "70000"}, "INVALID_MAX_ATTEMPTS"),
        ({"msg_ttl": "soon"}, "INVALID_MSG_TTL"),
        ({"max_depth": "-1"}, "INVALID_MAX_DEPTH"),
        ({"overflow": "spill"}, "INVALID_OVERFLOW"),
        ({"dead_letter_topic": "t"}, "INVALID_DEAD_LETTER_TOPIC"),
        ({"dead_letter_topic": "bad name"}, "INVALID_DEAD_LETTER_TOPIC"),
    ]
    for fields, message in cases:
        reply = http(server, "POST", "/channel/policy", params={
            "topic": "t", "channel": "c", **fields})
        assert (reply.status_code, reply.json()["message"]) == (400, message), fields
    assert http(server, "GET", "/channel/policy?topic=t&channel=nope").status_code == 404
    assert http(server, "POST", "/channel/policy?topic=nope&channel=c").status_code == 404
    # the daemon-wide default, then the channel's own fields over it, then back
    got = http(server, "GET", "/channel/policy?topic=t&channel=c").json()
    assert (got["source"], got["max_attempts"], got["msg_ttl"]) == ("default", 4, 60_000)
    got = set_policy(server, "t", "c", max_attempts=9, dead_letter_topic="t-dead")
    assert (got["source"], got["max_attempts"], got["msg_ttl"]) == ("channel", 9, 60_000)
    assert got["dead_letter_topic"] == "t-dead"
    got = set_policy(server, "t", "c", reset="true")
    assert (got["source"], got["max_attempts"]) == ("default", 4)
    # dead-letter topics take no default: no loop of dead letters of dead letters
    http(server, "POST", "/topic/create?topic=t.c.dlq")
    http(server, "POST", "/channel/create?topic=t.c.dlq&channel=x")
    assert "policy" not in channel_stats(server, "t.c.dlq", "x")
    assert "policy:" in http(server, "GET", "/stats?topic=t").text
    # redrive needs to know where to: unknown for a topic no policy dead-letters into
    http(server, "POST", "/topic/create?topic=lonely")
    http(server, "POST", "/channel/create?topic=lonely&channel=x")
    reply = http(server, "POST", "/channel/redrive?topic=lonely&channel=x")
    assert (reply.status_code, reply.json()["message"]) == (400, "MISSING_ARG_TO")
    assert b"nsq_channel_dead_lettered_total" in http(server, "GET", "/metrics").content


def test_bad_default_flag_exits_2(tmp_path):
    from ..servers import BIN

    proc = subprocess.run(
        [str(BIN / "gnsqd"), "--channel-overflow=spill", f"--data-path={tmp_path}",
         "--tcp-address=127.0.0.1:0", "--http-address=127.0.0.1:0"],
        capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("gnsqd: --channel-overflow: must be one of reject, drop_oldest")


# -- persistence ----------------------------------------------------------------------------


def test_policies_survive_sigterm_and_kill_9(run_gnsqd, tmp_path):
    server = run_gnsqd(tmp_path, "--crash-safe")
    set_policy(server, "keep", "c", max_attempts=2, msg_ttl="90s", max_depth=10,
               overflow="drop_oldest", dead_letter_topic="keep-dead")
    stop_cleanly(server)
    server = run_gnsqd(tmp_path, "--crash-safe")
    wanted = {"max_attempts": 2, "msg_ttl": 90_000, "max_depth": 10,
              "overflow": "drop_oldest", "dead_letter_topic": "keep-dead", "source": "channel"}
    got = http(server, "GET", "/channel/policy?topic=keep&channel=c").json()
    assert {k: got[k] for k in wanted} == wanted
    set_policy(server, "keep", "c", max_attempts=1)
    publish(server.tcp_port, "keep", [b"poison"])
    wire = subscribe(server.tcp_port, "keep", "c", rdy=1)
    wire.command(b"REQ " + wire.message(5).id + b" 0")
    wait_until(lambda: topic_depth(server, "keep-dead") == 1)
    time.sleep(0.3)  # the metadata loop writes the changed policy
    server.signal(signal.SIGKILL)
    server.wait()
    server = run_gnsqd(tmp_path, "--crash-safe")
    assert http(server, "GET", "/channel/policy?topic=keep&channel=c").json()["max_attempts"] == 1
    dead = receive(subscribe(server.tcp_port, "keep-dead", "x", rdy=5), 1)
    assert dead[0].body == b"poison"
    entry = http(server, "GET", "/topic/dead_letters?topic=keep-dead").json()["dead_letters"]
    assert entry and entry[-1]["reason"] == "max_attempts"


@pytest.mark.parametrize("trial", range(2))
def test_crash_safe_dead_lettering_loses_nothing_on_kill_9(run_gnsqd, tmp_path, trial):
    """kill -9 while messages are being dead-lettered: after the restart each one is in the
    dead-letter topic or still in the source channel (a dead letter reaches the disk of its
    topic before its source copy is let go)."""
    server = run_gnsqd(tmp_path, "--crash-safe")
    set_policy(server, "cs", "c", max_attempts=1)
    sent = bodies(f"k{trial}", 600)
    publish(server.tcp_port, "cs", sent, batch=100)
    wire = subscribe(server.tcp_port, "cs", "c", rdy=100)
    stop_after = 150 + 200 * trial
    for count in range(stop_after):
        msg = wire.message(5)
        assert msg is not None, count
        wire.command(b"REQ " + msg.id + b" 0")
    server.signal(signal.SIGKILL)
    server.wait()
    server = run_gnsqd(tmp_path, "--crash-safe")
    survivors = drain(subscribe(server.tcp_port, "cs", "c", rdy=600), quiet=1.0)
    dead = drain(subscribe(server.tcp_port, "cs.c.dlq", "x", rdy=600), quiet=1.0)
    assert {m.body for m in survivors} | {m.body for m in dead} == set(sent)
    assert len(dead) > 0


REFERENCE = os.environ.get("NSQ_REFERENCE_BIN")


@pytest.mark.skipif(not REFERENCE or not os.path.exists(REFERENCE),
                    reason="NSQ_REFERENCE_BIN (nsqd 1.3.0) not set")
def test_data_path_with_policies_round_trips_through_nsqd_1_3_0(run_gnsqd, tmp_path):
    server = run_gnsqd(tmp_path)
    set_policy(server, "rt", "c", max_attempts=3, max_depth=50)
    publish(server.tcp_port, "rt", bodies("x", 5))
    stop_cleanly(server)
    nsqd = subprocess.Popen(
        [REFERENCE, f"--data-path={tmp_path}", "--tcp-address=127.0.0.1:0",
         "--http-address=127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        port = _nsqd_tcp_port(nsqd)
        got = receive(subscribe(port, "rt", "c", rdy=10), 5)
        assert [m.body for m in got] == bodies("x", 5)[:5]
        wire = Wire(port)
        wire.command(b"PUB rt", b"from nsqd")
        assert wire.response() == b"OK"
    finally:
        nsqd.send_signal(signal.SIGTERM)
        code = nsqd.wait(15)
        nsqd.stdout.close()
    assert code == 0
    server = run_gnsqd(tmp_path)
    got = http(server, "GET", "/channel/policy?topic=rt&channel=c").json()
    assert (got["max_attempts"], got["max_depth"], got["source"]) == (3, 50, "channel")
    assert [m.body for m in receive(subscribe(server.tcp_port, "rt", "c", rdy=5), 1)] == [
        b"from nsqd"]


def _nsqd_tcp_port(proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "TCP: listening on" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("nsqd did not start")


def test_unchanged_frame_and_body(run_gnsqd, tmp_path):
    """A dead letter's body is byte-identical and its frame an ordinary NSQ message."""
    server = run_gnsqd(tmp_path)
    set_policy(server, "bin", "c", max_attempts=1)
    body = bytes(range(256)) * 4
    publish(server.tcp_port, "bin", [body])
    wire = subscribe(server.tcp_port, "bin", "c", rdy=1)
    wire.command(b"REQ " + wire.message(5).id + b" 0")
    dead = receive(subscribe(server.tcp_port, "bin.c.dlq", "x", rdy=1), 1)[0]
    assert dead.body == body and dead.attempts == 1

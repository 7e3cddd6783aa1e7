"""A ledger soak (slow): 200,000 messages through 4 channels of one topic on a gnsqd process,
consumed with random FIN, REQ (with and without delay), TOUCH, held-then-touched messages,
ignored messages left to time out, and consumers that disconnect with messages in flight.

The ledger records every delivery and every outcome the server confirmed (a FIN/REQ counts
unless its E_FIN_FAILED/E_REQ_FAILED came back; a sentinel FIN of an unknown ID flushes those
answers before a consumer leaves and at the end). At the end every message was finished
exactly once on every channel, nothing unknown was delivered, and /stats reconciles:
channel message_count = N, requeue_count = confirmed REQs, timeout_count = deliveries - N -
REQs (deliveries = the attempts field of each finishing delivery), and the finish and
requeue counts of every consumer still connected equal its ledger.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections import Counter, deque

import pytest
import requests

from ..hostile import gnsqd, mpub_payload, settle, size, with_body

N = int(os.environ.get("SOAK_MESSAGES", "200000"))
CHANNELS = ["c0", "c1", "c2", "c3"]
CONSUMERS_PER_CHANNEL = 2
RDY = 200
MSG_TIMEOUT_MS = 2000
SENTINEL = b"zzzzzzzzzzzzzzzz"  # 16 bytes, never a message ID: answers E_FIN_FAILED
TIME_LIMIT = 280.0
HEADER = struct.Struct(">ii")
MSG_HEAD = struct.Struct(">qH")


class Consumer:
    """One subscribed connection, driven by the soak's select loop."""

    def __init__(self, port: int, channel: str, number: int) -> None:
        self.channel = channel
        self.number = number
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_port = self.sock.getsockname()[1]
        identify = json.dumps({"msg_timeout": MSG_TIMEOUT_MS}).encode()
        self.sock.sendall(
            b"  V2" + with_body(b"IDENTIFY", identify) + f"SUB soak {channel}\n".encode()
        )
        self.buf = bytearray()
        self.out = bytearray()
        self.handshake = 2  # IDENTIFY OK, SUB OK
        self.fins: dict[bytes, int] = {}  # provisional: id -> attempts of the FIN'ed delivery
        self.fin_ok = 0
        self.req_ok = 0
        self.snapshots: deque[dict] = deque()  # provisional FINs at each sentinel sent
        self.leaving = False
        self.reset = False


class Ledger:
    def __init__(self) -> None:
        self.finished: dict[str, dict[bytes, int]] = {ch: {} for ch in CHANNELS}
        self.double_fin = 0
        self.requeues = Counter()
        self.deliveries = Counter()
        self.actions = Counter()
        self.ids: dict[bytes, bytes] = {}  # body -> message id
        self.unknown: list = []

    def done(self) -> bool:
        return all(len(self.finished[ch]) == N for ch in CHANNELS)


def produce(port: int, errors: list) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(b"  V2")
        reader = sock.makefile("rb")
        for start in range(0, N, 500):
            bodies = [b"%08d" % n for n in range(start, min(N, start + 500))]
            payload = mpub_payload(bodies)
            sock.sendall(b"MPUB soak\n" + size(len(payload)) + payload)
            while True:
                length, frame_type = HEADER.unpack(reader.read(8))
                data = reader.read(length - 4)
                if data != b"_heartbeat_":
                    break
                sock.sendall(b"NOP\n")
            assert (frame_type, data) == (0, b"OK"), data
        reader.close()
        sock.close()
    except BaseException as err:  # reported by the test
        errors.append(err)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ledger_soak(tmp_path):
    rng = random.Random(7)
    ledger = Ledger()
    with gnsqd(tmp_path) as server:
        fds_before, rss_before = server.fds(), server.rss()
        sockets_before = server.sockets()
        base = server.base
        requests.post(f"{base}/topic/create?topic=soak", timeout=5).raise_for_status()
        for ch in CHANNELS:
            requests.post(f"{base}/channel/create?topic=soak&channel={ch}", timeout=5)
        selector = selectors.DefaultSelector()
        consumers: list[Consumer] = []
        numbers = iter(range(1_000_000))

        def open_consumer(channel: str) -> None:
            consumer = Consumer(server.tcp_port, channel, next(numbers))
            consumers.append(consumer)
            selector.register(consumer.sock, selectors.EVENT_READ, consumer)

        for ch in CHANNELS:
            for _ in range(CONSUMERS_PER_CHANNEL):
                open_consumer(ch)
        producer_errors: list = []
        producer = threading.Thread(target=produce, args=(server.tcp_port, producer_errors))
        started = time.monotonic()
        producer.start()
        timers: list = []  # (due, seq, consumer, command)
        seq = iter(range(1 << 62))
        disconnects = 0
        next_disconnect = 40_000
        total_deliveries = 0
        closed_fin_ok = 0

        def confirm(consumer: Consumer) -> None:
            """The FINs sent before this sentinel that did not fail are confirmed."""
            finished = ledger.finished[consumer.channel]
            for msg_id, attempts in consumer.snapshots.popleft().items():
                if consumer.fins.get(msg_id) != attempts:
                    continue  # failed (and maybe FIN'ed again since)
                del consumer.fins[msg_id]
                if msg_id in finished:
                    ledger.double_fin += 1
                finished[msg_id] = attempts

        def handle_error(consumer: Consumer, data: bytes) -> None:
            parts = data.split(b" ")
            if parts[0] == b"E_FIN_FAILED":
                msg_id = parts[2]
                if msg_id == SENTINEL:
                    confirm(consumer)
                    return
                consumer.fins.pop(msg_id)
                consumer.fin_ok -= 1
            elif parts[0] == b"E_REQ_FAILED":
                ledger.requeues[consumer.channel] -= 1
                consumer.req_ok -= 1
            elif parts[0] != b"E_TOUCH_FAILED":
                raise AssertionError(f"unexpected error {data!r}")

        def handle_message(consumer: Consumer, data: bytes) -> None:
            nonlocal total_deliveries
            total_deliveries += 1
            attempts = MSG_HEAD.unpack_from(data)[1]
            msg_id, body = bytes(data[10:26]), bytes(data[26:])
            known = ledger.ids.setdefault(body, msg_id)
            if known != msg_id or len(body) != 8 or not body.isdigit() or int(body) >= N:
                ledger.unknown.append((msg_id, body))
                return
            ledger.deliveries[consumer.channel] += 1
            if msg_id in consumer.fins:
                # a FIN of ours reached the server after it had timed the message out and
                # delivered it to us again: that FIN finished this delivery
                consumer.fins[msg_id] = attempts
                ledger.actions["fin_raced_redelivery"] += 1
                return
            if consumer.leaving:
                ledger.actions["stranded"] += 1
                return
            roll = rng.random() if attempts < 5 else 0.0
            if roll < 0.80:
                action = "fin"
            elif roll < 0.86:
                action = "req0"
            elif roll < 0.90:
                action = "req_delay"
            elif roll < 0.95:
                action = "touch_fin"
            elif roll < 0.97:
                action = "hold"
            else:
                action = "ignore"
            ledger.actions[action] += 1
            if action == "fin" or action == "touch_fin":
                if action == "touch_fin":
                    consumer.out += b"TOUCH " + msg_id + b"\n"
                consumer.out += b"FIN " + msg_id + b"\n"
                consumer.fins[msg_id] = attempts
                consumer.fin_ok += 1
            elif action in ("req0", "req_delay"):
                delay = 0 if action == "req0" else rng.randint(1, 300)
                consumer.out += b"REQ %s %d\n" % (msg_id, delay)
                ledger.requeues[consumer.channel] += 1
                consumer.req_ok += 1
            elif action == "hold":  # past msg_timeout only thanks to the TOUCH
                now = time.monotonic()
                touch_at, fin_at = now + 1.2, now + 2.6
                heapq.heappush(timers, (touch_at, next(seq), consumer, b"TOUCH", msg_id, 0))
                heapq.heappush(timers, (fin_at, next(seq), consumer, b"FIN", msg_id, attempts))

        def process(consumer: Consumer) -> None:
            buf = consumer.buf
            offset, end = 0, len(buf)
            while end - offset >= 8:
                length, frame_type = HEADER.unpack_from(buf, offset)
                if end - offset < 4 + length:
                    break
                data = bytes(buf[offset + 8 : offset + 4 + length])
                offset += 4 + length
                if frame_type == 2:
                    handle_message(consumer, data)
                elif frame_type == 1:
                    handle_error(consumer, bytes(data))
                elif bytes(data) == b"_heartbeat_":
                    consumer.out += b"NOP\n"
                elif consumer.handshake:
                    assert bytes(data) == b"OK", bytes(data)
                    consumer.handshake -= 1
                    if not consumer.handshake:
                        consumer.out += b"RDY %d\n" % RDY
                else:
                    raise AssertionError(f"unexpected response {bytes(data)!r}")
            del buf[:offset]

        def flush(consumer: Consumer) -> None:
            if consumer.out:
                consumer.sock.sendall(consumer.out)
                consumer.out.clear()

        def sync(consumer: Consumer) -> None:
            consumer.snapshots.append(dict(consumer.fins))
            consumer.out += b"FIN " + SENTINEL + b"\n"

        def retire(consumer: Consumer) -> None:
            nonlocal closed_fin_ok
            selector.unregister(consumer.sock)
            if consumer.reset:
                consumer.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            consumer.sock.close()
            consumers.remove(consumer)
            closed_fin_ok += consumer.fin_ok

        final_sync = False
        while time.monotonic() - started < TIME_LIMIT:
            for key, _ in selector.select(0.05):
                consumer = key.data
                chunk = consumer.sock.recv(1 << 20)
                assert chunk, f"server closed consumer {consumer.number}"
                consumer.buf += chunk
                process(consumer)
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, consumer, verb, msg_id, attempts = heapq.heappop(timers)
                if consumer not in consumers or consumer.leaving:
                    continue  # it left: the message times out
                if msg_id in consumer.fins or msg_id in ledger.finished[consumer.channel]:
                    continue  # a newer delivery of it was finished already
                consumer.out += verb + b" " + msg_id + b"\n"
                if verb == b"FIN":
                    consumer.fins[msg_id] = attempts
                    consumer.fin_ok += 1
            if total_deliveries >= next_disconnect:
                next_disconnect += 40_000
                victim = rng.choice([c for c in consumers if not c.leaving])
                victim.leaving, victim.reset = True, rng.random() < 0.5
                disconnects += 1
                sync(victim)
                open_consumer(victim.channel)
            for consumer in list(consumers):
                if consumer.leaving and not consumer.snapshots and not consumer.out:
                    retire(consumer)
                else:
                    flush(consumer)
            provisional = all(
                len(ledger.finished[ch]) + sum(len(c.fins) for c in consumers if c.channel == ch)
                >= N
                for ch in CHANNELS
            )
            if provisional and not timers and not final_sync:
                final_sync = True
                for consumer in consumers:
                    sync(consumer)
            if final_sync and all(not c.snapshots for c in consumers):
                if ledger.done():
                    break
                final_sync = False  # some FIN failed: its message comes back
        elapsed = time.monotonic() - started
        producer.join(30)
        assert not producer_errors, producer_errors
        assert ledger.done(), {ch: len(ledger.finished[ch]) for ch in CHANNELS}
        assert not ledger.unknown, ledger.unknown[:5]
        assert ledger.double_fin == 0

        # /stats must reconcile with the ledger
        assert wait_until_quiet(server), "queues not empty at the end"
        doc = server.stats(topic="soak")
        [topic] = doc["topics"]
        assert topic["message_count"] == N
        by_port = {}
        for ch_stats in topic["channels"]:
            ch = ch_stats["channel_name"]
            finished = ledger.finished[ch]
            deliveries = sum(finished.values())
            assert ch_stats["message_count"] == N, ch
            assert ch_stats["requeue_count"] == ledger.requeues[ch], ch
            assert ch_stats["timeout_count"] == deliveries - N - ledger.requeues[ch], ch
            assert ch_stats["depth"] == ch_stats["in_flight_count"] == 0
            assert ch_stats["deferred_count"] == 0
            for client in ch_stats["clients"]:
                by_port[int(client["remote_address"].rpartition(":")[2])] = client
        for consumer in consumers:
            client = by_port[consumer.local_port]
            assert client["finish_count"] == consumer.fin_ok
            assert client["requeue_count"] == consumer.req_ok
        peak = server.peak_rss()
        closed_during_run = closed_fin_ok
        for consumer in list(consumers):
            retire(consumer)
        selector.close()
        sockets_after = settle(server.sockets, sockets_before, timeout=10)
        fds_after = server.fds()
        timeouts = {
            ch["channel_name"]: (ch["requeue_count"], ch["timeout_count"])
            for ch in topic["channels"]
        }
        print(
            f"\nFIGURE soak: {N} messages x {len(CHANNELS)} channels ledgered in {elapsed:.0f}s, "
            f"{total_deliveries} deliveries, actions {dict(ledger.actions)}, "
            f"(requeue, timeout) per channel {timeouts}, {disconnects} consumer disconnects, "
            f"FINs by consumers that left {closed_during_run}, RSS {rss_before} KiB -> peak {peak} "
            f"KiB, fds {fds_before} before / {fds_after} after (sockets {sockets_before} / "
            f"{sockets_after}; the rest are disk-queue segments)"
        )
        assert sockets_after <= sockets_before


def wait_until_quiet(server, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        channels = server.stats(topic="soak")["topics"][0]["channels"]
        if all(
            c["depth"] == 0 and c["in_flight_count"] == 0 and c["deferred_count"] == 0
            for c in channels
        ):
            return True
        time.sleep(0.2)
    return False

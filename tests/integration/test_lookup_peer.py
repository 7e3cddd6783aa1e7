"""gnsqd against a fake nsqlookupd that records every byte, compared with what nsqd 1.3.0 sent."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from gnsq_server.nsqd import lookup_peer
from gnsq_server.nsqd.lookup_peer import Lookup

from ..captures import CAPTURES
from ..ops import wait_for

FIXTURE = CAPTURES / "nsqd-to-lookupd.json"


def fixture_events() -> dict[str, dict]:
    return {event["trigger"]: event for event in json.loads(FIXTURE.read_text())["events"]}


def sent_in(event: dict) -> list[bytes]:
    return [
        bytes.fromhex(x["hex"]) for x in event["exchanges"] if x["direction"] == "nsqd->lookupd"
    ]


class FakeLookupd:
    """A raw-socket lookupd: records what each connection sends, answers IDENTIFY with the real
    lookupd's reply (its own ports), everything else with OK; HTTP /channels from a table."""

    def __init__(self, channels: dict[str, list[str]] | None = None, http_delay: float = 0.0):
        self.channels = channels or {}
        self.http_delay = http_delay
        self.received: list[tuple[int, bytes]] = []  # (connection number, bytes); b"" = EOF
        self.http_requests: list[tuple[str, list[tuple[str, str]]]] = []
        self.tcp_port = 0
        self.http_port = 0
        self._connections = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._http: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    def identify_reply(self) -> bytes:
        body = json.dumps(
            {
                "broadcast_address": "127.0.0.1",
                "hostname": "nsq-fixture",
                "http_port": self.http_port,
                "tcp_port": self.tcp_port,
                "version": "1.3.0",
            },
            separators=(",", ":"),
        ).encode()
        return struct.pack(">i", len(body)) + body

    def start(self) -> FakeLookupd:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.tcp_port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.tcp_port = listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        if self._http is None:
            self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), self._http_handler())
            self._http.daemon_threads = True
            self.http_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop_tcp(self) -> None:
        """Close the listener and every connection, as a lookupd that exits."""
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves it listening
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._open.clear()

    def stop(self) -> None:
        self.stop_tcp()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- what was received -----------------------------------------------------------------

    def lines(self, connection: int | None = None, pings: bool = True) -> list[bytes]:
        with self._lock:
            return [
                data
                for number, data in self.received
                if (connection is None or number == connection) and (pings or data != b"PING\n")
            ]

    def connection_numbers(self) -> list[int]:
        with self._lock:
            return sorted({number for number, _ in self.received})

    def wait_lines(self, count: int, connection: int | None = None) -> list[bytes]:
        try:
            wait_for(lambda: len(self.lines(connection, pings=False)) >= count)
        except AssertionError:
            raise AssertionError(f"wanted {count} lines, got {self.lines(connection)}") from None
        return self.lines(connection, pings=False)

    # -- servers -----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections += 1
                number = self._connections
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _record(self, number: int, data: bytes) -> None:
        with self._lock:
            self.received.append((number, data))

    def _serve(self, conn: socket.socket, number: int) -> None:
        stream = conn.makefile("rb")
        try:
            magic = stream.read(4)
            if len(magic) < 4:
                return
            self._record(number, magic)
            while True:
                line = stream.readline()
                if not line.endswith(b"\n"):
                    return
                if line == b"IDENTIFY\n":
                    size = stream.read(4)
                    body = stream.read(struct.unpack(">i", size)[0])
                    self._record(number, line + size + body)
                    conn.sendall(self.identify_reply())
                else:
                    self._record(number, line)
                    conn.sendall(b"\x00\x00\x00\x02OK")
        except OSError:
            pass
        finally:
            self._record(number, b"")
            stream.close()
            conn.close()

    def _http_handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                fake.http_requests.append((self.path, list(self.headers.items())))
                time.sleep(fake.http_delay)
                url = urlsplit(self.path)
                topic = parse_qs(url.query).get("topic", [""])[0]
                body = json.dumps({"channels": fake.channels.get(topic, [])}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # nsqd gave up waiting (the slow lookupd case)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture
def fake_lookupd():
    """Factory for FakeLookupd instances, stopped at teardown."""
    made: list[FakeLookupd] = []

    def make(**kwargs) -> FakeLookupd:
        fake = FakeLookupd(**kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


@pytest.fixture
def lookup_nsqd(start_nsqd):
    """Start a gnsqd registering with the given lookupd addresses; ports as in the fixture."""
    extra = []

    def start(*addresses: str, **overrides):
        settings = {
            "http_address": "",
            "broadcast_tcp_port": 4150,
            "broadcast_http_port": 4151,
            "nsqlookupd_tcp_addresses": list(addresses),
            **overrides,
        }
        server = start_nsqd(**settings)
        if getattr(server.server, "lookup", None) is None:
            # Until gnsq_server/nsqd/server.py starts the Lookup itself.
            lookup = server.call(lambda: Lookup(server.server.nsqd).start())
            server.server.lookup = server.fallback_lookup = lookup
            extra.append(server)
        return server

    yield start
    for server in extra:
        if server.fallback_lookup is not None:
            server.call(server.fallback_lookup.stop)


def lookup_of(server) -> Lookup:
    return server.server.lookup


def pub(conn, topic: str, body: bytes) -> float:
    """PUB over TCP; returns how long nsqd took to answer OK."""
    started = time.monotonic()
    conn.command(f"PUB {topic}".encode(), body)
    assert conn.read_frame() == (0, b"OK")
    return time.monotonic() - started


def subscribe(connect, port: int, topic: str, channel: str):
    conn = connect(port)
    conn.command(f"SUB {topic} {channel}".encode())
    assert conn.read_frame() == (0, b"OK")
    conn.command(b"RDY 10")
    return conn


def read_message_body(conn) -> bytes:
    frame_type, data = conn.read_frame()
    assert frame_type == 2, data
    return data[26:]


def connected_peers(server) -> int:
    return server.call(lambda: sum(p.ready for p in lookup_of(server).peers.values()))


def with_hostname(identify: bytes, hostname: str) -> bytes:
    """The fixture's IDENTIFY as this host sends it (nsqd puts the OS hostname in)."""
    line, body = identify[:9], identify[13:]
    assert line == b"IDENTIFY\n"
    body = body.replace(
        b'"hostname":"nsq-fixture"', b'"hostname":%s' % json.dumps(hostname).encode()
    )
    return line + struct.pack(">i", len(body)) + body


def stop_nsqd(server) -> None:
    """Stop gnsqd as SIGTERM would, with the fallback Lookup if server.py has none yet."""
    lookup = getattr(server, "fallback_lookup", None)
    if lookup is not None:
        server.call(lookup.stop)
        server.fallback_lookup = None
    server.stop()


def test_sequence_is_nsqd_1_3_0s(fake_lookupd, lookup_nsqd, connect, monkeypatch) -> None:
    """Each fixture event, replayed on gnsqd, sends the same bytes (hostname is the host's)."""
    monkeypatch.setattr(lookup_peer, "PING_INTERVAL", 3600.0)
    events = fixture_events()
    fake = fake_lookupd()
    server = lookup_nsqd(fake.address)
    nsqd = server.server.nsqd
    hostname = server.call(lambda: nsqd.hostname)
    seen = 0

    def expect(trigger: str, action=None) -> None:
        nonlocal seen
        if action is not None:
            action()
        expected = sent_in(events[trigger])
        lines = fake.wait_lines(seen + len(expected))
        assert lines[seen:] == expected, trigger
        seen += len(expected)

    identify = events["nsqd started (empty data dir)"]["exchanges"][1]
    identify["hex"] = with_hostname(bytes.fromhex(identify["hex"]), hostname).hex()
    expect("nsqd started (empty data dir)")
    wait_for(lambda: connected_peers(server) == 1, what="peer ready")
    expect("POST /topic/create?topic=lk_a on nsqd", lambda: server.call(nsqd.get_topic, "lk_a"))
    expect(
        "POST /channel/create?topic=lk_a&channel=c1",
        lambda: server.call(lambda: nsqd.topics["lk_a"].get_channel("c1")),
    )
    ephemeral = subscribe(connect, server.server.tcp_port, "lk_a", "e#ephemeral")
    expect("TCP SUB lk_a e#ephemeral (ephemeral channel created)")
    expect("that subscriber disconnects (ephemeral channel deleted)", ephemeral.close)
    expect(
        "POST /channel/delete?topic=lk_a&channel=c1",
        lambda: server.call(lambda: nsqd.topics["lk_a"].delete_channel("c1")),
    )
    expect("POST /topic/delete?topic=lk_a", lambda: server.call(nsqd.delete_topic, "lk_a"))
    publisher = connect(server.server.tcp_port)
    expect(
        "TCP PUB to a new topic lk_c (topic created by the publish)",
        lambda: pub(publisher, "lk_c", b"x"),
    )

    def create_lk_b() -> None:
        server.call(nsqd.get_topic, "lk_b")
        wait_for(lambda: server.call(lambda: nsqd.topics["lk_b"].started), what="lk_b started")
        server.call(lambda: nsqd.topics["lk_b"].get_channel("c"))

    expect("POST /topic/create?topic=lk_b then /channel/create?topic=lk_b&channel=c", create_lk_b)

    # nsqd's /channels queries, one per runtime-created topic, with nsqd's headers
    requests = [r for e in events.values() for r in e.get("http_requests_to_lookupd", [])]
    host = f"127.0.0.1:{fake.http_port}"
    assert [(path, headers) for path, headers in fake.http_requests] == [
        (r["path"], [(k, host if k == "Host" else v) for k, v in r["headers"]]) for r in requests
    ]

    # SIGTERM: the connection just closes, no UNREGISTER
    stop_nsqd(server)
    wait_for(lambda: fake.lines()[-1:] == [b""], what="connection closed")
    assert fake.lines(pings=False)[seen:] == [b""]
    assert fake.connection_numbers() == [1]


def test_ping_every_interval(fake_lookupd, lookup_nsqd, monkeypatch) -> None:
    monkeypatch.setattr(lookup_peer, "PING_INTERVAL", 0.1)
    fake = fake_lookupd()
    lookup_nsqd(fake.address)
    wait_for(lambda: fake.lines().count(b"PING\n") >= 3, what="three PINGs")
    assert fake.connection_numbers() == [1]  # every PING was answered on the same connection


def test_reconnect_reregisters_everything(fake_lookupd, lookup_nsqd, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gnsq_server.nsqd.lookup_peer")
    fake = fake_lookupd()
    server = lookup_nsqd(fake.address)
    nsqd = server.server.nsqd
    wait_for(lambda: connected_peers(server) == 1, what="peer ready")

    def populate() -> None:
        t1 = nsqd.get_topic("t1")
        t1.get_channel("a")
        t1.get_channel("b")
        nsqd.get_topic("t2")
        nsqd.get_topic("t3#ephemeral").get_channel("e#ephemeral")

    server.call(populate)
    fake.wait_lines(2 + 6)
    fake.stop_tcp()
    wait_for(lambda: connected_peers(server) == 0, what="connection lost")
    time.sleep(0.3)  # the lookupd stays down a while: nsqd retries with back-off
    fake.start()
    lines = wait_for(lambda: len(fake.lines(2)) >= 6 and fake.lines(2), what="re-registration")
    assert lines[:2] == fake.lines(1)[:2]  # magic, IDENTIFY
    assert set(lines[2:6]) == {
        b"REGISTER t1 a\n",
        b"REGISTER t1 b\n",
        b"REGISTER t2\n",
        b"REGISTER t3#ephemeral e#ephemeral\n",
    }
    wait_for(lambda: connected_peers(server) == 1, what="peer ready again")
    server.call(lambda: nsqd.get_topic("t1").delete_channel("b"))
    assert fake.wait_lines(7, connection=2)[6] == b"UNREGISTER t1 b\n"
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LOOKUP(")]
    assert f"LOOKUP({fake.address}): connected" in messages
    assert any(m.startswith(f"LOOKUP({fake.address}): connection lost") for m in messages)


def test_changes_while_disconnected_are_covered_by_the_next_connection(
    fake_lookupd, lookup_nsqd
) -> None:
    fake = fake_lookupd()
    server = lookup_nsqd(fake.address)
    nsqd = server.server.nsqd
    wait_for(lambda: connected_peers(server) == 1, what="peer ready")
    server.call(lambda: nsqd.get_topic("gone").get_channel("c"))
    fake.wait_lines(4)
    fake.stop_tcp()
    wait_for(lambda: connected_peers(server) == 0, what="connection lost")
    server.call(nsqd.delete_topic, "gone")
    server.call(lambda: nsqd.get_topic("new").get_channel("c"))
    fake.start()
    wait_for(lambda: connected_peers(server) == 1, what="peer ready again")
    time.sleep(0.2)
    assert fake.lines(2, pings=False)[2:] == [b"REGISTER new c\n"]


def test_channels_are_precreated_before_the_first_message(
    fake_lookupd, lookup_nsqd, connect
) -> None:
    fake = fake_lookupd(channels={"fresh": ["a", "b", "x#ephemeral"]})
    server = lookup_nsqd(fake.address)
    wait_for(lambda: connected_peers(server) == 1, what="peer ready")
    publisher = connect(server.server.tcp_port)
    pub(publisher, "fresh", b"first")
    pub(publisher, "fresh", b"second")
    port = server.server.tcp_port
    for channel in ("a", "b"):
        conn = subscribe(connect, port, "fresh", channel)
        assert [read_message_body(conn), read_message_body(conn)] == [b"first", b"second"]
    channels = server.call(lambda: sorted(server.server.nsqd.topics["fresh"].channels))
    assert channels == ["a", "b"]
    assert set(fake.wait_lines(5)[2:5]) == {
        b"REGISTER fresh\n",
        b"REGISTER fresh a\n",
        b"REGISTER fresh b\n",
    }
    assert fake.lines(pings=False)[2] == b"REGISTER fresh\n"


def test_channels_union_of_every_lookupd(fake_lookupd, lookup_nsqd, connect) -> None:
    one = fake_lookupd(channels={"t": ["a"]})
    two = fake_lookupd(channels={"t": ["b", "a"]})
    three = fake_lookupd()  # its HTTP side is gone: that error is only logged
    three._http.shutdown()
    three._http.server_close()
    three._http = None
    server = lookup_nsqd(one.address, two.address, three.address)
    wait_for(lambda: connected_peers(server) == 3, what="peers ready")
    pub(connect(server.server.tcp_port), "t", b"m")
    wait_for(lambda: server.call(lambda: server.server.nsqd.topics["t"].started), what="started")
    assert server.call(lambda: sorted(server.server.nsqd.topics["t"].channels)) == ["a", "b"]


@pytest.mark.parametrize("lookupd", ["refused", "silent", "slow_http"])
def test_publishing_never_waits_on_a_lookupd(lookupd, fake_lookupd, lookup_nsqd, connect):
    """Publishers get OK at once whether the lookupd refuses, never answers, or is slow."""
    silent = None
    if lookupd == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{sock.getsockname()[1]}"
    elif lookupd == "silent":
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # accepts connections, never reads or answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
    else:
        fake = fake_lookupd(channels={"t0": ["c"]}, http_delay=3.0)
        address = fake.address
    server = lookup_nsqd(address, http_client_request_timeout=0.5)
    if lookupd == "slow_http":
        wait_for(lambda: connected_peers(server) == 1, what="peer ready")
    port = server.server.tcp_port
    publisher = connect(port)
    for n in range(5):
        assert pub(publisher, f"t{n}", b"body") < 0.3
    conn = subscribe(connect, port, "t0", "c")
    assert read_message_body(conn) == b"body"
    if silent is not None:
        silent.close()


def test_lookupd_addresses_change_live(fake_lookupd, lookup_nsqd) -> None:
    first, second = fake_lookupd(), fake_lookupd()
    server = lookup_nsqd(first.address)
    nsqd = server.server.nsqd
    wait_for(lambda: connected_peers(server) == 1, what="peer ready")
    server.call(lambda: nsqd.get_topic("t").get_channel("c"))
    first.wait_lines(4)
    server.call(nsqd.set_lookupd_addresses, [second.address])
    assert second.wait_lines(3)[2:] == [b"REGISTER t c\n"]
    wait_for(lambda: first.lines()[-1:] == [b""], what="first peer closed")
    server.call(nsqd.set_lookupd_addresses, [second.address, first.address])
    assert first.wait_lines(3, connection=2)[2:] == [b"REGISTER t c\n"]
    assert server.call(lambda: list(lookup_of(server).peers)) == [second.address, first.address]

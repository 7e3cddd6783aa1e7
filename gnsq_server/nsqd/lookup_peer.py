"""nsqd's side of nsqlookupd: one connection per lookupd, REGISTER/UNREGISTER/PING, and the
channel pre-creation query made when a topic is created at runtime.

Every lookupd gets its own greenlet and command queue, so a slow or dead lookupd never
blocks a publisher or another lookupd. After each (re)connect the peer sends IDENTIFY and then
REGISTERs everything the daemon holds at that moment; that snapshot supersedes anything
queued while the connection was down, so nothing is queued while it is down.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Group
from gevent.queue import Empty, Queue

from .. import NSQ_VERSION
from ..gosyntax import join_host_port, split_host_port
from ..wire import is_ephemeral, is_valid_name

if TYPE_CHECKING:
    from .channel import Channel
    from .nsqd import NSQD
    from .topic import Topic

log = logging.getLogger(__name__)

MAGIC_V1 = b"  V1"
PING = b"PING\n"
#: dial, read and write deadlines of a lookupd connection, as nsqd's lookupPeer
IO_TIMEOUT = 1.0
#: nsqd's lookupd heartbeat
PING_INTERVAL = 15.0
#: reconnect delays: doubled after each failure, reset once a connection stayed up this long
MIN_RECONNECT_DELAY = 0.1
MAX_RECONNECT_DELAY = 15.0
#: commands queued for one lookupd beyond this are dropped and the peer resyncs by reconnecting
MAX_PENDING = 100_000
#: headers of nsqd's HTTP client (Go's http.Client + clusterinfo's GETV1), in its order
HTTP_HEADERS = (
    ("User-Agent", "Go-http-client/1.1"),
    ("Accept", "application/vnd.nsq; version=1.0"),
    ("Accept-Encoding", "gzip"),
)

_SIZE = struct.Struct(">i")
_GO_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


class LookupdError(Exception):
    """The lookupd answered something nsqd cannot use; the connection is dropped."""


# -- commands and responses (pure) --------------------------------------------------------


def go_map_json(data: dict) -> bytes:
    """JSON as Go's encoding/json writes a map: sorted keys, no spaces, <>& escaped."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _GO_HTML_ESCAPES.items():
        text = text.replace(char, escape)
    return text.encode()


def identify_command(identity: dict) -> bytes:
    body = go_map_json(identity)
    return b"IDENTIFY\n" + _SIZE.pack(len(body)) + body


def register_command(topic: str, channel: str = "") -> bytes:
    return _command(b"REGISTER", topic, channel)


def unregister_command(topic: str, channel: str = "") -> bytes:
    return _command(b"UNREGISTER", topic, channel)


def _command(verb: bytes, topic: str, channel: str) -> bytes:
    params = [topic, channel] if channel else [topic]
    return b" ".join([verb, *(param.encode() for param in params)]) + b"\n"


def command_text(command: bytes) -> str:
    """The command line without its newline or body, for log lines."""
    return command.split(b"\n", 1)[0].decode(errors="replace")


def read_response(read_exactly: Callable[[int], bytes], max_size: int) -> bytes:
    """One V1 response: ``[int32 size][data]``; sizes above max_size (nsqd's --max-body-size)
    or below zero are refused before anything is allocated."""
    (size,) = _SIZE.unpack(read_exactly(_SIZE.size))
    if size < 0 or size > max_size:
        raise LookupdError(f"response body size ({size}) is greater than limit ({max_size})")
    return read_exactly(size) if size else b""


def parse_peer_info(reply: bytes) -> dict:
    """The IDENTIFY reply; ``E_INVALID`` (an older lookupd) or non-JSON drops the connection."""
    if reply == b"E_INVALID":
        raise LookupdError("lookupd returned E_INVALID")
    try:
        info = json.loads(reply)
    except ValueError as err:
        raise LookupdError(f"parsing response - {reply!r}") from err
    if not isinstance(info, dict):
        raise LookupdError(f"parsing response - {reply!r}")
    return info


def format_peer_info(info: dict) -> str:
    """nsqd's ``%+v`` of its PeerInfo, so the log line reads the same."""
    return (
        f"{{TCPPort:{info.get('tcp_port', 0)} HTTPPort:{info.get('http_port', 0)} "
        f"Version:{info.get('version', '')} BroadcastAddress:{info.get('broadcast_address', '')}}}"
    )


def snapshot_registrations(topics: Iterable[Topic]) -> list[bytes]:
    """What a fresh connection must REGISTER: a topic's channels, or the topic alone if it
    has none (registering a channel registers its topic too)."""
    commands = []
    for topic in topics:
        if topic.channels:
            commands.extend(register_command(topic.name, name) for name in topic.channels)
        else:
            commands.append(register_command(topic.name))
    return commands


# -- one lookupd ----------------------------------------------------------------------------


class LookupPeer:
    """The connection to one lookupd, kept up by its own greenlet.

    ``send`` only queues, so callers never wait. While disconnected it queues nothing: the next
    connection REGISTERs a fresh snapshot instead (``registrations`` is called after IDENTIFY).
    """

    def __init__(
        self,
        address: str,
        max_body_size: int,
        identity: Callable[[], dict],
        registrations: Callable[[], list[bytes]],
    ) -> None:
        self.address = address
        self.max_body_size = max_body_size
        self._identity = identity
        self._registrations = registrations
        #: the lookupd's IDENTIFY reply; kept after a disconnect, as nsqd does
        self.info: dict = {}
        self.ready = False
        self._pending: deque[bytes] = deque()
        self._wake = Event()
        self._resync_reason: str | None = None
        self._sock: socket.socket | None = None
        self._reader: gevent.Greenlet | None = None
        self._replies: Queue = Queue()
        self._worker: gevent.Greenlet | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<LookupPeer {self.address}>"

    @property
    def http_address(self) -> str | None:
        """``broadcast_address:http_port`` learnt from IDENTIFY (None before the first one)."""
        host = self.info.get("broadcast_address")
        if not host or not isinstance(host, str):
            return None
        return join_host_port(host, self.info.get("http_port", 0))

    def start(self) -> LookupPeer:
        self._worker = gevent.spawn(self._run)
        return self

    def close(self) -> None:
        self._closed = True
        self.ready = False
        self._pending.clear()
        if self._worker is not None:
            self._worker.kill(block=False)
            self._worker = None
        self._disconnect()

    def send(self, command: bytes) -> bool:
        """Queue a command; False (dropped) while not connected, as the reconnect covers it."""
        if not self.ready:
            return False
        if len(self._pending) >= MAX_PENDING:
            self._resync("too many queued commands")
            return False
        self._pending.append(command)
        self._wake.set()
        return True

    def ping(self) -> None:
        if PING not in self._pending:
            self.send(PING)

    def _resync(self, reason: str) -> None:
        """Drop the connection and the queue; the next connection registers everything."""
        self.ready = False
        self._pending.clear()
        self._resync_reason = reason
        self._wake.set()

    # -- the connection greenlet -------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        failures = 0
        while not self._closed:
            if delay:
                gevent.sleep(delay)
            connected_at = None
            try:
                self._connect()
                connected_at = time.monotonic()
                failures = 0
                self._serve()
            except Exception as err:  # any failure: drop the connection, back off, retry
                reason = str(err) or type(err).__name__
            finally:
                self._disconnect()
            if self._closed:
                return
            if connected_at is not None:
                log.info("LOOKUP(%s): connection lost - %s", self.address, reason)
                if time.monotonic() - connected_at >= MAX_RECONNECT_DELAY:
                    delay = 0.0  # it was stable: retry promptly
            else:
                failures += 1
                level = logging.ERROR if failures == 1 else logging.DEBUG
                log.log(level, "LOOKUPD(%s): connect failed - %s", self.address, reason)
            delay = min(max(delay * 2, MIN_RECONNECT_DELAY), MAX_RECONNECT_DELAY)

    def _connect(self) -> None:
        host, port = split_host_port(self.address)
        sock = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        sock.settimeout(None)  # deadlines are per operation below; the reader waits forever
        self._sock = sock
        self._replies = Queue()
        self._reader = gevent.spawn(self._read_replies, sock, self._replies)
        self._write(MAGIC_V1)
        self.info = parse_peer_info(self._command(identify_command(self._identity())))
        log.info("LOOKUPD(%s): peer info %s", self.address, format_peer_info(self.info))
        if not self.info.get("broadcast_address"):
            log.error("LOOKUPD(%s): no broadcast address", self.address)
        log.info("LOOKUP(%s): connected", self.address)
        # No yield between taking the snapshot and becoming ready: every later change is queued.
        self._pending.clear()
        self._resync_reason = None
        burst = self._registrations()
        self.ready = True
        for command in burst:
            log.info("LOOKUPD(%s): %s", self.address, command_text(command))
            self._check_reply(command, self._command(command))

    def _serve(self) -> None:
        """Send queued commands one at a time until the connection fails."""
        while True:
            while not self._pending:
                self._check_idle()
                self._wake.clear()
                self._wake.wait()
            self._check_idle()
            command = self._pending.popleft()
            self._check_reply(command, self._command(command))

    def _check_idle(self) -> None:
        """Between commands the lookupd sends nothing: anything read now means it went away."""
        if self._resync_reason is not None:
            raise LookupdError(self._resync_reason)
        if not self._replies.empty():
            reply = self._replies.get_nowait()
            if isinstance(reply, Exception):
                raise reply
            raise LookupdError(f"unexpected response {reply!r}")

    def _check_reply(self, command: bytes, reply: bytes) -> None:
        if reply != b"OK":
            log.error(
                "LOOKUPD(%s): %s - %s",
                self.address,
                command_text(command),
                reply.decode(errors="replace"),
            )

    def _command(self, command: bytes) -> bytes:
        self._write(command)
        try:
            reply = self._replies.get(timeout=IO_TIMEOUT)
        except Empty:
            raise TimeoutError("read timed out") from None
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        with gevent.Timeout(IO_TIMEOUT, TimeoutError("write timed out")):
            self._sock.sendall(data)

    def _read_replies(self, sock: socket.socket, replies: Queue) -> None:
        """The connection's only reader, so a lookupd that goes away is noticed while idle."""

        def read_exactly(size: int) -> bytes:
            data = b""
            while len(data) < size:
                chunk = sock.recv(size - len(data))
                if not chunk:
                    raise EOFError("EOF")
                data += chunk
            return data

        try:
            while True:
                replies.put(read_response(read_exactly, self.max_body_size))
        except (OSError, EOFError, LookupdError) as err:
            replies.put(err)
        finally:
            self._wake.set()

    def _disconnect(self) -> None:
        self.ready = False
        self._pending.clear()
        if self._reader is not None:
            self._reader.kill(block=False)
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- all lookupds ----------------------------------------------------------------------------


class Lookup:
    """nsqd's lookup loop: keeps one LookupPeer per ``--lookupd-tcp-address``, tells them
    about topics and channels as they come and go, and pre-creates channels for new topics."""

    def __init__(self, nsqd: NSQD) -> None:
        self.nsqd = nsqd
        self.peers: dict[str, LookupPeer] = {}
        self._tasks = Group()
        self._pinger: gevent.Greenlet | None = None
        self._running = False
        self._subscribed = False

    def start(self) -> Lookup:
        self._running = True
        if not self._subscribed:
            self._subscribed = True
            subscribe = self.nsqd.subscribe
            subscribe("topic_created", self._topic_created)
            subscribe("topic_deleted", self._topic_deleted)
            subscribe("channel_created", self._channel_created)
            subscribe("channel_deleted", self._channel_deleted)
            subscribe("lookupd_addresses_changed", self.set_addresses)
        self.set_addresses(self.nsqd.opts.nsqlookupd_tcp_addresses)
        self._pinger = gevent.spawn(self._ping_loop)
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        log.info("LOOKUP: closing")
        if self._pinger is not None:
            self._pinger.kill(block=False)
            self._pinger = None
        self._tasks.kill(block=False)  # each task still starts its topic as it exits
        for peer in self.peers.values():
            peer.close()
        self.peers.clear()

    def set_addresses(self, addresses: list[str]) -> None:
        """Add and remove peers to match the configured lookupd TCP addresses."""
        if not self._running:
            return
        wanted = list(dict.fromkeys(addresses))
        for address in [address for address in self.peers if address not in wanted]:
            log.info("LOOKUP(%s): removing peer", address)
            self.peers.pop(address).close()
        for address in wanted:
            if address not in self.peers:
                log.info("LOOKUP(%s): adding peer", address)
                self.peers[address] = LookupPeer(
                    address, self.nsqd.opts.max_body_size, self.identity, self.registrations
                ).start()

    def http_addresses(self) -> list[str]:
        """Every lookupd's HTTP address learnt so far (nsqd's lookupdHTTPAddrs)."""
        return [peer.http_address for peer in self.peers.values() if peer.http_address]

    def identity(self) -> dict:
        """nsqd's IDENTIFY body; broadcast ports of 0 mean the ports actually bound."""
        opts = self.nsqd.opts
        return {
            "broadcast_address": opts.broadcast_address,
            "hostname": self.nsqd.hostname,
            "http_port": opts.broadcast_http_port or self.nsqd.http_port,
            "tcp_port": opts.broadcast_tcp_port or self.nsqd.tcp_port,
            "version": NSQ_VERSION,
        }

    def registrations(self) -> list[bytes]:
        return snapshot_registrations(list(self.nsqd.topics.values()))

    # -- events ----------------------------------------------------------------------------

    def _broadcast(self, kind: str, command: bytes) -> None:
        for peer in self.peers.values():
            if peer.send(command):
                log.info("LOOKUPD(%s): %s %s", peer.address, kind, command_text(command))

    def _topic_created(self, topic: Topic) -> None:
        if not self._running:
            return
        self._broadcast("topic", register_command(topic.name))
        if topic.ephemeral or not self.peers:
            return
        addresses = self.http_addresses()
        if not addresses:
            log.error(
                "no available nsqlookupd to query for channels to pre-create for topic %s",
                topic.name,
            )
            return
        topic.hold_until_started()
        self._tasks.spawn(self._precreate_channels, topic, addresses)

    def _topic_deleted(self, topic: Topic) -> None:
        if self._running:
            self._broadcast("topic", unregister_command(topic.name))

    def _channel_created(self, channel: Channel) -> None:
        if self._running:
            self._broadcast("channel", register_command(channel.topic_name, channel.name))

    def _channel_deleted(self, channel: Channel) -> None:
        if self._running:
            self._broadcast("channel", unregister_command(channel.topic_name, channel.name))

    def _ping_loop(self) -> None:
        while True:
            gevent.sleep(PING_INTERVAL)
            for peer in list(self.peers.values()):
                log.debug("LOOKUPD(%s): sending heartbeat", peer.address)
                peer.ping()

    # -- channel pre-creation --------------------------------------------------------------

    def _precreate_channels(self, topic: Topic, addresses: list[str]) -> None:
        """Create the channels lookupds know for a new topic, then let its messages flow,
        so the first messages reach every channel consumers already use (nsq #1416)."""
        try:
            opts = self.nsqd.opts
            names, errors = topic_channels(
                addresses,
                topic.name,
                opts.http_client_connect_timeout,
                opts.http_client_request_timeout,
            )
            if errors:
                log.warning(
                    "failed to query nsqlookupd for channels to pre-create for topic %s - %s",
                    topic.name,
                    "; ".join(errors),
                )
            for name in names:
                if topic.exiting:
                    break
                if is_ephemeral(name):
                    continue  # an ephemeral channel without a consumer would just be deleted
                if not is_valid_name(name):
                    log.warning(
                        "LOOKUP: ignoring invalid channel name %r for topic %s", name, topic.name
                    )
                    continue
                topic.get_channel(name)
        finally:
            topic.start()


# -- lookupd HTTP ----------------------------------------------------------------------------


class _HTTPConnection(http.client.HTTPConnection):
    """http.client over gevent's socket, so the query yields even without monkey-patching."""

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.timeout)


def fetch_channels(
    address: str, topic: str, connect_timeout: float, request_timeout: float
) -> list[str]:
    """GET ``/channels?topic=`` from one lookupd as nsqd does; the whole request is bounded."""
    host, port = split_host_port(address)
    conn = _HTTPConnection(host, port, timeout=connect_timeout)
    with gevent.Timeout(request_timeout, TimeoutError("request timed out")):
        try:
            conn.putrequest(
                "GET", "/channels?" + urlencode({"topic": topic}), skip_accept_encoding=True
            )
            for name, value in HTTP_HEADERS:
                conn.putheader(name, value)
            conn.endheaders()
            conn.sock.settimeout(request_timeout)
            response = conn.getresponse()
            body = response.read()
            if response.getheader("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
        finally:
            conn.close()
    if response.status != 200:
        raise LookupdError(f"got response {response.status} {response.reason} {body[:200]!r}")
    try:
        channels = json.loads(body)["channels"] or []
    except (ValueError, KeyError, TypeError) as err:
        raise LookupdError(f"bad /channels response {body[:200]!r}") from err
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise LookupdError(f"bad /channels response {body[:200]!r}")
    return channels


def topic_channels(
    addresses: list[str], topic: str, connect_timeout: float, request_timeout: float
) -> tuple[list[str], list[str]]:
    """The union of every lookupd's channels for a topic (asked in parallel), and the errors
    of those that failed."""

    def fetch(address: str) -> list[str] | str:
        try:
            return fetch_channels(address, topic, connect_timeout, request_timeout)
        except Exception as err:  # reported by the caller, never raised into the hub
            return f"{address}: {err or type(err).__name__}"

    jobs = [gevent.spawn(fetch, address) for address in addresses]
    gevent.joinall(jobs)
    names: dict[str, None] = {}
    errors = []
    for job in jobs:
        if isinstance(job.value, list):
            names.update(dict.fromkeys(job.value))
        else:
            errors.append(str(job.value))
    return list(names), errors

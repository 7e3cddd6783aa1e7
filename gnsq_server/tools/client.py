"""What the command-line tools share: their common flags, go-nsq's ``--consumer-opt`` /
``--producer-opt`` settings mapped onto gnsq connections, lookupd and nsqd HTTP queries, a
subscriber and a publisher over gnsq's ``NsqdTCPClient``, and stop signals.

The subscriber and publisher use gnsq for the wire (IDENTIFY, TLS/snappy/deflate upgrades,
frames, messages) but not gnsq's ``Consumer``/``Producer``: ``Consumer.close()`` drops its
sockets without CLS, so FINs already written can be lost and finished messages come back
(nsq_to_file must not duplicate), and ``Producer`` cannot negotiate TLS or compression (its
response handler takes the upgrade's ``OK`` as a publish reply before the connection is
registered, gnsq 1.0.2).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gnsq
from gevent.event import Event
from gevent.pool import Group
from gnsq import NsqdTCPClient
from gnsq import protocol as wire
from gnsq.errors import NSQErrorCode, NSQException
from gnsq.message import Message

from gnsq_server import NSQ_VERSION
from gnsq_server.config import parse_duration, parse_go_bool, split_host_port
from gnsq_server.options import DURATION, INT, STRS, Option
from gnsq_server.wire import is_valid_name

log = logging.getLogger(__name__)

CLOSE_WAIT = b"CLOSE_WAIT"  # nsqd's answer to CLS: nothing more will be sent


class UsageError(Exception):
    """A bad flag combination or value: reported as ``<prog>: <message>`` with exit status 2."""


# --- flags several tools take (names, defaults and help as NSQ 1.3.0's apps) ----------------

NSQD_TCP_ADDRESS = Option(
    "nsqd-tcp-address", STRS, [], "nsqd TCP address (may be given multiple times)",
    cfg="nsqd_tcp_addresses",
)
LOOKUPD_HTTP_ADDRESS = Option(
    "lookupd-http-address", STRS, [], "lookupd HTTP address (may be given multiple times)",
    cfg="lookupd_http_addresses",
)
TOPIC = Option("topic", STRS, [], "NSQ topic (may be given multiple times)", cfg="topics")
MAX_IN_FLIGHT = Option(
    "max-in-flight", INT, 200, "max number of messages to allow in flight", minimum=0
)
CONSUMER_OPT = Option(
    "consumer-opt", STRS, [],
    "option to passthrough to the consumer (may be given multiple times): a go-nsq Config "
    "option and its value, comma separated (tls_v1,true; snappy; deflate_level,3)",
    cfg="consumer_opts",
)
HTTP_CONNECT_TIMEOUT = Option(
    "http-client-connect-timeout", DURATION, 2.0, "timeout for HTTP connect"
)
HTTP_REQUEST_TIMEOUT = Option(
    "http-client-request-timeout", DURATION, 5.0, "timeout for HTTP request"
)


def user_agent(prog: str) -> str:
    """What the tools send in IDENTIFY, as ``nsq_tail/1.3.0 go-nsq/1.1.0`` in NSQ."""
    return f"{prog}/{NSQ_VERSION} gnsq/{gnsq.__version__}"


def require_sources(flag: str, direct: list[str], lookupds: list[str]) -> None:
    """nsqd addresses (given by ``--flag``) or lookupd addresses, exactly one kind: the check
    every NSQ app makes."""
    if not direct and not lookupds:
        raise UsageError(f"--{flag} or --lookupd-http-address required")
    if direct and lookupds:
        raise UsageError(f"use --{flag} or --lookupd-http-address not both")
    for address in direct:
        check_address(flag, address)
    for address in lookupds:
        check_address("lookupd-http-address", address, scheme_ok=True)


def require_positive(opts: Any, *flags: str) -> None:
    """Durations and intervals the tools cannot work with at zero or below."""
    for flag in flags:
        if getattr(opts, flag.replace("-", "_")) <= 0:
            raise UsageError(f"--{flag} should be positive")


def check_names(flag: str, names: Iterable[str]) -> None:
    """Topic/channel names as nsqd accepts them, checked before connecting."""
    for name in names:
        if not is_valid_name(name):
            raise UsageError(f"--{flag} {name!r} is not a valid {flag.split('-')[0]} name")


def check_address(flag: str, address: str, scheme_ok: bool = False) -> tuple[str, int]:
    """``host:port`` (or ``http://host:port`` where a URL is allowed), else a UsageError."""
    text = address
    if scheme_ok and "://" in text:
        text = urllib.parse.urlsplit(text).netloc
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise UsageError(f"--{flag} {address!r}: {exc}") from None


# --- go-nsq Config options ------------------------------------------------------------------


def _milliseconds(text: str) -> int:
    return int(parse_duration(text) * 1000)


def _ranged(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text, 10)
        if not low <= value <= high:
            raise ValueError(f"{value} out of range [{low}, {high}]")
        return value

    return parse


# go-nsq option -> (parser, NsqdTCPClient keyword)
_CONNECTION_OPTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "tls_v1": (parse_go_bool, "tls_v1"),
    "snappy": (parse_go_bool, "snappy"),
    "deflate": (parse_go_bool, "deflate"),
    "deflate_level": (_ranged(1, 9), "deflate_level"),
    "sample_rate": (_ranged(0, 99), "sample_rate"),
    "heartbeat_interval": (parse_duration, "heartbeat_interval"),
    "output_buffer_size": (_ranged(-1, 2**63 - 1), "output_buffer_size"),
    "output_buffer_timeout": (_milliseconds, "output_buffer_timeout"),
    "read_timeout": (parse_duration, "timeout"),
    "auth_secret": (str, "auth_secret"),
    "client_id": (str, "client_id"),
    "hostname": (str, "hostname"),
    "user_agent": (str, "user_agent"),
}
_TLS_OPTS: dict[str, Callable[[str], Any]] = {
    "tls_root_ca_file": str,
    "tls_insecure_skip_verify": parse_go_bool,
    "tls_cert": str,
    "tls_key": str,
}
_CLIENT_OPTS: dict[str, Callable[[str], Any]] = {
    "max_attempts": _ranged(0, 65535),
    "lookupd_poll_interval": parse_duration,
    "max_in_flight": _ranged(0, 2**31 - 1),  # accepted; --max-in-flight sets it, as in NSQ
}


class ClientSettings:
    """go-nsq Config options as gnsq connection keywords plus the subscriber's own settings."""

    def __init__(self, agent: str) -> None:
        self.connection: dict[str, Any] = {"user_agent": agent}
        self.tls: dict[str, Any] = {}
        self.max_attempts = 5
        self.lookupd_poll_interval = 60.0

    def connection_kwargs(self) -> dict[str, Any]:
        """Keywords for ``NsqdTCPClient``: go-nsq verifies the server unless told not to."""
        kwargs = dict(self.connection)
        if kwargs.get("tls_v1"):
            skip = self.tls.get("tls_insecure_skip_verify", False)
            cafile = self.tls.get("tls_root_ca_file") or ssl.get_default_verify_paths().cafile
            kwargs["tls_options"] = {
                "cert_reqs": ssl.CERT_NONE if skip else ssl.CERT_REQUIRED,
                "ca_certs": None if skip else cafile,
                "certfile": self.tls.get("tls_cert"),
                "keyfile": self.tls.get("tls_key"),
            }
        return kwargs


def parse_client_opts(flag: str, values: Iterable[str], agent: str) -> ClientSettings:
    """``--consumer-opt``/``--producer-opt`` values as go-nsq's ConfigFlag reads them: the
    option name (dashes or underscores), then after a comma its value (bare means true)."""
    settings = ClientSettings(agent)
    for item in values:
        name, comma, text = item.partition(",")
        name = name.strip().replace("-", "_")
        text = text if comma else "true"
        if name in _CONNECTION_OPTS:
            parse, target = _CONNECTION_OPTS[name]
        elif name in _TLS_OPTS:
            parse, target = _TLS_OPTS[name], ""
        elif name in _CLIENT_OPTS:
            parse, target = _CLIENT_OPTS[name], ""
        else:
            raise UsageError(f"invalid value {item!r} for flag --{flag}: unsupported option {name}")
        try:
            value = parse(text)
        except ValueError as exc:
            raise UsageError(f"invalid value {item!r} for flag --{flag}: {exc}") from None
        if target:
            settings.connection[target] = value
        elif name in _TLS_OPTS:
            settings.tls[name] = value
        elif name != "max_in_flight":
            setattr(settings, name, value)
    if bool(settings.tls.get("tls_cert")) != bool(settings.tls.get("tls_key")):
        raise UsageError(f"--{flag}: tls_cert and tls_key must be given together")
    return settings


# --- HTTP queries ---------------------------------------------------------------------------


def _base_url(address: str) -> str:
    return address.rstrip("/") if "://" in address else f"http://{address}"


def get_json(address: str, path: str, timeout: float) -> Any:
    """GET ``path`` from an nsqd or nsqlookupd HTTP address and decode its JSON answer."""
    request = urllib.request.Request(
        _base_url(address) + path, headers={"Accept": "application/vnd.nsq; version=1.0"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def lookupd_producers(addresses: Iterable[str], topic: str, timeout: float) -> list[dict]:
    """The union of the nsqd producers of ``topic`` known to the lookupds (by HTTP address);
    OSError when no lookupd answers."""
    producers: dict[str, dict] = {}
    errors: list[str] = []
    addresses = list(addresses)
    path = "/lookup?" + urllib.parse.urlencode({"topic": topic})
    for address in addresses:
        try:
            reply = get_json(address, path, timeout)
        except (OSError, ValueError) as exc:
            errors.append(f"{address}: {exc}")
            continue
        for producer in reply.get("producers") or []:
            key = f"{producer['broadcast_address']}:{producer['http_port']}"
            producers.setdefault(key, producer)
    if errors and len(errors) == len(addresses):
        raise OSError("failed to query any nsqlookupd: " + "; ".join(errors))
    for error in errors:
        log.warning("lookupd query failed - %s", error)
    return list(producers.values())


def lookupd_topics(addresses: Iterable[str], timeout: float) -> list[str]:
    """The union of the topics the lookupds know; OSError when no lookupd answers."""
    topics: set[str] = set()
    answered = False
    for address in addresses:
        try:
            topics.update(get_json(address, "/topics", timeout).get("topics") or [])
            answered = True
        except (OSError, ValueError) as exc:
            log.warning("lookupd %s: could not retrieve topic list - %s", address, exc)
    if not answered:
        raise OSError("failed to query any nsqlookupd")
    return sorted(topics)


# --- subscribing ----------------------------------------------------------------------------


class Subscriber:
    """Consumes one topic/channel from nsqds given directly (reconnecting while they are away)
    or found through lookupds (polled every ``lookupd_poll_interval``).

    ``handler(message)`` runs on the connection's reading greenlet, one message at a time per
    connection; it finishes messages itself (``message.finish()``), now or later. ``close_wait``
    sends CLS and waits for nsqd's ``CLOSE_WAIT``: after that no more messages come, so FINs sent
    before ``close`` reach nsqd (the socket's receive side is empty, so the close is an orderly
    one, not a reset). What is never finished nor requeued waits in flight for its timeout:
    nsqd does not requeue on disconnect.
    """

    def __init__(
        self,
        topic: str,
        channel: str,
        handler: Callable[[Message], None],
        settings: ClientSettings,
        *,
        nsqd_tcp_addresses: Iterable[str] = (),
        lookupd_http_addresses: Iterable[str] = (),
        max_in_flight: int = 200,
        http_timeout: float = 5.0,
    ) -> None:
        self.topic = topic
        self.channel = channel
        self.handler = handler
        self.settings = settings
        self.nsqd_tcp_addresses = list(nsqd_tcp_addresses)
        self.lookupd_http_addresses = list(lookupd_http_addresses)
        self.max_in_flight = max_in_flight
        self.http_timeout = http_timeout
        self.connections: dict[str, NsqdTCPClient] = {}
        self._closing: dict[str, Event] = {}
        self._stopping = False
        self._sessions = Group()
        self._loops = Group()

    def start(self) -> None:
        for address in self.nsqd_tcp_addresses:
            self._loops.spawn(self._keep_connected, address)
        if self.lookupd_http_addresses:
            self._loops.spawn(self._poll_lookupd)

    @property
    def is_starved(self) -> bool:
        """go-nsq's IsStarved: some connection holds >= 85% of its RDY count in flight."""
        return any(
            conn.in_flight > 0 and conn.in_flight >= max(conn.ready_count * 0.85, 1)
            for conn in list(self.connections.values())
        )

    def close_wait(self, timeout: float = 5.0) -> None:
        """Stop connecting and ask every nsqd to stop sending (CLS); wait for ``CLOSE_WAIT``."""
        self._stopping = True
        self._loops.kill(block=False)
        for address, conn in list(self.connections.items()):
            try:
                conn.close()
            except (NSQException, OSError):
                self._closing[address].set()
        with gevent.Timeout(timeout, False):
            for event in list(self._closing.values()):
                event.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection (after ``close_wait``, and after the FINs were sent)."""
        self._stopping = True
        self._loops.kill(block=False)
        for conn in list(self.connections.values()):
            conn.close_stream()
        self._sessions.join(timeout)
        self._sessions.kill(block=False)

    def _keep_connected(self, address: str) -> None:
        host, port = split_host_port(address)
        delay = 0.25
        while not self._stopping:
            # its own greenlet: stopping kills this loop, never a session that is draining
            if self._sessions.spawn(self._session, host, port).get():
                delay = 0.25
            if self._stopping:
                return
            log.info("[%s] reconnecting in %.2fs", address, delay)
            gevent.sleep(delay)
            delay = min(delay * 2, 15.0)

    def _poll_lookupd(self) -> None:
        interval = self.settings.lookupd_poll_interval
        while not self._stopping:
            self._query_lookupd()
            gevent.sleep(interval * (1 + random.uniform(-0.1, 0.1)))

    def _query_lookupd(self) -> None:
        try:
            producers = lookupd_producers(
                self.lookupd_http_addresses, self.topic, self.http_timeout
            )
        except OSError as exc:
            log.error("error querying nsqlookupd - %s", exc)
            return
        for producer in producers:
            address = f"{producer['broadcast_address']}:{producer['tcp_port']}"
            if address not in self.connections and not self._stopping:
                self._sessions.spawn(
                    self._session, producer["broadcast_address"], producer["tcp_port"]
                )

    def _session(self, host: str, port: int) -> bool:
        """One connection's life; False if it failed before subscribing."""
        address = f"{host}:{port}"
        conn = NsqdTCPClient(host, port, **self.settings.connection_kwargs())
        try:
            conn.connect()
            conn.identify()
            conn.subscribe(self.topic, self.channel)
            conn.check_ok()
        except (NSQException, OSError) as exc:
            log.error("[%s] (%s/%s) connection failed - %s", address, self.topic, self.channel,
                      describe(exc))
            conn.close_stream()
            return False
        log.info("[%s] (%s/%s) connected", address, self.topic, self.channel)
        conn.on_message.connect(self._on_message, weak=False)
        self.connections[address] = conn
        self._closing[address] = Event()
        self._send_ready()
        try:
            self._read(conn, address)
        finally:
            self.connections.pop(address, None)
            self._closing.pop(address).set()
            conn.close_stream()
            log.info("[%s] (%s/%s) connection closed", address, self.topic, self.channel)
            self._send_ready()
        return True

    def _read(self, conn: NsqdTCPClient, address: str) -> None:
        try:
            while conn.is_connected:
                frame, data = conn.read_response()
                if frame == wire.FRAME_TYPE_RESPONSE and data == CLOSE_WAIT:
                    self._closing[address].set()
                elif frame == wire.FRAME_TYPE_ERROR:
                    log.error("[%s] error from nsqd - %s", address, describe(data))
        except (NSQException, OSError) as exc:
            if not self._stopping:
                log.warning("[%s] (%s/%s) connection lost - %s", address, self.topic,
                            self.channel, exc)

    def _on_message(self, conn: NsqdTCPClient, message: Message) -> None:
        attempts = self.settings.max_attempts
        if attempts and message.attempts > attempts:
            log.warning("msg %s attempted %d times, giving up", message.id.decode(),
                        message.attempts)
            finish(message)
            return
        self.handler(message)

    def _send_ready(self) -> None:
        """Share --max-in-flight among the connections (at least 1 each, while running)."""
        conns = list(self.connections.items())
        if not conns:
            return
        share = 0 if self._stopping else max(self.max_in_flight // len(conns), 1)
        if self.max_in_flight == 0:
            share = 0
        for address, conn in conns:
            if conn.ready_count != share and not self._closing[address].is_set():
                try:
                    conn.ready(share)
                except (NSQException, OSError) as exc:
                    log.warning("[%s] RDY %d failed - %s", address, share, exc)


def finish(message: Message) -> bool:
    """FIN a message; False (logged) when its connection is gone and nsqd will requeue it."""
    try:
        message.finish()
    except (NSQException, OSError) as exc:
        log.warning("FIN %s failed - %s", message.id.decode(), exc)
        return False
    return True


def requeue(message: Message) -> None:
    """REQ a message for immediate redelivery to another consumer (best effort: if the
    connection is gone, nsqd requeues it at its timeout anyway)."""
    try:
        message.requeue(0, False)
    except (NSQException, OSError) as exc:
        log.debug("REQ %s failed - %s", message.id.decode(), exc)


# --- publishing -----------------------------------------------------------------------------


class Publisher:
    """A PUB connection to one nsqd, reconnecting when asked to publish after a failure. Each
    message is its own PUB with its own ``OK`` (as go-nsq's Publish), several in flight at once.
    """

    def __init__(self, address: str, settings: ClientSettings) -> None:
        self.address = address
        self.host, self.port = split_host_port(address)
        self.settings = settings
        self.conn: NsqdTCPClient | None = None
        self.acked = 0  # of the bodies given to the last publish

    def publish(self, topic: str, bodies: list[bytes]) -> None:
        """PUB each body, then wait for every ``OK``; ``acked`` counts those received.
        OSError/NSQException when the connection fails; NSQErrorCode when nsqd refuses."""
        self.acked = 0
        if self.conn is None or not self.conn.is_connected:
            self._connect()
        assert self.conn is not None
        self.conn.send(b"".join(wire.publish(topic, body) for body in bodies))
        while self.acked < len(bodies):
            frame, data = self.conn.read_response()
            if frame == wire.FRAME_TYPE_ERROR:
                raise data
            if frame == wire.FRAME_TYPE_RESPONSE and data == wire.OK:
                self.acked += 1

    def _connect(self) -> None:
        conn = NsqdTCPClient(self.host, self.port, **self.settings.connection_kwargs())
        try:
            conn.connect()
            conn.identify()
        except BaseException:
            conn.close_stream()
            raise
        self.conn = conn
        log.info("[%s] connected", self.address)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close_stream()
            self.conn = None


def is_refusal(exc: BaseException) -> bool:
    """An NSQ error response (bad topic, message too big): retrying will not help."""
    return isinstance(exc, NSQErrorCode)


def describe(exc: BaseException) -> str:
    """An error as nsqd sent it (``E_BAD_MESSAGE PUB message too big``): gnsq keeps the code
    only as the class, and the text as bytes."""
    if isinstance(exc, NSQErrorCode):
        code = (type(exc).__doc__ or "E_INVALID").strip()
        text = exc.args[0] if exc.args else b""
        return f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
    return str(exc)


# --- signals --------------------------------------------------------------------------------


def on_stop_signals(stop: Callable[[], None], signals: Iterable[int] = ()) -> None:
    """SIGINT/SIGTERM (or ``signals``) start ``stop`` in its own greenlet; a second signal
    exits at once with status 1, for a stop that hangs."""
    started: list[gevent.Greenlet] = []

    def handle() -> None:
        if started:
            log.warning("second signal, exiting now")
            os._exit(1)
        started.append(gevent.spawn(stop))

    for signum in tuple(signals) or (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, handle)

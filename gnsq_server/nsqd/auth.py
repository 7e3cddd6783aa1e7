"""AUTH against --auth-http-address servers, as nsqd's internal/auth and clientV2 do it.

nsqd asks ``GET <endpoint>?common_name=&remote_ip=&secret=&tls=`` (keys sorted, as Go's
url.Values encodes them) with ``Accept: application/vnd.nsq; version=1.0``, trying the servers
from a random index until one answers. The answer is cached for its ``ttl`` seconds; a check
after that asks again. Authorizations hold unanchored regular expressions for the topic and
channels; publishing is checked with the channel "".

nsqd's ``E_AUTH_ERROR`` (failing to encode or send the AUTH reply) has no counterpart here:
replies are queued for the writer, whose failures close the connection instead.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import gevent
from gevent import socket

from ..lookupd.protocol_v1 import go_json_string
from ..wire import FatalClientError, go_quote, response_frame

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.nsq; version=1.0"
USER_AGENT = "Go-http-client/1.1"
PERMISSIONS = ("subscribe", "publish")


class AuthError(Exception):
    """The auth servers could not give a valid answer (details are logged, never sent)."""


@dataclass
class Authorization:
    topic: re.Pattern
    channels: list[re.Pattern]
    permissions: list[str]

    def is_allowed(self, topic: str, channel: str) -> bool:
        needed = "subscribe" if channel else "publish"
        if needed not in self.permissions or not self.topic.search(topic):
            return False
        return any(pattern.search(channel) for pattern in self.channels)


@dataclass
class AuthState:
    ttl: int
    identity: str = ""
    identity_url: str = ""
    authorizations: list[Authorization] = field(default_factory=list)
    expires: float = 0.0  # time.monotonic() deadline

    def is_allowed(self, topic: str, channel: str) -> bool:
        return any(auth.is_allowed(topic, channel) for auth in self.authorizations)

    def is_expired(self) -> bool:
        return time.monotonic() >= self.expires

    def response(self) -> bytes:
        """AUTH's reply: ``{"identity","identity_url","permission_count"}`` as Go writes it."""
        return response_frame(
            (
                f'{{"identity":{go_json_string(self.identity)},'
                f'"identity_url":{go_json_string(self.identity_url)},'
                f'"permission_count":{len(self.authorizations)}}}'
            ).encode()
        )


def _get(data: dict, name: str):
    """A field as Go's decoder finds it: exact key first, then any case-insensitive match."""
    if name in data:
        return data[name]
    for key, value in data.items():
        if key.lower() == name:
            return value
    return None


def _typed(value, kind, what: str):
    if value is None:
        return kind()
    if type(value) is not kind:
        raise AuthError(f"bad {what} in auth response")
    return value


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise AuthError(f"unable to compile {what} {pattern!r} {err}") from None


def parse_auth_response(body: bytes) -> AuthState:
    """Decode and validate an auth server's JSON answer as nsqd's QueryAuthd does."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise AuthError(f"bad auth response {body[:200]!r}") from err
    if not isinstance(data, dict):
        raise AuthError(f"bad auth response {body[:200]!r}")
    authorizations = []
    for item in _typed(_get(data, "authorizations"), list, "authorizations"):
        if not isinstance(item, dict):
            raise AuthError("bad authorization in auth response")
        permissions = _typed(_get(item, "permissions"), list, "permissions")
        for permission in permissions:
            if permission not in PERMISSIONS:
                raise AuthError(f"unknown permission {permission}")
        topic = _typed(_get(item, "topic"), str, "topic")
        channels = _typed(_get(item, "channels"), list, "channels")
        if not all(isinstance(c, str) for c in channels):
            raise AuthError("bad channels in auth response")
        authorizations.append(
            Authorization(
                topic=_compile(topic, "topic"),
                channels=[_compile(c, "channel") for c in channels],
                permissions=list(permissions),
            )
        )
    ttl = _typed(_get(data, "ttl"), int, "ttl")
    if ttl <= 0:
        raise AuthError(f"invalid TTL {ttl} (must be >0)")
    return AuthState(
        ttl=ttl,
        identity=_typed(_get(data, "identity"), str, "identity"),
        identity_url=_typed(_get(data, "identity_url"), str, "identity_url"),
        authorizations=authorizations,
        expires=time.monotonic() + ttl,
    )


def auth_endpoint(address: str) -> str:
    """``host:port`` means ``http://host:port/auth``; anything with ``://`` is used as is."""
    return address if "://" in address else f"http://{address}/auth"


def auth_query(remote_ip: str, tls: bool, secret: bytes, common_name: str) -> str:
    return urlencode(
        {
            "common_name": common_name,
            "remote_ip": remote_ip,
            "secret": secret,
            "tls": "true" if tls else "false",
        }
    )


class _HTTPConnection(http.client.HTTPConnection):
    """http.client over gevent's socket, so the query yields even without monkey-patching."""

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _client_ssl_context(root_ca_file: str) -> ssl.SSLContext:
    from gevent import ssl as gevent_ssl

    context = gevent_ssl.create_default_context()
    if root_ca_file:
        context.load_verify_locations(cafile=root_ca_file)
    return context


def query_authd(
    url: str, connect_timeout: float, request_timeout: float, root_ca_file: str = ""
) -> AuthState:
    """One GET against one auth server; the whole request is bounded by ``request_timeout``."""
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if parts.scheme == "https":
        context = _client_ssl_context(root_ca_file)
        conn: http.client.HTTPConnection = _HTTPSConnection(
            parts.hostname, parts.port, timeout=connect_timeout, context=context
        )
    else:
        conn = _HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    try:
        with gevent.Timeout(request_timeout, AuthError("auth request timed out")):
            conn.putrequest("GET", target, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept", ACCEPT)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read()
    except (OSError, http.client.HTTPException) as err:
        raise AuthError(f"{type(err).__name__}: {err}") from err
    finally:
        conn.close()
    if response.status != 200:
        raise AuthError(f"got response {response.status} {body[:200]!r}")
    return parse_auth_response(body)


def query_any_authd(
    opts, remote_ip: str, tls: bool, secret: bytes, common_name: str
) -> AuthState:
    """Ask the servers in turn, from a random one, until one gives a valid answer."""
    addresses = list(opts.auth_http_addresses)
    start = random.randrange(len(addresses))
    query = auth_query(remote_ip, tls, secret, common_name)
    for address in addresses[start:] + addresses[:start]:
        url = f"{auth_endpoint(address)}?{query}"
        try:
            return query_authd(
                url,
                opts.http_client_connect_timeout,
                opts.http_client_request_timeout,
                opts.tls_root_ca_file,
            )
        except AuthError as err:
            log.error("failed auth against %s - %s", address, err)
    raise AuthError("Unable to access auth server")


class ClientAuth:
    """One connection's AUTH secret and its cached answer; keeps the client's stats fields."""

    def __init__(self, opts, client) -> None:
        self.opts = opts
        self.client = client
        self.secret = b""
        self.state: AuthState | None = None

    def has_authorizations(self) -> bool:
        return self.state is not None and bool(self.state.authorizations)

    def authenticate(self, secret: bytes) -> bytes:
        """The AUTH command after its body was read: query, then nsqd's reply or error."""
        if self.has_authorizations():
            raise FatalClientError("E_INVALID", "AUTH already set")
        self.secret = secret
        try:
            state = self._query()
        except AuthError as err:
            # like nsqd, errors reaching the auth server are logged, never told to the client
            log.error("PROTOCOL(V2): [%s] AUTH failed %s", self.client.remote_address, err)
            raise FatalClientError("E_AUTH_FAILED", "AUTH failed") from None
        if not state.authorizations:
            raise FatalClientError("E_UNAUTHORIZED", "AUTH no authorizations found")
        return state.response()

    def _query(self) -> AuthState:
        client = self.client
        common_name = ""
        if client.tls:
            from .tls import peer_common_name

            common_name = peer_common_name(client.sock)
        state = query_any_authd(
            self.opts, remote_ip(client.remote_address), client.tls, self.secret, common_name
        )
        self.state = state
        client.authed = bool(state.authorizations)
        client.auth_identity = state.identity
        client.auth_identity_url = state.identity_url
        return state

    def check(self, cmd: str, topic: str, channel: str) -> None:
        """nsqd's CheckAuth: fatal errors unless this connection may ``cmd`` here."""
        if not self.has_authorizations():
            raise FatalClientError("E_AUTH_FIRST", f"AUTH required before {cmd}")
        state = self.state
        if state.is_expired():
            try:
                state = self._query()
            except AuthError as err:
                log.error("PROTOCOL(V2): [%s] AUTH failed %s", self.client.remote_address, err)
                raise FatalClientError("E_AUTH_FAILED", "AUTH failed") from None
        if not state.is_allowed(topic, channel):
            raise FatalClientError(
                "E_UNAUTHORIZED", f"AUTH failed for {cmd} on {go_quote(topic)} {go_quote(channel)}"
            )


def remote_ip(remote_address: str) -> str:
    """``1.2.3.4:5`` or ``[::1]:5`` -> the host part, as net.SplitHostPort gives it."""
    host = remote_address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host

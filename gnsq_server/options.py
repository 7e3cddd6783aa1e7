"""Option tables of nsqd, nsqlookupd and nsqadmin: flag, cfg key, kind, default, help, range.

Shared by the command-line flags, ``.ini`` files and nsqd's TOML files; ``config`` parses and
validates values against them. Pure data: no parsing, no I/O.
"""

from __future__ import annotations

import hashlib
import socket
import zlib
from dataclasses import dataclass
from typing import Any

NSQD = "nsqd"
NSQLOOKUPD = "nsqlookupd"
NSQADMIN = "nsqadmin"

# Option kinds.
INT = "int"
BOOL = "bool"
STR = "str"
DURATION = "duration"
STRS = "strs"  # list of str, repeatable flag
FLOATS = "floats"  # list of float, repeatable flag, each occurrence may be comma separated
LOG_LEVEL = "log_level"
TLS_REQUIRED = "tls_required"
TLS_MIN_VERSION = "tls_min_version"
IGNORED = "ignored"  # deprecated flag: accepted with any value, has no effect

TLS_NOT_REQUIRED = 0
TLS_REQUIRED_EXCEPT_HTTP = 1
TLS_REQUIRED_ALWAYS = 2
TLS_VERSIONS = {"tls1.0": 0x0301, "tls1.1": 0x0302, "tls1.2": 0x0303, "tls1.3": 0x0304}
LOG_LEVELS = {"debug": 1, "info": 2, "warn": 3, "error": 4, "fatal": 5}

# --- hostname-derived defaults -------------------------------------------------------------


def hostname() -> str:
    """The OS hostname, as Go's os.Hostname returns it (nsqd's broadcast_address default)."""
    return socket.gethostname()


def default_node_id(host: str | None = None) -> int:
    """nsqd's default --node-id: IEEE crc32 of the md5 digest of the hostname, mod 1024."""
    digest = hashlib.md5((hostname() if host is None else host).encode()).digest()
    return zlib.crc32(digest) % 1024


# --- the tables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option: its flag, cfg key (attribute name on Options), kind, default and help."""

    flag: str
    kind: str
    default: Any  # the typed value, or a zero-argument callable for host-derived defaults
    help: str
    cfg: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not self.cfg:
            object.__setattr__(self, "cfg", self.flag.replace("-", "_"))

    @property
    def repeatable(self) -> bool:
        return self.kind in (STRS, FLOATS)

    def default_value(self) -> Any:
        value = self.default() if callable(self.default) else self.default
        return list(value) if isinstance(value, list) else value


_COMMON_LOG = (
    Option("log-level", LOG_LEVEL, "info", "set log verbosity: debug, info, warn, error, or fatal"),
    # gnsq-only: nsqd logs to stderr only (nsqio/nsq#977).
    Option(
        "log-file", STR, "",
        "write log lines to this file instead of stdout (reopened on SIGHUP, for logrotate)",
    ),
    Option(
        "log-file-max-bytes", INT, 104857600,
        "rotate --log-file when it would grow past this size (0 disables size rotation)",
        minimum=0,
    ),
    Option(
        "log-file-backups", INT, 5, "rotated --log-file copies to keep (FILE.1 .. FILE.N)",
        minimum=0, maximum=1000,
    ),
)

NSQD_OPTIONS: tuple[Option, ...] = (
    *_COMMON_LOG,
    Option("log-prefix", STR, "[nsqd] ", "log message prefix"),
    Option("verbose", IGNORED, None, "[deprecated] has no effect, use --log-level"),
    Option(
        "node-id", INT, default_node_id,
        "unique part for message IDs, (int) in range [0,1024) (default is hash of hostname)",
        cfg="id", minimum=0, maximum=1023,
    ),
    Option("worker-id", IGNORED, None, "[deprecated] use --node-id"),
    Option("https-address", STR, "0.0.0.0:4152", "<addr>:<port> to listen on for HTTPS clients"),
    Option(
        "http-address", STR, "0.0.0.0:4151",
        "<addr>:<port> (or unix socket path) to listen on for HTTP clients; empty disables HTTP",
    ),
    Option(
        "tcp-address", STR, "0.0.0.0:4150",
        "<addr>:<port> (or unix socket path) to listen on for TCP clients",
    ),
    Option(
        "auth-http-address", STRS, [],
        "<addr>:<port> or a full url to query auth server (may be given multiple times)",
        cfg="auth_http_addresses",
    ),
    Option(
        "broadcast-address", STR, hostname,
        "address that will be registered with lookupd (defaults to the OS hostname)",
    ),
    Option(
        "broadcast-tcp-port", INT, 0,
        "TCP port that will be registered with lookupd (defaults to the TCP port nsqd listens on)",
        minimum=0, maximum=65535,
    ),
    Option(
        "broadcast-http-port", INT, 0,
        "HTTP port that will be registered with lookupd "
        "(defaults to the HTTP port nsqd listens on)",
        minimum=0, maximum=65535,
    ),
    Option(
        "lookupd-tcp-address", STRS, [], "lookupd TCP address (may be given multiple times)",
        cfg="nsqlookupd_tcp_addresses",
    ),
    Option("http-client-connect-timeout", DURATION, 2.0, "timeout for HTTP connect"),
    Option("http-client-request-timeout", DURATION, 5.0, "timeout for HTTP request"),
    Option("data-path", STR, "", "path to store disk-backed messages"),
    Option(
        "mem-queue-size", INT, 10000,
        "number of messages to keep in memory (per topic/channel)", minimum=0,
    ),
    Option(
        "max-bytes-per-file", INT, 104857600,
        "number of bytes per diskqueue file before rolling", minimum=1,
    ),
    Option("sync-every", INT, 2500, "number of messages per diskqueue fsync", minimum=1),
    Option("sync-timeout", DURATION, 2.0, "duration of time per diskqueue fsync"),
    Option(
        "queue-scan-worker-pool-max", INT, 4,
        "max concurrency for checking in-flight and deferred message timeouts", minimum=1,
    ),
    Option(
        "queue-scan-selection-count", INT, 20,
        "number of channels to check per cycle (every 100ms) for in-flight and deferred timeouts",
        minimum=1,
    ),
    Option(
        "msg-timeout", DURATION, 60.0, "default duration to wait before auto-requeing a message"
    ),
    Option(
        "max-msg-timeout", DURATION, 900.0, "maximum duration before a message will timeout"
    ),
    Option(
        "max-msg-size", INT, 1048576, "maximum size of a single message in bytes", minimum=1
    ),
    Option(
        "max-req-timeout", DURATION, 3600.0, "maximum requeuing timeout for a message"
    ),
    Option("max-body-size", INT, 5242880, "maximum size of a single command body", minimum=1),
    Option(
        "max-heartbeat-interval", DURATION, 60.0,
        "maximum client configurable duration of time between client heartbeats",
    ),
    Option("max-rdy-count", INT, 2500, "maximum RDY count for a client", minimum=0),
    Option(
        "max-output-buffer-size", INT, 65536,
        "maximum client configurable size (in bytes) for a client output buffer", minimum=0,
    ),
    Option(
        "max-output-buffer-timeout", DURATION, 30.0,
        "maximum client configurable duration of time between flushing to a client",
    ),
    Option(
        "min-output-buffer-timeout", DURATION, 0.025,
        "minimum client configurable duration of time between flushing to a client",
    ),
    Option(
        "output-buffer-timeout", DURATION, 0.25,
        "default duration of time between flushing data to clients",
    ),
    Option(
        "max-channel-consumers", INT, 0,
        "maximum channel consumer connection count per nsqd instance (default 0, i.e., unlimited)",
        minimum=0,
    ),
    Option("statsd-address", STR, "", "UDP <addr>:<port> of a statsd daemon for pushing stats"),
    Option("statsd-interval", DURATION, 60.0, "duration between pushing to statsd"),
    Option("statsd-mem-stats", BOOL, True, "toggle sending memory and GC stats to statsd"),
    Option(
        "statsd-prefix", STR, "nsq.%s",
        "prefix used for keys sent to statsd (%s for host replacement)",
    ),
    Option(
        "statsd-udp-packet-size", INT, 508, "the size in bytes of statsd UDP packets", minimum=1
    ),
    Option(
        "statsd-exclude-ephemeral", BOOL, False,
        "skip ephemeral topics and channels when sending stats to statsd",
    ),
    Option(
        "e2e-processing-latency-percentile", FLOATS, [],
        "message processing time percentiles (as float (0, 1.0]) to track "
        "(can be specified multiple times or comma separated '1.0,0.99,0.95', default none)",
        cfg="e2e_processing_latency_percentiles",
    ),
    Option(
        "e2e-processing-latency-window-time", DURATION, 600.0,
        "calculate end to end latency quantiles for this duration of time "
        "(ie: 60s would only show quantile calculations from the past 60 seconds)",
    ),
    Option("tls-cert", STR, "", "path to certificate file"),
    Option("tls-key", STR, "", "path to key file"),
    Option(
        "tls-client-auth-policy", STR, "",
        "client certificate auth policy ('require' or 'require-verify')",
    ),
    Option("tls-root-ca-file", STR, "", "path to certificate authority file"),
    Option(
        "tls-required", TLS_REQUIRED, TLS_NOT_REQUIRED,
        "require TLS for client connections (true, false, tcp-https)",
    ),
    Option(
        "tls-min-version", TLS_MIN_VERSION, TLS_VERSIONS["tls1.0"],
        "minimum SSL/TLS version acceptable ('tls1.0', 'tls1.1', 'tls1.2' or 'tls1.3')",
    ),
    Option("deflate", BOOL, True, "enable deflate feature negotiation (client compression)"),
    Option(
        "max-deflate-level", INT, 6,
        "max deflate compression level a client can negotiate (> values == > nsqd CPU usage)",
        minimum=1, maximum=9,
    ),
    Option("snappy", BOOL, True, "enable snappy feature negotiation (client compression)"),
    # gnsq-only options below this line.
    Option(
        "crash-safe", BOOL, False,
        "acknowledge a publish only after it is fsynced to disk; survives kill -9",
    ),
    Option(
        "retention-time", DURATION, 0.0,
        "crash-safe mode: keep consumed topic log segments this long for replay (0: delete)",
    ),
    Option(
        "retention-bytes", INT, 0,
        "crash-safe mode: keep up to this many bytes of consumed topic log per topic for "
        "replay (0: no byte limit, or delete if --retention-time is 0 too)",
        minimum=0,
    ),
    Option(
        "drain-timeout", DURATION, 0.0,
        "on SIGTERM/SIGINT, stop delivering and wait up to this long for consumers to finish "
        "in-flight messages before closing them (0: close at once, as nsqd does)",
    ),
    # Daemon-wide default delivery policy of every channel (nsqd/policy.py); a channel's own,
    # set with POST /channel/policy, overrides it. 0 turns a limit off.
    Option(
        "channel-max-attempts", INT, 0,
        "dead-letter a message delivered this many times when it times out or is requeued again",
        minimum=0, maximum=65535,
    ),
    Option(
        "channel-msg-ttl", DURATION, 0.0,
        "drop (or dead-letter, with a dead-letter topic set) messages older than this unsent",
    ),
    Option(
        "channel-max-depth", INT, 0,
        "most messages a channel queues; past it --channel-overflow applies",
        minimum=0, maximum=2147483647,
    ),
    Option(
        "channel-overflow", STR, "reject",
        "at --channel-max-depth: reject (refuse publishes), drop_oldest or dead_letter_oldest",
    ),
)

NSQLOOKUPD_OPTIONS: tuple[Option, ...] = (
    *_COMMON_LOG,
    Option("log-prefix", STR, "[nsqlookupd] ", "log message prefix"),
    Option("verbose", IGNORED, None, "[deprecated] has no effect, use --log-level"),
    Option("tcp-address", STR, "0.0.0.0:4160", "<addr>:<port> to listen on for TCP clients"),
    Option("http-address", STR, "0.0.0.0:4161", "<addr>:<port> to listen on for HTTP clients"),
    Option(
        "broadcast-address", STR, hostname,
        "address of this lookupd node, (default to the OS hostname)",
    ),
    Option(
        "inactive-producer-timeout", DURATION, 300.0,
        "duration of time a producer will remain in the active list since its last ping",
    ),
    Option(
        "tombstone-lifetime", DURATION, 45.0,
        "duration of time a producer will remain tombstoned if registration remains",
    ),
)

NSQADMIN_OPTIONS: tuple[Option, ...] = (
    *_COMMON_LOG,
    Option("log-prefix", STR, "[nsqadmin] ", "log message prefix"),
    Option("verbose", IGNORED, None, "[deprecated] has no effect, use --log-level"),
    Option("http-address", STR, "0.0.0.0:4171", "<addr>:<port> to listen on for HTTP clients"),
    Option("base-path", STR, "/", "URL base path"),
    Option("dev-static-dir", STR, "", "(development use only) [unused by gnsqadmin]"),
    # nsqadmin reads rates from graphite; gnsqadmin samples them itself (built-in charts). These
    # flags are accepted so an nsqadmin config starts, and have no effect.
    Option("graphite-url", STR, "", "graphite HTTP address [unsupported: charts are built in]"),
    Option("proxy-graphite", BOOL, False, "proxy HTTP requests to graphite [unsupported]"),
    Option(
        "statsd-counter-format", STR, "stats.counters.%s.count",
        "the counter stats key formatting of statsd [unsupported: graphite only]",
    ),
    Option(
        "statsd-gauge-format", STR, "stats.gauges.%s",
        "the gauge stats key formatting of statsd [unsupported: graphite only]",
    ),
    Option(
        "statsd-prefix", STR, "nsq.%s",
        "prefix used for keys sent to statsd [unsupported: graphite only]",
    ),
    Option(
        "statsd-interval", DURATION, 60.0,
        "time interval nsqd is configured to push to statsd [unsupported: graphite only]",
    ),
    Option(
        "notification-http-endpoint", STR, "",
        "HTTP endpoint (fully qualified) to which POST notifications of admin actions will be sent",
    ),
    Option(
        "lookupd-http-address", STRS, [], "lookupd HTTP address (may be given multiple times)",
        cfg="nsqlookupd_http_addresses",
    ),
    Option(
        "nsqd-http-address", STRS, [], "nsqd HTTP address (may be given multiple times)",
        cfg="nsqd_http_addresses",
    ),
    Option("http-client-connect-timeout", DURATION, 2.0, "timeout for HTTP connect"),
    Option("http-client-request-timeout", DURATION, 5.0, "timeout for HTTP request"),
    Option(
        "http-client-tls-insecure-skip-verify", BOOL, False,
        "configure the HTTP client to skip verification of TLS certificates",
    ),
    Option("http-client-tls-root-ca-file", STR, "", "path to CA file for the HTTP client"),
    Option("http-client-tls-cert", STR, "", "path to certificate file for the HTTP client"),
    Option("http-client-tls-key", STR, "", "path to key file for the HTTP client"),
    Option(
        "allow-config-from-cidr", STR, "127.0.0.1/8",
        "A CIDR from which to allow HTTP requests to the /config endpoint",
    ),
    Option(
        "acl-http-header", STR, "X-Forwarded-User",
        "HTTP header to check for authenticated admin users",
    ),
    Option(
        "admin-user", STRS, [],
        "admin user (may be given multiple times; if specified, only these users will be able to "
        "perform privileged actions; acl-http-header is used to determine the authenticated user)",
        cfg="admin_users",
    ),
    # gnsq-only options below this line.
    Option(
        "refresh-interval", DURATION, 2.0,
        "how often pages refresh and message rates are sampled for the charts",
    ),
)

_TABLES = {NSQD: NSQD_OPTIONS, NSQLOOKUPD: NSQLOOKUPD_OPTIONS, NSQADMIN: NSQADMIN_OPTIONS}


def option_table(daemon: str) -> tuple[Option, ...]:
    """The option table of ``nsqd``, ``nsqlookupd``, ``nsqadmin`` or a registered tool."""
    try:
        return _TABLES[daemon]
    except KeyError:
        raise ValueError(f"unknown daemon {daemon!r} (nsqd or nsqlookupd)") from None


def register_option_table(name: str, table: tuple[Option, ...]) -> None:
    """Add a command's table, so the command-line tools (``gnsq_server.tools``) parse and
    validate their flags with the daemons' machinery."""
    _TABLES[name] = table


def find_option(daemon: str, name: str) -> Option | None:
    """Look an option up by flag name (``mem-queue-size``, dashes optional) or cfg key."""
    name = name.lstrip("-")
    for opt in option_table(daemon):
        if name in (opt.flag, opt.cfg):
            return opt
    return None

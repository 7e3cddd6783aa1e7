"""Option tables, Go flag forms, config files, validation and GET /config rendering."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from gnsq_server import config, config_sources, gosyntax
from gnsq_server.config import (
    NSQD,
    NSQLOOKUPD,
    ConfigError,
    config_endpoint_value,
    default_options,
    load_options,
)
from gnsq_server.config_sources import normalize_go_flags
from gnsq_server.gosyntax import parse_duration, parse_duration_ns

REPO = Path(__file__).resolve().parents[2]


def flags_from_argv(daemon: str, argv: list[str]) -> dict[str, object]:
    """What the click command hands load_options: normalised ``--flag=value`` tokens, grouped."""
    flags: dict[str, object] = {}
    for token in normalize_go_flags(daemon, argv):
        assert token.startswith("--") and "=" in token, token
        name, _, value = token[2:].partition("=")
        opt = config.find_option(daemon, name)
        if opt.repeatable:
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = value
    return flags


def load_argv(argv: list[str], daemon: str = NSQD, config_file: str | None = None):
    return load_options(daemon, flags_from_argv(daemon, argv), config_file)


TLS = ["--tls-cert=c.pem", "--tls-key=k.pem"]

FLAG_FORMS = [
    (["--mem-queue-size", "5"], {"mem_queue_size": 5}),
    (["--mem-queue-size=5"], {"mem_queue_size": 5}),
    (["-mem-queue-size=5"], {"mem_queue_size": 5}),
    (["-mem-queue-size", "5"], {"mem_queue_size": 5}),
    (["--mem-queue-size=1", "--mem-queue-size=2"], {"mem_queue_size": 2}),
    (["--node-id=0x10"], {"id": 16}),
    (["-node-id", "017"], {"id": 15}),
    (["--snappy=false"], {"snappy": False}),
    (["--snappy=0"], {"snappy": False}),
    (["-snappy=f"], {"snappy": False}),
    (["--snappy=true"], {"snappy": True}),
    (["--snappy=1"], {"snappy": True}),
    (["--deflate", "false"], {"deflate": False}),
    (["--statsd-exclude-ephemeral"], {"statsd_exclude_ephemeral": True}),
    (["-crash-safe"], {"crash_safe": True}),
    (["--crash-safe", "--mem-queue-size", "3"], {"crash_safe": True, "mem_queue_size": 3}),
    (["--msg-timeout=250ms"], {"msg_timeout": 0.25}),
    (["--msg-timeout", "1m0s"], {"msg_timeout": 60.0}),
    (["-max-req-timeout=1.5h"], {"max_req_timeout": 5400.0}),
    (["--sync-timeout=300us"], {"sync_timeout": 0.0003}),
    (["--sync-timeout=0"], {"sync_timeout": 0.0}),
    (
        ["--lookupd-tcp-address", "a:4160", "--lookupd-tcp-address", "b:4160"],
        {"nsqlookupd_tcp_addresses": ["a:4160", "b:4160"]},
    ),
    (
        ["-lookupd-tcp-address=a:4160", "--lookupd-tcp-address=b:4160"],
        {"nsqlookupd_tcp_addresses": ["a:4160", "b:4160"]},
    ),
    (["--auth-http-address", "http://x/auth"], {"auth_http_addresses": ["http://x/auth"]}),
    (
        [
            "--e2e-processing-latency-percentile=0.5,1.0",
            "-e2e-processing-latency-percentile",
            "0.99",
        ],
        {"e2e_processing_latency_percentiles": [1.0, 0.99, 0.5]},
    ),
    (["--tls-required=tcp-https", *TLS], {"tls_required": 1}),
    (["--tls-required", *TLS], {"tls_required": 2}),
    (["--tls-required", "tcp-https", *TLS], {"tls_required": 1}),
    (["--tls-required=false"], {"tls_required": 0}),
    (["--tls-client-auth-policy=require", *TLS], {"tls_required": 2}),
    (["--tls-min-version=TLS1.2"], {"tls_min_version": 0x0303}),
    (["--tls-min-version", "tls1.3"], {"tls_min_version": 0x0304}),
    (["--log-level=WARN"], {"log_level": "warn"}),
    (["--log-level", "warning"], {"log_level": "warn"}),
    (["-log-level=debug"], {"log_level": "debug"}),
    (["--log-prefix", "[x] "], {"log_prefix": "[x] "}),
    (["--http-address="], {"http_address": ""}),
    (["--data-path", "-odd-dir"], {"data_path": "-odd-dir"}),
    (["--broadcast-http-port=4999"], {"broadcast_http_port": 4999}),
    (["--verbose", "--worker-id=3"], {"mem_queue_size": 10000}),
    (["--verbose=false", "-worker-id", "7"], {"mem_queue_size": 10000}),
]


@pytest.mark.parametrize(("argv", "expected"), FLAG_FORMS, ids=[" ".join(a) for a, _ in FLAG_FORMS])
def test_flag_forms(argv, expected):
    opts = load_argv(argv)
    for key, value in expected.items():
        assert getattr(opts, key) == value


def test_deprecated_flags_are_not_options():
    opts = load_argv(["--verbose", "--worker-id=3"])
    assert not hasattr(opts, "verbose") and not hasattr(opts, "worker_id")


@pytest.mark.parametrize(
    ("argv", "normalised"),
    [
        (["-h"], ["--help"]),
        (["-help"], ["--help"]),
        (["-version"], ["--version"]),
        (["--version=true"], ["--version"]),
        (["--version=false"], []),
        (["-c", "x.ini"], ["--config=x.ini"]),
        (["-config=x.toml"], ["--config=x.toml"]),
        (["--config", "x.toml"], ["--config=x.toml"]),
        (["-bogus=1"], ["--bogus=1"]),
        (["--snappy", "extra"], ["--snappy=true", "extra"]),
        (["--mem-queue-size"], ["--mem-queue-size"]),
        (["--", "--snappy"], ["--", "--snappy"]),
    ],
)
def test_normalize_go_flags(argv, normalised):
    assert normalize_go_flags(NSQD, argv) == normalised


def test_lookupd_flags():
    opts = load_argv(
        ["-tombstone-lifetime=30s", "--inactive-producer-timeout", "1m", "--tcp-address=:4160"],
        NSQLOOKUPD,
    )
    assert (opts.tombstone_lifetime, opts.inactive_producer_timeout) == (30.0, 60.0)
    assert opts.tcp_address == ":4160"
    assert opts.daemon == NSQLOOKUPD


# --- defaults ------------------------------------------------------------------------------

LOG_FILE_DEFAULTS = {"log_file": "", "log_file_max_bytes": 104857600, "log_file_backups": 5}

NSQD_DEFAULTS = {
    "log_level": "info",
    **LOG_FILE_DEFAULTS,
    "log_prefix": "[nsqd] ",
    "tcp_address": "0.0.0.0:4150",
    "http_address": "0.0.0.0:4151",
    "https_address": "0.0.0.0:4152",
    "broadcast_tcp_port": 0,
    "broadcast_http_port": 0,
    "nsqlookupd_tcp_addresses": [],
    "auth_http_addresses": [],
    "http_client_connect_timeout": 2.0,
    "http_client_request_timeout": 5.0,
    "data_path": "",
    "mem_queue_size": 10000,
    "max_bytes_per_file": 104857600,
    "sync_every": 2500,
    "sync_timeout": 2.0,
    "queue_scan_worker_pool_max": 4,
    "queue_scan_selection_count": 20,
    "msg_timeout": 60.0,
    "max_msg_timeout": 900.0,
    "max_msg_size": 1048576,
    "max_req_timeout": 3600.0,
    "max_body_size": 5242880,
    "max_heartbeat_interval": 60.0,
    "max_rdy_count": 2500,
    "max_output_buffer_size": 65536,
    "max_output_buffer_timeout": 30.0,
    "min_output_buffer_timeout": 0.025,
    "output_buffer_timeout": 0.25,
    "max_channel_consumers": 0,
    "statsd_address": "",
    "statsd_interval": 60.0,
    "statsd_mem_stats": True,
    "statsd_prefix": "nsq.%s",
    "statsd_udp_packet_size": 508,
    "statsd_exclude_ephemeral": False,
    "e2e_processing_latency_percentiles": [],
    "e2e_processing_latency_window_time": 600.0,
    "tls_cert": "",
    "tls_key": "",
    "tls_client_auth_policy": "",
    "tls_root_ca_file": "",
    "tls_required": 0,
    "tls_min_version": 0x0301,
    "deflate": True,
    "max_deflate_level": 6,
    "snappy": True,
    "crash_safe": False,
    "drain_timeout": 0.0,
    "retention_time": 0.0,
    "retention_bytes": 0,
    "channel_max_attempts": 0,
    "channel_msg_ttl": 0.0,
    "channel_max_depth": 0,
    "channel_overflow": "reject",
}

LOOKUPD_DEFAULTS = {
    "log_level": "info",
    **LOG_FILE_DEFAULTS,
    "log_prefix": "[nsqlookupd] ",
    "tcp_address": "0.0.0.0:4160",
    "http_address": "0.0.0.0:4161",
    "inactive_producer_timeout": 300.0,
    "tombstone_lifetime": 45.0,
}


def test_nsqd_defaults():
    opts = default_options(NSQD)
    host = socket.gethostname()
    assert opts.as_dict() == {**NSQD_DEFAULTS, "id": config.default_node_id(host),
                              "broadcast_address": host}


def test_nsqlookupd_defaults():
    opts = default_options(NSQLOOKUPD)
    assert opts.as_dict() == {**LOOKUPD_DEFAULTS, "broadcast_address": socket.gethostname()}


@pytest.mark.parametrize(("host", "node_id"), [("nsq-fixture", 302)])
def test_node_id_formula(host, node_id):
    # crc32(md5(hostname)) % 1024; the fixture README gives 302 for "nsq-fixture".
    assert config.default_node_id(host) == node_id


def test_node_id_default_follows_hostname():
    assert default_options(NSQD).id == config.default_node_id(socket.gethostname())


def test_table_shape():
    for daemon in (NSQD, NSQLOOKUPD):
        table = config.option_table(daemon)
        assert len({o.flag for o in table}) == len(table)
        assert len({o.cfg for o in table}) == len(table)
        assert all(o.help and "\n" not in o.help for o in table)
    cfg = {o.flag: o.cfg for o in config.option_table(NSQD)}
    assert cfg["node-id"] == "id"
    assert cfg["lookupd-tcp-address"] == "nsqlookupd_tcp_addresses"
    assert cfg["auth-http-address"] == "auth_http_addresses"
    assert cfg["e2e-processing-latency-percentile"] == "e2e_processing_latency_percentiles"
    assert cfg["crash-safe"] == "crash_safe"


def test_default_options_overrides():
    opts = default_options(
        NSQD, msg_timeout=1.5, sync_timeout="250ms", tls_required=1, tls_cert="c", tls_key="k",
        nsqlookupd_tcp_addresses=["127.0.0.1:4160"], log_level="DEBUG",
    )
    assert opts.msg_timeout == 1.5 and opts.sync_timeout == 0.25
    assert opts.tls_required == 1 and opts.log_level == "debug"
    assert opts.nsqlookupd_tcp_addresses == ["127.0.0.1:4160"]
    unknown = r"^node_id: unknown nsqd option \(from argument node_id\)$"
    with pytest.raises(ConfigError, match=unknown):
        default_options(NSQD, node_id=3)
    with pytest.raises(ConfigError, match="max_deflate_level"):
        default_options(NSQD, max_deflate_level=10)


def test_replace_validates_and_copies():
    opts = default_options(NSQD)
    changed = opts.replace(log_level="error", nsqlookupd_tcp_addresses=["nope:4160"])
    assert (changed.log_level, changed.nsqlookupd_tcp_addresses) == ("error", ["nope:4160"])
    assert opts.log_level == "info" and opts.nsqlookupd_tcp_addresses == []
    assert changed != opts and changed.replace(log_level="info",
                                               nsqlookupd_tcp_addresses=[]) == opts
    with pytest.raises(ConfigError, match="log_level"):
        opts.replace(log_level="loud")


# --- config files --------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_precedence_flags_over_ini_over_defaults(tmp_path):
    text = "[nsqd]\nmem_queue_size = 7\nmsg_timeout = 2s\nsnappy = false\n"
    ini = write(tmp_path, "nsqd.ini", text)
    opts = load_argv(["--mem-queue-size=9", "--snappy"], config_file=ini)
    assert opts.mem_queue_size == 9  # flag beats file
    assert opts.msg_timeout == 2.0  # file beats default
    assert opts.snappy is True  # an explicit bare bool beats the file
    assert opts.max_rdy_count == 2500  # default
    assert load_argv([], config_file=ini).snappy is False


def test_precedence_flags_over_toml(tmp_path):
    toml = write(tmp_path, "nsqd.cfg", 'mem_queue_size = 7\nnsqlookupd_tcp_addresses = ["a:1"]\n')
    opts = load_argv(["--lookupd-tcp-address=b:2"], config_file=toml)
    assert opts.mem_queue_size == 7 and opts.nsqlookupd_tcp_addresses == ["b:2"]


def test_ini_format(tmp_path):
    ini = write(
        tmp_path,
        "both.ini",
        "[nsqlookupd]\ntcp_address = 127.0.0.1:4160\n\n"
        "[nsqd]\n"
        'log_prefix = "[mine] "\n'
        "http_address =\n"
        "nsqlookupd_tcp_addresses =\n    10.0.0.1:4160\n    10.0.0.2:4160\n"
        "auth_http_addresses = a:1, b:2  # inline comment\n"
        "e2e_processing_latency_percentiles = 0.5, 0.99,1.0\n"
        "statsd_prefix = nsq.%s.x\n"
        "TLS_MIN_VERSION = tls1.1\n"
        "tls_required = tcp-https\ntls_cert = c.pem\ntls_key = k.pem\n",
    )
    opts = load_options(NSQD, {}, ini)
    assert opts.log_prefix == "[mine] "
    assert opts.http_address == ""
    assert opts.nsqlookupd_tcp_addresses == ["10.0.0.1:4160", "10.0.0.2:4160"]
    assert opts.auth_http_addresses == ["a:1", "b:2"]
    assert opts.e2e_processing_latency_percentiles == [1.0, 0.99, 0.5]
    assert opts.statsd_prefix == "nsq.%s.x"
    assert (opts.tls_min_version, opts.tls_required) == (0x0302, 1)
    assert load_options(NSQLOOKUPD, {}, ini).tcp_address == "127.0.0.1:4160"


def test_toml_file(tmp_path):
    toml = write(
        tmp_path,
        "nsqd.toml",
        "\n".join(
            [
                "id = 12",
                'log_level = "debug"',
                "msg_timeout = 1500",  # go-options: ints are milliseconds
                'max_req_timeout = "2h"',
                "snappy = false",
                "tls_required = true",
                'tls_cert = "c.pem"',
                'tls_key = "k.pem"',
                'tls_min_version = "tls1.2"',
                'nsqlookupd_tcp_addresses = ["127.0.0.1:4160", "127.0.0.2:4160"]',
                "e2e_processing_latency_percentiles = [0.5, 1]",
                "verbose = true",
                "",
            ]
        ),
    )
    opts = load_options(NSQD, {}, toml)
    assert opts.id == 12 and opts.log_level == "debug"
    assert opts.msg_timeout == 1.5 and opts.max_req_timeout == 7200.0
    assert opts.snappy is False and opts.tls_required == 2 and opts.tls_min_version == 0x0303
    assert opts.nsqlookupd_tcp_addresses == ["127.0.0.1:4160", "127.0.0.2:4160"]
    assert opts.e2e_processing_latency_percentiles == [1.0, 0.5]


def test_toml_daemon_table(tmp_path):
    toml = write(tmp_path, "l.toml", '[nsqlookupd]\ntombstone_lifetime = "10s"\n')
    assert load_options(NSQLOOKUPD, {}, toml).tombstone_lifetime == 10.0


def test_sample_configs_load_and_list_every_option():
    nsqd = load_options(NSQD, {}, str(REPO / "conf/nsqd.ini"))
    assert (nsqd.tcp_address, nsqd.http_address) == ("127.0.0.1:4150", "127.0.0.1:4151")
    assert nsqd.data_path == "data/nsqd"
    assert nsqd.nsqlookupd_tcp_addresses == ["127.0.0.1:4160"]
    lookupd = load_options(NSQLOOKUPD, {}, str(REPO / "conf/nsqlookupd.ini"))
    assert (lookupd.tcp_address, lookupd.http_address) == ("127.0.0.1:4160", "127.0.0.1:4161")
    for daemon in (NSQD, NSQLOOKUPD):
        text = (REPO / f"conf/{daemon}.ini").read_text()
        for opt in config.option_table(daemon):
            if opt.kind == config.IGNORED:
                continue
            line = re.search(rf"^(# )?{opt.cfg} =(.*)$", text, re.M)
            assert line, f"{opt.cfg} missing from conf/{daemon}.ini"
            if line.group(1) and opt.cfg not in ("id", "broadcast_address"):
                shown = line.group(2).strip()
                shown = shown[1:-1] if shown.startswith('"') else shown
                assert shown == config_sources.default_text(opt), opt.cfg


# --- errors --------------------------------------------------------------------------------

ERRORS = [
    # (flags, file name, file text, key, source kind, words in the problem)
    ({}, "x.ini", "[nsqd]\nfoo = 1\n", "foo", "file", "unknown nsqd option"),
    ({}, "x.toml", "foo = 1\n", "foo", "file", "unknown nsqd option"),
    ({"no-such-flag": "1"}, None, None, "no-such-flag", "flag", "unknown"),
    ({"msg-timeout": "60"}, None, None, "msg_timeout", "flag", "missing unit"),
    ({"msg-timeout": "1x"}, None, None, "msg_timeout", "flag", 'unknown unit "x"'),
    ({}, "x.ini", "[nsqd]\nmsg_timeout = soon\n", "msg_timeout", "file", "invalid duration"),
    ({}, "x.toml", 'sync_timeout = "-1s"\n', "sync_timeout", "file", "negative"),
    ({"mem-queue-size": "ten"}, None, None, "mem_queue_size", "flag", "invalid integer"),
    ({}, "x.ini", "[nsqd]\nmem_queue_size = 1.5\n", "mem_queue_size", "file", "invalid integer"),
    ({}, "x.toml", 'mem_queue_size = "x"\n', "mem_queue_size", "file", "invalid integer"),
    ({"mem-queue-size": "-1"}, None, None, "mem_queue_size", "flag", "out of range"),
    ({"node-id": "1024"}, None, None, "id", "flag", "out of range"),
    ({}, "x.ini", "[nsqd]\nid = -1\n", "id", "file", "out of range"),
    ({"max-deflate-level": "0"}, None, None, "max_deflate_level", "flag", "[1, 9]"),
    ({}, "x.toml", "max_deflate_level = 10\n", "max_deflate_level", "file", "[1, 9]"),
    (
        {"e2e-processing-latency-percentile": ["0"]}, None, None,
        "e2e_processing_latency_percentiles", "flag", "(0, 1]",
    ),
    (
        {}, "x.ini", "[nsqd]\ne2e_processing_latency_percentiles = 0.5, 1.5\n",
        "e2e_processing_latency_percentiles", "file", "(0, 1]",
    ),
    ({"broadcast-tcp-port": "70000"}, None, None, "broadcast_tcp_port", "flag", "out of range"),
    ({"tls-required": "maybe"}, None, None, "tls_required", "flag", "tcp-https"),
    ({}, "x.ini", "[nsqd]\ntls_required = 2\n", "tls_required", "file", "invalid tls_required"),
    ({"log-level": "loud"}, None, None, "log_level", "flag", "invalid log level"),
    ({}, "x.toml", 'log_level = "verbose"\n', "log_level", "file", "invalid log level"),
    ({"tls-min-version": "ssl3.0"}, None, None, "tls_min_version", "flag", "tls1.0"),
    ({"snappy": "yes"}, None, None, "snappy", "flag", "invalid boolean"),
    ({"tls-required": "true"}, None, None, "tls_required", "flag", "without TLS key and cert"),
    (
        {}, "x.ini", "[nsqd]\ntls_client_auth_policy = require\n",
        "tls_client_auth_policy", "file", "without TLS key and cert",
    ),
    (
        {"tls-client-auth-policy": "sometimes"}, None, None,
        "tls_client_auth_policy", "flag", "require",
    ),
    ({"tls-cert": "c.pem"}, None, None, "tls_cert", "flag", "tls_key is not"),
    ({}, "x.ini", "[nsqlookupd]\ntcp_address = :4160\n", "config", "file", "no [nsqd] section"),
    ({}, "x.ini", "mem_queue_size = 1\n", "config", "file", "invalid ini file"),
    ({}, "x.toml", "mem_queue_size = = 1\n", "config", "file", "invalid TOML"),
    ({}, "x.toml", "nsqlookupd_tcp_addresses = 5\n", "nsqlookupd_tcp_addresses", "file", "list"),
    # addresses, checked before anything is bound
    ({"tcp-address": "localhost"}, None, None, "tcp_address", "flag", "missing port"),
    ({}, "x.ini", "[nsqd]\nhttp_address = 0.0.0.0:99999\n", "http_address", "file", "port"),
    ({"tcp-address": ""}, None, None, "tcp_address", "flag", "address is required"),
    ({}, "x.toml", 'statsd_address = "statsd"\n', "statsd_address", "file", "missing port"),
    (
        {"lookupd-tcp-address": ["127.0.0.1:4160", "a:b:c"]}, None, None,
        "nsqlookupd_tcp_addresses", "flag", "too many colons",
    ),
    # gnsq-only options
    ({"log-file-backups": "-1"}, None, None, "log_file_backups", "flag", "out of range"),
    ({}, "x.ini", "[nsqd]\ndrain_timeout = 5\n", "drain_timeout", "file", "missing unit"),
    # two options in conflict: both named, each with its source
    (
        {"min-output-buffer-timeout": "1m"}, None, None,
        "min_output_buffer_timeout", "flag", "max_output_buffer_timeout (30s, from default)",
    ),
    (
        {"statsd-interval": "0s"}, "x.ini", "[nsqd]\nstatsd_address = 127.0.0.1:8125\n",
        "statsd_interval", "flag", "statsd_address (127.0.0.1:8125, from file",
    ),
]


@pytest.mark.parametrize(
    ("flags", "name", "text", "key", "source", "problem"),
    ERRORS,
    ids=[f"{e[3]}-{e[1] or 'flag'}-{i}" for i, e in enumerate(ERRORS)],
)
def test_config_errors(tmp_path, flags, name, text, key, source, problem):
    path = write(tmp_path, name, text) if name else None
    with pytest.raises(ConfigError) as info:
        load_options(NSQD, flags, path)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.key == key and message.startswith(f"{key}: ")
    expected_source = f"file {path}" if source == "file" else f"flag --{next(iter(flags))}"
    assert err.source == expected_source and message.endswith(f"(from {expected_source})")
    assert problem in err.problem


def test_flag_error_names_the_flag_and_beats_valid_file(tmp_path):
    ini = write(tmp_path, "x.ini", "[nsqd]\nmem_queue_size = 5\n")
    with pytest.raises(ConfigError, match=r"^mem_queue_size: .* \(from flag --mem-queue-size\)$"):
        load_argv(["-mem-queue-size", "x"], config_file=ini)
    # every value given is checked, even one a flag overrides (nsqd would skip that one)
    bad = write(tmp_path, "bad.ini", "[nsqd]\nmem_queue_size = x\n")
    with pytest.raises(ConfigError, match="from file"):
        load_argv(["--mem-queue-size=5"], config_file=bad)


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.ini")
    expected = rf"^config: cannot read .*\(from file {re.escape(missing)}\)$"
    with pytest.raises(ConfigError, match=expected):
        load_options(NSQD, {}, missing)


# --- durations -----------------------------------------------------------------------------

DURATIONS = [
    ("0", 0),
    ("0s", 0),
    ("-0", 0),
    ("1ns", 1),
    ("300us", 300_000),
    ("300\u00b5s", 300_000),
    ("300\u03bcs", 300_000),
    ("25ms", 25_000_000),
    ("250ms", 250_000_000),
    ("1.5s", 1_500_000_000),
    (".5s", 500_000_000),
    ("1.s", 1_000_000_000),
    ("2s", 2_000_000_000),
    ("1m", 60_000_000_000),
    ("1m0s", 60_000_000_000),
    ("1h", 3_600_000_000_000),
    ("1.5h", 5_400_000_000_000),
    ("1h2m3s4ms5us6ns", 3_723_004_005_006),
    ("+5s", 5_000_000_000),
    ("-1m30s", -90_000_000_000),
]


@pytest.mark.parametrize(("text", "ns"), DURATIONS)
def test_parse_duration(text, ns):
    assert parse_duration_ns(text) == ns
    assert parse_duration(text) == pytest.approx(ns / 1e9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("1", 'time: missing unit in duration "1"'),
        ("60000", 'time: missing unit in duration "60000"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        (".", 'time: invalid duration "."'),
        ("s", 'time: invalid duration "s"'),
        ("-", 'time: invalid duration "-"'),
        ("3000000h", 'time: invalid duration "3000000h"'),
    ],
)
def test_parse_duration_errors(text, message):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1e-9, "1ns"),
        (0.0000015, "1.5\u00b5s"),
        (0.025, "25ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (45, "45s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (300, "5m0s"),
        (900, "15m0s"),
        (3600, "1h0m0s"),
        (5400, "1h30m0s"),
        (-2, "-2s"),
    ],
)
def test_format_duration(seconds, text):
    assert gosyntax.format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("ns", [1, 999, 1_000, 1_001, 999_999_999, 10**9, 61 * 10**9 + 7, 10**15])
def test_duration_round_trip_ns(ns):
    assert parse_duration_ns(gosyntax.format_duration_ns(ns)) == ns


# --- GET /config/<opt> ---------------------------------------------------------------------


def fixture_like() -> config.Options:
    return default_options(
        NSQD, tcp_address="127.0.0.1:4150", http_address="127.0.0.1:4151",
        broadcast_address="127.0.0.1",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tcp_address", "127.0.0.1:4150"),
        ("https_address", "0.0.0.0:4152"),
        ("broadcast_address", "127.0.0.1"),
        ("log_prefix", "[nsqd] "),
        ("data_path", ""),
        ("statsd_prefix", "nsq.127_0_0_1_4151."),
        ("tls_min_version", 769),
        ("tls_required", 0),
        ("log_level", 2),
        ("msg_timeout", 60_000_000_000),
        ("min_output_buffer_timeout", 25_000_000),
        ("tombstone_lifetime", KeyError),
        ("nsqlookupd_tcp_addresses", []),
        ("e2e_processing_latency_percentiles", []),
        ("mem_queue_size", 10000),
        ("snappy", True),
        ("max_deflate_level", 6),
        ("verbose", KeyError),
        ("worker_id", KeyError),
        ("logger", KeyError),
        ("client_timeout", KeyError),
        ("queue_scan_interval", KeyError),
        ("node_id", KeyError),
    ],
)
def test_config_endpoint_value(key, value):
    opts = fixture_like()
    if value is KeyError:
        with pytest.raises(KeyError):
            config_endpoint_value(opts, key, http_port=4151)
    else:
        got = config_endpoint_value(opts, key, http_port=4151)
        assert got == value and type(got) is type(value)


def test_config_endpoint_value_follows_changes():
    opts = fixture_like().replace(log_level="WARN", nsqlookupd_tcp_addresses=["nope:4160"])
    assert config_endpoint_value(opts, "log_level") == 3
    assert config_endpoint_value(opts, "nsqlookupd_tcp_addresses") == ["nope:4160"]
    assert config_endpoint_value(opts, "id") == opts.id
    # the actual HTTP port when broadcast_http_port is 0; the flag's port wins when set
    assert config_endpoint_value(opts, "statsd_prefix", http_port=5000) == "nsq.127_0_0_1_5000."
    opts = opts.replace(broadcast_http_port=6000, statsd_prefix="app.%s.nsq.")
    assert config_endpoint_value(opts, "statsd_prefix", http_port=5000) == "app.127_0_0_1_6000.nsq."
    assert config_endpoint_value(opts.replace(statsd_prefix=""), "statsd_prefix") == ""


@pytest.mark.parametrize(
    ("prefix", "host", "port", "expanded"),
    [
        ("nsq.%s", "127.0.0.1", 4151, "nsq.127_0_0_1_4151."),
        ("nsq.%s", "::1", 4151, "nsq.[__1]_4151."),
        ("nsq", "h", 1, "nsq."),
        ("", "h", 1, ""),
    ],
)
def test_expand_statsd_prefix(prefix, host, port, expanded):
    assert config.expand_statsd_prefix(prefix, host, port) == expanded


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:4150", ("127.0.0.1", 4150)),
        ("[::1]:4150", ("::1", 4150)),
        (":4150", ("", 4150)),
        ("localhost:0", ("localhost", 0)),
        ("127.0.0.1", ValueError),
        ("::1:4150", ValueError),
        ("[::1]", ValueError),
        ("h:port", ValueError),
        ("h:70000", ValueError),
        ("/tmp/nsqd.sock", ValueError),
    ],
)
def test_split_host_port(address, parts):
    if parts is ValueError:
        with pytest.raises(ValueError):
            gosyntax.split_host_port(address)
    else:
        assert gosyntax.split_host_port(address) == parts
        assert gosyntax.split_host_port(gosyntax.join_host_port(*parts)) == parts

"""Options resolved and validated: flags over config file over defaults, checked before any bind.

The tables live in ``options`` (their names are re-exported here), reading flags and files in
``config_sources``, Go's text forms in ``gosyntax``. Values follow nsqd 1.3.0: the same defaults,
the same checks (plus range, address and conflict checks where Go would panic or silently
misbehave). Core module: never opens a socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config_sources import INI, TOML, SourceError, read_config_file
from .gosyntax import (
    format_duration,
    join_host_port,
    parse_duration,
    parse_go_bool,
    parse_go_float,
    parse_go_int,
    seconds_to_ns,
    split_host_port,
)
from .options import (  # noqa: F401  (re-exported: config is the public entry point)
    BOOL,
    DURATION,
    FLOATS,
    IGNORED,
    INT,
    LOG_LEVEL,
    LOG_LEVELS,
    NSQADMIN,
    NSQADMIN_OPTIONS,
    NSQD,
    NSQD_OPTIONS,
    NSQLOOKUPD,
    NSQLOOKUPD_OPTIONS,
    STR,
    STRS,
    TLS_MIN_VERSION,
    TLS_NOT_REQUIRED,
    TLS_REQUIRED,
    TLS_REQUIRED_ALWAYS,
    TLS_REQUIRED_EXCEPT_HTTP,
    TLS_VERSIONS,
    Option,
    default_node_id,
    find_option,
    hostname,
    option_table,
)


class ConfigError(ValueError):
    """An invalid option; ``str()`` is one line naming the key and where its value came from."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        super().__init__(f"{key}: {problem} (from {source})")
        self.key = key
        self.source = source
        self.problem = problem


class _Bad(Exception):
    """A value problem, before the key and source are known."""


# --- value coercion ------------------------------------------------------------------------

def _checked(parse: Callable[[str], Any], text: str) -> Any:
    """A gosyntax parser whose ValueError becomes a value problem (_Bad)."""
    try:
        return parse(text)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _duration_from_text(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _split_list(text: str) -> list[str]:
    return [_unquote(part.strip()) for part in re.split(r"[,\n]", text) if part.strip()]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


# Where a value comes from decides how non-string values read, as in nsqd:
#   FLAG    every value is text, as Go's flag package sees it;
#   TOML    ints for durations are milliseconds (go-options), tls_* go through their text form;
#   NATIVE  Python callers: Options' own representation (durations in seconds, tls codes as ints).
FLAG, NATIVE = "flag", "native"


def _coerce(opt: Option, raw: Any, mode: str) -> Any:
    kind = opt.kind
    if kind == IGNORED:
        return None
    if mode == FLAG and not isinstance(raw, (str, list, tuple)):
        raw = str(raw)
    if opt.repeatable:
        return _coerce_list(opt, raw, mode)
    if isinstance(raw, (list, tuple, dict)):
        raise _Bad(f"expected a single value, got {raw!r}")
    if kind == INT:
        if isinstance(raw, bool) or isinstance(raw, float):
            raise _Bad(f"invalid integer {raw!r}")
        value = raw if isinstance(raw, int) else _checked(parse_go_int, str(raw))
        return _check_range(opt, value)
    if kind == BOOL:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str):
            try:
                return parse_go_bool(raw)
            except ValueError:
                pass
        raise _Bad(f"invalid boolean {raw!r} (true or false)")
    if kind == STR:
        if not isinstance(raw, str):
            raise _Bad(f"expected a string, got {raw!r}")
        return raw if mode != INI else _unquote(raw)
    if kind == DURATION:
        if isinstance(raw, str):
            value = _duration_from_text(raw)
        elif isinstance(raw, bool):
            raise _Bad(f"invalid duration {raw!r}")
        elif isinstance(raw, (int, float)):
            value = raw / 1000 if mode == TOML else float(raw)
        else:
            raise _Bad(f"invalid duration {raw!r}")
        if value < 0:
            raise _Bad(f"duration {raw!r} must not be negative")
        return value
    if kind == LOG_LEVEL:
        name = str(raw).lower()
        name = "warn" if name == "warning" else name
        if name not in LOG_LEVELS:
            raise _Bad(f"invalid log level {raw!r} (debug, info, warn, error, fatal)")
        return name
    if kind == TLS_REQUIRED:
        if mode == NATIVE and isinstance(raw, int) and not isinstance(raw, bool):
            if raw not in (0, 1, 2):
                raise _Bad(f"invalid tls_required {raw!r} (0, 1 or 2)")
            return raw
        text = str(raw).lower()
        if text == "tcp-https":
            return TLS_REQUIRED_EXCEPT_HTTP
        try:
            return TLS_REQUIRED_ALWAYS if parse_go_bool(text) else TLS_NOT_REQUIRED
        except ValueError:
            raise _Bad(f"invalid tls_required {raw!r} (true, false or tcp-https)") from None
    if kind == TLS_MIN_VERSION:
        if mode == NATIVE and isinstance(raw, int) and not isinstance(raw, bool):
            if raw not in TLS_VERSIONS.values():
                raise _Bad(f"invalid tls_min_version {raw!r} (0x0301..0x0304)")
            return raw
        text = str(raw).lower()
        if text == "":
            return opt.default_value()
        if text not in TLS_VERSIONS:
            raise _Bad(f"invalid tls_min_version {raw!r} (tls1.0, tls1.1, tls1.2 or tls1.3)")
        return TLS_VERSIONS[text]
    raise AssertionError(f"unhandled option kind {kind}")


def _coerce_list(opt: Option, raw: Any, mode: str) -> list:
    if isinstance(raw, str):
        # Flags: one occurrence is one address (Go's StringArray); files: comma/newline lists.
        items: list = [raw] if mode == FLAG and opt.kind == STRS else _split_list(raw)
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise _Bad(f"expected a list, got {raw!r}")
    if opt.kind == STRS:
        if not all(isinstance(item, str) for item in items):
            raise _Bad(f"expected a list of strings, got {raw!r}")
        return items
    values: list[float] = []
    for item in items:
        if isinstance(item, str):
            values.extend(_checked(parse_go_float, part) for part in item.split(","))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            values.append(float(item))
        else:
            raise _Bad(f"invalid number {item!r}")
    for value in values:
        if not 0 < value <= 1:
            raise _Bad(f"percentile {value!r} out of range, must be in (0, 1]")
    return sorted(values, reverse=True)  # Go's FloatArray keeps them descending


def _check_range(opt: Option, value: int) -> int:
    low, high = opt.minimum, opt.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise _Bad(f"{value} out of range, must be >= {low:g}")
        raise _Bad(f"{value} out of range, must be in [{low:g}, {high:g}]")
    return value


# --- Options -------------------------------------------------------------------------------


class Options:
    """Resolved options of one daemon; attributes are the cfg keys (``opts.mem_queue_size``).

    Durations are float seconds, lists are lists, ``log_level`` a lowercase name, ``tls_required``
    0/1/2 and ``tls_min_version`` the TLS protocol code. Treat as immutable: use ``replace``.
    """

    def __init__(self, daemon: str, values: Mapping[str, Any]) -> None:
        self.daemon = daemon
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        """The cfg keys and values, in table order."""
        return {opt.cfg: getattr(self, opt.cfg) for opt in _attribute_options(self.daemon)}

    def replace(self, **changes: Any) -> Options:
        """A validated copy with some cfg keys changed (values as ``default_options`` takes)."""
        values = self.as_dict()
        sources = dict.fromkeys(values, "previous options")
        _apply(self.daemon, values, sources, changes.items(), NATIVE, lambda key: f"argument {key}")
        return _finish(self.daemon, values, sources)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self.daemon == other.daemon and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        items = ", ".join(f"{key}={value!r}" for key, value in self.as_dict().items())
        return f"Options({self.daemon!r}, {items})"


def _attribute_options(daemon: str) -> Iterable[Option]:
    return (opt for opt in option_table(daemon) if opt.kind != IGNORED)


def _defaults(daemon: str) -> tuple[dict[str, Any], dict[str, str]]:
    values = {opt.cfg: opt.default_value() for opt in _attribute_options(daemon)}
    return values, dict.fromkeys(values, "default")


def _apply(
    daemon: str,
    values: dict[str, Any],
    sources: dict[str, str],
    items: Iterable[tuple[str, Any]],
    mode: str,
    source_of: Callable[[str], str],
) -> None:
    for name, raw in items:
        if mode == FLAG:
            opt = find_option(daemon, name)
        else:
            opt = next((o for o in option_table(daemon) if o.cfg == name), None)
        if opt is None:
            raise ConfigError(name, source_of(name), f"unknown {daemon} option")
        source = source_of(opt.flag) if mode == FLAG else source_of(name)
        if mode == FLAG and isinstance(raw, (list, tuple)) and not opt.repeatable:
            raw = raw[-1] if raw else ""  # a repeated scalar flag: the last one wins, as in Go
        try:
            value = _coerce(opt, raw, mode)
        except _Bad as exc:
            raise ConfigError(opt.cfg, source, str(exc)) from None
        if opt.kind != IGNORED:
            values[opt.cfg] = value
            sources[opt.cfg] = source


#: Listen/dial addresses checked as ``host:port`` (port 0-65535) before anything is bound.
#: The nsqd TCP/HTTP addresses may also be unix socket paths (anything with a ``/``), and an
#: empty value disables the HTTP(S) listener or statsd.
_ADDRESSES: dict[str, tuple[tuple[str, bool, bool], ...]] = {  # (key, may be empty, may be path)
    NSQD: (
        ("tcp_address", False, True),
        ("http_address", True, True),
        ("https_address", True, False),
        ("statsd_address", True, False),
    ),
    NSQLOOKUPD: (("tcp_address", False, False), ("http_address", False, False)),
}
_ADDRESS_LISTS = {NSQD: ("nsqlookupd_tcp_addresses",)}


def _check_address(key: str, source: str, address: str, empty_ok: bool, path_ok: bool) -> None:
    if not address:
        if empty_ok:
            return
        raise ConfigError(key, source, "an address is required (<addr>:<port>)")
    if path_ok and "/" in address:
        return
    try:
        split_host_port(address)
    except ValueError as exc:
        raise ConfigError(key, source, f"invalid address {address!r} - {exc}") from None


def _check_addresses(daemon: str, values: dict[str, Any], sources: dict[str, str]) -> None:
    for key, empty_ok, path_ok in _ADDRESSES.get(daemon, ()):
        _check_address(key, sources[key], values[key], empty_ok, path_ok)
    for key in _ADDRESS_LISTS.get(daemon, ()):
        for address in values[key]:
            _check_address(key, sources[key], address, False, False)


def _conflict(
    values: dict[str, Any], sources: dict[str, str], key: str, other: str, why: str
) -> ConfigError:
    """One line naming both options and where each came from."""
    shown = values[other]
    if isinstance(shown, float):
        shown = format_duration(shown)
    return ConfigError(key, sources[key], f"{why} {other} ({shown}, from {sources[other]})")


def _finish(daemon: str, values: dict[str, Any], sources: dict[str, str]) -> Options:
    """Cross-option checks nsqd makes in nsqd.New, plus address and conflict checks, all
    before anything listens."""
    _check_addresses(daemon, values, sources)
    if daemon == NSQD:
        if values["min_output_buffer_timeout"] > values["max_output_buffer_timeout"]:
            raise _conflict(
                values, sources, "min_output_buffer_timeout", "max_output_buffer_timeout",
                "must not be greater than",
            )
        if values["statsd_address"] and values["statsd_interval"] <= 0:
            raise _conflict(
                values, sources, "statsd_interval", "statsd_address", "must be > 0 with"
            )
        percentiles = values["e2e_processing_latency_percentiles"]
        if percentiles and values["e2e_processing_latency_window_time"] <= 0:
            raise _conflict(
                values, sources, "e2e_processing_latency_window_time",
                "e2e_processing_latency_percentiles", "must be > 0 with",
            )
        policy = values["tls_client_auth_policy"]
        if policy not in ("", "require", "require-verify"):
            raise ConfigError(
                "tls_client_auth_policy", sources["tls_client_auth_policy"],
                f"invalid policy {policy!r} (require or require-verify)",
            )
        if policy and values["tls_required"] == TLS_NOT_REQUIRED:
            values["tls_required"] = TLS_REQUIRED_ALWAYS  # nsqd: a policy implies TLS required
            sources["tls_required"] = sources["tls_client_auth_policy"]
        cert, key = values["tls_cert"], values["tls_key"]
        if bool(cert) != bool(key):
            missing, given = ("tls_key", "tls_cert") if cert else ("tls_cert", "tls_key")
            raise ConfigError(given, sources[given], f"{given} is set but {missing} is not")
        if values["tls_required"] != TLS_NOT_REQUIRED and not cert:
            key = "tls_client_auth_policy" if policy else "tls_required"
            raise ConfigError(
                key, sources[key], "cannot require TLS client connections without TLS key and cert"
            )
    if daemon == NSQADMIN:
        if not values["nsqlookupd_http_addresses"] and not values["nsqd_http_addresses"]:
            raise ConfigError(
                "nsqlookupd_http_addresses", sources["nsqlookupd_http_addresses"],
                "--lookupd-http-address or --nsqd-http-address required",
            )
        if values["refresh_interval"] <= 0:
            raise ConfigError("refresh_interval", sources["refresh_interval"], "must be > 0")
    return Options(daemon, values)


def default_options(daemon: str, **overrides: Any) -> Options:
    """Defaults plus overrides by cfg key, validated like a config file (for in-process servers).

    Override values use Options' representation: durations in seconds (or Go text like
    ``"250ms"``), lists as lists, ``tls_required`` 0/1/2 or its text form.
    """
    values, sources = _defaults(daemon)
    _apply(daemon, values, sources, overrides.items(), NATIVE, lambda key: f"argument {key}")
    return _finish(daemon, values, sources)


def load_options(
    daemon: str, flag_values: Mapping[str, Any], config_file: str | None = None
) -> Options:
    """Resolve options: explicit flags > config file > defaults, validated before any bind.

    ``flag_values`` maps flag names (``mem-queue-size``; cfg keys work too) to the text given on
    the command line, or a list of texts for a flag given several times. ``config_file`` is an
    ``.ini`` file (a ``[nsqd]``/``[nsqlookupd]`` section) or, for any other name, nsqd's TOML.
    """
    values, sources = _defaults(daemon)
    if config_file:
        try:
            items, mode = read_config_file(daemon, config_file)
        except SourceError as exc:
            raise ConfigError("config", exc.source, exc.problem) from None
        _apply(daemon, values, sources, items, mode, lambda key: f"file {config_file}")
    _apply(daemon, values, sources, flag_values.items(), FLAG, lambda flag: f"flag --{flag}")
    return _finish(daemon, values, sources)


def expand_statsd_prefix(prefix: str, broadcast_address: str, http_port: int) -> str:
    """nsqd's statsd prefix: ``%s`` -> host key (``.``/``:`` -> ``_``), trailing ``.`` added."""
    if not prefix:
        return prefix
    host_key = join_host_port(broadcast_address, http_port).replace(".", "_").replace(":", "_")
    expanded = prefix.replace("%s", host_key)
    return expanded if expanded.endswith(".") else expanded + "."


# --- GET /config/<opt> ---------------------------------------------------------------------


def config_endpoint_value(opts: Options, key: str, http_port: int | None = None) -> Any:
    """The value nsqd's ``GET /config/<key>`` renders; str means a text/plain body, else JSON.

    Durations are int nanoseconds, ``log_level`` its number (debug=1 .. fatal=5) and
    ``statsd_prefix`` is expanded with the broadcast address and HTTP port (``http_port`` is the
    port actually bound; used when ``broadcast_http_port`` is 0). KeyError for unknown options.
    """
    opt = next((o for o in _attribute_options(opts.daemon) if o.cfg == key), None)
    if opt is None:
        raise KeyError(key)
    value = getattr(opts, key)
    if opt.kind == DURATION:
        return seconds_to_ns(value)
    if opt.kind == LOG_LEVEL:
        return LOG_LEVELS[value]
    if opt.repeatable:
        return list(value)
    if key == "statsd_prefix":
        port = opts.broadcast_http_port or http_port
        if not port:
            try:
                port = split_host_port(opts.http_address)[1]
            except ValueError:
                port = 0
        return expand_statsd_prefix(value, opts.broadcast_address, port)
    return value



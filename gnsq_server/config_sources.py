"""Where option values come from: Go's flag forms on the command line, ``.ini`` and TOML files.

This module only reads and tokenizes; ``config`` coerces and validates what it returns.
"""

from __future__ import annotations

import configparser
from typing import Any

from .gosyntax import format_duration, is_go_bool, parse_go_bool
from .options import (
    BOOL,
    DURATION,
    IGNORED,
    TLS_MIN_VERSION,
    TLS_REQUIRED,
    TLS_VERSIONS,
    Option,
    option_table,
)

#: How a file's non-string values read: INI values are all text; TOML has typed values, with
#: ints for durations in milliseconds (go-options).
INI, TOML = "ini", "toml"


class SourceError(ValueError):
    """A config file that cannot be read or parsed; ``config`` reports it as a ConfigError."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(problem)
        self.source = source
        self.problem = problem


# --- config files --------------------------------------------------------------------------


def read_config_file(daemon: str, path: str) -> tuple[list[tuple[str, Any]], str]:
    """The (cfg key, raw value) pairs of a config file and how to read them (INI or TOML)."""
    source = f"file {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SourceError(source, f"cannot read config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(source, "config file is not UTF-8") from None
    if path.endswith(".ini"):
        return _read_ini(daemon, text, source), INI
    return _read_toml(daemon, text, source), TOML


def _read_ini(daemon: str, text: str, source: str) -> list[tuple[str, Any]]:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#",), empty_lines_in_values=False
    )
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        message = " ".join(str(exc).split())
        raise SourceError(source, f"invalid ini file: {message}") from None
    if not parser.has_section(daemon):
        raise SourceError(source, f"no [{daemon}] section")
    return [(key, parser.get(daemon, key)) for key in parser.options(daemon)]


def _read_toml(daemon: str, text: str, source: str) -> list[tuple[str, Any]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SourceError(
                source, "TOML config files need Python 3.11+ or the tomli package"
            ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError(source, f"invalid TOML: {exc}") from None
    # nsqd's files are flat; a [nsqd] / [nsqlookupd] table is accepted too.
    if set(doc) == {daemon} and isinstance(doc[daemon], dict):
        doc = doc[daemon]
    return list(doc.items())


# --- Go's flag syntax ----------------------------------------------------------------------


def _optional_value(opt: Option, token: str) -> bool:
    """May ``token`` be the value of a bare bool-like flag (``--snappy false``)?"""
    if opt.kind == TLS_REQUIRED:
        return is_go_bool(token) or token.lower() == "tcp-https"
    if opt.kind == IGNORED:
        return is_go_bool(token) or token.isdigit()
    return is_go_bool(token)


def normalize_go_flags(daemon: str, argv: list[str]) -> list[str]:
    """Rewrite Go flag forms into ``--flag=value`` tokens one parser can read.

    Accepts ``-flag``/``--flag``, ``=value`` or a separate value, bare booleans (``--snappy`` is
    ``--snappy=true``). Unlike Go, a bool flag also takes a separate bool literal
    (``--snappy false``) instead of stopping there. ``-h``/``-help`` become ``--help``, ``-c``
    and ``-config`` become ``--config=FILE``, ``-version`` becomes ``--version``. Unknown flags
    are passed on as ``--name`` so the parser reports them.
    """
    table = {opt.flag: opt for opt in option_table(daemon)}
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            out.extend(argv[i - 1 :])
            break
        if not token.startswith("-") or token == "-":
            out.append(token)
            continue
        body = token[2:] if token.startswith("--") else token[1:]
        name, eq, value = body.partition("=")
        if name in ("h", "help"):
            out.append("--help")
        elif name == "version":
            if not eq or (is_go_bool(value) and parse_go_bool(value)):
                out.append("--version")
            elif not is_go_bool(value):
                out.append(f"--version={value}")  # the parser rejects it
        elif name in ("c", "config") or (name in table and table[name].kind not in _BOOLISH):
            if not eq:
                if i >= len(argv):
                    out.append("--config" if name == "c" else f"--{name}")
                    continue
                value = argv[i]
                i += 1
            out.append(f"--{'config' if name == 'c' else name}={value}")
        elif name in table:
            if not eq and i < len(argv) and _optional_value(table[name], argv[i]):
                value, eq = argv[i], "="
                i += 1
            out.append(f"--{name}={value if eq else 'true'}")
        else:
            out.append(f"--{body}")
    return out


_BOOLISH = (BOOL, TLS_REQUIRED, IGNORED)


def is_bool_flag(opt: Option) -> bool:
    """Whether the flag may be given bare, as Go's bool flags (and --tls-required) can."""
    return opt.kind in _BOOLISH


def default_text(opt: Option) -> str:
    """The default as a user would type it, for --help and the sample config files."""
    value = opt.default_value()
    if opt.kind == DURATION:
        return format_duration(value)
    if opt.kind == BOOL:
        return "true" if value else "false"
    if opt.kind == TLS_REQUIRED:
        return {0: "false", 1: "tcp-https", 2: "true"}[value]
    if opt.kind == TLS_MIN_VERSION:
        return next(name for name, code in TLS_VERSIONS.items() if code == value)
    if opt.repeatable:
        return ",".join(str(v) for v in value)
    if value is None:
        return ""
    return str(value)

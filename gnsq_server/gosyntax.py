"""Go's text forms that nsqd's flags, files and HTTP API use: durations, host:port, numbers, bools.

Pure functions; each raises ValueError with a message in Go's words where Go would refuse the text.
"""

from __future__ import annotations

import re

_SECOND_NS = 1_000_000_000
_MAX_NS = 2**63 - 1

# --- durations -----------------------------------------------------------------------------

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, what Go prints
    "\u03bcs": 1_000,  # greek mu
    "ms": 1_000_000,
    "s": _SECOND_NS,
    "m": 60 * _SECOND_NS,
    "h": 3600 * _SECOND_NS,
}
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")


def parse_duration_ns(text: str) -> int:
    """Go's time.ParseDuration, in integer nanoseconds (``1m0s``, ``250ms``, ``1.5h``, ``0``)."""
    s = text
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0
    while s:
        number = _NUMBER.match(s)
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            raise ValueError(f'time: invalid duration "{text}"')
        s = s[number.end() :]
        unit = _UNIT.match(s).group(0)
        s = s[len(unit) :]
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _UNIT_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        scale = _UNIT_NS[unit]
        total += int(whole or 0) * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS:
            raise ValueError(f'time: invalid duration "{text}"')
    return -total if negative else total


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in float seconds; raises ValueError with Go's message."""
    return parse_duration_ns(text) / _SECOND_NS


def _with_fraction(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    frac_text = str(frac).rjust(digits, "0").rstrip("0")
    return f"{whole}.{frac_text}" if frac_text else str(whole)


def format_duration_ns(ns: int) -> str:
    """Go's time.Duration.String for integer nanoseconds."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_with_fraction(u, 3)}\u00b5s"
    if u < _SECOND_NS:
        return f"{sign}{_with_fraction(u, 6)}ms"
    whole_seconds, frac_ns = divmod(u, _SECOND_NS)
    text = _with_fraction((whole_seconds % 60) * _SECOND_NS + frac_ns, 9) + "s"
    minutes = whole_seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String for float seconds: ``1m0s``, ``250ms``, ``1h0m0s``."""
    return format_duration_ns(round(seconds * _SECOND_NS))


def seconds_to_ns(seconds: float) -> int:
    """Float seconds (how Options holds durations) to the int nanoseconds nsqd reports."""
    return round(seconds * _SECOND_NS)


# --- addresses -----------------------------------------------------------------------------


def split_host_port(address: str) -> tuple[str, int]:
    """Go's net.SplitHostPort with a numeric port: ``[::1]:4150`` -> ``("::1", 4150)``."""
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or not address[close + 1 : close + 2] == ":":
            raise ValueError(f"address {address}: missing port in address")
        host, port = address[1:close], address[close + 2 :]
        if "[" in host or "]" in port or "[" in port:
            raise ValueError(f"address {address}: unexpected bracket in address")
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(f"address {address}: missing port in address")
        if ":" in host:
            raise ValueError(f"address {address}: too many colons in address")
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError(f"address {address}: invalid port {port!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: brackets around IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- numbers and bools ----------------------------------------------------------------

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r}")


def is_go_bool(text: str) -> bool:
    """Whether strconv.ParseBool would take ``text``."""
    return text in _GO_TRUE or text in _GO_FALSE


def parse_go_int(text: str) -> int:
    """Go's strconv.ParseInt(s, 0, 64): 0x/0o/0b, legacy octal, underscores."""
    if text != text.strip() or not text:
        raise ValueError(f"invalid integer {text!r}")
    if re.fullmatch(r"[+-]?0[0-7]+", text):
        return int(text, 8)
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"invalid integer {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"integer {text!r} out of range")
    return value


def parse_go_float(text: str) -> float:
    """Go's strconv.ParseFloat, without the underscores it refuses."""
    try:
        if text != text.strip() or "_" in text:
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None

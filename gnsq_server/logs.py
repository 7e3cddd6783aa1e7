"""nsqd's log line format on one root handler, so tools that parse nsqd's output read ours.

A line looks like ``[nsqd] 2026/11/26 17:02:18.727200 INFO: TCP: listening on 127.0.0.1:4150``:
the prefix as given, local time with microseconds, the level as nsqd names it, the message.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from datetime import datetime
from typing import TextIO

#: nsqd's level numbers, as ``GET /config/log_level`` reports them.
LEVEL_NUMBERS = {"debug": 1, "info": 2, "warn": 3, "warning": 3, "error": 4, "fatal": 5}
_NAMES = ("debug", "info", "warn", "error", "fatal")
_PYTHON_LEVELS = {
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.CRITICAL,
}
_LABELS = (  # (lowest Python level, nsqd's label), highest first
    (logging.CRITICAL, "FATAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
    (logging.NOTSET, "DEBUG"),
)

#: The HTTP server's access lines (DEBUG: nsqd logs its own INFO line per request) and errors.
ACCESS_LOGGER = "gnsq_server.http.access"
ERROR_LOGGER = "gnsq_server.http.error"


def level_number(name: str) -> int:
    """nsqd's number for a level name (debug=1 .. fatal=5), any case; ValueError if unknown."""
    try:
        return LEVEL_NUMBERS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid log level {name!r} (debug, info, warn, error, fatal)") from None


def python_level(name: str) -> int:
    """The ``logging`` level for an nsqd level name."""
    return _PYTHON_LEVELS[level_number(name)]


class NsqdFormatter(logging.Formatter):
    """Formats records as Go's ``log`` package does for nsqd (Ldate|Ltime|Lmicroseconds)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        stamp = datetime.fromtimestamp(record.created).strftime("%Y/%m/%d %H:%M:%S.%f")
        label = next(label for low, label in _LABELS if record.levelno >= low)
        return f"{self.prefix}{stamp} {label}: {message}"


class _NsqdHandler(logging.StreamHandler):
    """A StreamHandler (it flushes after every record), marked so setup can replace it."""


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """``--log-file``: appends, rotates by size to FILE.1 .. FILE.N, and ``reopen()``s on SIGHUP.

    After logrotate moves the file away, ``reopen()`` starts a new one at the configured path
    (``copytruncate`` needs no signal at all: the file is opened in append mode).
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        # A max_bytes of 0 disables size rotation, as in RotatingFileHandler.
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def reopen(self) -> None:
        """Close the current file and open the configured path again."""
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def _installed() -> list[logging.Handler]:
    root = logging.getLogger()
    return [h for h in root.handlers if isinstance(h, (_NsqdHandler, LogFileHandler))]


def setup_logging(
    prefix: str,
    level: str,
    stream: TextIO | None = None,
    *,
    log_file: str = "",
    max_bytes: int = 0,
    backups: int = 0,
) -> logging.Handler:
    """Install the one root handler, writing nsqd-format lines to ``stream`` (default stdout),
    or to ``log_file`` (rotated at ``max_bytes`` keeping ``backups`` copies) when given.

    Each line is flushed as written, so a supervisor reading a pipe sees it at once. Calling it
    again replaces the handler it installed before. OSError when the file cannot be opened.
    """
    root = logging.getLogger()
    handler: logging.Handler
    if log_file:
        directory = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(directory, exist_ok=True)
        handler = LogFileHandler(log_file, max_bytes, backups)
    else:
        handler = _NsqdHandler(sys.stdout if stream is None else stream)
    for old in _installed():
        root.removeHandler(old)
        if isinstance(old, LogFileHandler):
            old.close()
    handler.setFormatter(NsqdFormatter(prefix))
    root.addHandler(handler)
    set_level(level)
    return handler


def reopen_log_file() -> bool:
    """Reopen ``--log-file`` (the SIGHUP action); False when logging goes to a stream."""
    files = [h for h in _installed() if isinstance(h, LogFileHandler)]
    for handler in files:
        handler.reopen()
        logging.getLogger(__name__).info("LOG: reopened %s", handler.baseFilename)
    return bool(files)


def set_level(name: str) -> None:
    """Change the level at run time (``PUT /config/log_level``); ValueError if unknown."""
    logging.getLogger().setLevel(python_level(name))


def get_level() -> str:
    """The current root level as nsqd's name (debug, info, warn, error, fatal)."""
    level = logging.getLogger().getEffectiveLevel()
    for number, python in _PYTHON_LEVELS.items():
        if level <= python:
            return _NAMES[number - 1]
    return "fatal"


class LogWriter:
    """A file-like ``write`` that logs each line at a fixed level (the server's wsgi.errors)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger = logger
        self.level = level

    def write(self, text: str) -> None:
        text = text.rstrip("\r\n")
        if text:
            self.logger.log(self.level, text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

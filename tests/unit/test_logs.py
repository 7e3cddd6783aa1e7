"""nsqd's log line format, level filtering and run-time level changes."""

from __future__ import annotations

import io
import logging
import re
from datetime import datetime

import pytest

from gnsq_server import logs

LINE = re.compile(
    r"^(?P<prefix>\[nsqd\] )(?P<stamp>\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{6}) "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|FATAL): (?P<message>.*)$"
)


@pytest.fixture
def stream():
    """A captured stream with our handler installed; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    out = io.StringIO()
    logs.setup_logging("[nsqd] ", "info", out)
    yield out
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_line_format(stream):
    before = datetime.now().replace(microsecond=0)
    logging.getLogger("gnsq_server.nsqd.tcp").info("TCP: listening on %s", "127.0.0.1:4150")
    (line,) = lines(stream)
    match = LINE.match(line)
    assert match, line
    assert match["message"] == "TCP: listening on 127.0.0.1:4150"
    assert match["level"] == "INFO"
    stamp = datetime.strptime(match["stamp"], "%Y/%m/%d %H:%M:%S.%f")
    assert before <= stamp <= datetime.now()  # local time, not UTC


@pytest.mark.parametrize(
    ("method", "label"),
    [("warning", "WARNING"), ("error", "ERROR"), ("critical", "FATAL"), ("fatal", "FATAL")],
)
def test_level_labels(stream, method, label):
    getattr(logging.getLogger("x"), method)("boom")
    assert LINE.match(lines(stream)[0])["level"] == label


def test_level_filtering(stream):
    log = logging.getLogger("gnsq_server.test")
    log.debug("hidden")
    log.info("shown")
    logs.set_level("error")
    log.warning("hidden too")
    log.error("shown too")
    assert [LINE.match(line)["message"] for line in lines(stream)] == ["shown", "shown too"]


def test_set_level_debug_and_get_level(stream):
    logs.set_level("DEBUG")
    assert logs.get_level() == "debug"
    logging.getLogger("x").debug("now visible")
    assert LINE.match(lines(stream)[0])["level"] == "DEBUG"
    logs.set_level("Warning")
    assert logs.get_level() == "warn"
    with pytest.raises(ValueError, match="loud"):
        logs.set_level("loud")
    assert logs.get_level() == "warn"


@pytest.mark.parametrize(
    ("name", "number"),
    [("debug", 1), ("INFO", 2), ("warn", 3), ("WARNING", 3), ("error", 4), ("Fatal", 5)],
)
def test_level_number(name, number):
    assert logs.level_number(name) == number


def test_level_number_rejects_unknown():
    with pytest.raises(ValueError):
        logs.level_number("verbose")


def test_exception_traceback_follows_the_line(stream):
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    out = lines(stream)
    assert LINE.match(out[0])["message"] == "failed"
    assert out[-1] == "RuntimeError: bad"


def test_setup_replaces_its_own_handler_only(stream):
    root = logging.getLogger()
    other = logging.NullHandler()
    root.addHandler(other)
    try:
        second = io.StringIO()
        logs.setup_logging("[nsqlookupd] ", "info", second)
        logging.getLogger("x").info("once")
        assert stream.getvalue() == ""
        assert second.getvalue().startswith("[nsqlookupd] ")
        assert other in root.handlers
    finally:
        root.removeHandler(other)


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_every_line_is_flushed():
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    out = CountingStream()
    try:
        logs.setup_logging("[nsqd] ", "info", out)
        for i in range(3):
            logging.getLogger("x").info("line %d", i)
            assert out.flushes == i + 1
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_wsgi_errors_writer_logs_lines(stream):
    writer = logs.LogWriter(logging.getLogger(logs.ERROR_LOGGER), logging.ERROR)
    writer.write("Traceback: oops\n")
    writer.writelines(["one\n", "\n", "two"])
    messages = [LINE.match(line)["message"] for line in lines(stream)]
    assert messages == ["Traceback: oops", "one", "two"]


def test_log_file_rotates_and_reopens(stream, tmp_path):
    path = tmp_path / "sub" / "gnsqd.log"
    handler = logs.setup_logging("[nsqd] ", "info", log_file=str(path), max_bytes=300, backups=1)
    try:
        assert isinstance(handler, logs.LogFileHandler)
        log = logging.getLogger("gnsq_server.test")
        for i in range(20):
            log.info("line %02d of a rotating log file", i)
        assert sorted(p.name for p in path.parent.iterdir()) == ["gnsqd.log", "gnsqd.log.1"]
        assert stream.getvalue() == ""  # the stream handler was replaced by the file
        assert all(LINE.match(line) for line in path.read_text().splitlines())
        path.rename(path.with_name("moved.log"))
        assert logs.reopen_log_file() is True
        log.info("after reopen")
        assert path.read_text().splitlines()[-1].endswith("INFO: after reopen")
    finally:
        handler.close()
    logs.setup_logging("[nsqd] ", "info", stream)
    assert logs.reopen_log_file() is False  # logging to a stream: nothing to reopen

"""gnsq_to_file: nsq_to_file 1.3.0. Writes each topic's messages, one per line, to files named
by ``--filename-format``; rotates by name (``--datetime-format``), ``--rotate-interval`` and
``--rotate-size``; optionally gzips; and with a ``--work-dir`` moves each finished file into
``--output-dir`` without overwriting (a hard link, then the work copy removed).

A message is finished (FIN) only after its line is written and fsynced (gzip: after its gzip
member is closed), in batches of up to ``--max-in-flight``, when the consumer is starved, or every
``--sync-interval``. SIGTERM/SIGINT: CLS to every nsqd, write what already arrived, fsync, FIN,
close and move the files, exit 0; what was never written stays queued in nsqd. SIGHUP closes
(and moves) the current files. Without ``--topic``, topics are found through the lookupds every
``--topic-refresh`` and kept if they match ``--topic-pattern``.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import signal
import socket
import time
from datetime import datetime
from typing import Any, BinaryIO

import gevent
from gevent.event import Event
from gevent.queue import Empty, Queue
from gnsq.message import Message

from gnsq_server.options import BOOL, DURATION, INT, LOG_LEVEL, STR, STRS, Option
from gnsq_server.tools.client import (
    CONSUMER_OPT,
    HTTP_CONNECT_TIMEOUT,
    HTTP_REQUEST_TIMEOUT,
    LOOKUPD_HTTP_ADDRESS,
    MAX_IN_FLIGHT,
    NSQD_TCP_ADDRESS,
    ClientSettings,
    Subscriber,
    UsageError,
    check_names,
    finish,
    lookupd_topics,
    on_stop_signals,
    parse_client_opts,
    require_positive,
    require_sources,
    user_agent,
)

log = logging.getLogger(__name__)

PROG = "gnsq_to_file"
SUMMARY = (
    "Write NSQ topics to rotated (optionally gzipped) files, finishing each message only once "
    "it is on disk (nsq_to_file). Flags take Go's forms (-flag=value, --flag value, bare booleans)."
)
OPTIONS: tuple[Option, ...] = (
    Option("log-level", LOG_LEVEL, "info", "set log verbosity: debug, info, warn, error, or fatal"),
    Option("log-prefix", STR, f"[{PROG}] ", "log message prefix"),
    Option("channel", STR, "nsq_to_file", "nsq channel"),
    MAX_IN_FLIGHT,
    Option("output-dir", STR, "/tmp", "directory to write output files to"),
    Option("work-dir", STR, "", "directory for in-progress files before moving to output-dir"),
    Option(
        "datetime-format", STR, "%Y-%m-%d_%H",
        "strftime compatible format for <DATETIME> in filename format",
    ),
    Option(
        "filename-format", STR, "<TOPIC>.<HOST><REV>.<DATETIME>.log",
        "output filename format (<TOPIC>, <HOST>, <PID>, <DATETIME>, <REV> are replaced. "
        "<REV> is increased when file already exists)",
    ),
    Option(
        "host-identifier", STR, "",
        "value to output in log filename in place of hostname. <SHORT_HOST> and <HOSTNAME> are "
        "valid replacement tokens",
    ),
    Option("gzip-level", INT, 6, "gzip compression level (1-9, 1=BestSpeed, 9=BestCompression)"),
    Option("gzip", BOOL, False, "gzip output files."),
    Option("skip-empty-files", BOOL, False, "skip writing empty files"),
    Option("topic-refresh", DURATION, 60.0, "how frequently the topic list should be refreshed"),
    Option("topic-pattern", STR, "", "only log topics matching the following pattern"),
    Option(
        "rotate-size", INT, 0, "rotate the file when it grows bigger than `rotate-size` bytes",
        minimum=0,
    ),
    Option("rotate-interval", DURATION, 0.0, "rotate the file every duration"),
    Option("sync-interval", DURATION, 30.0, "sync file to disk every duration"),
    HTTP_CONNECT_TIMEOUT,
    HTTP_REQUEST_TIMEOUT,
    NSQD_TCP_ADDRESS,
    LOOKUPD_HTTP_ADDRESS,
    Option("topic", STRS, [], "nsq topic (may be given multiple times)", cfg="topics"),
    CONSUMER_OPT,
)


def check(opts: Any) -> None:
    if not opts.channel:
        raise UsageError("--channel is required")
    check_names("channel", [opts.channel])
    check_names("topic", opts.topics)
    require_positive(opts, "http-client-connect-timeout", "http-client-request-timeout",
                     "sync-interval")
    require_sources("nsqd-tcp-address", opts.nsqd_tcp_addresses, opts.lookupd_http_addresses)
    if not 1 <= opts.gzip_level <= 9:
        raise UsageError(f"invalid --gzip-level value ({opts.gzip_level}), should be 1-9")
    if not opts.topics and not opts.topic_pattern:
        raise UsageError("--topic or --topic-pattern required")
    if not opts.topics and not opts.lookupd_http_addresses:
        raise UsageError("--lookupd-http-address must be specified when no --topic specified")
    try:
        re.compile(opts.topic_pattern)
    except re.error as exc:
        raise UsageError(f"--topic-pattern {opts.topic_pattern!r}: {exc}") from None
    filename_format(opts, "topic")
    parse_client_opts("consumer-opt", opts.consumer_opts, user_agent(PROG))


# --- names ----------------------------------------------------------------------------------

_STRFTIME = set("BbmAadHIMSYypZz%")  # the directives nsq_to_file's strftime knows


def strftime(fmt: str, when: datetime) -> str:
    """nsq_to_file's strftime: known ``%x`` directives replaced, anything else kept as is."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt) and fmt[i + 1] in _STRFTIME:
            out.append(when.strftime("%" + fmt[i + 1]))
            i += 2
        else:
            out.append(fmt[i])
            i += 1
    return "".join(out)


def work_dir(opts: Any) -> str:
    return opts.work_dir or opts.output_dir


def filename_format(opts: Any, topic: str) -> str:
    """The topic's file name template, ``<DATETIME>`` (and ``<REV>``) still to be filled."""
    hostname = socket.gethostname()
    short = hostname.split(".")[0]
    identifier = short
    if opts.host_identifier:
        identifier = opts.host_identifier.replace("<SHORT_HOST>", short)
        identifier = identifier.replace("<HOSTNAME>", hostname)
    fmt = opts.filename_format
    if opts.gzip or opts.rotate_size > 0 or opts.rotate_interval > 0 or (
        work_dir(opts) != opts.output_dir
    ):
        if "<REV>" not in fmt:
            raise UsageError(
                "missing <REV> in --filename-format when gzip, rotation, or work dir enabled"
            )
    else:
        fmt = fmt.replace("<REV>", "")
    fmt = fmt.replace("<TOPIC>", topic).replace("<HOST>", identifier)
    fmt = fmt.replace("<PID>", str(os.getpid()))
    if opts.gzip and not fmt.endswith(".gz"):
        fmt += ".gz"
    return fmt


def exclusive_rename(src: str, dst: str) -> None:
    """Move without overwriting: FileExistsError when ``dst`` exists."""
    os.link(src, dst)
    os.remove(src)


def _make_parent(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o770, exist_ok=True)


# --- one topic ------------------------------------------------------------------------------

_TERM, _HUP = "term", "hup"


class FileLogger:
    """One topic's consumer and the file it writes; ``router`` runs the loop of nsq_to_file's
    FileLogger: write, sync in batches, FIN only what is on disk, rotate, stop."""

    def __init__(self, opts: Any, topic: str, settings: ClientSettings) -> None:
        self.opts = opts
        self.topic = topic
        self.label = f"[{topic}/{opts.channel}]"
        self.template = filename_format(opts, topic)
        self.work_dir = work_dir(opts)
        self.events: Queue = Queue()
        self.pending: list[Message] = []
        self.subscriber = Subscriber(
            topic, opts.channel, self.events.put, settings,
            nsqd_tcp_addresses=opts.nsqd_tcp_addresses,
            lookupd_http_addresses=opts.lookupd_http_addresses,
            max_in_flight=opts.max_in_flight,
            http_timeout=opts.http_client_request_timeout,
        )
        self.out: BinaryIO | None = None
        self.path = ""  # where self.out is
        self.writer: BinaryIO | None = None
        self.filename = ""  # the template with <DATETIME> filled in
        self.rev = 0
        self.open_time = 0.0
        self.filesize = 0

    def start(self) -> gevent.Greenlet:
        self.subscriber.start()
        return gevent.spawn(self.router)

    def router(self) -> None:
        interval = self.opts.sync_interval
        next_tick = time.monotonic() + interval
        while True:
            sync = close_file = False
            now = time.monotonic()
            if now >= next_tick:  # due even while messages keep coming, as Go's ticker is
                next_tick = now + interval
                if self.needs_rotation():
                    if self.opts.skip_empty_files:
                        close_file = True
                    else:
                        self.update_file()
                sync = True
            else:
                try:
                    event = self.events.get(timeout=next_tick - now)
                except Empty:
                    continue
                if event == _TERM:
                    self.stop()
                    return
                if event == _HUP:
                    sync = close_file = True
                else:
                    sync = self.write(event)
            if sync or self.subscriber.is_starved:
                self.sync()
            if close_file:
                self.close()

    def write(self, message: Message) -> bool:
        """Write one line; True when the batch should be synced now."""
        sync = False
        if self.needs_rotation():
            self.update_file()
            sync = True
        assert self.writer is not None
        line = message.body + b"\n"
        self.writer.write(line)
        self.filesize += len(line)
        self.pending.append(message)
        return sync or len(self.pending) >= self.opts.max_in_flight

    def sync(self) -> None:
        """Make the written lines durable, then FIN their messages."""
        if not self.pending:
            return
        log.info("%s syncing %d records to disk", self.label, len(self.pending))
        assert self.out is not None
        if self.writer is not self.out:
            # end this gzip member and start another: a member's trailer shows what was FINed
            self.writer.close()
            self.writer = self._gzip(self.out)
        self.out.flush()
        os.fsync(self.out.fileno())
        for message in self.pending:
            finish(message)
        self.pending.clear()

    def stop(self) -> None:
        """SIGTERM: no more deliveries, write what already arrived, sync, FIN, close."""
        self.subscriber.close_wait()
        while True:
            try:
                event = self.events.get_nowait()
            except Empty:
                break
            if event not in (_TERM, _HUP):
                self.write(event)
        self.sync()
        self.subscriber.close()
        self.close()

    # --- files ---

    def current_filename(self) -> str:
        return self.template.replace(
            "<DATETIME>", strftime(self.opts.datetime_format, datetime.now().astimezone())
        )

    def needs_rotation(self) -> bool:
        if self.out is None:
            return True
        filename = self.current_filename()
        if filename != self.filename:
            log.info("%s new filename %s, rotating...", self.label, filename)
            return True
        if self.opts.rotate_interval > 0:
            elapsed = time.monotonic() - self.open_time
            if elapsed > self.opts.rotate_interval:
                log.info("%s %.3fs since last open, rotating...", self.label, elapsed)
                return True
        if 0 < self.opts.rotate_size < self.filesize:
            log.info("%s %s currently %d bytes (> %d), rotating...", self.label, self.path,
                     self.filesize, self.opts.rotate_size)
            return True
        return False

    def _gzip(self, out: BinaryIO) -> BinaryIO:
        return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=self.opts.gzip_level)

    def update_file(self) -> None:
        """Close the current file and open the next: the same name with the next <REV>, or a
        new name; a name taken in the work or output directory moves on to the next <REV>."""
        self.close()
        filename = self.current_filename()
        self.rev = 0 if filename != self.filename else self.rev + 1
        self.filename = filename
        self.open_time = time.monotonic()
        full_path = os.path.join(self.work_dir, filename)
        _make_parent(full_path)
        exclusive = self.opts.gzip or self.opts.rotate_interval > 0
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_APPEND)
        while True:
            path = full_path.replace("<REV>", f"-{self.rev:06d}")
            if self.work_dir != self.opts.output_dir:
                final = self._output_path(path)
                _make_parent(final)
                if os.path.exists(final):
                    log.warning("%s output file already exists: %s", self.label, final)
                    self.rev += 1
                    continue
            try:
                fd = os.open(path, flags, 0o666)
            except FileExistsError:
                log.warning("%s working file already exists: %s", self.label, path)
                self.rev += 1
                continue
            out = os.fdopen(fd, "wb")
            log.info("%s opening %s", self.label, path)
            self.filesize = os.fstat(fd).st_size
            if 0 < self.opts.rotate_size < self.filesize:
                log.info("%s %s currently %d bytes (> %d), rotating...", self.label, path,
                         self.filesize, self.opts.rotate_size)
                out.close()
                self.rev += 1
                continue
            break
        self.out, self.path = out, path
        self.writer = self._gzip(out) if self.opts.gzip else out

    def _output_path(self, path: str) -> str:
        return os.path.join(self.opts.output_dir, os.path.relpath(path, self.work_dir))

    def close(self) -> None:
        """Finish the file (gzip trailer, fsync) and move it to the output directory."""
        if self.out is None:
            return
        out, self.out = self.out, None
        if self.writer is not out:
            self.writer.close()
        self.writer = None
        out.flush()
        os.fsync(out.fileno())
        out.close()
        if self.work_dir != self.opts.output_dir:
            self._move(self.path)

    def _move(self, src: str) -> None:
        dst = self._output_path(src)
        log.info("%s moving finished file %s to %s", self.label, src, dst)
        try:
            exclusive_rename(src, dst)
            return
        except FileExistsError:
            pass
        template = os.path.join(os.path.dirname(dst), os.path.basename(self.filename))
        rev = self.rev + 1
        while True:
            log.warning("%s destination file already exists: %s", self.label, dst)
            dst = template.replace("<REV>", f"-{rev:06d}")
            try:
                exclusive_rename(src, dst)
            except FileExistsError:
                rev += 1
                continue
            log.info("%s renamed finished file %s to %s to avoid overwrite", self.label, src, dst)
            return


# --- topics ---------------------------------------------------------------------------------


class TopicDiscoverer:
    """Starts a FileLogger per topic: the given ones, or those the lookupds know that match
    ``--topic-pattern``, looked up every ``--topic-refresh``."""

    def __init__(self, opts: Any, settings: ClientSettings) -> None:
        self.opts = opts
        self.settings = settings
        self.pattern = re.compile(opts.topic_pattern) if opts.topic_pattern else None
        self.loggers: dict[str, FileLogger] = {}
        self.routers: list[gevent.Greenlet] = []
        self.stop = Event()

    def update_topics(self, topics: list[str]) -> None:
        for topic in topics:
            if topic in self.loggers:
                continue
            if self.pattern is not None and not self.pattern.search(topic):
                log.warning("skipping topic %s (doesn't match pattern %s)", topic,
                            self.opts.topic_pattern)
                continue
            logger = FileLogger(self.opts, topic, self.settings)
            self.loggers[topic] = logger
            router = logger.start()
            router.link_exception(lambda _router: self.stop.set())  # a write failed: stop all
            self.routers.append(router)

    def poll(self) -> None:
        while True:
            gevent.sleep(self.opts.topic_refresh)
            try:
                topics = lookupd_topics(
                    self.opts.lookupd_http_addresses, self.opts.http_client_request_timeout
                )
            except OSError as exc:
                log.error("could not retrieve topic list: %s", exc)
                continue
            self.update_topics(topics)

    def run(self) -> None:
        self.update_topics(self.opts.topics)
        poller = None if self.opts.topics else gevent.spawn(self.poll)
        on_stop_signals(self.stop.set)
        gevent.signal_handler(signal.SIGHUP, self._hup)
        self.stop.wait()
        if poller is not None:
            poller.kill()
        for logger in self.loggers.values():
            logger.events.put(_TERM)
        gevent.joinall(self.routers)

    def _hup(self) -> None:
        for logger in self.loggers.values():
            logger.events.put(_HUP)


def run(opts: Any) -> int:
    settings = parse_client_opts("consumer-opt", opts.consumer_opts, user_agent(PROG))
    discoverer = TopicDiscoverer(opts, settings)
    discoverer.run()
    failed = [g for g in discoverer.routers if not g.successful()]
    return 1 if failed else 0

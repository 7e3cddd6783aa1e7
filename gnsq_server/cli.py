"""Console entry points (gnsqd, gnsqlookupd, gnsqadmin); the only module that monkey-patches."""

from gevent import monkey

monkey.patch_all()

import importlib  # noqa: E402
import signal  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402
import gevent  # noqa: E402
from click.core import ParameterSource  # noqa: E402

from gnsq_server import NSQ_VERSION, version_line  # noqa: E402
from gnsq_server.config import (  # noqa: E402
    DURATION,
    FLOATS,
    INT,
    NSQADMIN,
    NSQD,
    NSQLOOKUPD,
    STRS,
    TLS_MIN_VERSION,
    TLS_REQUIRED,
    ConfigError,
    Option,
    load_options,
    option_table,
)
from gnsq_server.config_sources import (  # noqa: E402
    default_text,
    is_bool_flag,
    normalize_go_flags,
)
from gnsq_server.logs import reopen_log_file, setup_logging  # noqa: E402

_METAVARS = {
    INT: "INT",
    DURATION: "DURATION",
    STRS: "ADDR",
    FLOATS: "FLOAT[,FLOAT]",
    TLS_REQUIRED: "[=true|false|tcp-https]",
    TLS_MIN_VERSION: "VERSION",
}


class GoFlagCommand(click.Command):
    """A click command that first rewrites Go's flag forms (``-flag value``, bare booleans)."""

    def __init__(self, *args: Any, daemon: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = daemon

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_go_flags(self.daemon, args))


def click_option(opt: Option) -> click.Option:
    """A click option for one table entry, taking text that ``load_options`` parses."""
    # Every value reaches load_options as text, so it parses and reports errors in one place.
    # The ``default`` is only what --help shows: values whose source is not the command line
    # are dropped, so the config file and the real defaults are not overridden.
    metavar = "[=BOOL]" if is_bool_flag(opt) and opt.kind != TLS_REQUIRED else None
    return click.Option(
        [f"--{opt.flag}", opt.flag.replace("-", "_")],
        type=str,
        multiple=opt.repeatable,
        default=None if opt.repeatable else (default_text(opt) or None),
        show_default=not opt.repeatable,
        metavar=metavar or _METAVARS.get(opt.kind, "TEXT"),
        help=opt.help,
    )


def command_line_flags(
    ctx: click.Context, params: dict[str, Any], table: list[Option]
) -> dict[str, Any]:
    """The values given on the command line, keyed by flag name (what ``load_options`` takes):
    click's defaults are left out, so config files and the real defaults still apply."""
    flag_of = {opt.flag.replace("-", "_"): opt.flag for opt in table}
    return {
        flag_of[name]: list(value) if isinstance(value, tuple) else value
        for name, value in params.items()
        if name in flag_of and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }


def go_flag_command(
    prog: str,
    daemon: str,
    version: str,
    summary: str,
    callback: Callable[..., None],
    options: list[click.Option],
    config: click.Option | None = None,
) -> GoFlagCommand:
    """A command with ``config`` (if any), ``--version`` (printing ``version``), -h/--help and
    ``options``: the daemons and the tools alike."""

    def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version)
            ctx.exit(0)

    version_option = click.Option(
        ["--version"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show_version,
        help="print version string",
    )
    return GoFlagCommand(
        prog,
        daemon=daemon,
        callback=callback,
        params=[*([config] if config else []), version_option, *options],
        help=summary,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    )


def _make_command(daemon: str, prog: str, server_module: str, summary: str) -> click.Command:
    table = list(option_table(daemon))

    def main(**params: Any) -> None:
        ctx = click.get_current_context()
        flags = command_line_flags(ctx, params, table)
        try:
            opts = load_options(daemon, flags, params["config"])
        except ConfigError as exc:
            click.echo(f"{prog}: {exc}", err=True)
            ctx.exit(2)
        try:
            setup_logging(
                opts.log_prefix,
                opts.log_level,
                log_file=opts.log_file,
                max_bytes=opts.log_file_max_bytes,
                backups=opts.log_file_backups,
            )
        except OSError as exc:
            problem = f"cannot open {opts.log_file!r} - {exc.strerror}"
            click.echo(f"{prog}: log_file: {problem}", err=True)
            ctx.exit(2)
        if opts.log_file:
            # logrotate's postrotate sends SIGHUP: start a new file at the configured path.
            gevent.signal_handler(signal.SIGHUP, reopen_log_file)
        server = importlib.import_module(server_module)
        ctx.exit(int(server.run(opts) or 0))

    config = click.Option(
        ["-c", "--config"],
        metavar="FILE",
        help=f"path to config file (.ini with a [{daemon}] section, else nsqd's TOML)",
    )
    options = [click_option(opt) for opt in table]
    return go_flag_command(prog, daemon, version_line(prog), summary, main, options, config)


gnsqd: click.Command = _make_command(
    NSQD,
    "gnsqd",
    "gnsq_server.nsqd.server",
    f"nsqd {NSQ_VERSION} re-implemented in Python on gevent: receives, queues and delivers "
    "messages. Flags take Go's forms (-flag=value, --flag value, bare booleans).",
)

gnsqlookupd: click.Command = _make_command(
    NSQLOOKUPD,
    "gnsqlookupd",
    "gnsq_server.lookupd.server",
    f"nsqlookupd {NSQ_VERSION} re-implemented in Python on gevent: the directory of which "
    "nsqd has which topics. Flags take Go's forms (-flag=value, --flag value, bare booleans).",
)

gnsqadmin: click.Command = _make_command(
    NSQADMIN,
    "gnsqadmin",
    "gnsq_server.admin.server",
    "A web UI for an NSQ cluster, as nsqadmin: topics, channels, depths, clients and nodes, "
    "read from nsqlookupd and nsqd HTTP APIs. Flags take Go's forms (-flag=value, --flag value).",
)

__all__ = [
    "gnsqd",
    "gnsqlookupd",
    "gnsqadmin",
    "GoFlagCommand",
    "click_option",
    "command_line_flags",
    "go_flag_command",
]


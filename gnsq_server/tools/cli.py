"""Console entry points of the tools: Go's flag forms read by the daemons' option machinery
(``gnsq_server.config``), so ``-n 5``, ``--topic=t``, ``-print-topic`` all work. Bad flags are one
line on stderr and exit status 2. Monkey-patches, like ``gnsq_server.cli``."""

from gevent import monkey

monkey.patch_all()

import importlib  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

from gnsq_server import NSQ_VERSION  # noqa: E402
from gnsq_server.cli import click_option, command_line_flags, go_flag_command  # noqa: E402
from gnsq_server.config import ConfigError, load_options  # noqa: E402
from gnsq_server.logs import setup_logging  # noqa: E402
from gnsq_server.options import Option, register_option_table  # noqa: E402
from gnsq_server.tools.client import UsageError  # noqa: E402

# gnsq pins ssl.PROTOCOL_TLSv1_2 for its TLS upgrade (deprecated since Python 3.10).
warnings.filterwarnings("ignore", "ssl.PROTOCOL_TLSv1_2 is deprecated", DeprecationWarning)


def _click_option(opt: Option) -> click.Option:
    option = click_option(opt)
    if opt.repeatable and not opt.flag.endswith("address"):
        option.metavar = "TEXT"  # topics and client options, not addresses
    if isinstance(option.default, str) and not option.default.isprintable():
        # shown by --help only (defaults never reach load_options): to_nsq's "\n" delimiter
        option.default = option.default.encode("unicode_escape").decode()
    return option


def _make_command(module_name: str) -> click.Command:
    """A command from a tool module's ``PROG``, ``OPTIONS``, ``SUMMARY``, ``check`` and
    ``run``; the option table is registered under the program's name."""
    tool = importlib.import_module(module_name)
    prog = tool.PROG
    register_option_table(prog, tool.OPTIONS)
    table = list(tool.OPTIONS)

    def main(**params: Any) -> None:
        ctx = click.get_current_context()
        flags = command_line_flags(ctx, params, table)
        try:
            opts = load_options(prog, flags)
            tool.check(opts)
        except (ConfigError, UsageError) as exc:
            click.echo(f"{prog}: {exc}", err=True)
            ctx.exit(2)
        setup_logging(getattr(opts, "log_prefix", f"[{prog}] "),
                      getattr(opts, "log_level", "info"), stream=sys.stderr)
        ctx.exit(int(tool.run(opts) or 0))

    options = [_click_option(opt) for opt in table]
    return go_flag_command(prog, prog, f"{prog} v{NSQ_VERSION}", tool.SUMMARY, main, options)


gnsq_tail: click.Command = _make_command("gnsq_server.tools.tail")
to_gnsq: click.Command = _make_command("gnsq_server.tools.to_nsq")
gnsq_to_file: click.Command = _make_command("gnsq_server.tools.to_file")
gnsq_stat: click.Command = _make_command("gnsq_server.tools.stat")

__all__ = ["gnsq_tail", "to_gnsq", "gnsq_to_file", "gnsq_stat"]

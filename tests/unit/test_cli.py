"""The real console scripts, run as subprocesses (the CLI monkey-patches, so never import it here).

Only cases that stop before a server starts: --version, --help and configuration errors.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gnsq_server import NSQ_VERSION, config

BIN = Path(sys.executable).parent


def run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    path = BIN / script
    if not path.exists():
        pytest.skip(f"{path} not installed (pip install -e .)")
    return subprocess.run(
        [str(path), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize("script", ["gnsqd", "gnsqlookupd"])
@pytest.mark.parametrize("flag", ["--version", "-version", "--version=true"])
def test_version(script, flag):
    result = run(script, flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{script} v{NSQ_VERSION} (built w/python{platform.python_version()})\n"
    assert result.stderr == ""


@pytest.mark.parametrize(("script", "daemon"), [("gnsqd", "nsqd"), ("gnsqlookupd", "nsqlookupd")])
def test_help_lists_every_flag(script, daemon):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    for opt in config.option_table(daemon):
        assert f"--{opt.flag}" in result.stdout, opt.flag
    for flag in ("-c, --config", "--version", "-h, --help"):
        assert flag in result.stdout
    assert run(script, "-h").stdout == result.stdout


ERRORS = [
    # (script, args, config text, words expected on stderr)
    ("gnsqd", ["--mem-queue-size", "lots"], None, "mem_queue_size: invalid integer 'lots'"),
    ("gnsqd", ["-mem-queue-size=lots"], None, "(from flag --mem-queue-size)"),
    ("gnsqd", ["-node-id", "1024"], None, "id: 1024 out of range"),
    ("gnsqd", ["--msg-timeout=60000"], None, 'time: missing unit in duration "60000"'),
    ("gnsqd", ["--snappy=perhaps"], None, "(from flag --snappy)"),
    ("gnsqd", ["--tls-required"], None, "cannot require TLS client connections"),
    ("gnsqd", ["--log-level", "loud"], None, "invalid log level 'loud'"),
    ("gnsqd", ["-c", "{cfg}"], "[nsqd]\nmem_queu_size = 1\n", "mem_queu_size: unknown nsqd option"),
    ("gnsqd", ["--config={cfg}"], "[nsqd]\nmax_deflate_level = 12\n", "(from file {cfg})"),
    (
        "gnsqd",
        ["-config", "{cfg}", "--e2e-processing-latency-percentile", "0.5"],
        "[nsqd]\ntls_required = sometimes\n",
        "tls_required: invalid tls_required 'sometimes'",
    ),
    ("gnsqlookupd", ["--tombstone-lifetime=soon"], None, "tombstone_lifetime: time: invalid"),
    ("gnsqlookupd", ["-c", "{cfg}"], "[nsqlookupd]\nbogus = 1\n", "bogus: unknown nsqlookupd"),
]


@pytest.mark.parametrize(("script", "args", "text", "expected"), ERRORS)
def test_config_errors_exit_2(tmp_path, script, args, text, expected):
    cfg = tmp_path / "bad.ini"
    if text is not None:
        cfg.write_text(text)
    args = [arg.replace("{cfg}", str(cfg)) for arg in args]
    result = run(script, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: ")
    assert expected.replace("{cfg}", str(cfg)) in lines[0]


def test_unknown_flag_is_a_usage_error():
    result = run("gnsqd", "-no-such-flag=1")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr

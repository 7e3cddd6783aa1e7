"""scripts/compare_nsqd.py end to end: a tiny run against the reference nsqd, skipped unless
NSQ_REFERENCE_BIN names a folder holding nsqd and NSQ's bench tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "compare_nsqd.py"
GNSQD = Path(sys.executable).parent / "gnsqd"
REFERENCE = os.environ.get("NSQ_REFERENCE_BIN", "")


@pytest.mark.skipif(
    not (REFERENCE and (Path(REFERENCE) / "nsqd").exists() and GNSQD.exists()),
    reason="NSQ_REFERENCE_BIN does not name a folder with the reference nsqd and bench tools",
)
def test_tiny_run_against_the_reference_nsqd(tmp_path):
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--nsq-bin", REFERENCE, "--gnsqd", str(GNSQD)]
        + ["--modes", "mpub,pub,consume", "--pairs", "1", "--duration", "0.5"]
        + ["--fill-count", "20000", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["figure"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"mpub", "pub", "consume", "rss"}
    for name in ("mpub", "pub", "consume"):
        assert rows[name]["nsqd"] > 0 and rows[name]["gnsqd"] > 0
    assert "ratio" in done.stdout and "mpub" in done.stdout

#!/usr/bin/env bash
# Install the package with its test extras into .venv and run the whole suite.
# Usage: scripts/test.sh [--slow] [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e '.[test]'
ruff check gnsq_server tests scripts
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then
    shift
    marker=(-m "slow")
fi
exec python -m pytest "${marker[@]}" -q "$@"

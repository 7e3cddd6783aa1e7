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
# gnsqadmin's browser tests drive Debian's headless Chromium through chromedriver.
if { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; } \
    && command -v apt-get >/dev/null; then
    sudo_cmd=()
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq || true
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver >/dev/null || echo "chromium not installed: browser tests skip" >&2
fi
ruff check gnsq_server tests scripts
marker=(-m "not slow")
if [ "${1:-}" = "--slow" ]; then
    shift
    marker=(-m "slow")
fi
exec python -m pytest "${marker[@]}" -q "$@"

#!/usr/bin/env bash
# Quick start: one gnsqlookupd in the background and one gnsqd in the foreground, configured by
# conf/nsqlookupd.ini and conf/nsqd.ini (data in data/nsqd under the repository root).
# Usage: scripts/run.sh [extra gnsqd flags...]   Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -m pip install -q -e . >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
fi
mkdir -p data/nsqd

lookupd_pid=
nsqd_pid=
stop() {
    if [ -z "$nsqd_pid" ]; then exit 143; fi
    kill -TERM "$nsqd_pid" 2>/dev/null || true
}
cleanup() {
    if [ -z "$lookupd_pid" ]; then return; fi
    kill -TERM "$lookupd_pid" 2>/dev/null || true
    wait "$lookupd_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap stop INT TERM

.venv/bin/gnsqlookupd -c conf/nsqlookupd.ini &
lookupd_pid=$!

# gnsqd runs as a child we wait for, so a signal to this script is passed on as SIGTERM
# (a graceful stop) instead of waiting for bash to notice.
.venv/bin/gnsqd -c conf/nsqd.ini "$@" &
nsqd_pid=$!
status=0
wait "$nsqd_pid" || status=$?
if [ "$status" -gt 128 ] && kill -0 "$nsqd_pid" 2>/dev/null; then
    # wait was interrupted by the trap: wait again for gnsqd's own exit status
    status=0
    wait "$nsqd_pid" || status=$?
fi
exit "$status"

#!/usr/bin/env bash
# Soak run: 1M requests at 64 connections while the called plugin is rewritten every 100 ms.
# Builds dpms (release) unless DPMS_BIN names a binary, starts `dpms serve` on a free 127.0.0.1
# port with a temporary plugin folder holding one plugin, runs bench/soak.py against it, then
# stops the server with SIGTERM and checks that it exits 0.
#   bench/soak.sh                         full run (1,000,000 requests, 2 workers)
#   bench/soak.sh --requests 50000        quick run
#   bench/soak.sh --workers 1 ...         worker processes (default 2)
#   DPMS_BIN=/tmp/dpms bench/soak.sh      use this binary, do not build
# Other arguments go to soak.py (bench/soak.sh --help shows them).
# Exit status: 0 pass; 1 the soak or the shutdown failed; 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=/usr/bin/python3.11            # Debian's interpreter; soak.py needs only the standard library
READY_SECS=120                    # longest wait for the `listening on` line
STOP_SECS=30                      # longest wait for the exit after SIGTERM (DPMS_SHUTDOWN_SECS=5)
export PYTHONDONTWRITEBYTECODE=1  # never leave __pycache__ in the plugin folder

workers=2
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) [ $# -ge 2 ] || { echo "soak: --workers needs a number" >&2; exit 2; }
                   workers=$2; shift 2 ;;
        --workers=*) workers=${1#--workers=}; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; echo
                   exec "$PY" bench/soak.py --help ;;
        *) args+=("$1"); shift ;;
    esac
done
case "$workers" in ''|*[!0-9]*) echo "soak: --workers needs a number, got \`$workers\`" >&2; exit 2 ;; esac

if [ -n "${DPMS_BIN:-}" ]; then
    BIN=$DPMS_BIN
    built="binary $BIN"
else
    cargo build --release --locked
    BIN=$ROOT/target/release/dpms
    built="built from git $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD -- 2>/dev/null || echo '+changes')"
fi
[ -x "$BIN" ] || { echo "soak: \`$BIN\` is not an executable" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/dpms-soak.XXXXXX")
mkdir "$work/plugins" "$work/run"
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true   # workers die with the supervisor (PDEATHSIG)
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

plugin=$work/plugins/soak_probe.py
"$PY" bench/soak.py --init --plugin "$plugin"

# The server runs in an empty folder (no stray .env) with only the soak plugin folder.
for k in DPMS_PLUGINS VIRTUAL_ENV DPMS_VENV DPMS_PORT DPMS_HOST DPMS_WORKERS DPMS_RELOAD DPMS_WATCH; do
    unset "$k"
done
export plugins=$work/plugins
export DPMS_SHUTDOWN_SECS=${DPMS_SHUTDOWN_SECS:-5}
(cd "$work/run" && exec "$BIN" serve --host 127.0.0.1 --port 0 --workers "$workers") \
    >"$work/stdout" 2>"$work/server.log" &
pid=$!

url=
for _ in $(seq $((READY_SECS * 10))); do
    url=$(sed -n '1s/^listening on \(http:\/\/127\.0\.0\.1:[0-9][0-9]*\)$/\1/p' "$work/stdout")
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$url" ]; then
    echo "soak: the server printed no \`listening on\` line; stdout and log tail:" >&2
    head -c 2000 "$work/stdout" >&2 || true
    tail -n 20 "$work/server.log" >&2 || true
    exit 2
fi
echo "soak: $BIN serve --workers $workers: $url (pid $pid)" >&2

rc=0
"$PY" bench/soak.py --url "$url" --pid "$pid" --plugin "$plugin" \
    --label "($("$BIN" --version), --workers $workers, $built)" \
    ${args[@]+"${args[@]}"} || rc=$?

# Stop: SIGTERM, then wait (bounded) for exit status 0.
stop_rc=
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq $((STOP_SECS * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "soak: FAIL: the server did not exit within ${STOP_SECS} s of SIGTERM" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
fi
wait "$pid" 2>/dev/null && stop_rc=0 || stop_rc=$?
pid=
if [ "$stop_rc" -ne 0 ]; then
    echo "soak: FAIL: the server exited with status $stop_rc after SIGTERM" >&2
    [ "$rc" -eq 0 ] && rc=1
else
    echo "soak: server stopped by SIGTERM, exit status 0" >&2
fi
if [ "$rc" -ne 0 ]; then
    # Half-written plugin files log `plugin does not import` warnings by design: left out here.
    echo "soak: server log, WARN/ERROR lines other than \`plugin does not import\` (last 20):" >&2
    grep -E ' (WARN|ERROR) |panicked' "$work/server.log" | grep -v 'plugin does not import' \
        | tail -n 20 >&2 || true
fi
exit "$rc"

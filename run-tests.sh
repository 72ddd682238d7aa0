#!/usr/bin/env bash
# Builds dpms, runs `cargo test` (unit tests and the integration tests, which start their own
# servers) and a short bounded fuzz run (fuzz/run.sh), then starts one server on a free
# loopback port with the sample plugins plus a temporary plugin folder and runs the pytest
# suite against it. The server is always stopped.
# Exits non-zero on any failure. Extra arguments go to pytest (e.g. `-k marshal -x`).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

./makevenv.sh
# The browser test (pytests/test_browser_tokens.py) drives Debian's Chromium.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v chromium >/dev/null 2>&1; then
    echo "run-tests: installing chromium (Debian)" >&2
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null; then
        as_root apt-get update >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
    fi
fi
cargo build --locked
cargo test --locked
# Every fuzz target for 15 s on the checked-in corpus (installs cargo-fuzz into fuzz/.tools and
# builds into fuzz/target the first time: about 3 min from scratch). Longer: fuzz/run.sh 600.
fuzz/run.sh 15
# The seed corpus and the reproducers of fixed crashes (fuzz/regressions), replayed on stable.
cargo test --locked --manifest-path fuzz/Cargo.toml

TMP=$(mktemp -d "${TMPDIR:-/tmp}/dpms-tests.XXXXXX")
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/plugins" "$TMP/work"
# The server runs in an empty folder: no stray .env is read.
(cd "$TMP/work" && exec env plugins="$ROOT/plugins:$TMP/plugins" DPMS_PLUGINS= \
    "$ROOT/target/debug/dpms" serve --host 127.0.0.1 --port 0 >"$TMP/stdout" 2>"$TMP/server.log") &
SERVER_PID=$!

URL=""
for _ in $(seq 1 600); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "dpms exited before listening; its log:" >&2
        cat "$TMP/server.log" >&2
        exit 1
    fi
    URL=$(sed -n 's/^listening on //p' "$TMP/stdout" | head -n 1)
    [ -n "$URL" ] && break
    sleep 0.1
done
if [ -z "$URL" ]; then
    echo "dpms did not start within 60 s; its log:" >&2
    cat "$TMP/server.log" >&2
    exit 1
fi
echo "pytest against $URL"

status=0
DPMS_URL="$URL" DPMS_TEST_PLUGINS="$TMP/plugins" DPMS_BIN="$ROOT/target/debug/dpms" \
    "$ROOT/.venv/bin/python" -m pytest pytests "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "pytest failed (exit $status); last server log lines:" >&2
    tail -n 40 "$TMP/server.log" >&2
fi
exit "$status"

#!/usr/bin/env bash
# One command from a fresh clone: installs wrk (Debian) and bench/.venv (Granian, uvicorn, FastAPI
# from PyPI, plus ./python), builds dpms (release), then runs bench/bench.py, which starts every
# server itself on free 127.0.0.1 ports and prints one table.
#   bench/run.sh                  full run (10 s per case; BENCH_SECS=N to change)
#   BENCH_QUICK=1 bench/run.sh    smoke run (~2 s per case, 100k requests for the RSS check)
# Arguments go to bench.py (bench/run.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PYTHONDONTWRITEBYTECODE=1   # never leave __pycache__ in plugin folders

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. wrk, the load generator.
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
    fi
fi
command -v taskset >/dev/null 2>&1 || { echo "bench: taskset (util-linux) is missing" >&2; exit 1; }

# 2. bench/.venv from Debian's python3.11 (never whatever python3 is first on PATH).
PY=/usr/bin/python3.11
VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "bench: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.bench-requirements"
want="$(cat bench/requirements.txt python/pyproject.toml python/dpms/*.py python/vyperlogix/*.py \
        python/vyperlogix/decorators/*.py | sha256sum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bench: installing peers into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
    # Install ./python from a copy: pip/setuptools would otherwise write build files into python/.
    pkgtmp=$(mktemp -d "${TMPDIR:-/tmp}/dpms-bench-pkg.XXXXXX")
    cp -r python "$pkgtmp/python"
    rm -rf "$pkgtmp/python/build" "$pkgtmp/python/"*.egg-info
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "$pkgtmp/python"
    rm -rf "$pkgtmp"
    echo "$want" > "$stamp"
fi

# 3. dpms itself.
cargo build --release --locked

exec "$VENV/bin/python" "$ROOT/bench/bench.py" "$@"

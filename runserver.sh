#!/usr/bin/env bash
# Builds dpms if needed (release profile) and serves ./plugins on 127.0.0.1:8088.
# Flags pass through to `dpms serve`, e.g. `./runserver.sh --port 9000 --reload always`.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --quiet
export plugins="${plugins:-${DPMS_PLUGINS:-./plugins}}"
exec ./target/release/dpms serve "$@"

#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on a copy of the checked-in seed corpus, and exits
# non-zero if any of them found a crash (a panic, an invariant broken, a timeout or too much
# memory). `fuzz/run.sh [seconds-per-target]`, default 600. Works on a fresh machine with the
# stable toolchain only:
# - cargo-fuzz is installed into fuzz/.tools (git-ignored) the first time;
# - `RUSTC_BOOTSTRAP=1` lets stable rustc take the `-Z` flags cargo-fuzz passes;
# - everything builds into fuzz/target, apart from the main build;
# - new inputs go to a scratch copy of the corpus: the checked-in corpus never grows by itself
#   (to keep an input, copy it into fuzz/corpus/<target>/ by hand).
# Crash reproducers are written to fuzz/artifacts/<target>/, each run's log beside them.
# Environment: FUZZ_SANITIZER (default `none`; `address` is slower and finds nothing more in
# safe code), FUZZ_RSS_MB (default 2048), FUZZ_TARGETS (default: all, e.g. "marshal").
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-600}
CARGO_FUZZ_VERSION=0.13.2
TOOLS="$PWD/fuzz/.tools"
SANITIZER=${FUZZ_SANITIZER:-none}
RSS_MB=${FUZZ_RSS_MB:-2048}
TARGETS=${FUZZ_TARGETS:-"marshal dotenv"}

case "$SECS" in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh [seconds-per-target]" >&2; exit 2 ;;
esac

if [ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into fuzz/.tools"
    start=$(date +%s)
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS" --quiet
    echo "fuzz: cargo-fuzz installed in $(( $(date +%s) - start )) s"
fi
export PATH="$TOOLS/bin:$PATH"
export RUSTC_BOOTSTRAP=1

# cargo-fuzz has no --locked: check here that fuzz/Cargo.lock needs no change.
cargo fetch --locked --manifest-path fuzz/Cargo.toml --quiet

start=$(date +%s)
cargo fuzz build --sanitizer "$SANITIZER" --debug-assertions
echo "fuzz: targets built in $(( $(date +%s) - start )) s"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/dpms-fuzz.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

failed=()
for target in $TARGETS; do
    corpus="$SCRATCH/$target"
    artifacts="fuzz/artifacts/$target"
    log="fuzz/artifacts/$target.log"
    mkdir -p "$corpus" "$artifacts"
    cp -R "fuzz/corpus/$target/." "$corpus/"
    seeds=$(find "$corpus" -type f | wc -l)
    echo "fuzz: $target for ${SECS} s from $seeds seeds (log: $log)"
    status=0
    cargo fuzz run --sanitizer "$SANITIZER" --debug-assertions "$target" "$corpus" -- \
        -max_total_time="$SECS" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
        -timeout=10 -max_len=8192 -print_final_stats=1 -dict="fuzz/dict/$target.dict" \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 || true)
    units=$(find "$corpus" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        echo "fuzz: $target: ${execs:-?} executions, $cov, corpus $seeds -> $units, no crash"
    else
        failed+=("$target")
        echo "fuzz: $target: ${execs:-?} executions, CRASH (exit $status); reproducer:" >&2
        grep -E 'Test unit written to|ERROR: libFuzzer' "$log" >&2 || true
        # A panic in fuzz/src/*_checks.rs is a broken invariant; the next line says which.
        grep -m 1 -A1 'panicked at' "$log" >&2 || true
        echo "fuzz: reproduce with: RUSTC_BOOTSTRAP=1 PATH=fuzz/.tools/bin:\$PATH" \
            "cargo fuzz run --sanitizer $SANITIZER --debug-assertions $target <artifact>" >&2
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: crashes found in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: no crashes"

#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, one after the other, niced; fails if any
# target finds a crash (its input is left in fuzz/artifacts/TARGET/). docs/fuzzing.md.
#
#   fuzz/run.sh [SECONDS [TARGET...]]    SECONDS per target (default 60); all targets if none
#
# The targets are those fuzz/Cargo.toml declares (`cargo fuzz list`), so a new target runs
# here without touching this script. Each keeps its corpus in fuzz/corpus/TARGET (not
# committed) and starts from fuzz/seeds/TARGET when that exists.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Build them all first, so the time budget is spent fuzzing.
nice cargo +nightly fuzz build -O
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "fuzz: $t for ${seconds}s"
    # -rss_limit_mb: a target that needs more memory than this for one input has found a bug
    # (issue 11 item 10 was a 10 KB file taking gigabytes). -timeout: ten seconds for one input.
    if ! nice cargo +nightly fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -print_final_stats=1 2>"corpus/$t.log"; then
        failed+=("$t")
        tail -40 "corpus/$t.log"
    fi
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)" "corpus/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes found by: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"

#!/usr/bin/env bash
# Runs every fuzz target for a while: `fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]`.
#
# - Installs cargo-fuzz if it is missing.
# - cargo-fuzz needs nightly-only flags (sanitizers); RUSTC_BOOTSTRAP=1 lets
#   the stable toolchain accept them.
# - Each target starts from its checked-in seeds (fuzz/seeds/TARGET) and
#   grows a working corpus in fuzz/corpus/TARGET (not committed).
# - A crash stops the run, leaves the input in fuzz/artifacts/TARGET/ and
#   makes this script exit non-zero; see docs/fuzzing.md to reproduce it.
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzz/run.sh: $target for ${seconds}s"
    log="fuzz/corpus/$target.log"
    status=0
    cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # Only the summary, unless it failed: then the whole story.
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz/run.sh: $target FAILED (exit $status); input saved in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
echo "fuzz/run.sh: all targets ran ${seconds}s without a failure"

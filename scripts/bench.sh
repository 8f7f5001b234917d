#!/usr/bin/env bash
# Runs the four benchmark runs of BENCHMARKS.md, back to back, REPS times (default 3), against
# a server already listening on URL whose process id is PID (for its CPU and RSS). Prints each
# run's report and its JSON summary. Build first: cargo build --release --examples
#
# Usage: scripts/bench.sh URL PID [extra cartstream-bench options, e.g. --duration 10s]
# Env:   REPS  repetitions of the four runs (default 3)
#        BENCH_QUIET=1  before each run, wait (up to 120 s) until no rustc runs on the machine:
#                       a shared machine's compile jobs otherwise halve some numbers
set -euo pipefail
URL="$1"; PID="$2"; shift 2
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
common=(--url "$URL" --server-pid "$PID" --warmup 2s --duration 8s --json "$@")
quiet() {
    if [ -n "${BENCH_QUIET:-}" ]; then
        local end=$((SECONDS + 120))
        while pgrep -x rustc >/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 2; done
    fi
    echo "# $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) rustc running: $(pgrep -xc rustc || true)"
}
for rep in $(seq "${REPS:-3}"); do
    echo "# repetition $rep"
    quiet; "$BENCH" ws --connections 8 --window 64 "${common[@]}" || true
    quiet; "$BENCH" ws --connections 8 --window 1 "${common[@]}" || true
    quiet; "$BENCH" http --concurrency 32 "${common[@]}" || true
    quiet; "$BENCH" http-batch --concurrency 8 --batch-size 100 "${common[@]}" || true
done

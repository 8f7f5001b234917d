#!/usr/bin/env bash
# One benchmark run with the event rate limit kept locally or globally (in Redis), on a fresh
# Redis + ClickHouse server (scripts/fresh-server.sh), with a limit high enough never to
# refuse: the difference is the cost of the global check. Prints the bench's throughput,
# latency and server CPU, and the fallbacks the server counted (checks decided locally).
#
# Usage: scripts/bench-rate-scope.sh local|global TIMEOUT BENCH-ARGS...
#   e.g. scripts/bench-rate-scope.sh global 50ms ws --connections 8 --window 64
# Needs a release build (cargo build --release --bin cartstream --example cartstream-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-target/release/cartstream}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
. scripts/fresh-server.sh
scope=$1; timeout=$2; shift 2
dir=$(mktemp -d); tag=$(fresh_tag)
fresh_env rc "$dir" "$tag"
env "${FRESH_ENV[@]}" CARTSTREAM_RATE_LIMIT_PER_SECOND=1000000 CARTSTREAM_RATE_LIMIT_BURST=10000000 \
    CARTSTREAM_RATE_LIMIT_SCOPE="$scope" CARTSTREAM_RATE_LIMIT_REDIS_TIMEOUT="$timeout" \
    CARTSTREAM_RATE_LIMIT_KEY_PREFIX="bench:$tag:rl:" "$BIN" >"$dir.log" 2>&1 &
pid=$!
fresh_wait 10 || true
echo "### $scope (timeout $timeout): $*, $(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)"
"$BENCH" "$@" --url "$FRESH_URL" --server-pid "$pid" --warmup 2s --duration 8s \
    | grep -E "throughput|latency|mismatches|server CPU" || true
curl -s "$FRESH_URL/metrics" | grep -E "^cartstream_rate_limit_fallbacks_total" || true
kill -TERM "$pid"; wait "$pid" || true
fresh_cleanup rc "$tag"   # also removes the bucket keys (bench:$tag:*)
rm -rf "$dir" "$dir.log"

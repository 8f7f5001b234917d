#!/usr/bin/env bash
# One WS pipelined run (8 connections x 64 in flight, 2 s warm-up + 8 s) on a fresh server
# over the embedded default, printing one JSON line: events acked a second, the p50 latency,
# the server's CPU (% of one core) and its CPU per acked event (us). For quick A/B pairs of
# builds or settings, run by run; bench-ceiling.sh is the sitting.
#
# Usage: scripts/ws-once.sh BINARY LABEL [NAME=value ...]   (the NAME=value pairs go into the
#   server's environment, e.g. CARTSTREAM_FORWARD_MAX_ROWS=100000). BENCH=path of
#   cartstream-bench (default target/release/examples/cartstream-bench). Listens on
#   127.0.0.1:$FRESH_PORT (3291).
set -uo pipefail
BIN=$1; label=$2; shift 2
BENCH=${BENCH:-$(dirname "$0")/../target/release/examples/cartstream-bench}
PORT=${FRESH_PORT:-3291}
d=$(mktemp -d /tmp/ws-once.XXXXXX)
env "$@" CARTSTREAM_DATA_DIR="$d" CARTSTREAM_LISTEN=127.0.0.1:$PORT CARTSTREAM_LOG=warn "$BIN" >"$d.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
"$BENCH" ws --connections 8 --window 64 --url "http://127.0.0.1:$PORT" --server-pid $pid \
    --warmup 2s --duration "${SECS:-8}s" --json 2>&1 | tail -n1 |
    jq -c --arg m "$label" '{m: $m, acked_per_sec: (.acked_per_sec | floor), p50: .latency_us.p50,
        cpu: (.server_cpu_pct | floor), us_per_ev: ((.server_cpu_pct * 10000 / .acked_per_sec) * 100 | floor / 100)}'
kill $pid; wait $pid 2>/dev/null
rm -rf "$d" "$d.log"

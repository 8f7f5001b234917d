#!/usr/bin/env bash
# A "server binary" for scripts/bench-ab.sh that runs cartstream with headless tap
# subscribers watching everything (scripts/tap-subscribers.mjs), to measure what the tap
# costs ingest:
#
#   TAP_BENCH_BIN=target/release/cartstream TAP_SUBSCRIBERS=5 \
#     scripts/bench-ab.sh target/release/cartstream scripts/bench-with-taps.sh 3
#
# The server keeps this script's pid (exec), so bench-ab's --server-pid and kill reach it;
# the subscribers connect once /health answers and leave when the server closes them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TAP_BENCH_BIN:-target/release/cartstream}
n=${TAP_SUBSCRIBERS:-5}
listen=${CARTSTREAM_LISTEN:-127.0.0.1:3001}
(
    for _ in $(seq 200); do
        curl -fsS "http://$listen/health" >/dev/null 2>&1 && break
        sleep 0.05
    done
    exec node --experimental-websocket scripts/tap-subscribers.mjs "ws://$listen/events/tap" "$n"
) &
exec "$bin"

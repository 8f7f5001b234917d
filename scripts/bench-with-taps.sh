#!/usr/bin/env bash
# A "server binary" for scripts/bench-ab.sh that runs cartstream with headless tap
# subscribers watching everything (examples/tap-subscribers.rs: each reads the full stream
# and counts events from each frame's `count`, without parsing them), to measure what the
# tap costs ingest:
#
#   cargo build --release --bin cartstream --example cartstream-bench --example tap-subscribers
#   TAP_BENCH_BIN=target/release/cartstream TAP_SUBSCRIBERS=5 FRESH_PORT=3271 \
#     FIGURES="rc-ws-pipelined rc-http-batch" \
#     scripts/bench-ab.sh target/release/cartstream scripts/bench-with-taps.sh 3
#
# The server keeps this script's pid (exec), so bench-ab's --server-pid and kill reach it;
# the subscribers connect once /health answers and leave when the server closes them. What
# each received and skipped is appended to TAP_LOG (target/bench-with-taps.log), since
# bench-ab discards the server's output. TAP_CLIENT=node uses scripts/tap-subscribers.mjs
# (Node.js, a JSON.parse per frame) instead, for comparison; TAP_CLIENT=read runs the Rust
# subscribers with --client read (every byte read into memory in large reads, each frame's
# count read, nothing parsed: the whole stream received, without the work a browser on another
# machine would do on its own CPU); TAP_CLIENT=discard with --client discard (each frame's count
# read, the rest dropped by the kernel unread: nothing but the TCP stream). TAP_NICE=N runs the subscribers at
# nice N (default 0): they stand in for browsers on other machines, and at 19 they take only
# the CPU that the server, Redis, ClickHouse and the load generator leave. TAP_FILTER='{...}'
# gives every (Rust) subscriber that filter, e.g. '{"outcomes":["unavailable"]}': the tap's
# cost without sending the stream. TAP_IDLE=1 runs the subscribers in the idle scheduling
# class (`chrt --idle 0`): they run only on CPU nothing else wants, as browsers on other
# machines would take none of the cores being measured; what they skipped is in TAP_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${TAP_BENCH_BIN:-target/release/cartstream}
n=${TAP_SUBSCRIBERS:-5}
listen=${CARTSTREAM_LISTEN:-127.0.0.1:3001}
log=${TAP_LOG:-target/bench-with-taps.log}
client=${TAP_CLIENT:-rust}
nice=${TAP_NICE:-0}
sched=()
[ -n "${TAP_IDLE:-}" ] && sched=(chrt --idle 0)
filter=()
[ -n "${TAP_FILTER:-}" ] && filter=(--filter "$TAP_FILTER")
(
    for _ in $(seq 200); do
        curl -fsS "http://$listen/health" >/dev/null 2>&1 && break
        sleep 0.05
    done
    echo "## $(date -u +%T) $n $client subscribers of $listen, nice $nice${TAP_IDLE:+, idle class}" >>"$log"
    if [ "$client" = node ]; then
        exec "${sched[@]}" nice -n "$nice" node --experimental-websocket scripts/tap-subscribers.mjs "ws://$listen/events/tap" "$n" 2>>"$log"
    fi
    mode=tungstenite
    case "$client" in read | discard) mode=$client ;; esac
    exec "${sched[@]}" nice -n "$nice" "${TAP_SUBSCRIBERS_BIN:-target/release/examples/tap-subscribers}" --url "ws://$listen/events/tap" -n "$n" "${filter[@]}" --client "$mode" 2>>"$log"
) &
exec "$bin"

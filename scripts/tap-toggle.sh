#!/usr/bin/env bash
# What watching costs ingest, measured within one server run: one load runs throughout while
# five tap subscribers come and go, WINDOW seconds without them, WINDOW seconds with them,
# ROUNDS times, then once more without. Each window's rate comes from the server's own
# events_received counter (from its second second to its end, so connecting and leaving are
# not counted). Each round compares its window with subscribers against the mean of the two
# windows without them around it: the machine's drift, which moves throughput here by a fifth
# within minutes, hits both sides of a pair alike, where bench-ab.sh's quartets are minutes
# apart.
#
# Usage: scripts/tap-toggle.sh SERVER_BINARY BENCH-ARGS...
#   e.g. scripts/tap-toggle.sh target/release/cartstream http-batch --concurrency 8 --batch-size 100
#        scripts/tap-toggle.sh target/release/cartstream ws --connections 8 --window 64
# WINDOW (default 6 s), ROUNDS (default 8), TAP_SUBSCRIBERS (5), TAP_CLIENT (tap-subscribers
# --client: read, the default here, tungstenite or discard), SUBS (the tap-subscribers binary),
# BENCH (cartstream-bench), BACKEND (rc, the default, or embedded), FRESH_PORT (3101).
# Prints each round and the median change; the subscribers' report goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1; shift
BENCH=${BENCH:-target/release/examples/cartstream-bench}
SUBS=${SUBS:-target/release/examples/tap-subscribers}
WINDOW=${WINDOW:-6}
ROUNDS=${ROUNDS:-8}
n=${TAP_SUBSCRIBERS:-5}
client=${TAP_CLIENT:-read}
backend=${BACKEND:-rc}
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
dir=$(mktemp -d)
tag=$(fresh_tag)
fresh_env "$backend" "$dir/data" "$tag"
env "${FRESH_ENV[@]}" "$BIN" >"$dir/log" 2>&1 &
spid=$!
bpid=""
cleanup() {
    [ -n "$bpid" ] && kill "$bpid" 2>/dev/null || true
    kill -TERM "$spid" 2>/dev/null || true
    wait 2>/dev/null || true
    fresh_cleanup "$backend" "$tag" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
fresh_wait 60
received() { curl -fs "$FRESH_URL/metrics" | awk '/^cartstream_events_received_total/ {s += $2} END {print s + 0}'; }
now() { date +%s.%N; }
# rate: events per second from the window's second second to its end.
window() {
    local subs=$1 e0 t0 e1 t1 start tpid=""
    start=$(now)
    if [ "$subs" = with ]; then
        "$SUBS" --url "ws://127.0.0.1:$FRESH_PORT/events/tap" -n "$n" --client "$client" \
            --duration "$WINDOW" >/dev/null 2>>"$dir/subs" &
        tpid=$!
    fi
    sleep 1
    e0=$(received); t0=$(now)
    sleep "$(awk -v s="$start" -v w="$WINDOW" -v n="$(now)" 'BEGIN {d = s + w - n; print (d > 0) ? d : 0}')"
    e1=$(received); t1=$(now)
    [ -n "$tpid" ] && { wait "$tpid" || true; }
    echo "$e0 $t0 $e1 $t1" | awk '{printf "%.0f\n", ($3 - $1) / ($4 - $2)}'
}
total=$(( (2 * ROUNDS + 1) * WINDOW + 4 ))
"$BENCH" "$@" --url "$FRESH_URL" --warmup 2s --duration "${total}s" >"$dir/bench" 2>&1 &
bpid=$!
sleep 3
echo "# $(basename "$BIN") $*, $n $client subscribers, $ROUNDS rounds of ${WINDOW}s without / with, $(date -u +%T)"
without=$(window without)
for r in $(seq "$ROUNDS"); do
    with=$(window with)
    after=$(window without)
    echo "$r $without $with $after" | awk '{base = ($2 + $4) / 2; printf "round %d: without %d, with %d, without %d: %+.1f%%\n", $1, $2, $3, $4, ($3 / base - 1) * 100}'
    without=$after
done | tee "$dir/rounds"
awk '{gsub(/[%+]/, "", $NF); print $NF}' "$dir/rounds" | sort -g | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "median change with subscribers: %+.1f%% (%d rounds)\n", m, NR}'
grep -E "skipped|error" "$dir/subs" | awk '{s += $(NF - 1); e += $3} END {if (e + s > 0) printf "subscribers skipped %d of %d events received or skipped (%.2f%%)\n", s, e + s, 100 * s / (e + s)}' || true
wait "$bpid" 2>/dev/null || true
bpid=""
grep -E "throughput|errors" "$dir/bench" | sed 's/^/bench: /'

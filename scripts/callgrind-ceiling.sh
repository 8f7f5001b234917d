#!/usr/bin/env bash
# Where a build's CPU goes per event, against its ceiling, counted by callgrind (instructions
# are the same whatever else the machine does): the discard server and the build on Redis +
# ClickHouse, each under `valgrind --tool=callgrind` on a fresh server, for WS pipelined 8 x 64
# and HTTP batch 8 x 100, a fixed number of events each. Prints the instructions per received
# event by component (scripts/callgrind-breakdown.py) and keeps the profiles in $OUT.
#
# Usage: scripts/callgrind-ceiling.sh BINARY [EVENTS]     (default 40000 events per run)
#   BINARY is a release `cartstream` (symbols are enough; CARGO_PROFILE_RELEASE_DEBUG=
#   line-tables-only adds lines for callgrind_annotate --auto=yes); the discard server is the
#   example beside it, or DISCARD=path. LOADS="ws http" selects the loads, SERVERS="discard rc"
#   the servers (SERVERS=discard: the discard server only, no Redis or ClickHouse).
# Needs Redis and ClickHouse, valgrind, and target/release/examples/cartstream-bench (or
# BENCH=path). Listens on 127.0.0.1:3101.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$1"; EVENTS="${2:-40000}"
DISCARD="${DISCARD:-$(dirname "$BIN")/examples/discard-server}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
OUT="${OUT:-$(mktemp -d /tmp/callgrind-ceiling.XXXXXX)}"; mkdir -p "$OUT"
LOADS="${LOADS:-ws http}"
SERVERS="${SERVERS:-discard rc}"
FRESH_PORT="${FRESH_PORT:-3101}"
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# run NAME SERVER BACKEND BENCH-ARGS...: $OUT/NAME.out, and the events the server received
# appended to $OUT/events (its own counter, read just before it stops).
run() {
    local name="$1" server="$2" backend="$3"; shift 3
    local dir tag pid events
    dir=$(mktemp -d)
    tag=$(fresh_tag)
    fresh_env "$backend" "$dir/data" "$tag"
    env "${FRESH_ENV[@]}" valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" \
        "$server" >"$OUT/$name.log" 2>&1 &
    pid=$!
    fresh_wait 120 || true
    "$BENCH" "$@" --url "$FRESH_URL" --events "$EVENTS" --reply-timeout 120s >"$OUT/$name.bench" 2>&1 || true
    # Let the forwarder empty the journal (its work is part of the cost per event), 60 s at most.
    for _ in $(seq 120); do
        curl -fs "$FRESH_URL/metrics" | awk '/^cartstream_journal_entries / {n = $2} END {exit !(n + 0 == 0)}' && break
        sleep 0.5
    done
    curl -fs "$FRESH_URL/metrics" >"$OUT/$name.metrics" || true
    events=$(awk '/^cartstream_events_received_total/ {s += $2} END {print s + 0}' "$OUT/$name.metrics")
    kill -TERM "$pid"; wait "$pid" || true
    echo "$name $events" >>"$OUT/events"
    echo "$name: $events events, $(grep -m1 throughput "$OUT/$name.bench" | sed 's/^ *//')"
    # The ClickHouse database only: the Redis keys expire with the dedup window by themselves,
    # and scanning a shared Redis of millions of keys for them takes minutes.
    [ "$backend" = rc ] && curl -fsS --data-binary "DROP DATABASE IF EXISTS bench_$tag" http://127.0.0.1:8123/ >/dev/null || true
    rm -rf "$dir"
}

for load in $LOADS; do
    case $load in
        ws) args=(ws --connections 8 --window 64) ;;
        http) args=(http-batch --concurrency 8 --batch-size 100) ;;
        closed) args=(ws --connections 8 --window 1) ;;
    esac
    if [[ " $SERVERS " == *" discard "* ]]; then run "discard-$load" "$DISCARD" embedded "${args[@]}"; fi
    if [[ " $SERVERS " == *" rc "* ]]; then run "rc-$load" "$BIN" rc "${args[@]}"; fi
done
names=(); counts=()
while read -r name n; do names+=("$OUT/$name.out"); counts+=("$n"); done <"$OUT/events"
python3 scripts/callgrind-breakdown.py "$(IFS=,; echo "${counts[*]}")" "${names[@]}"

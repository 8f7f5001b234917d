#!/usr/bin/env bash
# Work per event of two server builds, counted by callgrind rather than timed: instructions
# are repeatable for the same binary and input whatever else the machine is doing, so this
# settles a few-percent question that bench-ab.sh's timings cannot on a noisy 2-core machine.
#
# Each build runs each load once under `valgrind --tool=callgrind`, on a fresh server (new
# data dir, ClickHouse database and Redis key prefix, as bench-ab.sh). The figure is the whole
# process's instructions (startup, warm-up and shutdown included, the same for both builds)
# divided by the events the server received (its own `events_received` counter, read just
# before it is stopped).
#
# Usage: scripts/callgrind-ab.sh OLD_BINARY NEW_BINARY [SECONDS]   (default 20 s per run)
# Needs Redis and ClickHouse (scripts/ensure-services.sh), valgrind, and
# target/release/examples/cartstream-bench. Listens on 127.0.0.1:3101 (FRESH_PORT).
# NEW_TAPS=N: N tap subscribers (target/release/examples/tap-subscribers) watch the second
# build's runs (OLD_TAPS=N the first's), so the same binary twice measures what watching costs per event; LOADS
# (a regex) keeps only the loads it matches, e.g. LOADS='^rc'. TAP_FILTER='{...}' gives the
# subscribers that filter (e.g. '{"outcomes":["unavailable"]}': watching without the sends).
# KEEP=DIR keeps each run's profile there (BINARY-BACKEND-LOAD-TAPS.out).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$1"; NEW="$2"; SECS="${3:-20}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# run BINARY TAPS embedded|rc BENCH-ARGS...: prints instructions per event.
run() {
    local bin="$1" taps="$2" backend="$3"; shift 3
    local dir tag pid events ir label
    dir=$(mktemp -d)
    tag=$(fresh_tag)
    fresh_env "$backend" "$dir/data" "$tag"
    env "${FRESH_ENV[@]}" valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" \
        >"$dir/log" 2>&1 &
    pid=$!
    fresh_wait 60 || true
    if [ "$taps" -gt 0 ]; then
        target/release/examples/tap-subscribers --url "ws://127.0.0.1:$FRESH_PORT/events/tap" \
            -n "$taps" ${TAP_FILTER:+--filter "$TAP_FILTER"} 2>"$dir/taps" &
    fi
    "$BENCH" "$@" --url "$FRESH_URL" --warmup 1s --duration "${SECS}s" >"$dir/bench" 2>&1 || true
    events=$(curl -fs "$FRESH_URL/metrics" | awk '/^cartstream_events_received_total/ {s += $2} END {print s + 0}')
    kill -TERM "$pid"; wait "$pid" || true
    if [ "$taps" -gt 0 ]; then wait; sed 's/^/    /' "$dir/taps"; fi
    label=$bin; [ "$taps" -gt 0 ] && label="$bin + $taps taps"
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/cg.out")
    printf '%-24s %12s instructions / %9s events = %8.0f per event  (%s)\n' \
        "$label" "$ir" "$events" \
        "$(echo "$ir / ($events + 0.000001)" | bc -l)" "$(grep -m1 throughput "$dir/bench" | sed 's/^ *//')"
    fresh_cleanup "$backend" "$tag"
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"; cp "$dir/cg.out" "$KEEP/$(basename "$bin")-$backend-$1-$taps.out"
    fi
    rm -rf "$dir"
}

for load in "embedded ws --connections 8 --window 64" \
            "embedded http-batch --concurrency 8 --batch-size 100" \
            "rc ws --connections 8 --window 64" \
            "rc http-batch --concurrency 8 --batch-size 100"; do
    [[ $load =~ ${LOADS:-.} ]] || continue
    echo "## $load"
    # shellcheck disable=SC2086
    run "$OLD" "${OLD_TAPS:-0}" $load
    # shellcheck disable=SC2086
    run "$NEW" "${NEW_TAPS:-0}" $load
done

#!/usr/bin/env bash
# A long saturating run on a fresh embedded server, sampled every 10 s: what the 8-second
# figures do not show. Prints, per 10 s, the events accepted and the events the forwarder
# moved into the events table a second, the server's CPU (% of one core), the journal's
# backlog, the server's RSS and its data dir's size; then the load generator's summary and the
# server's commit and store sums.
# Accepted above forwarded means the journal grows: the store keeps up only with the lower.
# With DRAIN=S the sampling goes on for S seconds after the load stops: the forwarder alone,
# draining the backlog (how fast the events table takes rows when ingest does not compete).
#
# Usage: scripts/sustain.sh BINARY [NAME=value ...]   (pairs go into the server's environment)
#   SECS=60 (length of the run, a multiple of 10), BENCH=path of cartstream-bench, listens on
#   127.0.0.1:$FRESH_PORT (3291). WS 8 connections x 64 in flight, like bench-ceiling.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$1; shift
BENCH=${BENCH:-target/release/examples/cartstream-bench}
PORT=${FRESH_PORT:-3291}; SECS=${SECS:-60}
d=$(mktemp -d /tmp/sustain.XXXXXX)
env "$@" CARTSTREAM_DATA_DIR="$d" CARTSTREAM_LISTEN=127.0.0.1:$PORT CARTSTREAM_LOG=warn "$BIN" >"$d.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d" "$d.log" "$d.bench"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
"$BENCH" ws --connections 8 --window 64 --url "http://127.0.0.1:$PORT" --server-pid $pid \
    --duration "${SECS}s" --json >"$d.bench" 2>&1 &
bench=$!
metric() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'; }
accepted0=0; forwarded0=0; ticks0=$(awk '{print $14 + $15}' /proc/$pid/stat)
for t in $(seq 10 10 "$((SECS + ${DRAIN:-0}))"); do
    sleep 10
    m=$(curl -s "http://127.0.0.1:$PORT/metrics")
    accepted=$(echo "$m" | metric cartstream_events_accepted_total)
    forwarded=$(echo "$m" | metric cartstream_forwarded_events_total)
    ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
    echo "t=${t}s accepted/s=$(( (accepted - accepted0) / 10 )) forwarded/s=$(( (forwarded - forwarded0) / 10 ))" \
        "server_cpu=$(( (ticks - ticks0) / 10 ))%" \
        "journal=$(echo "$m" | metric cartstream_journal_entries)" \
        "rss_mb=$(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 ))" \
        "data_dir_mb=$(du -sm "$d" | cut -f1)"
    accepted0=$accepted; forwarded0=$forwarded; ticks0=$ticks
done
wait $bench
tail -n1 "$d.bench" | jq -c '{acked_per_sec: (.acked_per_sec | floor), statuses, p50_us: .latency_us.p50,
    server_cpu_pct: (.server_cpu_pct | floor), client_cpu_pct: (.client_cpu_pct | floor)}'
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^cartstream_(commit|store)_seconds_(sum|count) '

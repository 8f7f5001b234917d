#!/usr/bin/env bash
# CPU time per event of the server and of its tap subscribers over a fixed load, read from
# /proc/PID/stat (utime + stime, so the kernel's socket work counts too) rather than timed:
# what five subscribers cost does not depend on what else the machine is doing.
#
# Usage: scripts/tap-cpu.sh SERVER_BINARY TAPS BENCH-ARGS...
#   e.g. scripts/tap-cpu.sh target/release/cartstream 5 ws --connections 8 --window 64 --events 200000
# BACKEND=rc uses Redis + ClickHouse (own key prefix and database, dropped after); listens on
# FRESH_PORT (default 3101). Prints the events the server received in the measured window
# (its events_received counter), the server's and the subscribers' CPU milliseconds, and
# microseconds of CPU per event for each, of the server's tap thread alone, and of the whole
# machine (every process and the kernel, from /proc/stat) with the share it sat idle.
# TAP_CLIENT=read|discard picks how the subscribers read (tap-subscribers --client; default
# tungstenite).
# PERF=FILE also samples the server with `perf record` (1999 Hz, every thread) while the load
# runs, for `perf report -i FILE --sort comm,sym`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1; TAPS=$2; shift 2
BENCH=${BENCH:-target/release/examples/cartstream-bench}
SUBS=${SUBS:-target/release/examples/tap-subscribers}
backend=${BACKEND:-embedded}
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
tck=$(getconf CLK_TCK)
dir=$(mktemp -d)
tag=$(fresh_tag)
fresh_env "$backend" "$dir/data" "$tag"
env "${FRESH_ENV[@]}" "$BIN" >"$dir/log" 2>&1 &
spid=$!
fresh_wait 60
# ticks PID: utime + stime of the process (all its threads), in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# tap_ticks PID: the same for the server's tap thread (cartstream-tap) alone.
tap_ticks() {
    local t sum=0
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = cartstream-tap ] && sum=$((sum + $(awk '{print $14 + $15}' "$t/stat")))
    done
    echo "$sum"
}
# switches PID [COMM]: context switches (voluntary + not) of the process's threads, or of
# those named COMM: each is a sleep or a preemption, and each wake-up before it costs the waker.
switches() {
    local t sum=0
    for t in /proc/"$1"/task/*; do
        if [ -z "${2:-}" ] || [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then
            sum=$((sum + $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status" 2>/dev/null || echo 0)))
        fi
    done
    echo "$sum"
}
# box_ticks: busy and idle ticks of the whole machine (every process, the kernel's too).
box_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
received() { curl -fs "$FRESH_URL/metrics" | awk '/^cartstream_events_received_total/ {s += $2} END {print s + 0}'; }
tpid=
if [ "$TAPS" -gt 0 ]; then
    "$SUBS" --url "ws://127.0.0.1:$FRESH_PORT/events/tap" -n "$TAPS" --client "${TAP_CLIENT:-tungstenite}" 2>"$dir/taps" &
    tpid=$!
    sleep 1
fi
s0=$(ticks "$spid"); w0=$(tap_ticks "$spid"); read -r b0 i0 < <(box_ticks)
t0=0; [ -n "$tpid" ] && t0=$(ticks "$tpid")
x0=$(switches "$spid" cartstream-tap); y0=0; [ -n "$tpid" ] && y0=$(switches "$tpid")
e0=$(received)
ppid=
if [ -n "${PERF:-}" ]; then
    perf record -q ${PERF_ARGS:--F 1999} -p "$spid" -o "$PERF" 2>/dev/null &
    ppid=$!
fi
"$BENCH" "$@" --url "$FRESH_URL" >"$dir/bench" 2>&1 || true
if [ -n "$ppid" ]; then kill -INT "$ppid"; wait "$ppid" || true; fi
sleep 1 # the subscribers read what is still on its way
s1=$(ticks "$spid"); w1=$(tap_ticks "$spid"); read -r b1 i1 < <(box_ticks)
t1=0; [ -n "$tpid" ] && t1=$(ticks "$tpid")
x1=$(switches "$spid" cartstream-tap); y1=0; [ -n "$tpid" ] && y1=$(switches "$tpid")
e1=$(received)
kill -TERM "$spid"; wait "$spid" || true
if [ -n "$tpid" ]; then wait "$tpid" || true; sed 's/^/    /' "$dir/taps"; fi
events=$((e1 - e0))
awk -v e="$events" -v s=$((s1 - s0)) -v t=$((t1 - t0)) -v w=$((w1 - w0)) -v b=$((b1 - b0)) \
    -v i=$((i1 - i0)) -v hz="$tck" -v taps="$TAPS" -v bin="$BIN" 'BEGIN {
    printf "%s, %d taps: %d events; server %d ms = %.2f us/event (its tap thread %.2f); subscribers %d ms = %.2f us/event; machine busy %.2f us/event, idle %.0f%%\n",
        bin, taps, e, s * 1000 / hz, s * 1e6 / hz / e, w * 1e6 / hz / e, t * 1000 / hz, t * 1e6 / hz / e,
        b * 1e6 / hz / e, 100 * i / (b + i) }'
echo "    context switches per 1,000 events: the tap thread $(((x1 - x0) * 1000 / events)), the subscribers $(((y1 - y0) * 1000 / events))"
grep -m1 throughput "$dir/bench" | sed 's/^/    /' || true
fresh_cleanup "$backend" "$tag"
rm -rf "$dir"

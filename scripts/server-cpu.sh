#!/usr/bin/env bash
# Where a server's CPU per event goes, outside the code: user against kernel time, each thread's
# CPU and context switches, and (SYSCALLS=1) the system calls it makes, all per accepted event
# over the measured phase of one run on a fresh server. Compare the discard server with
# cartstream on Redis + ClickHouse to see what the backends cost the server beyond its own code.
#
# Usage: scripts/server-cpu.sh SERVER BACKEND LOAD-ARGS...
#   SERVER is a binary (a release cartstream, or examples/discard-server); BACKEND is
#   `embedded` or `rc` (scripts/fresh-server.sh); LOAD-ARGS go to cartstream-bench, e.g.
#     scripts/server-cpu.sh target/release/examples/discard-server embedded ws --connections 8 --window 64
#     SYSCALLS=1 scripts/server-cpu.sh target/release/cartstream rc ws --connections 8 --window 64
#   SYSCALLS=1 counts every syscall with `perf stat` (syscalls:sys_enter_* tracepoints): that
#   costs the server kernel time of its own, so read the counts from such a run and the times
#   from one without. BENCH=path of cartstream-bench; listens on 127.0.0.1:$FRESH_PORT (3391).
# Blocking-pool threads are named like tokio's workers; they are told apart by their CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
FRESH_PORT=${FRESH_PORT:-3391}
. scripts/fresh-server.sh
BENCH=${BENCH:-target/release/examples/cartstream-bench}
server=$1 backend=$2; shift 2
dir=$(mktemp -d); tag=$(fresh_tag); out=$(mktemp -d)
fresh_env "$backend" "$dir" "$tag"
env "${FRESH_ENV[@]}" "$server" >"$dir.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir" "$dir.log" "$out"' EXIT
fresh_wait 20 || { echo "the server did not start" >&2; exit 1; }

# Per thread: name, CPU ticks (utime+stime), voluntary and involuntary switches, tid.
threads() {
    for t in /proc/$pid/task/*; do
        echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")" \
            "$(awk '/^voluntary_ctxt/ {v = $2} /^nonvoluntary_ctxt/ {n = $2} END {print v, n}' "$t/status") ${t##*/}"
    done
}
(
    sleep 2   # the load generator's warm-up
    threads >"$out/t0"; awk '{print $14, $15}' /proc/$pid/stat >"$out/p0"
    if [ -n "${SYSCALLS:-}" ]; then
        perf stat -x, -e 'syscalls:sys_enter_*,context-switches' -p "$pid" -- sleep 8 2>"$out/perf"
    else
        sleep 8
    fi
    threads >"$out/t1"; awk '{print $14, $15}' /proc/$pid/stat >"$out/p1"
) &
watcher=$!
"$BENCH" "$@" --url "$FRESH_URL" --warmup 2s --duration 8s --json >"$out/bench" 2>&1
wait $watcher
[ "$backend" = rc ] && fresh_cleanup rc "$tag" >/dev/null
python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
bench = json.loads(open(os.path.join(out, "bench")).read().strip().splitlines()[-1])
acked = bench["acked_per_sec"]
events = acked * 8
(u0, s0), (u1, s1) = ([int(x) for x in open(os.path.join(out, p)).read().split()] for p in ("p0", "p1"))
# Ticks are 1/100 s: us per event = ticks * 10,000 / events.
print(f"acked {acked:,.0f}/s; server per event: user {(u1 - u0) * 1e4 / events:.2f} us, "
      f"kernel {(s1 - s0) * 1e4 / events:.2f} us")
def threads(p):
    d = {}
    for line in open(os.path.join(out, p)):
        name, ticks, vol, invol, tid = line.split()
        d[tid] = (name, int(ticks), int(vol), int(invol))
    return d
t0, t1 = threads("t0"), threads("t1")
print("threads (CPU us per event; voluntary / involuntary switches per 1,000 events):")
for tid, (name, ticks, vol, invol) in sorted(t1.items(), key=lambda kv: -kv[1][1]):
    _, ticks0, vol0, invol0 = t0.get(tid, (name, 0, 0, 0))
    if ticks - ticks0 or vol - vol0:
        print(f"  {tid:>8} {name:<18} {(ticks - ticks0) * 1e4 / events:6.2f}   "
              f"{(vol - vol0) * 1e3 / events:7.2f} / {(invol - invol0) * 1e3 / events:6.2f}")
perf = os.path.join(out, "perf")
if os.path.exists(perf):
    counts = []
    for line in open(perf):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit() and int(f[0]):
            counts.append((int(f[0]), f[2].replace("syscalls:sys_enter_", "")))
    counts.sort(reverse=True)
    print("per event: " + "  ".join(f"{name} {n / events:.3f}" for n, name in counts[:16]))
EOF

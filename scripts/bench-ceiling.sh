#!/usr/bin/env bash
# Issue 18's sitting: one build against its own ceiling. For ROUNDS interleaved rounds, each on
# fresh servers (scripts/fresh-server.sh), it runs the discard server (examples/discard-server:
# the same edge and ingest use case over stores that do nothing), then the build on Redis +
# ClickHouse, then the build on the embedded default, and a small fsync loop on the data dir's
# file system. Then it prints, each the median of the rounds, every figure, its share of the
# ceiling and the issue's target:
#   WS pipelined 8 x 64 (R+CH >= 60 % of discard, embedded >= 40 %), HTTP batch 8 x 100
#   (R+CH >= 40 %), server CPU per accepted event (R+CH <= 1.5x discard's, from cartstream-bench
#   --server-pid: the server's utime+stime over the measured phase), closed loop 8 x 1
#   (p50 <= 1.3x this disk's fsync p50, p99 <= 2 ms), and what Redis, ClickHouse and the load
#   generator used meanwhile (the cores the server did not get).
# For each Redis + ClickHouse figure it also prints the box's budget: the CPU Redis, ClickHouse
# and the load generator spent per event, and from it the highest share this machine could
# reach even if the server cost nothing (all its cores busy with the other three). For the
# closed loop, the server's own stage latencies (claim, store, the whole group, from /metrics):
# the claim and the journal's fsynced append come one after the other for every event.
#
# Usage: scripts/bench-ceiling.sh BINARY [ROUNDS]        (default 3 rounds, about 2 min each)
#   BINARY is a release `cartstream`; the discard server is the example built beside it
#   (BINARY's dir/examples/discard-server), or DISCARD=path. To compare two builds, run the
#   script once for each (or interleave with OTHER=path-to-second-cartstream: each round then
#   runs both builds, each against its own discard server).
#   e.g. cargo build --release --bin cartstream --example discard-server --example cartstream-bench
#        scripts/bench-ceiling.sh target/release/cartstream 3
# Needs Redis and ClickHouse (scripts/ensure-services.sh), python3 and jq. Listens on
# 127.0.0.1:3101. Raw results go to $OUT (default a new dir under /tmp), one JSON per run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$1"; ROUNDS="${2:-3}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
OUT="${OUT:-$(mktemp -d /tmp/bench-ceiling.XXXXXX)}"; mkdir -p "$OUT"
SECS="${SECS:-8}"
FRESH_PORT="${FRESH_PORT:-3101}"
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

discard_of() { echo "${DISCARD:-$(dirname "$1")/examples/discard-server}"; }
BUILDS=("$BIN"); [ -n "${OTHER:-}" ] && BUILDS+=("$OTHER")
for b in "${BUILDS[@]}"; do
    for f in "$b" "$(discard_of "$b")"; do [ -x "$f" ] || { echo "missing $f" >&2; exit 2; }; done
done

# CPU ticks (utime+stime) of a process, 0 when it is not there.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Ticks of the shared Redis servers, then of the ClickHouse servers.
backend_ticks() {
    local r=0 c=0 p
    for p in $(pgrep -x redis-server); do r=$((r + $(ticks "$p"))); done
    for p in $(pgrep -f '^/usr/(s)?bin/clickhouse-server'); do c=$((c + $(ticks "$p"))); done
    echo "$r $c"
}
# Busy and idle ticks of the whole machine (idle includes iowait).
box_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; }
# stages METRICS-FILE: the server's counters and stage latencies as JSON: events received over
# the whole run, and the mean claim, store (journal append with its fsync) and group latency
# in us, the mean group size.
stages() {
    python3 - "$1" <<'EOF'
import json, re, sys
v = {}
for line in open(sys.argv[1]):
    m = re.match(r'cartstream_(events_received_total|claim_seconds|store_seconds|commit_seconds|commit_batch_events)(_sum|_count)?(\{[^}]*\})? (\S+)$', line)
    if m:
        k = m.group(1) + (m.group(2) or "")
        v[k] = v.get(k, 0.0) + float(m.group(4))
mean = lambda n, scale: v[n + "_sum"] / v[n + "_count"] * scale if v.get(n + "_count") else None
print(json.dumps({"events_total": v.get("events_received_total", 0),
                  "claim_us": mean("claim_seconds", 1e6), "store_us": mean("store_seconds", 1e6),
                  "commit_us": mean("commit_seconds", 1e6), "group_events": mean("commit_batch_events", 1)}))
EOF
}

# run NAME SERVER BACKEND BENCH-ARGS...: one fresh server, one measured run, saved as
# $OUT/NAME.ROUND.json with the backends' CPU (% of one core) added.
run() {
    local name="$1" server="$2" backend="$3"; shift 3
    local dir tag pid r0 c0 r1 c1 t0 t1 busy0 idle0 busy1 idle1
    dir=$(mktemp -d)
    tag=$(fresh_tag)
    fresh_env "$backend" "$dir" "$tag"
    env "${FRESH_ENV[@]}" "$server" >"$dir.log" 2>&1 &
    pid=$!
    fresh_wait 20 || true
    read -r r0 c0 < <(backend_ticks); read -r busy0 idle0 < <(box_ticks); t0=$(date +%s.%N)
    "$BENCH" "$@" --url "$FRESH_URL" --server-pid "$pid" --warmup 2s --duration "${SECS}s" --json \
        >"$dir.bench" 2>&1 || true
    read -r r1 c1 < <(backend_ticks); read -r busy1 idle1 < <(box_ticks); t1=$(date +%s.%N)
    curl -fs "$FRESH_URL/metrics" >"$dir.metrics" || true
    kill -TERM "$pid"; wait "$pid" || true
    # Over the whole run (warm-up included), as % of one core (ticks are 1/100 s): Redis,
    # ClickHouse, and the machine's idle share. Per event, divide by the run's events_total.
    local redis ch idle
    redis=$(echo "($r1 - $r0) / ($t1 - $t0)" | bc -l)
    ch=$(echo "($c1 - $c0) / ($t1 - $t0)" | bc -l)
    idle=$(echo "100 * ($idle1 - $idle0) / ($busy1 - $busy0 + $idle1 - $idle0)" | bc -l)
    tail -n 1 "$dir.bench" | jq -c --argjson r "$redis" --argjson c "$ch" --argjson i "$idle" \
        --argjson st "$(stages "$dir.metrics")" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
        --argjson secs "$(echo "$t1 - $t0" | bc -l)" \
        '. + {backends_cpu_pct: ($r + $c), redis_cpu_pct: $r, clickhouse_cpu_pct: $c,
              box_idle_pct: $i, run_secs: $secs, stages: $st, load: $load}' \
        >"$OUT/$name.$ROUND.json" 2>/dev/null \
        || { echo "  $name: no result"; sed 's/^/    /' "$dir.bench" | tail -5; }
    [ -s "$OUT/$name.$ROUND.json" ] && jq -r --arg n "$name" \
        '"  \($n): \(.acked_per_sec|floor) acked/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, server \(.server_cpu_pct|floor)%, client \(.client_cpu_pct|floor)%, Redis \(.redis_cpu_pct|floor)%, ClickHouse \(.clickhouse_cpu_pct|floor)%, idle \(.box_idle_pct|floor)%, statuses \(.statuses)"' \
        "$OUT/$name.$ROUND.json"
    # The run's ClickHouse database and Redis keys: left to expire with the dedup window, the
    # keys piled up (4.7 million after two sittings) and slowed Redis for the next runs.
    [ "$backend" = rc ] && { fresh_cleanup rc "$tag" >/dev/null; } || true
    rm -rf "$dir" "$dir.log" "$dir.bench" "$dir.metrics"
}

# fsync_loop ROUND: p50/p99 of a 4 KiB append + fdatasync on the data dir's file system
# (the journal's WAL append), 300 times.
fsync_loop() {
    local dir; dir=$(mktemp -d)
    python3 - "$dir/f" >"$OUT/fsync.$1.json" <<'EOF'
import os, sys, time, json
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block, times = b"x" * 4096, []
for _ in range(300):
    t = time.perf_counter(); os.write(fd, block); os.fdatasync(fd); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"p50_us": times[150] * 1e6, "p99_us": times[296] * 1e6}))
EOF
    rm -rf "$dir"
    jq -r '"  fsync loop: p50 \(.p50_us|floor) us, p99 \(.p99_us|floor) us"' "$OUT/fsync.$1.json"
}

for ROUND in $(seq "$ROUNDS"); do
    for i in "${!BUILDS[@]}"; do
        b=${BUILDS[$i]}; d=$(discard_of "$b"); p=""; [ "$i" = 1 ] && p="other-"
        echo "### round $ROUND, $b, $(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)"
        run "${p}discard-ws" "$d" embedded ws --connections 8 --window 64
        run "${p}discard-http" "$d" embedded http-batch --concurrency 8 --batch-size 100
        run "${p}discard-closed" "$d" embedded ws --connections 8 --window 1
        run "${p}rc-ws" "$b" rc ws --connections 8 --window 64
        run "${p}rc-http" "$b" rc http-batch --concurrency 8 --batch-size 100
        run "${p}rc-closed" "$b" rc ws --connections 8 --window 1
        run "${p}embedded-ws" "$b" embedded ws --connections 8 --window 64
    done
    fsync_loop "$ROUND"
done

python3 - "$OUT" "${#BUILDS[@]}" <<'EOF'
import glob, json, os, statistics, sys
out, builds = sys.argv[1], int(sys.argv[2])
def runs(name):
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, name + ".*.json")))]
def med(name, f):
    xs = [f(r) for r in runs(name) if f(r) is not None]
    return statistics.median(xs) if xs else float("nan")
def us_per_event(r):
    # server CPU, % of one core, over the acked events per second: CPU microseconds per event.
    a = r.get("acked_per_sec") or 0
    return r["server_cpu_pct"] / 100 / a * 1e6 if a and r.get("server_cpu_pct") is not None else None
fs = med("fsync", lambda r: r["p50_us"])
print(f"\n## medians of {len(runs('fsync'))} rounds ({out}); fsync loop p50 {fs:.0f} us, "
      f"p99 {med('fsync', lambda r: r['p99_us']):.0f} us")
for p in ["", "other-"][:builds]:
    if p:
        print("\n## OTHER build")
    ev = lambda n: med(p + n, lambda r: r["acked_per_sec"])
    cpu = lambda n: med(p + n, us_per_event)
    def line(what, val, target, ok):
        print(f"  {what:<52} {val:<34} target {target:<22} {'holds' if ok else 'MISSES'}")
    for n, label, t in [("rc-ws", "WS pipelined 8x64, Redis + ClickHouse", 0.60),
                        ("rc-http", "HTTP batch 8x100, Redis + ClickHouse", 0.40),
                        ("embedded-ws", "WS pipelined 8x64, embedded", 0.40)]:
        ceiling = ev("discard-ws" if "ws" in n else "discard-http")
        share = ev(n) / ceiling
        line(label, f"{ev(n):.0f}/s of {ceiling:.0f}/s = {share:.0%}", f">= {t:.0%}", share >= t)
    for n, d, label in [("rc-ws", "discard-ws", "server CPU per event, WS pipelined"),
                        ("rc-http", "discard-http", "server CPU per event, HTTP batch")]:
        r = cpu(n) / cpu(d)
        line(label, f"{cpu(n):.1f} us vs {cpu(d):.1f} us = {r:.2f}x", "<= 1.5x", r <= 1.5)
    p50 = med(p + "rc-closed", lambda r: r["latency_us"]["p50"])
    p99 = med(p + "rc-closed", lambda r: r["latency_us"]["p99"])
    line("closed loop 8x1 p50, Redis + ClickHouse", f"{p50:.0f} us = {p50 / fs:.2f}x fsync", "<= 1.3x fsync", p50 <= 1.3 * fs)
    line("closed loop 8x1 p99, Redis + ClickHouse", f"{p99:.0f} us", "<= 2000 us", p99 <= 2000)
    print(f"  (discard closed loop p50 {med(p + 'discard-closed', lambda r: r['latency_us']['p50']):.0f} us)")
    stage = lambda n, k: med(p + n, lambda r: (r.get("stages") or {}).get(k))
    print(f"  closed loop, the server's stages (means over the run): claim {stage('rc-closed', 'claim_us'):.0f} us, "
          f"store (journal append + fsync) {stage('rc-closed', 'store_us'):.0f} us, whole group "
          f"{stage('rc-closed', 'commit_us'):.0f} us, {stage('rc-closed', 'group_events'):.1f} events a group; "
          f"claim + store = {(stage('rc-closed', 'claim_us') + stage('rc-closed', 'store_us')) / fs:.2f}x fsync")
    cores = os.cpu_count()
    print(f"\n  CPU per event, us (server and load generator over the measured phase; Redis and "
          f"ClickHouse over the whole run), and the machine's idle share; {cores} cores:")
    def per_event(r, key):
        if key in ("server_cpu_pct", "client_cpu_pct"):
            a = r.get("acked_per_sec") or 0
            return r[key] / 100 / a * 1e6 if a and r.get(key) is not None else None
        n = (r.get("stages") or {}).get("events_total") or 0
        return r[key] / 100 * r["run_secs"] / n * 1e6 if n and r.get("run_secs") else None
    pe = lambda n, key: med(p + n, lambda r: per_event(r, key))
    for n in ["discard-ws", "rc-ws", "discard-http", "rc-http", "embedded-ws"]:
        print(f"  {n:<14} server {pe(n, 'server_cpu_pct'):5.2f}  load generator {pe(n, 'client_cpu_pct'):5.2f}  "
              f"Redis {pe(n, 'redis_cpu_pct'):5.2f}  ClickHouse {pe(n, 'clickhouse_cpu_pct'):5.2f}  "
              f"idle {med(p + n, lambda r: r.get('box_idle_pct')):3.0f}%  "
              f"(server {med(p + n, lambda r: r['server_cpu_pct']):3.0f}%, load generator "
              f"{med(p + n, lambda r: r['client_cpu_pct']):3.0f}%, Redis + ClickHouse "
              f"{med(p + n, lambda r: r['backends_cpu_pct']):3.0f}% of {cores * 100}%)")
    print("\n  The box's budget: what Redis, ClickHouse and the load generator cost per event, and the")
    print("  highest share of the ceiling the machine's cores allow with the server costing nothing, costing")
    print("  1.5x the discard server's CPU per event (the CPU target) and costing what it did here:")
    for n, d, t in [("rc-ws", "discard-ws", 0.60), ("rc-http", "discard-http", 0.40)]:
        others = pe(n, "redis_cpu_pct") + pe(n, "clickhouse_cpu_pct") + pe(n, "client_cpu_pct")
        ceiling = ev(d)
        share = lambda server: cores * 1e6 / (others + server) / ceiling
        # Elsewhere: Redis and ClickHouse on other machines, server and load generator sharing
        # these cores, both setups CPU-bound: the shares follow their CPU per event.
        mine = pe(n, "server_cpu_pct") + pe(n, "client_cpu_pct")
        theirs = pe(d, "server_cpu_pct") + pe(d, "client_cpu_pct")
        print(f"  {n:<8} others {others:5.2f} us/event: at most {share(0):.0%} / {share(1.5 * pe(d, 'server_cpu_pct')):.0%} / "
              f"{share(pe(n, 'server_cpu_pct')):.0%} (target {t:.0%}, measured {ev(n) / ceiling:.0%}); with Redis and "
              f"ClickHouse elsewhere, estimated {theirs / mine:.0%} (server + load generator {mine:.2f} against "
              f"the discard setup's {theirs:.2f} us/event)")
EOF

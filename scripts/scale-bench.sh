#!/usr/bin/env bash
# One instance against two on this box, both behind HAProxy, in interleaved rounds: the
# throughput of WS pipelined (8 x 64) and HTTP batch (8 x 100), and the CPU each process used
# over the run (instances, HAProxy, Redis, ClickHouse, the load generator), in cores.
#
# Usage: scripts/scale-bench.sh [ROUNDS]      (default 3; each round runs 1 then 2 instances,
#                                              every other round 2 then 1)
#   BACKEND=cluster (default: the Redis Cluster and 2-shard ClickHouse of
#   scripts/cluster-services.sh, started if not running) or single (Redis 6379, ClickHouse
#   8123 of scripts/ensure-services.sh). BIN and BENCH name the release builds; SERVER_ENV adds
#   settings to every instance (e.g. SERVER_ENV="CARTSTREAM_REDIS_CLUSTER_BUCKETS=64").
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
BIN="${BIN:-target/release/cartstream}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
BACKEND="${BACKEND:-cluster}"
WORK=$(mktemp -d /tmp/cartstream-scale.XXXXXX)
PORT=3170
PORTS=(3171 3172)
PIDS=()
HAPROXY_PID=""
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
. scripts/balancer.sh

cleanup() {
    for pid in "${PIDS[@]}" "$HAPROXY_PID"; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$BACKEND" = cluster ] && ! redis-cli -p 7101 cluster info 2>/dev/null | grep -q cluster_state:ok; then
    scripts/cluster-services.sh start
fi

backend_env() {
    local tag=$1 n=$2
    if [ "$BACKEND" = cluster ]; then
        echo CARTSTREAM_REDIS_CLUSTER_NODES=redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103 \
            CARTSTREAM_CLICKHOUSE_URL=http://127.0.0.1:820$((n + 1)) \
            CARTSTREAM_CLICKHOUSE_CLUSTER=cartstream_shards \
            CARTSTREAM_CLICKHOUSE_SHARD_URLS=http://127.0.0.1:8201,http://127.0.0.1:8202 \
            CARTSTREAM_CLICKHOUSE_DATABASE="scale_$tag" CARTSTREAM_REDIS_KEY_PREFIX="scale:$tag:"
    else
        echo CARTSTREAM_REDIS_URL=redis://127.0.0.1:6379 CARTSTREAM_CLICKHOUSE_URL=http://127.0.0.1:8123 \
            CARTSTREAM_CLICKHOUSE_DATABASE="scale_$tag" CARTSTREAM_REDIS_KEY_PREFIX="scale:$tag:"
    fi
}

# Clock ticks (user + system) used so far by the processes whose command lines match.
ticks() {
    local total=0 pid
    for pid in $(pgrep -f "$1" || true); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# start COUNT: COUNT fresh instances and HAProxy in front of them.
start() {
    local count=$1 tag
    tag=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    TAG=$tag
    PIDS=()
    for n in $(seq 0 $((count - 1))); do
        mkdir -p "$WORK/d-$tag-$n"
        # shellcheck disable=SC2046
        env CARTSTREAM_LISTEN="127.0.0.1:${PORTS[$n]}" CARTSTREAM_DATA_DIR="$WORK/d-$tag-$n" \
            CARTSTREAM_LOG=warn CARTSTREAM_TRUSTED_PROXIES=127.0.0.1 $(backend_env "$tag" "$n") ${SERVER_ENV:-} \
            "$BIN" >"$WORK/i-$tag-$n.log" 2>&1 &
        PIDS+=($!)
    done
    # No health checks: nothing is killed here, and checks would cost CPU in the figures.
    balancer_config "$PORT" "${PORTS[@]:0:$count}" >"$WORK/haproxy.cfg"
    haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    for n in $(seq 0 $((count - 1))); do
        for _ in $(seq 100); do curl -fs "http://127.0.0.1:${PORTS[$n]}/ready" >/dev/null && break; sleep 0.1; done
    done
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
}

stop() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    kill -TERM "$HAPROXY_PID" 2>/dev/null || true
    wait "$HAPROXY_PID" 2>/dev/null || true
    PIDS=()
    HAPROXY_PID=""
    if [ "$BACKEND" = cluster ]; then
        for p in 8201 8202; do curl -fsS --data-binary "DROP DATABASE IF EXISTS scale_$TAG" "http://127.0.0.1:$p/" >/dev/null || true; done
    else
        curl -fsS --data-binary "DROP DATABASE IF EXISTS scale_$TAG" http://127.0.0.1:8123/ >/dev/null || true
    fi
}

# measure COUNT NAME BENCH-ARGS...: one run; prints one line of figures.
measure() {
    local count=$1 name=$2; shift 2
    start "$count"
    # The instances are counted by their pids (other cartstream processes may run); the load
    # generator reports its own CPU (it has exited when the run ends).
    local procs=("haproxy -f $WORK" "redis-server" "clickhouse-server")
    local before=() after=() i
    for i in "${!procs[@]}"; do before[$i]=$(ticks "${procs[$i]}"); done
    local inst_before=()
    for pid in "${PIDS[@]}"; do inst_before+=("$(awk '{print $14 + $15}' "/proc/$pid/stat")"); done
    local t0=$SECONDS json
    json=$("$BENCH" "$@" --url "http://127.0.0.1:$PORT" --warmup 2s --duration 8s --json | tail -n 1)
    local wall=$((SECONDS - t0))
    for i in "${!procs[@]}"; do after[$i]=$(ticks "${procs[$i]}"); done
    local per_inst="" inst_total=0
    for j in "${!PIDS[@]}"; do
        local now
        now=$(awk '{print $14 + $15}' "/proc/${PIDS[$j]}/stat")
        inst_total=$((inst_total + now - inst_before[j]))
        per_inst+="$(awk -v d=$((now - inst_before[j])) -v w="$wall" 'BEGIN{printf "%.2f", d / 100 / w}') "
    done
    local cores=()
    for i in "${!procs[@]}"; do
        cores[$i]=$(awk -v d=$((after[i] - before[i])) -v w="$wall" 'BEGIN{printf "%.2f", d / 100 / w}')
    done
    local all
    all=$(awk -v d="$inst_total" -v w="$wall" 'BEGIN{printf "%.2f", d / 100 / w}')
    python3 -c 'import json, sys
j = json.loads(sys.argv[1])
bad = j["errors"] + j["mismatches"] + j["protocol_errors"]
print("%d events/s, errors %d, bench %.2f cores" % (j["events_per_sec"], bad, (j["client_cpu_pct"] or 0) / 100), end="")' "$json"
    echo " | $name, $count instance(s) | cores: cartstream $all (each: ${per_inst% }), haproxy ${cores[0]}, redis ${cores[1]}, clickhouse ${cores[2]} (over ${wall} s)"
    stop
}

echo "scale-bench: BACKEND=$BACKEND, $ROUNDS rounds, $(date -u +%H:%M) UTC"
for r in $(seq "$ROUNDS"); do
    order="1 2"
    [ $((r % 2)) = 0 ] && order="2 1"
    for count in $order; do
        measure "$count" ws ws --connections 8 --window 64
        measure "$count" http-batch http-batch --concurrency 8 --batch-size 100
    done
done

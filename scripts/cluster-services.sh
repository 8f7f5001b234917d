#!/usr/bin/env bash
# Starts (or stops) the servers the multi-instance tests of issue 13 run against, from the
# same Debian packages as scripts/ensure-services.sh, beside the default ones and without
# touching them:
#   - a Redis Cluster of 3 masters with one replica each, on 127.0.0.1:7101-7106 by default
#     (node timeout 2 s, so a replica takes over quickly when its master stops);
#   - two ClickHouse servers forming the 2-shard cluster `cartstream_shards` (no replicas, so
#     no ZooKeeper): shard 1 HTTP 8201 / native 9201, shard 2 HTTP 8202 / native 9202.
# Everything lives under $CLUSTER_DIR (default /tmp/cartstream-cluster); `stop` stops exactly
# the processes `start` recorded there and removes the directory. Every wait is bounded.
#
# Usage: scripts/cluster-services.sh start|stop|status
set -euo pipefail

DIR="${CLUSTER_DIR:-/tmp/cartstream-cluster}"
# Another set of ports (for a second cluster beside the first, say a failover test that must
# not disturb other users): CLUSTER_REDIS_BASE=7200 gives 7201-7206, CLUSTER_CH_OFFSET=100
# gives HTTP 8301/8302, native 9301/9302.
REDIS_BASE="${CLUSTER_REDIS_BASE:-7100}"
CH_OFFSET="${CLUSTER_CH_OFFSET:-0}"
REDIS_PORTS=()
for i in 1 2 3 4 5 6; do REDIS_PORTS+=($((REDIS_BASE + i))); done
CH_SHARDS=(1 2)
# What to start: both by default; CLUSTER_PARTS=clickhouse for the ClickHouse shards alone.
PARTS="${CLUSTER_PARTS:-redis clickhouse}"
WAIT="${CLUSTER_WAIT:-60}"

log() { echo "cluster-services: $*" >&2; }
STARTING=0
die() {
    echo "cluster-services: ERROR: $*" >&2
    if [ "$STARTING" = 1 ]; then log "stopping what was started"; stop_all; fi
    exit 1
}

# until SECONDS-BUDGET COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after it.
until_ok() {
    local budget=$1; shift
    local deadline=$((SECONDS + budget))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

redis_ping() { [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }
cluster_ok() { redis-cli -p "${REDIS_PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
ch_http() { echo $((8200 + CH_OFFSET + $1)); }
ch_tcp() { echo $((9200 + CH_OFFSET + $1)); }
ch_ping() { [ "$(curl -fsS --max-time 2 --data-binary 'SELECT 1' "http://127.0.0.1:$(ch_http "$1")/" 2>/dev/null)" = 1 ]; }

start_redis() {
    for port in "${REDIS_PORTS[@]}"; do
        redis_ping "$port" && die "something already answers on 127.0.0.1:$port"
        mkdir -p "$DIR/redis-$port"
        # A node that finds an old nodes.conf rejoins its old cluster and `--cluster create`
        # refuses it ("not empty"): every start is a new cluster.
        rm -f "$DIR/redis-$port/nodes.conf" "$DIR/redis-$port/dump.rdb"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$DIR/redis-$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --save "" --appendonly no --pidfile "$DIR/redis-$port/pid" \
            --logfile "$DIR/redis-$port/log" >/dev/null
        echo "redis-server $DIR/redis-$port/pid" >>"$DIR/pids"
    done
    for port in "${REDIS_PORTS[@]}"; do
        until_ok "$WAIT" redis_ping "$port" || die "redis on $port did not answer within ${WAIT}s"
    done
    local nodes=()
    for port in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    # Tried twice: after a failure, every node forgets what the first try told it.
    local try
    for try in 1 2; do
        if redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
            >"$DIR/redis-create.log" 2>&1; then
            break
        fi
        log "redis-cli --cluster create failed (try $try); its output:"
        sed 's/^/    /' "$DIR/redis-create.log" >&2
        [ "$try" = 1 ] || die "redis-cli --cluster create failed twice"
        for port in "${REDIS_PORTS[@]}"; do
            redis-cli -p "$port" flushall >/dev/null 2>&1 || true
            redis-cli -p "$port" cluster reset hard >/dev/null 2>&1 || true
        done
        sleep 1
    done
    until_ok "$WAIT" cluster_ok || die "the Redis Cluster did not reach cluster_state:ok within ${WAIT}s"
    # Every replica attached to its master: replication is what a failover test relies on.
    until_ok "$WAIT" sh -c "[ \$(redis-cli -p ${REDIS_PORTS[0]} cluster nodes | grep -c slave) -eq 3 ]" ||
        die "the Redis Cluster's replicas did not attach within ${WAIT}s"
    # ...and in sync: until its first sync is done, a replica cannot take over, a manual
    # failover stalls its master and WAIT blocks.
    for port in "${REDIS_PORTS[@]}"; do
        if redis-cli -p "$port" info replication | grep -q '^role:master'; then
            until_ok "$WAIT" sh -c "redis-cli -p $port info replication | grep -q 'state=online'" ||
                die "the replica of the master on $port did not come in sync within ${WAIT}s"
        fi
    done
    log "Redis Cluster up: 127.0.0.1:${REDIS_PORTS[0]}-${REDIS_PORTS[5]} (3 masters, 3 replicas)"
}

ch_config() {
    local n=$1 d="$DIR/clickhouse-$1"
    cat <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$d/log</log><errorlog>$d/err.log</errorlog></logger>
    <http_port>$(ch_http "$n")</http_port>
    <tcp_port>$(ch_tcp "$n")</tcp_port>
    <interserver_http_port>$((9210 + CH_OFFSET + n))</interserver_http_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <remote_servers>
        <cartstream_shards>
            <shard><replica><host>127.0.0.1</host><port>$(ch_tcp 1)</port></replica></shard>
            <shard><replica><host>127.0.0.1</host><port>$(ch_tcp 2)</port></replica></shard>
        </cartstream_shards>
    </remote_servers>
</yandex>
XML
}

start_clickhouse() {
    [ -x /usr/sbin/clickhouse-server ] || die "clickhouse-server is not installed (scripts/ensure-services.sh installs it)"
    for n in "${CH_SHARDS[@]}"; do
        ch_ping "$n" && die "something already answers on 127.0.0.1:$(ch_http "$n")"
        local d="$DIR/clickhouse-$n"
        mkdir -p "$d/data" "$d/tmp" "$d/user_files"
        ch_config "$n" >"$d/config.xml"
        chown -R clickhouse:clickhouse "$d"
        # As ensure-services.sh starts the default one: never through init.d.
        runuser -u clickhouse -- /usr/sbin/clickhouse-server --config-file="$d/config.xml" \
            --daemon --pid-file="$d/pid"
        echo "clickhouse $d/pid" >>"$DIR/pids"
    done
    for n in "${CH_SHARDS[@]}"; do
        until_ok "$WAIT" ch_ping "$n" || die "ClickHouse shard $n did not answer within ${WAIT}s (see $DIR/clickhouse-$n/err.log)"
    done
    local shards
    shards=$(curl -fsS --data-binary \
        "SELECT count() FROM system.clusters WHERE cluster = 'cartstream_shards'" \
        "http://127.0.0.1:$(ch_http 1)/")
    [ "$shards" = 2 ] || die "cluster cartstream_shards lists $shards shards, not 2"
    log "ClickHouse cluster cartstream_shards up: shards on HTTP $(ch_http 1) and $(ch_http 2)"
}

stop_all() {
    [ -f "$DIR/pids" ] || { log "nothing recorded in $DIR; nothing to stop"; rm -rf "$DIR"; return 0; }
    # Each line: the program and its pid file. Only a live process of that program is signalled
    # (a pid may have been reused).
    local pids=() program pidfile pid
    while read -r program pidfile; do
        for _ in $(seq 1 25); do [ -s "$pidfile" ] && break; sleep 0.2; done
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$program"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done <"$DIR/pids"
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within 30 s; killing it"
            kill -KILL "$pid" || true
        fi
    done
    rm -rf "$DIR"
    log "stopped"
}

case "${1:-}" in
    start)
        # What an earlier run left running (a run killed before its stop) is stopped first.
        if [ -f "$DIR/pids" ]; then log "stopping what an earlier run left in $DIR"; stop_all; fi
        mkdir -p "$DIR"
        STARTING=1
        trap 'die "a command failed (line $LINENO)"' ERR
        case "$PARTS" in *redis*) start_redis ;; esac
        case "$PARTS" in *clickhouse*) start_clickhouse ;; esac
        trap - ERR
        STARTING=0
        ;;
    stop) stop_all ;;
    status)
        cluster_ok && log "Redis Cluster: ok" || log "Redis Cluster: down"
        for n in "${CH_SHARDS[@]}"; do ch_ping "$n" && log "ClickHouse shard $n: ok" || log "ClickHouse shard $n: down"; done
        ;;
    *) die "usage: $0 start|stop|status" ;;
esac

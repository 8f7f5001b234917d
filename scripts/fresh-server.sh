# Sourced by bench-ab.sh and callgrind-ab.sh: a fresh cartstream server for one measured run,
# so no run inherits another's data (its own data dir, ClickHouse database and Redis key
# prefix), listening on 127.0.0.1:3101 (or FRESH_PORT), and the cleanup of what it left in the
# backends.

FRESH_PORT=${FRESH_PORT:-3101}
FRESH_URL=http://127.0.0.1:$FRESH_PORT

# fresh_env BACKEND DATA_DIR TAG: sets FRESH_ENV, the server's environment. BACKEND is
# `embedded` (the defaults) or `rc` (Redis and ClickHouse from scripts/ensure-services.sh).
fresh_env() {
    local backend=$1 dir=$2 tag=$3
    FRESH_ENV=(CARTSTREAM_DATA_DIR="$dir" CARTSTREAM_LISTEN=127.0.0.1:$FRESH_PORT CARTSTREAM_LOG=warn)
    if [ "$backend" = rc ]; then
        FRESH_ENV+=(CARTSTREAM_REDIS_URL=redis://127.0.0.1:6379 CARTSTREAM_REDIS_KEY_PREFIX="bench:$tag:"
                    CARTSTREAM_CLICKHOUSE_URL=http://127.0.0.1:8123 CARTSTREAM_CLICKHOUSE_DATABASE="bench_$tag")
    fi
}

# A random tag naming one run's database and key prefix.
fresh_tag() { head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# fresh_wait SECONDS: until the server is ready, at most that long.
fresh_wait() {
    local tries=$(( $1 * 10 ))
    for _ in $(seq "$tries"); do curl -fs "$FRESH_URL/ready" >/dev/null && return 0; sleep 0.1; done
    return 1
}

# fresh_cleanup BACKEND TAG: drops what an `rc` run left in ClickHouse and Redis.
fresh_cleanup() {
    if [ "$1" = rc ]; then
        curl -fsS --data-binary "DROP DATABASE IF EXISTS bench_$2" http://127.0.0.1:8123/ || true
        # SCAN 10,000 keys a round trip and UNLINK each page (soak.py's helper): redis-cli
        # --scan asks for 10 a round trip, too slow for the ~700,000 keys a run leaves.
        python3 -c "import sys; sys.path.insert(0, sys.argv[1]); import soak; soak.delete_redis_keys(sys.argv[2])" \
            "$(dirname "${BASH_SOURCE[0]}")" "bench:$2:*" || true
    fi
}

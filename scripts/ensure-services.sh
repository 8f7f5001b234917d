#!/usr/bin/env bash
# Makes sure the backends the integration tests (and a local cartstream) use are up:
# ClickHouse (HTTP on 127.0.0.1:8123) and Redis (127.0.0.1:6379 by default). Idempotent: installs what is
# missing (Debian/Ubuntu, apt-get), starts only what does not answer, records what it started in
# a state file so scripts/stop-services.sh stops exactly that and nothing else.
#
# Usage: scripts/ensure-services.sh        (as root, or with sudo available)
# Env:   CARTSTREAM_SERVICES_STATE  state file (default /tmp/cartstream-services.state)
#        CARTSTREAM_SERVICES_WAIT   seconds to wait for both to answer (default 60)
#        CARTSTREAM_SERVICES_REDIS_PORT  Redis port (default 6379)
set -euo pipefail

STATE="${CARTSTREAM_SERVICES_STATE:-/tmp/cartstream-services.state}"
WAIT="${CARTSTREAM_SERVICES_WAIT:-60}"
CH_URL="http://127.0.0.1:8123/"
CH_PIDFILE=/var/lib/clickhouse/clickhouse-server.pid
REDIS_PORT="${CARTSTREAM_SERVICES_REDIS_PORT:-6379}"
REDIS_PIDFILE="/tmp/cartstream-redis-$REDIS_PORT.pid"

log() { echo "ensure-services: $*" >&2; }
die() { echo "ensure-services: ERROR: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# SELECT 1 over ClickHouse's HTTP interface answers "1".
clickhouse_up() {
    [ "$(curl -fsS --max-time 2 --data-binary 'SELECT 1' "$CH_URL" 2>/dev/null)" = "1" ]
}

redis_up() {
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

record() { echo "$1 $2" >>"$STATE"; }

command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
# The balancer in front of the multi-instance test's two instances (scripts/cluster-test.sh).
command -v haproxy >/dev/null 2>&1 || apt_install haproxy

# --- ClickHouse ---------------------------------------------------------------------------
if clickhouse_up; then
    log "ClickHouse already answers on $CH_URL"
else
    if [ ! -x /usr/sbin/clickhouse-server ]; then
        apt_install clickhouse-server clickhouse-client
    fi
    # The package may have started it (or it is just booting): give it a moment first.
    for _ in 1 2 3; do clickhouse_up && break; sleep 1; done
    if ! clickhouse_up; then
        log "starting clickhouse-server"
        # Never the init.d script or `service`: their process matching hits other processes.
        as_root runuser -u clickhouse -- /usr/sbin/clickhouse-server \
            --config-file=/etc/clickhouse-server/config.xml --daemon --pid-file="$CH_PIDFILE"
        started_ch=1
    fi
fi

# A user that may read but not write (readonly=1), for the test of a ClickHouse that refuses
# inserts for lack of rights (tests/api/clickhouse_refusals.rs). users.d is read on 18.16 as on
# current servers, and reloaded without a restart.
CH_TEST_USER=/etc/clickhouse-server/users.d/cartstream-test-readonly.xml
if [ -d /etc/clickhouse-server ] && [ ! -f "$CH_TEST_USER" ]; then
    log "adding the read-only ClickHouse test user cartstream_ro"
    as_root mkdir -p /etc/clickhouse-server/users.d
    as_root tee "$CH_TEST_USER" >/dev/null <<'XML'
<yandex>
    <users>
        <cartstream_ro>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </cartstream_ro>
    </users>
</yandex>
XML
fi

# --- Redis --------------------------------------------------------------------------------
if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server redis-tools
    for _ in 1 2 3; do redis_up && break; sleep 1; done
fi
if redis_up; then
    log "Redis already answers on 127.0.0.1:$REDIS_PORT"
else
    log "starting redis-server"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --pidfile "$REDIS_PIDFILE"
    started_redis=1
fi

# --- Wait for both, bounded ---------------------------------------------------------------
deadline=$((SECONDS + WAIT))
until clickhouse_up && redis_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        clickhouse_up || log "ClickHouse does not answer SELECT 1 on $CH_URL (see /var/log/clickhouse-server/)"
        redis_up || log "Redis does not answer PING on 127.0.0.1:$REDIS_PORT"
        die "backends not up after ${WAIT}s"
    fi
    sleep 1
done

# Record pids only once they answer: the daemons write their pid files while starting.
if [ "${started_ch:-0}" -eq 1 ]; then
    pid="$(cat "$CH_PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && record clickhouse "$pid"
fi
if [ "${started_redis:-0}" -eq 1 ]; then
    pid="$(cat "$REDIS_PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && record redis "$pid"
fi

log "ClickHouse $(curl -fsS --max-time 2 --data-binary 'SELECT version()' "$CH_URL") and Redis (port $REDIS_PORT) are up"

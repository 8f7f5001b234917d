#!/usr/bin/env bash
# Stops what scripts/ensure-services.sh started, and only that: the processes recorded in its
# state file, each checked to still be the program recorded (a pid may have been reused).
set -euo pipefail

STATE="${CARTSTREAM_SERVICES_STATE:-/tmp/cartstream-services.state}"

log() { echo "stop-services: $*" >&2; }

if [ ! -s "$STATE" ]; then
    log "nothing recorded in $STATE; nothing to stop"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else "$@"; fi
}

status=0
while read -r name pid; do
    [ -n "${name:-}" ] && [ -n "${pid:-}" ] || continue
    case "$name" in
        clickhouse) program=clickhouse ;;
        redis) program=redis-server ;;
        *) log "unknown entry '$name' in $STATE; skipped"; continue ;;
    esac
    if ! [ -r "/proc/$pid/cmdline" ] || ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$program"; then
        log "$name (pid $pid) is no longer running"
        continue
    fi
    log "stopping $name (pid $pid)"
    as_root kill -TERM "$pid" || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop within 30 s"
        status=1
    fi
done <"$STATE"

[ "$status" -eq 0 ] && rm -f "$STATE"
exit "$status"

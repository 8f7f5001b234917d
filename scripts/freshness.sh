#!/usr/bin/env bash
# Freshness under load (issue 14): a fresh release server on Redis + ClickHouse with a webhook
# route to a receiver run by examples/freshness.rs, a steady WebSocket load, and the time from
# each tracked event's ack until ClickHouse has it (polled by event_id on the main table) and
# until the webhook receiver has it.
#
# Usage: scripts/freshness.sh [RATE] [SECONDS]      (default 20000 events/s for 30 s)
#   BIN, FRESH (the freshness example's binary) name the builds; SERVER_ENV adds settings.
# Needs Redis and ClickHouse (scripts/ensure-services.sh). Listens on 127.0.0.1:3101 and 3199.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-20000}"
SECS="${2:-30}"
BIN="${BIN:-target/release/cartstream}"
FRESH="${FRESH:-target/release/examples/freshness}"
. scripts/fresh-server.sh
dir=$(mktemp -d)
tag=$(fresh_tag)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fresh_cleanup rc "$tag"; rm -rf "$dir"' EXIT
cat >"$dir/routes.toml" <<TOML
[[routes]]
name = "freshness-webhook"
[routes.target]
kind = "webhook"
url = "http://127.0.0.1:3199/hook"
TOML
fresh_env rc "$dir/data" "$tag"
# shellcheck disable=SC2086
env "${FRESH_ENV[@]}" CARTSTREAM_CONFIG="$dir/routes.toml" ${SERVER_ENV:-} "$BIN" >"$dir/server.log" 2>&1 &
pid=$!
fresh_wait 20 || { tail -20 "$dir/server.log"; exit 1; }
echo "freshness: $(date -u +%H:%M) UTC, $RATE events/s for $SECS s, $BIN"
"$FRESH" --url "$FRESH_URL" --rate "$RATE" --duration "${SECS}s" \
    --table "bench_$tag.cart_events" --webhook-port 3199
curl -s "$FRESH_URL/metrics" | grep -E '^cartstream_store_lag_seconds_(sum|count)' || true

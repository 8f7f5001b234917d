#!/usr/bin/env bash
# Runs schemathesis against a live server, from the OpenAPI document it serves, and fails on
# any failure: the document must say what the server does.
#
#   scripts/schemathesis.sh target/debug/cartstream
#
# The server runs on a random loopback port with the embedded store in a temporary directory
# and one key with every scope, sent on every request. schemathesis (pinned in
# scripts/schemathesis-requirements.txt) is installed into target/schemathesis-venv on the
# first run (12 s on an idle machine, about 50 s on a busy 2-core one) and reused after.
# Exceptions to checks, per operation and each with its reason, are in
# scripts/schemathesis.toml. Bounded: the run is killed after
# SCHEMATHESIS_TIMEOUT seconds (default 170).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:?usage: scripts/schemathesis.sh BINARY}
binary=$(realpath "$binary")
budget=${SCHEMATHESIS_TIMEOUT:-170}
examples=${SCHEMATHESIS_MAX_EXAMPLES:-30}

venv=target/schemathesis-venv
requirements=scripts/schemathesis-requirements.txt
# Reinstall when the pins change.
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

key=st-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >"$work/cartstream.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
# Every failed authentication schemathesis sends on purpose (its ignored_auth check) would
# otherwise count towards the per-address limit and turn later answers into 429s.
# 0 turns that limit off.
auth_failures_per_minute = 0

[[keys]]
name = "schemathesis"
key = "$key"
scopes = ["ingest", "read", "admin"]

# A route, so the operator API has an outbox to list, replay and delete from.
[[routes]]
name = "log"
[routes.target]
kind = "log"
TOML

CARTSTREAM_CONFIG="$work/cartstream.toml" CARTSTREAM_LOG=info CARTSTREAM_LOG_FORMAT=json \
    "$binary" >"$work/server.log" 2>&1 &
server_pid=$!

# The bound port, from the startup line.
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n '/"cartstream listening"/s/.*"addr":"\([0-9.]*:[0-9]*\)".*/\1/p' \
        "$work/server.log" | head -1)
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.log" >&2
        echo "schemathesis.sh: the server did not start" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$addr" ]; then
    cat "$work/server.log" >&2
    echo "schemathesis.sh: no 'cartstream listening' line within 10 s" >&2
    exit 1
fi

status=0
timeout --kill-after=10 "$budget" \
    "$venv/bin/schemathesis" --no-color --config-file scripts/schemathesis.toml run \
    "http://$addr/openapi.json" \
    --header "Authorization: Bearer $key" \
    --max-examples "$examples" \
    --seed "${SCHEMATHESIS_SEED:-1}" || status=$?

if grep -q "panicked" "$work/server.log"; then
    grep -n -A5 "panicked" "$work/server.log" >&2
    echo "schemathesis.sh: the server panicked" >&2
    status=1
fi
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "schemathesis.sh: over the time budget of ${budget} s" >&2
fi
exit "$status"

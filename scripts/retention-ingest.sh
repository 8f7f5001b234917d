#!/bin/bash
# Ingest with and without retention deleting (BENCHMARKS.md, issue 15).
# usage: scripts/retention-ingest.sh DATA_DIR PORT [CARTSTREAM_RETENTION=1h CARTSTREAM_MAX_PAST_AGE=1h CARTSTREAM_DEDUP_WINDOW=1h]
# DATA_DIR: a copy of a dir loaded by `read-bench --store embedded`; after `cargo build --release --bin cartstream --examples`.
set -u
cd "$(dirname "$0")/.."
DIR=$1; PORT=$2; shift 2
env "$@" CARTSTREAM_DATA_DIR=$DIR CARTSTREAM_LISTEN=127.0.0.1:$PORT CARTSTREAM_LOG=warn target/release/cartstream > $DIR.server.log 2>&1 &
PID=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
target/release/examples/cartstream-bench ws --connections 8 --window 64 --url http://127.0.0.1:$PORT --duration 8s --server-pid $PID 2>&1 | tail -25
ls -l $DIR/cartstream.db*
kill $PID; wait $PID

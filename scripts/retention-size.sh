#!/bin/bash
# The embedded file size under steady load with a 30 s retention (BENCHMARKS.md, issue 15).
# usage: scripts/retention-size.sh DATA_DIR PORT DURATION   (DATA_DIR is removed first)
set -u
cd "$(dirname "$0")/.."
DIR=$1; PORT=$2; DUR=$3
rm -rf $DIR; mkdir -p $DIR
CARTSTREAM_RETENTION=30s CARTSTREAM_MAX_PAST_AGE=30s CARTSTREAM_DEDUP_WINDOW=10s CARTSTREAM_DATA_DIR=$DIR CARTSTREAM_LISTEN=127.0.0.1:$PORT CARTSTREAM_LOG=warn target/release/cartstream > $DIR.server.log 2>&1 &
PID=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
target/release/examples/cartstream-bench ws --connections 4 --window 4 --url http://127.0.0.1:$PORT --duration $DUR > $DIR.bench.log 2>&1 &
B=$!
T0=$(date +%s)
while kill -0 $B 2>/dev/null; do
  echo "t=$(( $(date +%s) - T0 ))s db=$(stat -c %s $DIR/cartstream.db) wal=$(stat -c %s $DIR/cartstream.db-wal 2>/dev/null) rows=$(sqlite3 -readonly $DIR/cartstream.db 'select count(*) from events' 2>/dev/null)"
  sleep 10
done
tail -20 $DIR.bench.log
kill $PID; wait $PID

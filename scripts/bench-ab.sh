#!/usr/bin/env bash
# Compares two server builds in one sitting: for ROUNDS rounds, each build in turn runs the
# issue's key runs, each on a fresh server (new data dir, ClickHouse database and Redis key
# prefix), so neither build inherits the other's data. Interleaving makes the machine's noise
# hit both alike: compare the two builds' figures within a round.
#
# Usage: scripts/bench-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   (default 2 rounds)
#    or: scripts/bench-ab.sh OLD_BINARY NEW_BINARY abba embedded|rc BENCH-ARGS...
#        one figure alone, 12 runs in ABBA order (old new new old, three times), so neither
#        build always follows the other, e.g. ... abba rc ws --connections 8 --window 64
#   e.g. git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release)
#        cargo build --release --examples
#        scripts/bench-ab.sh /tmp/old/target/release/cartstream target/release/cartstream
# MORE="BIN3 BIN4 ...": more builds, run after the two in each round (named build3, build4, ...).
# scripts/bench-ab-summary.py LOG prints each figure's medians and per-round changes.
# Needs Redis and ClickHouse (scripts/ensure-services.sh). Listens on 127.0.0.1:3101 (FRESH_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$1"; NEW="$2"; ROUNDS="${3:-2}"
BENCH="${BENCH:-target/release/examples/cartstream-bench}"
. scripts/fresh-server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# run BINARY embedded|rc BENCH-ARGS...: one server, one cartstream-bench run, cleaned up.
run() {
    local bin="$1" backend="$2"; shift 2
    local dir tag pid
    dir=$(mktemp -d)
    tag=$(fresh_tag)
    fresh_env "$backend" "$dir" "$tag"
    env "${FRESH_ENV[@]}" "$bin" >"$dir.log" 2>&1 &
    pid=$!
    fresh_wait 10 || true
    "$BENCH" "$@" --url "$FRESH_URL" --server-pid "$pid" --warmup 2s --duration 8s | grep -vE '^\{' || true
    kill -TERM "$pid"; wait "$pid" || true
    fresh_cleanup "$backend" "$tag"
    rm -rf "$dir" "$dir.log"
}

if [ "$ROUNDS" = abba ]; then
    shift 3
    for which in old new new old old new new old old new new old; do
        bin=$OLD; [ "$which" = new ] && bin=$NEW
        echo "### $which build ($bin), $(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)"
        run "$bin" "$@"
    done
    exit 0
fi

# FIGURES: which of the four to run (default all), e.g. FIGURES="rc-ws-pipelined rc-http-batch".
FIGURES=${FIGURES:-rc-ws-pipelined rc-ws-closed rc-http-batch embedded-ws-pipelined}
figure() { case " $FIGURES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for round in $(seq "$ROUNDS"); do
    builds=("old:$OLD" "new:$NEW")
    n=3
    for more in ${MORE:-}; do builds+=("build$n:$more"); n=$((n + 1)); done
    for build in "${builds[@]}"; do
        which=${build%%:*}; bin=${build#*:}
        echo "### round $round, $which build ($bin), $(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)"
        if figure rc-ws-pipelined; then
            echo "## Redis + ClickHouse, WS pipelined";   run "$bin" rc ws --connections 8 --window 64
        fi
        if figure rc-ws-closed; then
            echo "## Redis + ClickHouse, WS closed loop"; run "$bin" rc ws --connections 8 --window 1
        fi
        if figure rc-http-batch; then
            echo "## Redis + ClickHouse, HTTP batch";     run "$bin" rc http-batch --concurrency 8 --batch-size 100
        fi
        if figure embedded-ws-pipelined; then
            echo "## embedded, WS pipelined";             run "$bin" embedded ws --connections 8 --window 64
        fi
    done
done

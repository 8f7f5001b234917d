#!/usr/bin/env bash
# One closed-loop run (or a pipelined one) on a fresh server, with the server's stage
# latencies: what bench-ceiling.sh's `rc-closed` runs, plus the claim, store and group
# histograms from /metrics (their buckets double from 100 us, so a quantile is the bucket's
# upper bound). For A/B pairs of builds where the sitting's medians are too coarse.
#
# Usage: scripts/closed-loop.sh BINARY
#   WINDOW=1 (messages in flight per connection; 64 is the pipelined run), SECS=8 after a 2 s
#   warm-up, BACKEND=rc (Redis + ClickHouse, scripts/ensure-services.sh) or embedded,
#   EXTRA_ENV="NAME=value ..." for the server, BENCH=path of cartstream-bench,
#   TRACE=file to record `perf trace` of the server meanwhile (TRACE_ARGS, default -s: a
#   summary of its system calls per thread). Listens on 127.0.0.1:$FRESH_PORT (3101).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$1; SECS=${SECS:-8}; BENCH=${BENCH:-target/release/examples/cartstream-bench}
FRESH_PORT=${FRESH_PORT:-3101}
. scripts/fresh-server.sh
dir=$(mktemp -d); tag=$(fresh_tag)
fresh_env "${BACKEND:-rc}" "$dir" "$tag"
# shellcheck disable=SC2086 # EXTRA_ENV is a list of NAME=value words
env "${FRESH_ENV[@]}" ${EXTRA_ENV:-} "$BIN" >"$dir.log" 2>&1 &
pid=$!
fresh_wait 20 || { echo "the server did not become ready" >&2; cat "$dir.log" >&2; kill $pid; exit 1; }
if [ -n "${TRACE:-}" ]; then
    # shellcheck disable=SC2086 # TRACE_ARGS is a list of options
    perf trace ${TRACE_ARGS:--s} -p $pid -o "$TRACE" -- sleep $((SECS + 1)) & tp=$!
fi
"$BENCH" ws --connections 8 --window "${WINDOW:-1}" --url "$FRESH_URL" --server-pid "$pid" \
    --warmup 2s --duration "${SECS}s" --json >"$dir.bench" 2>&1
[ -n "${TRACE:-}" ] && wait "$tp"
curl -fs "$FRESH_URL/metrics" >"$dir.metrics"
kill -TERM $pid; wait $pid
tail -n1 "$dir.bench" | jq -c '{acked_per_sec, latency_us, server_cpu_pct}'
python3 - "$dir.metrics" <<'PY'
import re, sys
h = {}
for line in open(sys.argv[1]):
    m = re.match(r'cartstream_(claim|store|commit)_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        le = float('inf') if m.group(2) == '+Inf' else float(m.group(2))
        h.setdefault(m.group(1), []).append((le, float(m.group(3))))
    m = re.match(r'cartstream_(claim|store|commit)_seconds_(sum|count) (\S+)', line)
    if m:
        h[m.group(1) + '_' + m.group(2)] = float(m.group(3))
for k in ('claim', 'store', 'commit'):
    n = h.get(k + '_count', 0)
    if not n:
        continue
    buckets = sorted(h[k])
    q = lambda p: next(le for le, c in buckets if c >= p * n) * 1e6
    print(f"{k}: {n:.0f} groups, mean {h[k + '_sum'] / n * 1e6:.0f} us, p50 <= {q(.5):.0f}, "
          f"p90 <= {q(.9):.0f}, p99 <= {q(.99):.0f}, p99.9 <= {q(.999):.0f}")
PY
[ "${BACKEND:-rc}" = rc ] && fresh_cleanup rc "$tag" >/dev/null 2>&1
rm -rf "$dir" "$dir.log" "$dir.bench" "$dir.metrics"

#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes sure Redis and ClickHouse are installed and
# running (installing them with apt-get if needed), runs every test against them, and stops
# what it started. With CI=true a backend test that cannot reach its server fails instead of
# skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
trap 'scripts/stop-services.sh || true' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log=$(mktemp)
status=0
cargo test --locked --all-targets 2>&1 | tee "$log" || status=$?
trap - EXIT
scripts/stop-services.sh || true
# One closing line for the whole run: cargo prints a summary per test binary, and the last
# binaries (examples) have no tests of their own.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"

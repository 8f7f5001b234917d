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
cargo test --locked --all-targets

#!/usr/bin/env bash
# The browser SDK's tests (clients/js, issue 16): its unit tests under node's test runner, then
# the browser cases in Debian's Chromium driven by playwright-core against a real cartstream
# (BIN, default target/debug/cartstream; build it first). Installs what it needs: Chromium
# with apt-get (never a browser download), Node if missing, the npm dev dependencies from the
# lockfile. Each browser case has its own budget (clients/js/browser-test/run.mjs); the whole
# takes about a minute once installed. Screenshots and server logs: target/browser-test/.
#
#   scripts/browser-test.sh [BIN] [case ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/cartstream}")
shift || true
[ -x "$bin" ] || { echo "no cartstream binary at $bin: cargo build first" >&2; exit 1; }

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

cd clients/js
npm ci --no-audit --no-fund --loglevel=error
npm run --silent typecheck
npm test --silent
CARTSTREAM_BIN="$bin" CHROMIUM=/usr/bin/chromium node browser-test/run.mjs "$@"

#!/usr/bin/env bash
# Browser tests of the live view (/live and the tap): Debian's Chromium driven by
# playwright-core from npm, against a real cartstream binary the test starts.
#
#   scripts/live-test.sh [path/to/cartstream]     (default: target/debug/cartstream, built if missing)
#
# 1. Installs Debian's chromium with apt-get when /usr/bin/chromium is missing (needs root).
# 2. Installs playwright-core (pinned in tests/browser-live/package-lock.json) with `npm ci`,
#    install scripts off, when node_modules does not match the lockfile. Playwright never
#    downloads a browser of its own: the test launches /usr/bin/chromium.
# 3. Runs tests/browser-live/live.test.mjs (node:test): the key asked and refused, events over
#    WebSocket and HTTP shown within 1 s, a rejected event's field errors, a filter, pause,
#    hostile payloads rendered inert under the page's CSP, and screenshots (desktop and
#    phone) written to target/browser-live/.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/debug/cartstream}
dir=tests/browser-live
out=${LIVE_TEST_OUT:-${CARGO_TARGET_DIR:-target}/browser-live}

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/live-test.sh: /usr/bin/chromium is missing; run as root to apt-get install it" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "scripts/live-test.sh: Node.js 20 or later and npm are needed" >&2
    exit 1
fi
if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json" 2>/dev/null; then
    rm -rf "$dir/node_modules"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund)
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
fi
if [ ! -x "$bin" ]; then
    cargo build --locked --bin cartstream
fi
mkdir -p "$out"
# --experimental-websocket: Node.js 20's WebSocket client, for sending events from the test.
node --experimental-websocket --test-reporter=spec "$dir/live.test.mjs" "$bin" "$out"

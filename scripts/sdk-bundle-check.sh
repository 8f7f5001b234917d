#!/usr/bin/env bash
# The browser SDK's committed build (clients/js/dist, served by cartstream at
# /sdk/v1/cartstream.min.js) is the build of its source: rebuilds it into a temporary directory
# with the locked esbuild and fails if it differs, or if the script is over 6 KB gzipped.
set -euo pipefail
cd "$(dirname "$0")/../clients/js"
npm ci --no-audit --no-fund --loglevel=error
node build.mjs --check

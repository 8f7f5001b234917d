#!/usr/bin/env bash
# Checks the AsyncAPI document of the WebSocket channel (asyncapi/asyncapi.json):
#
#   scripts/asyncapi/check.sh
#
# 1. Installs the checker's npm packages (@asyncapi/parser, ajv; pinned in
#    scripts/asyncapi/package-lock.json) with `npm ci` from the npm registry, install scripts
#    off, when node_modules does not match the lockfile (about 10 s; reused after).
# 2. Runs the Rust tests of the document (`cargo test --test api asyncapi::`): served as
#    checked in, the OpenAPI document's event schemas, the server's defaults, and a real
#    session on two live servers, written to target/tmp/asyncapi-session.json.
# 3. Runs scripts/asyncapi/check.mjs on the document and that session: the AsyncAPI parser's
#    validation (any error or warning fails), every example, and every message of the
#    session against its schema.
#
# Needs Node.js 20.17 or later and npm (the project's machines have 20.20). Exit status 0
# when all of it holds.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=scripts/asyncapi
# 20.17: the oldest Node.js the parser's linter (@stoplight/spectral-core) supports.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 17) ? 0 : 1)' 2>/dev/null; then
    echo "scripts/asyncapi/check.sh: Node.js 20.17 or later is needed (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi

# Reinstall when the lockfile changes.
if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json" 2>/dev/null; then
    rm -rf "$dir/node_modules"
    (cd "$dir" && SCARF_ANALYTICS=false npm ci --ignore-scripts --no-audit --no-fund)
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
fi

session=${CARGO_TARGET_DIR:-target}/tmp/asyncapi-session.json
rm -f "$session"
cargo test --locked --test api asyncapi::
node "$dir/check.mjs" asyncapi/asyncapi.json "$session"

#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each, starting from the committed seed
# corpus, and fails on any crash, panic (a broken invariant), timeout or out-of-memory.
#   scripts/fuzz.sh [SECONDS]   (default 30)
# Installs cargo-fuzz and the nightly toolchain when missing. New inputs the fuzzer finds go
# to a temporary directory, so the tree stays clean; a failing input is kept under
# fuzz/artifacts/<target>/ and its path printed, to replay with
#   cargo +nightly fuzz run <target> <path>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
# Per input: anything near these limits is a bug (a slow or memory-hungry parse), not noise.
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
targets=(ws_message batch_body validate_event)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# No sanitizer: the code under test is safe Rust, and without ASan the build is shorter and
# each run gets more executions. Debug assertions (overflow checks) stay on.
build_flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${build_flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    before=$(ls "fuzz/artifacts/$t" | wc -l)
    echo "== $t: ${seconds}s"
    # The first corpus directory receives what the fuzzer finds; the committed one is only read.
    ok=true
    if ! cargo +nightly fuzz run "${build_flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
        -dict=fuzz/dict/json.dict -print_final_stats=1 >"$work/$t.log" 2>&1; then
        ok=false
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$work/$t.log" | head -n 5 >&2 || true
        tail -n 20 "$work/$t.log" >&2
    fi
    grep -E '^stat::number_of_executed_units|^Done ' "$work/$t.log" || true
    after=$(ls "fuzz/artifacts/$t" | wc -l)
    if [ "$after" -gt "$before" ]; then
        ok=false
        ls -t "fuzz/artifacts/$t" | head -n $((after - before)) |
            sed "s|^|failing input: fuzz/artifacts/$t/|" >&2
    fi
    $ok || failed+=("$t")
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing passed: ${targets[*]}, ${seconds}s each"

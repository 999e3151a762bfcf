#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS seconds (default
# 20) on a scratch copy of its checked-in corpus; a crash fails the script
# and leaves the input in fuzz/artifacts/TARGET/. Longer runs:
#   scripts/fuzz-smoke.sh 600
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
for t in kiln_file onnx_import npy_read; do
    work="$(mktemp -d)"
    cp -r "corpus/$t/." "$work/"
    echo "fuzzing $t for ${seconds}s"
    log="$work.log"
    set +e
    cargo +nightly fuzz run -O "$t" "$work" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY|panicked" "$log" || true
    rm -f "$log"
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t failed (exit $status): see fuzz/artifacts/$t/"
        exit 1
    fi
done

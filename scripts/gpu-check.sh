#!/usr/bin/env bash
# The GPU checks in one call, for a machine with an NVIDIA GPU but no cargo
# (the lent device machine). Build here first, then carry the two binaries:
#
#   cargo test --release -p kiln-tests --test cuda --no-run   # prints the test binary's path
#   cargo build --release -p kiln-bench
#   scripts/gpu-check.sh prepare      # copies both into target/gpu-check/
#
# and on the GPU machine (carry target/gpu-check):
#
#   scripts/gpu-check.sh run          # results under $OUT (or target/gpu-check/out)
#
# `run` prints the GPU, runs the CUDA tests (the differential suite on
# Device::Cuda(0) included) and the GPU benchmark with PyTorch peers.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check
case "${1:-}" in
prepare)
    mkdir -p "$dir"
    test_bin=$(ls -t target/release/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -1)
    if [ -z "$test_bin" ]; then
        echo "no CUDA test binary: run cargo test --release -p kiln-tests --test cuda --no-run" >&2
        exit 1
    fi
    cp "$test_bin" "$dir/cuda-tests"
    cp target/release/kiln-bench "$dir/kiln-bench"
    ls -la "$dir"
    ;;
run)
    out="${OUT:-$dir/out}"
    mkdir -p "$out"
    nvidia-smi -L 2>&1 | tee "$out/gpu.txt"
    # The pip or toolkit NVRTC; the toolkit's lib64 is searched by default.
    export RUST_BACKTRACE=1
    "$dir/cuda-tests" --nocapture --test-threads 1 2>&1 | tee "$out/cuda-tests.txt"
    KILN_BENCH_PYTHON="${KILN_BENCH_PYTHON:-python3}" \
        "$dir/kiln-bench" --device cuda --runs 100 --peers --dir "$out/bench" 2>&1 \
        | tee "$out/bench.txt"
    ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|run" >&2
    exit 2
    ;;
esac

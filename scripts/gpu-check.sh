#!/usr/bin/env bash
# The GPU checks in one call, for a machine with an NVIDIA GPU but no cargo
# (the lent device machine). Build here first, then carry the binaries:
#
#   cargo test --release -p kiln-tests --test cuda --test random_graphs --test training --no-run
#   cargo build --release -p kiln-bench -p kiln
#   scripts/gpu-check.sh prepare      # copies them into target/gpu-check/
#
# and on the GPU machine (carry target/gpu-check):
#
#   scripts/gpu-check.sh run          # results under $OUT (or target/gpu-check/out)
#
# `run` prints the GPU, runs the CUDA tests that `cargo test` ignores
# without a GPU (`--ignored`: the differential suite on Device::Cuda(0),
# example models and op graphs, and tensor-core precisions; the training
# tests with `--include-ignored`, GPU training among them; see
# tests/ignored.txt), KILN_GPU_RANDOM random graphs (default 80) and the
# GPU benchmark with PyTorch peers (KILN_BENCH_TORCH_COMPILE=0 skips
# torch.compile), kiln with BF16 tensor-core matrix products, direct
# convolutions and one element per thread and step (variants), then
# kiln's kernels by device time (KILN_GPU_PROFILE=0 skips that). Each step has a time
# limit, so one that hangs does not take the others' results with it.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check
tests=(cuda random_graphs training)
case "${1:-}" in
prepare)
    mkdir -p "$dir"
    for t in "${tests[@]}"; do
        bin=$(ls -t target/release/deps/"$t"-* 2>/dev/null | grep -v '\.d$' | head -1)
        if [ -z "$bin" ]; then
            echo "no $t test binary: run cargo test --release -p kiln-tests --test $t --no-run" >&2
            exit 1
        fi
        cp "$bin" "$dir/$t-tests"
    done
    cp target/release/kiln-bench "$dir/kiln-bench"
    cp target/release/kiln "$dir/kiln"
    ls -la "$dir"
    ;;
run)
    out="${OUT:-$dir/out}"
    mkdir -p "$out"
    nvidia-smi -L 2>&1 | tee "$out/summary.txt"
    export RUST_BACKTRACE=1 KILN_CACHE_DIR=/tmp/kiln-cache
    step() { # name, seconds, command...
        local name=$1 secs=$2
        shift 2
        local t0=$SECONDS
        timeout "$secs" "$@" 2>&1 | tee "$out/$name.txt"
        echo "== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    }
    step cuda-tests 90 "$dir/cuda-tests" --ignored --nocapture --test-threads 1
    step training 30 bash -c "$dir/training-tests --include-ignored --nocapture; t=\$?;
        $dir/kiln run examples/mlp.kiln --input x=examples/digit.npy --device cuda --profile; k=\$?;
        [ \$t = 0 ] && [ \$k = 0 ]"
    PYTHONUNBUFFERED=1 KILN_BENCH_PYTHON="${KILN_BENCH_PYTHON:-python3}" \
        step bench "${KILN_BENCH_SECONDS:-170}" "$dir/kiln-bench" --device cuda --runs 200 --peers --dir /tmp/kiln-bench
    # Variants: BF16 tensor-core matrix products, direct convolutions
    # instead of im2col + GEMM, one element per thread and step.
    step bench-variants 45 bash -c "
        $dir/kiln-bench --device cuda --runs 200 --matmul-precision bf16 \
            --only mlp_b128 --only xfmr_b1 --only cnn_b32 --dir /tmp/kiln-bench-bf16
        KILN_CUDA_CONV=direct $dir/kiln-bench --device cuda --runs 200 --only cnn_b32 --dir /tmp/kiln-bench-direct
        KILN_CUDA_ILP=1 $dir/kiln-bench --device cuda --runs 200 --only ew_chain_64m --dir /tmp/kiln-bench-ilp1"
    KILN_RANDOM_DEVICE=cuda KILN_RANDOM_GRAPHS="${KILN_GPU_RANDOM:-80}" \
        step random-graphs 45 "$dir/random_graphs-tests" --nocapture --exact random_graphs_match_the_reference
    if [ "${KILN_GPU_PROFILE:-1}" = 1 ]; then
        step profile 25 "$dir/kiln-bench" --device cuda --runs 20 --profile --dir /tmp/kiln-bench-profile
    fi
    cat "$out/summary.txt"
    ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|run" >&2
    exit 2
    ;;
esac

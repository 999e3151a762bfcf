#!/usr/bin/env bash
# Installs NVRTC, the CUDA runtime compiler (no GPU needed), from PyPI
# (nvidia-cuda-nvrtc 13.x, the major version kiln's cudarc loads) into a
# virtual environment, and prints the directory holding libnvrtc: point
# KILN_NVRTC_DIR there. The CUDA tests run this themselves when
# KILN_NVRTC_DIR is unset and no system NVRTC is found.
#
#   scripts/nvrtc.sh [DIR]      (default: target/nvrtc-venv)
set -euo pipefail
dir="${1:-target/nvrtc-venv}"
lib_dir() {
    local d
    for d in "$dir"/lib/python3*/site-packages/nvidia/cu*/lib; do
        if ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
            echo "$d"
            return 0
        fi
    done
    return 1
}
if lib_dir; then
    exit 0
fi
python3 -m venv "$dir" >&2
"$dir/bin/python" -m pip install -q --disable-pip-version-check "nvidia-cuda-nvrtc~=13.0" >&2
if ! lib_dir; then
    echo "no libnvrtc under $dir after installing nvidia-cuda-nvrtc" >&2
    exit 1
fi

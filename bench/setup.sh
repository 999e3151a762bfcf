#!/usr/bin/env bash
# Creates bench/.venv with the peers the benchmark compares kiln against.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet numpy onnx onnxruntime safetensors torch
.venv/bin/python -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

#!/usr/bin/env bash
# Makes kiln's transformer ONNX fixtures, tests/onnx/transformers/ (issue 18):
# tiny BERT, GPT-2, ViT, DistilBERT, RoBERTa and Llama models with random
# weights exported by PyTorch's TorchScript and dynamo exporters (at their
# default opsets, and some at others) with dynamic batch/seq dims, with ONNX
# Runtime's outputs at several bindings (read by
# tests/tests/onnx_transformers.rs). See scripts/transformer-fixtures/make.py.
#
#   scripts/transformer-fixtures.sh               # remake everything
#   scripts/transformer-fixtures.sh --shape-ops   # only SHAPE_OPS.md
#
# Uses the virtual environment target/transformer-fixtures-venv, created (or
# re-created) with the pins of scripts/transformer-fixtures/requirements.txt
# when missing or different. torch comes from PyPI (its default wheel, with
# CUDA libraries: several GB; only the CPU is used).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/transformer-fixtures-venv
req=scripts/transformer-fixtures/requirements.txt
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
    echo "transformer-fixtures: setting up $venv ($req)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q -r "$req" >&2
    cp "$req" "$stamp"
fi
exec "$venv/bin/python" scripts/transformer-fixtures/make.py "$@"

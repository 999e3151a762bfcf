#!/usr/bin/env bash
# The model zoo of `kiln-bench --zoo` (bench/zoo/export.py): sets up the
# virtual environment target/zoo-venv with the pins of
# bench/zoo/requirements.txt (PyTorch, torchvision, transformers, ONNX,
# ONNX Runtime, tract's Python bindings), created or re-created when
# missing or when the pins changed, then exports the zoo's models with fixed
# seeds and random weights into target/zoo/<model>-b<batch>/ (cached: a
# model is exported again only when export.py or the pins change).
#
#   bench/zoo/setup.sh                         # every model, batches 1 and 8
#   bench/zoo/setup.sh --only resnet18 --batch 1
#
# torch comes from PyPI (its default wheel, with CUDA libraries: several GB;
# only the CPU is used). tract is optional: where its wheel does not
# install, the rest is installed and the zoo runs without it.
# KILN_ZOO_VENV names another venv directory instead of target/zoo-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${KILN_ZOO_VENV:-target/zoo-venv}
req=bench/zoo/requirements.txt
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
    echo "zoo: setting up $venv ($req; several GB the first time)" >&2
    python3 -m venv "$venv" >&2
    if ! "$venv/bin/python" -m pip install -q -r "$req" >&2; then
        echo "zoo: installing without tract (its wheel failed); the zoo runs without it" >&2
        grep -v '^tract==' "$req" >"$venv/.requirements-no-tract"
        "$venv/bin/python" -m pip install -q -r "$venv/.requirements-no-tract" >&2
    fi
    "$venv/bin/python" -c "import torch, torchvision, transformers, onnx, onnxruntime" >&2
    cp "$req" "$stamp"
fi
exec "$venv/bin/python" bench/zoo/export.py "$@"

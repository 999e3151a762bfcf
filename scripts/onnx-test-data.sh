#!/usr/bin/env bash
# Fetches the ONNX backend test data (node, pytorch-converted,
# pytorch-operator, simple, light, real) shipped in the pinned onnx wheel from
# PyPI (onnx==1.22.0: the last wheel that carries the node cases) and
# unpacks it. Prints the data directory; the conformance test reads it from
# KILN_ONNX_DATA.
#
#   scripts/onnx-test-data.sh [DIR]      (default: target/onnx-test-data)
set -euo pipefail
dir="${1:-target/onnx-test-data}"
version=1.22.0
data="$dir/onnx-$version/onnx/backend/test/data"
if [ -d "$data/node" ]; then
    echo "$data"
    exit 0
fi
mkdir -p "$dir/wheel"
if ! ls "$dir"/wheel/onnx-"$version"-*.whl >/dev/null 2>&1; then
    pip=(python3 -m pip)
    if ! python3 -m pip --version >/dev/null 2>&1; then
        # No pip beside this python: one in a virtual environment.
        python3 -m venv "$dir/venv" >&2
        pip=("$dir/venv/bin/python" -m pip)
    fi
    # Any wheel of the version carries the same data: pick one for
    # CPython 3.11 on Linux, whatever runs this.
    "${pip[@]}" download -q "onnx==$version" --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$dir/wheel" >&2
fi
wheel=$(ls "$dir"/wheel/onnx-"$version"-*.whl | head -1)
rm -rf "$dir/onnx-$version.tmp"
mkdir -p "$dir/onnx-$version.tmp"
python3 - "$wheel" "$dir/onnx-$version.tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in z.namelist():
        if m.startswith("onnx/backend/test/data/"):
            z.extract(m, sys.argv[2])
PY
mv "$dir/onnx-$version.tmp" "$dir/onnx-$version"
echo "$data"

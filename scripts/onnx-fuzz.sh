#!/usr/bin/env bash
# kiln's model-level differential ONNX fuzzer: seeded mutants of ~36 model
# families run through ONNX Runtime and kiln (kiln-onnx-runner), compared,
# disagreements arbitrated with onnx.reference and checked against the
# expected divergences (scripts/onnx-fuzz/DIVERGENCES.md). Failing cases are
# saved as repro directories under OUT/cases.
#
#   scripts/onnx-fuzz.sh [--seed N] [--mutants N | --seconds S] [--families a,b]
#                        [--jobs J] [--out DIR] [--only K|sS-mK]
#   scripts/onnx-fuzz.sh --seed 1 --mutants 20000       (CI: about 1 minute on 2 cores)
#   scripts/onnx-fuzz.sh --seed 1 --mutants 100000 --out /dev/shm/kf   (a long run: about
#                                 4 minutes at 400-500 mutants/s with 2 jobs; /dev/shm
#                                 because the repros and scratch files are many and small)
#
# Uses the pinned virtual environment target/onnx-fuzz-venv (created if
# missing or if its pins differ) and builds the runner first. Exit status is
# non-zero if any mutant crashed, hung, panicked, or was refused or answered
# differently without an expected divergence explaining it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/onnx-fuzz-venv
pins=(onnx==1.22.0 onnxruntime==1.23.2 numpy==2.2.6)
want="onnx==1.22.0 onnxruntime==1.23.2 numpy==2.2.6"
have() {
    "$venv/bin/python" - <<'PY' 2>/dev/null
import numpy, onnx, onnxruntime
print(f"onnx=={onnx.__version__} onnxruntime=={onnxruntime.__version__} numpy=={numpy.__version__}")
PY
}
if [ ! -x "$venv/bin/python" ] || [ "$(have)" != "$want" ]; then
    echo "onnx-fuzz: setting up $venv ($want)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q "${pins[@]}" >&2
    if [ "$(have)" != "$want" ]; then
        echo "onnx-fuzz: $venv does not hold $want after installing" >&2
        exit 2
    fi
fi
case " $* " in
*" --divergences-md "* | *" --write-regressions "* | *" --no-kiln "* | *" --list-families "* | *" --help "* | *" -h "*) ;;
*) cargo build --release -q -p kiln-tests --bin kiln-onnx-runner >&2 ;;
esac
PYTHONPATH=scripts/onnx-fuzz exec "$venv/bin/python" -m kilnfuzz "$@"

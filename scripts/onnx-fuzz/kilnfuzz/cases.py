"""Writing a self-contained repro / regression case directory (format C):
model.onnx, input_<i>.npy (graph-input order), output_<i>.npy (expected, in
graph-output order) and case.json."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx

from .compare import Tolerance, tolerance_for_dtype


def effective_tolerance(tol: Tolerance, expected: list[np.ndarray]) -> tuple[float, float]:
    """The scalar (rtol, atol) that format C stores: the widest the
    per-output tolerances of `tol` give over `expected`."""
    rtol, atol = tol.rtol, tol.atol
    for w in expected:
        r, a = tolerance_for_dtype(w.dtype, tol).for_output(w)
        rtol, atol = max(rtol, r), max(atol, a)
    return rtol, atol


def write_case(path: str, *, name: str, family: str, seed: int, model: onnx.ModelProto,
               inputs: list[np.ndarray], expected: list[np.ndarray], oracle: str,
               rtol: float, atol: float, what: str, extra: dict | None = None,
               reference: list[np.ndarray] | None = None,
               kiln: list[np.ndarray] | None = None) -> str:
    """Writes the case directory `path` (created; files in it replaced) and
    returns it. `extra` adds fields to case.json (status, diagnosis...);
    `reference` is written as reference_output_<i>.npy, `kiln` (what kiln
    gave, for diagnosis) as kiln_output_<i>.npy."""
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        if f.endswith(".npy") or f in ("model.onnx", "case.json"):
            os.remove(os.path.join(path, f))
    with open(os.path.join(path, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for i, x in enumerate(inputs):
        np.save(os.path.join(path, f"input_{i}.npy"), np.asarray(x))
    for i, x in enumerate(expected):
        np.save(os.path.join(path, f"output_{i}.npy"), np.asarray(x))
    for i, x in enumerate(reference or []):
        np.save(os.path.join(path, f"reference_output_{i}.npy"), np.asarray(x))
    for i, x in enumerate(kiln or []):
        np.save(os.path.join(path, f"kiln_output_{i}.npy"), np.asarray(x))
    rel = os.path.relpath(path, os.getcwd())
    doc = {"name": name, "family": family, "seed": seed, "oracle": oracle,
           "rtol": float(rtol), "atol": float(atol), "what": what,
           "command": f"target/release/kiln-onnx-runner --replay {rel}"}
    doc.update(extra or {})
    with open(os.path.join(path, "case.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    return path

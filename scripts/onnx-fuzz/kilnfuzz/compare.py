"""The comparison rule shared with kiln's replay (interface C), and tolerances.

Rule: same shape and dtype; integers and bools exactly; floats: NaN where
expected NaN (and only there), the same infinities, else
|got - want| <= atol + rtol * |want|.

Contractions and long reductions (Conv, MatMul, Gemm, sums...) accumulate
rounding error proportional to the sum of |terms|, not to the result, which
cancellation can make small; for those families the absolute tolerance is
scaled by the largest finite |want| of the output (`scaled=True`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Tolerance of one comparison: atol + rtol*|want|; with `scaled`, the
    atol is raised to rtol * max finite |want| of the output."""

    rtol: float = 1e-4
    atol: float = 1e-5
    scaled: bool = False

    def for_output(self, want: np.ndarray) -> tuple[float, float]:
        """The (rtol, atol) to use for the expected output `want`."""
        atol = self.atol
        if self.scaled and want.dtype.kind == "f" and want.size:
            finite = np.abs(want[np.isfinite(want)].astype(np.float64))
            if finite.size:
                atol = max(atol, self.rtol * float(finite.max()))
        return self.rtol, atol


def tolerance_for_dtype(dtype: np.dtype, base: Tolerance) -> Tolerance:
    """Widens `base` for low-precision float outputs (f16, bf16)."""
    if np.dtype(dtype) == np.float16:
        return Tolerance(max(base.rtol, 2e-3), max(base.atol, 2e-3), base.scaled)
    return base


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> str | None:
    """None when `got` matches `want` under the rule, else a one-line reason."""
    got = np.asarray(got)
    want = np.asarray(want)
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != expected {want.dtype}"
    if got.shape != want.shape:
        return f"shape {list(got.shape)} != expected {list(want.shape)}"
    if want.size == 0:
        return None
    if want.dtype.kind != "f":
        bad = got != want
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), want.shape)
            return f"{int(bad.sum())} values differ; at {list(i)}: got {got[i]!r}, want {want[i]!r}"
        return None
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    gn, wn = np.isnan(g), np.isnan(w)
    bad = gn != wn
    winf = np.isinf(w)
    bad |= winf & (g != w)
    bad |= np.isinf(g) & ~winf & ~wn
    fin = ~wn & ~winf & ~np.isinf(g) & ~gn
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(fin, np.abs(g - w), 0.0)
        bad |= fin & (diff > atol + rtol * np.abs(w))
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), want.shape)
        return (f"{int(bad.sum())}/{want.size} values differ (rtol {rtol:g}, atol {atol:g}); "
                f"at {list(i)}: got {got[i]!r}, want {want[i]!r}")
    return None


def compare_outputs(got: list[np.ndarray], want: list[np.ndarray], tol: Tolerance) -> str | None:
    """Compares every output in order; None when all match, else the first reason."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        t = tolerance_for_dtype(w.dtype, tol)
        rtol, atol = t.for_output(w)
        why = compare(g, w, rtol, atol)
        if why is not None:
            return f"output {i}: {why}"
    return None

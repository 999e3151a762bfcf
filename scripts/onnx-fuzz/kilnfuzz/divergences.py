"""The expected divergences: where kiln deliberately gives another answer than
ONNX Runtime (ORT off the spec), or where the spec leaves the answer open and
kiln documents its choice (the spec where it speaks, numpy where it does not).

Each entry's `matches(ctx)` is as narrow as it can be: it looks at the op and
its attributes, at the inputs, and usually at where the outputs differ and at
who the reference evaluator sides with, so that a deliberate difference never
hides a new bug. `python -m kilnfuzz --divergences-md` renders the list as
DIVERGENCES.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .compare import compare_outputs
from .mutate import Case, attr


@dataclass
class Ctx:
    """What is known about a disagreement: the case, each side's outputs."""

    case: Case
    ort: list[np.ndarray]
    kiln: list[np.ndarray] | None
    kiln_status: str
    kiln_error: str = ""
    ref: list[np.ndarray] | None = None
    ref_error: str | None = None
    why: str = ""

    def agree(self, a, b) -> bool:
        return a is not None and b is not None and compare_outputs(a, b, self.case.tol) is None

    def kiln_is_reference(self) -> bool:
        """kiln's outputs match the reference evaluator's."""
        return self.agree(self.kiln, self.ref)

    def arbiter(self) -> str:
        if self.ref is None:
            return f"reference evaluator failed: {self.ref_error}"
        k, o = self.agree(self.kiln, self.ref), self.agree(self.ort, self.ref)
        return {(True, True): "reference agrees with both", (True, False): "reference agrees with kiln",
                (False, True): "reference agrees with onnxruntime",
                (False, False): "reference agrees with neither"}[(k, o)]

    def diff_mask(self, i: int = 0) -> np.ndarray | None:
        """Where output i of kiln and ORT differ (None when shapes differ)."""
        if self.kiln is None or i >= len(self.kiln):
            return None
        g, w = self.kiln[i], self.ort[i]
        if g.shape != w.shape:
            return None
        if w.dtype.kind != "f":
            return g != w
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        with np.errstate(invalid="ignore"):
            same = (g64 == w64) | (np.isnan(g64) & np.isnan(w64)) | \
                   (np.abs(g64 - w64) <= 1e-5 + 1e-4 * np.abs(w64))
        return ~same


@dataclass
class Divergence:
    """One documented difference. `kind`: 'mismatch' (kiln and ORT give
    different values) or 'refused' (kiln refuses a model ORT runs)."""

    id: str
    op: str
    condition: str
    why: str
    matches: Callable[[Ctx], bool] = field(repr=False)
    kind: str = "mismatch"
    evidence: str = ""


def only(case: Case, op: str) -> bool:
    """The graph is a single `op` node."""
    return [n.op_type for n in case.nodes()] == [op]


def _first_input(ctx: Ctx) -> np.ndarray:
    return ctx.case.inputs[0] if ctx.case.inputs else np.zeros(0)


# --------------------------------------------------------------- predicates
def _same_dilated(ctx: Ctx) -> bool:
    ops = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")
    n = [n for n in ctx.case.nodes() if n.op_type in ops]
    return (len(n) == 1 and len(ctx.case.nodes()) == 1
            and attr(n[0], "auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER")
            and any(d > 1 for d in attr(n[0], "dilations", []) or [])
            and ctx.kiln_is_reference())


def _convtranspose_output_padding(ctx: Ctx) -> bool:
    if not only(ctx.case, "ConvTranspose"):
        return False
    n = ctx.case.nodes()[0]
    return any(p > 0 for p in attr(n, "output_padding", []) or []) and ctx.kiln_is_reference()


def _cast_out_of_range(ctx: Ctx) -> bool:
    if not only(ctx.case, "Cast"):
        return False
    x = _first_input(ctx)
    to = ctx.kiln[0].dtype if ctx.kiln else None
    if x.dtype.kind != "f" or to is None or to.kind not in "iu":
        return False
    info = np.iinfo(to)
    with np.errstate(invalid="ignore"):
        t = np.trunc(x.astype(np.float64))
        bad = ~np.isfinite(t) | (t < info.min) | (t > info.max)
    m = ctx.diff_mask(0)
    return m is not None and bool(bad.any()) and not (m & ~bad).any()


def _nan_in_select(ctx: Ctx) -> bool:
    """Max/Min (variadic), ArgMax/ArgMin, TopK with NaN among the inputs."""
    ops = ctx.case.ops()
    return (len(ctx.case.nodes()) == 1 and ops <= {"Max", "Min", "ArgMax", "ArgMin", "TopK"}
            and ctx.case.has_nan())


def _pad_wrap_negative(ctx: Ctx) -> bool:
    if not only(ctx.case, "Pad"):
        return False
    n = ctx.case.nodes()[0]
    pads = ctx.case.value(n.input[1])
    return attr(n, "mode", b"constant") == b"wrap" and pads is not None and bool((pads < 0).any())


def _mean_empty(ctx: Ctx) -> bool:
    if not only(ctx.case, "ReduceMean"):
        return False
    return 0 in _first_input(ctx).shape


def _clip_inf_unbounded(ctx: Ctx) -> bool:
    if not only(ctx.case, "Clip"):
        return False
    n = ctx.case.nodes()[0]
    ins = list(n.input) + ["", ""]
    x = _first_input(ctx)
    if x.dtype.kind != "f" or (ins[1] and ins[2]):
        return False
    m = ctx.diff_mask(0)
    return m is not None and bool(m.any()) and not (m & ~np.isinf(x)).any()


def _int_prod_overflow(ctx: Ctx) -> bool:
    if not only(ctx.case, "ReduceProd"):
        return False
    x = _first_input(ctx)
    if x.dtype.kind not in "iu":
        return False
    info = np.iinfo(x.dtype)
    # a product of more than log2(range) terms of |x| >= 2 could overflow
    big = np.abs(x.astype(np.float64))
    return float(np.prod(np.maximum(big, 1.0))) > info.max


DIVERGENCES: list[Divergence] = [
    Divergence(
        "same_pad_dilated", "Conv, ConvTranspose, MaxPool, AveragePool, LpPool",
        "auto_pad is SAME_UPPER or SAME_LOWER and a dilation is greater than 1.",
        "The spec pads so that the output is ceil(input / stride) with the dilated kernel's "
        "extent (dilation*(kernel-1)+1); ONNX Runtime computes the SAME padding from the "
        "undilated kernel. kiln follows the spec, as the reference evaluator does (ORT is off).",
        _same_dilated),
    Divergence(
        "convtranspose_output_padding", "ConvTranspose",
        "output_padding is non-zero.",
        "ORT is off the spec; kiln follows the spec and the reference evaluator.",
        _convtranspose_output_padding),
    Divergence(
        "cast_float_to_int_out_of_range", "Cast",
        "A float input element is NaN, infinite or outside the target integer type's range "
        "after truncation, and the outputs differ only at such elements.",
        "The spec leaves out-of-range float-to-integer casts undefined; kiln saturates "
        "(NaN to 0), as Rust's `as` does; ORT gives whatever the C++ conversion gives.",
        _cast_out_of_range),
    Divergence(
        "nan_in_select", "Max, Min, ArgMax, ArgMin, TopK",
        "An input holds NaN.",
        "The spec does not say how NaN orders; kiln propagates NaN as numpy's maximum/"
        "argmax do (NaN wins); ORT's answer depends on the comparison order.",
        _nan_in_select),
    Divergence(
        "pad_wrap_negative", "Pad",
        "mode is wrap and a pad is negative.",
        "The spec does not define wrap with a crop; kiln crops first, then wraps what is left "
        "(numpy's np.pad on the cropped array).",
        _pad_wrap_negative),
    Divergence(
        "reduce_mean_empty", "ReduceMean",
        "The input has a zero-size dimension.",
        "The mean of no values: kiln gives NaN (0/0, numpy's mean of an empty axis).",
        _mean_empty),
    Divergence(
        "clip_inf_unbounded", "Clip",
        "min or max is absent, the input holds ±inf, and the outputs differ only at those elements.",
        "An absent bound means no bound: kiln passes ±inf through; ORT clamps to the "
        "type's largest finite value.",
        _clip_inf_unbounded),
    Divergence(
        "reduceprod_int_overflow", "ReduceProd",
        "Integer input whose product can exceed the type's range.",
        "Integer overflow is undefined in the spec; kiln wraps (two's complement, as numpy does).",
        _int_prod_overflow),
]


def explain(ctx: Ctx, outcome: str) -> str | None:
    """The id of the first divergence of kind `outcome` that matches `ctx`."""
    for d in DIVERGENCES:
        if d.kind == outcome:
            try:
                if d.matches(ctx):
                    return d.id
            except Exception:
                continue
    return None


def markdown() -> str:
    """DIVERGENCES.md: the list as a document."""
    out = ["# kiln and ONNX Runtime: expected divergences", "",
           "Generated by `python -m kilnfuzz --divergences-md` from "
           "`scripts/onnx-fuzz/kilnfuzz/divergences.py`; do not edit by hand.", "",
           "The model-level fuzzer (`scripts/onnx-fuzz.sh`) compares kiln with ONNX Runtime "
           "and arbitrates disagreements with `onnx.reference`. Where kiln differs on purpose, "
           "the difference is listed here with a predicate that recognises exactly that case; "
           "every other difference fails the run. kiln follows the ONNX spec where it speaks "
           "and numpy where it does not.", ""]
    for d in DIVERGENCES:
        out += [f"## `{d.id}` ({d.op})", "",
                f"- **When**: {d.condition}",
                f"- **kiln's choice and why**: {d.why}"]
        if d.kind == "refused":
            out.append("- **Kind**: kiln refuses the model (ORT runs it).")
        if d.evidence:
            out.append(f"- **Checked**: {d.evidence}")
        out.append("")
    return "\n".join(out)

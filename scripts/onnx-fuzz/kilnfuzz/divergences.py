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

from . import truth
from .compare import compare, compare_outputs, tolerance_for_dtype
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
        with np.errstate(invalid="ignore", over="ignore"):
            # infinities only equal themselves (|x - inf| <= 1e-4 * inf holds)
            same = (g64 == w64) | (np.isnan(g64) & np.isnan(w64)) | \
                   (np.isfinite(g64) & np.isfinite(w64) & (np.abs(g64 - w64) <= 1e-5 + 1e-4 * np.abs(w64)))
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
def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-4) -> bool:
    """`got` matches the float64 truth `want` (NaN where NaN, same infinities)."""
    if got.shape != want.shape:
        return False
    why = compare(got.astype(np.float64), want.astype(np.float64), tol, tol * max(
        1.0, float(np.abs(want[np.isfinite(want)]).max()) if np.isfinite(want).any() else 1.0))
    return why is None


def _error(got: np.ndarray, want: np.ndarray) -> float:
    """How far `got` is from the float64 answer `want`: inf for another shape
    or other NaN/infinity positions, else the largest |got - want| / (|want| + 1e-6)."""
    if got.shape != want.shape:
        return float("inf")
    g = got.astype(np.float64)
    if (np.isnan(g) != np.isnan(want)).any() or (np.isinf(want) & (g != want)).any() \
            or (np.isinf(g) & ~np.isinf(want)).any():
        return float("inf")
    fin = np.isfinite(want)
    if not fin.any():
        return 0.0
    return float((np.abs(g[fin] - want[fin]) / (np.abs(want[fin]) + 1e-6)).max())


def _kiln_right_ort_wrong(ctx: Ctx, expected: np.ndarray, i: int = 0) -> bool:
    """kiln's output i matches the independent float64 answer `expected`
    (rounded to the output's type) within the loose contraction tolerance,
    and ORT's is at least ten times farther from it."""
    if ctx.kiln is None:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        want = expected.astype(ctx.ort[i].dtype).astype(np.float64)
    if not _close(ctx.kiln[i], want):
        return False
    ek, eo = _error(ctx.kiln[i], want), _error(ctx.ort[i], want)
    return eo > 10 * ek and eo > 1e-6


def _single(ctx: Ctx, *ops: str):
    """The graph's only node if it is one of `ops`, else None."""
    n = ctx.case.nodes()
    return n[0] if len(n) == 1 and n[0].op_type in ops else None


def _pool_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "MaxPool", "AveragePool", "LpPool")
    if n is None:
        return False
    x = _first_input(ctx)
    nd = x.ndim - 2
    k = attr(n, "kernel_shape")
    s = attr(n, "strides") or [1] * nd
    d = attr(n, "dilations") or [1] * nd
    ap = attr(n, "auto_pad", b"NOTSET")
    same = ap in (b"SAME_UPPER", b"SAME_LOWER")
    if same:
        pb, pe = truth.same_pads(x.shape[2:], k, s, d, ap == b"SAME_UPPER")
    elif ap == b"VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        p = attr(n, "pads") or [0] * (2 * nd)
        pb, pe = list(p[:nd]), list(p[nd:])
    kind = {"MaxPool": "max", "AveragePool": "avg", "LpPool": "lp"}[n.op_type]
    want = truth.pool(x, kind, k, s, d, pb, pe, bool(attr(n, "ceil_mode", 0)),
                      bool(attr(n, "count_include_pad", 0)), attr(n, "p", 2), same)
    if kind == "lp" and x.dtype.kind == "f":
        # the sum of |x|^p overflows the input's type: inf, as the
        # definition evaluated in that type gives (kiln and ORT alike)
        with np.errstate(over="ignore", invalid="ignore"):
            want = np.where(np.abs(want) ** attr(n, "p", 2) > float(np.finfo(x.dtype).max),
                            np.inf, want)
    if len(ctx.kiln) > 1 and attr(n, "storage_order", 0) == 0 and ctx.agree(ctx.kiln[:1], ctx.ort[:1]) \
            and ctx.kiln[1].shape == ctx.ort[1].shape:
        # the values agree, the Indices differ: kiln's point at its values
        # (ties: -inf windows, equal maxima) and ORT's do not
        flat = x.reshape(-1)
        ki, oi = ctx.kiln[1], ctx.ort[1]
        if ((ki < 0) | (ki >= flat.size)).any():
            return False
        k_ok = np.array_equal(flat[ki], ctx.kiln[0], equal_nan=True)
        o_ok = not ((oi < 0) | (oi >= flat.size)).any() and np.array_equal(flat[oi], ctx.ort[0], equal_nan=True)
        return k_ok and not o_ok
    if not _kiln_right_ort_wrong(ctx, want):
        return False
    if len(ctx.kiln) > 1:
        # MaxPool's Indices: they must pick kiln's values (row-major flat
        # indices; storage_order=1 is column-major per image, not checked)
        idx = ctx.kiln[1]
        if idx.shape != want.shape or idx.dtype != np.int64:
            return False
        if attr(n, "storage_order", 0) == 0:
            flat = x.reshape(-1)
            if ((idx < 0) | (idx >= flat.size)).any() or \
                    not np.array_equal(flat[idx], ctx.kiln[0], equal_nan=True):
                return False
    return True


def _convtranspose_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "ConvTranspose")
    if n is None:
        return False
    x = _first_input(ctx)
    w = ctx.case.value(n.input[1])
    b = ctx.case.value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    nd = x.ndim - 2
    s = attr(n, "strides") or [1] * nd
    d = attr(n, "dilations") or [1] * nd
    op = attr(n, "output_padding") or [0] * nd
    g = attr(n, "group", 1)
    ap = attr(n, "auto_pad", b"NOTSET")
    k = w.shape[2:]
    splits = []
    out_shape = attr(n, "output_shape")
    if out_shape is not None:
        # the spec: total = stride * (in - 1) + output_padding + dilated kernel
        # - output_shape; SAME_UPPER puts total/2 at the start, otherwise the
        # start gets total - total/2
        out_shape = list(out_shape)[-nd:]
        total = [s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - out_shape[i]
                 for i in range(nd)]
        for half in (lambda t: int(t / 2), lambda t: t // 2):
            if ap == b"SAME_UPPER":
                pb = [half(t) for t in total]
            else:
                pb = [t - half(t) for t in total]
            splits.append((pb, [t - q for t, q in zip(total, pb)]))
    elif ap in (b"SAME_UPPER", b"SAME_LOWER"):
        total = [s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - x.shape[2 + i] * s[i]
                 for i in range(nd)]
        # the spec's total/2 read as truncation and as floor (they differ
        # only for a negative total, which the spec does not discuss)
        for half in (lambda t: int(t / 2), lambda t: t // 2):
            if ap == b"SAME_UPPER":
                pb = [half(t) for t in total]
            else:
                pb = [t - half(t) for t in total]
            splits.append((pb, [t - q for t, q in zip(total, pb)]))
    elif ap == b"VALID":
        splits.append(([0] * nd, [0] * nd))
    else:
        p = attr(n, "pads") or [0] * (2 * nd)
        splits.append((list(p[:nd]), list(p[nd:])))
    if any(_kiln_right_ort_wrong(ctx, truth.conv_transpose(x, w, b, s, d, pb, pe, op, g))
           for pb, pe in splits):
        return True
    if not _huge_or_nonfinite(ctx) or ctx.kiln is None:
        return False
    # huge or non-finite values: every element of kiln's output is the
    # definition's in float64 or in float32 (products rounded: inf - inf =
    # NaN), and ORT's output is not
    k, o = ctx.kiln[0], ctx.ort[0]
    tol = ctx.case.tol
    for pb, pe in splits:
        wants = [truth.conv_transpose(x, w, b, s, d, pb, pe, op, g, dt) for dt in (np.float64, np.float32)]
        if any(t.shape != k.shape for t in wants):
            continue
        ok = np.zeros(k.shape, bool)
        o_ok = o.shape == k.shape
        o_match = np.zeros(k.shape, bool)
        for t in wants:
            with np.errstate(over="ignore", invalid="ignore"):
                t = t.astype(k.dtype)
            r, a = tol.for_output(t)
            ok |= _elementwise_agree(k, t, r, a)
            if o_ok:
                o_match |= _elementwise_agree(o, t, r, a)
        if ok.all() and not (o_ok and o_match.all()):
            return True
    return False


def _slice_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "Slice")
    if n is None:
        return False
    vals = [ctx.case.value(i) if i else None for i in list(n.input[1:]) + [""] * 4]
    starts, ends, axes, steps = vals[:4]
    want = truth.slice_(_first_input(ctx), starts, ends, axes, steps)
    k, o = ctx.kiln[0], ctx.ort[0]
    return k.shape == want.shape and np.array_equal(k, want, equal_nan=k.dtype.kind == "f") and (
        o.shape != want.shape or not np.array_equal(o, want, equal_nan=o.dtype.kind == "f"))


def _pad_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "Pad")
    if n is None:
        return False
    mode = attr(n, "mode", b"constant").decode()
    pads = ctx.case.value(n.input[1])
    if pads is None or not (pads < 0).any():
        return False
    axes = ctx.case.value(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    value = ctx.case.value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    try:
        want = truth.pad_then_crop(_first_input(ctx), pads, mode, axes, value)
    except ValueError:
        return False
    k, o = ctx.kiln[0], ctx.ort[0]
    return k.shape == want.shape and np.array_equal(k, want, equal_nan=True) and (
        o.shape != want.shape or not np.array_equal(o, want, equal_nan=True))


def _mvn_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "MeanVarianceNormalization")
    if n is None:
        return False
    x = _first_input(ctx)
    want = truth.mvn(x, attr(n, "axes") or [0, 2, 3])
    if _kiln_right_ort_wrong(ctx, want):
        return True
    # else: elementwise, where kiln and ORT differ (the rest may overflow
    # for both alike, the f32 variance of |x| > 1e19 being inf)
    m = ctx.diff_mask(0)
    if m is None or not m.any():
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        want = want.astype(ctx.kiln[0].dtype)
    tol = ctx.case.tol
    k_ok = _elementwise_agree(ctx.kiln[0], want, tol.rtol, tol.atol)
    o_ok = _elementwise_agree(ctx.ort[0], want, tol.rtol, tol.atol)
    return not (m & ~(k_ok & ~o_ok)).any()


def _norm_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "BatchNormalization", "InstanceNormalization", "LayerNormalization",
                "GroupNormalization")
    if n is None or (n.op_type == "GroupNormalization" and ctx.case.opset() < 21):
        return False
    vals = [ctx.case.value(i) if i else None for i in n.input]
    attrs = {a.name: attr(n, a.name) for a in n.attribute}
    want = truth.normalization(n.op_type, vals[0], vals[1:], attrs)
    return _kiln_right_ort_wrong(ctx, want)


def _global_max_spec(ctx: Ctx) -> bool:
    """A single GlobalMaxPool whose output kiln computes as numpy's max over
    the spatial axes (NaN propagates, -inf stays -inf) and ORT does not."""
    n = _single(ctx, "GlobalMaxPool")
    if n is None:
        return False
    x = _first_input(ctx).astype(np.float64)
    return _kiln_right_ort_wrong(ctx, np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True))


def _prelu_spec(ctx: Ctx) -> bool:
    n = _single(ctx, "PRelu")
    if n is None:
        return False
    x, slope = (ctx.case.value(i) for i in n.input[:2])
    return _kiln_right_ort_wrong(ctx, truth.prelu(x, slope))


#: The limits at -inf and +inf of the activations kiln evaluates as limits there.
LIMITS = {"Softsign": (-1.0, 1.0), "Mish": (-0.0, np.inf), "HardSwish": (0.0, np.inf),
          "ThresholdedRelu": (0.0, np.inf)}


def _activation_limit(ctx: Ctx) -> bool:
    n = _single(ctx, *LIMITS)
    if n is None or ctx.kiln is None:
        return False
    x = _first_input(ctx)
    m = ctx.diff_mask(0)
    if m is None or not m.any() or (m & ~np.isinf(x)).any():
        return False
    lo, hi = LIMITS[n.op_type]
    want = np.where(x > 0, hi, lo)
    return bool(np.all(ctx.kiln[0][m].astype(np.float64) == want[m]))


CONTRACTIONS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}


def _single_conv_truth(ctx: Ctx) -> list[np.ndarray] | None:
    """A single Conv's float64 answer by definition (truth.conv; the
    reference evaluator's Conv pads SAME_LOWER otherwise), else None."""
    n = _single(ctx, "Conv")
    if n is None:
        return None
    x = _first_input(ctx)
    w = ctx.case.value(n.input[1])
    b = ctx.case.value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    nd = x.ndim - 2
    k = list(w.shape[2:])
    s = attr(n, "strides") or [1] * nd
    d = attr(n, "dilations") or [1] * nd
    ap = attr(n, "auto_pad", b"NOTSET")
    if ap in (b"SAME_UPPER", b"SAME_LOWER"):
        pb, pe = truth.same_pads(x.shape[2:], k, s, d, ap == b"SAME_UPPER")
    elif ap == b"VALID":
        pb, pe = [0] * nd, [0] * nd
    else:
        p = attr(n, "pads") or [0] * (2 * nd)
        pb, pe = list(p[:nd]), list(p[nd:])
    return [truth.conv(x, w, b, s, d, pb, pe, attr(n, "group", 1))]


def _kiln_is_float64(ctx: Ctx, both_nonfinite: bool, or_reference: bool = False,
                     ort_wrong: bool = False) -> bool:
    """kiln and ORT differ somewhere, and at every element where they do,
    kiln's value is the model evaluated in float64 (oracle.run_float64),
    rounded to the output type (with `both_nonfinite`, an element where
    both sides are NaN or infinite passes too; with `or_reference`, one
    where kiln is the reference evaluator's value). With `ort_wrong`, ORT's
    value must also be off the float64 one at each of those elements.)"""
    from .oracle import run_float64
    wide = None
    any_diff = False
    for i, (k, o) in enumerate(zip(ctx.kiln, ctx.ort)):
        m = ctx.diff_mask(i)
        if m is None:
            return False
        if not m.any():
            continue
        any_diff = True
        if k.dtype.kind != "f":
            return False
        ok = ~np.isfinite(k) & ~np.isfinite(o) if both_nonfinite else np.zeros(k.shape, bool)
        if or_reference and ctx.ref is not None and i < len(ctx.ref) and ctx.ref[i].shape == k.shape:
            rtol, atol = tolerance_for_dtype(k.dtype, ctx.case.tol).for_output(ctx.ref[i])
            ok |= _elementwise_agree(k, ctx.ref[i], rtol, atol)
        if (m & ~ok).any():
            if wide is None:
                try:
                    wide = _single_conv_truth(ctx) or run_float64(ctx.case.model, ctx.case.inputs)
                except Exception:
                    return False
            with np.errstate(over="ignore", invalid="ignore"):
                want = np.asarray(wide[i]).astype(k.dtype)
            if want.shape != k.shape:
                return False
            rtol, atol = tolerance_for_dtype(k.dtype, ctx.case.tol).for_output(want)
            ok |= _elementwise_agree(k, want, rtol, atol)
            if ort_wrong:
                # where the comparison fails, ORT must be off the float64 value
                r2, a2 = tolerance_for_dtype(o.dtype, ctx.case.tol).for_output(o)
                failing = ~_elementwise_agree(k, o, r2, a2)
                # (or, both being within the tolerance of it, kiln is the
                # closer: they can still be farther apart than the tolerance)
                with np.errstate(invalid="ignore"):
                    closer = np.abs(k.astype(np.float64) - want) < np.abs(o.astype(np.float64) - want)
                ok &= ~failing | ~_elementwise_agree(o, want, rtol, atol) | closer
            if (m & ~ok).any():
                return False
    return any_diff


def _contraction_overflow(ctx: Ctx) -> bool:
    """A model with a contraction over huge or non-finite values, kiln
    being the float64 answer (or both sides non-finite) where it differs."""
    if not (ctx.case.ops() & CONTRACTIONS) or ctx.kiln is None or not _huge_or_nonfinite(ctx):
        return False
    return _kiln_is_float64(ctx, both_nonfinite=True)


def _nan_in_select(ctx: Ctx) -> bool:
    """A max/min-like selection over NaN: kiln's differing values are NaN
    (propagated), or the op returns positions (indices, one-hot)."""
    if not ctx.case.has_nan() or ctx.kiln is None:
        return False
    nodes = ctx.case.nodes()
    if len(nodes) != 1:
        return False
    n = nodes[0]
    positional = {"ArgMax", "ArgMin", "TopK", "Hardmax"}
    valued = {"Max", "Min", "GlobalMaxPool", "MaxPool", "ReduceMax", "ReduceMin"}
    if n.op_type in ("ScatterElements", "ScatterND"):
        if attr(n, "reduction", b"none") not in (b"max", b"min"):
            return False
        valued = {n.op_type}
    if n.op_type in positional:
        return True
    if n.op_type not in valued:
        return False
    for i, k in enumerate(ctx.kiln):
        m = ctx.diff_mask(i)
        if m is None:
            return False
        if k.dtype.kind == "f" and (m & ~np.isnan(k)).any():
            # MaxPool's indices output may differ wherever its values differ
            if not (n.op_type == "MaxPool" and i == 1):
                return False
    return True


def _rnn_hardsigmoid_default(ctx: Ctx) -> bool:
    """ORT, run again with HardSigmoid's spec defaults (alpha 0.2, beta 0.5)
    written out as activation_alpha/beta, agrees with kiln."""
    n = _single(ctx, "RNN", "GRU", "LSTM")
    if n is None or ctx.kiln is None:
        return False
    acts = [a.decode() for a in attr(n, "activations", []) or []]
    if "HardSigmoid" not in acts or attr(n, "activation_alpha") is not None \
            or attr(n, "activation_beta") is not None:
        return False
    import onnx
    from onnx import helper

    from .oracle import run_ort
    # the spec says alphas are "consumed in the order of activation
    # functions": one entry per activation, or one per parametric one
    for alphas, betas in (([0.2 if a == "HardSigmoid" else 0.0 for a in acts],
                           [0.5 if a == "HardSigmoid" else 0.0 for a in acts]),
                          ([0.2 for a in acts if a == "HardSigmoid"], [0.5 for a in acts if a == "HardSigmoid"])):
        m = onnx.ModelProto()
        m.CopyFrom(ctx.case.model)
        node = m.graph.node[0]
        node.attribute.extend([helper.make_attribute("activation_alpha", alphas),
                               helper.make_attribute("activation_beta", betas)])
        try:
            again = run_ort(m, ctx.case.inputs)
        except Exception:
            continue
        if ctx.agree(ctx.kiln, again):
            return True
    return False


def _elementwise_agree(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Per element: `got` equals the float64 `want` under the compare rule
    (NaN where NaN, the same infinity, else within atol + rtol*|want|)."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.isnan(g) & np.isnan(w)) | (g == w) | (
            np.isfinite(g) & np.isfinite(w) & (np.abs(g - w) <= atol + rtol * np.abs(w)))


def _huge_or_nonfinite(ctx: Ctx, limit: float = 1e30) -> bool:
    """Some float input or initializer is non-finite or larger than `limit`."""
    for v in ctx.case.float_values():
        v = v.astype(np.float64)
        if not np.isfinite(v).all() or (np.abs(v) > limit).any():
            return True
    return False


def _rnn_ieee(ctx: Ctx) -> bool:
    """RNN/GRU/LSTM over non-finite or huge values: at every element where
    kiln and ORT differ, kiln's value is what the spec's cell equations give
    evaluated with IEEE semantics (truth.recurrent) in float64, or in
    float32 with each product rounded before the sum."""
    n = _single(ctx, "RNN", "GRU", "LSTM")
    if n is None or ctx.kiln is None:
        return False
    ins = list(n.input) + [""] * 8
    if ins[4]:
        return False  # sequence_lens: not transcribed
    vals = [ctx.case.value(i) if i else None for i in ins[:8]]
    attrs = {a.name: attr(n, a.name) for a in n.attribute}
    truths = [truth.recurrent(n.op_type, vals[0], vals[1], vals[2], vals[3], vals[5], vals[6],
                              vals[7], attrs, dt) for dt in (np.float64, np.float32)]
    # values beyond f32's reach: in the inputs, or made by the recurrence
    # (unbounded activations such as Relu grow the state step by step)
    grown = any((~np.isfinite(t) | (np.abs(t) > 1e30)).any() for t in truths[0])
    if not (_huge_or_nonfinite(ctx) or grown):
        return False
    rtol, atol = ctx.case.tol.rtol, ctx.case.tol.atol
    any_diff = False
    for i, k in enumerate(ctx.kiln):
        m = ctx.diff_mask(i)
        if m is None or any(t[i].shape != k.shape for t in truths):
            return False
        ok = np.zeros(k.shape, bool)
        for t in truths:
            ok |= _elementwise_agree(k, t[i], rtol, atol)
        if (m & ~ok).any():
            return False
        any_diff |= bool(m.any())
    return any_diff


def _resize_ort_off(ctx: Ctx) -> bool:
    n = _single(ctx, "Resize")
    if n is None or ctx.case.has_nonfinite():
        return False
    return ctx.kiln_is_reference()


def _resize_truths(ctx: Ctx):
    """The spec's Resize of a single Resize node (truth.resize) under the
    three tie readings, or None where the node is not transcribed."""
    n = _single(ctx, "Resize")
    if n is None or attr(n, "antialias", 0) or attr(n, "axes") is not None:
        return None
    x = _first_input(ctx)
    ins = list(n.input) + [""] * 4
    if ctx.case.opset() < 11:
        roi, scales, sizes = None, ctx.case.value(ins[1]), None
    else:
        roi = ctx.case.value(ins[1]) if ins[1] else None
        scales = ctx.case.value(ins[2]) if ins[2] else None
        sizes = ctx.case.value(ins[3]) if ins[3] else None
    if scales is not None and scales.size:
        sc = [float(v) for v in scales]
        out = [int(np.floor(d * v)) for d, v in zip(x.shape, sc)]
    elif sizes is not None:
        policy = attr(n, "keep_aspect_ratio_policy", b"stretch")
        ratios = [sz / d for sz, d in zip(sizes, x.shape)]
        if policy == b"stretch":
            sc, out = ratios, [int(v) for v in sizes]
        else:
            r = min(ratios) if policy == b"not_larger" else max(ratios)
            sc = [r] * x.ndim
            out = [int(np.floor(r * d + 0.5)) for d in x.shape]
    else:
        return None
    mode = attr(n, "mode", b"nearest").decode()
    ctm = attr(n, "coordinate_transformation_mode", b"half_pixel").decode()
    nm = attr(n, "nearest_mode", b"round_prefer_floor").decode()
    roi_v = None if roi is None or not roi.size else [float(v) for v in roi]
    if ctm == "tf_crop_and_resize" and roi_v is None:
        return None
    # align_corners' length_resized: the output length, or in * scale as the
    # reference evaluator reads it
    ctms = [ctm, "align_corners_scaled"] if ctm == "align_corners" else [ctm]
    with np.errstate(invalid="ignore", over="ignore"):
        # ONNX Runtime's joint axes (2-D and 4-D: the last two; 3-D and 5-D
        # linear: the last three), whose scale-1 members read their taps too
        joint = tuple(range(x.ndim - 2, x.ndim)) if x.ndim in (2, 4) else \
            tuple(range(x.ndim - 3, x.ndim)) if x.ndim in (3, 5) and mode == "linear" else ()
        readings = [(False, ()), (True, ())] + ([(True, joint)] if joint else [])
        return [truth.resize(x, mode, c, out, sc, roi_v, nm, attr(n, "cubic_coeff_a", -0.75),
                             bool(attr(n, "exclude_outside", 0)), attr(n, "extrapolation_value", 0.0),
                             tie, read_zero, units).astype(x.dtype)
                for c in ctms for tie in ("spec", "low", "high") for read_zero, units in readings]


def _resize_spec(ctx: Ctx) -> bool:
    if ctx.kiln is None:
        return False
    try:
        wants = _resize_truths(ctx)
    except Exception:
        return False
    if not wants:
        return False
    k, o = ctx.kiln[0], ctx.ort[0]
    tol = ctx.case.tol

    def close(got, want):
        if got.shape != want.shape:
            return False
        r, a = tol.for_output(want)
        return bool(_elementwise_agree(got, want, r, a).all())
    if not _huge_or_nonfinite(ctx):
        return any(close(k, w) for w in wants) and not any(close(o, w) for w in wants)
    # non-finite input: at every element where kiln and ORT differ, kiln's
    # value is the spec's (NaN/inf per IEEE, zero-weight taps read or not)
    m = ctx.diff_mask(0)
    if m is None or not m.any() or any(w.shape != k.shape for w in wants):
        return False
    ok = np.zeros(k.shape, bool)
    for w in wants:
        r, a = tol.for_output(w)
        ok |= _elementwise_agree(k, w, r, a)
        # a weighted sum of taps near f32's max: a partial sum may overflow
        ok |= ~np.isfinite(k) & (np.abs(w.astype(np.float64)) > 1e38)
    return not (m & ~ok).any()


def _norm_overflow(ctx: Ctx) -> bool:
    """Huge normalization input: at each element where kiln and ORT differ,
    either ORT is NaN and kiln is the float64 answer, the reference
    evaluator's, or (a single node) the float32 two-pass definition's; or
    kiln is the float64 answer and ORT is off it."""
    norms = {"LayerNormalization", "InstanceNormalization", "GroupNormalization",
             "MeanVarianceNormalization"}
    if not (ctx.case.ops() & norms) or ctx.kiln is None:
        return False
    x = _first_input(ctx).astype(np.float64)
    if not (np.abs(x[np.isfinite(x)]) > 1e18).any():
        return False
    from .oracle import run_float64
    try:
        wide = run_float64(ctx.case.model, ctx.case.inputs)
    except Exception:
        return False
    f32 = None
    n = _single(ctx, *(norms - {"MeanVarianceNormalization"}))
    if n is not None and not (n.op_type == "GroupNormalization" and ctx.case.opset() < 21):
        vals = [ctx.case.value(i) if i else None for i in n.input]
        attrs = {a.name: attr(n, a.name) for a in n.attribute}
        with np.errstate(all="ignore"):
            f32 = truth.normalization(n.op_type, vals[0], vals[1:], attrs, np.float32)
    any_diff = False
    for i, (k, o) in enumerate(zip(ctx.kiln, ctx.ort)):
        m = ctx.diff_mask(i)
        if m is None or k.dtype.kind != "f":
            return False
        if not m.any():
            continue
        any_diff = True
        with np.errstate(over="ignore", invalid="ignore"):
            want = np.asarray(wide[i]).astype(k.dtype)
        if want.shape != k.shape:
            return False
        rtol, atol = tolerance_for_dtype(k.dtype, ctx.case.tol).for_output(want)
        k64 = _elementwise_agree(k, want, rtol, atol)
        alt = k64.copy()
        for other in ([ctx.ref[i]] if ctx.ref is not None and i < len(ctx.ref) else []) + \
                ([f32] if f32 is not None and i == 0 else []):
            if other.shape == k.shape:
                alt |= _elementwise_agree(k, other, rtol, atol)
        r2, a2 = tolerance_for_dtype(o.dtype, ctx.case.tol).for_output(o)
        failing = ~_elementwise_agree(k, o, r2, a2)
        right = k64 & (~failing | ~_elementwise_agree(o, want, rtol, atol))
        if (m & ~((np.isnan(o) & alt) | right)).any():
            return False
    return any_diff


NORMS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization",
         "BatchNormalization"}


def _norm_float64(ctx: Ctx) -> bool:
    """A model with a normalization: at every element where kiln and ORT
    differ, kiln's value is the float64 evaluation of the model, and where
    they differ beyond the comparison's tolerance ORT's is not."""
    if not (ctx.case.ops() & NORMS) or ctx.kiln is None:
        return False
    return _kiln_is_float64(ctx, both_nonfinite=False, ort_wrong=True)


def _softplus_large(ctx: Ctx) -> bool:
    n = _single(ctx, "Softplus")
    if n is None or ctx.kiln is None:
        return False
    x = _first_input(ctx)
    m = ctx.diff_mask(0)
    if m is None or not m.any():
        return False
    k, o = ctx.kiln[0], ctx.ort[0]
    with np.errstate(over="ignore"):
        want = np.logaddexp(0.0, x.astype(np.float64)).astype(x.dtype)
    good = np.isfinite(x) & np.isposinf(o) & _elementwise_agree(k, want, ctx.case.tol.rtol, ctx.case.tol.atol)
    return not (m & ~good).any()


def _softmax_nan_row(ctx: Ctx) -> bool:
    n = _single(ctx, "Softmax", "LogSoftmax")
    if n is None or ctx.kiln is None or not ctx.case.has_nonfinite() or ctx.ref is None:
        return False
    m = ctx.diff_mask(0)
    if m is None or not m.any() or ctx.ref[0].shape != m.shape:
        return False
    return not (m & ~(np.isnan(ctx.kiln[0]) & np.isnan(ctx.ref[0]))).any()


REDUCTIONS = ("ReduceProd", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2",
              "ReduceL1", "ReduceLogSum", "ReduceLogSumExp")


def _reduce_overflow(ctx: Ctx) -> bool:
    n = _single(ctx, *REDUCTIONS)
    if n is None or ctx.kiln is None or _first_input(ctx).dtype.kind != "f" \
            or not _huge_or_nonfinite(ctx):
        return False
    return _kiln_is_float64(ctx, both_nonfinite=False)


#: Reductions that sum signed values (their result depends on the order of the sum).
SUMS = ("ReduceSum", "ReduceMean", "GlobalAveragePool")


def _sum_order(ctx: Ctx) -> bool:
    """A sum over values as large as 1e30 of both signs: kiln and ORT differ
    only by less than the rounding bound of a float sum in any order,
    2 n eps sum|x| (n terms), or where that sum of |x| overflows the type."""
    n = _single(ctx, *SUMS)
    if n is None or ctx.kiln is None:
        return False
    x = _first_input(ctx)
    if x.dtype.kind != "f" or not x.size or not (np.abs(x[np.isfinite(x)]) > 1e30).any():
        return False
    if not np.isfinite(x).all():
        return False
    from .oracle import run_reference, to_float64
    m64, ins = to_float64(ctx.case.model, [np.abs(x)] + list(ctx.case.inputs[1:]))
    try:
        s = run_reference(m64, ins)[0].astype(np.float64)  # sum (or mean) of |x| per output
    except Exception:
        return False
    k, o = ctx.kiln[0], ctx.ort[0]
    d = ctx.diff_mask(0)
    if d is None or s.shape != k.shape or not d.any():
        return False
    terms = x.size // max(k.size, 1)
    if n.op_type != "ReduceSum":
        s = s * terms  # the mean's sum of |x|
    eps = float(np.finfo(x.dtype).eps)
    big = s > float(np.finfo(x.dtype).max)
    with np.errstate(invalid="ignore", over="ignore"):
        gap = np.abs(k.astype(np.float64) - o.astype(np.float64))
        scale = 1.0 if n.op_type == "ReduceSum" else 1.0 / terms
        near = np.isfinite(gap) & (gap <= 2 * terms * eps * s * scale)
    return not (d & ~(near | big)).any()


def _selection_inputs(ctx: Ctx, sel: set) -> list[np.ndarray]:
    """ORT's values of the first input of every `sel` node of the model
    (the model run again with those exposed as outputs)."""
    import onnx
    from onnx import helper

    from .oracle import run_ort
    m = onnx.ModelProto()
    m.CopyFrom(ctx.case.model)
    names = [nd.input[0] for nd in m.graph.node if nd.op_type in sel]
    elem = m.graph.input[0].type.tensor_type.elem_type
    have = {o.name for o in m.graph.output}
    extra = [nm for nm in dict.fromkeys(names) if nm not in have]
    m.graph.output.extend([helper.make_tensor_value_info(nm, elem, None) for nm in extra])
    outs = run_ort(m, ctx.case.inputs)
    return outs[len(ctx.case.model.graph.output):]


def _contraction_overflow_chain(ctx: Ctx) -> bool:
    """A chain whose contraction overflows f32 on ORT (non-finite where the
    float64 evaluation of that node is finite): every element where kiln
    and ORT differ belongs to a batch entry holding such an overflow."""
    nodes = ctx.case.nodes()
    if len(nodes) < 2 or ctx.kiln is None or not _huge_or_nonfinite(ctx):
        return False
    import onnx
    from onnx import helper

    from .oracle import run_float64, run_ort
    contr = [nd for nd in nodes if nd.op_type in CONTRACTIONS]
    if not contr:
        return False
    # expose each contraction's output and its float operands
    names = [nd.output[0] for nd in contr] + [i for nd in contr for i in nd.input[:2]]
    m = onnx.ModelProto()
    m.CopyFrom(ctx.case.model)
    elem = m.graph.input[0].type.tensor_type.elem_type
    outs = [o.name for o in m.graph.output]
    extra = [nm for nm in dict.fromkeys(names) if nm not in outs]
    m.graph.output.extend([helper.make_tensor_value_info(nm, elem, None) for nm in extra])
    try:
        allg = run_ort(m, ctx.case.inputs)
        allw = run_float64(m, ctx.case.inputs)
    except Exception:
        return False
    by_name = dict(zip(outs + extra, zip(allg, allw)))
    got, wide = [], []
    for nd in contr:
        operands = [by_name[i][0] for i in nd.input[:2] if i in by_name]
        if any(np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all() for v in operands):
            continue  # a non-finite operand: not an overflow inside the contraction
        got.append(by_name[nd.output[0]][0])
        wide.append(by_name[nd.output[0]][1])
    x0 = ctx.case.inputs[0]
    if not x0.ndim:
        return False
    batch = x0.shape[0]
    hit = np.zeros(batch, bool)
    for g, w in zip(got, wide):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape or not g.ndim or g.shape[0] != batch:
            continue
        # the value is within f32's range, only a partial sum overflowed
        with np.errstate(invalid="ignore"):
            over = ~np.isfinite(g) & np.isfinite(w) & (np.abs(w) <= float(np.finfo(g.dtype).max))
        hit |= over.reshape(batch, -1).any(axis=1)
    if not hit.any():
        return False
    for i, k in enumerate(ctx.kiln):
        d = ctx.diff_mask(i)
        if d is None or not k.ndim or k.shape[0] != batch:
            return False
        if (d & ~hit.reshape((-1,) + (1,) * (k.ndim - 1))).any():
            return False
    return True


def _nan_through_max(ctx: Ctx) -> bool:
    """A chain through a max-like selection over NaN (NaN in the inputs, or
    made inside the model, by ORT too, before the selection): kiln's
    differing outputs are NaN and depend on a NaN (ORT's outputs change, or
    are NaN, when the NaN inputs are replaced by -1e4 and by 1e4; or the
    batch entry holds the NaN)."""
    sel = {"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Max", "Min"}
    if not (ctx.case.ops() & sel) or len(ctx.case.nodes()) < 2 or ctx.kiln is None:
        return False
    if any(np.isnan(v).any() for v in ctx.case.float_values()[len(ctx.case.inputs):]):
        return False  # NaN in weights: not substituted
    from .oracle import run_ort
    try:
        mids = _selection_inputs(ctx, sel)
    except Exception:
        return False
    input_nan = ctx.case.has_nan()
    if not input_nan and not any(x.dtype.kind == "f" and np.isnan(x).any() for x in mids):
        return False

    def subst(v):
        return [np.where(np.isnan(x), v, x).astype(x.dtype) if x.dtype.kind == "f" else x
                for x in ctx.case.inputs]
    lo = hi = None
    if input_nan:
        try:
            lo, hi = run_ort(ctx.case.model, subst(-1e4)), run_ort(ctx.case.model, subst(1e4))
        except Exception:
            return False
    batch = ctx.case.inputs[0].shape[0] if ctx.case.inputs and ctx.case.inputs[0].ndim else None
    nan_batches = None
    if batch:
        nan_batches = np.zeros(batch, bool)
        for x in [ctx.case.inputs[0]] + mids:
            if x.dtype.kind == "f" and x.ndim and x.shape[0] == batch:
                nan_batches |= np.isnan(x).reshape(batch, -1).any(axis=1)
    for i, k in enumerate(ctx.kiln):
        m = ctx.diff_mask(i)
        if m is None or k.dtype.kind != "f":
            return False
        dep = np.zeros(k.shape, bool)
        if lo is not None:
            with np.errstate(invalid="ignore"):
                dep |= (lo[i] != hi[i]) | np.isnan(lo[i]) | np.isnan(hi[i])
        # a change can be absorbed by a huge term (-3e38 * w + d == -3e38 * w):
        # batch entries that hold a NaN count as depending on it too, where
        # the model keeps the batch axis (output dim 0 = input dim 0)
        if nan_batches is not None and k.ndim and k.shape[0] == batch:
            dep |= nan_batches.reshape((-1,) + (1,) * (k.ndim - 1))
        if (m & ~(np.isnan(k) & dep)).any():
            return False
    return True


#: Elementwise ops of one float input whose value at NaN is NaN.
NAN_PRESERVING = {"Abs", "Neg", "Relu", "Asinh", "Acosh", "Atanh", "Sin", "Cos", "Tan", "Asin",
                  "Acos", "Atan", "Sinh", "Cosh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal",
                  "Sigmoid", "Tanh", "Softplus", "Softsign", "Round", "Floor", "Ceil", "Sign",
                  "Elu", "Celu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "Mish"}


def _unary_nan(ctx: Ctx) -> bool:
    n = _single(ctx, *NAN_PRESERVING)
    if n is None or ctx.kiln is None:
        return False
    x = _first_input(ctx)
    m = ctx.diff_mask(0)
    if x.dtype.kind != "f" or m is None or m.shape != x.shape or not m.any():
        return False
    return not (m & ~(np.isnan(x) & np.isnan(ctx.kiln[0]))).any()


def _stash_float32(ctx: Ctx) -> bool:
    """LayerNormalization / GroupNormalization (opset 21) of a float64
    input with stash_type 1 (the default): kiln's differing values are the
    normalization computed in float32 (then scaled in float64)."""
    n = _single(ctx, "LayerNormalization", "GroupNormalization")
    if n is None or ctx.kiln is None or attr(n, "stash_type", 1) != 1:
        return False
    if n.op_type == "GroupNormalization" and ctx.case.opset() < 21:
        return False
    x = _first_input(ctx)
    if x.dtype != np.float64:
        return False
    vals = [ctx.case.value(i) if i else None for i in n.input]
    attrs = {a.name: attr(n, a.name) for a in n.attribute}
    unit = [None if v is None else (np.ones_like(v) if j == 0 else np.zeros_like(v))
            for j, v in enumerate(vals[1:])]
    with np.errstate(all="ignore"):
        normed = truth.normalization(n.op_type, x, unit, attrs, np.float32).astype(np.float64)
        if n.op_type == "LayerNormalization":
            want = normed * vals[1]
            if len(vals) > 2 and vals[2] is not None:
                want = want + vals[2]
        else:
            chan = (1, -1) + (1,) * (x.ndim - 2)
            want = normed * vals[1].reshape(chan) + vals[2].reshape(chan)
    m = ctx.diff_mask(0)
    if m is None or want.shape != m.shape or not m.any():
        return False
    tol = ctx.case.tol
    return not (m & ~_elementwise_agree(ctx.kiln[0], want, tol.rtol, tol.atol)).any()


def _logsumexp_inf(ctx: Ctx) -> bool:
    n = _single(ctx, "ReduceLogSumExp")
    if n is None or ctx.kiln is None or ctx.ref is None or not ctx.case.has_inf():
        return False
    k, o, r = ctx.kiln[0], ctx.ort[0], ctx.ref[0]
    m = ctx.diff_mask(0)
    if m is None or r.shape != k.shape or not m.any():
        return False
    return not (m & ~(np.isnan(o) & np.isposinf(k) & np.isposinf(r))).any()


def _scatter_mul_order(ctx: Ctx) -> bool:
    """ScatterND with reduction mul: where kiln and ORT differ, ORT's value
    is the spec's sequential product ((data * u0) * u1 ...) and kiln's is
    data * (u0 * u1 ...), both in the data's float type."""
    n = _single(ctx, "ScatterND", "ScatterElements")
    if n is None or ctx.kiln is None or attr(n, "reduction", b"none") != b"mul":
        return False
    data, idx, upd = (ctx.case.value(i) for i in n.input[:3])
    if data is None or idx is None or upd is None or data.dtype.kind != "f":
        return False
    if n.op_type == "ScatterElements":
        ax = attr(n, "axis", 0) % data.ndim

        def targets():
            for j in np.ndindex(idx.shape):
                t = list(j)
                t[ax] = int(idx[j]) % data.shape[ax]
                yield j, tuple(t)
    else:
        def targets():
            for j in np.ndindex(idx.shape[:-1]):
                yield j, tuple(int(v) % d for v, d in zip(idx[j], data.shape))
    seq = data.copy()
    prods: dict = {}
    with np.errstate(all="ignore"):
        for j, t in targets():
            seq[t] = seq[t] * upd[j]
            prods[t] = prods[t] * upd[j] if t in prods else upd[j].copy()
        first = data.copy()
        for t, pr in prods.items():
            first[t] = first[t] * pr
    m = ctx.diff_mask(0)
    if m is None or not m.any():
        return False
    tol = ctx.case.tol
    ok = _elementwise_agree(ctx.kiln[0], first, tol.rtol, tol.atol) & \
        _elementwise_agree(ctx.ort[0], seq, tol.rtol, tol.atol)
    return not (m & ~ok).any()


#: The reductions whose ONNX function body transforms the input before summing.
TRANSFORMING_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                           "ReduceLogSumExp")


def _reduce_noop_transform(ctx: Ctx) -> bool:
    n = _single(ctx, *TRANSFORMING_REDUCTIONS)
    if n is None or ctx.kiln is None or not attr(n, "noop_with_empty_axes", 0):
        return False
    if attr(n, "axes") is not None:
        return False  # opset < 18 form: axes is an attribute
    if len(n.input) > 1 and n.input[1]:
        axes = ctx.case.value(n.input[1])
        if axes is None or axes.size:
            return False
    x = _first_input(ctx)
    k = ctx.kiln[0]
    if k.shape != x.shape or k.dtype != x.dtype or not np.array_equal(ctx.ort[0], x, equal_nan=True):
        return False
    # the function body's elementwise part, in the input's type
    with np.errstate(all="ignore"):
        body = {"ReduceL1": np.abs, "ReduceL2": lambda v: np.sqrt(v * v) if v.dtype.kind == "f"
                else np.abs(v), "ReduceSumSquare": lambda v: v * v, "ReduceLogSum": np.log,
                "ReduceLogSumExp": lambda v: np.log(np.exp(v))}[n.op_type](x)
    if x.dtype.kind != "f":
        return np.array_equal(k, body.astype(x.dtype))
    tol = ctx.case.tol
    return bool(_elementwise_agree(k, body, tol.rtol, tol.atol).all())


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


def _mean_empty(ctx: Ctx) -> bool:
    n = _single(ctx, "ReduceMean", "ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceProd",
                "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceSumSquare")
    return n is not None and 0 in _first_input(ctx).shape


def _clip_inf_unbounded(ctx: Ctx) -> bool:
    n = _single(ctx, "Clip")
    if n is None:
        return False
    ins = list(n.input) + ["", ""]
    x = _first_input(ctx)
    if x.dtype.kind != "f" or (ins[1] and ins[2]):
        return False
    m = ctx.diff_mask(0)
    return m is not None and bool(m.any()) and not (m & ~np.isinf(x)).any()


def _int_prod_overflow(ctx: Ctx) -> bool:
    if _single(ctx, "ReduceProd") is None:
        return False
    x = _first_input(ctx)
    if x.dtype.kind not in "iu":
        return False
    big = np.abs(x.astype(np.float64))
    return float(np.prod(np.maximum(big, 1.0))) > np.iinfo(x.dtype).max


DIVERGENCES: list[Divergence] = [
    Divergence(
        "pool_spec", "MaxPool, AveragePool, LpPool",
        "A single pool node whose output kiln computes as the spec's definition "
        "(checked against a direct float64 transcription: SAME pads from the dilated kernel, "
        "ceil_mode windows that start inside the input or its left padding, AveragePool's "
        "count_include_pad counting the taps inside the padded input; LpPool's sum of |x|^p "
        "inf where it overflows the input's type) and ORT does not; or the values agree and "
        "only MaxPool's Indices differ, kiln's pointing at the values they index and ORT's not.",
        "ORT computes SAME padding from the undilated kernel (a wrong output shape), and with "
        "ceil_mode and count_include_pad=1 divides by taps past the padded input. kiln follows "
        "the spec (and PyTorch for the ceil_mode overhang, which the spec does not discuss).",
        _pool_spec),
    Divergence(
        "convtranspose_spec", "ConvTranspose",
        "A single ConvTranspose whose output kiln computes as the spec's definition (checked "
        "against a direct scatter-add in float64) and ORT does not: output_padding, SAME "
        "padding (output in*stride; a negative total padding extends the output), output_shape "
        "(total padding from it, split as the spec says: SAME_UPPER puts total/2 at the start, "
        "otherwise the start gets total - total/2). With huge or non-finite values, each "
        "element of kiln's output may be the definition's in float64 or in float32 (products "
        "rounded, so inf - inf = NaN).",
        "ORT mishandles output_padding with dilations, SAME with a negative total padding "
        "(stride larger than the kernel), and output_shape with SAME_LOWER or a negative total "
        "(it pads at the end only); kiln follows the spec. For a negative total the "
        "spec's total/2 is ambiguous (truncation or floor); both are accepted here.",
        _convtranspose_spec),
    Divergence(
        "slice_spec", "Slice",
        "A single Slice whose output kiln computes exactly as the spec's clamping (start to "
        "[0, dim-1] and end to [-1, dim-1] for negative steps) and ORT does not.",
        "ORT clamps some out-of-range starts and ends numpy-style; kiln follows the spec.",
        _slice_spec),
    Divergence(
        "pad_negative", "Pad",
        "A negative pad, and kiln's output is the input padded by the positive pads (numpy's "
        "np.pad, any mode) then cropped by the negative ones, while ORT's is not.",
        "The spec does not say in which order a pad and a crop apply; kiln pads first, then "
        "crops, so that edge/reflect/wrap read the original borders (for wrap with a crop the "
        "spec is silent). ORT's negative-pad paths give other values (for int64 constant pads "
        "even uninitialized memory).",
        _pad_spec),
    Divergence(
        "mvn_spec", "MeanVarianceNormalization",
        "kiln matches the function body (x - mean) / (sqrt(var) + 1e-9) computed in float64 and "
        "ORT does not (typically a slice with zero variance: ORT NaN, the spec 0), over the "
        "whole output or at every element where the two differ.",
        "ORT evaluates var = E[x^2] - E[x]^2 in f32, which can come out negative for a constant "
        "slice, and sqrt gives NaN; the spec's value is 0. kiln follows the spec.",
        _mvn_spec),
    Divergence(
        "norm_spec", "BatchNormalization, InstanceNormalization, LayerNormalization, "
        "GroupNormalization",
        "A single normalization node whose output kiln computes as the definition (checked "
        "against a two-pass float64 transcription) and ORT does not: huge inputs whose squares "
        "overflow f32, one-element instances (variance exactly 0), non-finite values confined "
        "to some instances.",
        "ORT computes the variance as E[x^2] - E[x]^2 in f32, which overflows for |x| > 1e19 "
        "and is not exactly 0 for a constant instance; kiln's result is the definition's.",
        _norm_spec),
    Divergence(
        "prelu_spec", "PRelu",
        "Non-finite input or slope, and kiln matches x if x >= 0 else slope * x (in float64) "
        "while ORT does not.",
        "ORT evaluates PRelu arithmetically over both branches, so inf or NaN in the unused "
        "branch leaks into the result; kiln selects the branch, as the definition does.",
        _prelu_spec),
    Divergence(
        "resize_reference", "Resize",
        "A single Resize on finite input where kiln matches onnx.reference and ORT does not.",
        "ORT's coordinate transforms differ from the spec's in corner cases (align_corners to a "
        "size of 1, tf_crop_and_resize extrapolation, nearest rounding at the edge); kiln follows "
        "the spec's formulas as the reference evaluator does.",
        _resize_ort_off),
    Divergence(
        "resize_spec", "Resize",
        "A single Resize (no antialias, no axes) whose output kiln computes as "
        "the spec's formulas evaluated in float64 (truth.resize: output size floor(in * "
        "scale), or the sizes with keep_aspect_ratio_policy; the coordinate transforms; "
        "nearest rounding, linear and cubic taps clamped to the edge, exclude_outside "
        "renormalizing; tf_crop_and_resize's extrapolation on every axis) and ORT does not. A "
        "coordinate within 1e-5 of a rounding boundary may round either way; align_corners' "
        "length_resized is read as the output length or as in * scale (the reference "
        "evaluator's reading, kiln's). With NaN/inf or "
        "|x| > 1e30 in the input: at every element where kiln and ORT differ, kiln's value is the spec's "
        "(IEEE arithmetic, zero-weight taps read or skipped; the float64 value rounded to the "
        "output type; kiln non-finite where that value exceeds 1e38, a partial sum of taps "
        "overflowing).",
        "ORT skips the roi of tf_crop_and_resize on axes with scale 1, computes align_corners "
        "and other coordinates with other roundings, and differs in other corner cases; kiln "
        "follows the spec's formulas.",
        _resize_spec),
    Divergence(
        "global_max_spec", "GlobalMaxPool",
        "A single GlobalMaxPool whose output kiln computes as the max of its values (numpy's "
        "max: NaN propagates, a channel of -inf gives -inf) and ORT does not.",
        "ORT starts its max at the lowest finite float and skips NaN, so a channel of -inf "
        "gives -3.4e38 and NaN disappears; the max of the values is -inf (or NaN).",
        _global_max_spec),
    Divergence(
        "activation_limit_at_inf", "Softsign, Mish, HardSwish, ThresholdedRelu",
        "The input holds ±inf, the outputs differ only there, and kiln's values there are the "
        "function's limits (Softsign ±1, Mish -0/inf, HardSwish 0/inf, ThresholdedRelu 0/inf).",
        "Evaluating the defining formula at ±inf gives NaN (inf/inf, inf*0); the function's "
        "value is its limit, which kiln returns. ORT returns NaN. (NaN input stays NaN in kiln.)",
        _activation_limit),
    Divergence(
        "contraction_overflow", "Conv, ConvTranspose, Gemm, MatMul, Einsum (and chains with one)",
        "The model holds a contraction, its inputs or weights hold |x| > 1e30 or non-finite "
        "values, and at every element where kiln and ORT differ, kiln's value is the model "
        "evaluated in float64 (ORT on a float64 copy of the model, or the reference evaluator "
        "where ORT has no double kernel), rounded to the output type, or both sides are "
        "non-finite (say -inf against NaN).",
        "kiln's optimizer folds constant scales into contraction weights ((x @ w) * c -> "
        "x @ (w * c), batch norm into conv), so where ORT's unscaled f32 product overflows "
        "kiln's scaled one may not, and kiln's reference interpreter accumulates in f64: "
        "kiln's answer is then the float64 one. Once a product does overflow, inf - inf = NaN "
        "or an infinity depends on the summation order and fused multiply-adds, which neither "
        "side promises.",
        _contraction_overflow),
    Divergence(
        "norm_overflow", "LayerNormalization, InstanceNormalization, GroupNormalization, MVN",
        "The model holds one of these normalizations, its input a finite |x| > 1e18 (x*x "
        "overflows f32), and at every element where kiln and ORT differ, either ORT's value is "
        "NaN and kiln's is the model evaluated in float64 (ORT on a float64 copy of the model, "
        "else the reference evaluator) rounded to the output type, or the reference "
        "evaluator's value, or (a single node) its two-pass definition evaluated in float32; "
        "or kiln's is the float64 value and ORT's is not (as norm_float64).",
        "ORT computes the variance as E[x^2] - E[x]^2 in f32, which overflows to inf - inf = "
        "NaN. kiln computes the two-pass variance of the function body (LayerNormalization's "
        "stash_type is float32): where (x - mean)^2 still overflows, the variance is inf and "
        "the normalized value 0, exactly as the function body evaluated in f32 by the "
        "reference evaluator gives; otherwise the float64 answer.",
        _norm_overflow),
    Divergence(
        "contraction_overflow_chain", "Conv, ConvTranspose, Gemm, MatMul, Einsum followed by "
        "other nodes",
        "A chain over huge or non-finite inputs where ORT's output of a contraction with finite "
        "operands is non-finite at elements whose float64 value is finite and within f32's "
        "range (only a partial sum overflowed), and every element where kiln's and ORT's final outputs differ belongs "
        "to a batch entry holding such an overflow (the model keeping the batch axis).",
        "Once a contraction's partial sum overflows f32, its value (NaN from inf - inf, or an "
        "infinity of either sign with fused multiply-adds) depends on the summation order, "
        "which neither side promises; the rest of the chain (Tanh, pooling, Gemm) then maps "
        "those values to different finite or NaN results. Neither side is right: the exact "
        "answer needs more than f32's range.",
        _contraction_overflow_chain),
    Divergence(
        "unary_nan", "Erf and the other elementwise functions of one input",
        "A single elementwise op of one float input, and the outputs differ only where the "
        "input is NaN and kiln's output is NaN.",
        "IEEE and numpy: a function of NaN is NaN. ORT's Erf (and some other kernels) clamp "
        "the argument first, which turns NaN into a number (Erf(NaN) = 1).",
        _unary_nan),
    Divergence(
        "norm_float64", "LayerNormalization, InstanceNormalization, GroupNormalization, "
        "BatchNormalization (and chains with one)",
        "The model holds one of these normalizations, and at every element where kiln and ORT "
        "differ, kiln's value is the model evaluated in float64 (rounded to the output type), "
        "and ORT's is not where the two differ beyond the comparison's tolerance.",
        "ORT computes the variance as E[x^2] - E[x]^2 in f32, which cancels catastrophically "
        "when the variance is small against the mean (rows of nearly equal values); kiln "
        "computes it in two passes, and its result is the float64 one.",
        _norm_float64),
    Divergence(
        "softplus_large", "Softplus",
        "Outputs differ only where x is finite, ORT gives +inf, and kiln gives log(1 + e^x) "
        "computed without overflow (about x).",
        "log(1 + e^x) is finite for every finite x; evaluating e^x first overflows for x > 709 "
        "(f64), which ORT and the reference evaluator do. kiln computes max(x, 0) + "
        "log1p(e^-|x|).",
        _softplus_large),
    Divergence(
        "softmax_nonfinite_row", "Softmax, LogSoftmax",
        "The input holds NaN or inf, and at every element where kiln and ORT differ, kiln's "
        "value is NaN and so is the reference evaluator's.",
        "A NaN in a softmax row makes the row's normalizing sum NaN, and +inf makes x - max(x) "
        "= inf - inf = NaN, so the whole row is NaN (IEEE evaluation of the definition, as "
        "numpy, the reference evaluator and kiln give); ORT's float64 kernel takes the row max "
        "with a comparison that skips NaN and gives numbers or -inf for the other entries.",
        _softmax_nan_row),
    Divergence(
        "reduce_overflow", "ReduceProd, ReduceSum, ReduceMean, ReduceSumSquare, ReduceL1, "
        "ReduceL2, ReduceLogSum, ReduceLogSumExp",
        "A single such reduction over values with |x| > 1e30 or non-finite ones, and at every "
        "element where kiln and ORT differ, kiln's value is the float64 reduction rounded to "
        "the output type.",
        "A partial product or sum can overflow f32 in one order and not in another ((-3e38 * "
        "-2.3) * 0.5 is inf, -3e38 * (-2.3 * 0.5) is not); the order is unspecified. kiln's "
        "value is the float64 one; ORT's intermediate overflowed.",
        _reduce_overflow),
    Divergence(
        "sum_order", "ReduceSum, ReduceMean, GlobalAveragePool",
        "A single such sum over finite inputs with |x| > 1e30, and at every element where kiln "
        "and ORT differ, they are within the rounding bound of a float sum in any order, "
        "2 n eps sum|x| (n the number of terms; divided by n for means), or that sum of |x| "
        "exceeds the type's range (a partial sum may overflow).",
        "The order of a float sum is unspecified; with terms of 3e38 of both signs, "
        "cancellation leaves only rounding error, which depends on the order (ORT, numpy and "
        "kiln all differ from the exact sum). Neither side is wrong.",
        _sum_order),
    Divergence(
        "nan_through_max", "MaxPool, GlobalMaxPool, ReduceMax, ReduceMin, Max, Min in a chain",
        "A model of several nodes with a max/min selection, NaN in its inputs or in ORT's own "
        "value of a selection's input (say inf - inf in a Conv before a MaxPool), and at every "
        "element where kiln and ORT differ, kiln's value is NaN and depends on a NaN: ORT's "
        "value there changes (or is NaN) when the NaN inputs are replaced by -1e4 and by 1e4, "
        "or it belongs to a batch entry whose input or selection input holds a NaN (the model "
        "keeping the batch axis; a change can be absorbed by a huge term).",
        "As nan_in_select: kiln's max/min propagate NaN (numpy's maximum); ORT's skip it, so a "
        "NaN that kiln carries through the selection to the end of the chain ORT drops.",
        _nan_through_max),
    Divergence(
        "stash_type_float32", "LayerNormalization, GroupNormalization (opset 21)",
        "A single such node on float64 input with stash_type 1 (the default), and at every "
        "element where kiln and ORT differ, kiln's value is the normalization computed in "
        "float32 (then scaled and shifted in float64).",
        "The spec: stash_type is the type of Mean and InvStdDev and 'specifies stage one's "
        "computation precision' (default float32); the function body casts X to it. kiln "
        "follows that; ORT (and the reference evaluator) compute a float64 input in float64, "
        "so where the float32 variance overflows (|x| near 3e38) kiln's normalized value is 0.",
        _stash_float32),
    Divergence(
        "logsumexp_inf", "ReduceLogSumExp",
        "The input holds inf, and at every element where kiln and ORT differ ORT is NaN while "
        "kiln and the reference evaluator give +inf.",
        "log(sum(exp(x))) with a +inf term is +inf; ORT subtracts the maximum first and gets "
        "inf - inf = NaN.",
        _logsumexp_inf),
    Divergence(
        "scatter_mul_order", "ScatterND, ScatterElements (reduction mul)",
        "A single ScatterND or ScatterElements with reduction mul, and at every element where "
        "kiln and ORT "
        "differ, ORT's value is the data times each update in index order ((d * u0) * u1) and "
        "kiln's is the data times the product of the updates (d * (u0 * u1)), both in the "
        "data's type.",
        "A float product is not associative: with duplicate indices one order overflows "
        "where the other does not. The spec's pseudocode applies the updates one by one; kiln "
        "multiplies the updates first (it scatters by gathering the updates per row). A "
        "documented kiln choice; fixing it means folding the updates in index order.",
        _scatter_mul_order),
    Divergence(
        "reduce_noop_function_body", "ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, "
        "ReduceLogSumExp",
        "A single such reduction with noop_with_empty_axes=1 and no axes (absent or empty), "
        "kiln's output is the function body's elementwise part (|x|, sqrt(x*x), x*x, log x, "
        "log(exp x)) in the input's type, and ORT's output equals the input.",
        "The spec's prose says an empty axes list with noop_with_empty_axes makes the op an "
        "identity; the ops' ONNX function bodies (and onnx.reference) still apply the "
        "elementwise part (|x|, x*x, log, exp) and reduce over nothing, so ReduceL1 gives |x|. "
        "kiln follows the function bodies and the reference evaluator; ORT returns the input.",
        _reduce_noop_transform),
    Divergence(
        "cast_float_to_int_out_of_range", "Cast",
        "A float input element is NaN, infinite or outside the target integer type's range "
        "after truncation, and the outputs differ only at such elements.",
        "The spec leaves out-of-range float-to-integer casts undefined; kiln saturates "
        "(NaN to 0), as Rust's `as` does; ORT gives whatever the C++ conversion gives.",
        _cast_out_of_range),
    Divergence(
        "nan_in_select", "Max, Min, ArgMax, ArgMin, TopK, Hardmax, MaxPool, GlobalMaxPool, "
        "ReduceMax, ReduceMin, Scatter* with reduction max/min",
        "An input holds NaN; the op returns positions, or kiln's differing values are all NaN.",
        "The spec does not say how NaN orders; kiln propagates NaN as numpy's maximum and argmax "
        "do (NaN wins); ORT's answer depends on its comparison order.",
        _nan_in_select),
    Divergence(
        "rnn_hardsigmoid_default", "RNN, GRU, LSTM",
        "HardSigmoid is among the activations and activation_alpha/activation_beta are absent, "
        "and ORT run again with alpha 0.2, beta 0.5 written out agrees with kiln.",
        "The spec says absent activation parameters take the activation op's defaults "
        "(HardSigmoid: alpha 0.2, beta 0.5); ORT uses 0 and 0, so its HardSigmoid is constant "
        "0. kiln follows the spec.",
        _rnn_hardsigmoid_default),
    Divergence(
        "rnn_nonfinite", "RNN, GRU, LSTM",
        "A single RNN/GRU/LSTM (no sequence_lens) whose inputs or weights hold non-finite values "
        "or |x| > 1e30 (or whose float64 states grow past 1e30, say with Relu activations), "
        "and at every element where kiln and ORT differ, kiln's value is the one "
        "the spec's cell equations give under IEEE arithmetic (a direct numpy transcription, "
        "truth.recurrent), evaluated in float64 or in float32 with each product rounded before "
        "the sum.",
        "inf * 0 and inf - inf are NaN (IEEE), and kiln propagates NaN through the gates as "
        "numpy does; ORT's activation kernels clamp their argument with min/max, which turns "
        "NaN into a number. Where a float32 product overflows, whether the sum is NaN or "
        "infinite depends on fused multiply-adds, which neither side promises. An omitted "
        "initial_h/initial_c contributes an exact zero term (the spec's 'assumed to be 0'), in "
        "kiln and in the transcription.",
        _rnn_ieee),
    Divergence(
        "reduce_empty", "Reduce*",
        "The input has a zero-size dimension.",
        "The reduction of no values: kiln gives the operation's identity (numpy's: 0 for sums, "
        "NaN for the mean, -inf/inf for max/min) and keeps the other dimensions; ORT differs.",
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


def explain_dir(path: str) -> str:
    """Re-runs every predicate on a saved repro directory (format C plus
    kiln_output_<i>.npy / reference_output_<i>.npy); one line per entry."""
    import glob
    import json
    import os

    import onnx

    from .compare import Tolerance

    def arrays(stem):
        files = sorted(glob.glob(os.path.join(path, f"{stem}_*.npy")),
                       key=lambda f: int(f.rsplit("_", 1)[1][:-4]))
        return [np.load(f) for f in files]
    meta = json.load(open(os.path.join(path, "case.json")))
    model = onnx.load(os.path.join(path, "model.onnx"))
    case = Case(meta.get("family", "?"), model, arrays("input"), Tolerance(meta["rtol"], meta["atol"]))
    kiln = arrays("kiln_output") or None
    ctx = Ctx(case=case, ort=arrays("output"), kiln=kiln,
              kiln_status="ok" if kiln else meta.get("status", "?"), ref=arrays("reference_output") or None)
    lines = [f"{path}: {meta.get('detail', '')[:160]}"]
    for d in DIVERGENCES:
        try:
            r = d.matches(ctx)
        except Exception as e:
            r = f"error: {type(e).__name__}: {e}"
        if r:
            lines.append(f"  {d.id}: {r}")
    if len(lines) == 1:
        lines.append("  no expected divergence matches")
    return "\n".join(lines)


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

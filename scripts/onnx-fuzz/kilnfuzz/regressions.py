"""The regression cases of issue 17, written in format C by
`python -m kilnfuzz --write-regressions tests/onnx/fuzz-cases`.

Each case encodes the right answer whatever kiln does today: ONNX Runtime's
outputs where ORT follows the spec (checked here against an independent
computation), else the reference evaluator's, else the spec computed by hand
in numpy in float64 and rounded. The `oracle` field of case.json says which.
Writing fails loudly if an oracle stops agreeing with the independent check.
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import oracle
from .cases import write_case
from .compare import compare
from .mutate import IR_VERSION, ONNX_TYPE

HAND = f"spec (hand): numpy {np.__version__}, float64 rounded to the output type"


def model(name: str, nodes, inputs: dict, outputs: dict, inits: dict | None = None,
          opset: int = 21) -> onnx.ModelProto:
    """A model of `nodes`; inputs name->array, outputs name->(numpy dtype, shape or None)."""
    vin = [helper.make_tensor_value_info(n, ONNX_TYPE[np.asarray(x).dtype], list(np.shape(x)))
           for n, x in inputs.items()]
    vout = [helper.make_tensor_value_info(n, ONNX_TYPE[np.dtype(dt)], shape)
            for n, (dt, shape) in outputs.items()]
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    m = helper.make_model(helper.make_graph(nodes, name, vin, vout, init),
                          opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(m)
    return m


def agree(a: list[np.ndarray], b: list[np.ndarray], rtol: float, atol: float) -> str | None:
    for i, (x, y) in enumerate(zip(a, b)):
        why = compare(np.asarray(x), np.asarray(y), rtol, atol)
        if why:
            return f"output {i}: {why}"
    return None


class Reg:
    """One regression case being assembled."""

    def __init__(self, name, what, m, inputs, rtol=1e-5, atol=1e-6):
        self.name, self.what, self.m, self.inputs = name, what, m, list(inputs)
        self.rtol, self.atol = rtol, atol

    def ort(self):
        return oracle.run_ort(self.m, self.inputs)

    def ref(self):
        return oracle.run_reference(self.m, self.inputs)


def _spec_slice(n: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX Slice takes along an axis of size n (the spec's clamping)."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return list(range(start, end, step))


def slice_negative_step_clamp():
    x = np.array([1, 2, 3], np.float32)
    # (starts, ends, steps) on a 3-vector; the first is the issue's example
    combos = [(-4, -5, -1), (10, -10, -1), (-4, 10, 1), (5, 1, -2), (-1, -4, -1), (-100, -200, -3),
              (2, -100, -1), (1, 1, -1)]
    nodes, inits, outs, want = [], {}, {}, []
    for i, (s, e, st) in enumerate(combos):
        inits.update({f"s{i}": np.array([s], np.int64), f"e{i}": np.array([e], np.int64),
                      f"a{i}": np.array([0], np.int64), f"t{i}": np.array([st], np.int64)})
        nodes.append(helper.make_node("Slice", ["x", f"s{i}", f"e{i}", f"a{i}", f"t{i}"], [f"y{i}"]))
        idx = _spec_slice(3, s, e, st)
        outs[f"y{i}"] = (np.float32, [len(idx)])
        want.append(x[idx])
    m = model("slice_negative_step_clamp", nodes, {"x": x}, outs, inits, opset=13)
    return Reg("slice_negative_step_clamp",
               "Slice clamps start to [0, dim-1] and end to [-1, dim-1] for negative steps "
               "(x=[1,2,3], starts -4, ends -5, step -1 is [1]) and to [0, dim] for positive ones",
               m, [x], 0, 0), want, HAND


def pad_inf_constant_roundtrip():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    pads = np.array([1, 0, 0, 2], np.int64)
    nodes, outs, inits, want = [], {}, {"pads": pads}, []
    for i, v in enumerate([np.inf, -np.inf, np.nan, 3.4028235e38, -0.0]):
        inits[f"v{i}"] = np.array(v, np.float32)
        nodes.append(helper.make_node("Pad", ["x", "pads", f"v{i}"], [f"y{i}"], mode="constant"))
        outs[f"y{i}"] = (np.float32, [3, 5])
        want.append(np.pad(x, [(1, 0), (0, 2)], constant_values=np.float32(v)))
    m = model("pad_inf_constant_roundtrip", nodes, {"x": x}, outs, inits, opset=18)
    return Reg("pad_inf_constant_roundtrip",
               "Pad with constant_value inf, -inf, NaN, f32 max and -0 imports, saves and reloads "
               "losslessly and pads with that value", m, [x], 0, 0), want, None


def _maxpool_ref(x, k, s, pads, dil=None):
    """MaxPool with Indices by definition (NCHW..., row-major flat indices)."""
    nd = len(k)
    dil = dil or [1] * nd
    sp = x.shape[2:]
    outsz = [(sp[i] + pads[i] + pads[i + nd] - ((k[i] - 1) * dil[i] + 1)) // s[i] + 1 for i in range(nd)]
    y = np.full(x.shape[:2] + tuple(outsz), -np.inf, x.dtype)
    ind = np.zeros(y.shape, np.int64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for o in np.ndindex(*outsz):
                best, bi = None, None
                for kk in np.ndindex(*k):
                    p = [o[i] * s[i] - pads[i] + kk[i] * dil[i] for i in range(nd)]
                    if all(0 <= p[i] < sp[i] for i in range(nd)):
                        v = x[(n, c) + tuple(p)]
                        if best is None or v > best:
                            best, bi = v, np.ravel_multi_index((n, c) + tuple(p), x.shape)
                y[(n, c) + o], ind[(n, c) + o] = best, bi
    return y, ind


def maxpool_indices_neginf():
    rng = np.random.default_rng(17)
    x2 = rng.uniform(-3, 3, (1, 2, 4, 5)).astype(np.float32)
    x2[0, 0, 0, 0] = x2[0, 1, 2, 3] = x2[0, 0, 3, 4] = -np.inf
    x1 = rng.uniform(-3, 3, (2, 1, 7)).astype(np.float32)
    x1[0, 0, 0] = x1[1, 0, 6] = -np.inf
    nodes = [helper.make_node("MaxPool", ["x2"], ["y2", "i2"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("MaxPool", ["x1"], ["y1", "i1"], kernel_shape=[3], pads=[1, 1], strides=[2])]
    y2, i2 = _maxpool_ref(x2, [2, 2], [2, 2], [1, 1, 1, 1])
    y1, i1 = _maxpool_ref(x1, [3], [2], [1, 1])
    outs = {"y2": (np.float32, list(y2.shape)), "i2": (np.int64, list(i2.shape)),
            "y1": (np.float32, list(y1.shape)), "i1": (np.int64, list(i1.shape))}
    m = model("maxpool_indices_neginf", nodes, {"x2": x2, "x1": x1}, outs, opset=12)
    return Reg("maxpool_indices_neginf",
               "MaxPool with its Indices output on 2-D and 1-D input holding -inf (kiln pads with "
               "-inf: the .kiln must save and reload it) gives the values and row-major indices",
               m, [x2, x1], 0, 0), [y2, i2, y1, i1], None


def mod_fmod_large_quotient():
    a = np.array([1e4, 1e7, -1e7, 12345.678, 3e6, -8388607.0, 1e30, 7.5, -3.3, 2.0 ** 24 + 2],
                 np.float32)
    b = np.array([3.3, 3.3, 3.3, 0.7, -3.3, 2.5, 3.3, 3.3, 3.3, 0.1], np.float32)
    # fmod of two floats is exact, so numpy's float32 fmod is the truth
    want = [np.fmod(a, b)]
    m = model("mod_fmod_large_quotient", [helper.make_node("Mod", ["a", "b"], ["y"], fmod=1)],
              {"a": a, "b": b}, {"y": (np.float32, [len(a)])}, opset=13)
    return Reg("mod_fmod_large_quotient",
               "Mod with fmod=1 on f32 is exact however large |a/b| is (fmod(1e4, 3.3) = 1.000144, "
               "fmod(1e7, 3.3) = 0.2445...)", m, [a, b], 1e-6, 0), want, None


def _resize_case(name, mode, extra):
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4) / 4 - 1
    x[0, 0, 1, 1] = np.nan
    x2 = x.copy()
    x2[0, 0, 1, 1] = 0
    x2[0, 0, 1, 2] = np.inf  # interior: no output reads it twice through clamped taps
    scales = np.array([1, 1, 2, 2], np.float32)
    nodes = [helper.make_node("Resize", [i, "", "scales"], [o], mode=mode, **extra)
             for i, o in (("x", "y"), ("x2", "y2"))]
    m = model(name, nodes, {"x": x, "x2": x2},
              {"y": (np.float32, [1, 1, 6, 8]), "y2": (np.float32, [1, 1, 6, 8])}, {"scales": scales})
    return m, [x, x2]


def _resize_hand(m, inputs):
    """The spec's answer for a Resize whose inputs hold one non-finite value
    each: an output is a weighted sum of its taps, so it is non-finite exactly
    where a tap with a non-zero weight reads the non-finite value (NaN stays
    NaN; inf times the weight's sign), and elsewhere it is the Resize of the
    input with that value replaced by anything finite. The taps and weights'
    signs come from perturbing that value (0 then 1000) in ONNX Runtime runs
    on finite inputs."""
    finite = [np.where(np.isfinite(x), x, np.float32(0.0)) for x in inputs]
    bumped = [np.where(np.isfinite(x), x, np.float32(1000.0)) for x in inputs]
    ya = oracle.run_ort(m, finite)
    yb = oracle.run_ort(m, bumped)
    want = []
    for x, a, b in zip(inputs, ya, yb):
        bad = x[~np.isfinite(x)]
        assert bad.size == 1, "one non-finite value per input"
        delta = b.astype(np.float64) - a
        touched = np.abs(delta) > 1e-3
        y = a.copy()
        y[touched] = np.nan if np.isnan(bad[0]) else (bad[0] * np.sign(delta[touched])).astype(np.float32)
        want.append(y)
    return want


def _resize_taps(m, inputs):
    """ONNX Runtime's answer, checked against the hand answer: where the hand
    answer (non-zero weights only) is non-finite ORT must be too, and ORT may
    add NaN only at outputs whose taps read the value with weight 0 (a
    non-finite output the hand answer has finite must be NaN in ORT, and the
    bumped runs must show the output does not depend on the value)."""
    hand = _resize_hand(m, inputs)
    ort = oracle.run_ort(m, inputs)
    for h, o in zip(hand, ort):
        assert np.array_equal(np.isnan(h) | np.isinf(h), (np.isnan(h) | np.isinf(h)) & (np.isnan(o) | np.isinf(o))), \
            "ORT is finite where a non-zero-weight tap reads the value"
        extra = ~(np.isnan(h) | np.isinf(h)) & ~np.isfinite(o)
        assert np.isnan(o[extra]).all(), "ORT's extra non-finite outputs are NaN (0 * value)"
        assert extra.sum() < o.size // 2, "ORT does not spread the value over the image"
    return ort


def resize_linear_nan_taps():
    m, ins = _resize_case("resize_linear_nan_taps", "linear", {})
    return Reg("resize_linear_nan_taps",
               "Resize linear (2x, half_pixel) of a 3x4 image with one NaN (and one with one inf): "
               "only outputs whose taps read it are NaN (inf) - ONNX Runtime's taps, 2 per axis, "
               "zero-weight taps included (kiln's documented choice); never the whole image",
               m, ins, 1e-5, 1e-6), _resize_taps(m, ins), None


def resize_cubic_nan_taps():
    m, ins = _resize_case("resize_cubic_nan_taps", "cubic", {"cubic_coeff_a": -0.75})
    return Reg("resize_cubic_nan_taps",
               "Resize cubic (2x, half_pixel, a=-0.75) of a 3x4 image with one NaN (and one with "
               "one inf): only outputs whose taps read it are non-finite - ONNX Runtime's taps, "
               "4 per axis, zero-weight taps included (kiln's documented choice)",
               m, ins, 1e-5, 1e-6), _resize_taps(m, ins), None


def _unary_hand(name, ops, xs, fns, what, rtol=2e-6, atol=0.0, opset=13, attrs=None):
    nodes = [helper.make_node(op, [f"x{i}"], [f"y{i}"], **((attrs or [{}] * len(ops))[i]))
             for i, op in enumerate(ops)]
    inputs = {f"x{i}": x for i, x in enumerate(xs)}
    outs = {f"y{i}": (np.float32, list(x.shape)) for i, x in enumerate(xs)}
    m = model(name, nodes, inputs, outs, opset=opset)
    with np.errstate(all="ignore"):
        want = [np.asarray(f(x.astype(np.float64))).astype(np.float32) for f, x in zip(fns, xs)]
    return Reg(name, what, m, xs, rtol, atol), want, HAND


def asinh_acosh_large():
    xs = [np.array([-1e4, -98.19, 1e20, -3e38, 3.4028235e38, 1e-5, -0.5, 2.0, 1e8, -65504.0], np.float32),
          np.array([1e20, 1e4, 3e38, 3.4028235e38, 1.0, 1.0001, 2.0, 98.19, 1e8, 65504.0], np.float32)]
    return _unary_hand("asinh_acosh_large", ["Asinh", "Acosh"], xs, [np.arcsinh, np.arccosh],
                       "Asinh and Acosh are accurate for large |x| up to f32 max (no overflow "
                       "to inf, Asinh(-98.19) to 6 digits)")


def atan_asin_small():
    small = np.array([1e-3, -1e-4, 1e-6, -1e-12, 1e-20, 1e-37, -1e-30, 2e-3, 0.01, -0.05, 0.0], np.float32)
    return _unary_hand("atan_asin_small", ["Atan", "Asin"], [small, small.copy()], [np.arctan, np.arcsin],
                       "Atan and Asin near 0 keep full relative precision (no 1e-4 relative error)")


def cosh_sinh_near_overflow():
    x = np.array([89.0, -89.0, 88.7, -88.7, 89.4, -89.4, 88.0, 10.0, -0.5, 0.0, 89.5, -90.0], np.float32)
    return _unary_hand("cosh_sinh_near_overflow", ["Cosh", "Sinh"], [x, x.copy()], [np.cosh, np.sinh],
                       "Cosh and Sinh are finite up to the f32 overflow threshold (Cosh(89) = 2.24e38) "
                       "and inf only beyond it")


def _gelu_exact(x):
    return np.array([v * 0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.ravel()]).reshape(x.shape)


def _gelu_tanh(x):
    z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * z))


def gelu_large_negative_long_row():
    x = np.concatenate([np.linspace(-1e4, -20, 700), np.linspace(-20, 6, 600),
                        np.array([-3e38, -1e30, -100.0, -50.0, 0.0, -0.0, 3.0, 50.0])]).astype(np.float32)
    x = np.concatenate([x, x[:1536 - len(x)]]).reshape(1, -1) if len(x) < 1536 else x.reshape(1, -1)
    return _unary_hand("gelu_large_negative_long_row", ["Gelu", "Gelu"], [x, x.copy()],
                       [_gelu_exact, _gelu_tanh],
                       "Gelu (both approximations) over a 1536-element f32 row down to -3e38: -0/0 "
                       "where the true value underflows, however long the row (vectorized path)",
                       rtol=1e-4, atol=1e-6, opset=20,
                       attrs=[{}, {"approximate": "tanh"}])


def _pool_ceil_hand(x, k, s, kind):
    """Pool with ceil_mode=1, no pads: windows clipped to the input."""
    sp = x.shape[2:]
    outsz = [math.ceil((sp[i] - k[i]) / s[i]) + 1 for i in range(len(k))]
    # the spec drops a last window that would start past the input
    outsz = [o - 1 if (o - 1) * s[i] >= sp[i] else o for i, o in enumerate(outsz)]
    y = np.zeros(x.shape[:2] + tuple(outsz), np.float64)
    for n, c in np.ndindex(*x.shape[:2]):
        for o in np.ndindex(*outsz):
            sl = tuple(slice(o[i] * s[i], min(o[i] * s[i] + k[i], sp[i])) for i in range(len(k)))
            w = x[(n, c) + sl].astype(np.float64)
            y[(n, c) + o] = {"max": w.max(), "avg": w.mean(), "lp": np.sqrt((w * w).sum())}[kind]
    return y.astype(x.dtype)


def pool_ceil_mode_window_past_input():
    rng = np.random.default_rng(6)
    x = rng.uniform(-3, 3, (1, 2, 2, 5)).astype(np.float32)
    a = dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    nodes = [helper.make_node("MaxPool", ["x"], ["ymax"], **a),
             helper.make_node("AveragePool", ["x"], ["yavg"], **a),
             helper.make_node("LpPool", ["x"], ["ylp"], p=2, **a)]
    want = [_pool_ceil_hand(x, [3, 3], [2, 2], k) for k in ("max", "avg", "lp")]
    outs = {n: (np.float32, list(w.shape)) for n, w in zip(("ymax", "yavg", "ylp"), want)}
    m = model("pool_ceil_mode_window_past_input", nodes, {"x": x}, outs, opset=18)
    return Reg("pool_ceil_mode_window_past_input",
               "MaxPool, AveragePool and LpPool with ceil_mode=1 where the 3x3 window is taller than "
               "the 2-row input but the output size is >= 1: windows are clipped to the input",
               m, [x], 1e-5, 1e-6), want, None


def maxpool_indices_3d():
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, (1, 2, 3, 4, 5)).astype(np.float32)
    y, i = _maxpool_ref(x, [2, 2, 2], [1, 2, 2], [0, 1, 0, 0, 1, 1])
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2, 2], strides=[1, 2, 2],
                              pads=[0, 1, 0, 0, 1, 1])]
    m = model("maxpool_indices_3d", nodes, {"x": x},
              {"y": (np.float32, list(y.shape)), "i": (np.int64, list(i.shape))}, opset=12)
    return Reg("maxpool_indices_3d", "MaxPool's Indices output on 3-D input (row-major flat indices)",
               m, [x], 0, 0), [y, i], None


def hardmax_empty_axis():
    x = np.zeros((3, 0), np.float32)
    x2 = np.zeros((0, 4), np.float32)
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], axis=1),
             helper.make_node("Hardmax", ["x2"], ["y2"], axis=0)]
    m = model("hardmax_empty_axis", nodes, {"x": x, "x2": x2},
              {"y": (np.float32, [3, 0]), "y2": (np.float32, [0, 4])}, opset=13)
    return Reg("hardmax_empty_axis", "Hardmax over an axis of size 0 gives an empty output, not an error",
               m, [x, x2], 0, 0), [np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)], None


def nan_inf_elementwise_spec():
    erf = np.vectorize(math.erf, otypes=[np.float64])
    xs = [np.array([np.nan, np.inf, -np.inf, 0.5, -3.0], np.float32),
          np.array([1e4, 100.0, -1e4, np.nan, 3e38, 0.0], np.float32)]
    return _unary_hand("nan_inf_elementwise_spec", ["Erf", "Softplus"], xs,
                       [erf, lambda x: np.logaddexp(0.0, x)],
                       "Erf(NaN) is NaN and Erf(+-inf) is +-1 (ORT gives Erf(NaN) = 1); Softplus "
                       "of a large x is x, not inf (expected divergences unary_nan, "
                       "softplus_large)", rtol=1e-6)


def gru_inf_times_zero():
    # the z gate's x W^T is inf * 0 = NaN (IEEE), so H is NaN from there on
    from . import truth
    x = np.array([[[np.inf, 1.0]], [[0.5, -0.5]]], np.float32)  # [seq 2, batch 1, input 2]
    w = np.array([[[0.0, 0.5], [0.3, 0.2], [0.1, -0.4]]], np.float32)  # z, r, h rows
    r = np.array([[[0.25], [0.5], [-0.75]]], np.float32)
    nodes = [helper.make_node("GRU", ["x", "w", "r"], ["y", "yh"], hidden_size=1)]
    m = model("gru_inf_times_zero", nodes, {"x": x}, {"y": (np.float32, [2, 1, 1, 1]),
                                                      "yh": (np.float32, [1, 1, 1])},
              {"w": w, "r": r}, opset=14)
    want = [o.astype(np.float32) for o in truth.recurrent("GRU", x, w, r, attrs={"hidden_size": 1})]
    assert np.isnan(want[1]).all()
    return Reg("gru_inf_times_zero",
               "GRU whose z-gate input projection is inf * 0: NaN by IEEE, carried through the "
               "recurrence (the NaN semantics the expected divergence rnn_nonfinite checks "
               "kiln against)", m, [x], 0, 0), want, HAND


def reduce_logsumexp_inf():
    x = np.array([-0.845688, -np.inf, np.inf], np.float32)
    nodes = [helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], keepdims=1)]
    m = model("reduce_logsumexp_inf", nodes, {"x": x}, {"y": (np.float32, [1])},
              {"axes": np.array([0], np.int64)}, opset=21)
    with np.errstate(all="ignore"):
        want = [np.log(np.exp(x.astype(np.float64)).sum(keepdims=True)).astype(np.float32)]
    return Reg("reduce_logsumexp_inf",
               "ReduceLogSumExp of values holding +inf is +inf (ORT: inf - inf = NaN; expected "
               "divergence logsumexp_inf)", m, [x], 1e-6, 0), want, HAND


CASES = [slice_negative_step_clamp, pad_inf_constant_roundtrip, maxpool_indices_neginf,
         mod_fmod_large_quotient, resize_linear_nan_taps, resize_cubic_nan_taps, asinh_acosh_large,
         atan_asin_small, cosh_sinh_near_overflow, gelu_large_negative_long_row,
         pool_ceil_mode_window_past_input, maxpool_indices_3d, hardmax_empty_axis,
         nan_inf_elementwise_spec, gru_inf_times_zero, reduce_logsumexp_inf]


def build(fn):
    """(Reg, expected outputs, oracle name, notes) for one case: ORT's outputs
    when they match the independent answer, else the independent answer."""
    reg, want, forced = fn()
    notes = []
    try:
        ort_out = reg.ort()
    except Exception as e:
        ort_out, notes = None, [f"onnxruntime refuses: {str(e).splitlines()[0][:160]}"]
    try:
        ref_out = reg.ref()
    except Exception as e:
        ref_out = None
        notes.append(f"onnx.reference fails: {str(e).splitlines()[0][:160]}")
    for name, out in (("onnxruntime", ort_out), ("onnx.reference", ref_out)):
        if out is not None:
            why = agree(out, want, max(reg.rtol, 1e-6), reg.atol)
            notes.append(f"{name} " + ("agrees with the independent answer" if why is None else f"is off: {why}"))
    if forced is None and ort_out is not None and agree(ort_out, want, max(reg.rtol, 1e-6), reg.atol) is None:
        return reg, ort_out, oracle.ORT_NAME, notes
    if forced is None and ref_out is not None and agree(ref_out, want, max(reg.rtol, 1e-6), reg.atol) is None:
        return reg, ref_out, oracle.REF_NAME, notes
    return reg, want, HAND, notes


def write_all(root: str) -> list[str]:
    """Writes every case under `root`; returns the directories."""
    paths = []
    for fn in CASES:
        reg, want, who, notes = build(fn)
        paths.append(write_case(
            os.path.join(root, reg.name), name=reg.name, family="regression (issue 17)", seed=0,
            model=reg.m, inputs=reg.inputs, expected=[np.asarray(w) for w in want], oracle=who,
            rtol=reg.rtol, atol=reg.atol, what=reg.what, extra={"notes": notes}))
    return paths

"""Independent numpy implementations, written from the ONNX spec text, that
the divergence predicates use to check that kiln is the one following the
spec (so that a documented ORT deviation cannot hide a kiln bug). Each is a
direct, slow transcription of the definition, for small fuzz shapes only."""
from __future__ import annotations

import itertools
import math

import numpy as np


def spec_slice_indices(n: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX Slice takes along an axis of size n: negative start
    and end get n added, then start is clamped to [0, n] and end to [0, n]
    for positive steps, to [0, n-1] and [-1, n-1] for negative steps."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return list(range(start, end, step))


def slice_(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)
    out = x
    for s, e, a, t in zip(starts, ends, axes, steps):
        idx = spec_slice_indices(x.shape[a], int(s), int(e), int(t))
        out = np.take(out, np.array(idx, np.int64), axis=a)
    return out


def pad_then_crop(x: np.ndarray, pads, mode: str, axes=None, value=None) -> np.ndarray:
    """Pad with the positive pads (numpy's constant/edge/reflect/wrap), then
    crop by the negative ones."""
    r = x.ndim
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    k = len(axes)
    before, after = [0] * r, [0] * r
    for j, a in enumerate(axes):
        before[a], after[a] = int(pads[j]), int(pads[j + k])
    widths = [(max(0, b), max(0, e)) for b, e in zip(before, after)]
    if mode == "constant":
        y = np.pad(x, widths, mode="constant",
                   constant_values=np.asarray(0 if value is None else value, x.dtype))
    else:
        y = np.pad(x, widths, mode=mode)
    return y[tuple(slice(max(0, -b), y.shape[i] - max(0, -e)) for i, (b, e) in enumerate(zip(before, after)))]


def same_pads(in_sizes, kernel, strides, dils, upper: bool) -> tuple[list[int], list[int]]:
    """SAME_UPPER / SAME_LOWER pads of a conv or pool: output ceil(in/stride),
    total padding (out-1)*stride + dilated kernel - in, the odd one at the end
    (UPPER) or the beginning (LOWER)."""
    b, e = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dils):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        lo = total // 2 if upper else total - total // 2
        b.append(lo)
        e.append(total - lo)
    return b, e


def pool(x: np.ndarray, kind: str, kernel, strides, dils, pads_b, pads_e, ceil_mode: bool,
         count_include_pad: bool = False, p: int = 2, same: bool = False) -> np.ndarray:
    """MaxPool / AveragePool / LpPool by definition (float64). A window's
    taps outside the input are skipped; AveragePool divides by the taps
    inside the input, or with count_include_pad by those inside the padded
    input. With ceil_mode the last window must start inside the input or
    its left padding."""
    nd = len(kernel)
    sp = x.shape[2:]
    outs = []
    for i in range(nd):
        ext = (kernel[i] - 1) * dils[i] + 1
        if same:
            o = -(-sp[i] // strides[i])
        else:
            num = sp[i] + pads_b[i] + pads_e[i] - ext
            o = (math.ceil(num / strides[i]) if ceil_mode else num // strides[i]) + 1
            if ceil_mode and (o - 1) * strides[i] >= sp[i] + pads_b[i]:
                o -= 1
        outs.append(o)
    xf = x.astype(np.float64)
    y = np.zeros(x.shape[:2] + tuple(outs))
    for o in itertools.product(*[range(v) for v in outs]):
        vals, padded = [], 0
        for kk in itertools.product(*[range(v) for v in kernel]):
            pos = [o[i] * strides[i] - pads_b[i] + kk[i] * dils[i] for i in range(nd)]
            if all(-pads_b[i] <= pos[i] < sp[i] + pads_e[i] for i in range(nd)):
                padded += 1
            if all(0 <= pos[i] < sp[i] for i in range(nd)):
                vals.append(xf[(slice(None), slice(None)) + tuple(pos)])
        if not vals:
            v = np.full(x.shape[:2], np.nan)
        elif kind == "max":
            v = np.max(vals, axis=0)
        elif kind == "avg":
            v = np.sum(vals, axis=0) / (padded if count_include_pad else len(vals))
        else:
            v = np.sum(np.abs(np.array(vals)) ** p, axis=0) ** (1.0 / p)
        y[(slice(None), slice(None)) + o] = v
    return y


def conv_transpose(x, w, b, strides, dils, pads_b, pads_e, out_pad, group: int,
                   dtype=np.float64) -> np.ndarray:
    """ConvTranspose by definition: every input element scatters
    x * w into the full output ((in-1)*stride + dilated kernel + output_padding),
    which is then cropped by the pads (a negative pad extends it with zeros)."""
    nd = x.ndim - 2
    n, cin = x.shape[:2]
    cout_g = w.shape[1]
    k = w.shape[2:]
    full = [(x.shape[2 + i] - 1) * strides[i] + (k[i] - 1) * dils[i] + 1 + out_pad[i] for i in range(nd)]
    y = np.zeros((n, cout_g * group) + tuple(full), dtype)
    cin_g = cin // group
    xf, wf = x.astype(dtype), w.astype(dtype)
    for g in range(group):
        for ci in range(cin_g):
            c = g * cin_g + ci
            for pos in itertools.product(*[range(v) for v in x.shape[2:]]):
                xv = xf[(slice(None), c) + pos]
                for kk in itertools.product(*[range(v) for v in k]):
                    o = tuple(pos[i] * strides[i] + kk[i] * dils[i] for i in range(nd))
                    for co in range(cout_g):
                        with np.errstate(all="ignore"):
                            y[(slice(None), g * cout_g + co) + o] += xv * wf[(c, co) + kk]
    # crop (or extend, for negative pads)
    ext = [(max(0, -pads_b[i]), max(0, -pads_e[i])) for i in range(nd)]
    y = np.pad(y, [(0, 0), (0, 0)] + ext)
    sl = tuple(slice(max(0, pads_b[i]), y.shape[2 + i] - max(0, pads_e[i])) for i in range(nd))
    y = y[(slice(None), slice(None)) + sl]
    if b is not None:
        with np.errstate(all="ignore"):
            y += b.astype(dtype).reshape((1, -1) + (1,) * nd)
    return y


def mvn(x: np.ndarray, axes) -> np.ndarray:
    """MeanVarianceNormalization's function body: (x - mean) / (sqrt(var) + 1e-9)."""
    xf = x.astype(np.float64)
    with np.errstate(all="ignore"):
        mean = xf.mean(axis=tuple(axes), keepdims=True)
        var = (xf * xf).mean(axis=tuple(axes), keepdims=True) - mean * mean
        return (xf - mean) / (np.sqrt(np.maximum(var, 0)) + 1e-9)


def normalization(op: str, x: np.ndarray, params: list, attrs: dict,
                  dtype=np.float64) -> np.ndarray:
    """BatchNormalization (inference), InstanceNormalization,
    LayerNormalization, GroupNormalization (opset 21: per-channel scale and
    bias) by definition, in float64 (or `dtype`: float32 is the function
    bodies' stash type): (x - mean) / sqrt(var + epsilon) * scale + bias,
    var the biased variance computed in two passes."""
    xf = x.astype(dtype)
    eps = dtype(attrs.get("epsilon", 1e-5))
    p = [None if v is None else v.astype(dtype) for v in params]
    r = x.ndim
    chan = (1, -1) + (1,) * (r - 2)
    with np.errstate(all="ignore"):
        if op == "BatchNormalization":
            s, b, m, v = p[:4]
            return (xf - m.reshape(chan)) / np.sqrt(v.reshape(chan) + eps) * s.reshape(chan) + b.reshape(chan)
        if op == "InstanceNormalization":
            ax = tuple(range(2, r))
            mean = xf.mean(axis=ax, keepdims=True)
            var = ((xf - mean) ** 2).mean(axis=ax, keepdims=True)
            return (xf - mean) / np.sqrt(var + eps) * p[0].reshape(chan) + p[1].reshape(chan)
        if op == "LayerNormalization":
            axis = attrs.get("axis", -1) % r
            ax = tuple(range(axis, r))
            mean = xf.mean(axis=ax, keepdims=True)
            var = ((xf - mean) ** 2).mean(axis=ax, keepdims=True)
            y = (xf - mean) / np.sqrt(var + eps) * p[0]
            return y + p[1] if len(p) > 1 and p[1] is not None else y
        if op == "GroupNormalization":
            g = attrs["num_groups"]
            n, c = x.shape[:2]
            xg = xf.reshape(n, g, -1)
            mean = xg.mean(axis=2, keepdims=True)
            var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
            y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
            return y * p[0].reshape(chan) + p[1].reshape(chan)
    raise ValueError(op)


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """PRelu by definition: x where x >= 0 (NaN stays NaN), else slope * x."""
    xf, sf = x.astype(np.float64), slope.astype(np.float64)
    with np.errstate(all="ignore"):
        return np.where(np.isnan(xf), np.nan, np.where(xf < 0, sf * xf, xf + 0 * np.zeros_like(sf)))


def _rnn_act(name: str, alpha, beta):
    """One activation of the recurrent ops, IEEE semantics (NaN propagates,
    ±inf gives the formula's value)."""
    name = name.lower()
    if name == "relu":
        return lambda x: np.maximum(x, 0)
    if name == "tanh":
        return np.tanh
    if name == "sigmoid":
        return lambda x: 1 / (1 + np.exp(-x))
    if name == "affine":
        return lambda x: alpha(1.0) * x + beta(0.0)
    if name == "leakyrelu":
        a = alpha(0.01)
        return lambda x: np.where(x >= 0, x, a * x)
    if name == "thresholdedrelu":
        a = alpha(1.0)
        return lambda x: np.where(x > a, x, x * 0)
    if name == "scaledtanh":
        a, b = alpha(1.0), beta(1.0)
        return lambda x: a * np.tanh(b * x)
    if name == "hardsigmoid":
        a, b = alpha(0.2), beta(0.5)
        return lambda x: np.minimum(np.maximum(a * x + b, 0), 1)
    if name == "elu":
        a = alpha(1.0)
        return lambda x: np.where(x >= 0, x, a * (np.exp(x) - 1))
    if name == "softsign":
        return lambda x: x / (1 + np.abs(x))
    if name == "softplus":
        return lambda x: np.log(1 + np.exp(x))
    raise ValueError(f"activation {name}")


def _dot(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """a @ bt.T with every product rounded to the dtype before the sum (no
    fused multiply-add), so that f32 overflow of a product shows as inf."""
    return (a[:, None, :] * bt[None, :, :]).sum(axis=-1)


def recurrent(op: str, x, w, r, b=None, h0=None, c0=None, p=None, attrs=None,
              dtype=np.float64) -> list[np.ndarray]:
    """RNN / GRU / LSTM by the spec's cell equations (no sequence_lens),
    evaluated elementwise-IEEE in `dtype` (NaN propagates through every
    activation, inf * 0 is NaN): returns [Y, Y_h] (+ [Y_c] for LSTM).

    Readings shared with kiln and ONNX Runtime, where the spec is loose:
    an omitted initial_h / initial_c contributes an exact zero term (the
    spec's "assumed to be 0"), `clip` bounds every gate's pre-activation,
    activation_alpha/beta are consumed in order by the activations that
    take parameters, and one activation list for a bidirectional node
    serves both directions."""
    attrs = attrs or {}
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    layout = attrs.get("layout", 0) or 0
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else (direction or "forward")
    nd = 2 if direction == "bidirectional" else 1
    cast = (lambda v: None if v is None else np.asarray(v).astype(dtype))
    x, w, r, b, h0, c0, p = map(cast, (x, w, r, b, h0, c0, p))
    if layout == 1:
        x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    seq, batch, _ = x.shape
    hid = r.shape[2]
    defaults = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[op]
    names = [a.decode() if isinstance(a, bytes) else a for a in (attrs.get("activations") or defaults)]
    if len(names) == len(defaults) and nd == 2:
        names = names + names
    alphas = iter(attrs.get("activation_alpha") or [])
    betas = iter(attrs.get("activation_beta") or [])
    acts = [_rnn_act(n, lambda d: next(alphas, d), lambda d: next(betas, d)) for n in names]
    clip = attrs.get("clip")
    input_forget = bool(attrs.get("input_forget", 0))
    lbr = bool(attrs.get("linear_before_reset", 0))
    per = len(defaults)
    ys, yhs, ycs = [], [], []
    with np.errstate(all="ignore"):
        def cl(v):
            return v if clip is None else np.minimum(np.maximum(v, dtype(-clip)), dtype(clip))

        for d in range(nd):
            f = acts[d * per:(d + 1) * per]
            wd, rd = w[d], r[d]
            wb = b[d][:gates * hid] if b is not None else np.zeros(gates * hid, dtype)
            rb = b[d][gates * hid:] if b is not None else np.zeros(gates * hid, dtype)
            H = None if h0 is None else h0[d]
            C = None if c0 is None else c0[d]
            pd = None if p is None else p[d]
            reverse = direction == "reverse" or d == 1
            y = [None] * seq

            def g(k):
                return slice(k * hid, (k + 1) * hid)

            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                xt = x[t]
                xw = _dot(xt, wd)  # [batch, gates*hid]
                hr = None if H is None else _dot(H, rd)
                if op == "RNN":
                    pre = xw + wb + rb if hr is None else xw + hr + wb + rb
                    H = f[0](cl(pre))
                elif op == "LSTM":
                    pre = xw + wb + rb if hr is None else xw + hr + wb + rb
                    pi = pre[:, g(0)] if pd is None or C is None else pre[:, g(0)] + pd[g(0)] * C
                    i = f[0](cl(pi))
                    if input_forget:
                        fg = 1 - i
                    else:
                        pf = pre[:, g(2)] if pd is None or C is None else pre[:, g(2)] + pd[g(2)] * C
                        fg = f[0](cl(pf))
                    cc = f[1](cl(pre[:, g(3)]))
                    C = i * cc if C is None else fg * C + i * cc
                    po = pre[:, g(1)] if pd is None else pre[:, g(1)] + pd[g(1)] * C
                    o = f[0](cl(po))
                    H = o * f[2](C)
                else:
                    z = f[0](cl(xw[:, g(0)] + wb[g(0)] + rb[g(0)] + (0 if hr is None else hr[:, g(0)])))
                    rr = f[0](cl(xw[:, g(1)] + wb[g(1)] + rb[g(1)] + (0 if hr is None else hr[:, g(1)])))
                    if lbr:
                        inner = rb[g(2)] if hr is None else hr[:, g(2)] + rb[g(2)]
                        pre = xw[:, g(2)] + wb[g(2)] + rr * inner
                    else:
                        rec = 0 if H is None else _dot(rr * H, rd[g(2)])
                        pre = xw[:, g(2)] + wb[g(2)] + rb[g(2)] + rec
                    hh = f[1](cl(pre))
                    H = (1 - z) * hh if H is None else (1 - z) * hh + z * H
                y[t] = H
            ys.append(np.stack(y))
            yhs.append(H)
            ycs.append(C)
    Y = np.stack(ys, axis=1)  # [seq, nd, batch, hid]
    Yh = np.stack(yhs)
    out = [Y, Yh]
    if op == "LSTM":
        out.append(np.stack(ycs))
    if layout == 1:
        out = [out[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in out[1:]]
    return out


def conv(x, w, b, strides, dils, pads_b, pads_e, group: int) -> np.ndarray:
    """Conv by definition in float64 (cross-correlation over the zero-padded
    input, `group` groups), for small fuzz shapes."""
    nd = x.ndim - 2
    xf = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(int(p), int(q)) for p, q in zip(pads_b, pads_e)])
    wf = w.astype(np.float64)
    n, cin = x.shape[:2]
    cout, cin_g = wf.shape[:2]
    k = wf.shape[2:]
    outs = [(xf.shape[2 + i] - ((k[i] - 1) * dils[i] + 1)) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((n, cout) + tuple(max(o, 0) for o in outs))
    cout_g = cout // group
    with np.errstate(all="ignore"):
        for o in itertools.product(*[range(max(v, 0)) for v in outs]):
            for co in range(cout):
                g = co // cout_g
                acc = np.zeros(n)
                for ci in range(cin_g):
                    for kk in itertools.product(*[range(v) for v in k]):
                        pos = tuple(o[i] * strides[i] + kk[i] * dils[i] for i in range(nd))
                        acc = acc + xf[(slice(None), g * cin_g + ci) + pos] * wf[(co, ci) + kk]
                y[(slice(None), co) + o] = acc
        if b is not None:
            y += b.astype(np.float64).reshape((1, -1) + (1,) * nd)
    return y


def _resize_coord(ctm: str, x: np.ndarray, s: float, n_in: int, n_out: int, roi) -> np.ndarray:
    """Resize's coordinate transform of output positions `x` along one axis
    (the spec's formulas, float64)."""
    if ctm == "half_pixel":
        return (x + 0.5) / s - 0.5
    if ctm == "half_pixel_symmetric":
        adj = n_out / (s * n_in)
        center = n_in / 2
        return center * (1 - adj) + (x + 0.5) / s - 0.5
    if ctm == "pytorch_half_pixel":
        return (x + 0.5) / s - 0.5 if n_out > 1 else np.zeros_like(x)
    if ctm == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if ctm == "align_corners_scaled":  # length_resized read as in * scale
        return x * (n_in - 1) / (n_in * s - 1) if n_in * s > 1 else np.zeros_like(x)
    if ctm == "asymmetric":
        return x / s
    if ctm == "tf_crop_and_resize":
        a, b = roi
        if n_out > 1:
            return a * (n_in - 1) + x * (b - a) * (n_in - 1) / (n_out - 1)
        return np.full_like(x, 0.5 * (a + b) * (n_in - 1))
    raise ValueError(ctm)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """The 4 cubic convolution weights for taps at offsets -1, 0, 1, 2 from floor."""
    def w(d):
        d = np.abs(d)
        return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                        np.where(d < 2, ((d - 5) * d + 8) * d * a - 4 * a, 0.0))
    return np.stack([w(t + 1), w(t), w(1 - t), w(2 - t)], axis=-1)


def resize(x: np.ndarray, mode: str, ctm: str, out_shape, scales, roi, nearest_mode: str,
           cubic_a: float, exclude_outside: bool, extrapolation: float,
           tie: str = "spec", read_zero: bool = False, unit_axes=()) -> np.ndarray:
    """Resize by the spec's formulas in float64, one axis at a time (nearest,
    linear, cubic; no antialias). `tie`: 'spec' rounds x.5 as nearest_mode
    says; 'low'/'high' move a coordinate within 1e-5 of a rounding boundary
    to its lower/upper side (float32 evaluations land on either). With
    `read_zero`, taps of weight 0 are multiplied in too (0 * inf = NaN, as
    ONNX Runtime reads them); else they are skipped. `unit_axes`: axes
    interpolated even where their scale is 1 (ONNX Runtime interpolates its
    bilinear/bicubic/trilinear axes together, so a scale-1 one among them
    reads its zero-weight taps too)."""
    y = x.astype(np.float64)
    extra = np.zeros(x.shape, bool)
    for ax in range(x.ndim):
        n_in, n_out, s = x.shape[ax], int(out_shape[ax]), float(scales[ax])
        if n_in == n_out and s == 1.0 and ctm != "tf_crop_and_resize" and ax not in unit_axes:
            continue
        pos = _resize_coord(ctm, np.arange(n_out, dtype=np.float64), s, n_in, n_out,
                            (roi[ax], roi[ax + x.ndim]) if roi is not None else (0.0, 1.0))
        # a coordinate within 1e-5 of the edge counts as inside for the tie readings
        slack = 0.0 if tie == "spec" else 1e-5
        outside = (pos < -slack) | (pos > n_in - 1 + slack) if ctm == "tf_crop_and_resize" \
            else np.zeros(n_out, bool)
        pos = np.clip(pos, 0, n_in - 1) if slack and ctm == "tf_crop_and_resize" else pos
        yt = np.moveaxis(y, ax, -1)
        if mode == "nearest":
            p = pos
            if tie != "spec":
                near = np.round(p * 2) / 2 if nearest_mode.startswith("round") else np.round(p)
                close = np.abs(p - near) < 1e-5
                p = np.where(close, near + (-1e-9 if tie == "low" else 1e-9), p)
            if nearest_mode == "round_prefer_floor":
                idx = np.where(p - np.floor(p) == 0.5, np.floor(p), np.floor(p + 0.5))
            elif nearest_mode == "round_prefer_ceil":
                idx = np.floor(p + 0.5)
            elif nearest_mode == "floor":
                idx = np.floor(p)
            else:
                idx = np.ceil(p)
            idx = np.clip(idx, 0, n_in - 1).astype(np.int64)
            out = yt[..., idx]
        elif mode == "linear":
            f0 = np.floor(pos)
            t = pos - f0
            i0 = np.clip(f0, 0, n_in - 1).astype(np.int64)
            i1 = np.clip(f0 + 1, 0, n_in - 1).astype(np.int64)
            with np.errstate(invalid="ignore"):
                out = yt[..., i0] * (1 - t) + yt[..., i1] * t
                if not read_zero:  # a zero weight does not read its tap
                    out = np.where(t == 0, yt[..., i0], out)
        else:
            f0 = np.floor(pos)
            t = pos - f0
            wts = _cubic_weights(t, cubic_a)  # [n_out, 4]
            taps = f0[:, None] + np.arange(-1, 3)[None, :]
            if exclude_outside:
                inside = (taps >= 0) & (taps <= n_in - 1)
                wts = np.where(inside, wts, 0.0)
                wts = wts / wts.sum(axis=1, keepdims=True)
            ti = np.clip(taps, 0, n_in - 1).astype(np.int64)
            out = np.zeros(yt.shape[:-1] + (n_out,))
            with np.errstate(invalid="ignore"):
                for j in range(4):
                    term = yt[..., ti[:, j]] * wts[:, j]
                    if not read_zero:
                        term = np.where(wts[:, j] == 0, 0.0, term)
                    out = out + term
        y = np.moveaxis(out, -1, ax)
        ext = np.moveaxis(np.moveaxis(extra, ax, -1)[..., np.zeros(n_out, np.int64)], -1, ax)
        shape = [1] * x.ndim
        shape[ax] = n_out
        extra = ext | outside.reshape(shape)
    if ctm == "tf_crop_and_resize":
        y = np.where(extra, extrapolation, y)
    return y

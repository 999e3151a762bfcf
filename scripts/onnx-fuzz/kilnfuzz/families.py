"""The seed model families: each draws one mutant (one to six nodes, its
attributes, shapes and inputs) from a `Gen` and returns a `Case`.

`FAMILIES` maps a family's name to its generator, in a fixed order; mutant k
of a run belongs to family `names[k % len(names)]`.
"""
from __future__ import annotations

import itertools

import numpy as np
from onnx import TensorProto

from .compare import Tolerance
from .mutate import Builder, Case, Gen, attr

FAMILIES: dict = {}

#: Tolerance of contractions and long reductions (atol scaled by max |want|).
CONTRACTION = Tolerance(rtol=1e-4, atol=1e-5, scaled=True)
#: Tolerance of elementwise transcendental functions.
ELEMENTWISE = Tolerance(rtol=1e-4, atol=1e-6)


def family(name: str):
    """Registers a generator under `name`."""
    def reg(fn):
        FAMILIES[name] = fn
        return fn
    return reg


def opset(g: Gen, lo: int = 13, hi: int = 21) -> int:
    return g.int(max(lo, 13), min(hi, 21))


def fdt(g: Gen) -> type:
    """Float dtype of most families: mostly f32, some f64."""
    return g.float_dtype(f64=0.12)


F32 = np.float32  # for ops ONNX Runtime's CPU provider runs in f32 only


def spatial_attrs(g: Gen, nd: int, k: list[int], allow_same: bool = True, dil: bool = True):
    """auto_pad, pads, strides, dilations for a windowed op of `nd` spatial dims."""
    strides = [g.choice([1, 1, 2, 3]) for _ in range(nd)] if g.chance(0.6) else None
    dils = [g.choice([1, 1, 2]) for _ in range(nd)] if dil and g.chance(0.4) else None
    modes = ["NOTSET", "NOTSET", "VALID"] + (["SAME_UPPER", "SAME_LOWER"] if allow_same else [])
    auto_pad = g.choice(modes)
    pads = None
    if auto_pad == "NOTSET" and g.chance(0.6):
        pads = [g.int(0, max(0, ki - 1)) for ki in k] + [g.int(0, max(0, ki - 1)) for ki in k]
    return (auto_pad if auto_pad != "NOTSET" or g.chance(0.5) else None), pads, strides, dils


def spatial_input(g: Gen, nd: int, k, dils, lo_extra=0, hi_extra=5):
    d = dils or [1] * nd
    return [d[i] * (k[i] - 1) + 1 + g.int(lo_extra, hi_extra) for i in range(nd)]


# ---------------------------------------------------------------- convolutions
@family("conv")
def conv(g: Gen) -> Case:
    b = Builder(g, "conv", opset(g))
    nd = g.choice([1, 2, 2, 3])
    group = g.choice([1, 1, 2, 3])
    cin, cout = group * g.int(1, 3), group * g.int(1, 2)
    k = [g.int(1, 3) for _ in range(nd)]
    auto_pad, pads, strides, dils = spatial_attrs(g, nd, k)
    dt = F32
    x = b.input("x", g.data([g.int(1, 2), cin] + spatial_input(g, nd, k, dils), dt))
    w = b.weight("w", g.data([cout, cin // group] + k, dt))
    ins = [x, w] + ([b.weight("b", g.data([cout], dt))] if g.chance(0.5) else [])
    (y,) = b.node("Conv", ins, auto_pad=auto_pad, pads=pads, strides=strides, dilations=dils,
                  group=group if group > 1 or g.chance(0.3) else None,
                  kernel_shape=k if g.chance(0.5) else None)
    b.output(y)
    return b.case(CONTRACTION)


@family("conv_transpose")
def conv_transpose(g: Gen) -> Case:
    b = Builder(g, "conv_transpose", opset(g))
    nd = g.choice([1, 2, 2, 3])
    group = g.choice([1, 1, 2])
    cin, cout = group * g.int(1, 2), group * g.int(1, 3)
    k = [g.int(1, 3) for _ in range(nd)]
    auto_pad, pads, strides, dils = spatial_attrs(g, nd, k)
    dt = F32
    spatial = [g.int(1, 4) for _ in range(nd)]
    x = b.input("x", g.data([g.int(1, 2), cin] + spatial, dt))
    w = b.weight("w", g.data([cin, cout // group] + k, dt))
    ins = [x, w] + ([b.weight("b", g.data([cout], dt))] if g.chance(0.5) else [])
    out_pad = out_shape = None
    s = strides or [1] * nd
    d = dils or [1] * nd
    if g.chance(0.35):
        out_pad = [g.int(0, max(0, max(s[i], d[i]) - 1)) for i in range(nd)]
    elif g.chance(0.2):
        out_shape = [s[i] * spatial[i] + g.int(0, s[i] - 1) for i in range(nd)]
        pads = None
    (y,) = b.node("ConvTranspose", ins, auto_pad=auto_pad, pads=pads, strides=strides,
                  dilations=dils, group=group if group > 1 else None,
                  output_padding=out_pad, output_shape=out_shape)
    b.output(y)
    return b.case(CONTRACTION)


# ---------------------------------------------------------------- pools
def pool_setup(g: Gen, b: Builder, dt, dil_ok: bool):
    nd = g.choice([1, 2, 2, 3])
    k = [g.int(1, 3) for _ in range(nd)]
    auto_pad, pads, strides, dils = spatial_attrs(g, nd, k, dil=dil_ok)
    x = b.input("x", g.data([g.int(1, 2), g.int(1, 3)] + spatial_input(g, nd, k, dils, -1, 4), dt))
    return nd, k, dict(auto_pad=auto_pad, pads=pads, strides=strides, dilations=dils,
                       kernel_shape=k, ceil_mode=g.choice([None, 0, 1, 1])), x


@family("maxpool")
def maxpool(g: Gen) -> Case:
    b = Builder(g, "maxpool", opset(g, 12))
    dt = g.float_dtype(f64=0.1, f16=0.1)
    nd, k, attrs, x = pool_setup(g, b, dt, True)
    indices = g.chance(0.4)
    if indices and g.chance(0.3):
        attrs["storage_order"] = g.choice([0, 1])
    outs = b.node("MaxPool", [x], 2 if indices else 1, **attrs)
    b.output(outs[0])
    if indices:
        b.output(outs[1], TensorProto.INT64)
    return b.case()


@family("avgpool")
def avgpool(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "avgpool", op)
    nd, k, attrs, x = pool_setup(g, b, F32, op >= 19)
    attrs["count_include_pad"] = g.choice([None, 0, 1])
    (y,) = b.node("AveragePool", [x], **attrs)
    b.output(y)
    return b.case(CONTRACTION)


@family("lppool")
def lppool(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "lppool", op)
    nd, k, attrs, x = pool_setup(g, b, F32, op >= 18)
    if op < 18:
        attrs.pop("ceil_mode")
    attrs["p"] = g.choice([None, 1, 2, 3])
    (y,) = b.node("LpPool", [x], **attrs)
    b.output(y)
    return b.case(CONTRACTION)


@family("global_pool")
def global_pool(g: Gen) -> Case:
    b = Builder(g, "global_pool", opset(g))
    opname = g.choice(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
    nd = g.choice([1, 2, 3])
    x = b.input("x", g.data([g.int(1, 2), g.int(1, 3)] + g.shape(nd, 1, 6), F32))
    p = g.choice([None, 1, 2, 3]) if opname == "GlobalLpPool" else None
    (y,) = b.node(opname, [x], p=p)
    b.output(y)
    return b.case(CONTRACTION)


# ---------------------------------------------------------------- contractions
@family("gemm")
def gemm(g: Gen) -> Case:
    b = Builder(g, "gemm", opset(g))
    dt = fdt(g)
    m, kk, n = g.int(1, 6), g.int(1, 8), g.int(1, 6)
    ta, tb = g.choice([None, 0, 1]), g.choice([None, 0, 1])
    a = b.input("a", g.data([kk, m] if ta else [m, kk], dt))
    w = b.weight("b", g.data([n, kk] if tb else [kk, n], dt))
    ins = [a, w]
    if g.chance(0.7):
        cshape = g.choice([[], [n], [1, n], [m, 1], [m, n], [1]])
        ins.append(b.weight("c", g.data(cshape, dt)))
    alpha = g.choice([None, 1.0, 0.5, -2.0, 0.0])
    beta = g.choice([None, 1.0, 0.25, -1.5, 0.0])
    (y,) = b.node("Gemm", ins, transA=ta, transB=tb, alpha=alpha, beta=beta)
    b.output(y)
    return b.case(CONTRACTION)


@family("matmul")
def matmul(g: Gen) -> Case:
    b = Builder(g, "matmul", opset(g))
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    m, kk, n = g.int(1, 5), g.int(1, 7), g.int(1, 5)
    batch = g.shape(g.int(0, 2), 1, 3)
    ashape = g.choice([[kk], [m, kk], batch + [m, kk]])
    bb = [d if g.chance(0.6) else 1 for d in batch]
    bshape = g.choice([[kk], [kk, n], bb + [kk, n], bb[1:] + [kk, n]])
    lo = -3 if np.dtype(dt).kind == "f" else -5
    a = b.input("a", g.data(ashape, dt, lo, -lo))
    w = b.weight("b", g.data(bshape, dt, lo, -lo))
    (y,) = b.node("MatMul", [a, w])
    b.output(y)
    return b.case(CONTRACTION)


EINSUM = ["ij,jk->ik", "bij,bjk->bik", "ii->i", "ij->ji", "i,i->", "ij->", "i,j->ij",
          "bhqd,bhkd->bhqk", "ijk->ikj", "ij,ij->ij", "ij->i", "...ij,...jk->...ik", "ii"]


@family("einsum")
def einsum(g: Gen) -> Case:
    b = Builder(g, "einsum", opset(g, 13))
    eq = g.choice(EINSUM)
    dt = fdt(g)
    sizes = {c: g.int(1, 5) for c in "bhijkqd"}
    sizes["j"] = sizes["i"] if eq in ("ii->i", "ii") else sizes["j"]
    ell = g.shape(g.int(0, 2), 1, 3)
    ins = []
    for t, term in enumerate(eq.split("->")[0].split(",")):
        shape = []
        for c in term.replace("...", "."):
            shape += ell if c == "." else [sizes[c]]
        if eq in ("ii->i", "ii"):
            shape = [sizes["i"], sizes["i"]]
        ins.append(b.input(f"x{t}", g.data(shape, dt)))
    (y,) = b.node("Einsum", ins, equation=eq)
    b.output(y)
    return b.case(CONTRACTION)


REDUCES = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


@family("reduce")
def reduce(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "reduce", op)
    name = g.choice(REDUCES)
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 5)
    if g.chance(0.05):
        shape[g.int(0, rank - 1)] = 0
    int_ok = name in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare")
    dt = g.choice([np.int64, np.int32]) if int_ok and g.chance(0.25) else fdt(g)
    if name in ("ReduceLogSum",):
        x = g.positive(shape, dt)
    elif name == "ReduceProd" and np.dtype(dt).kind == "i":
        x = g.data(shape, dt, -40, 40)
    else:
        x = g.data(shape, dt)
    xi = b.input("x", x)
    axes = None
    if g.chance(0.75):
        axes = sorted(set(g.int(-rank, rank - 1) % rank for _ in range(g.int(1, rank))))
        axes = [a - rank if g.chance(0.3) else a for a in axes]
    keep = g.choice([None, 0, 1])
    as_input = op >= 18 or name == "ReduceSum"
    noop = g.choice([None, 0, 1]) if as_input else None
    ins = [xi]
    attrs = dict(keepdims=keep, noop_with_empty_axes=noop)
    if as_input:
        if axes is not None or g.chance(0.3):
            ins.append(b.const("axes", np.array(axes or [], np.int64)))
    elif axes is not None:
        attrs["axes"] = axes
    (y,) = b.node(name, ins, **attrs)
    b.output(y)
    return b.case(CONTRACTION)


@family("argminmax")
def argminmax(g: Gen) -> Case:
    b = Builder(g, "argminmax", opset(g))
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 5)
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    x = g.data(shape, dt, -3, 3)
    if np.dtype(dt).kind == "f" and g.chance(0.4):
        x = np.round(x)  # ties
    (y,) = b.node(g.choice(["ArgMax", "ArgMin"]), [b.input("x", x)],
                  axis=g.int(-rank, rank - 1), keepdims=g.choice([None, 0, 1]),
                  select_last_index=g.choice([None, 0, 1]))
    b.output(y, TensorProto.INT64)
    return b.case()


@family("topk")
def topk(g: Gen) -> Case:
    b = Builder(g, "topk", opset(g))
    rank = g.int(1, 3)
    shape = g.shape(rank, 1, 6)
    axis = g.int(-rank, rank - 1)
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    x = g.data(shape, dt, -50, 50) if np.dtype(dt).kind == "i" else g.data(shape, dt)
    k = g.int(0, shape[axis])
    y, i = b.node("TopK", [b.input("x", x), b.const("k", np.array([k], np.int64))], 2,
                  axis=axis, largest=g.choice([None, 0, 1]), sorted=g.choice([None, 1]))
    b.output(y)
    b.output(i, TensorProto.INT64)
    return b.case()


@family("cumsum")
def cumsum(g: Gen) -> Case:
    b = Builder(g, "cumsum", opset(g))
    rank = g.int(1, 3)
    shape = g.shape(rank, 1, 7)
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    x = b.input("x", g.data(shape, dt, -5, 5))
    ax = b.const("axis", np.array(g.int(-rank, rank - 1), g.choice([np.int64, np.int32])))
    (y,) = b.node("CumSum", [x, ax], exclusive=g.choice([None, 0, 1]), reverse=g.choice([None, 0, 1]))
    b.output(y)
    return b.case(CONTRACTION)


# ---------------------------------------------------------------- indexing
@family("slice")
def slice_(g: Gen) -> Case:
    b = Builder(g, "slice", opset(g))
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 6)
    x = b.input("x", g.data(shape, g.choice([np.float32, np.int64])))
    axes = g.rng.sample(range(rank), g.int(1, rank))
    big = 2**63 - 1

    def bound(d):
        return g.choice([g.int(-d - 3, d + 3), g.int(-d - 3, d + 3), big, -big - 1, 0, -1])
    starts = [bound(shape[a]) for a in axes]
    ends = [bound(shape[a]) for a in axes]
    steps = [g.choice([1, 1, 2, -1, -2, 3]) for _ in axes]
    ins = [x, b.const("starts", np.array(starts, np.int64)), b.const("ends", np.array(ends, np.int64))]
    if g.chance(0.8) or any(s != 1 for s in steps):
        ins.append(b.const("axes", np.array([a - rank if g.chance(0.3) else a for a in axes], np.int64)))
        if g.chance(0.8) or any(s != 1 for s in steps):
            ins.append(b.const("steps", np.array(steps, np.int64)))
    (y,) = b.node("Slice", ins)
    b.output(y)
    return b.case()


@family("pad")
def pad(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "pad", op)
    modes = ["constant", "reflect", "edge"] + (["wrap"] if op >= 19 else [])
    mode = g.choice(modes)
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 5)
    dt = g.choice([np.float32, np.float32, np.float64, np.int64])
    x = b.input("x", g.data(shape, dt))
    axes = list(range(rank))
    if op >= 18 and g.chance(0.3):
        axes = sorted(g.rng.sample(range(rank), g.int(1, rank)))
    lim = {a: (shape[a] - 1 if mode == "reflect" else shape[a]) for a in axes}
    pads = [g.int(-1 if g.chance(0.2) else 0, max(0, min(3, lim[a]))) for a in axes] * 1
    pads += [g.int(-1 if g.chance(0.2) else 0, max(0, min(3, lim[a]))) for a in axes]
    ins = [x, b.const("pads", np.array(pads, np.int64))]
    if mode == "constant" and g.chance(0.6):
        v = g.choice([0.5, -2.0, 0.0, 7.0]) if np.dtype(dt).kind == "f" else g.int(-9, 9)
        ins.append(b.const("value", np.array(v, dt)))
    if len(axes) != rank:
        if len(ins) == 2:
            ins.append("")
        ins.append(b.const("axes", np.array(axes, np.int64)))
    (y,) = b.node("Pad", ins, mode=mode if mode != "constant" or g.chance(0.5) else None)
    b.output(y)
    return b.case()


@family("resize")
def resize(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "resize", op)
    mode = g.choice(["nearest", "linear", "cubic"])
    ctms = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize"]
    if op >= 19:
        ctms.append("half_pixel_symmetric")
    ctm = g.choice(ctms)
    nd = g.choice([1, 2, 2]) if mode != "cubic" else 2
    shape = [g.int(1, 2), g.int(1, 2)] + g.shape(nd, 1, 5)
    rank = len(shape)
    x = b.input("x", g.data(shape, F32))
    roi = ""
    if ctm == "tf_crop_and_resize":
        lo = [0.0, 0.0] + [g.choice([0.0, 0.1, 0.25, -0.2]) for _ in range(nd)]
        hi = [1.0, 1.0] + [g.choice([1.0, 0.9, 0.75, 1.2]) for _ in range(nd)]
        roi = b.const("roi", np.array(lo + hi, np.float32))
    ins = [x, roi]
    if g.chance(0.5):
        sc = [1.0, 1.0] + [g.choice([0.5, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 0.75]) for _ in range(nd)]
        ins.append(b.const("scales", np.array(sc, np.float32)))
    else:
        sz = shape[:2] + [g.int(1, 9) for _ in range(nd)]
        ins += ["", b.const("sizes", np.array(sz, np.int64))]
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
    if mode == "nearest":
        attrs["nearest_mode"] = g.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
    if mode == "cubic":
        attrs["cubic_coeff_a"] = g.choice([None, -0.75, -0.5])
        attrs["exclude_outside"] = g.choice([None, 0, 1])
    if ctm == "tf_crop_and_resize":
        attrs["extrapolation_value"] = g.choice([None, 0.0, -1.0])
    if ins[-1] == "" or len(ins) == 4:
        if op >= 18 and ins[2] == "" and g.chance(0.3):
            attrs["keep_aspect_ratio_policy"] = g.choice(["stretch", "not_larger", "not_smaller"])
    (y,) = b.node("Resize", ins, **attrs)
    b.output(y)
    del rank
    return b.case(Tolerance(1e-4, 1e-5, scaled=mode == "cubic"))


@family("gather")
def gather(g: Gen) -> Case:
    b = Builder(g, "gather", opset(g))
    opname = g.choice(["Gather", "GatherElements", "GatherND"])
    rank = g.int(1, 3)
    shape = g.shape(rank, 1, 5)
    x = b.input("x", g.data(shape, g.choice([np.float32, np.int64])))
    idt = g.choice([np.int64, np.int32])
    if opname == "Gather":
        axis = g.int(-rank, rank - 1)
        d = shape[axis]
        idx = g.np.integers(-d, d, size=g.shape(g.int(0, 2), 1, 4)).astype(idt)
        (y,) = b.node("Gather", [x, b.weight("i", idx)], axis=axis)
    elif opname == "GatherElements":
        axis = g.int(-rank, rank - 1)
        d = shape[axis]
        ishape = [g.int(1, s) for s in shape]
        ishape[axis] = g.int(1, 4)
        idx = g.np.integers(-d, d, size=ishape).astype(idt)
        (y,) = b.node("GatherElements", [x, b.weight("i", idx)], axis=axis)
    else:
        bd = g.int(0, rank - 1)
        q = g.int(1, rank - bd)
        lead = shape[:bd] + g.shape(g.int(0, 1), 1, 3)
        cols = [g.np.integers(-shape[bd + j], shape[bd + j], size=lead) for j in range(q)]
        idx = np.stack(cols, -1).astype(np.int64)
        (y,) = b.node("GatherND", [x, b.weight("i", idx)], batch_dims=bd or None)
    b.output(y)
    return b.case()


@family("scatter")
def scatter(g: Gen) -> Case:
    op = opset(g, 16)
    b = Builder(g, "scatter", op)
    reds = ["none", "add", "mul"] + (["max", "min"] if op >= 18 else [])
    red = g.choice(reds)
    rank = g.int(1, 3)
    shape = g.shape(rank, 1, 5)
    dt = g.choice([np.float32, np.int64])
    x = b.input("x", g.data(shape, dt))
    if g.chance(0.5):
        axis = g.int(-rank, rank - 1)
        d = shape[axis]
        ishape = [g.int(1, s) for s in shape]
        ishape[axis] = g.int(1, d)
        # unique positions along the axis for each line (reduction none needs that)
        idx = np.zeros(ishape, np.int64)
        for pos in itertools.product(*[range(s) for j, s in enumerate(ishape) if j != axis % rank]):
            perm = g.np.permutation(d)[: ishape[axis]] if red == "none" else g.np.integers(0, d, ishape[axis])
            perm = np.where(g.np.random(len(perm)) < 0.3, perm - d, perm)
            sl = list(pos)
            sl.insert(axis % rank, slice(None))
            idx[tuple(sl)] = perm
        upd = g.data(ishape, dt)
        (y,) = b.node("ScatterElements", [x, b.weight("i", idx), b.weight("u", upd)], axis=axis,
                      reduction=red if red != "none" or g.chance(0.5) else None)
    else:
        q = g.int(1, rank)
        n = g.int(1, int(np.prod(shape[:q])))
        flat = g.np.permutation(int(np.prod(shape[:q])))[:n] if red == "none" else \
            g.np.integers(0, int(np.prod(shape[:q])), n)
        idx = np.stack(np.unravel_index(flat, shape[:q]), -1).astype(np.int64)
        upd = g.data([n] + shape[q:], dt)
        (y,) = b.node("ScatterND", [x, b.weight("i", idx), b.weight("u", upd)],
                      reduction=red if red != "none" or g.chance(0.5) else None)
    b.output(y)
    return b.case()


# ---------------------------------------------------------------- casts, softmax, norms
CAST_TYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


@family("cast")
def cast(g: Gen) -> Case:
    b = Builder(g, "cast", opset(g))
    src, dst = g.choice(CAST_TYPES), g.choice(CAST_TYPES)
    shape = g.shape(g.int(1, 2), 1, 6)
    kind = np.dtype(src).kind
    if kind == "f":
        x = g.data(shape, src, -300, 300) if g.chance(0.3) else g.data(shape, src)
    elif kind == "b":
        x = g.data(shape, src)
    else:
        info = np.iinfo(src)
        x = g.np.integers(info.min, info.max, size=shape, dtype=src, endpoint=True) if g.chance(0.4) \
            else g.data(shape, src, max(info.min, -100), min(info.max, 100))
    (y,) = b.node("Cast", [b.input("x", x)], to=int(_onnx_type(dst)))
    b.output(y, int(_onnx_type(dst)))
    return b.case(Tolerance(1e-6, 0.0))


def _onnx_type(dt) -> int:
    from .mutate import ONNX_TYPE
    return ONNX_TYPE[np.dtype(dt)]


@family("softmax")
def softmax(g: Gen) -> Case:
    b = Builder(g, "softmax", opset(g))
    opname = g.choice(["Softmax", "LogSoftmax", "Hardmax"])
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 6)
    if opname == "Hardmax" and g.chance(0.1):
        shape[g.int(0, rank - 1)] = 0
    x = g.data(shape, g.float_dtype(0.1, 0.1), -10, 10)
    if opname == "Hardmax" and g.chance(0.3):
        x = np.round(x / 4)
    (y,) = b.node(opname, [b.input("x", x)], axis=g.choice([None, g.int(-rank, rank - 1)]))
    b.output(y)
    return b.case()


@family("norm")
def norm(g: Gen) -> Case:
    op = opset(g)
    names = ["BatchNormalization", "InstanceNormalization", "MeanVarianceNormalization"]
    names += ["LayerNormalization"] if op >= 17 else []
    names += ["GroupNormalization"] if op >= 21 else []
    opname = g.choice(names)
    b = Builder(g, "norm", op)
    dt = fdt(g) if opname in ("BatchNormalization", "LayerNormalization") else F32
    shape = [g.int(1, 3), g.int(1, 4)] + g.shape(g.int(0 if opname == "LayerNormalization" else 1, 2), 1, 5)
    rank = len(shape)
    xv = g.data(shape, dt)
    if g.chance(0.08):
        xv = np.full(shape, 1.5, dt)  # zero variance
    x = b.input("x", xv)
    c = shape[1]
    eps = g.choice([None, 1e-5, 1e-3])
    if opname == "BatchNormalization":
        ins = [x, b.weight("s", g.data([c], dt)), b.weight("b", g.data([c], dt)),
               b.weight("m", g.data([c], dt)), b.weight("v", g.positive([c], dt))]
        (y,) = b.node(opname, ins, epsilon=eps)
    elif opname == "InstanceNormalization":
        (y,) = b.node(opname, [x, b.weight("s", g.data([c], dt)), b.weight("b", g.data([c], dt))], epsilon=eps)
    elif opname == "MeanVarianceNormalization":
        axes = g.choice(([None] if rank == 4 else []) + [[0, 2, 3][: rank - 1], [rank - 1], [1]])
        (y,) = b.node(opname, [x], axes=axes)
    elif opname == "LayerNormalization":
        axis = g.int(-rank, rank - 1)
        nshape = shape[axis % rank:]
        ins = [x, b.weight("s", g.data(nshape, dt))] + ([b.weight("b", g.data(nshape, dt))] if g.chance(0.6) else [])
        (y,) = b.node(opname, ins, axis=axis, epsilon=eps)
    else:
        ng = g.choice([d for d in range(1, c + 1) if c % d == 0])
        pshape = [c] if op >= 21 else [ng]
        ins = [x, b.weight("s", g.data(pshape, dt)), b.weight("b", g.data(pshape, dt))]
        (y,) = b.node(opname, ins, num_groups=ng, epsilon=eps)
    b.output(y)
    return b.case(Tolerance(1e-3, 1e-4))


@family("rnn")
def rnn(g: Gen) -> Case:
    b = Builder(g, "rnn", opset(g, 14))
    opname = g.choice(["RNN", "GRU", "LSTM"])
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[opname]
    direction = g.choice([None, "forward", "reverse", "bidirectional"])
    nd = 2 if direction == "bidirectional" else 1
    seq, batch, inp, hid = g.int(1, 4), g.int(1, 3), g.int(1, 4), g.int(1, 4)
    dt = F32
    layout = g.choice([None, 0])  # ORT 1.23 refuses layout=1
    xs = [batch, seq, inp] if layout == 1 else [seq, batch, inp]
    ins = [b.input("x", g.data(xs, dt, -2, 2)), b.weight("w", g.data([nd, gates * hid, inp], dt, -1, 1)),
           b.weight("r", g.data([nd, gates * hid, hid], dt, -1, 1))]
    if g.chance(0.7):
        ins.append(b.weight("b", g.data([nd, 2 * gates * hid], dt, -1, 1)))
    if g.chance(0.4):
        while len(ins) < 5:
            ins.append("")
        hs = [batch, nd, hid] if layout == 1 else [nd, batch, hid]
        ins.append(b.weight("h0", g.data(hs, dt, -1, 1)))
        if opname == "LSTM" and g.chance(0.5):
            ins.append(b.weight("c0", g.data(hs, dt, -1, 1)))
    acts = None
    if g.chance(0.3):
        pool = ["Sigmoid", "Tanh", "Relu", "HardSigmoid"]
        per = {"RNN": 1, "GRU": 2, "LSTM": 3}[opname]
        acts = [g.choice(pool) for _ in range(per * nd)]
    attrs = dict(hidden_size=hid, direction=direction, activations=acts, layout=layout)
    if opname == "GRU":
        attrs["linear_before_reset"] = g.choice([None, 0, 1])
    if g.chance(0.1):
        attrs["clip"] = 2.0
    n_out = 3 if opname == "LSTM" else 2
    outs = b.node(opname, ins, n_out, **attrs)
    for o in outs:
        b.output(o)
    return b.case(Tolerance(1e-3, 1e-4))


# ---------------------------------------------------------------- elementwise
UNARY = ["Abs", "Neg", "Relu", "Asinh", "Acosh", "Atanh", "Sin", "Cos", "Tan", "Asin", "Acos",
         "Atan", "Sinh", "Cosh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Sigmoid", "Tanh",
         "Softplus", "Softsign", "Round", "Sign", "Floor", "Ceil", "IsNaN", "IsInf", "Not"]


@family("unary")
def unary(g: Gen) -> Case:
    b = Builder(g, "unary", opset(g))
    name = g.choice(UNARY)
    shape = g.shape(g.int(0, 3), 1, 7)
    dt = g.float_dtype(0.15, 0.1 if name in ("Abs", "Neg", "Relu", "Exp", "Sqrt", "Tanh", "Sigmoid") else 0.0)
    scale = g.choice([1.0, 1.0, 1.0, 30.0, 100.0, 1e4]) if dt != np.float16 else 1.0
    if name == "Not":
        x = g.data(shape, np.bool_)
    elif name in ("Abs", "Neg", "Sign") and g.chance(0.2):
        x = g.data(shape, g.choice([np.int64, np.int32, np.int8]), -100, 100)
    elif name in ("Acosh",):
        x = (1 + np.abs(g.data(shape, dt, 0, 3) * scale)).astype(dt)
    elif name in ("Asin", "Acos", "Atanh"):
        x = g.data(shape, dt, -1, 1)
    else:
        x = (g.data(shape, dt) * scale).astype(dt)
    if name == "Round" and g.chance(0.5):
        x = (np.round(x * 2) / 2).astype(dt)  # halves
    (y,) = b.node(name, [b.input("x", x)])
    b.output(y)
    return b.case(ELEMENTWISE if dt != np.float16 else Tolerance(2e-3, 1e-4))


ACTIVATIONS = {
    "Elu": lambda g: dict(alpha=g.choice([None, 0.5, 2.0])),
    "Celu": lambda g: dict(alpha=g.choice([None, 0.5, 2.0])),
    "Selu": lambda g: dict(alpha=g.choice([None, 1.5]), gamma=g.choice([None, 1.1])),
    "LeakyRelu": lambda g: dict(alpha=g.choice([None, 0.1, 0.3])),
    "ThresholdedRelu": lambda g: dict(alpha=g.choice([None, 0.5, 2.0])),
    "HardSigmoid": lambda g: dict(alpha=g.choice([None, 0.3]), beta=g.choice([None, 0.4])),
    "HardSwish": lambda g: {},
    "Gelu": lambda g: dict(approximate=g.choice([None, "none", "tanh"])),
    "Mish": lambda g: {},
    "Softplus": lambda g: {},
    "Softsign": lambda g: {},
    "PRelu": lambda g: {},
}


@family("activation")
def activation(g: Gen) -> Case:
    name = g.choice(list(ACTIVATIONS))
    b = Builder(g, "activation", opset(g, 20 if name == "Gelu" else 13))
    shape = g.shape(g.int(1, 3), 1, 7)
    dt = g.float_dtype(0.15)
    scale = g.choice([1.0, 1.0, 10.0, 100.0, 1e4])
    x = b.input("x", (g.data(shape, dt) * scale).astype(dt))
    ins = [x]
    if name == "PRelu":
        ins.append(b.weight("slope", g.data(shape[-1:] if g.chance(0.5) else [1], dt)))
    (y,) = b.node(name, ins, **ACTIVATIONS[name](g))
    b.output(y)
    return b.case(ELEMENTWISE)


def broadcast_pair(g: Gen, rank_hi=3):
    shape = g.shape(g.int(0, rank_hi), 1, 5)
    other = [d if g.chance(0.7) else 1 for d in shape]
    other = other[g.int(0, len(other)):] if g.chance(0.3) else other
    return (shape, other) if g.chance(0.5) else (other, shape)


@family("binary")
def binary(g: Gen) -> Case:
    b = Builder(g, "binary", opset(g))
    name = g.choice(["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater",
                     "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu"])
    sa, sb = broadcast_pair(g)
    if name in ("And", "Or", "Xor"):
        dt = np.bool_
    elif name in ("Pow", "PRelu"):
        dt = fdt(g)
    else:
        dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    lo = -3 if np.dtype(dt).kind == "f" else -20
    a = g.data(sa, dt, lo, -lo)
    c = g.data(sb, dt, lo, -lo)
    if name == "Div" and np.dtype(dt).kind == "i":
        c = np.where(c == 0, 3, c).astype(dt)
    if name == "Pow":
        c = np.round(c * 2) / 2 if g.chance(0.5) else c
        c = c.astype(dt)
    if name in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual") and g.chance(0.5):
        a, c = np.round(a).astype(dt), np.round(c).astype(dt)
    (y,) = b.node(name, [b.input("a", a), b.weight("b", c)])
    b.output(y)
    return b.case(ELEMENTWISE)


@family("mod")
def mod(g: Gen) -> Case:
    b = Builder(g, "mod", opset(g))
    fm = g.choice([0, 1])
    dt = g.choice([np.int64, np.int32, np.int8]) if fm == 0 or g.chance(0.3) else fdt(g)
    sa, sb = broadcast_pair(g)
    if np.dtype(dt).kind == "f":
        scale = g.choice([1.0, 10.0, 1e4, 1e7])
        a = (g.data(sa, dt) * scale).astype(dt)
        c = g.data(sb, dt)
        c = np.where(c == 0, 1.5, c).astype(dt)
    else:
        a = g.data(sa, dt, -100, 100)
        c = g.data(sb, dt, -9, 9)
        c = np.where(c == 0, 7, c).astype(dt)
    (y,) = b.node("Mod", [b.input("a", a), b.weight("b", c)], fmod=fm if fm or g.chance(0.5) else None)
    b.output(y)
    return b.case(Tolerance(1e-4, 1e-5))


@family("variadic")
def variadic(g: Gen) -> Case:
    b = Builder(g, "variadic", opset(g))
    name = g.choice(["Max", "Min", "Sum", "Mean"])
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32]) if name in ("Max", "Min") else F32
    n = g.int(1, 4)
    shape = g.shape(g.int(0, 3), 1, 4)
    ins = []
    for i in range(n):
        s = [d if g.chance(0.7) else 1 for d in shape]
        s = s[g.int(0, len(s)):] if g.chance(0.2) else s
        ins.append(b.input(f"x{i}", g.data(s, dt, -5, 5)))
    (y,) = b.node(name, ins)
    b.output(y)
    return b.case(ELEMENTWISE)


@family("where_clip")
def where_clip(g: Gen) -> Case:
    b = Builder(g, "where_clip", opset(g))
    dt = g.choice([np.float32, np.float32, np.float64, np.int64, np.int32])
    if g.chance(0.5):
        sa, sb = broadcast_pair(g)
        cond = g.data(sa if g.chance(0.5) else sb, np.bool_)
        (y,) = b.node("Where", [b.input("c", cond), b.input("a", g.data(sa, dt)), b.weight("b", g.data(sb, dt))])
    else:
        x = b.input("x", g.data(g.shape(g.int(0, 3), 1, 5), dt, -5, 5))
        lo = b.const("lo", np.array(g.choice([-1, 0, 2]), dt)) if g.chance(0.6) else ""
        hi = b.const("hi", np.array(g.choice([1, 3, -2]), dt)) if g.chance(0.6) else ""
        ins = [x, lo, hi]
        while ins and ins[-1] == "":
            ins.pop()
        (y,) = b.node("Clip", ins)
    b.output(y)
    return b.case()


# ---------------------------------------------------------------- shapes
@family("shape_ops")
def shape_ops(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "shape_ops", op)
    rank = g.int(1, 4)
    shape = g.shape(rank, 1, 4)
    x = b.input("x", g.data(shape, g.choice([np.float32, np.int64, np.float64])))
    name = g.choice(["Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"])
    if name == "Transpose":
        (y,) = b.node(name, [x], perm=list(g.np.permutation(rank)) if g.chance(0.8) else None)
    elif name == "Reshape":
        n = int(np.prod(shape))
        dims = []
        rest = n
        while rest > 1 and len(dims) < 3:
            d = g.choice([d for d in range(1, rest + 1) if rest % d == 0])
            dims.append(d)
            rest //= d
        dims.append(rest)
        if g.chance(0.4):
            dims[g.int(0, len(dims) - 1)] = -1
        if g.chance(0.2) and len(dims) <= rank and dims[0] == shape[0]:
            dims[0] = 0
        (y,) = b.node(name, [x, b.const("shape", np.array(dims, np.int64))])
    elif name == "Squeeze":
        ones = [i for i, d in enumerate(shape) if d == 1]
        ins = [x]
        if ones and g.chance(0.7):
            ins.append(b.const("axes", np.array(g.rng.sample(ones, g.int(1, len(ones))), np.int64)))
        (y,) = b.node(name, ins)
    elif name == "Unsqueeze":
        n = g.int(1, 2)
        axes = g.rng.sample(range(-(rank + n), rank + n), n)
        if len({a % (rank + n) for a in axes}) < n:
            axes = axes[:1]
        (y,) = b.node(name, [x, b.const("axes", np.array(axes, np.int64))])
    else:
        (y,) = b.node(name, [x], axis=g.int(-rank, rank))
    b.output(y)
    return b.case()


@family("expand_tile")
def expand_tile(g: Gen) -> Case:
    b = Builder(g, "expand_tile", opset(g))
    shape = g.shape(g.int(1, 3), 1, 3)
    x = b.input("x", g.data(shape, g.choice([np.float32, np.int64])))
    if g.chance(0.5):
        target = [d if d != 1 or g.chance(0.3) else g.int(1, 4) for d in shape]
        target = g.shape(g.int(0, 2), 1, 3) + target
        target = [1 if g.chance(0.15) else t for t in target]
        (y,) = b.node("Expand", [x, b.const("shape", np.array(target, np.int64))])
    else:
        (y,) = b.node("Tile", [x, b.const("reps", np.array([g.int(0, 3) for _ in shape], np.int64))])
    b.output(y)
    return b.case()


@family("concat_split")
def concat_split(g: Gen) -> Case:
    op = opset(g)
    b = Builder(g, "concat_split", op)
    rank = g.int(1, 3)
    axis = g.int(-rank, rank - 1)
    shape = g.shape(rank, 1, 4)
    dt = g.choice([np.float32, np.int64])
    if g.chance(0.5):
        ins = []
        for i in range(g.int(1, 4)):
            s = list(shape)
            s[axis] = g.int(0, 3)
            ins.append(b.input(f"x{i}", g.data(s, dt)))
        (y,) = b.node("Concat", ins, axis=axis)
        b.output(y)
    else:
        shape[axis] = g.int(1, 6)
        x = b.input("x", g.data(shape, dt))
        d = shape[axis]
        if g.chance(0.5):
            cuts = sorted(g.int(0, d) for _ in range(g.int(0, 2)))
            sizes = np.diff([0] + cuts + [d]).astype(np.int64)
            outs = b.node("Split", [x, b.const("split", sizes)], len(sizes), axis=axis)
        elif op >= 18:
            n = g.int(1, d)
            outs = b.node("Split", [x], n, axis=axis, num_outputs=n)
        else:
            n = g.choice([k for k in range(1, d + 1) if d % k == 0])
            outs = b.node("Split", [x], n, axis=axis)
        for o in outs:
            b.output(o)
    return b.case()


@family("depth_space")
def depth_space(g: Gen) -> Case:
    b = Builder(g, "depth_space", opset(g))
    bs = g.int(1, 3)
    if g.chance(0.5):
        x = g.data([g.int(1, 2), bs * bs * g.int(1, 2), g.int(1, 3), g.int(1, 3)], fdt(g))
        (y,) = b.node("DepthToSpace", [b.input("x", x)], blocksize=bs, mode=g.choice([None, "DCR", "CRD"]))
    else:
        x = g.data([g.int(1, 2), g.int(1, 3), bs * g.int(1, 3), bs * g.int(1, 3)], fdt(g))
        (y,) = b.node("SpaceToDepth", [b.input("x", x)], blocksize=bs)
    b.output(y)
    return b.case()


@family("trilu")
def trilu(g: Gen) -> Case:
    b = Builder(g, "trilu", opset(g, 14))
    shape = g.shape(g.int(2, 4), 1, 5)
    x = b.input("x", g.data(shape, g.choice([np.float32, np.int64, np.float64])))
    ins = [x] + ([b.const("k", np.array(g.int(-6, 6), np.int64))] if g.chance(0.6) else [])
    (y,) = b.node("Trilu", ins, upper=g.choice([None, 0, 1]))
    b.output(y)
    return b.case()


# ---------------------------------------------------------------- chains
@family("chain_cnn")
def chain_cnn(g: Gen) -> Case:
    b = Builder(g, "chain_cnn", opset(g))
    c, h = g.int(1, 3), g.int(4, 8)
    co = g.int(1, 4)
    x = b.input("x", g.data([g.int(1, 2), c, h, h]))
    k = g.choice([1, 3])
    (t,) = b.node("Conv", [x, b.weight("w", g.data([co, c, k, k]))], pads=[k // 2] * 4)
    (t,) = b.node(g.choice(["Relu", "Sigmoid", "LeakyRelu", "Tanh"]), [t])
    (t,) = b.node(g.choice(["MaxPool", "AveragePool"]), [t], kernel_shape=[2, 2], strides=[2, 2],
                  ceil_mode=g.choice([None, 1]))
    (t,) = b.node("Flatten", [t])
    ceil = attr(b.nodes[-2], "ceil_mode", 0)
    feat = co * ((h + 1) // 2 if ceil else h // 2) ** 2
    (y,) = b.node("Gemm", [t, b.weight("fc", g.data([g.int(1, 5), feat])), b.weight("fb", g.data([1]))],
                  transB=1)
    b.output(y)
    return b.case(CONTRACTION)


@family("chain_attention")
def chain_attention(g: Gen) -> Case:
    b = Builder(g, "chain_attention", opset(g))
    s, d = g.int(1, 6), g.int(1, 8)
    q = b.input("q", g.data([g.int(1, 2), s, d]))
    kt = b.weight("kt", g.data([d, s]))
    (t,) = b.node("MatMul", [q, kt])
    if g.chance(0.7):
        (t,) = b.node("Mul", [t, b.const("scale", np.array(1 / np.sqrt(d), np.float32))])
    (t,) = b.node("Add", [t, b.weight("mask", g.data([s, s], lo=-2, hi=0))])
    (t,) = b.node(g.choice(["Softmax", "LogSoftmax"]), [t], axis=-1)
    if g.chance(0.5):
        (t,) = b.node("MatMul", [t, b.weight("v", g.data([s, g.int(1, 4)]))])
    b.output(t)
    return b.case(CONTRACTION)


@family("chain_layernorm")
def chain_layernorm(g: Gen) -> Case:
    b = Builder(g, "chain_layernorm", opset(g, 20))
    d, h = g.int(2, 8), g.int(1, 8)
    x = b.input("x", g.data([g.int(1, 2), g.int(1, 4), d]))
    (t,) = b.node("LayerNormalization", [x, b.weight("g", g.data([d])), b.weight("be", g.data([d]))], axis=-1)
    (t,) = b.node("MatMul", [t, b.weight("w", g.data([d, h]))])
    (t,) = b.node("Add", [t, b.weight("bias", g.data([h]))])
    (t,) = b.node("Gelu", [t], approximate=g.choice([None, "tanh"]))
    b.output(t)
    return b.case(CONTRACTION)

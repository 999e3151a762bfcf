"""Seeded mutation: the random source every family draws its attributes,
shapes and data from, the sprinkling of special values, and model assembly.

Every random choice of mutant k of seed s comes from one
`random.Random(mutant_seed(s, k))`, so a mutant is reproducible alone
(`--seed s --only k`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .compare import Tolerance

#: Values sprinkled into float inputs of a fraction of mutants.
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-40, -1e-40, 1e4, -1e4]
#: Fraction of mutants whose float inputs get special values.
SPECIAL_FRACTION = 0.2
IR_VERSION = 10


def mutant_seed(seed: int, k: int) -> int:
    """The RNG seed of mutant `k` of run seed `seed` (independent of jobs)."""
    return (seed * 0x9E3779B1 + k * 0x85EBCA77 + 0x27D4EB2F) & ((1 << 63) - 1)


@dataclass
class Case:
    """One generated model with its inputs (in graph-input order)."""

    family: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    tol: Tolerance = field(default_factory=Tolerance)
    specials: bool = False

    # --- helpers for divergence predicates ---
    def nodes(self, op: str | None = None) -> list[onnx.NodeProto]:
        """The graph's nodes, or those of type `op`."""
        return [n for n in self.model.graph.node if op is None or n.op_type == op]

    def ops(self) -> set[str]:
        return {n.op_type for n in self.model.graph.node}

    def opset(self) -> int:
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))

    def value(self, name: str) -> np.ndarray | None:
        """The value of graph input or initializer `name`, if it is one."""
        for i, x in zip(self.model.graph.input, self.inputs):
            if i.name == name:
                return x
        for t in self.model.graph.initializer:
            if t.name == name:
                return numpy_helper.to_array(t)
        return None

    def float_values(self) -> list[np.ndarray]:
        """Every float input and initializer."""
        vals = list(self.inputs) + [numpy_helper.to_array(t) for t in self.model.graph.initializer]
        return [v for v in vals if v.dtype.kind == "f"]

    def has_nan(self) -> bool:
        return any(np.isnan(v).any() for v in self.float_values())

    def has_inf(self) -> bool:
        return any(np.isinf(v).any() for v in self.float_values())

    def has_nonfinite(self) -> bool:
        return self.has_nan() or self.has_inf()


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute `name` of `node` as a Python value, else `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class Gen:
    """The random source of one mutant, with the draws families need."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(self.rng.getrandbits(63))

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return self.rng.randint(lo, hi)

    def shape(self, rank: int, lo: int = 1, hi: int = 5) -> list[int]:
        return [self.int(lo, hi) for _ in range(rank)]

    def float_dtype(self, f64: float = 0.1, f16: float = 0.0) -> type:
        r = self.rng.random()
        if r < f64:
            return np.float64
        if r < f64 + f16:
            return np.float16
        return np.float32

    def data(self, shape, dtype=np.float32, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
        """Uniform data in [lo, hi) (integers: [lo, hi])."""
        dt = np.dtype(dtype)
        if dt.kind == "f":
            return self.np.uniform(lo, hi, size=shape).astype(dt)
        if dt == np.bool_:
            return self.np.integers(0, 2, size=shape).astype(bool)
        return self.np.integers(int(lo), int(hi) + 1, size=shape).astype(dt)

    def positive(self, shape, dtype=np.float32, lo=0.1, hi=3.0) -> np.ndarray:
        return self.data(shape, dtype, lo, hi)

    def sprinkle(self, x: np.ndarray, count: int | None = None) -> np.ndarray:
        """`x` with a few special values at random positions."""
        if x.dtype.kind != "f" or x.size == 0:
            return x
        x = x.copy()
        flat = x.reshape(-1)
        n = count if count is not None else self.int(1, max(1, min(4, flat.size)))
        with np.errstate(over="ignore"):
            for _ in range(n):
                flat[self.int(0, flat.size - 1)] = self.choice(SPECIALS)
        return x


ONNX_TYPE = {
    np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int16): TensorProto.INT16,
    np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.uint16): TensorProto.UINT16, np.dtype(np.uint32): TensorProto.UINT32,
    np.dtype(np.uint64): TensorProto.UINT64, np.dtype(np.bool_): TensorProto.BOOL,
}


class Builder:
    """Collects the nodes, inputs and initializers of one mutant's graph."""

    def __init__(self, g: Gen, family: str, opset: int):
        self.g = g
        self.family = family
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[tuple[str, np.ndarray]] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[tuple[str, int | None]] = []
        self._n = 0

    def name(self, stem: str = "t") -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def input(self, name: str, x: np.ndarray) -> str:
        """A graph input fed with `x`."""
        self.inputs.append((name, np.asarray(x)))
        return name

    def weight(self, name: str, x: np.ndarray, as_input: bool | None = None) -> str:
        """A weight: an initializer or (by a coin flip, or `as_input`) a graph input."""
        if as_input is None:
            as_input = self.g.chance(0.3)
        if as_input:
            return self.input(name, x)
        return self.const(name, x)

    def const(self, name: str, x: np.ndarray) -> str:
        """An initializer (for values ops need constant: shapes, axes, pads...)."""
        self.inits.append(numpy_helper.from_array(np.asarray(x), name))
        return name

    def node(self, op: str, ins: list[str], n_out: int = 1, **attrs) -> list[str]:
        """Appends a node; returns its output names."""
        outs = [self.name("y") for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs

    def output(self, name: str, elem_type: int | None = None) -> None:
        self.outputs.append((name, elem_type))

    def case(self, tol: Tolerance | None = None, sprinkle: bool = True) -> Case:
        """The finished mutant: the model (types of outputs from shape
        inference) and its inputs, special values sprinkled in a fraction."""
        g = self.g
        specials = sprinkle and g.chance(SPECIAL_FRACTION)
        feeds = []
        for name, x in self.inputs:
            if specials and x.dtype.kind == "f" and g.chance(0.7):
                x = g.sprinkle(x)
            feeds.append((name, x))
        vin = [helper.make_tensor_value_info(n, ONNX_TYPE[x.dtype], list(x.shape)) for n, x in feeds]
        graph = helper.make_graph(self.nodes, self.family, vin, [], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=IR_VERSION)
        inferred_vi = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in inferred.graph.value_info:
                inferred_vi[vi.name] = vi
        except Exception:
            pass
        outs = []
        unshaped = []
        for name, et in self.outputs:
            vi = inferred_vi.get(name)
            tt = vi.type.tensor_type if vi is not None else None
            if tt is not None and tt.elem_type and tt.HasField("shape") and et in (None, tt.elem_type):
                outs.append(vi)
                continue
            t = onnx.TypeProto()
            t.tensor_type.elem_type = et or (tt.elem_type if tt is not None and tt.elem_type else
                                             ONNX_TYPE[feeds[0][1].dtype] if feeds else TensorProto.FLOAT)
            unshaped.append(len(outs))
            outs.append(helper.make_value_info(name, t))
        if unshaped:
            # Shape inference did not say: the rank from a trial run of ONNX
            # Runtime (sizes left symbolic); if that fails the model is invalid
            # and the checker says so.
            try:
                from .oracle import run_ort
                trial = onnx.ModelProto()
                trial.CopyFrom(model)
                trial.graph.output.extend(outs)
                got = run_ort(trial, [x for _, x in feeds])
                for i in unshaped:
                    outs[i].type.tensor_type.shape.SetInParent()
                    for j in range(got[i].ndim):
                        outs[i].type.tensor_type.shape.dim.add().dim_param = f"{outs[i].name}_d{j}"
            except Exception:
                pass
        model.graph.output.extend(outs)
        return Case(self.family, model, [x for _, x in feeds], tol or Tolerance(), specials)

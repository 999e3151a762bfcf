"""The oracles: ONNX Runtime (first) and onnx.reference.ReferenceEvaluator
(the arbiter when kiln and ORT disagree)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

ORT_NAME = f"onnxruntime {ort.__version__}"
REF_NAME = f"onnx.reference {onnx.__version__}"

ort.set_default_logger_severity(4)


def run_ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs `model` on ORT's CPU provider with one thread; raises on refusal."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = dict(zip(names, inputs))
    with np.errstate(all="ignore"):
        return [np.asarray(o) for o in sess.run(None, feeds)]


def run_reference(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Runs `model` with ONNX's reference evaluator; raises on failure."""
    ev = ReferenceEvaluator(model)
    feeds = {i.name: x for i, x in zip(model.graph.input, inputs)}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = ev.run(None, feeds)
    return [np.asarray(o) for o in outs]


def to_float64(model: onnx.ModelProto, inputs: list[np.ndarray]):
    """A float64 copy of `model` and `inputs`: float32 (and float16)
    initializers, inputs, Constant values, graph value types and Cast/
    CastLike targets become double, so that the same graph is evaluated
    with f64 arithmetic (for checking which side of an f32 overflow is
    right). Returns (model, inputs)."""
    from onnx import TensorProto, numpy_helper
    narrow = (TensorProto.FLOAT, TensorProto.FLOAT16)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type in narrow:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tt = vi.type.tensor_type
        if tt.elem_type in narrow:
            tt.elem_type = TensorProto.DOUBLE
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i in narrow:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in narrow:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    ins = [x.astype(np.float64) if x.dtype in (np.float32, np.float16) else x for x in inputs]
    return m, ins


def run_float64(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """`model` evaluated in float64 (see to_float64): ORT where it has the
    double kernels, else the reference evaluator; raises if neither runs."""
    m, ins = to_float64(model, inputs)
    try:
        return run_ort(m, ins)
    except Exception:
        return run_reference(m, ins)

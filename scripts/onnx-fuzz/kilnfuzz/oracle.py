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

"""Makes kiln's transformer ONNX fixtures (issue 18): tiny BERT, GPT-2, ViT,
DistilBERT, RoBERTa and Llama models with random weights (fixed seeds, configs
built here: nothing is downloaded), exported by PyTorch's exporters with dynamic
batch and sequence dims (see PLAN), run by ONNX Runtime at several bindings.

    scripts/transformer-fixtures.sh               # everything (run through the pinned venv)
    scripts/transformer-fixtures.sh --shape-ops   # only SHAPE_OPS.md, from the .onnx files there

Writes into tests/onnx/transformers/:
  <fixture>.onnx                              self-contained model (no external data)
  <fixture>/case<k>/<name>.npy                each case's inputs and ONNX Runtime's outputs
  manifest.json                               fixtures, their inputs/outputs/cases, versions
  SHAPE_OPS.md                                op histograms and the ops computing shapes

The exporters: TorchScript (`dynamo=False`, opset 17, `dynamic_axes`) and
dynamo (`dynamo=True`, opset 18, `dynamic_shapes` with `torch.export.Dim`),
and at other opsets (PLAN). An export that fails is recorded in the manifest
with its error text. tests/tests/onnx_transformers.rs reads the result.
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import traceback
import warnings

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "onnx", "transformers")

VOCAB = 64
MAX_POS = 64
SEED = 18

# (batch, seq) bindings run for the text models: seq 1, an odd seq, a long one.
TEXT_CASES = [(1, 1), (2, 7), (3, 16), (2, 33)]
# ViT's sequence is fixed by the image size (16 patches + CLS): batch only.
VIT_CASES = [1, 2, 3]
# The shapes the models are traced / exported at (not 0 or 1, which the
# exporters would specialize).
TRACE_BATCH, TRACE_SEQ = 2, 5

SHAPE_DOC = "SHAPE_OPS.md"


# ------------------------------------------------------------------ models


def build_models():
    """The tiny models, each as (name, module, input specs, output names,
    attention implementation). Random weights from SEED (+ k)."""
    import torch
    import transformers

    class Text(torch.nn.Module):
        """A text model's last_hidden_state as one tensor."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]

    class Image(torch.nn.Module):
        """An image model's last_hidden_state as one tensor."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values, return_dict=False)[0]

    models = []

    torch.manual_seed(SEED)
    bert_cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POS,
        attn_implementation="sdpa",
    )
    bert = transformers.BertModel(bert_cfg, add_pooling_layer=False).eval()
    models.append(
        dict(
            name="bert",
            module=Text(bert).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=bert.config._attn_implementation,
            config=bert_cfg.to_diff_dict(),
        )
    )

    torch.manual_seed(SEED + 1)
    gpt2_cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        use_cache=False,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation="sdpa",
    )
    gpt2 = transformers.GPT2Model(gpt2_cfg).eval()
    models.append(
        dict(
            name="gpt2",
            module=Text(gpt2).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=gpt2.config._attn_implementation,
            config=gpt2_cfg.to_diff_dict(),
        )
    )

    torch.manual_seed(SEED + 2)
    vit_cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attn_implementation="sdpa",
    )
    vit = transformers.ViTModel(vit_cfg, add_pooling_layer=False).eval()
    models.append(
        dict(
            name="vit",
            module=Image(vit).eval(),
            inputs=["pixel_values"],
            outputs=["last_hidden_state"],
            attn=vit.config._attn_implementation,
            config=vit_cfg.to_diff_dict(),
        )
    )

    torch.manual_seed(SEED + 3)
    distilbert_cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=MAX_POS,
        attn_implementation="sdpa",
    )
    distilbert = transformers.DistilBertModel(distilbert_cfg).eval()
    models.append(
        dict(
            name="distilbert",
            module=Text(distilbert).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=distilbert.config._attn_implementation,
            config=distilbert_cfg.to_diff_dict(),
        )
    )

    # BERT's weights with eager attention (matmuls and a softmax instead of
    # aten::scaled_dot_product_attention), for TorchScript below opset 14.
    bert_eager_cfg = transformers.BertConfig(**{**bert_cfg.to_dict(), "attn_implementation": "eager"})
    bert_eager = transformers.BertModel(bert_eager_cfg, add_pooling_layer=False).eval()
    bert_eager.load_state_dict(bert.state_dict())
    models.append(
        dict(
            key="bert-eager",
            name="bert",
            module=Text(bert_eager).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=bert_eager.config._attn_implementation,
            config=bert_eager_cfg.to_diff_dict(),
        )
    )

    # RoBERTa: its position ids are padding_idx + the cumulative sum of
    # (input_ids != padding_idx) along seq (CumSum over the symbolic axis),
    # so positions reach seq + padding_idx: max_position_embeddings is
    # MAX_POS + 2. The cases' masked tails hold the padding id (pad_id).
    torch.manual_seed(SEED + 4)
    roberta_cfg = transformers.RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POS + 2,
        pad_token_id=ROBERTA_PAD,
        bos_token_id=0,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    roberta = transformers.RobertaModel(roberta_cfg, add_pooling_layer=False).eval()
    models.append(
        dict(
            name="roberta",
            module=Text(roberta).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=roberta.config._attn_implementation,
            config=roberta_cfg.to_diff_dict(),
            pad_id=ROBERTA_PAD,
        )
    )

    # Llama: RMSNorm, rotary position embeddings (default rope), SwiGLU,
    # grouped-query attention (one key/value head for two query heads), a
    # causal mask combined with the padding mask; no cache.
    torch.manual_seed(SEED + 5)
    llama_cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=LLAMA_KV_HEADS,
        intermediate_size=64,
        max_position_embeddings=MAX_POS,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        attn_implementation="sdpa",
    )
    llama = transformers.LlamaModel(llama_cfg).eval()
    models.append(
        dict(
            name="llama",
            module=Text(llama).eval(),
            inputs=["input_ids", "attention_mask"],
            outputs=["last_hidden_state"],
            attn=llama.config._attn_implementation,
            config=llama_cfg.to_diff_dict(),
        )
    )
    return models


# RoBERTa's padding id (its position ids count the other tokens).
ROBERTA_PAD = 1
# Llama's key/value heads (grouped-query attention: 2 query heads share 1).
LLAMA_KV_HEADS = 1


# The fixtures, in the order they are made: (model, exporter, opsets to try,
# named with the opset). A fixture is named `<model>-<exporter>` at the
# exporters' default opsets (17, 18) and `<model>-<exporter>-opset<NN>` for
# the opset variants: BERT through TorchScript at opset 13 and at the
# exporter's highest, 20; GPT-2 through TorchScript at opset 14 and through
# dynamo at the highest of 20, 21, 22 that works. For a variant, the highest
# of its opsets that works is kept (tried highest first); an opset "works"
# when the export succeeds, the file passes onnx's full check, declares that
# opset, and ONNX Runtime loads it. Every opset tried is recorded in the
# manifest entry's `opset_tries`. The first six come first and in their
# original order, so that adding fixtures leaves those files byte-identical
# (but see export_dynamo). Models are keys of build_models(); `bert-eager`
# is BERT with the same weights and eager attention, for opset 13, where the
# TorchScript exporter has no aten::scaled_dot_product_attention (it needs 14).
PLAN = [
    ("bert", "torchscript", [17], False),
    ("bert", "dynamo", [18], False),
    ("gpt2", "torchscript", [17], False),
    ("gpt2", "dynamo", [18], False),
    ("vit", "torchscript", [17], False),
    ("vit", "dynamo", [18], False),
    ("distilbert", "torchscript", [17], False),
    ("distilbert", "dynamo", [18], False),
    # TorchScript at an older opset and at its highest.
    ("bert-eager", "torchscript", [13], True),
    ("bert", "torchscript", [20, 19, 18], True),
    ("gpt2", "torchscript", [14], True),
    # The dynamo exporter's highest.
    ("gpt2", "dynamo", [22, 21, 20], True),
    # Added later, after the others so that those stay byte-identical:
    # RoBERTa (CumSum position ids) and Llama (rotary embeddings, GQA).
    ("roberta", "torchscript", [17], False),
    ("roberta", "dynamo", [18], False),
    ("llama", "torchscript", [17], False),
    ("llama", "dynamo", [18], False),
]


def text_inputs(rng, batch, seq, pad_id=None):
    """input_ids in [0, VOCAB) and an attention mask whose rows after the
    first end in zeros (right padding), each row keeping one 1 at least.
    With `pad_id`, the ids are in (pad_id, VOCAB) and pad_id where masked."""
    low = 0 if pad_id is None else pad_id + 1
    ids = rng.integers(low, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for r in range(1, batch):
        keep = max(1, seq - (r * seq) // (batch + 1) - r)
        mask[r, keep:] = 0
    if pad_id is not None:
        ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


def vit_inputs(rng, batch):
    return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def cases_for(model, rng):
    """Each case as (batch, seq, {input name: array})."""
    if model["name"] == "vit":
        return [(b, None, vit_inputs(rng, b)) for b in VIT_CASES]
    return [(b, s, text_inputs(rng, b, s, model.get("pad_id"))) for b, s in TEXT_CASES]


def example_inputs(model):
    rng = np.random.default_rng(SEED + 100)
    if model["name"] == "vit":
        return vit_inputs(rng, TRACE_BATCH)
    return text_inputs(rng, TRACE_BATCH, TRACE_SEQ, model.get("pad_id"))


# --------------------------------------------------------------- exporting


def export_torchscript(model, path, opset):
    import torch

    args = tuple(torch.from_numpy(a) for a in example_inputs(model).values())
    dyn = {}
    for name in model["inputs"]:
        dyn[name] = {0: "batch"} if name == "pixel_values" else {0: "batch", 1: "seq"}
    for name in model["outputs"]:
        dyn[name] = {0: "batch"} if model["name"] == "vit" else {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model["module"],
            args,
            path,
            dynamo=False,
            opset_version=opset,
            input_names=model["inputs"],
            output_names=model["outputs"],
            dynamic_axes=dyn,
            do_constant_folding=True,
        )


def export_dynamo(model, path, opset):
    # The dynamo exporter records each node's Python stack in its metadata
    # (`pkg.torch.onnx.stack_trace`): this file's path and the lines of
    # Text.forward / Image.forward in build_models. Moving those lines (or
    # this checkout) changes the dynamo fixtures' bytes, not their graphs.
    import onnx
    import torch
    from torch.export import Dim

    args = tuple(torch.from_numpy(a) for a in example_inputs(model).values())
    batch = Dim("batch", min=1, max=1024)
    seq = Dim("seq", min=1, max=MAX_POS)
    shapes = {}
    for name in model["inputs"]:
        shapes[name] = {0: batch} if name == "pixel_values" else {0: batch, 1: seq}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model["module"],
            args,
            dynamo=True,
            opset_version=opset,
            input_names=model["inputs"],
            output_names=model["outputs"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        scratch = os.path.join(tmp, "m.onnx")
        program.save(scratch)
        m = onnx.load(scratch)  # loads external data, if any was written
    onnx.save(m, path, save_as_external_data=False)


EXPORTERS = {"torchscript": export_torchscript, "dynamo": export_dynamo}


# --------------------------------------------------------------- describing

ONNX_DTYPES = {1: "float32", 7: "int64", 6: "int32", 9: "bool", 10: "float16", 11: "float64"}


def describe_values(values):
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out.append({"name": v.name, "dtype": ONNX_DTYPES.get(t.elem_type, t.elem_type), "dims": dims})
    return out


# ---------------------------------------------------------------- shape ops

# The inputs of ops that are shapes, sizes, indices or axes: (op, input slots).
SHAPE_SINKS = {
    "Reshape": [1],
    "Expand": [1],
    "ConstantOfShape": [0],
    "Range": [0, 1, 2],
    "Slice": [1, 2, 3, 4],
    "Tile": [1],
    "Unsqueeze": [1],
    "Squeeze": [1],
    "Resize": [2, 3],
    "Pad": [1, 2, 3],
    "TopK": [1],
    "OneHot": [1],
    "Split": [1],
    "ReduceSum": [1],
    "ReduceMean": [1],
    "ReduceMax": [1],
    "Trilu": [1],
}


def _const_value(name, inits, producers):
    """A small constant's value as a short string, or None."""
    from onnx import numpy_helper

    t = None
    if name in inits:
        t = numpy_helper.to_array(inits[name])
    elif name in producers and producers[name].op_type == "Constant":
        for a in producers[name].attribute:
            if a.name == "value":
                t = numpy_helper.to_array(a.t)
            elif a.name in ("value_int", "value_float"):
                return str(a.i if a.name == "value_int" else a.f)
            elif a.name == "value_ints":
                return str(list(a.ints))
    if t is None:
        return None
    if t.size <= 8:
        return str(t.tolist())
    return f"const{list(t.shape)}"


def _attrs(node):
    out = []
    for a in node.attribute:
        if a.name in ("axis", "axes", "start", "end", "to", "keepdims", "upper"):
            import onnx

            out.append(f"{a.name}={onnx.helper.get_attribute_value(a)}")
    return ",".join(out)


def shape_report(path):
    """Op histogram and the expressions feeding shape-like inputs."""
    import onnx

    m = onnx.load(path)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producers = {}
    for n in g.node:
        for o in n.output:
            producers[o] = n
    graph_inputs = {i.name for i in g.input}
    hist = collections.Counter(n.op_type for n in g.node)

    def expr(name, depth):
        c = _const_value(name, inits, producers)
        if c is not None:
            return c
        if name in graph_inputs:
            return name
        n = producers.get(name)
        if n is None:
            return f"?{name}"
        if n.op_type in ("Shape", "Size"):
            src = n.input[0]
            src_s = src if src in graph_inputs else f"<{producers[src].op_type if src in producers else src}>"
            a = _attrs(n)
            return f"{n.op_type}({src_s}{',' + a if a else ''})"
        if depth == 0:
            return "…"
        args = [expr(i, depth - 1) for i in n.input if i]
        a = _attrs(n)
        if a:
            args.append(a)
        return f"{n.op_type}({', '.join(args)})"

    # Shape-valued tensors: Shape / Size outputs and whatever is computed
    # from them and constants alone.
    shape_valued = set()
    shape_nodes = collections.Counter()
    for n in g.node:  # nodes are topologically sorted
        ins = [i for i in n.input if i]
        if n.op_type in ("Shape", "Size"):
            shape_valued.update(n.output)
            shape_nodes[n.op_type] += 1
            continue
        if n.op_type == "Constant":
            continue
        if ins and any(i in shape_valued for i in ins) and all(
            i in shape_valued or i in inits or (i in producers and producers[i].op_type == "Constant")
            for i in ins
        ):
            shape_valued.update(n.output)
            shape_nodes[n.op_type] += 1
    # Where shape values leave shape arithmetic: (op, slot) -> count.
    consumers = collections.Counter()
    for n in g.node:
        if n.op_type in ("Shape", "Size") or all(o in shape_valued for o in n.output):
            continue
        for k, i in enumerate(n.input):
            if i in shape_valued:
                consumers[f"{n.op_type}[{k}]"] += 1
    sinks = collections.Counter()
    for n in g.node:
        for k in SHAPE_SINKS.get(n.op_type, []):
            if k < len(n.input) and n.input[k]:
                e = expr(n.input[k], 6)
                if _const_value(n.input[k], inits, producers) is not None:
                    continue  # a constant shape: nothing to compute
                sinks[f"{n.op_type}[{k}] <- {e}"] += 1
    return {
        "histogram": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "shape_nodes": dict(sorted(shape_nodes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "consumers": dict(sorted(consumers.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sinks": dict(sorted(sinks.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def write_shape_doc(manifest):
    lines = [
        "# Shape ops in the transformer fixtures",
        "",
        "Generated by `scripts/transformer-fixtures.sh --shape-ops` (make.py); do not edit.",
        "",
        "For each fixture: the ONNX op histogram; the ops that compute on shape",
        "values (a `Shape`/`Size` output, or anything computed from those and",
        "constants only: shape arithmetic, but also attention masks and position",
        "ids built with `Range` from a dim); where those values meet data",
        "(consumer op[input slot]); and every non-constant shape-like input (a `Reshape`'s",
        "shape, an `Expand`'s shape, a `Range`'s bounds, a `Slice`'s starts/ends,",
        "an `Unsqueeze`'s axes, ...) written as the expression computing it, six",
        "producers deep (`…` below that). `Shape(x)` is the shape of graph input",
        "`x`; `Shape(<Op>)` the shape of an intermediate value made by `Op`.",
        "Constants of at most 8 elements are written out.",
        "",
    ]
    for f in manifest["fixtures"]:
        lines.append(f"## {f['name']}")
        lines.append("")
        if "error" in f:
            lines += ["Export failed:", "", "```", f["error"].strip()[-2000:], "```", ""]
            continue
        rep = shape_report(os.path.join(OUT, f["file"]))
        ins = ", ".join(f"{i['name']} {i['dtype']}{i['dims']}" for i in f["inputs"])
        outs = ", ".join(f"{o['name']} {o['dtype']}{o['dims']}" for o in f["outputs"])
        lines.append(f"`{f['file']}`: {f['exporter']}, opset {f['opset']}, "
                     f"{sum(rep['histogram'].values())} nodes; inputs {ins}; outputs {outs}.")
        lines.append("")
        lines.append("Ops: " + ", ".join(f"{k} {v}" for k, v in rep["histogram"].items()) + ".")
        lines.append("")
        lines.append("Computed from shapes and constants alone (shape arithmetic, and masks / positions built from shapes): " + (", ".join(f"{k} {v}" for k, v in rep["shape_nodes"].items()) or "none") + ".")
        lines.append("")
        lines.append("Shape values used by: " + (", ".join(f"{k} {v}" for k, v in rep["consumers"].items()) or "nothing") + ".")
        lines.append("")
        lines.append("Computed shape-like inputs (count × expression):")
        lines.append("")
        if not rep["sinks"]:
            lines.append("- none")
        for k, v in rep["sinks"].items():
            lines.append(f"- {v} × `{k}`")
        lines.append("")
    with open(os.path.join(OUT, SHAPE_DOC), "w") as fh:
        fh.write("\n".join(lines))


# ------------------------------------------------------------------- making


def versions():
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def model_opset(m):
    """The default-domain opset a model declares."""
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def try_export(model, exporter, opset, path):
    """Exports `model` at `opset` to `path` and checks the result works (see
    the module's doc); raises, with `path` removed, when it does not."""
    import onnx
    import onnxruntime as ort

    try:
        EXPORTERS[exporter](model, path, opset)
        onnx.checker.check_model(path, full_check=True)
        got = model_opset(onnx.load(path))
        if got != opset:
            raise RuntimeError(f"asked for opset {opset}, the exported model declares opset {got}")
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise


def make_fixture(model, exporter, opsets, named_by_opset):
    import onnx
    import onnxruntime as ort
    import torch

    def name_at(opset):
        base = f"{model['name']}-{exporter}"
        return f"{base}-opset{opset}" if named_by_opset else base

    tries = {}
    for opset in opsets:
        name = name_at(opset)
        file = f"{name}.onnx"
        path = os.path.join(OUT, file)
        try:
            try_export(model, exporter, opset, path)
        except Exception:
            tries[str(opset)] = traceback.format_exc()[-4000:]
            print(f"{name}: export at opset {opset} FAILED:\n{tries[str(opset)]}", file=sys.stderr)
            continue
        tries[str(opset)] = "ok"
        break
    entry = {"name": name, "model": model["name"], "exporter": exporter, "file": file,
             "attn_implementation": model["attn"]}
    if len(opsets) > 1:
        entry["opset_tries"] = tries
    if tries[str(opset)] != "ok":
        entry["error"] = tries[str(opset)] if len(opsets) == 1 else (
            f"no opset of {opsets} worked; the last error:\n" + tries[str(opset)])
        return entry
    entry["opset"] = opset
    m = onnx.load(path)
    entry["inputs"] = describe_values(m.graph.input)
    entry["outputs"] = describe_values(m.graph.output)
    entry["bytes"] = os.path.getsize(path)
    got_inputs = [i["name"] for i in entry["inputs"]]
    got_outputs = [o["name"] for o in entry["outputs"]]
    if got_inputs != model["inputs"] or got_outputs != model["outputs"]:
        raise SystemExit(f"{name}: exported inputs {got_inputs} / outputs {got_outputs}, "
                         f"want {model['inputs']} / {model['outputs']}")

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED + 1000)
    cases = []
    worst = 0.0
    for k, (batch, seq, feeds) in enumerate(cases_for(model, rng)):
        case_dir = f"{name}/case{k}"
        os.makedirs(os.path.join(OUT, case_dir), exist_ok=True)
        outs = sess.run(model["outputs"], feeds)
        with torch.no_grad():
            ref = model["module"](*(torch.from_numpy(feeds[n]) for n in model["inputs"]))
        ref = [ref.numpy()]
        diffs = {}
        for o, got, want in zip(model["outputs"], outs, ref):
            if got.shape != want.shape:
                raise SystemExit(f"{name} {case_dir}: ORT {got.shape} vs torch {want.shape}")
            diffs[o] = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            worst = max(worst, diffs[o])
        for n, a in feeds.items():
            np.save(os.path.join(OUT, case_dir, f"{n}.npy"), np.ascontiguousarray(a))
        for o, a in zip(model["outputs"], outs):
            np.save(os.path.join(OUT, case_dir, f"{o}.npy"), np.ascontiguousarray(a))
        case = {"dir": case_dir, "batch": batch}
        if seq is not None:
            case["seq"] = seq
        case["inputs"] = {n: list(a.shape) for n, a in feeds.items()}
        case["outputs"] = {o: list(a.shape) for o, a in zip(model["outputs"], outs)}
        case["ort_vs_torch_max_abs_diff"] = diffs
        cases.append(case)
        print(f"{name} {case_dir} batch={batch} seq={seq}: ORT vs torch max |diff| "
              + ", ".join(f"{o} {d:.3g}" for o, d in diffs.items()))
    entry["cases"] = cases
    entry["ort_vs_torch_max_abs_diff"] = worst
    if worst > 1e-4:
        raise SystemExit(f"{name}: ONNX Runtime and PyTorch differ by {worst}")
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape-ops", action="store_true",
                    help="only (re)write SHAPE_OPS.md from the fixtures and manifest there")
    args = ap.parse_args()
    if args.shape_ops:
        with open(os.path.join(OUT, "manifest.json")) as fh:
            write_shape_doc(json.load(fh))
        print(f"wrote {os.path.join(OUT, SHAPE_DOC)}")
        return

    import shutil

    import torch

    torch.set_num_threads(1)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    manifest = {
        "about": "tiny transformer exports with dynamic batch/seq; made by scripts/transformer-fixtures.sh",
        "versions": versions(),
        "seed": SEED,
        "fixtures": [],
    }
    models = {m.get("key", m["name"]): m for m in build_models()}
    for model_name, exporter, opsets, named_by_opset in PLAN:
        model = models[model_name]
        entry = make_fixture(model, exporter, opsets, named_by_opset)
        entry["config"] = model["config"]
        manifest["fixtures"].append(entry)
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    write_shape_doc(manifest)
    failed = [f["name"] for f in manifest["fixtures"] if "error" in f]
    print(f"wrote {len(manifest['fixtures'])} fixtures to {OUT}" + (f"; export failed: {failed}" if failed else ""))


if __name__ == "__main__":
    main()

"""Exports the model zoo of `kiln-bench --zoo` to ONNX (run by bench/zoo/setup.sh).

Every model is built by pip's torch, torchvision or transformers with random
weights (torch.manual_seed(0) before each; no hub downloads), in eval mode,
and exported with fixed shapes, once per batch size, by the TorchScript
exporter (torch.onnx.export(..., dynamo=False, opset_version=17)); where
that fails, by the dynamo exporter (at opset 18 where its conversion to 17
gives an invalid model), and meta.json says which. Inputs are
random, from numpy seeded per model (token ids in [0, vocab)).

Two things keep the outputs informative (else the comparison of engines
checks little): weight matrices a library initializes to zeros (torchvision
ViT's classifier) are drawn from N(0, 0.02^2) instead, and the running
statistics of batch norms are those of one forward pass in training mode
over a fixed random batch of 8 (with the default mean 0 and variance 1,
activations of the mobilenets and efficientnet shrink layer by layer to
outputs of 1e-9 to 1e-14). Both are seeded, and the same at every batch.
(The wav2vec2 encoder's convolutions are initialized as transformers does,
for the same reason.)

    target/zoo/<model>-b<batch>/model.onnx
    target/zoo/<model>-b<batch>/input_<k>_<name>.npy   the inputs, in ONNX input order
    target/zoo/<model>-b<batch>/torch_out_<k>.npy      PyTorch's outputs
    target/zoo/<model>-b<batch>/meta.json              inputs, outputs, exporter, opset
    target/zoo/models.json                             the directories of this run, in order

A directory whose .stamp holds the hash of this file and the pins
(requirements.txt) is kept as it is; anything else is exported again.

usage: python bench/zoo/export.py [--out target/zoo] [--only NAME ...] [--batch 1,8] [--list]
"""
import argparse
import hashlib
import json
import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BATCHES = (1, 8)
OPSET = 17


# ---- the models -----------------------------------------------------------


def tv(name, **kw):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kw)

    return build


def vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=224, patch_size=16, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768)


class Bert(nn.Module):
    """transformers' BertModel: (input_ids, attention_mask) -> (last_hidden_state, pooler_output)."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
        cfg._attn_implementation = "eager"
        self.m = BertModel(cfg)

    def forward(self, input_ids, attention_mask):
        o = self.m(input_ids=input_ids, attention_mask=attention_mask)
        return o.last_hidden_state, o.pooler_output


class Gpt2(nn.Module):
    """transformers' GPT2Model without a KV cache: input_ids -> last_hidden_state.

    The attention mask (all ones) is made inside: without one, transformers
    looks for packed sequences in the position ids with torch.diff, which
    the TorchScript exporter cannot export."""

    def __init__(self):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(n_embd=256, n_layer=4, n_head=4, use_cache=False)
        cfg._attn_implementation = "eager"
        self.m = GPT2Model(cfg)

    def forward(self, input_ids):
        mask = torch.ones_like(input_ids)
        return self.m(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state


class Lstm(nn.Module):
    """A 2-layer LSTM (64 -> 128) over 32 steps and a linear head on the last step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(64, 128, num_layers=2, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


class Gru(nn.Module):
    """A bidirectional 2-layer GRU (40 -> 2x128) over 100 steps and a linear head on every step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(40, 128, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(256, 32)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Wav2Vec2FeatureEncoder(nn.Module):
    """wav2vec2's convolutional feature encoder (the "group" norm variant):
    7 Conv1d of 512 channels without bias, kernels 10,3,3,3,3,2,2, strides
    5,2,2,2,2,2,2, GELU after each, a GroupNorm of one group per channel
    after the first. 1 s of 16 kHz audio -> 49 frames of 512 features.
    The convolutions are initialized as transformers' Wav2Vec2 does
    (kaiming_normal_), which keeps the activations near unit scale."""

    def __init__(self, channels=512):
        super().__init__()
        kernels = (10, 3, 3, 3, 3, 2, 2)
        strides = (5, 2, 2, 2, 2, 2, 2)
        layers = []
        cin = 1
        for i, (k, s) in enumerate(zip(kernels, strides)):
            conv = nn.Conv1d(cin, channels, k, stride=s, bias=False)
            nn.init.kaiming_normal_(conv.weight)
            layers.append(conv)
            if i == 0:
                layers.append(nn.GroupNorm(channels, channels, affine=True))
            layers.append(nn.GELU())
            cin = channels
        self.conv = nn.Sequential(*layers)

    def forward(self, audio):
        return self.conv(audio[:, None, :])


def image(size=224):
    return [("pixel_values", (3, size, size), "normal")]


BERT_VOCAB = 30522
GPT2_VOCAB = 50257

# name, constructor, inputs (name, shape without the batch, kind), what it is.
# kind: "normal" (standard normal f32), ("tokens", vocab) (i64 in [0, vocab)),
# "mask" (i64 ones, each row padded with zeros past a random length).
MODELS = [
    ("resnet18", tv("resnet18"), image(), "torchvision resnet18"),
    ("resnet50", tv("resnet50"), image(), "torchvision resnet50"),
    ("mobilenet_v2", tv("mobilenet_v2"), image(), "torchvision mobilenet_v2"),
    ("mobilenet_v3_small", tv("mobilenet_v3_small"), image(), "torchvision mobilenet_v3_small"),
    ("efficientnet_b0", tv("efficientnet_b0"), image(), "torchvision efficientnet_b0"),
    ("vit", vit, image(), "torchvision VisionTransformer 224/16, 6 layers, 3 heads, dim 192, mlp 768"),
    (
        "bert",
        Bert,
        [("input_ids", (128,), ("tokens", BERT_VOCAB)), ("attention_mask", (128,), "mask")],
        "transformers BertModel, hidden 256, 4 layers, 4 heads, ffn 1024, seq 128",
    ),
    ("gpt2", Gpt2, [("input_ids", (64,), ("tokens", GPT2_VOCAB))], "transformers GPT2Model, dim 256, 4 layers, 4 heads, seq 64, no cache"),
    ("lstm", Lstm, [("x", (32, 64), "normal")], "nn.LSTM 2 layers 64->128, 32 steps, Linear(128, 10) on the last"),
    ("gru", Gru, [("x", (100, 40), "normal")], "nn.GRU bidirectional 2 layers 40->2x128, 100 steps, Linear(256, 32)"),
    (
        "wav2vec2_fe",
        Wav2Vec2FeatureEncoder,
        [("audio", (16000,), "normal")],
        "wav2vec2 feature encoder: 7 Conv1d x 512 ch, GELU, GroupNorm; 1 s of 16 kHz audio",
    ),
]
NAMES = [m[0] for m in MODELS]


# ---- export ---------------------------------------------------------------


def stamp_text():
    h = hashlib.sha256()
    h.update((HERE / "export.py").read_bytes())
    h.update((HERE / "requirements.txt").read_bytes())
    return h.hexdigest()


def prepare(model, name, specs):
    """Zero-initialized weight matrices drawn at random, batch norm
    statistics calibrated on a fixed random batch (see the top)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02, generator=g)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: exactly this batch's statistics
        calib = make_inputs(name, specs, 8, salt=b"calibration")
        model.train()
        with torch.no_grad():
            model(*(torch.from_numpy(a) for _, a in calib))
    return model.eval()


def make_inputs(name, specs, batch, salt=b""):
    rng = np.random.default_rng(zlib.crc32(name.encode() + salt))
    out = []
    for iname, shape, kind in specs:
        full = (batch, *shape)
        if kind == "normal":
            a = rng.standard_normal(full, dtype=np.float32)
        elif kind == "mask":
            a = np.zeros(full, dtype=np.int64)
            for row, n in enumerate(rng.integers(shape[-1] // 2, shape[-1] + 1, size=batch)):
                a[row, :n] = 1
        elif kind[0] == "tokens":
            a = rng.integers(0, kind[1], size=full, dtype=np.int64)
        else:
            raise ValueError(kind)
        out.append((iname, a))
    return out


def export_one(name, build, specs, batch, desc, d, stamp):
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if f.is_file():
            f.unlink()
    torch.manual_seed(0)
    model = prepare(build(), name, specs)
    inputs = make_inputs(name, specs, batch)
    args = tuple(torch.from_numpy(a) for _, a in inputs)
    with torch.no_grad():
        ref = model(*args)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    out_names = ["output"] if len(ref) == 1 else [f"output_{k}" for k in range(len(ref))]
    path = d / "model.onnx"
    in_names = [n for n, _ in inputs]
    import onnx

    t0 = time.time()
    exporter, note = "torchscript", None
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=in_names,
                output_names=out_names,
                do_constant_folding=True,
            )
    except Exception as e:  # noqa: BLE001 - any exporter failure falls back
        note = f"TorchScript exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(f"  {name}-b{batch}: {note}; trying dynamo=True", file=sys.stderr)
        exporter = "dynamo"
        # The dynamo exporter writes opset 18 and converts down; where the
        # conversion leaves opset-18 attributes behind (Split's
        # num_outputs), the model is kept at 18.
        for opset in (OPSET, 18):
            with torch.no_grad():
                torch.onnx.export(
                    model,
                    args,
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=in_names,
                    output_names=out_names,
                    external_data=False,
                )
            try:
                onnx.checker.check_model(str(path))
                break
            except onnx.checker.ValidationError as e:
                print(f"  {name}-b{batch}: dynamo at opset {opset} is invalid ({str(e).splitlines()[0]})", file=sys.stderr)
                if opset == 18:
                    raise
    export_s = time.time() - t0

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None)
    onnx_in = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    onnx_out = [o.name for o in m.graph.output]
    ops = sorted({n.op_type for n in m.graph.node})
    by_name = dict(inputs)
    files = []
    for k, iname in enumerate(onnx_in):
        f = f"input_{k}_{iname}.npy"
        np.save(d / f, by_name[iname])
        files.append({"name": iname, "file": f, "shape": list(by_name[iname].shape), "dtype": str(by_name[iname].dtype)})
    for k, r in enumerate(ref):
        np.save(d / f"torch_out_{k}.npy", r.numpy())
    meta = {
        "model": name,
        "batch": batch,
        "description": desc,
        "exporter": exporter,
        "exporter_note": note,
        "opset": opset,
        "ops": ops,
        "nodes": len(m.graph.node),
        "params": int(sum(p.numel() for p in model.parameters())),
        "inputs": files,
        "outputs": onnx_out,
        "output_shapes": [list(r.shape) for r in ref],
        "export_s": round(export_s, 2),
        "torch": torch.__version__,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1))
    (d / ".stamp").write_text(stamp)
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "target" / "zoo"))
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--batch", default=",".join(map(str, BATCHES)))
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(NAMES))
        return
    unknown = [n for n in a.only if n not in NAMES]
    if unknown:
        sys.exit(f"export.py: no model {', '.join(unknown)} (the zoo: {', '.join(NAMES)})")
    batches = [int(b) for b in a.batch.split(",") if b]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = stamp_text()
    torch.set_num_threads(2)
    index = []
    t_all = time.time()
    for name, build, specs, desc in MODELS:
        if a.only and name not in a.only:
            continue
        for b in batches:
            d = out / f"{name}-b{b}"
            entry = {"model": name, "batch": b, "dir": str(d)}
            st = d / ".stamp"
            if st.exists() and st.read_text() == stamp and (d / "meta.json").exists():
                index.append(entry)
                continue
            t0 = time.time()
            try:
                meta = export_one(name, build, specs, b, desc, d, stamp)
                print(f"  exported {name}-b{b} ({meta['exporter']}, opset {meta['opset']}, {meta['nodes']} nodes) in {time.time() - t0:.1f} s", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - reported in the table
                traceback.print_exc()
                entry["error"] = f"export failed: {type(e).__name__}: {e}"[:500]
            index.append(entry)
    (out / "models.json").write_text(json.dumps(index, indent=1))
    print(f"zoo: {len(index)} exports ready in {out} ({time.time() - t_all:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

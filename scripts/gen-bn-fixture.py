#!/usr/bin/env python3
"""Generates tests/fixtures/bn_cnn.json: PyTorch's loss curve for a small CNN
with a train-mode batch norm, checked against kiln by tests/tests/train_modes.rs.

The CNN: conv 3x3 (1 -> 8 channels, padding 1, with bias) -> BatchNorm2d(8)
-> relu -> max pool 2x2 -> flatten (128) -> linear 10, on 8x8 single-channel
images; mean softmax cross-entropy against fixed random labels (a batch of
32 to memorise, pixels like raw intensities: mean 8, std 4); 100 steps of
plain SGD (lr 0.2), the batch norm in train mode (batch statistics,
running averages with momentum 0.1). Without batch statistics (the
statistics trained as weights, kiln's old behaviour) the same training
bounces around a loss of 2; with them it reaches about 0.013.

Everything runs in float64, so the fixture is the exact-arithmetic answer
to within ~1e-15 and kiln's float32 run is compared against it with its
own rounding as the only difference (kiln's float64 run matches it to
~1e-10). The inputs and initial weights are float32 values (drawn in
float32, then widened exactly), so both precisions start from the same
numbers.

Recorded: the inputs, the initial weights, the loss before each of the 100
steps, the final running mean and variance, the final weights' loss in
train mode, and eval-mode logits (running statistics) on the training
batch and on a held-out batch of 32 (the same size: the test feeds a fixed
batch, since conv2d's weight gradient in kiln needs a fixed batch dim).

Run:  python3 scripts/gen-bn-fixture.py   (needs numpy and torch; CPU only)
The output is deterministic for a given PyTorch version (recorded in it).
"""

import json
import os

import numpy as np
import torch

BATCH, HELD_OUT, CLASSES, CHANNELS, SIZE = 32, 32, 10, 8, 8
STEPS, LR, MOMENTUM, BN_MOMENTUM, EPS = 100, 0.2, 0.0, 0.1, 1e-5
# Inputs like raw pixel intensities (mean 8, std 4), as un-normalized data
# often is: what batch norm is for.
X_MEAN, X_STD = 8.0, 4.0


def f32(shape, rng):
    """Normal float32 samples with mean X_MEAN and std X_STD, widened exactly."""
    z = rng.standard_normal(shape) * X_STD + X_MEAN
    return z.astype(np.float32).astype(np.float64)


def uniform32(shape, rng, bound):
    return rng.uniform(-bound, bound, shape).astype(np.float32).astype(np.float64)


def main():
    rng = np.random.default_rng(20240616)
    x = f32((BATCH, 1, SIZE, SIZE), rng)
    labels = rng.integers(0, CLASSES, BATCH)
    x_held = f32((HELD_OUT, 1, SIZE, SIZE), rng)
    conv_w = uniform32((CHANNELS, 1, 3, 3), rng, 1.0 / 3.0)
    conv_b = uniform32((CHANNELS,), rng, 1.0 / 3.0)
    fc_in = CHANNELS * (SIZE // 2) * (SIZE // 2)
    fc_w = uniform32((CLASSES, fc_in), rng, 1.0 / np.sqrt(fc_in))
    fc_b = uniform32((CLASSES,), rng, 1.0 / np.sqrt(fc_in))

    conv = torch.nn.Conv2d(1, CHANNELS, 3, padding=1).double()
    bn = torch.nn.BatchNorm2d(CHANNELS, eps=EPS, momentum=BN_MOMENTUM).double()
    fc = torch.nn.Linear(fc_in, CLASSES).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(conv_w))
        conv.bias.copy_(torch.from_numpy(conv_b))
        fc.weight.copy_(torch.from_numpy(fc_w))
        fc.bias.copy_(torch.from_numpy(fc_b))

    def forward(inp):
        h = torch.relu(bn(conv(inp)))
        h = torch.nn.functional.max_pool2d(h, 2, 2)
        return fc(h.flatten(1))

    params = list(conv.parameters()) + list(bn.parameters()) + list(fc.parameters())
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(x), torch.from_numpy(labels)
    losses = []
    bn.train()
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(tx), ty)
        losses.append(loss.item())
        loss.backward()
        opt.step()

    bn.eval()
    with torch.no_grad():
        eval_logits = forward(tx).numpy()
        held_logits = forward(torch.from_numpy(x_held)).numpy()
        eval_loss = torch.nn.functional.cross_entropy(forward(tx), ty).item()

    def flat(a):
        return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]

    fixture = {
        "about": "scripts/gen-bn-fixture.py: conv3x3(1->8, pad 1) -> BatchNorm2d "
        "(train mode) -> relu -> maxpool 2x2 -> linear(128->10), mean cross-entropy, "
        "plain SGD, inputs with mean 8 and std 4, all in float64",
        "torch_version": torch.__version__,
        "batch": BATCH,
        "held_out": HELD_OUT,
        "classes": CLASSES,
        "channels": CHANNELS,
        "size": SIZE,
        "steps": STEPS,
        "lr": LR,
        "momentum": MOMENTUM,
        "bn_momentum": BN_MOMENTUM,
        "eps": EPS,
        "x": flat(x),
        "labels": [int(v) for v in labels],
        "x_held_out": flat(x_held),
        "conv_weight": flat(conv_w),
        "conv_bias": flat(conv_b),
        "fc_weight_out_in": flat(fc_w),
        "fc_bias": flat(fc_b),
        "losses": losses,
        "running_mean": flat(bn.running_mean.detach()),
        "running_var": flat(bn.running_var.detach()),
        "eval_logits": flat(eval_logits),
        "eval_loss": eval_loss,
        "held_out_logits": flat(held_logits),
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "bn_cnn.json")
    with open(out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(
        f"wrote {os.path.normpath(out)}: loss {losses[0]:.4f} -> {losses[-1]:.6f}, "
        f"eval loss {eval_loss:.6f}"
    )


if __name__ == "__main__":
    main()

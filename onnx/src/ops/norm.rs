//! Normalizations and softmax, as compositions of kiln's primitives:
//!
//! - `BatchNormalization` (inference, and training mode's batch statistics
//!   and running averages), `InstanceNormalization`, `LayerNormalization`
//!   (with `Mean` and `InvStdDev`, in `stash_type`), `GroupNormalization`
//!   (scale and bias per group, opset 18, or per channel, opset 21: told
//!   apart by length), `MeanVarianceNormalization`, `LRN`.
//! - `Softmax`, `LogSoftmax`, `Hardmax` (before opset 13 over every dim
//!   from `axis` on, which is ONNX's coercion to 2-D), `Shrink`.
//!
//! `Hardmax` of an input with an empty dim is empty.

use kiln_graph::{DType, Dim, Shape, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};
use crate::ops::conv::{dim_product, fixed, fixed_from, one, reshape, spatial_axes};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("LayerNormalization", layer_norm),
    ("GroupNormalization", group_norm),
    ("MeanVarianceNormalization", mvn),
    ("LRN", lrn),
    ("Softmax", |n| softmax(n, Soft::Softmax)),
    ("LogSoftmax", |n| softmax(n, Soft::Log)),
    ("Hardmax", |n| softmax(n, Soft::Hard)),
    ("Shrink", shrink),
];

// ---- normalization ----

/// `p` (of shape `[C]`) reshaped to broadcast along dim 1 of a rank-`rank`
/// tensor, cast to `dtype`.
pub(crate) fn per_channel<'g>(p: Tensor<'g>, rank: usize, dtype: DType) -> R<Tensor<'g>> {
    let p = p.cast(dtype)?;
    if p.rank() != 1 {
        return Ok(p);
    }
    let mut dims = vec![Dim::Fixed(1); rank.saturating_sub(1)];
    if dims.is_empty() {
        return Ok(p);
    }
    dims[0] = p.shape().0[0].clone();
    reshape(p, dims)
}

/// The moments of `x` over `axes` (kept dims): `x - mean`, the mean and the
/// (biased) variance, two-pass (the mean of `(x - mean)^2`).
fn moments<'g>(x: Tensor<'g>, axes: &[i64]) -> R<(Tensor<'g>, Tensor<'g>, Tensor<'g>)> {
    let mean = exact_mean(x, axes)?;
    let centered = x.sub(mean)?;
    let var = exact_mean(centered.mul(centered)?, axes)?;
    Ok((centered, mean, var))
}

/// The mean over `axes` (kept) as the sum divided by the count, correctly
/// rounded from the sum: a constant slice's mean is then its value
/// exactly, so it centers to 0 (`sum * (1 / n)`, kiln's `mean`, can miss
/// by an ulp, which a normalization's tiny variance then blows up). f32
/// and f64 with a fixed count; others take `mean`.
fn exact_mean<'g>(x: Tensor<'g>, axes: &[i64]) -> R<Tensor<'g>> {
    let shape = x.shape();
    let rank = x.rank() as i64;
    let mut count = 1usize;
    for &a in axes {
        let i = if a < 0 { a + rank } else { a } as usize;
        match shape.0.get(i) {
            Some(Dim::Fixed(n)) => count *= n,
            _ => return Ok(x.mean(axes, true)?),
        }
    }
    if !matches!(x.dtype(), DType::F32 | DType::F64) || count == 0 {
        return Ok(x.mean(axes, true)?);
    }
    Ok(x.sum(axes, true)?.div(count as f64)?)
}

/// `(x - mean) / sqrt(var + eps)` over `axes`, with the mean and
/// `1 / sqrt(var + eps)` (kept dims).
fn standardize<'g>(
    x: Tensor<'g>,
    axes: &[i64],
    eps: f64,
) -> R<(Tensor<'g>, Tensor<'g>, Tensor<'g>)> {
    let (centered, mean, var) = moments(x, axes)?;
    let inv = var.add(eps)?.rsqrt()?;
    Ok((centered.mul(inv)?, mean, inv))
}

/// `BatchNormalization`. Inference: `(x - mean) / sqrt(var + eps) * scale
/// + B` with the given statistics. Training mode (`training_mode`; before
/// opset 7 `is_test = 0`; opsets 7 to 13 more than one output): the
/// batch's statistics (variance biased) normalize, and the running ones
/// come out as `mean * momentum + batch * (1 - momentum)`.
fn batch_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dt = x.dtype();
    let r = x.rank();
    let eps = n.float("epsilon", 1e-5) as f64;
    let training = if n.opset >= 14 {
        n.int("training_mode", 0) != 0
    } else if n.opset < 7 {
        n.int("is_test", 0) == 0
    } else {
        n.proto.output.iter().skip(1).any(|o| !o.is_empty())
    };
    if n.opset < 9 && n.int("spatial", 1) == 0 && training {
        return n.unsupported("training mode with spatial = 0");
    }
    let [scale, bias, mean, var] =
        [1, 2, 3, 4].map(|i| n.input(i).and_then(|t| per_channel(t, r, dt)));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    // `(x - mean) * rsqrt(var + eps)` first, then the scale, as the
    // definition reads: a huge scale times the factor could overflow where
    // the normalized value times the scale does not. (Inference graphs
    // still fold the two constants into one, or into the conv's weights,
    // wherever that does not overflow.)
    if !training {
        let inv = var.add(eps)?.rsqrt()?;
        let y = x.sub(mean)?.mul(inv)?.mul(scale)?;
        return Ok(vec![y.add(bias)?]);
    }
    let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
    let (centered, bmean, bvar) = moments(x, &axes)?;
    let inv = bvar.add(eps)?.rsqrt()?;
    let y = centered.mul(inv)?.mul(scale)?.add(bias)?;
    let m = n.float("momentum", 0.9) as f64;
    // Statistics come out shaped like the given mean ([C]).
    let stat_shape = n.input(3)?.shape();
    let flat = |t: Tensor<'g>| -> R<Tensor<'g>> { Ok(t.reshape(stat_shape.clone())?) };
    let run = |old: Tensor<'g>, new: Tensor<'g>| flat(old.mul(m)?.add(new.mul(1.0 - m)?)?);
    let mut outs = vec![y, run(mean, bmean)?, run(var, bvar)?];
    if n.opset < 14 {
        outs.push(flat(bmean)?);
        outs.push(flat(bvar)?);
    }
    Ok(outs)
}

/// `InstanceNormalization`: per sample and channel over the spatial dims.
fn instance_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (r, dt) = (x.rank(), x.dtype());
    let eps = n.float("epsilon", 1e-5) as f64;
    let (normed, _, _) = standardize(x, &spatial_axes(x)?, eps)?;
    let scale = per_channel(n.input(1)?, r, dt)?;
    let bias = per_channel(n.input(2)?, r, dt)?;
    Ok(one(normed.mul(scale)?.add(bias)?))
}

/// The computation type of `stash_type` (ONNX data type code) for `x`.
fn stash_dtype(n: &Node<'_, '_>, x: Tensor<'_>) -> R<DType> {
    match n.attr("stash_type") {
        // Opset 18's GroupNormalization has none: the input's type, widened.
        None if n.op() == "GroupNormalization" => Ok(match x.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        }),
        _ => Ok(crate::tensor::dtype_of(n.int("stash_type", 1) as i32)?),
    }
}

/// `LayerNormalization`: over dims `axis..`, computed in `stash_type`;
/// outputs `Y`, `Mean` and `InvStdDev` (the last two in `stash_type`).
fn layer_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let a = axis(n.int("axis", -1), r)?;
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let eps = n.float("epsilon", 1e-5) as f64;
    let st = stash_dtype(n, x)?;
    let (normed, mean, inv) = standardize(x.cast(st)?, &axes, eps)?;
    let mut y = normed.cast(x.dtype())?.mul(n.input(1)?.cast(x.dtype())?)?;
    if let Some(b) = n.opt(2) {
        y = y.add(b.cast(x.dtype())?)?;
    }
    Ok(vec![y, mean, inv])
}

/// `GroupNormalization`: channels split into `num_groups` groups, each
/// normalized over its channels and the spatial dims; scale and bias per
/// group (opset 18) or per channel (opset 21), told apart by length.
fn group_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (scale, bias) = (n.input(1)?, n.input(2)?);
    let g = usize::try_from(n.int("num_groups", 0))
        .ok()
        .filter(|&g| g > 0)
        .ok_or("num_groups must be positive")?;
    let rest = fixed_from(x, 1)?;
    let c = rest[0];
    if c % g != 0 {
        return Err(format!("{c} channels do not split into {g} groups").into());
    }
    let eps = n.float("epsilon", 1e-5) as f64;
    let st = stash_dtype(n, x)?;
    let per: usize = rest.iter().product::<usize>() / g;
    let nd = x.shape().0[0].clone();
    let grouped = reshape(x.cast(st)?, vec![nd, Dim::Fixed(g), Dim::Fixed(per)])?;
    let (normed, _, _) = standardize(grouped, &[2], eps)?;
    let y = reshape(normed.cast(x.dtype())?, x.shape().0)?;
    let channel = |p: Tensor<'g>| -> R<Tensor<'g>> {
        let len = fixed_shape(p)?.iter().product::<usize>();
        let p = if len == c || len == 1 {
            reshape(p, fixed(&[len]))?
        } else if len == g {
            // One value per group: repeated over the group's channels.
            let t = reshape(p, fixed(&[g, 1]))?.broadcast_to(Shape::fixed(&[g, c / g]));
            reshape(t?, fixed(&[c]))?
        } else {
            return Err(format!(
                "scale/bias of {len} values fit neither {c} channels nor {g} groups"
            )
            .into());
        };
        per_channel(p, x.rank(), x.dtype())
    };
    Ok(one(y.mul(channel(scale)?)?.add(channel(bias)?)?))
}

/// `MeanVarianceNormalization`: `(x - mean) / (std + 1e-9)` over `axes`,
/// the variance as the mean of `(x - mean)^2` (two passes; ONNX's function
/// body writes `E[x^2] - E[x]^2`, which cancels, and onnxruntime's NaN for
/// a constant slice comes from there). The rounded mean (its sum rounds,
/// and kiln's mean multiplies it by `1 / count`) can miss a constant
/// slice's value by an ulp, which the `1e-9` next to an ulp-sized std
/// would blow up to about ±1: the mean of the residual, subtracted once
/// more, makes a constant slice's centered values exactly 0 (its residual
/// is one value, exact, whose mean is itself).
fn mvn<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let axes = n.ints("axes").unwrap_or_else(|| vec![0, 2, 3]);
    let rough = x.sub(x.mean(&axes, true)?)?;
    let centered = rough.sub(rough.mean(&axes, true)?)?;
    let std = centered.mul(centered)?.mean(&axes, true)?.sqrt()?;
    Ok(one(centered.div(std.add(1e-9)?)?))
}

/// `LRN`: `x / (bias + alpha / size * sum of x^2 over nearby channels)^beta`.
fn lrn<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let size = usize::try_from(n.int("size", 0))
        .ok()
        .filter(|&s| s > 0)
        .ok_or("size must be positive")?;
    let (alpha, beta, bias) = (
        n.float("alpha", 1e-4) as f64,
        n.float("beta", 0.75) as f64,
        n.float("bias", 1.0) as f64,
    );
    let c = x
        .shape()
        .0
        .get(1)
        .and_then(|d| d.fixed())
        .ok_or("channels must be fixed")?;
    let lo = (size - 1) / 2;
    let hi = size - 1 - lo;
    let sq = x.mul(x)?;
    let mut before = vec![0; x.rank()];
    let mut after = vec![0; x.rank()];
    before[1] = lo;
    after[1] = hi;
    let padded = sq.pad(&before, &after, 0.0)?;
    let mut sum: Option<Tensor<'g>> = None;
    for j in 0..size {
        let s = padded.slice_axis(1, j as i64, (j + c) as i64, 1)?;
        sum = Some(match sum {
            None => s,
            Some(t) => t.add(s)?,
        });
    }
    let sum = sum.expect("size >= 1");
    let d = sum.mul(alpha / size as f64)?.add(bias)?.pow(beta)?;
    Ok(one(x.div(d)?))
}

// ---- softmax family, Shrink ----

#[derive(Clone, Copy, PartialEq)]
enum Soft {
    Softmax,
    Log,
    Hard,
}

/// `Softmax`, `LogSoftmax`, `Hardmax`: along `axis` (opset 13 and later,
/// default -1) or, before, over every dim from `axis` on (default 1).
fn softmax<'g>(n: &Node<'_, 'g>, kind: Soft) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    if r == 0 {
        return Err("needs rank >= 1".into());
    }
    let legacy = n.opset < 13;
    let a = axis(n.int("axis", if legacy { 1 } else { -1 }), r)?;
    let axes: Vec<i64> = if legacy {
        (a as i64..r as i64).collect()
    } else {
        vec![a as i64]
    };
    match kind {
        Soft::Softmax => {
            let e = x.sub(x.max(&axes, true)?)?.exp()?;
            Ok(one(e.div(e.sum(&axes, true)?)?))
        }
        Soft::Log => {
            let s = x.sub(x.max(&axes, true)?)?;
            Ok(one(s.sub(s.exp()?.sum(&axes, true)?.log()?)?))
        }
        Soft::Hard => {
            let shape = x.shape().0;
            if shape.iter().any(|d| d.fixed() == Some(0)) {
                // No element (an empty axis, or another empty dim): an empty
                // result of the input's shape.
                let zero = n.scalar(0.0, x.dtype())?;
                return Ok(one(zero.broadcast_to(x.shape())?));
            }
            // Merge the dims from `a` on where there are several.
            let flat = if axes.len() > 1 {
                let mut dims = shape[..a].to_vec();
                dims.push(dim_product(&shape[a..])?);
                reshape(x, dims)?
            } else {
                x
            };
            let len = flat.shape().0[a].clone();
            let am = flat.argmax(a as i64, true)?;
            let mut idims = vec![Dim::Fixed(1); flat.rank()];
            idims[a] = len.clone();
            let iota = x.builder().iota(DType::I64, Shape(vec![len]), 0)?;
            let hot = am.eq(reshape(iota, idims)?)?.cast(x.dtype())?;
            reshape(hot, shape).map(one)
        }
    }
}

/// `Shrink`: `x + bias` below `-lambd`, `x - bias` above `lambd`, else 0.
fn shrink<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (lambd, bias) = (n.float("lambd", 0.5) as f64, n.float("bias", 0.0) as f64);
    let zero = n.scalar(0.0, x.dtype())?;
    let hi = n.g.select(x.gt(lambd)?, x.sub(bias)?, zero)?;
    Ok(one(n.g.select(x.lt(-lambd)?, x.add(bias)?, hi)?))
}

//! `Pad` (modes constant, edge, reflect and wrap; pads and axes known at
//! import time, or pads computed from shapes in constant mode). The
//! non-constant modes become slices (reversed where reflecting) joined
//! with `Concat`; a `constant` pad value computed at run time is selected
//! in by a mask; pads computed from shapes (constant mode, never negative)
//! join blocks of the value around the input.

use kiln_graph::{DType, Dim, Shape, SliceAxis, Tensor};

use super::{axis, Converter, Node, R};
use crate::ops::shape::fixed_dim;

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("Pad", pad)];

/// Pad's axes (all by default) for `pads` amounts, two per axis.
fn pad_axes(axes: Option<Vec<i64>>, r: usize, pads: usize) -> R<Vec<usize>> {
    let axes = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<R<Vec<_>>>()?,
        None => (0..r).collect(),
    };
    if pads != 2 * axes.len() {
        return Err(format!("{pads} pads for {} axes (needs two per axis)", axes.len()).into());
    }
    Ok(axes)
}

/// `Pad` by amounts computed from shapes (`seq % 8` to round up to a
/// multiple, say): constant mode, amounts provably not negative; each
/// padded axis joins blocks of the value (of expression sizes) around the
/// input.
fn symbolic_pad<'g>(n: &Node<'_, 'g>, mode: &str) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let pads = n.sym_ints(1)?.ok_or("Pad needs pads")?;
    if mode != "constant" {
        return n.unsupported(format!(
            "pad mode '{mode}' with amounts computed from shapes"
        ));
    }
    let axes = pad_axes(n.const_ints(3)?, r, pads.len())?;
    // The value: a scalar of x's dtype (a run-time one is taken as it is).
    let value = match n.opt(2) {
        Some(v) if v.shape().num_elements() == Some(1) => {
            v.reshape(Shape::scalar())?.cast(x.dtype())?
        }
        Some(v) if v.shape().num_elements() != Some(0) => {
            return Err(format!(
                "the pad value must hold one element, has shape {}",
                v.shape()
            )
            .into())
        }
        _ => n.scalar(0.0, x.dtype())?,
    };
    let mut t = x;
    for (i, &a) in axes.iter().enumerate() {
        let (before, after) = (&pads[i], &pads[i + axes.len()]);
        let mut parts = Vec::with_capacity(3);
        for (k, amount) in [before, after].into_iter().enumerate() {
            if amount.as_const() == Some(0) {
                continue;
            }
            if !amount.is_nonneg() {
                return n.unsupported(format!(
                    "a pad of {amount} on axis {a}, computed from shapes, that may be negative"
                ));
            }
            let mut shape = t.shape();
            shape.0[a] = Dim::from_expr(amount.clone())?;
            let block = value.broadcast_to(shape)?;
            if k == 0 {
                parts.push(block);
                parts.push(t);
            } else {
                if parts.is_empty() {
                    parts.push(t);
                }
                parts.push(block);
            }
        }
        if !parts.is_empty() {
            t = n.g.concat(&parts, a as i64)?;
        }
    }
    Ok(vec![t])
}

/// The source index of each position of an axis of size `d` padded by
/// `before` and `after` (negative: cropped) in a non-constant `mode`.
fn pad_indices(mode: &str, d: usize, before: i64, after: i64) -> Vec<i64> {
    let d = d as i64;
    (-before..d + after)
        .map(|p| match mode {
            "edge" => p.clamp(0, d - 1),
            "wrap" => p.rem_euclid(d),
            _ if d == 1 => 0,
            // reflect: numpy's, periodic with period 2 (d - 1).
            _ => {
                let m = p.rem_euclid(2 * (d - 1));
                if m < d {
                    m
                } else {
                    2 * (d - 1) - m
                }
            }
        })
        .collect()
}

/// Gathers `idx` along axis `a` of `x` as slices: runs of consecutive
/// indices (forward or backward) become slices, runs of one index a
/// broadcast of a one-element slice; the parts are concatenated. No
/// indices (an axis cropped away by negative pads) give an empty slice.
fn take_runs<'g>(x: Tensor<'g>, a: usize, idx: &[i64]) -> R<Tensor<'g>> {
    if idx.is_empty() {
        return Ok(x.slice_axis(a as i64, 0, 0, 1)?);
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        let step = idx
            .get(j)
            .map(|&v| v - idx[i])
            .filter(|s| (-1..=1).contains(s))
            .unwrap_or(1);
        while j < idx.len() && idx[j] - idx[j - 1] == step {
            j += 1;
        }
        let len = j - i;
        let part = if step == 0 {
            let one = x.slice_axis(a as i64, idx[i], idx[i] + 1, 1)?;
            let mut s = one.shape();
            s.0[a] = Dim::Fixed(len);
            one.broadcast_to(s)?
        } else {
            let last = idx[j - 1];
            // An end before index 0 must not read as "from the end".
            let end = if last + step < 0 {
                i64::MIN
            } else {
                last + step
            };
            x.slice_axis(a as i64, idx[i], end, step)?
        };
        parts.push(part);
        i = j;
    }
    if parts.len() == 1 {
        return Ok(parts[0]);
    }
    Ok(x.builder().concat(&parts, a as i64)?)
}

/// `Pad`: `pads` (and `value`) attributes before opset 11; inputs `pads`,
/// `constant_value` and (opset 18) `axes` after. Negative pads crop.
/// `constant` mode crops with a slice and pads with kiln's pad; `reflect`,
/// `edge` and `wrap` take slices of the input per axis (see `take_runs`).
pub(crate) fn pad<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let mode = n.string("mode").unwrap_or_else(|| "constant".into());
    if !["constant", "reflect", "edge", "wrap"].contains(&mode.as_str()) {
        return n.unsupported(format!("pad mode '{mode}'"));
    }
    if n.opset >= 11 && n.const_ints(1).is_err() {
        return symbolic_pad(n, &mode);
    }
    // The pad value: known now, or (`runtime`) a tensor computed at run time.
    let mut runtime = None;
    let (pads, value, axes) = if n.opset < 11 {
        (n.ints("pads"), n.float("value", 0.0) as f64, None)
    } else {
        let value = match n.inputs.get(2).and_then(|v| v.as_ref()) {
            None => 0.0,
            Some(v) => match &v.value {
                Some(a) if a.is_empty() => 0.0,
                Some(a) => a.to_f64_vec()[0],
                None => {
                    runtime = Some(v.t);
                    0.0
                }
            },
        };
        (n.const_ints(1)?, value, n.const_ints(3)?)
    };
    let pads = pads.ok_or("Pad needs pads")?;
    let axes = pad_axes(axes, r, pads.len())?;
    let (mut before, mut after) = (vec![0i64; r], vec![0i64; r]);
    for (i, &a) in axes.iter().enumerate() {
        before[a] = pads[i];
        after[a] = pads[i + axes.len()];
    }
    let mut t = x;
    if mode == "constant" {
        // Output position p of an axis reads input p - before: the input
        // where that is inside it, else the value (pad, then crop). A crop
        // can eat into the other end's padding.
        let mut crop = vec![SliceAxis::FULL; r];
        let mut b: Vec<usize> = before.iter().map(|&p| p.max(0) as usize).collect();
        let mut e: Vec<usize> = after.iter().map(|&p| p.max(0) as usize).collect();
        for a in 0..r {
            if before[a] < 0 || after[a] < 0 {
                let d = fixed_dim(x, a, "cropping")? as i64;
                let (p, q) = (before[a], after[a]);
                let lo = (-p).clamp(0, d);
                crop[a] = SliceAxis {
                    start: lo,
                    end: (d + q).clamp(lo, d),
                    step: 1,
                };
                b[a] = ((d + q).min(0) + p).max(0) as usize;
                e[a] = (d + q - d.max(-p)).max(0) as usize;
            }
        }
        if crop.iter().any(|c| *c != SliceAxis::FULL) {
            t = t.slice(&crop)?;
        }
        if b.iter().chain(&e).any(|&p| p > 0) {
            let padded = t.pad(&b, &e, value)?;
            t = match runtime {
                None => padded,
                Some(v) => {
                    // Where the input was: a mask of ones padded with zeros.
                    let inside = n
                        .scalar(1.0, DType::Bool)?
                        .broadcast_to(t.shape())?
                        .pad(&b, &e, 0.0)?;
                    let v = v.reshape(Shape::scalar())?.cast(t.dtype())?;
                    n.g.select(inside, padded, v)?
                }
            };
        }
        return Ok(vec![t]);
    }
    for a in 0..r {
        if before[a] == 0 && after[a] == 0 {
            continue;
        }
        let d = fixed_dim(x, a, &format!("{mode} padding"))?;
        if d == 0 && before[a].max(0) + after[a].max(0) > 0 {
            return Err(format!("cannot {mode}-pad the empty dim {a}").into());
        }
        let padded = (d as i128 + before[a] as i128 + after[a] as i128).max(0);
        super::table_len(
            &format!("the {mode} padding indices of dim {a}"),
            &[usize::try_from(padded).unwrap_or(usize::MAX)],
        )?;
        t = take_runs(t, a, &pad_indices(&mode, d, before[a], after[a]))?;
    }
    Ok(vec![t])
}

//! Pooling, as compositions of kiln's primitives:
//!
//! - `MaxPool` (with `Indices` in any spatial rank), `AveragePool`,
//!   `LpPool`: 2-D directly; 1-D as 2-D over a unit width; 3-D and up as a
//!   2-D pool over the last two dims, then a pool along each other dim
//!   (windows are boxes and the padding counts are products, so max,
//!   average and sum separate); `MaxPool` of integers (i8, u8) as the f64
//!   pool cast back. The output size is ONNX's: with `ceil_mode` the last
//!   window may run past the padded input (it must start inside the input
//!   or the leading padding), even a window larger than the padded input;
//!   taps past the padding are ignored, and `count_include_pad` counts the
//!   taps inside the padded input only (as ONNX's reference and PyTorch
//!   do). A count of 0 windows is an empty output.
//!   `GlobalAveragePool`, `GlobalMaxPool`, `GlobalLpPool` as reductions.
//!
//! Spatial dims must be fixed (as kiln's pooling needs); `auto_pad` SAME
//! with `ceil_mode` pads as without it; `LpPool` sums the taps inside the
//! input (padding adds zeros), also in ceil mode.

use kiln_graph::ops::pool::pool_out;
use kiln_graph::{Array, DType, Dim, Shape, SliceAxis, Tensor, Window2d};

use super::conv::{one, spatial_axes};
use super::{Converter, Node, R};
use crate::ops::conv::{fixed, fixed_from, reshape, usizes, Spatial};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("MaxPool", |n| pool(n, Pool::Max)),
    ("AveragePool", |n| {
        let include = n.int("count_include_pad", 0) != 0;
        pool(n, Pool::Avg(include))
    }),
    ("LpPool", |n| pool(n, Pool::Lp(n.int("p", 2)))),
    ("GlobalAveragePool", |n| {
        let x = n.input(0)?;
        Ok(one(x.mean(&spatial_axes(x)?, true)?))
    }),
    ("GlobalMaxPool", |n| {
        let x = n.input(0)?;
        Ok(one(x.max(&spatial_axes(x)?, true)?))
    }),
    ("GlobalLpPool", |n| {
        let x = n.input(0)?;
        lp_sum(x, n.int("p", 2), &spatial_axes(x)?).map(one)
    }),
];

// ---- pooling ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pool {
    Max,
    /// Average; whether padding counts in the divisor.
    Avg(bool),
    /// `(sum |x|^p)^(1/p)`.
    Lp(i64),
}

/// `MaxPool`, `AveragePool`, `LpPool`: `kernel_shape`, `strides`,
/// `dilations`, `pads` or `auto_pad`, `ceil_mode`.
fn pool<'g>(n: &Node<'_, 'g>, kind: Pool) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if matches!(kind, Pool::Max) && x.dtype().is_int() {
        // kiln pools floats: an integer max pool (ONNX's are i8 and u8) is
        // the f64 pool, exact for integers of up to 32 bits, cast back.
        if matches!(x.dtype(), DType::I64 | DType::U64) {
            return n.unsupported(format!("MaxPool of {} (not exact in f64)", x.dtype()));
        }
        let mut outs = pool_float(n, x.cast(DType::F64)?, kind)?;
        outs[0] = outs[0].cast(x.dtype())?;
        return Ok(outs);
    }
    pool_float(n, x, kind)
}

/// [`pool`] of a float input.
fn pool_float<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, kind: Pool) -> R<Vec<Tensor<'g>>> {
    let sizes = fixed_from(x, 2)?;
    if sizes.is_empty() {
        return Err(format!("needs an [N, C, spatial...] input, got {}", x.shape()).into());
    }
    let kernel = usizes(n, "kernel_shape", sizes.len(), 0)?;
    let mut s = Spatial::of(n, &sizes, kernel)?;
    let ceil = n.int("ceil_mode", 0) != 0;
    let y = match kind {
        Pool::Max if n.wants_output(1) => {
            let order = n.int("storage_order", 0) != 0;
            return max_pool_indices(x, &s, ceil, order);
        }
        Pool::Max | Pool::Avg(_) => pool_nd(x, &s, ceil, kind)?,
        Pool::Lp(p) => {
            // A sum: the average counting padding, times the window size. In
            // ceil mode, pad the end so every window lies in the padding (the
            // taps past it hold zeros, as the ones past the input do).
            if ceil {
                let mut outs = Vec::with_capacity(sizes.len());
                for (i, &size) in sizes.iter().enumerate() {
                    let span = (s.kernel[i] - 1) * s.dilations[i] + 1;
                    let padded = size + s.begin[i] + s.end[i];
                    let out = pool_out(
                        size,
                        s.begin[i],
                        s.end[i],
                        s.kernel[i],
                        s.strides[i],
                        s.dilations[i],
                        true,
                    )
                    .ok_or_else(|| {
                        format!(
                            "the window {:?} (strides {:?}, dilations {:?}) does not fit the padded input",
                            s.kernel, s.strides, s.dilations
                        )
                    })?;
                    if out > 0 {
                        s.end[i] += ((out - 1) * s.strides[i] + span).saturating_sub(padded);
                    }
                    outs.push(Dim::Fixed(out));
                }
                if outs.contains(&Dim::Fixed(0)) {
                    // No window along some dim: an empty output.
                    let xs = x.shape().0;
                    let mut dims = vec![xs[0].clone(), xs[1].clone()];
                    dims.extend(outs);
                    let zero = n.scalar(0.0, x.dtype())?;
                    return Ok(vec![zero.broadcast_to(Shape(dims))?]);
                }
            }
            let xp = pow_abs(x, p)?;
            let size: usize = s.kernel.iter().product();
            let sum = pool_nd(xp, &s, false, Pool::Avg(true))?.mul(size as f64)?;
            root(sum, p)?
        }
    };
    Ok(vec![y])
}

/// `MaxPool` with its `Indices` output, any spatial rank: each window's
/// first maximum (in window order) as a flat index into the input over
/// `N * C * spatial...`, the spatial part row-major or, with
/// `storage_order`, column-major (the first spatial dim fastest). The
/// taps are walked last to first, each overwriting the index where its
/// value equals the max (or, for a NaN max, is NaN: kiln's max propagates
/// NaN, and its index is the first NaN's). Taps in the padding or past it
/// are masked out, so they are never chosen, even for a max of -inf.
fn max_pool_indices<'g>(
    x: Tensor<'g>,
    s: &Spatial,
    ceil: bool,
    column_major: bool,
) -> R<Vec<Tensor<'g>>> {
    let y = pool_nd(x, s, ceil, Pool::Max)?;
    let sizes = fixed_from(x, 2)?;
    let outs = fixed_from(y, 2)?;
    let k = sizes.len();
    if outs.contains(&0) {
        // No window: an empty index tensor.
        let zero = x.builder().scalar(0.0, DType::I64)?;
        return Ok(vec![y, zero.broadcast_to(y.shape())?]);
    }
    // Pad so every window's taps exist (ceil mode may reach past the padding).
    let mut before = vec![0, 0];
    let mut after = vec![0, 0];
    for i in 0..k {
        let need = (outs[i] - 1) * s.strides[i] + (s.kernel[i] - 1) * s.dilations[i] + 1;
        let padded = sizes[i] + s.begin[i] + s.end[i];
        before.push(s.begin[i]);
        after.push(s.end[i] + need.saturating_sub(padded));
    }
    let xp = x.pad(&before, &after, 0.0)?;
    let y_nan = y.ne(y)?;
    // Each spatial dim's weight in the flat index.
    let weight: Vec<i64> = (0..k)
        .map(|i| {
            let others = if column_major { 0..i } else { i + 1..k };
            others.map(|m| sizes[m] as i64).product()
        })
        .collect();
    let b = x.builder();
    let mut idx = b.scalar(0.0, DType::I64)?;
    let taps: usize = s.kernel.iter().product();
    let count: usize = outs.iter().product();
    for t in (0..taps).rev() {
        // Tap `t` as a multi-index into the kernel (row-major).
        let mut tap = vec![0; k];
        let mut rest = t;
        for i in (0..k).rev() {
            tap[i] = rest % s.kernel[i];
            rest /= s.kernel[i];
        }
        let mut ranges = vec![SliceAxis::FULL; 2];
        for i in 0..k {
            let start = tap[i] * s.dilations[i];
            ranges.push(SliceAxis {
                start: start as i64,
                end: (start + (outs[i] - 1) * s.strides[i] + 1) as i64,
                step: s.strides[i] as i64,
            });
        }
        let under = xp.slice(&ranges)?;
        // The flat input position of this tap in every window, and whether
        // it lies inside the input.
        let mut pos = vec![0i64; count];
        let mut inside = vec![true; count];
        for o in 0..count {
            let mut rest = o;
            for i in (0..k).rev() {
                let oi = rest % outs[i];
                rest /= outs[i];
                let at = (oi * s.strides[i] + tap[i] * s.dilations[i]) as i64 - s.begin[i] as i64;
                inside[o] &= at >= 0 && at < sizes[i] as i64;
                pos[o] += at * weight[i];
            }
        }
        if !inside.contains(&true) {
            continue;
        }
        let nan_hit = under.ne(under)?.and(y_nan)?;
        let mut hit = under.eq(y)?.or(nan_hit)?;
        if inside.contains(&false) {
            let mask = Array::from_vec(outs.clone(), inside).ok_or("mask shape")?;
            hit = hit.and(b.constant(mask)?)?;
        }
        let pos = Array::from_vec(outs.clone(), pos).ok_or("index shape")?;
        idx = b.select(hit, b.constant(pos)?, idx)?;
    }
    // Plus each plane's offset, (n * C + c) * prod(spatial).
    let xs = x.shape().0;
    let mut plane_dims = vec![xs[0].clone(), xs[1].clone()];
    plane_dims.extend(std::iter::repeat_n(Dim::Fixed(1), k));
    let plane_shape = Shape(plane_dims);
    let c = xs[1].fixed().ok_or("channels must be fixed")? as f64;
    let plane = b
        .iota(DType::I64, plane_shape.clone(), 0)?
        .mul(c)?
        .add(b.iota(DType::I64, plane_shape, 1)?)?
        .mul(sizes.iter().product::<usize>() as f64)?;
    Ok(vec![y, idx.add(plane)?])
}

/// `|x|^p`.
fn pow_abs<'g>(x: Tensor<'g>, p: i64) -> R<Tensor<'g>> {
    match p {
        1 => Ok(x.abs()?),
        2 => Ok(x.mul(x)?),
        p => Ok(x.abs()?.pow(p as f64)?),
    }
}

/// `s^(1/p)`.
pub(crate) fn root<'g>(s: Tensor<'g>, p: i64) -> R<Tensor<'g>> {
    match p {
        1 => Ok(s),
        2 => Ok(s.sqrt()?),
        p => Ok(s.pow(1.0 / p as f64)?),
    }
}

/// `(sum |x|^p)^(1/p)` over `axes`, keeping them.
fn lp_sum<'g>(x: Tensor<'g>, p: i64, axes: &[i64]) -> R<Tensor<'g>> {
    root(pow_abs(x, p)?.sum(axes, true)?, p)
}

/// Max or average pooling of any spatial rank.
fn pool_nd<'g>(x: Tensor<'g>, s: &Spatial, ceil: bool, kind: Pool) -> R<Tensor<'g>> {
    let p2 = |t: Tensor<'g>, w: Window2d| -> R<Tensor<'g>> {
        match kind {
            Pool::Max => Ok(t.max_pool2d(w)?),
            Pool::Avg(include) => Ok(t.avg_pool2d(w, include)?),
            Pool::Lp(_) => Err("an Lp pool is an average pool of powers".into()),
        }
    };
    let k = x.rank() - 2;
    match k {
        1 => {
            // [N, C, L] as [N, C, L, 1].
            let y = p2(x.unsqueeze(3)?, s.window2d(Some(0), None, ceil))?;
            Ok(y.squeeze(3)?)
        }
        2 => p2(x, s.window2d(Some(0), Some(1), ceil)),
        _ => {
            // The last two dims, then each other spatial dim in turn.
            let xs = x.shape().0;
            let n = xs[0].clone();
            let sizes = fixed_from(x, 1)?;
            let (c, sp) = (sizes[0], &sizes[1..]);
            let lead = k - 2;
            let planes: usize = c * sp[..lead].iter().product::<usize>();
            let t = reshape(
                x,
                vec![
                    n.clone(),
                    Dim::Fixed(planes),
                    Dim::Fixed(sp[lead]),
                    Dim::Fixed(sp[lead + 1]),
                ],
            )?;
            let t = p2(t, s.window2d(Some(lead), Some(lead + 1), ceil))?;
            let ts = fixed_from(t, 2)?;
            let mut cur: Vec<usize> = sp[..lead].to_vec();
            cur.push(ts[0] * ts[1]);
            let mut t = t;
            for i in 0..lead {
                let pre = c * cur[..i].iter().product::<usize>();
                let post: usize = cur[i + 1..].iter().product();
                t = reshape(
                    t,
                    vec![
                        n.clone(),
                        Dim::Fixed(pre),
                        Dim::Fixed(cur[i]),
                        Dim::Fixed(post),
                    ],
                )?;
                t = p2(t, s.window2d(Some(i), None, ceil))?;
                cur[i] = fixed_from(t, 2)?[0];
            }
            let mut out = vec![n, Dim::Fixed(c)];
            out.extend(fixed(&cur[..lead]));
            out.extend(fixed(&ts));
            reshape(t, out)
        }
    }
}

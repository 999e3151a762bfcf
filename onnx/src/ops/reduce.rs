//! Reducing ONNX ops: `ReduceSum`, `ReduceMean`, `ReduceMax`, `ReduceMin`,
//! `ReduceProd`, `ReduceL1`, `ReduceL2`, `ReduceLogSum`, `ReduceLogSumExp`,
//! `ReduceSumSquare`, `ArgMax`, `ArgMin`, `TopK` and `CumSum`.
//!
//! Reductions take their axes from the `axes` attribute, or from their
//! second input from opset 13 (`ReduceSum`) or 18 (the others), which must
//! then be known at import time (or hold none or as many axes as the rank:
//! then their values do not matter). Empty axes reduce every axis, unless
//! `noop_with_empty_axes` is set: then only the elementwise parts of the
//! op's ONNX function body remain (`ReduceL1` gives `|x|`,
//! `ReduceSumSquare` `x * x`, ...), as the function bodies define.
//!
//! Deliberate limits:
//! - `ArgMax`/`ArgMin` with `select_last_index` and `TopK` need a fixed
//!   dim along their axis; `TopK`'s `k` must be known at import time;
//! - `TopK` always returns sorted results (allowed for `sorted = 0`), ties
//!   lower index first; NaNs are not ordered (ONNX ranks them largest);
//! - `CumSum` needs a fixed dim along its axis (every dim when the axis is
//!   computed at run time, then each axis is summed and one selected); it
//!   sums by doubling shifts (`log2 n` adds), so float results round like
//!   a pairwise sum, not a sequential one;
//! - integer `ReduceMean` truncates (a sum divided by the count);
//!   `ReduceL2`, `ReduceLogSum` and `ReduceLogSumExp` of integers compute
//!   in f64 and convert back.

use kiln_graph::{DType, Dim, Shape, Tensor};

use super::{axis, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("ReduceSum", |n| reduce(n, Kind::Sum)),
    ("ReduceMean", |n| reduce(n, Kind::Mean)),
    ("ReduceMax", |n| reduce(n, Kind::Max)),
    ("ReduceMin", |n| reduce(n, Kind::Min)),
    ("ReduceProd", |n| reduce(n, Kind::Prod)),
    ("ReduceL1", |n| reduce(n, Kind::L1)),
    ("ReduceL2", |n| reduce(n, Kind::L2)),
    ("ReduceLogSum", |n| reduce(n, Kind::LogSum)),
    ("ReduceLogSumExp", |n| reduce(n, Kind::LogSumExp)),
    ("ReduceSumSquare", |n| reduce(n, Kind::SumSquare)),
    ("ArgMax", |n| arg(n, true)),
    ("ArgMin", |n| arg(n, false)),
    ("TopK", top_k),
    ("CumSum", |n| cumulative(n, false)),
    ("CumProd", |n| cumulative(n, true)),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

/// The axes to reduce (`None`: none, `noop_with_empty_axes` with no axes).
fn reduce_axes(n: &Node<'_, '_>, rank: usize, input_from: i64) -> R<Option<Vec<i64>>> {
    let axes = if n.opset >= input_from {
        match n.const_ints(1) {
            Ok(a) => a,
            Err(e) => Some(runtime_axes(n, rank).ok_or(e)?),
        }
    } else {
        n.ints("axes")
    };
    match axes {
        Some(a) if !a.is_empty() => {
            let mut v = a
                .iter()
                .map(|&x| axis(x, rank).map(|x| x as i64))
                .collect::<R<Vec<_>>>()?;
            v.sort_unstable();
            v.dedup();
            Ok(Some(v))
        }
        _ if n.int("noop_with_empty_axes", 0) != 0 => Ok(None),
        _ => Ok(Some((0..rank as i64).collect())),
    }
}

/// Axes computed at run time, where their count alone tells which they
/// are: none, or every axis (ONNX forbids repeats).
fn runtime_axes(n: &Node<'_, '_>, rank: usize) -> Option<Vec<i64>> {
    let t = n.opt(1)?;
    match t.shape().num_elements()? {
        0 => Some(Vec::new()),
        c if c == rank => Some((0..rank as i64).collect()),
        _ => None,
    }
}

/// The shape of `x` reduced over `axes` with `keepdims`.
fn reduced_shape(x: Tensor<'_>, axes: &[i64], keepdims: bool) -> Shape {
    let mut out = Vec::new();
    for (i, d) in x.shape().0.into_iter().enumerate() {
        if axes.contains(&(i as i64)) {
            if keepdims {
                out.push(Dim::Fixed(1));
            }
        } else {
            out.push(d);
        }
    }
    Shape(out)
}

fn reduce<'g>(n: &Node<'_, 'g>, kind: Kind) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let input_from = if kind == Kind::Sum { 13 } else { 18 };
    let axes = reduce_axes(n, x.rank(), input_from)?;
    let keep = n.int("keepdims", 1) != 0;
    let dt = x.dtype();
    if dt == DType::Bool {
        // Bools (ReduceMax/Min from opset 20) reduce as integers.
        if !matches!(kind, Kind::Max | Kind::Min) {
            return n.unsupported(format!("{} of bools", n.op()));
        }
        let r = reduce_num(n, kind, x.cast(DType::I32)?, axes, keep)?;
        return Ok(vec![r.cast(DType::Bool)?]);
    }
    let float_only = matches!(kind, Kind::L2 | Kind::LogSum | Kind::LogSumExp);
    if float_only && !dt.is_float() {
        let r = reduce_num(n, kind, x.cast(DType::F64)?, axes, keep)?;
        return Ok(vec![r.cast(dt)?]);
    }
    Ok(vec![reduce_num(n, kind, x, axes, keep)?])
}

/// A reduction of a numeric tensor (`axes` `None`: the elementwise parts
/// only).
fn reduce_num<'g>(
    n: &Node<'_, 'g>,
    kind: Kind,
    x: Tensor<'g>,
    axes: Option<Vec<i64>>,
    keep: bool,
) -> R<Tensor<'g>> {
    let Some(ax) = axes else {
        return match kind {
            Kind::Sum | Kind::Mean | Kind::Max | Kind::Min | Kind::Prod | Kind::LogSumExp => Ok(x),
            Kind::L1 => Ok(x.abs()?),
            Kind::L2 => Ok(x.mul(x)?.sqrt()?),
            Kind::LogSum => Ok(x.log()?),
            Kind::SumSquare => Ok(x.mul(x)?),
        };
    };
    let ax = ax.as_slice();
    match kind {
        Kind::Sum => Ok(x.sum(ax, keep)?),
        Kind::Mean if x.dtype().is_float() => Ok(x.mean(ax, keep)?),
        Kind::Mean => {
            let count = ax
                .iter()
                .map(|&a| x.shape().0[a as usize].fixed())
                .product::<Option<usize>>()
                .ok_or("integer ReduceMean over a symbolic dim")?;
            Ok(x.sum(ax, keep)?.div(count.max(1) as i64)?)
        }
        Kind::Max => Ok(x.max(ax, keep)?),
        Kind::Min => Ok(x.min(ax, keep)?),
        Kind::Prod => Ok(x.prod(ax, keep)?),
        Kind::L1 => Ok(x.abs()?.sum(ax, keep)?),
        Kind::L2 => Ok(x.mul(x)?.sum(ax, keep)?.sqrt()?),
        Kind::SumSquare => Ok(x.mul(x)?.sum(ax, keep)?),
        Kind::LogSum => Ok(x.sum(ax, keep)?.log()?),
        Kind::LogSumExp => {
            // max + log(sum(exp(x - max))), with an infinite max (all -inf,
            // or an empty reduction) shifted by 0 instead.
            let m = x.max(ax, true)?;
            let finite = m.abs()?.lt(f64::INFINITY)?;
            let zero = n.scalar(0.0, x.dtype())?;
            let m = n.g.select(finite, m, zero)?;
            let s = x.sub(m)?.exp()?.sum(ax, keep)?.log()?;
            let m = if keep {
                m
            } else {
                m.reshape(reduced_shape(x, ax, false))?
            };
            Ok(s.add(m)?)
        }
    }
}

/// The fixed size of `x`'s dim `a`, or why it must be.
fn fixed_dim(n: &Node<'_, '_>, x: Tensor<'_>, a: usize) -> R<usize> {
    x.shape().0[a]
        .fixed()
        .ok_or_else(|| format!("{} needs a fixed dim {a}, got {}", n.op(), x.shape()).into())
}

/// `ArgMax`/`ArgMin`; `select_last_index` takes the first index of the
/// reversed axis.
fn arg<'g>(n: &Node<'_, 'g>, max: bool) -> R<Vec<Tensor<'g>>> {
    let mut x = n.input(0)?;
    if x.dtype() == DType::Bool {
        x = x.cast(DType::I32)?;
    }
    let a = axis(n.int("axis", 0), x.rank())?;
    let keep = n.int("keepdims", 1) != 0;
    let last = n.int("select_last_index", 0) != 0;
    let f = |t: Tensor<'g>| {
        if max {
            t.argmax(a as i64, keep)
        } else {
            t.argmin(a as i64, keep)
        }
    };
    if !last {
        return Ok(f(x)?).map(|t| vec![t]);
    }
    let len = fixed_dim(n, x, a)?;
    let rev = x.slice_axis(a as i64, -1, i64::MIN, -1)?;
    let i = f(rev)?;
    Ok(vec![i.neg()?.add(len as i64 - 1)?])
}

/// `TopK`: the `k` largest (or smallest) elements along `axis` and their
/// indices, sorted, ties by lower index. Small `k` takes the extreme `k`
/// times, masking what was taken; larger `k` ranks every element by
/// counting the elements ahead of it (`n x n` comparisons per row).
fn top_k<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let k = if n.opset < 10 {
        n.int("k", -1)
    } else {
        let k = n.const_ints(1)?.ok_or("k is required")?;
        *k.first()
            .filter(|_| k.len() == 1)
            .ok_or("k must hold one value")?
    };
    let a = axis(n.int("axis", -1), x.rank())?;
    let largest = n.int("largest", 1) != 0;
    let len = fixed_dim(n, x, a)?;
    if k < 0 || k as usize > len {
        return Err(format!("k = {k} is out of range for a dim of {len}").into());
    }
    let k = k as usize;
    if x.dtype() == DType::Bool {
        return n.unsupported("TopK of bools");
    }
    let (values, indices) = if k <= 16 || len > 4096 {
        top_k_iterative(n, x, a, k, largest)?
    } else {
        top_k_rank(n, x, a, k, largest)?
    };
    Ok(vec![values, indices])
}

/// `TopK` by `k` arg-reductions, each masking the elements taken before.
fn top_k_iterative<'g>(
    n: &Node<'_, 'g>,
    x: Tensor<'g>,
    a: usize,
    k: usize,
    largest: bool,
) -> R<(Tensor<'g>, Tensor<'g>)> {
    let dt = x.dtype();
    let len = fixed_dim(n, x, a)?;
    let mut ps = vec![1usize; x.rank()];
    ps[a] = len;
    let pos = n.g.iota(DType::I64, ps.as_slice(), a)?;
    // The worst value: taken elements become it.
    let worst = match (largest, dt) {
        (true, DType::I32) => i32::MIN as f64,
        (true, DType::I64) => i64::MIN as f64,
        (false, DType::I32) => i32::MAX as f64,
        (false, DType::I64) => i64::MAX as f64,
        (true, _) => f64::NEG_INFINITY,
        (false, _) => f64::INFINITY,
    };
    let worst = n.scalar(worst, dt)?;
    let mut taken = pos.lt(0i64)?;
    let (mut vals, mut idxs) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for _ in 0..k {
        let cand = n.g.select(taken, worst, x)?;
        let m = if largest {
            cand.max(&[a as i64], true)?
        } else {
            cand.min(&[a as i64], true)?
        };
        // The first untaken element equal to the extreme.
        let hit = x.eq(m)?.and(taken.not()?)?;
        let i = hit.cast(DType::I32)?.argmax(a as i64, true)?;
        taken = taken.or(pos.eq(i)?)?;
        vals.push(m);
        idxs.push(i);
    }
    let cat = |ts: &[Tensor<'g>]| -> R<Tensor<'g>> {
        if ts.is_empty() {
            let mut s = x.shape();
            s.0[a] = Dim::Fixed(0);
            return Ok(x.slice_axis(a as i64, 0, 0, 1)?.reshape(s)?);
        }
        Ok(n.g.concat(ts, a as i64)?)
    };
    let values = cat(&vals)?;
    let indices = if k == 0 {
        cat(&[])?.cast(DType::I64)?
    } else {
        n.g.concat(&idxs, a as i64)?
    };
    Ok((values, indices))
}

/// `TopK` by ranks: element `i`'s rank counts the elements `j` ahead of it
/// (better, or equal with `j < i`); output `r` takes the element of rank `r`.
fn top_k_rank<'g>(
    n: &Node<'_, 'g>,
    x: Tensor<'g>,
    a: usize,
    k: usize,
    largest: bool,
) -> R<(Tensor<'g>, Tensor<'g>)> {
    let r = x.rank();
    let len = fixed_dim(n, x, a)?;
    // Move the axis last: [.., len].
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let xp = x.permute(&perm)?;
    let xi = xp.unsqueeze(-1)?; // [.., i, 1]
    let xj = xp.unsqueeze(-2)?; // [.., 1, j]
    let better = if largest { xj.gt(xi) } else { xj.lt(xi) }?;
    let i_pos = n.g.iota(DType::I64, [len, 1], 0)?;
    let j_pos = n.g.iota(DType::I64, [1, len], 1)?;
    let tie = xj.eq(xi)?.and(j_pos.lt(i_pos)?)?;
    let ahead = better.or(tie)?.cast(DType::I64)?;
    let rank = ahead.sum(&[-1], false)?; // [.., i]
                                         // sel[.., r, i]: element i has rank r.
    let out_pos = n.g.iota(DType::I64, [k, 1], 0)?;
    let sel = rank.unsqueeze(-2)?.eq(out_pos)?;
    let idx_row = n.g.iota(DType::I64, [1, len], 1)?;
    let zero_i = n.scalar(0.0, DType::I64)?;
    let indices = n.g.select(sel, idx_row, zero_i)?.sum(&[-1], false)?;
    let zero = n.scalar(0.0, x.dtype())?;
    let values =
        n.g.select(sel, xp.unsqueeze(-2)?, zero)?
            .sum(&[-1], false)?;
    // Move the axis back.
    let mut inv = vec![0usize; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Ok((values.permute(&inv)?, indices.permute(&inv)?))
}

/// `CumSum` and `CumProd` by doubling shifts (Hillis-Steele): after adding the sums
/// shifted by 1, 2, 4, ..., each element holds the sum of its prefix.
///
/// An axis computed at run time is supported too (the output's shape does
/// not depend on it): the sums along every axis, selected by its value.
fn cumulative<'g>(n: &Node<'_, 'g>, prod: bool) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let ax = match n.const_ints(1) {
        Ok(ax) => ax.ok_or("axis is required")?,
        Err(_) if r == 1 => vec![0],
        Err(_) => {
            let at = n.input(1)?;
            if at.shape().num_elements() != Some(1) {
                return Err("axis must hold one value".into());
            }
            let at = at.reshape([0usize; 0])?.cast(DType::I64)?;
            let wrapped = at.add(r as i64)?;
            let at = n.g.select(at.lt(0i64)?, wrapped, at)?;
            let mut y = cum_along(n, x, 0, prod)?;
            for d in 1..r {
                let yd = cum_along(n, x, d, prod)?;
                y = n.g.select(at.eq(d as i64)?, yd, y)?;
            }
            return Ok(vec![y]);
        }
    };
    let ax = *ax
        .first()
        .filter(|_| ax.len() == 1)
        .ok_or("axis must hold one value")?;
    Ok(vec![cum_along(n, x, axis(ax, r)?, prod)?])
}

/// `CumSum` along an axis of symbolic length `L` (position ids as the
/// cumulative sum of a mask, as RoBERTa-style models export them): `x`
/// times the `[L, L]` triangle of ones (`i <= j`; `<` when exclusive,
/// mirrored when reversed), whose size is an expression. Quadratic in
/// `L`, where the fixed-length scan is `L log L`.
fn cum_sum_symbolic<'g>(
    n: &Node<'_, 'g>,
    x: Tensor<'g>,
    a: usize,
    exclusive: bool,
    reverse: bool,
) -> R<Tensor<'g>> {
    let r = x.rank();
    let len = x.shape().0[a].clone();
    let square = Shape(vec![len.clone(), len]);
    let i = n.g.iota(DType::I64, square.clone(), 0)?;
    let j = n.g.iota(DType::I64, square, 1)?;
    let keep = match (reverse, exclusive) {
        (false, false) => i.le(j),
        (false, true) => i.lt(j),
        (true, false) => i.ge(j),
        (true, true) => i.gt(j),
    }?;
    let tri = keep.cast(x.dtype())?;
    // The axis last, as a row vector of a matmul.
    let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
    perm.push(a);
    let moved = x.permute(&perm)?;
    let row = moved.unsqueeze(r as i64 - 1)?;
    let summed = row.matmul(tri)?.squeeze(r as i64 - 1)?;
    let mut back = vec![0; r];
    for (k, &d) in perm.iter().enumerate() {
        back[d] = k;
    }
    Ok(summed.permute(&back)?)
}

/// `CumSum` (or, with `prod`, `CumProd`) of `x` along axis `a`.
fn cum_along<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, a: usize, prod: bool) -> R<Tensor<'g>> {
    let fill = if prod { 1.0 } else { 0.0 };
    let exclusive = n.int("exclusive", 0) != 0;
    let reverse = n.int("reverse", 0) != 0;
    if !prod && x.shape().0[a].is_symbolic() {
        return cum_sum_symbolic(n, x, a, exclusive, reverse);
    }
    let len = fixed_dim(n, x, a)?;
    let r = x.rank();
    // Shifts toward the end (or the start when reversed) by s, filling 0.
    let shift = |t: Tensor<'g>, s: usize| -> R<Tensor<'g>> {
        let (mut before, mut after) = (vec![0usize; r], vec![0usize; r]);
        let kept = if reverse {
            after[a] = s;
            t.slice_axis(a as i64, s as i64, len as i64, 1)?
        } else {
            before[a] = s;
            t.slice_axis(a as i64, 0, (len - s) as i64, 1)?
        };
        Ok(kept.pad(&before, &after, fill)?)
    };
    let mut y = x;
    let mut s = 1;
    while s < len {
        y = if prod {
            y.mul(shift(y, s)?)?
        } else {
            y.add(shift(y, s)?)?
        };
        s *= 2;
    }
    if exclusive && len > 0 {
        y = shift(y, 1)?;
    }
    Ok(y)
}

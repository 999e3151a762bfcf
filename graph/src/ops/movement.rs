//! Movement ops: reshape, permute, broadcast, slice, pad, concat. Each only
//! changes how an index maps to memory (pad and concat also add elements).

use super::{bstrides, istrides, strided_store, view};
use crate::array::{Array, Data};
use crate::dim_expr::DimExpr;
use crate::op::SliceAxis;
use crate::shape::{Dim, Shape, TensorType};

/// Shape rule of reshape: the element counts must match, symbols included
/// (`[batch, seq, 768] -> [batch*seq, 768]`); counts that only some
/// bindings make equal are checked when the symbols are bound.
pub fn infer_reshape(x: &TensorType, shape: &Shape) -> Result<TensorType, String> {
    let count = |s: &Shape| s.size_expr().and_then(Dim::from_expr);
    let (a, b) = (count(&x.shape)?, count(shape)?);
    crate::shape::unify_dims(
        &a,
        &b,
        &format!("element counts of {} and {}", x.shape, shape),
    )
    .map_err(|_| {
        format!(
            "cannot reshape {} to {}: element counts differ ({a} vs {b})",
            x.shape, shape
        )
    })?;
    Ok(TensorType::new(x.dtype, shape.clone()))
}

/// Reference meaning of reshape.
pub fn eval_reshape(x: &Array, out: &[usize]) -> Result<Array, String> {
    x.clone().reshaped(out.to_vec()).ok_or_else(|| {
        format!(
            "cannot reshape {:?} to {:?}: element counts differ",
            x.shape(),
            out
        )
    })
}

/// Shape rule of permute: `perm` is a permutation of `0..rank`.
pub fn infer_permute(x: &TensorType, perm: &[usize]) -> Result<TensorType, String> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank()
        || perm
            .iter()
            .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!(
            "{perm:?} is not a permutation of the {} dims",
            x.rank()
        ));
    }
    Ok(TensorType::new(
        x.dtype,
        Shape(perm.iter().map(|&p| x.shape.0[p].clone()).collect()),
    ))
}

/// Reference meaning of permute.
pub fn eval_permute(x: &Array, perm: &[usize]) -> Array {
    let st = istrides(x.shape());
    let out: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let ps: Vec<isize> = perm.iter().map(|&p| st[p]).collect();
    view(x, &out, 0, &ps)
}

/// Shape rule of broadcast: each input dim equals its target dim or is 1.
pub fn infer_broadcast(x: &TensorType, shape: &Shape) -> Result<TensorType, String> {
    let off = shape.rank().checked_sub(x.rank()).ok_or_else(|| {
        format!(
            "cannot broadcast {} to the lower-rank shape {}",
            x.shape, shape
        )
    })?;
    for (i, d) in x.shape.0.iter().enumerate() {
        let t = &shape.0[off + i];
        if d == &Dim::Fixed(1) || d == t {
            continue;
        }
        // A symbolic size that may be 1 or may equal a symbolic target:
        // checked when the symbols are bound.
        if !(crate::shape::may_equal(d, t) || (t.is_symbolic() && crate::shape::may_be_one(d))) {
            return Err(format!(
                "cannot broadcast {} to {}: dim {i} is {d}",
                x.shape, shape
            ));
        }
        crate::shape::defer_check(crate::shape::DimCheck {
            what: format!("dim {i} of {} broadcast to {}", x.shape, shape),
            found: d.clone(),
            expected: t.clone(),
            kind: crate::shape::CheckKind::EqualOrOne,
        });
    }
    Ok(TensorType::new(x.dtype, shape.clone()))
}

/// Reference meaning of broadcast.
pub fn eval_broadcast(x: &Array, out: &[usize]) -> Array {
    view(x, out, 0, &bstrides(x.shape(), out))
}

/// Resolves a Python-style slice of an axis of size `dim` to (start, len, step).
pub fn slice_range(dim: usize, ax: SliceAxis) -> (i64, usize, i64) {
    let d = dim as i64;
    let norm = |v: i64, lo: i64, hi: i64| -> i64 {
        let v = if v < 0 { v.saturating_add(d) } else { v };
        v.clamp(lo, hi)
    };
    if ax.step > 0 {
        let (s, e) = (norm(ax.start, 0, d), norm(ax.end, 0, d));
        let len = if e > s {
            ((e - s) as u64).div_ceil(ax.step as u64) as usize
        } else {
            0
        };
        (s, len, ax.step)
    } else {
        let (s, e) = (norm(ax.start, -1, d - 1), norm(ax.end, -1, d - 1));
        let len = if s > e {
            ((s - e) as u64).div_ceil(ax.step.unsigned_abs()) as usize
        } else {
            0
        };
        (s, len, ax.step)
    }
}

/// [`slice_range`] of an axis of size `dim` with bounds that may be
/// expressions: `(first index, length)`. A bound whose sign the bounds do
/// not decide (`k - q`: from the front, or from the end?) is taken to
/// count from the front, and that it is not negative is checked when the
/// symbols are bound.
pub fn slice_range_expr(
    dim: &DimExpr,
    start: &DimExpr,
    end: &DimExpr,
    step: i64,
) -> Result<(DimExpr, DimExpr), String> {
    if step == 0 {
        return Err("step 0".into());
    }
    let norm = |v: &DimExpr, lo: &DimExpr, hi: &DimExpr| -> Result<DimExpr, String> {
        let (vlo, vhi) = v.bounds();
        let v = if vlo >= 0 {
            v.clone()
        } else if vhi < 0 {
            v.add(dim)?
        } else {
            crate::shape::defer_check(crate::shape::DimCheck {
                what: format!("slice bound {v} (taken to count from the front)"),
                found: Dim::from_expr(v.clone())?,
                expected: Dim::Fixed(0),
                kind: crate::shape::CheckKind::AtLeast,
            });
            v.clone()
        };
        v.max_with(lo)?.min_with(hi)
    };
    let zero = DimExpr::val(0);
    let (s, len) = if step > 0 {
        let s = norm(start, &zero, dim)?;
        let e = norm(end, &zero, dim)?;
        let span = e.sub(&s)?.add(&DimExpr::val(step - 1))?;
        (s, span.div_floor(&DimExpr::val(step))?)
    } else {
        let last = dim.sub(&DimExpr::val(1))?;
        let s = norm(start, &DimExpr::val(-1), &last)?;
        let e = norm(end, &DimExpr::val(-1), &last)?;
        let k = step.checked_neg().ok_or("step overflows")?;
        let span = s.sub(&e)?.add(&DimExpr::val(k - 1))?;
        (s, span.div_floor(&DimExpr::val(k))?)
    };
    Ok((s, len.max_with(&zero)?))
}

/// Shape rule of slice: one range per dim, nonzero steps.
pub fn infer_slice(x: &TensorType, axes: &[SliceAxis]) -> Result<TensorType, String> {
    if axes.len() != x.rank() {
        return Err(format!(
            "needs one range per dim: {} ranges for rank {}",
            axes.len(),
            x.rank()
        ));
    }
    let mut out = Vec::new();
    for (i, (d, ax)) in x.shape.0.iter().zip(axes).enumerate() {
        if ax.step == 0 {
            return Err(format!("step of dim {i} is 0"));
        }
        out.push(match d {
            Dim::Fixed(n) => Dim::Fixed(slice_range(*n, *ax).1),
            d if *ax == SliceAxis::FULL => d.clone(),
            d => {
                let (_, len) = slice_range_expr(
                    &d.expr(),
                    &DimExpr::val(ax.start),
                    &DimExpr::val(ax.end),
                    ax.step,
                )
                .map_err(|e| format!("dim {i} ({d}): {e}"))?;
                Dim::from_expr(len)?
            }
        });
    }
    Ok(TensorType::new(x.dtype, Shape(out)))
}

/// Reference meaning of slice.
pub fn eval_slice(x: &Array, axes: &[SliceAxis]) -> Array {
    let st = istrides(x.shape());
    let mut base = 0isize;
    let mut out = Vec::new();
    let mut vs = Vec::new();
    for (i, ax) in axes.iter().enumerate() {
        let (start, len, step) = slice_range(x.shape()[i], *ax);
        out.push(len);
        if len > 0 {
            base += start as isize * st[i];
        }
        // A dim of length 0 or 1 never advances, so its (possibly huge) step is
        // irrelevant; otherwise step * stride stays within the buffer.
        vs.push(if len > 1 { step as isize * st[i] } else { 0 });
    }
    if out.contains(&0) {
        base = 0;
    }
    view(x, &out, base, &vs)
}

fn pad_i64(p: usize) -> Result<i64, String> {
    i64::try_from(p).map_err(|_| format!("a pad of {p} overflows"))
}

/// Shape rule of pad: one count per dim before and after.
pub fn infer_pad(x: &TensorType, before: &[usize], after: &[usize]) -> Result<TensorType, String> {
    if before.len() != x.rank() || after.len() != x.rank() {
        return Err(format!(
            "needs {} pads before and after, got {} and {}",
            x.rank(),
            before.len(),
            after.len()
        ));
    }
    let mut out = Vec::new();
    for (i, d) in x.shape.0.iter().enumerate() {
        out.push(match d {
            Dim::Fixed(n) => Dim::Fixed(
                n.checked_add(before[i])
                    .and_then(|v| v.checked_add(after[i]))
                    .ok_or_else(|| format!("padded dim {i} overflows"))?,
            ),
            d => Dim::from_expr(
                d.expr()
                    .add(&DimExpr::val(pad_i64(before[i])?))?
                    .add(&DimExpr::val(pad_i64(after[i])?))?,
            )?,
        });
    }
    Ok(TensorType::new(x.dtype, Shape(out)))
}

/// Reference meaning of pad.
pub fn eval_pad(x: &Array, before: &[usize], after: &[usize], value: f64) -> Array {
    let out: Vec<usize> = x
        .shape()
        .iter()
        .zip(before.iter().zip(after))
        .map(|(d, (b, a))| d + b + a)
        .collect();
    let ost = istrides(&out);
    let base: isize = before.iter().zip(&ost).map(|(&b, &s)| b as isize * s).sum();
    let mut res = Data::filled(x.dtype(), out.iter().product(), value);
    store_into(&mut res, x, base, &ost);
    Array::new(out, res).expect("padded shape matches")
}

fn store_into(dst: &mut Data, src: &Array, base: isize, strides: &[isize]) {
    let shape = src.shape();
    match (dst, src.data()) {
        (Data::F32(d), Data::F32(s)) => strided_store(d, s, shape, base, strides),
        (Data::F64(d), Data::F64(s)) => strided_store(d, s, shape, base, strides),
        (Data::I32(d), Data::I32(s)) => strided_store(d, s, shape, base, strides),
        (Data::I64(d), Data::I64(s)) => strided_store(d, s, shape, base, strides),
        (Data::Bool(d), Data::Bool(s)) => strided_store(d, s, shape, base, strides),
        (Data::F16(d), Data::F16(s)) => strided_store(d, s, shape, base, strides),
        (Data::BF16(d), Data::BF16(s)) => strided_store(d, s, shape, base, strides),
        (Data::I8(d), Data::I8(s)) => strided_store(d, s, shape, base, strides),
        (Data::I16(d), Data::I16(s)) => strided_store(d, s, shape, base, strides),
        (Data::U8(d), Data::U8(s)) => strided_store(d, s, shape, base, strides),
        (Data::U16(d), Data::U16(s)) => strided_store(d, s, shape, base, strides),
        (Data::U32(d), Data::U32(s)) => strided_store(d, s, shape, base, strides),
        (Data::U64(d), Data::U64(s)) => strided_store(d, s, shape, base, strides),
        _ => unreachable!("dtypes were checked by the shape rule"),
    }
}

/// Shape rule of concat: equal dtypes and ranks, dims equal except `axis`, which must be fixed.
pub fn infer_concat(xs: &[&TensorType], axis: usize) -> Result<TensorType, String> {
    let first = xs[0];
    if axis >= first.rank() {
        return Err(format!(
            "axis {axis} is out of range for rank {}",
            first.rank()
        ));
    }
    let mut total = DimExpr::val(0);
    for (k, x) in xs.iter().enumerate() {
        if x.dtype != first.dtype {
            return Err(format!(
                "input {k} is {} but input 0 is {}",
                x.dtype, first.dtype
            ));
        }
        if x.rank() != first.rank() {
            return Err(format!(
                "input {k} has rank {} but input 0 has rank {}",
                x.rank(),
                first.rank()
            ));
        }
        for (i, (a, b)) in x.shape.0.iter().zip(&first.shape.0).enumerate() {
            if i != axis {
                crate::shape::unify_dims(a, b, &format!("dim {i} of input {k} and of input 0"))
                    .map_err(|_| {
                        format!("input {k} differs from input 0 in dim {i} ({a} vs {b})")
                    })?;
            }
        }
        total = total.add(&x.shape.0[axis].expr())?;
    }
    let mut shape = first.shape.clone();
    shape.0[axis] = Dim::from_expr(total)?;
    Ok(TensorType::new(first.dtype, shape))
}

/// Reference meaning of concat.
pub fn eval_concat(xs: &[&Array], axis: usize, out: &[usize]) -> Array {
    let ost = istrides(out);
    let mut res = Data::zeros(xs[0].dtype(), out.iter().product());
    let mut at = 0usize;
    for x in xs {
        store_into(&mut res, x, at as isize * ost[axis], &ost);
        at += x.shape()[axis];
    }
    Array::new(out.to_vec(), res).expect("concat shape matches")
}

// ---- gradients ----

use crate::autodiff::zeros_like;
use crate::builder::Tensor;
use crate::dtype::DType;

/// Gradient rule of permute: the inverse permutation.
#[track_caller]
pub(crate) fn grad_permute<'g>(perm: &[usize], g: Tensor<'g>) -> crate::error::Result<Tensor<'g>> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    g.permute(&inv)
}

/// Places `g` (length `n` along `axis`) at positions `start + i * step` of a
/// zero tensor whose `axis` has length `len`: the adjoint of a strided slice.
#[track_caller]
pub(crate) fn spread<'g>(
    g: Tensor<'g>,
    axis: usize,
    start: &DimExpr,
    step: i64,
    len: Dim,
) -> crate::error::Result<Tensor<'g>> {
    let n = g.dim(axis);
    let b = g.builder();
    let idx = b
        .iota(DType::I64, Shape(vec![n]), 0)?
        .mul(step)?
        .add(b.size_value(start)?)?;
    let mut shape = g.shape();
    shape.0[axis] = len;
    let zero = b.scalar(0.0, g.dtype())?.broadcast_to(shape)?;
    zero.scatter_add(idx, g, axis as i64)
}

/// Gradient rule of slice: zeros around the slice, the gradient inside.
#[track_caller]
pub(crate) fn grad_slice<'g>(
    x: Tensor<'g>,
    axes: &[SliceAxis],
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let xs = x.shape();
    let mut t = g;
    for (i, ax) in axes.iter().enumerate() {
        let Dim::Fixed(d) = xs.dims()[i] else {
            if *ax == SliceAxis::FULL {
                continue;
            }
            // A symbolic dim: the slice's elements placed by a scatter.
            let dim = xs.dims()[i].clone();
            let (start, _) = slice_range_expr(
                &dim.expr(),
                &DimExpr::val(ax.start),
                &DimExpr::val(ax.end),
                ax.step,
            )
            .map_err(|e| crate::error::Error::InvalidGraph(format!("slice gradient: {e}")))?;
            t = spread(t, i, &start, ax.step, dim)?;
            continue;
        };
        let (start, len, step) = slice_range(d, *ax);
        if len == d && step == 1 {
            continue;
        }
        if step == 1 {
            let mut before = vec![0; xs.rank()];
            let mut after = vec![0; xs.rank()];
            before[i] = start as usize;
            after[i] = d - start as usize - len;
            t = t.pad(&before, &after, 0.0)?;
        } else {
            t = spread(t, i, &DimExpr::val(start), step, Dim::Fixed(d))?;
        }
    }
    if t.shape() != xs {
        // Only an empty slice has nothing to place; its gradient is zero.
        return zeros_like(x);
    }
    Ok(t)
}

/// Gradient rule of pad: the gradient of the original region.
#[track_caller]
pub(crate) fn grad_pad<'g>(
    x: Tensor<'g>,
    before: &[usize],
    after: &[usize],
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let axes: Vec<SliceAxis> = x
        .shape()
        .dims()
        .iter()
        .zip(before.iter().zip(after))
        .map(|(d, (&b, &a))| match d {
            Dim::Fixed(n) => SliceAxis {
                start: b as i64,
                end: (b + n) as i64,
                step: 1,
            },
            // The padded gradient's dim is `d + b + a`: all but `a` from the end.
            _ => SliceAxis {
                start: b as i64,
                end: if a == 0 { i64::MAX } else { -(a as i64) },
                step: 1,
            },
        })
        .collect();
    g.slice(&axes)
}

/// Gradient rule of concat: each input's part of the gradient.
#[track_caller]
pub(crate) fn grad_concat<'g>(
    xs: &[Tensor<'g>],
    axis: usize,
    g: Tensor<'g>,
) -> crate::error::Result<Vec<Option<Tensor<'g>>>> {
    let mut start = 0i64;
    let mut out = Vec::with_capacity(xs.len());
    for x in xs {
        let n = x.shape().dims()[axis].fixed().unwrap_or(0) as i64;
        out.push(if x.dtype().is_float() {
            Some(g.slice_axis(axis as i64, start, start + n, 1)?)
        } else {
            None
        });
        start += n;
    }
    Ok(out)
}

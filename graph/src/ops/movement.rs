//! Movement ops: reshape, permute, broadcast, slice, pad, concat. Each only
//! changes how an index maps to memory (pad and concat also add elements).

use super::{bstrides, istrides, strided_store, view};
use crate::array::{Array, Data};
use crate::op::SliceAxis;
use crate::shape::{Dim, Shape, TensorType};

/// Shape rule of reshape: the element counts must match, symbols included.
pub fn infer_reshape(x: &TensorType, shape: &Shape) -> Result<TensorType, String> {
    if x.shape.symbolic_size() != shape.symbolic_size() {
        return Err(format!(
            "cannot reshape {} to {}: element counts differ",
            x.shape, shape
        ));
    }
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
        if d != &Dim::Fixed(1) && d != &shape.0[off + i] {
            return Err(format!(
                "cannot broadcast {} to {}: dim {i} is {d}",
                x.shape, shape
            ));
        }
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

/// Shape rule of slice: one range per dim, nonzero steps; symbolic dims only whole.
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
            Dim::Sym(s) if *ax == SliceAxis::FULL => Dim::Sym(s.clone()),
            Dim::Sym(s) => {
                return Err(format!(
                    "dim {i} is symbolic ({s}) and can only be taken whole"
                ))
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

/// Shape rule of pad: one count per dim before and after; symbolic dims unpadded.
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
            Dim::Sym(s) if before[i] == 0 && after[i] == 0 => Dim::Sym(s.clone()),
            Dim::Sym(s) => return Err(format!("dim {i} is symbolic ({s}) and cannot be padded")),
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
    let mut total = 0usize;
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
            if i != axis && a != b {
                return Err(format!(
                    "input {k} differs from input 0 in dim {i} ({a} vs {b})"
                ));
            }
        }
        match &x.shape.0[axis] {
            Dim::Fixed(n) => total = total.checked_add(*n).ok_or("the joined dim overflows")?,
            Dim::Sym(s) => {
                return Err(format!("concat axis {axis} of input {k} is symbolic ({s})"))
            }
        }
    }
    let mut shape = first.shape.clone();
    shape.0[axis] = Dim::Fixed(total);
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
    start: i64,
    step: i64,
    len: usize,
) -> crate::error::Result<Tensor<'g>> {
    let n = g.shape().dims()[axis].fixed().unwrap_or(0);
    let b = g.builder();
    let idx = b.iota(DType::I64, [n], 0)?.mul(step)?.add(start)?;
    let mut shape = g.shape();
    shape.0[axis] = Dim::Fixed(len);
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
            t = spread(t, i, start, step, d)?;
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
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let axes: Vec<SliceAxis> = x
        .shape()
        .dims()
        .iter()
        .zip(before)
        .map(|(d, &b)| match d {
            Dim::Fixed(n) => SliceAxis {
                start: b as i64,
                end: (b + n) as i64,
                step: 1,
            },
            Dim::Sym(_) => SliceAxis::FULL,
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

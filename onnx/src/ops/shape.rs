//! Shape and data-movement ONNX ops: `Reshape`, `Transpose`, `Concat`,
//! `Split`, `Slice`, `Squeeze`, `Unsqueeze`, `Flatten`, `Expand`, `Tile`,
//! `DepthToSpace`, `SpaceToDepth`, and the shape-producing `Shape`,
//! `Size`, `ConstantOfShape`, `Range`, `Trilu`, `EyeLike`.
//!
//! kiln's shapes are static per compile, so every input that decides a
//! shape (Reshape's shape, Slice's bounds, Split's sizes, Pad's pads,
//! Tile's repeats, Expand's shape, Squeeze/Unsqueeze's axes,
//! ConstantOfShape's shape, Range's operands) must be known at import time:
//! a constant, or a shape value — `Shape`/`Size` of symbolic dims and what
//! is computed from them, whose values are dim expressions (`batch*seq`);
//! see `kiln_graph::ops::symbolic`. A value computed from tensor data there
//! is an error naming it.
//!
//! Symbolic dims and expressions pass through every op here but these
//! limits: Split, Pad's non-constant modes, DepthToSpace and SpaceToDepth
//! need fixed sizes on the axes they cut; Slice's axes and steps, and
//! Squeeze/Unsqueeze's axes, are constants; a symbolic Range has a
//! constant integer delta. Slice bounds on a symbolic dim clamp as Python
//! does (ONNX differs only for a backward start before the first element);
//! an end of at least `i32::MAX` is "to the end". Expand of a fixed size
//! against an expression keeps the fixed size (the expression must be 1
//! or equal); of two expressions, takes the target's (checked when bound).
//! `Pad`, which follows the same rules, is in `pad.rs`. Not yet taking
//! shape values: Resize's sizes, OneHot's depth, TopK's k.

use kiln_graph::{Array, DType, Dim, DimExpr, Scalar, Shape, SliceAxis, Tensor};

use super::{axis, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Reshape", reshape),
    ("Transpose", transpose),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Flatten", flatten),
    ("Expand", expand),
    ("Shape", shape),
    ("Size", size),
    ("ConstantOfShape", constant_of_shape),
    ("Range", range),
    ("Tile", tile),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", space_to_depth),
    ("Trilu", trilu),
    ("EyeLike", eye_like),
];

pub(crate) fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// Integers from input `i` where present (later opsets), else from the
/// attribute `name` (earlier opsets).
fn ints_input_or_attr(n: &Node<'_, '_>, i: usize, name: &str) -> R<Option<Vec<i64>>> {
    Ok(match n.const_ints(i)? {
        Some(v) => Some(v),
        None => n.ints(name),
    })
}

/// A fixed dim of `t`, or why it must be fixed.
pub(crate) fn fixed_dim(t: Tensor<'_>, i: usize, what: &str) -> R<usize> {
    t.shape().0[i].fixed().ok_or_else(|| {
        format!(
            "unsupported: {what} of symbolic dim {i} (shape {})",
            t.shape()
        )
        .into()
    })
}

/// A non-negative size from an ONNX integer.
fn size_of(v: i64, what: &str) -> R<usize> {
    usize::try_from(v).map_err(|_| format!("{what} {v} is negative").into())
}

/// `Reshape`: `0` copies the input dim (unless `allowzero=1`, opset 14,
/// where it is a zero dim), one `-1` is inferred; symbolic dims survive
/// where they are copied or inferred.
pub(crate) fn reshape<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if n.opset >= 5 {
        if let Some(dims) = n.sym_ints(1)? {
            if dims.iter().any(|d| d.as_const().is_none()) {
                // A shape computed from the input's shape (`[batch*seq, 768]`).
                return Ok(one(x.reshape_dims(&dims)?));
            }
        }
    }
    let dims = ints_input_or_attr(n, 1, "shape")?.ok_or("Reshape needs a shape")?;
    if n.int("allowzero", 0) != 0 && dims.contains(&0) {
        if dims.contains(&-1) {
            return Err("allowzero=1 with both 0 and -1 in the shape is invalid".into());
        }
        let fixed = dims
            .iter()
            .map(|&d| size_of(d, "reshape dim"))
            .collect::<R<Vec<_>>>()?;
        return Ok(one(x.reshape(Shape::fixed(&fixed))?));
    }
    Ok(one(x.reshape_to(&dims)?))
}

/// `Transpose`: `perm` defaults to reversing the dims.
pub(crate) fn transpose<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let perm = match n.ints("perm") {
        Some(p) => p.iter().map(|&a| axis(a, r)).collect::<R<Vec<_>>>()?,
        None => (0..r).rev().collect(),
    };
    Ok(one(x.permute(&perm)?))
}

/// `Concat` along `axis` (which must be fixed in every input).
pub(crate) fn concat<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let xs = n.all_inputs();
    let first = *xs.first().ok_or("Concat needs an input")?;
    let a = axis(n.int("axis", 0), first.rank())?;
    if xs.len() == 1 {
        return Ok(vec![first]);
    }
    Ok(one(n.g.concat(&xs, a as i64)?))
}

/// `Split`: sizes from the `split` attribute (before opset 13) or input 1;
/// otherwise `num_outputs` (opset 18) or the number of outputs equal
/// parts, the last one smaller where the axis does not divide evenly (as
/// ONNX's reference does).
pub(crate) fn split<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let a = axis(n.int("axis", 0), x.rank())?;
    let d = fixed_dim(x, a, "splitting")?;
    let outs = n.outputs();
    let sizes: Vec<usize> = match ints_input_or_attr(n, 1, "split")? {
        Some(s) if !s.is_empty() => {
            let s = s
                .iter()
                .map(|&v| size_of(v, "split size"))
                .collect::<R<Vec<_>>>()?;
            if s.iter().sum::<usize>() != d {
                return Err(format!("split sizes {s:?} do not add up to dim {a} ({d})").into());
            }
            if s.len() != outs {
                return Err(format!("{} split sizes for {outs} outputs", s.len()).into());
            }
            s
        }
        _ => {
            let k = size_of(n.int("num_outputs", outs as i64), "num_outputs")?;
            if k == 0 {
                return Err("Split into 0 parts".into());
            }
            let chunk = d.div_ceil(k);
            let last = d
                .checked_sub(chunk * (k - 1))
                .ok_or_else(|| format!("dim {a} ({d}) cannot be split into {k} parts"))?;
            let mut s = vec![chunk; k - 1];
            s.push(last);
            s
        }
    };
    let mut start = 0usize;
    let mut res = Vec::with_capacity(sizes.len());
    for s in sizes {
        res.push(x.slice_axis(a as i64, start as i64, (start + s) as i64, 1)?);
        start += s;
    }
    Ok(res)
}

/// Whether a slice of a symbolic dim takes all of it: step 1 from the
/// start to an end of at least `i32::MAX` (exporters write INT64_MAX or
/// INT32_MAX for "to the end").
pub(crate) fn whole(s: SliceAxis) -> bool {
    s.step == 1 && (s.start == 0 || s.start <= -(1 << 62)) && s.end >= i32::MAX as i64
}

/// One axis of an ONNX `Slice` over a dim of fixed size `d`, resolved as
/// the spec says (opset 13 text): negative `start`/`end` get `d` added;
/// then for a positive step both are clamped to `[0, d]`, for a negative
/// step `start` to `[0, d-1]` and `end` to `[-1, d-1]` (an `end` of
/// `INT_MAX` too: it is no special value). The whole axis is
/// `SliceAxis::FULL`; otherwise the result is a kiln slice
/// (numpy's meaning) taking the same elements: it differs from numpy where
/// a negative step starts before the first element (ONNX starts at 0,
/// numpy takes nothing), and an `end` of -1 ("before index 0") is written
/// as `i64::MIN`, which kiln's slice does not count from the end.
fn onnx_slice_axis(d: usize, start: i64, end: i64, step: i64) -> SliceAxis {
    let d = i64::try_from(d).unwrap_or(i64::MAX);
    let from_end = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (start, end) = (from_end(start), from_end(end));
    if step > 0 {
        let (start, end) = (start.clamp(0, d), end.clamp(0, d));
        if step == 1 && start == 0 && end == d {
            return SliceAxis::FULL;
        }
        return SliceAxis { start, end, step };
    }
    if d == 0 {
        // No element to take (the clamp range `[0, -1]` is empty).
        return SliceAxis {
            start: 0,
            end: 0,
            step: 1,
        };
    }
    let end = end.clamp(-1, d - 1);
    SliceAxis {
        start: start.clamp(0, d - 1),
        end: if end < 0 { i64::MIN } else { end },
        step,
    }
}

/// `Slice`: `starts`/`ends`/`axes` attributes before opset 10, inputs
/// (with `steps`) after. Bounds are resolved and clamped as the ONNX spec
/// says (see [`onnx_slice_axis`]); a symbolic dim can only be taken whole.
pub(crate) fn slice<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let (starts, ends, axes, steps) = if n.opset < 10 {
        let exprs = |v: Option<Vec<i64>>| v.map(|v| v.into_iter().map(DimExpr::val).collect());
        (
            exprs(n.ints("starts")),
            exprs(n.ints("ends")),
            n.ints("axes"),
            None,
        )
    } else {
        (
            n.sym_ints(1)?,
            n.sym_ints(2)?,
            n.const_ints(3)?,
            n.const_ints(4)?,
        )
    };
    let starts = starts.ok_or("Slice needs starts")?;
    let ends = ends.ok_or("Slice needs ends")?;
    let k = starts.len();
    let axes = axes.unwrap_or_else(|| (0..k as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; k]);
    if ends.len() != k || axes.len() != k || steps.len() != k {
        return Err(format!(
            "starts, ends, axes and steps differ in length ({k}, {}, {}, {})",
            ends.len(),
            axes.len(),
            steps.len()
        )
        .into());
    }
    let shape = x.shape();
    let mut ranges = vec![SliceAxis::FULL; r];
    let mut seen = vec![false; r];
    // Axes with bounds that are expressions: gathers after the slice.
    let mut dynamic = Vec::new();
    for i in 0..k {
        let a = axis(axes[i], r)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("axis {} is sliced twice", axes[i]).into());
        }
        if steps[i] == 0 {
            return Err("a slice step is 0".into());
        }
        let (Some(start), Some(end)) = (starts[i].as_const(), ends[i].as_const()) else {
            dynamic.push((a, i));
            continue;
        };
        let s = SliceAxis {
            start,
            end,
            step: steps[i],
        };
        ranges[a] = match &shape.0[a] {
            Dim::Fixed(d) => onnx_slice_axis(*d, s.start, s.end, s.step),
            _ if whole(s) => SliceAxis::FULL,
            // ONNX clamps as Python does, but for a backward start before
            // the first element (kiln's slice then takes nothing). An end
            // of at least i32::MAX is "to the end".
            _ if s.end >= i32::MAX as i64 => SliceAxis { end: i64::MAX, ..s },
            _ => s,
        };
    }
    let mut y = if ranges.iter().all(|s| *s == SliceAxis::FULL) {
        x
    } else {
        x.slice(&ranges)?
    };
    for (a, i) in dynamic {
        // An end of at least i32::MAX is "to the end", as for constants.
        let end = match ends[i].as_const() {
            Some(e) if e >= i32::MAX as i64 => y.dim(a).expr(),
            _ => ends[i].clone(),
        };
        y = y.slice_dyn(a as i64, &starts[i], &end, steps[i])?;
    }
    Ok(vec![y])
}

/// `Squeeze`: `axes` attribute before opset 13, input after; without axes
/// every fixed dim of size 1 goes (symbolic dims stay).
pub(crate) fn squeeze<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let dims = x.shape().0;
    let out: Vec<Dim> = match ints_input_or_attr(n, 1, "axes")? {
        Some(axes) if !axes.is_empty() => {
            let mut drop = vec![false; r];
            for &a in &axes {
                let i = axis(a, r)?;
                if dims[i] != Dim::Fixed(1) {
                    return Err(format!("cannot squeeze dim {i} of size {}", dims[i]).into());
                }
                drop[i] = true;
            }
            dims.into_iter()
                .zip(drop)
                .filter(|(_, d)| !d)
                .map(|(d, _)| d)
                .collect()
        }
        _ => dims.into_iter().filter(|d| *d != Dim::Fixed(1)).collect(),
    };
    Ok(one(x.reshape(Shape(out))?))
}

/// `Unsqueeze`: `axes` (positions in the output) attribute before opset
/// 13, input after.
pub(crate) fn unsqueeze<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let axes = ints_input_or_attr(n, 1, "axes")?.ok_or("Unsqueeze needs axes")?;
    let out_rank = x.rank() + axes.len();
    let mut at = axes
        .iter()
        .map(|&a| axis(a, out_rank))
        .collect::<R<Vec<_>>>()?;
    at.sort_unstable();
    if at.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} repeat an axis").into());
    }
    let mut dims = x.shape().0;
    for a in at {
        dims.insert(a, Dim::Fixed(1));
    }
    Ok(one(x.reshape(Shape(dims))?))
}

/// The product of `dims` as one dim (an expression where some are symbolic).
pub(crate) fn product(dims: &[Dim]) -> R<Dim> {
    Ok(Shape(dims.to_vec()).size_expr().and_then(Dim::from_expr)?)
}

/// `Flatten`: dims before `axis` into one, the rest into another.
pub(crate) fn flatten<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank() as i64;
    let a = n.int("axis", 1);
    if a < -r || a > r {
        return Err(format!("axis {a} is out of range for rank {r}").into());
    }
    let a = if a < 0 { a + r } else { a } as usize;
    let dims = x.shape().0;
    let (left, right) = dims.split_at(a);
    Ok(one(x.reshape(Shape(vec![product(left)?, product(right)?]))?))
}

/// `Expand`: numpy broadcasting of the input and a constant shape (either
/// may have the higher rank; a target dim of 1 keeps the input's dim).
fn expand<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let target = n.sym_ints(1)?.ok_or("Expand needs a shape")?;
    let xs = x.shape().0;
    let r = xs.len().max(target.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let xd = (i + xs.len() >= r).then(|| xs[i + xs.len() - r].clone());
        let td = (i + target.len() >= r).then(|| target[i + target.len() - r].clone());
        let dim = |t: DimExpr| Dim::from_expr(t).map_err(|e| format!("Expand dim {i}: {e}"));
        out.push(match (xd, td) {
            (Some(d), None) => d,
            (Some(d), Some(t)) if t.as_const() == Some(1) => d,
            (None, Some(t)) | (Some(Dim::Fixed(1)), Some(t)) => dim(t)?,
            (Some(Dim::Fixed(d)), Some(t)) if t.as_const().is_some() => {
                if t.as_const() != Some(d as i64) {
                    return Err(
                        format!("cannot broadcast dim {i} ({d}) of {} to {t}", x.shape()).into(),
                    );
                }
                Dim::Fixed(d)
            }
            // A fixed size against an expression: the expression is 1 or it.
            (Some(d @ Dim::Fixed(_)), Some(_)) => d,
            // An expression against another: the input's is 1 or equal
            // (checked when bound).
            (Some(_), Some(t)) => dim(t)?,
            (None, None) => unreachable!("i < r"),
        });
    }
    let out = Shape(out);
    if out == x.shape() {
        return Ok(vec![x]);
    }
    Ok(one(x.broadcast_to(out)?))
}

/// `Shape` (with opset 15's `start`/`end`): the selected dims as a shape
/// value (their expressions; a constant where they are fixed).
pub(crate) fn shape<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dims = x.shape().0;
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(n.int("start", 0));
    let end = clamp(n.int("end", r)).max(start);
    let vals: Vec<DimExpr> = dims[start..end].iter().map(Dim::expr).collect();
    Ok(one(n.g.sizes(&vals, &[vals.len()])?))
}

/// `Size`: the element count as a shape value.
pub(crate) fn size<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let count = x.shape().size_expr()?;
    Ok(one(n.g.size_value(&count)?))
}

/// `ConstantOfShape`: the one-element `value` (default f32 0) broadcast to
/// the constant shape.
fn constant_of_shape<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let dims = n.sym_ints(0)?.ok_or("ConstantOfShape needs a shape")?;
    let dims = dims
        .into_iter()
        .map(|d| Dim::from_expr(d).map_err(|e| format!("ConstantOfShape dim: {e}").into()))
        .collect::<R<Vec<_>>>()?;
    let value = match n.tensor("value")? {
        None => Array::scalar(0.0f32),
        Some(a) if a.len() == 1 => a.reshaped(Vec::<usize>::new()).expect("one element"),
        Some(a) => return Err(format!("value must hold one element, has {}", a.len()).into()),
    };
    if dims.is_empty() {
        return n.constant(value).map(one);
    }
    Ok(one(n.constant(value)?.broadcast_to(Shape(dims))?))
}

/// Whether a constant of `len` values of `size` bytes is small enough to
/// compute at import time (the import's fold limit); a larger one is built
/// as run-time ops.
fn small_constant(len: usize, size: usize) -> bool {
    len.checked_mul(size)
        .is_some_and(|b| b <= crate::fold::fold_limit())
}

/// `Range`: `start + i * delta` for `i < max(ceil((limit - start) / delta), 0)`,
/// with constant operands (integers computed exactly).
pub(crate) fn range<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    // Operands computed from shapes (not all constants, all known as
    // integer expressions): an iota of a symbolic length.
    if (0..3).any(|i| n.const_input(i).is_err())
        && (0..3).all(|i| n.opt(i).is_some_and(|t| t.sym_values().is_some()))
    {
        return symbolic_range(n);
    }
    let get = |i: usize, what: &str| -> R<std::sync::Arc<Array>> {
        n.const_input(i)?
            .ok_or_else(|| format!("Range needs {what}").into())
    };
    let (s, l, d) = (get(0, "start")?, get(1, "limit")?, get(2, "delta")?);
    for (a, what) in [(&s, "start"), (&l, "limit"), (&d, "delta")] {
        if a.len() != 1 {
            return Err(format!("{what} must hold one value, has {}", a.len()).into());
        }
    }
    let dtype = s.dtype();
    if dtype.is_int() {
        let v = |a: &Array| super::ints_of(a).map(|v| v[0]);
        let (s, l, d) = (v(&s)?, v(&l)?, v(&d)?);
        if d == 0 {
            return Err("Range delta is 0".into());
        }
        let span = l as i128 - s as i128;
        let count = if (span > 0) == (d > 0) && span != 0 {
            let c = (span.abs() + d.unsigned_abs() as i128 - 1) / d.unsigned_abs() as i128;
            usize::try_from(c).map_err(|_| format!("Range({s}, {l}, {d}) has {c} values"))?
        } else {
            0
        };
        if !small_constant(count, 8) {
            // Too large to compute while importing: `start + i * delta`
            // over an iota at run time.
            let i = n.g.iota(DType::I64, Shape::fixed(&[count]), 0)?;
            return Ok(one(i.mul(d as f64)?.add(s as f64)?.cast(dtype)?));
        }
        let vals: Vec<i64> = (0..count as i64).map(|i| s + i * d).collect();
        let a = Array::from_vec(vec![count], vals).expect("1-D");
        return Ok(one(n.constant(a)?.cast(dtype)?));
    }
    let (s, l, d) = (s.to_f64_vec()[0], l.to_f64_vec()[0], d.to_f64_vec()[0]);
    if d == 0.0 {
        return Err("Range delta is 0".into());
    }
    let count = ((l - s) / d).ceil().max(0.0);
    if !count.is_finite() {
        return Err(format!("Range({s}, {l}, {d}) is not finite").into());
    }
    if count > usize::MAX as f64 {
        return Err(format!("Range({s}, {l}, {d}) has {count} values").into());
    }
    let count = count as usize;
    if !small_constant(count, 8) {
        let i = n.g.iota(DType::F64, Shape::fixed(&[count]), 0)?;
        return Ok(one(i.mul(d)?.add(s)?.cast(dtype)?));
    }
    let vals: Vec<f64> = (0..count).map(|i| s + i as f64 * d).collect();
    let a = Array::from_vec(vec![count], vals).expect("1-D");
    Ok(one(n.constant(a)?.cast(dtype)?))
}

/// `Range` over integer shape values (`Range(0, seq, 1)`): an iota of
/// `max(ceil((limit - start) / delta), 0)` elements (an expression), times
/// `delta`, plus `start`. `delta` must be a constant.
fn symbolic_range<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let get = |i: usize, what: &str| -> R<DimExpr> {
        match n.sym_ints(i)?.as_deref() {
            Some([v]) => Ok(v.clone()),
            Some(v) => Err(format!("{what} must hold one value, has {}", v.len()).into()),
            None => Err(format!("Range needs {what}").into()),
        }
    };
    let (s, l, d) = (get(0, "start")?, get(1, "limit")?, get(2, "delta")?);
    let dtype = n.input(0)?.dtype();
    if !dtype.is_int() {
        return n.unsupported(format!(
            "a {dtype} Range with operands computed from shapes"
        ));
    }
    let d = d
        .as_const()
        .ok_or_else(|| format!("unsupported: Range with the delta {d}, computed from shapes"))?;
    if d == 0 {
        return Err("Range delta is 0".into());
    }
    let span = if d > 0 { l.sub(&s)? } else { s.sub(&l)? };
    let k = d.unsigned_abs() as i64;
    let count = span
        .add(&DimExpr::val(k - 1))?
        .div_floor(&DimExpr::val(k))?
        .max_with(&DimExpr::val(0))?;
    let count = Dim::from_expr(count)?;
    let start = n.g.size_value(&s)?;
    Ok(one(n
        .g
        .iota(DType::I64, Shape(vec![count]), 0)?
        .mul(d)?
        .add(start)?
        .cast(dtype)?))
}

/// `Tile`: each tiled dim `d` becomes `[1, d]` broadcast to `[r, d]` and
/// merged back (one reshape, broadcast, reshape).
fn tile<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let repeats = n.sym_ints(1)?.ok_or("Tile needs repeats")?;
    if repeats.len() != x.rank() {
        return Err(format!("{} repeats for rank {}", repeats.len(), x.rank()).into());
    }
    if repeats.iter().all(|r| r.as_const() == Some(1)) {
        return Ok(vec![x]);
    }
    let (mut split, mut big, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (d, r)) in x.shape().0.into_iter().zip(&repeats).enumerate() {
        if r.as_const() == Some(1) {
            split.push(d.clone());
            big.push(d.clone());
            out.push(d);
            continue;
        }
        let r = Dim::from_expr(r.clone()).map_err(|e| format!("repeat {i}: {e}"))?;
        let tiled = d.expr().mul(&r.expr()).and_then(Dim::from_expr)?;
        split.extend([Dim::Fixed(1), d.clone()]);
        big.extend([r, d]);
        out.push(tiled);
    }
    Ok(one(x
        .reshape(Shape(split))?
        .broadcast_to(Shape(big))?
        .reshape(Shape(out))?))
}

/// The fixed `[C, H, W]` of a 4-D NCHW input, and its batch dim.
fn nchw(x: Tensor<'_>, what: &str) -> R<(Dim, [usize; 3])> {
    if x.rank() != 4 {
        return Err(format!("{what} needs a 4-D input, got {}", x.shape()).into());
    }
    let d = |i| fixed_dim(x, i, what);
    Ok((x.shape().0[0].clone(), [d(1)?, d(2)?, d(3)?]))
}

/// `DepthToSpace`: DCR (default) reads the channels as
/// `[block, block, C']`, CRD as `[C', block, block]`.
fn depth_to_space<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let b = size_of(n.int("blocksize", 0), "blocksize")?;
    let (batch, [c, h, w]) = nchw(x, "DepthToSpace")?;
    if b == 0 || c % (b * b) != 0 {
        return Err(format!("{c} channels do not split into blocks of {b}x{b}").into());
    }
    let c2 = c / (b * b);
    let f = Dim::Fixed;
    let mode = n.string("mode").unwrap_or_else(|| "DCR".into());
    let (split, perm) = match mode.as_str() {
        "DCR" => (vec![f(b), f(b), f(c2)], [0, 3, 4, 1, 5, 2]),
        "CRD" => (vec![f(c2), f(b), f(b)], [0, 1, 4, 2, 5, 3]),
        m => return n.unsupported(format!("DepthToSpace mode '{m}'")),
    };
    let mut s = vec![batch.clone()];
    s.extend(split);
    s.extend([f(h), f(w)]);
    Ok(one(x
        .reshape(Shape(s))?
        .permute(&perm)?
        .reshape(Shape(vec![batch, f(c2), f(h * b), f(w * b)]))?))
}

/// `SpaceToDepth`: `[N, C, H/b, b, W/b, b]` to `[N, b, b, C, H/b, W/b]`.
fn space_to_depth<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let b = size_of(n.int("blocksize", 0), "blocksize")?;
    let (batch, [c, h, w]) = nchw(x, "SpaceToDepth")?;
    if b == 0 || h % b != 0 || w % b != 0 {
        return Err(format!("{h}x{w} does not split into blocks of {b}x{b}").into());
    }
    let f = Dim::Fixed;
    let s = vec![batch.clone(), f(c), f(h / b), f(b), f(w / b), f(b)];
    Ok(one(x
        .reshape(Shape(s))?
        .permute(&[0, 3, 5, 1, 2, 4])?
        .reshape(Shape(vec![
            batch,
            f(c * b * b),
            f(h / b),
            f(w / b),
        ]))?))
}

/// `Trilu`: keeps the elements with `col - row >= k` (upper) or
/// `col - row <= k` (lower), by iota comparisons and a select; `k` may be
/// computed at run time.
fn trilu<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    if r < 2 {
        return Err(format!("Trilu needs rank >= 2, got {}", x.shape()).into());
    }
    let k = match n.opt(1) {
        None => n.scalar(0.0, DType::I64)?,
        Some(k) => k.reshape(Shape::scalar())?.cast(DType::I64)?,
    };
    let dims = x.shape().0;
    let mat = Shape(dims[r - 2..].to_vec());
    let row = n.g.iota(DType::I64, mat.clone(), 0)?;
    let col = n.g.iota(DType::I64, mat, 1)?;
    let diff = col.sub(row)?;
    let keep = if n.int("upper", 1) != 0 {
        diff.ge(k)
    } else {
        diff.le(k)
    }?;
    let zero = n.scalar(0.0, x.dtype())?;
    Ok(one(n.g.select(keep, x, zero)?))
}

/// `EyeLike`: ones where `col - row == k`, in `dtype` (default: the
/// input's); a constant where the input's dims are fixed.
fn eye_like<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if x.rank() != 2 {
        return Err(format!("EyeLike needs a 2-D input, got {}", x.shape()).into());
    }
    let dtype = match n.attr("dtype") {
        Some(a) => crate::tensor::dtype_of(a.i as i32)?,
        None => x.dtype(),
    };
    let k = n.int("k", 0);
    let s = x.shape();
    let fixed = s.as_fixed().as_deref().map(|d| [d[0], d[1]]);
    if let Some([rows, cols]) = fixed.filter(|[r, c]| {
        r.checked_mul(*c)
            .is_some_and(|len| small_constant(len, dtype.size_bytes()))
    }) {
        // A constant, so that import-time evaluation sees its value.
        let vals: Vec<Scalar> = (0..rows * cols)
            .map(|i| {
                let on = (i % cols) as i64 - (i / cols) as i64 == k;
                Scalar::from_f64(dtype, if on { 1.0 } else { 0.0 })
            })
            .collect();
        let a = Array::from_scalars(vec![rows, cols], dtype, &vals).ok_or("EyeLike values")?;
        return n.constant(a).map(one);
    }
    let row = n.g.iota(DType::I64, s.clone(), 0)?;
    let col = n.g.iota(DType::I64, s, 1)?;
    Ok(one(col.sub(row)?.eq(k)?.cast(dtype)?))
}

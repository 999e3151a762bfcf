//! Indexing ONNX ops: `Gather`, `GatherElements`, `GatherND` (with
//! `batch_dims`), `ScatterElements` (and the older `Scatter`), `ScatterND`,
//! `OneHot`, `NonZero` of an import-time constant, and `TensorScatter`
//! (opset 24: a KV-cache update, per batch entry a select of the update
//! rows that land on each position).
//!
//! Everything is composed from kiln's `gather` (numpy `take` along one axis,
//! negative indices wrapping) and `scatter_add`: the element-wise and N-d
//! variants first turn their indices into one flat index into the data
//! (negative indices wrapped per dim), then gather or scatter along axis 0
//! of the data reshaped to `[rows, rest...]`.
//!
//! Deliberate limits:
//! - the data and indices of `GatherElements`, `GatherND`, `ScatterND` and
//!   `ScatterElements` need fixed shapes (the flat index uses their strides);
//! - scatter reductions `mul`, `max` and `min` compare every update's flat
//!   index with every row of the data (`O(updates x rows)` memory), since
//!   kiln only scatters by adding; `none` and `add` are `scatter_add`s.
//!   With reduction `none`, duplicate indices (undefined in ONNX) sum;
//! - indices out of range are run-time errors of kiln's gather/scatter;
//! - `NonZero`'s output shape depends on its input's values, so only a
//!   constant input (folded at import time) is supported.

use kiln_graph::{Array, DType, Data, Dim, DimExpr, Shape, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Gather", gather),
    ("GatherElements", gather_elements),
    ("GatherND", gather_nd),
    ("ScatterElements", scatter_elements),
    ("Scatter", scatter_elements),
    ("ScatterND", scatter_nd),
    ("OneHot", one_hot),
    ("NonZero", non_zero),
    ("TensorScatter", tensor_scatter),
];

fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// `Gather`: numpy `take` along `axis`, which is kiln's gather (negative
/// indices wrap there too).
fn gather<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (data, idx) = (n.input(0)?, n.input(1)?);
    let a = axis(n.int("axis", 0), data.rank())?;
    Ok(one(data.gather(idx, a as i64)?))
}

/// Indices (any integer type) as i64 with negative ones wrapped by `len`
/// (a scalar or a tensor broadcasting against them).
fn wrap<'g>(n: &Node<'_, 'g>, idx: Tensor<'g>, len: Tensor<'g>) -> R<Tensor<'g>> {
    let idx = idx.cast(DType::I64)?;
    let fixed = idx.add(len)?;
    Ok(n.g.select(idx.lt(0i64)?, fixed, idx)?)
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1] as i64;
    }
    s
}

/// Row-major strides of `dims`, as expressions.
fn stride_exprs(dims: &[Dim]) -> R<Vec<DimExpr>> {
    let mut s = vec![DimExpr::val(1); dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].mul(&dims[i + 1].expr())?;
    }
    Ok(s)
}

/// For element-wise indexing along `axis` (GatherElements,
/// ScatterElements): the flat index into `data_shape` of each element of
/// `idx` (its position, with `idx`'s value along `axis`).
fn elementwise_flat<'g>(
    n: &Node<'_, 'g>,
    idx: Tensor<'g>,
    data_shape: &[Dim],
    axis: usize,
) -> R<Tensor<'g>> {
    let ishape = idx.shape();
    if ishape.rank() != data_shape.len() {
        return Err(format!(
            "indices have rank {}, data rank {}",
            ishape.rank(),
            data_shape.len()
        )
        .into());
    }
    let st = stride_exprs(data_shape)?;
    let len = n.g.size_value(&data_shape[axis].expr())?;
    let mut flat = wrap(n, idx, len)?.mul(n.g.size_value(&st[axis])?)?;
    for (d, s) in st.iter().enumerate() {
        if d == axis || ishape.0[d] == Dim::Fixed(1) {
            continue;
        }
        let pos = n.g.iota(DType::I64, ishape.clone(), d)?;
        flat = flat.add(pos.mul(n.g.size_value(s)?)?)?;
    }
    Ok(flat)
}

/// `GatherElements`: `out[i][j][k] = data[idx[i][j][k]][j][k]` (axis 0).
fn gather_elements<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (data, idx) = (n.input(0)?, n.input(1)?);
    let ds = data.shape();
    let a = axis(n.int("axis", 0), ds.rank())?;
    let flat = elementwise_flat(n, idx, &ds.0, a)?;
    let total = Dim::from_expr(ds.size_expr()?)?;
    Ok(one(data.reshape(Shape(vec![total]))?.gather(flat, 0)?))
}

/// The flat index into `dims` of each index tuple along `idx`'s last dim
/// (negative entries wrapped per dim), of shape `idx.shape[..-1]`.
fn tuple_flat<'g>(n: &Node<'_, 'g>, idx: Tensor<'g>, dims: &[Dim]) -> R<Tensor<'g>> {
    let k = dims.len();
    let ishape = idx.shape();
    let rank = ishape.rank();
    if k == 0 {
        return Ok(n
            .scalar(0.0, DType::I64)?
            .broadcast_to(Shape(ishape.0[..rank - 1].to_vec()))?);
    }
    let lens: Vec<DimExpr> = dims.iter().map(Dim::expr).collect();
    let lens = n.g.sizes(&lens, &[k])?;
    let st = n.g.sizes(&stride_exprs(dims)?, &[k])?;
    Ok(wrap(n, idx, lens)?.mul(st)?.sum(&[-1], false)?)
}

/// `GatherND`: index tuples along the indices' last dim address the data's
/// leading dims after `batch_dims` batch dims shared by data and indices.
fn gather_nd<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (data, idx) = (n.input(0)?, n.input(1)?);
    let (ds, is) = (data.shape().0, idx.shape().0);
    let b = n.int("batch_dims", 0);
    if b < 0 {
        return n.unsupported(format!("batch_dims {b}"));
    }
    let b = b as usize;
    let q = is.len();
    if q < 1 || q <= b {
        return Err(format!("indices of shape {} with batch_dims {b}", idx.shape()).into());
    }
    let k = is[q - 1]
        .fixed()
        .ok_or_else(|| format!("the index tuples' length {} must be fixed", is[q - 1]))?;
    if b + k > ds.len() || ds[..b] != is[..b] {
        return Err(format!(
            "indices of shape {} cannot index data of shape {} with batch_dims {b}",
            idx.shape(),
            data.shape()
        )
        .into());
    }
    // The flat index into data's first b + k dims: the batch position,
    // then the tuple.
    let mut flat = tuple_flat(n, idx, &ds[b..b + k])?;
    let inner = Shape(ds[b..b + k].to_vec()).size_expr()?;
    let out_lead = Shape(is[..q - 1].to_vec());
    for (d, s) in stride_exprs(&ds[..b])?.iter().enumerate() {
        if ds[d] == Dim::Fixed(1) {
            continue;
        }
        let pos = n.g.iota(DType::I64, out_lead.clone(), d)?;
        let step = n.g.size_value(&s.mul(&inner)?)?;
        flat = flat.add(pos.mul(step)?)?;
    }
    let rows = Dim::from_expr(Shape(ds[..b + k].to_vec()).size_expr()?)?;
    let mut flat_shape = vec![rows];
    flat_shape.extend_from_slice(&ds[b + k..]);
    Ok(one(data.reshape(Shape(flat_shape))?.gather(flat, 0)?))
}

/// The scatter reduction attribute.
#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(n: &Node<'_, '_>) -> R<Reduction> {
    match n.string("reduction").as_deref() {
        None | Some("none") => Ok(Reduction::None),
        Some("add") => Ok(Reduction::Add),
        Some("mul") => Ok(Reduction::Mul),
        Some("max") => Ok(Reduction::Max),
        Some("min") => Ok(Reduction::Min),
        Some(r) => n.unsupported(format!("reduction '{r}'")),
    }
}

/// Scatters `updates` (shape `flat.shape + rest`) into the rows `flat` of
/// `data` (shape `[rows] + rest`), combining by `red`.
fn scatter_rows<'g>(
    n: &Node<'_, 'g>,
    data: Tensor<'g>,
    flat: Tensor<'g>,
    updates: Tensor<'g>,
    red: Reduction,
) -> R<Tensor<'g>> {
    let dt = data.dtype();
    let updates = updates.cast(dt)?;
    let ds = fixed_shape(data)?;
    let rows = ds[0];
    let rest = &ds[1..];
    // One more dim of 1 per dim of `rest`, to broadcast a per-row value.
    let per_row = |t: Tensor<'g>, lead: &[usize]| -> R<Tensor<'g>> {
        let mut s = lead.to_vec();
        s.extend(rest.iter().map(|_| 1));
        Ok(t.reshape(s)?)
    };
    match red {
        Reduction::Add if dt != DType::Bool => Ok(data.scatter_add(flat, updates, 0)?),
        Reduction::None | Reduction::Add => {
            // Where any update lands, the scattered updates, else data.
            let fs = fixed_shape(flat)?;
            let ones = n.g.full(1.0, DType::I32, &fs)?;
            let zeros = n.g.full(0.0, DType::I32, &[rows])?;
            let hit = zeros.scatter_add(flat, ones, 0)?.gt(0i32)?;
            let hit = per_row(hit, &[rows])?;
            if dt == DType::Bool {
                // Bools: or-ing (add) or assigning through i32 counts.
                let u = updates.cast(DType::I32)?;
                let z = n.g.full(0.0, DType::I32, &ds)?;
                let s = z.scatter_add(flat, u, 0)?.gt(0i32)?;
                return if red == Reduction::Add {
                    Ok(s.or(data)?)
                } else {
                    Ok(n.g.select(hit, s, data)?)
                };
            }
            let z = n.g.full(0.0, dt, &ds)?;
            let s = z.scatter_add(flat, updates, 0)?;
            Ok(n.g.select(hit, s, data)?)
        }
        Reduction::Mul | Reduction::Max | Reduction::Min => {
            if dt == DType::Bool {
                return n.unsupported("scatter reductions mul/max/min of bools");
            }
            // mask[u, r]: update u lands on row r.
            let fs = fixed_shape(flat)?;
            let count: usize = fs.iter().product();
            let f = flat.reshape([count, 1])?;
            let r = n.g.iota(DType::I64, [1, rows], 1)?;
            let mask = per_row(f.eq(r)?, &[count, rows])?;
            let mut us = vec![count, 1];
            us.extend_from_slice(rest);
            let u = updates.reshape(us)?;
            let identity = match (red, dt.is_float()) {
                (Reduction::Mul, _) => 1.0,
                (Reduction::Max, true) => f64::NEG_INFINITY,
                (Reduction::Min, true) => f64::INFINITY,
                (Reduction::Max, false) => int_min(dt),
                _ => int_max(dt),
            };
            let id = n.scalar(identity, dt)?;
            let spread = n.g.select(mask, u, id)?;
            match red {
                Reduction::Mul => Ok(data.mul(spread.prod(&[0], false)?)?),
                Reduction::Max => Ok(data.maximum(spread.max(&[0], false)?)?),
                _ => Ok(data.minimum(spread.min(&[0], false)?)?),
            }
        }
    }
}

fn int_min(dt: DType) -> f64 {
    if dt == DType::I32 {
        i32::MIN as f64
    } else {
        i64::MIN as f64
    }
}

fn int_max(dt: DType) -> f64 {
    if dt == DType::I32 {
        i32::MAX as f64
    } else {
        i64::MAX as f64
    }
}

/// `ScatterElements` (and opset 9's `Scatter`): `out[idx[i][j]][j] =
/// upd[i][j]` (axis 0), combined by `reduction`.
fn scatter_elements<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (data, idx, upd) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let ds = fixed_shape(data)?;
    let a = axis(n.int("axis", 0), ds.len())?;
    if fixed_shape(upd)? != fixed_shape(idx)? {
        return Err("updates and indices must have the same shape".into());
    }
    let flat = elementwise_flat(n, idx, &Shape::fixed(&ds).0, a)?;
    let total: usize = ds.iter().product();
    let d = data.reshape([total])?;
    let out = scatter_rows(n, d, flat, upd, reduction(n)?)?;
    Ok(one(out.reshape(ds)?))
}

/// `ScatterND`: updates of slices addressed by index tuples along the
/// indices' last dim.
fn scatter_nd<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (data, idx, upd) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let (ds, is) = (fixed_shape(data)?, fixed_shape(idx)?);
    let q = is.len();
    let k = *is.last().ok_or("indices must have rank >= 1")?;
    if k > ds.len() {
        return Err(format!("index tuples of {k} for data of rank {}", ds.len()).into());
    }
    let mut want = is[..q - 1].to_vec();
    want.extend_from_slice(&ds[k..]);
    if fixed_shape(upd)? != want {
        return Err(format!("updates must have shape {want:?}").into());
    }
    let flat = tuple_flat(n, idx, &Shape::fixed(&ds[..k]).0)?;
    let rows: usize = ds[..k].iter().product();
    let mut rs = vec![rows];
    rs.extend_from_slice(&ds[k..]);
    let d = data.reshape(rs)?;
    let out = scatter_rows(n, d, flat, upd, reduction(n)?)?;
    Ok(one(out.reshape(ds)?))
}

/// `OneHot(indices, depth, values)`: `values[1]` where the new dim's
/// position equals the index (negative ones wrapped by depth), else
/// `values[0]`. Indices outside `[-depth, depth)` give all `values[0]`.
fn one_hot<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (idx, values) = (n.input(0)?, n.input(2)?);
    let depth = n.const_scalar(1)?.ok_or("depth is required")?.trunc();
    if depth < 1.0 {
        return Err(format!("depth {depth} must be positive").into());
    }
    let d = depth as usize;
    let r = idx.rank();
    let a = axis(n.int("axis", -1), r + 1)?;
    let len = n.scalar(depth, DType::I64)?;
    let idx = wrap(n, idx, len)?.unsqueeze(a as i64)?;
    let mut ps = vec![1usize; r + 1];
    ps[a] = d;
    let pos = n.g.iota(DType::I64, ps, a)?;
    let hot = idx.eq(pos)?;
    if values.shape().num_elements() != Some(2) {
        return Err("values must hold [off, on]".into());
    }
    let values = values.reshape([2])?;
    let off = values.slice_axis(0, 0, 1, 1)?.reshape([0usize; 0])?;
    let on = values.slice_axis(0, 1, 2, 1)?.reshape([0usize; 0])?;
    Ok(one(n.g.select(hot, on, off)?))
}

/// `NonZero` of an import-time constant: the `[rank, count]` i64
/// coordinates of its nonzero elements, row-major.
fn non_zero<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let Some(a) = n.const_input(0).ok().flatten() else {
        return n.unsupported(
            "NonZero of a tensor computed at run time (its output shape depends on the values)",
        );
    };
    let shape = a.shape().to_vec();
    let st = strides(&shape);
    let nz: Vec<usize> = a
        .to_f64_vec()
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::with_capacity(shape.len() * nz.len());
    for (d, &s) in st.iter().enumerate() {
        out.extend(nz.iter().map(|&i| (i as i64 / s) % shape[d] as i64));
    }
    let arr = Array::new(vec![shape.len(), nz.len()], Data::I64(out)).ok_or("bad shape")?;
    n.constant(arr).map(one)
}

/// `TensorScatter(past_cache, update, write_indices?; axis = -2, mode)`:
/// `update` written into `past_cache` along `axis` from position
/// `write_indices[b]` of each batch entry `b` (dim 0), wrapping around the
/// axis in mode `circular`. Per batch entry (a fixed count), each position
/// `p` of the axis takes update row `p - write_indices[b]` where that is
/// one (modulo the axis' size when circular), else keeps the cache's.
fn tensor_scatter<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (past, upd) = (n.input(0)?, n.input(1)?);
    let rank = past.rank();
    let a = axis(n.int("axis", -2), rank)?;
    if a == 0 {
        return n.unsupported("axis 0 (the batch dim)");
    }
    let circular = match n.string("mode").as_deref() {
        None | Some("linear") => false,
        Some("circular") => true,
        Some(m) => return n.unsupported(format!("mode '{m}'")),
    };
    let fixed = |t: Tensor<'g>, d: usize, what: &str| {
        t.shape().0[d]
            .fixed()
            .ok_or_else(|| format!("the {what} must be a fixed size, got {}", t.shape()))
    };
    let batch = fixed(past, 0, "batch dim")?;
    let len = fixed(past, a, "cache axis")? as i64;
    let count = fixed(upd, a, "update axis")? as i64;
    if upd.rank() != rank || count > len {
        return Err(format!(
            "the update {} does not fit the cache {} along axis {a}",
            upd.shape(),
            past.shape()
        )
        .into());
    }
    let w = n.opt(2).map(|w| w.cast(DType::I64)).transpose()?;
    let pos = n.g.iota(DType::I64, [len as usize], 0)?;
    let mut vshape = vec![1usize; rank - 1];
    vshape[a - 1] = len as usize;
    let mut parts = Vec::with_capacity(batch);
    for b in 0..batch as i64 {
        let past_b = past.slice_axis(0, b, b + 1, 1)?;
        let upd_b = upd.slice_axis(0, b, b + 1, 1)?.squeeze(0)?;
        let mut src = match w {
            Some(w) => pos.sub(w.slice_axis(0, b, b + 1, 1)?)?,
            None => pos,
        };
        if circular {
            // Truncating remainder, then made non-negative.
            let r = src.sub(src.div(len)?.mul(len)?)?;
            src = n.g.select(r.lt(0i64)?, r.add(len)?, r)?;
        }
        let valid = src.ge(0i64)?.and(src.lt(count)?)?;
        let idx = src.maximum(0i64)?.minimum(count - 1)?;
        let rows = upd_b.gather(idx, a as i64 - 1)?;
        let valid = valid.reshape(vshape.clone())?;
        let out = n.g.select(valid, rows, past_b.squeeze(0)?)?;
        parts.push(out.unsqueeze(0)?);
    }
    Ok(one(n.g.concat(&parts, 0)?))
}

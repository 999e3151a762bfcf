//! Index ops: iota, gather (numpy `take`) and its adjoint scatter-add.

use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::shape::{Shape, TensorType};

/// Shape rule of iota: a numeric dtype and an axis in range.
pub fn infer_iota(dtype: DType, shape: &Shape, axis: usize) -> Result<TensorType, String> {
    if !dtype.is_numeric() {
        return Err(format!("iota needs a numeric dtype, got {dtype}"));
    }
    if axis >= shape.rank() {
        return Err(format!(
            "axis {axis} is out of range for rank {}",
            shape.rank()
        ));
    }
    Ok(TensorType::new(dtype, shape.clone()))
}

/// Reference meaning of iota: each element is its index along `axis`.
pub fn eval_iota(dtype: DType, out: &[usize], axis: usize) -> Array {
    let inner: usize = out[axis + 1..].iter().product();
    let len = out[axis];
    let n: usize = out.iter().product();
    let idx = (0..n).map(|i| ((i / inner.max(1)) % len.max(1)) as f64);
    let data = match dtype {
        DType::F32 => Data::F32(idx.map(|v| v as f32).collect()),
        DType::F64 => Data::F64(idx.collect()),
        DType::I32 => Data::I32(idx.map(|v| v as i32).collect()),
        DType::I64 => Data::I64(idx.map(|v| v as i64).collect()),
        DType::I8 => Data::I8(idx.map(|v| v as i64 as i8).collect()),
        DType::I16 => Data::I16(idx.map(|v| v as i64 as i16).collect()),
        DType::U8 => Data::U8(idx.map(|v| v as i64 as u8).collect()),
        DType::U16 => Data::U16(idx.map(|v| v as i64 as u16).collect()),
        DType::U32 => Data::U32(idx.map(|v| v as i64 as u32).collect()),
        DType::U64 => Data::U64(idx.map(|v| v as i64 as u64).collect()),
        DType::F16 => Data::F16(idx.map(half::f16::from_f64).collect()),
        DType::BF16 => Data::BF16(idx.map(half::bf16::from_f64).collect()),
        DType::Bool => unreachable!("checked by infer_iota"),
    };
    Array::new(out.to_vec(), data).expect("iota shape matches")
}

fn gathered_shape(data: &TensorType, indices: &TensorType, axis: usize) -> Result<Shape, String> {
    if !matches!(indices.dtype, DType::I32 | DType::I64) {
        return Err(format!("indices must be i32 or i64, got {}", indices.dtype));
    }
    if axis >= data.rank() {
        return Err(format!(
            "axis {axis} is out of range for rank {}",
            data.rank()
        ));
    }
    let mut s = data.shape.0[..axis].to_vec();
    s.extend(indices.shape.0.iter().cloned());
    s.extend(data.shape.0[axis + 1..].iter().cloned());
    Ok(Shape(s))
}

/// Shape rule of gather: `data[..axis] + indices.shape + data[axis+1..]`.
pub fn infer_gather(
    data: &TensorType,
    indices: &TensorType,
    axis: usize,
) -> Result<TensorType, String> {
    Ok(TensorType::new(
        data.dtype,
        gathered_shape(data, indices, axis)?,
    ))
}

/// Shape rule of scatter-add: `updates` has the shape gather would give.
pub fn infer_scatter_add(
    data: &TensorType,
    indices: &TensorType,
    updates: &TensorType,
    axis: usize,
) -> Result<TensorType, String> {
    if !data.dtype.is_numeric() {
        return Err(format!("cannot scatter-add into {} tensors", data.dtype));
    }
    if updates.dtype != data.dtype {
        return Err(format!(
            "updates are {} but data is {}",
            updates.dtype, data.dtype
        ));
    }
    let want = gathered_shape(data, indices, axis)?;
    let differs = || format!("updates must have shape {want}, got {}", updates.shape);
    if updates.rank() != want.rank() {
        return Err(differs());
    }
    for (i, (u, w)) in updates.shape.0.iter().zip(&want.0).enumerate() {
        crate::shape::unify_dims(u, w, &format!("dim {i} of the updates"))
            .map_err(|_| differs())?;
    }
    Ok(data.clone())
}

/// Resolves indices against an axis of size `len`; negative ones count from the end.
fn resolve_indices(indices: &Array, len: usize) -> Result<Vec<usize>, String> {
    let raw: Vec<i64> = match indices.data() {
        Data::I32(v) => v.iter().map(|&i| i as i64).collect(),
        Data::I64(v) => v.clone(),
        _ => return Err("indices must be i32 or i64".into()),
    };
    raw.into_iter()
        .map(|i| {
            let j = if i < 0 { i + len as i64 } else { i };
            if j < 0 || j >= len as i64 {
                Err(format!(
                    "index {i} is out of range for an axis of size {len}"
                ))
            } else {
                Ok(j as usize)
            }
        })
        .collect()
}

fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Reference meaning of gather.
pub fn eval_gather(
    data: &Array,
    indices: &Array,
    axis: usize,
    out: &[usize],
) -> Result<Array, String> {
    let (outer, len, inner) = split(data.shape(), axis);
    let idx = resolve_indices(indices, len)?;
    let res = crate::map_data!(data.data(), v => {
        let mut r = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let at = (o * len + i) * inner;
                r.extend_from_slice(&v[at..at + inner]);
            }
        }
        r
    });
    Ok(Array::new(out.to_vec(), res).expect("gather shape matches"))
}

/// Reference meaning of scatter-add (integers wrap).
pub fn eval_scatter_add(
    data: &Array,
    indices: &Array,
    updates: &Array,
    axis: usize,
) -> Result<Array, String> {
    let (outer, len, inner) = split(data.shape(), axis);
    let idx = resolve_indices(indices, len)?;
    macro_rules! scatter {
        ($d:expr, $u:expr, $add:expr) => {{
            let mut r = $d.clone();
            let mut k = 0;
            for o in 0..outer {
                for &i in &idx {
                    let at = (o * len + i) * inner;
                    for j in 0..inner {
                        r[at + j] = $add(r[at + j], $u[k]);
                        k += 1;
                    }
                }
            }
            r
        }};
    }
    let res = match (data.data(), updates.data()) {
        (Data::F32(d), Data::F32(u)) => Data::F32(scatter!(d, u, |a: f32, b: f32| a + b)),
        (Data::F64(d), Data::F64(u)) => Data::F64(scatter!(d, u, |a: f64, b: f64| a + b)),
        (Data::I32(d), Data::I32(u)) => {
            Data::I32(scatter!(d, u, |a: i32, b: i32| a.wrapping_add(b)))
        }
        (Data::I64(d), Data::I64(u)) => {
            Data::I64(scatter!(d, u, |a: i64, b: i64| a.wrapping_add(b)))
        }
        (Data::I8(d), Data::I8(u)) => Data::I8(scatter!(d, u, |a: i8, b: i8| a.wrapping_add(b))),
        (Data::I16(d), Data::I16(u)) => {
            Data::I16(scatter!(d, u, |a: i16, b: i16| a.wrapping_add(b)))
        }
        (Data::U8(d), Data::U8(u)) => Data::U8(scatter!(d, u, |a: u8, b: u8| a.wrapping_add(b))),
        (Data::U16(d), Data::U16(u)) => {
            Data::U16(scatter!(d, u, |a: u16, b: u16| a.wrapping_add(b)))
        }
        (Data::U32(d), Data::U32(u)) => {
            Data::U32(scatter!(d, u, |a: u32, b: u32| a.wrapping_add(b)))
        }
        (Data::U64(d), Data::U64(u)) => {
            Data::U64(scatter!(d, u, |a: u64, b: u64| a.wrapping_add(b)))
        }
        _ => {
            return Err(format!(
                "cannot scatter-add {} into {}",
                updates.dtype(),
                data.dtype()
            ))
        }
    };
    Ok(Array::new(data.shape().to_vec(), res).expect("scatter shape matches"))
}

// ---- gradients ----

use crate::builder::Tensor;

/// Gradient rule of gather: scatter-add the gradient back at the indices.
#[track_caller]
pub(crate) fn grad_gather<'g>(
    data: Tensor<'g>,
    indices: Tensor<'g>,
    axis: usize,
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let zero = crate::autodiff::zeros_like(data)?;
    zero.scatter_add(indices, g, axis as i64)
}

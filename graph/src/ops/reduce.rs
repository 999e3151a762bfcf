//! Reductions: sum, prod, max, min over a set of axes, and argmax/argmin
//! over one axis.

use super::walk;
use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::op::{ArgOp, ReduceOp};
use crate::shape::{strides, Dim, Shape, TensorType};

/// Shape rule of reductions: `axes` must be sorted, distinct and in range.
pub fn infer_reduce(
    f: ReduceOp,
    x: &TensorType,
    axes: &[usize],
    keepdims: bool,
) -> Result<TensorType, String> {
    if !x.dtype.is_numeric() {
        return Err(format!("cannot reduce {} tensors", x.dtype));
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("axes {axes:?} must be sorted and distinct"));
    }
    if let Some(&a) = axes.iter().find(|&&a| a >= x.rank()) {
        return Err(format!("axis {a} is out of range for rank {}", x.rank()));
    }
    let _ = f;
    Ok(TensorType::new(
        x.dtype,
        reduced_shape(&x.shape, axes, keepdims),
    ))
}

fn reduced_shape(s: &Shape, axes: &[usize], keepdims: bool) -> Shape {
    let mut out = Vec::new();
    for (i, d) in s.0.iter().enumerate() {
        if axes.contains(&i) {
            if keepdims {
                out.push(Dim::Fixed(1));
            }
        } else {
            out.push(d.clone());
        }
    }
    Shape(out)
}

/// Shape rule of argmax/argmin: i64 indices with `axis` removed or kept as 1.
pub fn infer_arg(x: &TensorType, axis: usize, keepdims: bool) -> Result<TensorType, String> {
    if !x.dtype.is_numeric() {
        return Err(format!("cannot take argmax/argmin of {} tensors", x.dtype));
    }
    if axis >= x.rank() {
        return Err(format!("axis {axis} is out of range for rank {}", x.rank()));
    }
    if x.shape.0[axis] == Dim::Fixed(0) {
        return Err(format!("axis {axis} is empty"));
    }
    Ok(TensorType::new(
        DType::I64,
        reduced_shape(&x.shape, &[axis], keepdims),
    ))
}

/// For each input element (row-major), the offset of its output element.
fn out_strides(in_shape: &[usize], axes: &[usize]) -> Vec<isize> {
    let kept: Vec<usize> = in_shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let st = strides(&kept);
    (0..in_shape.len())
        .map(|i| if axes.contains(&i) { 0 } else { st[i] as isize })
        .collect()
}

/// Reference meaning of reductions. Floats accumulate in f64 and round once;
/// integers wrap. Max/min propagate NaN. Empty reductions give the identity
/// (0, 1, -inf/min, +inf/max).
pub fn eval_reduce(f: ReduceOp, x: &Array, axes: &[usize], out: &[usize]) -> Result<Array, String> {
    let n_out: usize = out.iter().product();
    let os = out_strides(x.shape(), axes);
    let in_shape = x.shape();
    macro_rules! float_reduce {
        ($v:expr, $t:ty) => {{
            let init = match f {
                ReduceOp::Sum => 0.0,
                ReduceOp::Prod => 1.0,
                ReduceOp::Max => f64::NEG_INFINITY,
                ReduceOp::Min => f64::INFINITY,
            };
            let mut acc = vec![init; n_out];
            let mut i = 0;
            walk(in_shape, [(0, &os)], |[o]| {
                let a = $v[i] as f64;
                i += 1;
                let r = &mut acc[o];
                *r = match f {
                    ReduceOp::Sum => *r + a,
                    ReduceOp::Prod => *r * a,
                    ReduceOp::Max => {
                        if a.is_nan() || r.is_nan() {
                            f64::NAN
                        } else {
                            r.max(a)
                        }
                    }
                    ReduceOp::Min => {
                        if a.is_nan() || r.is_nan() {
                            f64::NAN
                        } else {
                            r.min(a)
                        }
                    }
                };
            });
            acc.into_iter().map(|a| a as $t).collect()
        }};
    }
    macro_rules! int_reduce {
        ($v:expr, $t:ty) => {{
            let init: $t = match f {
                ReduceOp::Sum => 0,
                ReduceOp::Prod => 1,
                ReduceOp::Max => <$t>::MIN,
                ReduceOp::Min => <$t>::MAX,
            };
            let mut acc = vec![init; n_out];
            let mut i = 0;
            walk(in_shape, [(0, &os)], |[o]| {
                let a = $v[i];
                i += 1;
                let r = &mut acc[o];
                *r = match f {
                    ReduceOp::Sum => r.wrapping_add(a),
                    ReduceOp::Prod => r.wrapping_mul(a),
                    ReduceOp::Max => (*r).max(a),
                    ReduceOp::Min => (*r).min(a),
                };
            });
            acc
        }};
    }
    let data = match x.data() {
        Data::F32(v) => Data::F32(float_reduce!(v, f32)),
        Data::F64(v) => Data::F64(float_reduce!(v, f64)),
        Data::I32(v) => Data::I32(int_reduce!(v, i32)),
        Data::I64(v) => Data::I64(int_reduce!(v, i64)),
        Data::I8(v) => Data::I8(int_reduce!(v, i8)),
        Data::I16(v) => Data::I16(int_reduce!(v, i16)),
        Data::U8(v) => Data::U8(int_reduce!(v, u8)),
        Data::U16(v) => Data::U16(int_reduce!(v, u16)),
        Data::U32(v) => Data::U32(int_reduce!(v, u32)),
        Data::U64(v) => Data::U64(int_reduce!(v, u64)),
        // Half types reduce as f32, then round.
        Data::F16(v) => {
            let v: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
            let r: Vec<f32> = float_reduce!(&v, f32);
            Data::F16(r.into_iter().map(half::f16::from_f32).collect())
        }
        Data::BF16(v) => {
            let v: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
            let r: Vec<f32> = float_reduce!(&v, f32);
            Data::BF16(r.into_iter().map(half::bf16::from_f32).collect())
        }
        Data::Bool(_) => return Err("cannot reduce bool tensors".into()),
    };
    Ok(Array::new(out.to_vec(), data).expect("reduced shape matches"))
}

/// Reference meaning of argmax/argmin: the first index of the extreme value,
/// compared in the input's own type; a NaN counts as the extreme (as numpy does).
pub fn eval_arg(f: ArgOp, x: &Array, axis: usize, out: &[usize]) -> Result<Array, String> {
    if x.shape()[axis] == 0 {
        return Err(format!(
            "axis {axis} is empty (a symbolic dim bound to 0): no index to return"
        ));
    }
    let res = match x.data() {
        Data::F32(v) => arg_along(v, x.shape(), axis, f),
        Data::F64(v) => arg_along(v, x.shape(), axis, f),
        Data::I32(v) => arg_along(v, x.shape(), axis, f),
        Data::I64(v) => arg_along(v, x.shape(), axis, f),
        Data::I8(v) => arg_along(v, x.shape(), axis, f),
        Data::I16(v) => arg_along(v, x.shape(), axis, f),
        Data::U8(v) => arg_along(v, x.shape(), axis, f),
        Data::U16(v) => arg_along(v, x.shape(), axis, f),
        Data::U32(v) => arg_along(v, x.shape(), axis, f),
        Data::U64(v) => arg_along(v, x.shape(), axis, f),
        Data::F16(v) => arg_along(v, x.shape(), axis, f),
        Data::BF16(v) => arg_along(v, x.shape(), axis, f),
        Data::Bool(_) => return Err("cannot take argmax/argmin of bool tensors".into()),
    };
    Ok(Array::new(out.to_vec(), Data::I64(res)).expect("arg shape matches"))
}

fn arg_along<T: PartialOrd + Copy>(vals: &[T], shape: &[usize], axis: usize, f: ArgOp) -> Vec<i64> {
    #[allow(clippy::eq_op)]
    let is_nan = |v: T| v != v;
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut res = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0usize;
            let mut bv = vals[o * len * inner + i];
            for k in 1..len {
                if is_nan(bv) {
                    break;
                }
                let v = vals[(o * len + k) * inner + i];
                let better = match f {
                    ArgOp::ArgMax => v > bv || is_nan(v),
                    ArgOp::ArgMin => v < bv || is_nan(v),
                };
                if better {
                    best = k;
                    bv = v;
                }
            }
            res.push(best as i64);
        }
    }
    res
}

// ---- gradients ----

use crate::builder::Tensor;

/// `t` (a reduction's output or its gradient) with the reduced axes kept as 1.
#[track_caller]
fn keep_dims<'g>(
    t: Tensor<'g>,
    x: &Shape,
    axes: &[usize],
    keepdims: bool,
) -> crate::error::Result<Tensor<'g>> {
    if keepdims {
        return Ok(t);
    }
    t.reshape(reduced_shape(x, axes, true))
}

/// Gradient rule of reductions: sum broadcasts the gradient back; max and
/// min share it evenly among the elements equal to the result; prod uses
/// `y / x`.
#[track_caller]
pub(crate) fn grad_reduce<'g>(
    f: ReduceOp,
    x: Tensor<'g>,
    y: Tensor<'g>,
    axes: &[usize],
    keepdims: bool,
    g: Tensor<'g>,
) -> crate::error::Result<Option<Tensor<'g>>> {
    if !x.dtype().is_float() {
        return Ok(None);
    }
    let xs = x.shape();
    let gb = keep_dims(g, &xs, axes, keepdims)?.broadcast_to(xs.clone())?;
    let yb = keep_dims(y, &xs, axes, keepdims)?.broadcast_to(xs.clone())?;
    let ax: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
    Ok(Some(match f {
        ReduceOp::Sum => gb,
        ReduceOp::Prod => gb.mul(yb)?.div(x)?,
        ReduceOp::Max | ReduceOp::Min => {
            let mask = x.eq(yb)?.cast(x.dtype())?;
            let count = mask.sum(&ax, true)?.broadcast_to(xs)?;
            gb.mul(mask)?.div(count)?
        }
    }))
}

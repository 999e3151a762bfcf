//! Import-time tables the converters share: constant tensors from f64 or
//! integer values, an ONNX element type attribute as a kiln dtype, and
//! row-major strides and flat-index arithmetic.

use kiln_graph::{Array, DType, Scalar, Tensor};

use super::{Node, R};

pub(crate) fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// A constant array of `dtype` from f64 values.
fn array_of(values: &[f64], shape: &[usize], dtype: DType) -> R<Array> {
    let s: Vec<Scalar> = values.iter().map(|&v| Scalar::from_f64(dtype, v)).collect();
    Array::from_scalars(shape.to_vec(), dtype, &s)
        .ok_or_else(|| format!("{} values do not fill shape {shape:?}", values.len()).into())
}

/// A constant tensor of `dtype` from f64 values.
pub(crate) fn constant<'g>(
    n: &Node<'_, 'g>,
    values: &[f64],
    shape: &[usize],
    dtype: DType,
) -> R<Tensor<'g>> {
    n.constant(array_of(values, shape, dtype)?)
}

/// A constant i64 tensor.
pub(crate) fn int_constant<'g>(
    n: &Node<'_, 'g>,
    values: Vec<i64>,
    shape: &[usize],
) -> R<Tensor<'g>> {
    let a = Array::from_vec(shape.to_vec(), values)
        .ok_or_else(|| format!("index values do not fill shape {shape:?}"))?;
    n.constant(a)
}

/// The kiln dtype of an ONNX element type attribute.
pub(crate) fn onnx_dtype(code: i64) -> R<DType> {
    Ok(crate::tensor::dtype_of(code as i32)?)
}

/// Row-major strides of `dims`.
pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// The multi-index of flat position `i` in `dims` (row-major).
pub(crate) fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut out = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        out[d] = i % dims[d].max(1);
        i /= dims[d].max(1);
    }
    out
}

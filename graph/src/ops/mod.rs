//! The homes of the primitive ops: one file per family, each holding the
//! shape rules (`infer_*`) and reference meaning (`eval_*`) of its ops.
//! Shared index arithmetic for strided views lives here.

pub mod control;
pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod movement;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod state;
pub mod symbolic;

use crate::array::Array;
use crate::shape::TensorType;

/// Row-major strides of `shape` as signed offsets.
pub(crate) fn istrides(shape: &[usize]) -> Vec<isize> {
    crate::shape::strides(shape)
        .into_iter()
        .map(|s| s as isize)
        .collect()
}

/// Strides for reading a tensor of shape `input` broadcast to `out`.
pub(crate) fn bstrides(input: &[usize], out: &[usize]) -> Vec<isize> {
    crate::shape::broadcast_strides(input, out)
        .into_iter()
        .map(|s| s as isize)
        .collect()
}

/// Calls `f` with the element offsets of every view, for each output element
/// in row-major order. Each view is a base offset and one stride per output dim.
pub(crate) fn walk<const K: usize>(
    out: &[usize],
    views: [(isize, &[isize]); K],
    mut f: impl FnMut([usize; K]),
) {
    let n: usize = out.iter().product();
    if n == 0 {
        return;
    }
    let rank = out.len();
    let mut idx = vec![0usize; rank];
    let mut off: [isize; K] = std::array::from_fn(|k| views[k].0);
    for _ in 0..n {
        f(off.map(|o| o as usize));
        for d in (0..rank).rev() {
            idx[d] += 1;
            for k in 0..K {
                off[k] += views[k].1[d];
            }
            if idx[d] < out[d] {
                break;
            }
            for k in 0..K {
                off[k] -= views[k].1[d] * out[d] as isize;
            }
            idx[d] = 0;
        }
    }
}

/// Copies a strided view of `src` into a new row-major vector of shape `out`.
pub(crate) fn strided_copy<T: Copy>(
    src: &[T],
    out: &[usize],
    base: isize,
    strides: &[isize],
) -> Vec<T> {
    let mut v = Vec::with_capacity(out.iter().product());
    walk(out, [(base, strides)], |[o]| v.push(src[o]));
    v
}

/// Writes `src` (row-major, shape `shape`) into `dst` at the view (`base`, `strides`).
pub(crate) fn strided_store<T: Copy>(
    dst: &mut [T],
    src: &[T],
    shape: &[usize],
    base: isize,
    strides: &[isize],
) {
    let mut i = 0;
    walk(shape, [(base, strides)], |[o]| {
        dst[o] = src[i];
        i += 1;
    });
}

/// A view of `a` as a new array of shape `out`, via strides.
pub(crate) fn view(a: &Array, out: &[usize], base: isize, strides: &[isize]) -> Array {
    let data = crate::map_data!(a.data(), v => strided_copy(v, out, base, strides));
    Array::new(out.to_vec(), data).expect("view shape matches its element count")
}

/// Formats types for error messages: `f32[2,3], i64[4]`.
pub fn format_types(types: &[&TensorType]) -> String {
    if types.is_empty() {
        return "none".into();
    }
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requires a float dtype.
pub(crate) fn require_float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be f32 or f64, got {}", t.dtype))
    }
}

/// Requires the given rank.
pub(crate) fn require_rank(t: &TensorType, rank: usize, what: &str) -> Result<(), String> {
    if t.rank() == rank {
        Ok(())
    } else {
        Err(format!("{what} must have rank {rank}, got {}", t.shape))
    }
}

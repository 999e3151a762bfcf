//! Random sources: uniform and normal samples, a pure function of seed,
//! shape and element index (see `rng.rs`).

use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::rng;
use crate::shape::{Shape, TensorType};

/// Shape rule of random sources: a float dtype and valid parameters.
pub fn infer_random(
    dtype: DType,
    shape: &Shape,
    params_ok: bool,
    why: &str,
) -> Result<TensorType, String> {
    if !dtype.is_float() {
        return Err(format!("random values need a float dtype, got {dtype}"));
    }
    if !params_ok {
        return Err(why.into());
    }
    Ok(TensorType::new(dtype, shape.clone()))
}

/// Reference meaning of uniform samples in `[low, high)`: `low + (high - low) * u`
/// in the dtype, computed in f64 when `high - low` overflows the dtype, and
/// moved just below `high` where rounding reaches it (`low` when `low == high`).
pub fn eval_uniform(dtype: DType, out: &[usize], seed: u64, low: f64, high: f64) -> Array {
    let n = out.iter().product::<usize>() as u64;
    let data = match dtype {
        DType::F32 => {
            let (l, h) = (low as f32, high as f32);
            let sample = |i: u64| {
                let u = rng::uniform_f32(seed, i);
                let v = if (h - l).is_finite() {
                    l + (h - l) * u
                } else {
                    (low + (high - low) * u as f64) as f32
                };
                if v >= h && l < h {
                    h.next_down()
                } else {
                    v
                }
            };
            Data::F32((0..n).map(sample).collect())
        }
        _ => {
            let sample = |i: u64| {
                let u = rng::uniform_f64(seed, i);
                let v = if (high - low).is_finite() {
                    low + (high - low) * u
                } else {
                    low * (1.0 - u) + high * u
                };
                if v >= high && low < high {
                    high.next_down()
                } else {
                    v
                }
            };
            Data::F64((0..n).map(sample).collect())
        }
    };
    Array::new(out.to_vec(), data).expect("random shape matches")
}

/// Reference meaning of normal samples.
pub fn eval_normal(dtype: DType, out: &[usize], seed: u64, mean: f64, std: f64) -> Array {
    let n = out.iter().product::<usize>() as u64;
    let v: Vec<f64> = (0..n)
        .map(|i| mean + std * rng::normal_f64(seed, i))
        .collect();
    super::linalg::float_array(dtype, out, v)
}

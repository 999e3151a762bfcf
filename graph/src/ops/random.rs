//! Random sources: uniform and normal samples, a pure function of seed,
//! shape and element index (see `rng.rs`).

use crate::array::{Array, Scalar};
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

/// Element `i` of uniform samples in `[low, high)`: `low + (high - low) * u`
/// in the dtype, computed in f64 when `high - low` overflows the dtype, and
/// moved just below `high` where rounding reaches it (`low` when `low == high`).
pub fn uniform_element(dtype: DType, seed: u64, low: f64, high: f64, i: u64) -> Scalar {
    match dtype {
        DType::F32 => Scalar::F32(rng::uniform_sample_f32(seed, low, high, i)),
        _ => Scalar::F64(rng::uniform_sample_f64(seed, low, high, i)),
    }
}

/// Element `i` of normal samples: `mean + std * z` computed in f64, then rounded.
pub fn normal_element(dtype: DType, seed: u64, mean: f64, std: f64, i: u64) -> Scalar {
    Scalar::from_f64(dtype, rng::normal_sample(seed, mean, std, i))
}

/// Reference meaning of uniform samples (see [`uniform_element`]).
pub fn eval_uniform(dtype: DType, out: &[usize], seed: u64, low: f64, high: f64) -> Array {
    let n = out.iter().product::<usize>() as u64;
    let v: Vec<Scalar> = (0..n)
        .map(|i| uniform_element(dtype, seed, low, high, i))
        .collect();
    Array::from_scalars(out.to_vec(), dtype, &v).expect("random shape matches")
}

/// Reference meaning of normal samples (see [`normal_element`]).
pub fn eval_normal(dtype: DType, out: &[usize], seed: u64, mean: f64, std: f64) -> Array {
    let n = out.iter().product::<usize>() as u64;
    let v: Vec<Scalar> = (0..n)
        .map(|i| normal_element(dtype, seed, mean, std, i))
        .collect();
    Array::from_scalars(out.to_vec(), dtype, &v).expect("random shape matches")
}

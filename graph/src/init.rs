//! Variable initializers (zeros, constants, uniform/normal, Glorot, He),
//! sampled at build time from a seed so a model rebuilds identically.

use crate::array::{Array, Data};
use crate::dtype::DType;
use crate::rng;

/// How a variable's initial value is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element `v`.
    Constant(f64),
    /// Uniform in `[low, high)`.
    Uniform(f64, f64),
    /// Normal with mean and standard deviation.
    Normal(f64, f64),
    /// Glorot/Xavier uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
    /// Glorot/Xavier normal: std `sqrt(2 / (fan_in + fan_out))`.
    GlorotNormal,
    /// He/Kaiming uniform: `U(-a, a)`, `a = sqrt(6 / fan_in)`.
    HeUniform,
    /// He/Kaiming normal: std `sqrt(2 / fan_in)`.
    HeNormal,
}

/// Fan-in and fan-out of a weight: `[in, out]` for rank 2 (dense weights are
/// applied as `x @ w`), `[out, in, k...]` for conv weights, the size otherwise.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (shape[0], shape[0]),
        2 => (shape[0], shape[1]),
        _ => {
            let rf: usize = shape[2..].iter().product();
            (shape[1] * rf, shape[0] * rf)
        }
    }
}

impl Init {
    /// Draws a value of `dtype` and `shape` with `seed`.
    pub fn sample(self, dtype: DType, shape: &[usize], seed: u64) -> Result<Array, String> {
        let n: usize = crate::array::checked_product(shape).ok_or("shape is too large")?;
        let (fi, fo) = fans(shape);
        let random = !matches!(self, Init::Zeros | Init::Ones | Init::Constant(_));
        if random && !dtype.is_float() {
            return Err(format!(
                "random initializers need a float dtype, got {dtype}"
            ));
        }
        let uniform = |a: f64, b: f64| {
            (0..n as u64)
                .map(|i| a + (b - a) * rng::uniform_f64(seed, i))
                .collect::<Vec<_>>()
        };
        let normal = |m: f64, s: f64| {
            (0..n as u64)
                .map(|i| m + s * rng::normal_f64(seed, i))
                .collect::<Vec<_>>()
        };
        let vals: Vec<f64> = match self {
            Init::Zeros => return Ok(Array::zeros(dtype, shape)),
            Init::Ones => return Ok(Array::filled(dtype, shape, 1.0)),
            Init::Constant(v) => return Ok(Array::filled(dtype, shape, v)),
            Init::Uniform(a, b) => uniform(a, b),
            Init::Normal(m, s) => normal(m, s),
            Init::GlorotUniform => {
                let a = (6.0 / (fi + fo).max(1) as f64).sqrt();
                uniform(-a, a)
            }
            Init::GlorotNormal => normal(0.0, (2.0 / (fi + fo).max(1) as f64).sqrt()),
            Init::HeUniform => {
                let a = (6.0 / fi.max(1) as f64).sqrt();
                uniform(-a, a)
            }
            Init::HeNormal => normal(0.0, (2.0 / fi.max(1) as f64).sqrt()),
        };
        let data = match dtype {
            DType::F32 => Data::F32(vals.into_iter().map(|v| v as f32).collect()),
            DType::F16 => Data::F16(vals.into_iter().map(half::f16::from_f64).collect()),
            DType::BF16 => Data::BF16(vals.into_iter().map(half::bf16::from_f64).collect()),
            _ => Data::F64(vals),
        };
        Ok(Array::new(shape.to_vec(), data).expect("initializer shape matches"))
    }
}

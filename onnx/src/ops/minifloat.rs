//! Rounding to ONNX's 8- and 4-bit float types (held in f16, see
//! [`crate::tensor::MiniFloat`]), as the casts and quantization to them
//! need: round half to even onto the type's grid, then out-of-range
//! values saturate to the largest finite value or (with `saturate` off)
//! become infinite (FLOAT8E5M2) or NaN (the others); FLOAT4E2M1 always
//! saturates and has no NaN (a NaN becomes 0).
//!
//! The grid step at `|x|` is `2^(max(floor(log2 |x|), min_exp) - man)`,
//! found exactly by comparing `|x|` with each power of two of the type's
//! range (no logarithm), in f64, where every step is exact.

use kiln_graph::{DType, Tensor};

use super::{Kiln, R};
use crate::tensor::{MiniFloat, MiniKind};

/// `x` rounded to `f`'s values, as f16.
pub(crate) fn round_to<'g>(x: Tensor<'g>, f: MiniFloat, saturate: bool) -> R<Tensor<'g>> {
    if !x.dtype().is_float() && !x.dtype().is_int() {
        return Err(format!("cannot cast {} to an 8- or 4-bit float", x.dtype()));
    }
    let x = x.cast(DType::F64).k()?;
    let a = x.abs().k()?;
    // The grid step: 2^(min_exp - man), doubled for each binade |x| reaches.
    let mut step = a
        .builder()
        .scalar(2f64.powi(f.min_exp() - f.man as i32), DType::F64)
        .k()?;
    for k in f.min_exp() + 1..=f.max_exp() {
        let up = a.ge(2f64.powi(k)).k()?.cast(DType::F64).k()?.add(1.0).k()?;
        step = step.mul(up).k()?;
    }
    let y = a.div(step).k()?.round().k()?.mul(step).k()?;
    let max = f.max();
    let over = y.gt(max).k()?;
    let y = if saturate || f.kind == MiniKind::Finite {
        y.minimum(max).k()?
    } else {
        let special = if f.kind == MiniKind::Ieee {
            f64::INFINITY
        } else {
            f64::NAN
        };
        let g = y.builder();
        g.select(over, g.scalar(special, DType::F64).k()?, y).k()?
    };
    let y = if f.kind == MiniKind::Finite {
        // No NaN: a NaN input becomes 0.
        let g = y.builder();
        g.select(x.ne(x).k()?, g.scalar(0.0, DType::F64).k()?, y)
            .k()?
    } else {
        y
    };
    let g = y.builder();
    let signed = g.select(x.lt(0.0).k()?, y.neg().k()?, y).k()?;
    // The fnuz types have no negative zero.
    let signed = if f.kind == MiniKind::Fnuz {
        g.select(signed.eq(0.0).k()?, g.scalar(0.0, DType::F64).k()?, signed)
            .k()?
    } else {
        signed
    };
    signed.cast(DType::F16).k()
}

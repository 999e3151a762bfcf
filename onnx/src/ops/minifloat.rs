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

use super::R;
use crate::tensor::{MiniFloat, MiniKind};

/// `x` rounded to `f`'s values, as f16.
pub(crate) fn round_to<'g>(x: Tensor<'g>, f: MiniFloat, saturate: bool) -> R<Tensor<'g>> {
    if !x.dtype().is_float() && !x.dtype().is_int() {
        return Err(format!("cannot cast {} to an 8- or 4-bit float", x.dtype()).into());
    }
    let x = x.cast(DType::F64)?;
    let a = x.abs()?;
    // The grid step: 2^(min_exp - man), doubled for each binade |x| reaches.
    let mut step = a
        .builder()
        .scalar(2f64.powi(f.min_exp() - f.man as i32), DType::F64)?;
    for k in f.min_exp() + 1..=f.max_exp() {
        let up = a.ge(2f64.powi(k))?.cast(DType::F64)?.add(1.0)?;
        step = step.mul(up)?;
    }
    let y = a.div(step)?.round()?.mul(step)?;
    let max = f.max();
    let over = y.gt(max)?;
    let y = if saturate || f.kind == MiniKind::Finite {
        y.minimum(max)?
    } else {
        let special = if f.kind == MiniKind::Ieee {
            f64::INFINITY
        } else {
            f64::NAN
        };
        let g = y.builder();
        g.select(over, g.scalar(special, DType::F64)?, y)?
    };
    let y = if f.kind == MiniKind::Finite {
        // No NaN: a NaN input becomes 0.
        let g = y.builder();
        g.select(x.ne(x)?, g.scalar(0.0, DType::F64)?, y)?
    } else {
        y
    };
    let g = y.builder();
    let signed = g.select(x.lt(0.0)?, y.neg()?, y)?;
    // The fnuz types have no negative zero.
    let signed = if f.kind == MiniKind::Fnuz {
        g.select(signed.eq(0.0)?, g.scalar(0.0, DType::F64)?, signed)?
    } else {
        signed
    };
    Ok(signed.cast(DType::F16)?)
}

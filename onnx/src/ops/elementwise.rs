//! Elementwise ONNX ops: math, activations, comparisons and logic, casts,
//! `Where`, `Clip`, variadic `Sum`/`Mean`/`Max`/`Min`, `Constant`,
//! `Identity` and `Dropout` (training mode with kiln's random source).
//! Broadcasting is numpy's (ONNX opset 7 and later), which kiln's binary
//! ops share.

use kiln_graph::{Array, DType, Tensor};

use super::{Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Abs", |n| unary(n, |x| x.abs())),
    ("Neg", |n| unary(n, |x| x.neg())),
    ("Exp", |n| unary(n, |x| x.exp())),
    ("Log", |n| unary(n, |x| x.log())),
    ("Sqrt", |n| unary(n, |x| x.sqrt())),
    ("Reciprocal", |n| unary(n, |x| x.recip())),
    ("Sin", |n| unary(n, |x| x.sin())),
    ("Cos", |n| unary(n, |x| x.cos())),
    ("Tan", |n| unary(n, |x| x.tan())),
    ("Tanh", |n| unary(n, |x| x.tanh())),
    ("Sinh", |n| unary(n, |x| x.sinh())),
    ("Cosh", |n| unary(n, |x| x.cosh())),
    ("Asinh", |n| unary(n, |x| x.asinh())),
    ("Acosh", |n| unary(n, |x| x.acosh())),
    ("Atanh", |n| unary(n, |x| x.atanh())),
    ("Sigmoid", |n| unary(n, |x| x.sigmoid())),
    ("Swish", |n| {
        let a = n.float("alpha", 1.0) as f64;
        unary(n, |x| zero_at_neg_inf(x, x.mul(x.mul(a)?.sigmoid()?)?))
    }),
    ("Atan", |n| unary(n, |x| x.atan())),
    ("Asin", |n| unary(n, |x| x.asin())),
    ("Acos", |n| unary(n, |x| x.acos())),
    ("Erf", |n| unary(n, |x| x.erf())),
    ("Floor", |n| unary(n, |x| x.floor())),
    ("Ceil", |n| unary(n, |x| x.ceil())),
    ("Round", |n| unary(n, |x| x.round())),
    ("Sign", |n| unary(n, |x| x.sign())),
    ("Not", |n| unary(n, |x| x.not())),
    ("Relu", |n| unary(n, |x| x.relu())),
    ("IsNaN", |n| unary(n, |x| x.ne(x))),
    ("IsInf", is_inf),
    ("LeakyRelu", |n| {
        let a = n.float("alpha", 0.01) as f64;
        unary(n, |x| x.builder().select(x.ge(0.0)?, x, x.mul(a)?))
    }),
    ("PRelu", |n| {
        let (x, slope) = (n.input(0)?, n.input(1)?);
        let mut slope = slope.cast(x.dtype())?;
        // Before opset 7 a slope of C values is per channel (axis 1).
        if n.opset < 7 && slope.rank() == 1 && x.rank() > 2 {
            let mut d = vec![kiln_graph::Dim::Fixed(1); x.rank() - 1];
            d[0] = slope.shape().0[0].clone();
            slope = slope.reshape(kiln_graph::Shape(d))?;
        }
        Ok(one(n.g.select(x.ge(0.0)?, x, x.mul(slope)?)?))
    }),
    ("Elu", |n| {
        let a = n.float("alpha", 1.0) as f64;
        unary(n, |x| {
            let neg = expm1_neg(x)?.mul(a)?;
            x.builder().select(x.gt(0.0)?, x, neg)
        })
    }),
    ("Celu", |n| {
        let a = n.float("alpha", 1.0) as f64;
        unary(n, |x| {
            let neg = expm1_neg(x.div(a)?)?.mul(a)?.minimum(0.0)?;
            x.maximum(0.0)?.add(neg)
        })
    }),
    ("Selu", |n| {
        let a = n.float("alpha", 1.673_263_2) as f64;
        let gamma = n.float("gamma", 1.050_701) as f64;
        unary(n, |x| {
            let neg = expm1_neg(x)?.mul(a)?;
            x.builder().select(x.gt(0.0)?, x, neg)?.mul(gamma)
        })
    }),
    ("ThresholdedRelu", |n| {
        let a = n.float("alpha", 1.0) as f64;
        unary(n, |x| {
            // A constant 0 (x * 0 would be NaN at -inf).
            let zero = x.builder().scalar(0.0, x.dtype())?;
            x.builder().select(x.gt(a)?, x, zero)
        })
    }),
    ("HardSigmoid", |n| {
        let (a, b) = (n.float("alpha", 0.2) as f64, n.float("beta", 0.5) as f64);
        unary(n, |x| x.mul(a)?.add(b)?.maximum(0.0)?.minimum(1.0))
    }),
    ("HardSwish", |n| {
        // x * clamp(x / 6 + 1/2, 0, 1) with the clamped term as (x + 3) / 6
        // (x + 3 is exact near -3, where x / 6 + 1/2 would cancel), and x
        // floored at -3 (where the clamp is 0 already) so that -inf gives
        // -0, not -inf * 0 = NaN.
        unary(n, |x| {
            let h = x.add(3.0)?.div(6.0)?.maximum(0.0)?.minimum(1.0)?;
            x.maximum(-3.0)?.mul(h)
        })
    }),
    ("Softplus", |n| unary(n, softplus)),
    ("Softsign", |n| {
        // x / (1 + |x|), and sign(x) at +/-inf (not inf / inf = NaN).
        unary(n, |x| {
            let ax = x.abs()?;
            let q = x.div(ax.add(1.0)?)?;
            x.builder().select(ax.eq(f64::INFINITY)?, x.sign()?, q)
        })
    }),
    ("Mish", |n| {
        unary(n, |x| zero_at_neg_inf(x, x.mul(softplus(x)?.tanh()?)?))
    }),
    ("Gelu", |n| {
        let tanh = n.string("approximate").unwrap_or_default() == "tanh";
        unary(n, |x| if tanh { x.gelu_tanh() } else { x.gelu() })
    }),
    ("Add", |n| binary(n, |a, b| a.add(b))),
    ("Sub", |n| binary(n, |a, b| a.sub(b))),
    ("Mul", |n| binary(n, |a, b| a.mul(b))),
    ("Div", |n| binary(n, |a, b| a.div(b))),
    ("Pow", pow),
    ("Equal", |n| binary(n, |a, b| a.eq(b))),
    ("Less", |n| binary(n, |a, b| a.lt(b))),
    ("LessOrEqual", |n| binary(n, |a, b| a.le(b))),
    ("Greater", |n| binary(n, |a, b| a.gt(b))),
    ("GreaterOrEqual", |n| binary(n, |a, b| a.ge(b))),
    ("And", |n| binary(n, |a, b| a.and(b))),
    ("Or", |n| binary(n, |a, b| a.or(b))),
    ("Xor", |n| binary(n, |a, b| a.xor(b))),
    ("Mod", modulo),
    ("Max", |n| variadic(n, |a, b| a.maximum(b))),
    ("Min", |n| variadic(n, |a, b| a.minimum(b))),
    ("Sum", |n| variadic(n, |a, b| a.add(b))),
    ("Mean", |n| {
        let k = n.all_inputs().len() as f64;
        let s = variadic(n, |a, b| a.add(b))?.remove(0);
        Ok(one(s.div(k)?))
    }),
    ("Where", |n| {
        Ok(one(n.g.select(n.input(0)?, n.input(1)?, n.input(2)?)?))
    }),
    ("Clip", clip),
    ("BitCast", bitcast),
    ("Cast", |n| {
        let saturate = n.int("saturate", 1) != 0;
        cast_to(n.input(0)?, n.int("to", 1) as i32, saturate).map(one)
    }),
    ("CastLike", |n| {
        let like = n.input(1)?;
        let saturate = n.int("saturate", 1) != 0;
        let special =
            |t: i32| crate::tensor::sub_byte(t).is_some() || crate::tensor::minifloat(t).is_some();
        match n.declared(1).filter(|&t| special(t)) {
            Some(t) => cast_to(n.input(0)?, t, saturate).map(one),
            None => Ok(one(n.input(0)?.cast(like.dtype())?)),
        }
    }),
    ("Identity", |n| Ok(vec![n.input(0)?])),
    ("Dropout", dropout),
    ("Constant", constant),
];

/// `log(1 + e^x)` as `max(x, 0) + log1p(e^-|x|)` (no overflow), with
/// `log1p(u) = log(w) * u / (w - 1)` for `w = 1 + u` rounded (Goldberg's
/// correction: the rounding of `1 + u` cancels out, so no digits of a
/// small `u` are lost), and `u` itself where `w` rounds to 1.
fn softplus(x: Tensor<'_>) -> kiln_graph::Result<Tensor<'_>> {
    let u = x.abs()?.neg()?.exp()?;
    let w = u.add(1.0)?;
    let corrected = w.log()?.mul(u)?.div(w.sub(1.0)?)?;
    let log1p = x.builder().select(w.eq(1.0)?, u, corrected)?;
    x.maximum(0.0)?.add(log1p)
}

/// `e^x - 1` for `x <= 0` without the cancellation of `exp(x) - 1` near 0:
/// `2t / (1 - t)` with `t = tanh(x / 2)` in `(-1, 0]`, so `1 - t` is in
/// `[1, 2)` and the result keeps tanh's relative accuracy; -1 at -inf.
/// (Positive `x` gives up to +inf: callers select or clamp it away.)
fn expm1_neg(x: Tensor<'_>) -> kiln_graph::Result<Tensor<'_>> {
    let t = x.mul(0.5)?.tanh()?;
    t.mul(2.0)?.div(t.neg()?.add(1.0)?)
}

/// `y`, except 0 where `x` is -inf: the limit of activations of the form
/// `x * f(x)` with `f(-inf) = 0` (Swish, Mish), which the formula would
/// make `-inf * 0 = NaN`.
fn zero_at_neg_inf<'g>(x: Tensor<'g>, y: Tensor<'g>) -> kiln_graph::Result<Tensor<'g>> {
    let b = x.builder();
    b.select(x.eq(f64::NEG_INFINITY)?, b.scalar(0.0, x.dtype())?, y)
}

fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

fn unary<'g>(
    n: &Node<'_, 'g>,
    f: impl Fn(Tensor<'g>) -> kiln_graph::Result<Tensor<'g>>,
) -> R<Vec<Tensor<'g>>> {
    Ok(one(f(n.input(0)?)?))
}

fn binary<'g>(
    n: &Node<'_, 'g>,
    f: impl Fn(Tensor<'g>, Tensor<'g>) -> kiln_graph::Result<Tensor<'g>>,
) -> R<Vec<Tensor<'g>>> {
    let (a, b) = (n.input(0)?, legacy_broadcast(n, n.input(0)?, n.input(1)?)?);
    Ok(one(f(a, b)?))
}

/// Before opset 7, `broadcast = 1` with `axis` lines `b`'s dims up with
/// `a`'s from `axis` (numpy aligns them at the end): `b` gets trailing
/// unit dims.
fn legacy_broadcast<'g>(n: &Node<'_, 'g>, a: Tensor<'g>, b: Tensor<'g>) -> R<Tensor<'g>> {
    if n.opset >= 7 || n.int("broadcast", 0) == 0 || n.attr("axis").is_none() {
        return Ok(b);
    }
    let axis = super::axis(n.int("axis", 0), a.rank())?;
    let trailing = a.rank().checked_sub(axis + b.rank()).ok_or_else(|| {
        format!(
            "broadcast axis {axis}: {} does not fit in {}",
            b.shape(),
            a.shape()
        )
    })?;
    let mut dims = b.shape().0;
    dims.extend(std::iter::repeat_n(kiln_graph::Dim::Fixed(1), trailing));
    Ok(b.reshape(kiln_graph::Shape(dims))?)
}

/// A left fold over every input (numpy broadcasting throughout).
fn variadic<'g>(
    n: &Node<'_, 'g>,
    f: impl Fn(Tensor<'g>, Tensor<'g>) -> kiln_graph::Result<Tensor<'g>>,
) -> R<Vec<Tensor<'g>>> {
    let ins = n.all_inputs();
    let (first, rest) = ins.split_first().ok_or("needs at least one input")?;
    let mut acc = *first;
    for &t in rest {
        acc = f(acc, t)?;
    }
    Ok(vec![acc])
}

fn is_inf<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (pos, neg) = (
        n.int("detect_positive", 1) != 0,
        n.int("detect_negative", 1) != 0,
    );
    let inf = n.scalar(f64::INFINITY, x.dtype())?;
    let ninf = n.scalar(f64::NEG_INFINITY, x.dtype())?;
    let p = x.eq(inf)?;
    let m = x.eq(ninf)?;
    let r = match (pos, neg) {
        (true, true) => p.or(m)?,
        (true, false) => p,
        (false, true) => m,
        (false, false) => p.and(m)?,
    };
    Ok(vec![r])
}

fn pow<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    // The exponent may be of another type (T1): computed in the base's.
    let b = b.cast(a.dtype())?;
    Ok(one(a.pow(b)?))
}

/// `Mod`: the truncated remainder ([`Tensor::rem`]: the sign of the
/// dividend, C's fmod, exact for floats) with `fmod = 1`; for integers with
/// `fmod = 0` the sign of the divisor (Python's %). Floats need `fmod = 1`.
fn modulo<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    let fmod = n.int("fmod", 0) != 0;
    if a.dtype().is_float() && !fmod {
        return n.unsupported("Mod of floats needs fmod = 1");
    }
    let r = a.rem(b)?;
    if fmod {
        return Ok(vec![r]);
    }
    // Shape values with a dividend never negative and a divisor above 0
    // (`seq % 8`): the remainder already has the divisor's sign.
    let signs_known = match (a.sym_values(), b.sym_values()) {
        (Some(x), Some(y)) => {
            x.iter().all(|v| v.is_nonneg()) && y.iter().all(|v| v.bounds().0 >= 1)
        }
        _ => false,
    };
    if signs_known {
        return Ok(vec![r]);
    }
    // Integers, sign of the divisor: add b where r and b differ in sign.
    let zero = n.scalar(0.0, a.dtype())?;
    let differ = r.ne(zero)?.and(r.lt(zero)?.xor(b.lt(zero)?)?)?;
    let fixed = r.add(b)?;
    Ok(one(n.g.select(differ, fixed, r)?))
}

fn clip<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (lo, hi): (Option<Tensor<'g>>, Option<Tensor<'g>>) = if n.opset < 11 {
        let lo = n.attr("min").map(|a| a.f as f64);
        let hi = n.attr("max").map(|a| a.f as f64);
        (
            lo.map(|v| n.scalar(v, x.dtype())).transpose()?,
            hi.map(|v| n.scalar(v, x.dtype())).transpose()?,
        )
    } else {
        (n.opt(1), n.opt(2))
    };
    let mut y = x;
    if let Some(lo) = lo {
        y = y.maximum(lo)?;
    }
    if let Some(hi) = hi {
        y = y.minimum(hi)?;
    }
    Ok(vec![y])
}

/// `Dropout`. Inference mode (before opset 12 always; from 12 without a
/// true `training_mode`, which must be known at import time): the input,
/// and a mask of ones where asked. Training mode: a mask drawn from kiln's
/// uniform random source (`u >= ratio`, seeded by the `seed` attribute,
/// else by the output's name) zeroes elements, the rest scaled by
/// `1 / (1 - ratio)`; a ratio known to be 0 draws nothing.
fn dropout<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let training = match n.const_input(2)? {
        Some(t) => t.to_f64_vec().first().copied().unwrap_or(0.0) != 0.0,
        None => false,
    };
    let ratio = n.opt(1).filter(|_| n.opset >= 12);
    let known_ratio = match ratio {
        None => Some(0.5),
        Some(_) => n.const_scalar(1).ok().flatten(),
    };
    if !training || known_ratio == Some(0.0) {
        let mut out = vec![x];
        if n.wants_output(1) {
            let ones = x.eq(x)?.or(x.ne(x)?)?;
            out.push(ones);
        }
        return Ok(out);
    }
    if !x.dtype().is_float() {
        return n.unsupported(format!("Dropout in training mode of {}", x.dtype()));
    }
    let seed = match n.attr("seed") {
        Some(a) => a.i as u64,
        None => {
            n.g.seed_for(n.proto.output.first().map(String::as_str).unwrap_or(""))
        }
    };
    let u = n.g.random_uniform(x.dtype(), x.shape(), seed, 0.0, 1.0)?;
    let (mask, kept) = match ratio {
        Some(r) => {
            let r = r.cast(x.dtype())?;
            let keep = r.neg()?.add(1.0)?;
            (u.ge(r)?, x.div(keep)?)
        }
        None => (u.ge(0.5)?, x.mul(2.0)?),
    };
    let zero = n.scalar(0.0, x.dtype())?;
    let mut out = vec![n.g.select(mask, kept, zero)?];
    if n.wants_output(1) {
        out.push(mask);
    }
    Ok(out)
}

fn constant<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let a = if let Some(t) = n.tensor("value")? {
        t
    } else if let Some(a) = n.attr("value_float") {
        Array::from_vec(Vec::new(), vec![a.f]).ok_or("a bad value_float")?
    } else if let Some(a) = n.attr("value_floats") {
        Array::from_vec(vec![a.floats.len()], a.floats.clone()).ok_or("bad value_floats")?
    } else if let Some(a) = n.attr("value_int") {
        Array::from_vec(Vec::new(), vec![a.i]).ok_or("a bad value_int")?
    } else if let Some(a) = n.attr("value_ints") {
        Array::from_vec(vec![a.ints.len()], a.ints.clone()).ok_or("bad value_ints")?
    } else if n.attr("sparse_value").is_some() {
        return n.unsupported("sparse constants");
    } else {
        return n.unsupported("a Constant without a value kiln reads (strings?)");
    };
    n.constant(a).map(one)
}

/// `BitCast` (opset 26): the same bits as another type of the same width.
/// Between integers (and from bool to a byte) that is a wrapping cast;
/// between floats and integers it needs a bit reinterpretation, which
/// kiln's primitives do not have.
fn bitcast<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let to = crate::tensor::dtype_of(n.int("to", 0) as i32)?;
    let from = x.dtype();
    if from.size_bytes() != to.size_bytes() {
        return Err(format!(
            "{from} and {to} differ in width ({} vs {} bytes)",
            from.size_bytes(),
            to.size_bytes()
        )
        .into());
    }
    let ints = |d: kiln_graph::DType| d.is_int() || d == kiln_graph::DType::Bool;
    if from == to || (ints(from) && to.is_int()) {
        return Ok(one(x.cast(to)?));
    }
    n.unsupported(format!(
        "a bit cast from {from} to {to} (kiln reinterprets only between integer types)"
    ))
}

/// `x` cast to ONNX element type `to`. The sub-byte integers (held in i8 or
/// u8) wrap as ONNX's reference does: the value truncated to an integer,
/// then its low `bits` bits (sign-extended for INT4 and INT2).
/// The 8- and 4-bit floats (held in f16) round to their grid
/// (`minifloat::round_to`, with `saturate`).
fn cast_to<'g>(x: Tensor<'g>, to: i32, saturate: bool) -> R<Tensor<'g>> {
    if let Some(f) = crate::tensor::minifloat(to) {
        return super::minifloat::round_to(x, f, saturate);
    }
    let dtype = crate::tensor::dtype_of(to)?;
    let Some((bits, signed)) = crate::tensor::sub_byte(to) else {
        return Ok(x.cast(dtype)?);
    };
    let mask = (1i64 << bits) - 1;
    let v = x.cast(DType::I64)?;
    let v = if signed {
        let half = 1i64 << (bits - 1);
        v.add(half)?.and(mask)?.sub(half)?
    } else {
        v.and(mask)?
    };
    Ok(v.cast(dtype)?)
}

//! Integer bit ops and quantization, as compositions of kiln's primitives
//! over its integer dtypes:
//!
//! - `BitShift` (unsigned integers): `x << n` is the wrapping product
//!   `x * 2^n` and `x >> n` the quotient `x / 2^n`, where `2^n` is kiln's
//!   wrapping integer power, which is 0 from the type's width on: both
//!   shifts then give 0, as a product by 0 and a division by 0 (kiln's
//!   integer division by zero gives 0).
//! - `BitwiseAnd`, `BitwiseOr`, `BitwiseXor`, `BitwiseNot`: kiln's `and`,
//!   `or`, `xor`, `not`, which are bitwise on integers.
//! - `QuantizeLinear` (opsets 10 to 25): `x / y_scale` in the inputs'
//!   common float type (numpy's promotion, as ONNX's reference computes;
//!   `precision` where given), rounded half to even, plus the zero point
//!   (in f64, exact), saturated to the target: the zero point's type, else
//!   `output_dtype`, else uint8. `DequantizeLinear`: `(x - zero_point) *
//!   x_scale` with `x` as f32 (as the reference), in `output_dtype` or the
//!   scale's type. Scales and zero points are per tensor (one value), per
//!   axis (1-D along `axis`) or blocked (`block_size`: the input's rank,
//!   each value repeated `block_size` times along `axis`).
//! - `DynamicQuantizeLinear`: uint8, with the scale and zero point of the
//!   input's range widened to include 0, in f32 as the spec's formula.
//! - `MatMulInteger`, `ConvInteger`: the 8-bit inputs widened to i32 less
//!   their zero points (per tensor; per row of `A`, per column of `B`, per
//!   output channel of `W`), multiplied in i32; kiln's conv is float only,
//!   so the convolution runs in f64 (exact: sums of products of 9-bit
//!   values stay far below 2^53) and is cast to i32.
//! - `QLinearMatMul`, `QLinearConv`: that integer product (plus
//!   `QLinearConv`'s i32 bias) times `a_scale * b_scale / y_scale`
//!   (computed in the scales' type, as the reference does), in f64 (numpy's
//!   type for i32 times a float), plus the output zero point, rounded half
//!   to even and saturated to the output's type.
//!
//! Deliberate limits: the quantized types are uint8, int8, uint16 and
//! int16; float8, float4, int4 and int2 (which kiln has no dtype for) are
//! refused by name. Scales and zero points need fixed shapes.

use kiln_graph::{Array, DType, Dim, Shape, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("BitShift", bit_shift),
    ("BitwiseAnd", |n| bitwise(n, |a, b| a.and(b))),
    ("BitwiseOr", |n| bitwise(n, |a, b| a.or(b))),
    ("BitwiseXor", |n| bitwise(n, |a, b| a.xor(b))),
    ("BitwiseNot", |n| {
        let x = integer(n.input(0)?, "input")?;
        Ok(one(x.not()?))
    }),
    ("QuantizeLinear", quantize_linear),
    ("DequantizeLinear", dequantize_linear),
    ("DynamicQuantizeLinear", dynamic_quantize_linear),
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("QLinearMatMul", qlinear_matmul),
    ("QLinearConv", qlinear_conv),
];

fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// `t` when it is an integer tensor, else an error naming `what`.
fn integer<'g>(t: Tensor<'g>, what: &str) -> R<Tensor<'g>> {
    if t.dtype().is_int() {
        Ok(t)
    } else {
        Err(format!("{what} must be an integer tensor, got {}", t.dtype()).into())
    }
}

/// `BitwiseAnd`, `BitwiseOr`, `BitwiseXor` of two integer tensors of one
/// type (numpy broadcasting).
fn bitwise<'g>(
    n: &Node<'_, 'g>,
    f: impl Fn(Tensor<'g>, Tensor<'g>) -> kiln_graph::Result<Tensor<'g>>,
) -> R<Vec<Tensor<'g>>> {
    let a = integer(n.input(0)?, "input A")?;
    let b = integer(n.input(1)?, "input B")?;
    Ok(one(f(a, b)?))
}

/// `BitShift`: `direction` LEFT or RIGHT, unsigned integers.
fn bit_shift<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, y) = (n.input(0)?, n.input(1)?);
    if !x.dtype().is_unsigned() || x.dtype() != y.dtype() {
        return Err(format!(
            "X and Y must be unsigned integers of one type, got {} and {}",
            x.dtype(),
            y.dtype()
        )
        .into());
    }
    let direction = n.string("direction").unwrap_or_default();
    // 2^y wraps to 0 from the type's width on.
    let pow2 = n.scalar(2.0, x.dtype())?.pow(y)?;
    let r = match direction.as_str() {
        "LEFT" => x.mul(pow2),
        "RIGHT" => x.div(pow2),
        d => return Err(format!("direction must be LEFT or RIGHT, got '{d}'").into()),
    };
    Ok(one(r?))
}

// ---- types ----

/// The saturation range of a quantized type kiln has.
fn quant_range(dtype: DType) -> Option<(f64, f64)> {
    match dtype {
        DType::U8 => Some((0.0, 255.0)),
        DType::I8 => Some((-128.0, 127.0)),
        DType::U16 => Some((0.0, 65535.0)),
        DType::I16 => Some((-32768.0, 32767.0)),
        _ => None,
    }
}

/// The quantized kiln dtype of ONNX element type `t` (an attribute), or
/// why there is none.
fn quant_dtype(n: &Node<'_, '_>, t: i64) -> R<DType> {
    let name = crate::tensor::onnx_type_name(t as i32);
    match crate::tensor::dtype_of(t as i32) {
        Ok(d) if quant_range(d).is_some() => Ok(d),
        _ => n.unsupported(format!(
            "quantization to {name} (kiln quantizes to uint8, int8, uint16 and int16)"
        )),
    }
}

/// A float dtype attribute (`precision`, `output_dtype`).
fn float_attr(n: &Node<'_, '_>, name: &str) -> R<Option<DType>> {
    match n.int(name, 0) {
        0 => Ok(None),
        t => {
            let d = crate::tensor::dtype_of(t as i32).map_err(|e| format!("{name}: {e}"))?;
            if !d.is_float() {
                return Err(format!("{name} must be a float type, got {d}").into());
            }
            Ok(Some(d))
        }
    }
}

/// The float type numpy computes `a op b` in (NEP 50 promotion): the
/// wider float; f16 with bf16 is f32; an integer counts as the narrowest
/// float that holds it (8 bits: f16, 16: f32, more: f64).
fn promote(a: DType, b: DType) -> DType {
    let float = |d: DType| match d {
        DType::I8 | DType::U8 => DType::F16,
        DType::I16 | DType::U16 => DType::F32,
        d if d.is_int() => DType::F64,
        d => d,
    };
    let rank = |d: DType| match d {
        DType::F64 => 3,
        DType::F32 => 2,
        _ => 1,
    };
    let (a, b) = (float(a), float(b));
    if a == b {
        a
    } else if rank(a) == 1 && rank(b) == 1 {
        DType::F32
    } else if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

// ---- scales and zero points ----

/// Scale or zero point `p` shaped to broadcast against `x`: one value as
/// a scalar; a 1-D tensor along `axis` (per axis); with `block > 0`, a
/// tensor of `x`'s rank whose dim `axis` has `ceil(d / block)` values,
/// each repeated `block` times (the last block cut to `d`).
fn spread<'g>(p: Tensor<'g>, x: Tensor<'g>, axis: i64, block: i64, what: &str) -> R<Tensor<'g>> {
    let ps = fixed_shape(p).map_err(|e| e.context(what))?;
    if ps.iter().product::<usize>() == 1 {
        return Ok(p.reshape(Shape::fixed(&[]))?);
    }
    let rank = x.rank();
    let ax = super::axis(axis, rank).map_err(|e| e.context(what))?;
    let xs = x.shape().0;
    let fits = |i: usize, len: usize| xs[i].fixed().is_none_or(|d| d == len);
    if block == 0 {
        if ps.len() != 1 || !fits(ax, ps[0]) {
            return Err(format!(
                "{what} {} must be one value or one per element of axis {ax} of {}",
                p.shape(),
                x.shape()
            )
            .into());
        }
        let mut dims = vec![Dim::Fixed(1); rank];
        dims[ax] = Dim::Fixed(ps[0]);
        return Ok(p.reshape(Shape(dims))?);
    }
    let block = usize::try_from(block).map_err(|_| format!("block_size {block} is negative"))?;
    let d = xs[ax].fixed().ok_or_else(|| {
        format!(
            "blocked quantization needs a fixed axis {ax}, got {}",
            x.shape()
        )
    })?;
    let bad = ps.len() != rank
        || ps[ax] != d.div_ceil(block)
        || (0..rank).any(|i| i != ax && !fits(i, ps[i]));
    if bad {
        return Err(format!(
            "{what} {} does not block {} by {block} along axis {ax}",
            p.shape(),
            x.shape()
        )
        .into());
    }
    let idx: Vec<i64> = (0..d).map(|i| (i / block) as i64).collect();
    let idx = Array::from_vec(vec![d], idx).ok_or("block index shape")?;
    let idx = x.builder().constant(idx)?;
    Ok(p.gather(idx, ax as i64)?)
}

/// One value as a scalar; a 1-D tensor of several as a column (`[len,
/// 1]`: per row of a matrix); anything else as it is.
fn per_row<'g>(p: Tensor<'g>, what: &str) -> R<Tensor<'g>> {
    let ps = fixed_shape(p).map_err(|e| e.context(what))?;
    match ps.as_slice() {
        s if s.iter().product::<usize>() == 1 => Ok(p.reshape(Shape::fixed(&[]))?),
        [len] => Ok(p.reshape(Shape::fixed(&[*len, 1]))?),
        _ => Ok(p),
    }
}

/// One value as a scalar; anything else as it is (a 1-D tensor lines up
/// with a matrix's columns).
fn per_column<'g>(p: Tensor<'g>, what: &str) -> R<Tensor<'g>> {
    let ps = fixed_shape(p).map_err(|e| e.context(what))?;
    if ps.iter().product::<usize>() == 1 {
        return Ok(p.reshape(Shape::fixed(&[]))?);
    }
    Ok(p)
}

/// One value as a scalar; a 1-D tensor of several along dim `dim` of a
/// rank-`rank` tensor (per channel).
fn per_channel<'g>(p: Tensor<'g>, rank: usize, dim: usize, what: &str) -> R<Tensor<'g>> {
    let ps = fixed_shape(p).map_err(|e| e.context(what))?;
    match ps.as_slice() {
        s if s.iter().product::<usize>() == 1 => Ok(p.reshape(Shape::fixed(&[]))?),
        [len] => {
            let mut dims = vec![1; rank];
            dims[dim] = *len;
            Ok(p.reshape(Shape::fixed(&dims))?)
        }
        _ => Err(format!("{what} {} must be one value or one per channel", p.shape()).into()),
    }
}

/// One value, as a scalar; else an error naming `what`.
fn single<'g>(p: Tensor<'g>, what: &str) -> R<Tensor<'g>> {
    let ps = fixed_shape(p).map_err(|e| e.context(what))?;
    if ps.iter().product::<usize>() != 1 {
        return Err(format!("{what} must be one value, got {}", p.shape()).into());
    }
    Ok(p.reshape(Shape::fixed(&[]))?)
}

/// Rounds `v` (float) half to even, saturates it to `to`'s range and
/// casts it there.
fn saturate<'g>(v: Tensor<'g>, to: DType) -> R<Tensor<'g>> {
    let range = quant_range(to).ok_or_else(|| format!("{to} is not a quantized type"))?;
    saturate_in(v, to, range)
}

/// [`saturate`] to `lo..=hi` (a sub-byte type's range, held in `to`).
fn saturate_in<'g>(v: Tensor<'g>, to: DType, (lo, hi): (f64, f64)) -> R<Tensor<'g>> {
    Ok(v.round()?.maximum(lo)?.minimum(hi)?.cast(to)?)
}

// ---- QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear ----

/// `QuantizeLinear`: `saturate(round(x / y_scale) + y_zero_point)`.
fn quantize_linear<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    let zp = n.opt(2);
    let axis = n.int("axis", 1);
    let block = n.int("block_size", 0);
    let mini = n
        .declared(2)
        .and_then(crate::tensor::minifloat)
        .or_else(|| crate::tensor::minifloat(n.int("output_dtype", 0) as i32));
    if let Some(f) = mini {
        // To an 8- or 4-bit float: `x / y_scale + y_zero_point` rounded to
        // its grid (no integer rounding first), saturating unless told not.
        if !scale.dtype().is_float() {
            return Err(format!("y_scale must be a float tensor, got {}", scale.dtype()).into());
        }
        let compute = promote(x.dtype(), scale.dtype());
        let s = spread(scale, x, axis, block, "y_scale")?.cast(compute)?;
        let mut v = x.cast(compute)?.div(s)?.cast(DType::F32)?;
        if let Some(z) = zp {
            let z = spread(z, x, axis, block, "y_zero_point")?;
            v = v.add(z.cast(DType::F32)?)?;
        }
        let saturate = n.int("saturate", 1) != 0;
        return super::minifloat::round_to(v, f, saturate).map(one);
    }
    let to = match (zp, n.int("output_dtype", 0)) {
        (Some(z), 0) => z.dtype(),
        (Some(z), t) => {
            let d = quant_dtype(n, t)?;
            if d != z.dtype() {
                return Err(format!(
                    "output_dtype {d} differs from the zero point's type {}",
                    z.dtype()
                )
                .into());
            }
            d
        }
        (None, 0) => DType::U8,
        (None, t) => quant_dtype(n, t)?,
    };
    if quant_range(to).is_none() {
        return n.unsupported(format!(
            "quantization to {to} (kiln quantizes to uint8, int8, uint16 and int16)"
        ));
    }
    if !scale.dtype().is_float() {
        return Err(format!("y_scale must be a float tensor, got {}", scale.dtype()).into());
    }
    let compute = match float_attr(n, "precision")? {
        Some(p) => p,
        None => promote(x.dtype(), scale.dtype()),
    };
    let s = spread(scale, x, axis, block, "y_scale")?.cast(compute)?;
    let q = x.cast(compute)?.div(s)?.round()?;
    // The zero point added in f64: exact, whatever the compute type.
    let mut v = q.cast(DType::F64)?;
    if let Some(z) = zp {
        let z = spread(z, x, axis, block, "y_zero_point")?;
        v = v.add(z.cast(DType::F64)?)?;
    }
    // INT4, UINT4, INT2 and UINT2 are held in i8 / u8 with their own range.
    let sub = n
        .sub_byte_input(2)
        .or_else(|| crate::tensor::sub_byte(n.int("output_dtype", 0) as i32));
    match sub {
        Some((bits, signed)) => {
            let (lo, hi) = if signed {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            } else {
                (0, (1i64 << bits) - 1)
            };
            saturate_in(v, to, (lo as f64, hi as f64)).map(one)
        }
        None => saturate(v, to).map(one),
    }
}

/// `DequantizeLinear`: `(x - x_zero_point) * x_scale`.
fn dequantize_linear<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    // 8- and 4-bit floats are held in f16.
    let mini = n.declared(0).and_then(crate::tensor::minifloat).is_some();
    if !x.dtype().is_int() && !mini {
        return n.unsupported(format!(
            "DequantizeLinear of {} (kiln dequantizes integer types)",
            x.dtype()
        ));
    }
    if !scale.dtype().is_float() {
        return Err(format!("x_scale must be a float tensor, got {}", scale.dtype()).into());
    }
    let axis = n.int("axis", 1);
    let block = n.int("block_size", 0);
    let mut dx = x.cast(DType::F32)?;
    if let Some(z) = n.opt(2) {
        if z.dtype() != x.dtype() {
            return Err(format!("x_zero_point is {} but x is {}", z.dtype(), x.dtype()).into());
        }
        let t = promote(DType::F32, z.dtype());
        let z = spread(z, x, axis, block, "x_zero_point")?.cast(t)?;
        dx = dx.cast(t)?.sub(z)?;
    }
    let t = promote(dx.dtype(), scale.dtype());
    let s = spread(scale, x, axis, block, "x_scale")?.cast(t)?;
    let y = dx.cast(t)?.mul(s)?;
    let out = float_attr(n, "output_dtype")?.unwrap_or(scale.dtype());
    Ok(one(y.cast(out)?))
}

/// `DynamicQuantizeLinear`: `y_scale = (max(x, 0) - min(x, 0)) / 255` (1
/// for an all-zero range), `y_zero_point = round(clip(-min / y_scale, 0,
/// 255))`, `y = saturate(round(x / y_scale) + y_zero_point)`, in f32.
fn dynamic_quantize_linear<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if !x.dtype().is_float() {
        return Err(format!("x must be a float tensor, got {}", x.dtype()).into());
    }
    let xf = x.cast(DType::F32)?;
    let axes: Vec<i64> = (0..x.rank() as i64).collect();
    let (hi, lo) = if axes.is_empty() {
        (xf, xf)
    } else {
        (xf.max(&axes, false)?, xf.min(&axes, false)?)
    };
    let (hi, lo) = (hi.maximum(0.0)?, lo.minimum(0.0)?);
    let unit = n.scalar(1.0, DType::F32)?;
    let range = n.g.select(hi.eq(lo)?, unit, hi.sub(lo)?)?;
    let scale = range.div(255.0)?;
    let zero = n.scalar(0.0, DType::F32)?;
    let zp = zero
        .sub(lo.div(scale)?)?
        .maximum(0.0)?
        .minimum(255.0)?
        .round()?;
    let y = saturate(xf.div(scale)?.round()?.add(zp)?, DType::U8)?;
    Ok(vec![y, scale.cast(x.dtype())?, zp.cast(DType::U8)?])
}

// ---- integer products ----

/// `x` (8-bit) widened to i32, less its zero point `zp` shaped by `shape`.
fn less_zero_point<'g>(
    x: Tensor<'g>,
    zp: Option<Tensor<'g>>,
    what: &str,
    shape: impl Fn(Tensor<'g>) -> R<Tensor<'g>>,
) -> R<Tensor<'g>> {
    if !matches!(x.dtype(), DType::U8 | DType::I8) {
        return Err(format!("{what} must be uint8 or int8, got {}", x.dtype()).into());
    }
    let xi = x.cast(DType::I32)?;
    let Some(z) = zp else { return Ok(xi) };
    if !matches!(z.dtype(), DType::U8 | DType::I8) {
        return Err(format!(
            "{what}'s zero point must be uint8 or int8, got {}",
            z.dtype()
        )
        .into());
    }
    Ok(xi.sub(shape(z)?.cast(DType::I32)?)?)
}

/// The i32 product `(A - a_zero_point) (B - b_zero_point)` of inputs
/// `a`, `b` and zero points `za`, `zb` (numpy matmul semantics).
fn integer_matmul<'g>(n: &Node<'_, 'g>, a: usize, za: usize, b: usize, zb: usize) -> R<Tensor<'g>> {
    let a = less_zero_point(n.input(a)?, n.opt(za), "A", |z| {
        per_row(z, "A's zero point")
    })?;
    let b = less_zero_point(n.input(b)?, n.opt(zb), "B", |z| {
        per_column(z, "B's zero point")
    })?;
    Ok(a.matmul(b)?)
}

/// `MatMulInteger`: `(A - a_zero_point) (B - b_zero_point)` in i32.
fn matmul_integer<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    integer_matmul(n, 0, 2, 1, 3).map(one)
}

/// The i32 convolution `(X - x_zero_point) * (W - w_zero_point)` of
/// inputs `x`, `w` and zero points `zx`, `zw`, with the node's window
/// attributes. kiln's conv takes floats only: it runs in f64, exact for
/// these 9-bit operands (every sum stays far below 2^53), cast to i32.
fn integer_conv<'g>(n: &Node<'_, 'g>, x: usize, zx: usize, w: usize, zw: usize) -> R<Tensor<'g>> {
    let (xt, wt) = (n.input(x)?, n.input(w)?);
    if xt.rank() < 3 {
        return Err(format!("X must be [N, C, spatial...], got {}", xt.shape()).into());
    }
    let xi = less_zero_point(xt, n.opt(zx), "X", |z| single(z, "X's zero point"))?;
    let rank = wt.rank();
    let wi = less_zero_point(wt, n.opt(zw), "W", |z| {
        per_channel(z, rank, 0, "W's zero point")
    })?;
    let xf = xi.cast(DType::F64)?;
    let wf = wi.cast(DType::F64)?;
    Ok(super::conv::conv_of(n, xf, wf)?.cast(DType::I32)?)
}

/// `ConvInteger`: `(X - x_zero_point) * (W - w_zero_point)` in i32.
fn conv_integer<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    integer_conv(n, 0, 2, 1, 3).map(one)
}

/// The requantization of i32 `acc`: `acc * (sa * sb / sy) + zy`
/// (the multiplier in the scales' common type, the rest in f64),
/// rounded half to even and saturated to `zy`'s type, else `fallback`.
fn requantize<'g>(
    acc: Tensor<'g>,
    (sa, sb, sy): (Tensor<'g>, Tensor<'g>, Tensor<'g>),
    zy: Option<Tensor<'g>>,
    fallback: DType,
) -> R<Tensor<'g>> {
    for s in [sa, sb, sy] {
        if !s.dtype().is_float() {
            return Err(format!("scales must be float tensors, got {}", s.dtype()).into());
        }
    }
    let t = promote(promote(sa.dtype(), sb.dtype()), sy.dtype());
    let m = sa.cast(t)?.mul(sb.cast(t)?)?.div(sy.cast(t)?)?;
    let mut v = acc.cast(DType::F64)?.mul(m.cast(DType::F64)?)?;
    let to = match zy {
        Some(z) => {
            v = v.add(z.cast(DType::F64)?)?;
            z.dtype()
        }
        None => fallback,
    };
    if quant_range(to).is_none() {
        return Err(
            format!("the output type must be uint8, int8, uint16 or int16, got {to}").into(),
        );
    }
    saturate(v, to)
}

/// `QLinearMatMul`: inputs `a, a_scale, a_zero_point, b, b_scale,
/// b_zero_point, y_scale, y_zero_point`; `a`'s scale and zero point per
/// tensor or per row, `b`'s per tensor or per column.
fn qlinear_matmul<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let acc = integer_matmul(n, 0, 2, 3, 5)?;
    let sa = per_row(n.input(1)?, "a_scale")?;
    let sb = per_column(n.input(4)?, "b_scale")?;
    let sy = per_column(n.input(6)?, "y_scale")?;
    let zy = n
        .opt(7)
        .map(|z| per_column(z, "y_zero_point"))
        .transpose()?;
    requantize(acc, (sa, sb, sy), zy, n.input(0)?.dtype()).map(one)
}

/// `QLinearConv`: inputs `x, x_scale, x_zero_point, w, w_scale,
/// w_zero_point, y_scale, y_zero_point` and an optional i32 bias `B`;
/// `w`'s scale and zero point per tensor or per output channel.
fn qlinear_conv<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let mut acc = integer_conv(n, 0, 2, 3, 5)?;
    let rank = acc.rank();
    if let Some(b) = n.opt(8) {
        if b.dtype() != DType::I32 {
            return Err(format!("the bias B must be int32, got {}", b.dtype()).into());
        }
        acc = acc.add(per_channel(b, rank, 1, "B")?)?;
    }
    let sx = single(n.input(1)?, "x_scale")?;
    let sw = per_channel(n.input(4)?, rank, 1, "w_scale")?;
    let sy = single(n.input(6)?, "y_scale")?;
    let zy = n.opt(7).map(|z| single(z, "y_zero_point")).transpose()?;
    requantize(acc, (sx, sw, sy), zy, n.input(0)?.dtype()).map(one)
}

#[cfg(test)]
mod tests {
    use kiln_graph::{Array, DType};

    use crate::proto::AttributeProto;

    fn int_attr(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i,
            r#type: 2,
            ..Default::default()
        }
    }

    fn str_attr(name: &str, s: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            s: s.as_bytes().to_vec(),
            r#type: 3,
            ..Default::default()
        }
    }

    /// Converts one node (opset `opset`) with constant inputs and
    /// evaluates its outputs on the interpreter; or the converter's error.
    fn run(
        op: &str,
        opset: i64,
        attrs: Vec<AttributeProto>,
        inputs: Vec<Option<Array>>,
    ) -> Result<Vec<Array>, String> {
        super::super::test_support::run_node(op, opset, attrs, inputs)
    }

    fn arr<T: kiln_graph::array::Elem>(shape: &[usize], v: Vec<T>) -> Option<Array> {
        Some(Array::from_vec(shape.to_vec(), v).unwrap())
    }

    /// Shifts by the type's width and more give 0 both ways.
    #[test]
    fn bit_shift_past_the_width() {
        let x = arr(&[5], vec![1u8, 3, 255, 129, 7]);
        let n = arr(&[5], vec![0u8, 1, 7, 8, 200]);
        let left = run(
            "BitShift",
            11,
            vec![str_attr("direction", "LEFT")],
            vec![x.clone(), n.clone()],
        );
        let left = left.unwrap().remove(0);
        assert_eq!(left.as_slice::<u8>().unwrap(), [1, 6, 128, 0, 0]);
        let right = run(
            "BitShift",
            11,
            vec![str_attr("direction", "RIGHT")],
            vec![x, n],
        );
        assert_eq!(right.unwrap()[0].as_slice::<u8>().unwrap(), [1, 1, 1, 0, 0]);
        let x = arr(&[3], vec![u64::MAX, 5, 1]);
        let n = arr(&[3], vec![63u64, 64, 1 << 40]);
        let left = run(
            "BitShift",
            11,
            vec![str_attr("direction", "LEFT")],
            vec![x.clone(), n.clone()],
        );
        assert_eq!(left.unwrap()[0].as_slice::<u64>().unwrap(), [1 << 63, 0, 0]);
        let right = run(
            "BitShift",
            11,
            vec![str_attr("direction", "RIGHT")],
            vec![x, n],
        );
        assert_eq!(right.unwrap()[0].as_slice::<u64>().unwrap(), [1, 0, 0]);
        let signed = run(
            "BitShift",
            11,
            vec![str_attr("direction", "LEFT")],
            vec![arr(&[1], vec![1i32]), arr(&[1], vec![1i32])],
        );
        assert!(signed.unwrap_err().contains("unsigned"));
    }

    /// Round half to even, the zero point, then saturation.
    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let x = arr(
            &[8],
            vec![0.5f32, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, 3.6],
        );
        let y = run(
            "QuantizeLinear",
            21,
            vec![],
            vec![x.clone(), arr(&[], vec![1.0f32]), arr(&[], vec![3i8])],
        )
        .unwrap();
        assert_eq!(
            y[0].as_slice::<i8>().unwrap(),
            [3, 5, 5, 3, 1, 127, -128, 7]
        );
        // No zero point: uint8.
        let y = run(
            "QuantizeLinear",
            13,
            vec![],
            vec![x, arr(&[], vec![0.5f32])],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), [1, 3, 5, 0, 0, 255, 0, 7]);
    }

    /// Blocked scales repeat along the axis; the last block is cut.
    #[test]
    fn blocked_scales_with_a_partial_last_block() {
        let x = arr(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let s = arr(&[2, 2], vec![1.0f32, 0.5, 0.25, 2.0]);
        let y = run(
            "QuantizeLinear",
            21,
            vec![
                int_attr("axis", 1),
                int_attr("block_size", 2),
                int_attr("output_dtype", 5),
            ],
            vec![x, s.clone()],
        )
        .unwrap();
        assert_eq!(y[0].dtype(), DType::I16);
        assert_eq!(y[0].to_f64_vec(), [1.0, 2.0, 6.0, 16.0, 20.0, 3.0]);
        let q = arr(&[2, 3], vec![1u8, 2, 3, 4, 5, 6]);
        let z = arr(&[2, 2], vec![1u8, 0, 0, 2]);
        let y = run(
            "DequantizeLinear",
            21,
            vec![int_attr("axis", 1), int_attr("block_size", 2)],
            vec![q, s, z],
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec(), [0.0, 1.0, 1.5, 1.0, 1.25, 8.0]);
        let bad = run(
            "DequantizeLinear",
            21,
            vec![int_attr("axis", 1), int_attr("block_size", 1)],
            vec![arr(&[2, 3], vec![0u8; 6]), arr(&[2, 2], vec![1.0f32; 4])],
        );
        assert!(bad.unwrap_err().contains("does not block"));
    }

    /// 8-bit float targets round to their grid (held in f16) and saturate
    /// unless told not to; float8e8m0 is refused by name.
    #[test]
    fn float8_targets_round_and_saturate() {
        let x = arr(&[4], vec![1.0f32, 0.47892547, 1e5, -1e-7]);
        let y = run(
            "QuantizeLinear",
            21,
            vec![int_attr("output_dtype", 17)],
            vec![x.clone(), arr(&[], vec![1.0f32])],
        )
        .unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        assert_eq!(y[0].to_f64_vec(), [1.0, 0.46875, 448.0, 0.0]);
        let y = run(
            "QuantizeLinear",
            21,
            vec![int_attr("output_dtype", 19), int_attr("saturate", 0)],
            vec![x, arr(&[], vec![1.0f32])],
        )
        .unwrap();
        assert_eq!(y[0].to_f64_vec()[..3], [1.0, 0.5, f64::INFINITY]);
        let e = run(
            "QuantizeLinear",
            21,
            vec![int_attr("output_dtype", 24)],
            vec![arr(&[1], vec![1.0f32]), arr(&[], vec![1.0f32])],
        )
        .unwrap_err();
        assert!(e.contains("float8e8m0"), "{e}");
    }

    /// `A`'s zero points are per row, `B`'s per column.
    #[test]
    fn matmul_integer_zero_points_per_row_and_column() {
        let a = arr(&[3, 2], vec![1u8, 2, 3, 4, 5, 6]);
        let b = arr(&[2, 2], vec![1u8, 0, 0, 1]);
        let za = arr(&[3], vec![1u8, 2, 3]);
        let zb = arr(&[2], vec![0u8, 1]);
        let y = run("MatMulInteger", 10, vec![], vec![a, b, za, zb]).unwrap();
        assert_eq!(y[0].dtype(), DType::I32);
        // (A - za) = [[0, 1], [1, 2], [2, 3]], (B - zb) = [[1, -1], [0, 0]].
        assert_eq!(y[0].to_f64_vec(), [0.0, 0.0, 1.0, -1.0, 2.0, -2.0]);
    }

    /// The scale and zero point come from the range widened to 0.
    #[test]
    fn dynamic_quantize() {
        let y = run(
            "DynamicQuantizeLinear",
            11,
            vec![],
            vec![arr(&[4], vec![-1.0f32, 0.0, 1.0, 2.0])],
        )
        .unwrap();
        let scale = 3.0f32 / 255.0;
        assert_eq!(y[1].as_slice::<f32>().unwrap(), [scale]);
        assert_eq!(y[2].as_slice::<u8>().unwrap(), [85]);
        assert_eq!(y[0].as_slice::<u8>().unwrap(), [0, 85, 170, 255]);
    }
}

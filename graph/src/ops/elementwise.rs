//! Elementwise ops: unary functions, binary functions with numpy
//! broadcasting, select and cast.

use super::{bstrides, walk};
use crate::array::{Array, Data, Elem, Scalar};
use crate::dtype::DType;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::{broadcast_shapes, TensorType};
use kiln_rt::scalar::Domain;

/// The name of a unary op.
pub fn unary_name(f: UnaryOp) -> &'static str {
    f.name()
}

/// The name of a binary op.
pub fn binary_name(f: BinaryOp) -> &'static str {
    use BinaryOp::*;
    match f {
        Add => "add",
        Sub => "sub",
        Mul => "mul",
        Div => "div",
        Pow => "pow",
        Rem => "rem",
        Max => "maximum",
        Min => "minimum",
        Eq => "equal",
        Ne => "not_equal",
        Lt => "less",
        Le => "less_equal",
        Gt => "greater",
        Ge => "greater_equal",
        And => "and",
        Or => "or",
        Xor => "xor",
    }
}

/// Shape rule of unary ops: same type; float-only functions reject integers.
pub fn infer_unary(f: UnaryOp, x: &TensorType) -> Result<TensorType, String> {
    let (ok, want) = match f.domain() {
        Domain::Logical => (
            x.dtype == DType::Bool || x.dtype.is_int(),
            "bool or an integer dtype",
        ),
        Domain::Numeric => (x.dtype.is_numeric(), "a numeric dtype"),
        Domain::Float => (x.dtype.is_float(), "f32 or f64"),
    };
    if !ok {
        return Err(format!("{} needs {want}, got {}", unary_name(f), x.dtype));
    }
    Ok(x.clone())
}

/// Shape rule of binary ops: equal dtypes, broadcast shapes.
pub fn infer_binary(f: BinaryOp, a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if a.dtype != b.dtype {
        return Err(format!(
            "dtypes differ: {} vs {} (cast one operand first)",
            a.dtype, b.dtype
        ));
    }
    if f.is_logical() && a.dtype != DType::Bool && !a.dtype.is_int() {
        return Err(format!(
            "{} needs bool or integer operands, got {}",
            binary_name(f),
            a.dtype
        ));
    }
    if !f.is_logical() && !f.is_comparison() && !a.dtype.is_numeric() {
        return Err(format!(
            "{} needs numeric operands, got {}",
            binary_name(f),
            a.dtype
        ));
    }
    let shape = broadcast_shapes(&[&a.shape, &b.shape])?;
    let dtype = if f.is_comparison() {
        DType::Bool
    } else {
        a.dtype
    };
    Ok(TensorType { dtype, shape })
}

/// Shape rule of select: bool condition, equal value dtypes, all broadcast.
pub fn infer_select(c: &TensorType, a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if c.dtype != DType::Bool {
        return Err(format!("condition must be bool, got {}", c.dtype));
    }
    if a.dtype != b.dtype {
        return Err(format!("branch dtypes differ: {} vs {}", a.dtype, b.dtype));
    }
    let shape = broadcast_shapes(&[&c.shape, &a.shape, &b.shape])?;
    Ok(TensorType {
        dtype: a.dtype,
        shape,
    })
}

/// Float functions shared by f32 and f64, each computed in its own precision.
pub(crate) trait Real: Elem + std::ops::Neg<Output = Self> {
    fn apply(f: UnaryOp, x: Self) -> Self;
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self;
}

/// The float functions of one precision: unary ones are `kiln_rt::scalar`'s
/// (std and the `libm` crate, so that the reference, JIT and ahead-of-time
/// code compute the same bits on every host: compiled code calls the same
/// functions through `kiln_rt::extern_fns`), the remainder libm's fmod.
macro_rules! impl_real {
    ($t:ty, $unary:path, $fmod:path) => {
        impl Real for $t {
            fn apply(f: UnaryOp, x: $t) -> $t {
                $unary(f, x)
            }
            fn binary(f: BinaryOp, a: $t, b: $t) -> $t {
                use BinaryOp::*;
                match f {
                    Add => a + b,
                    Sub => a - b,
                    Mul => a * b,
                    Div => a / b,
                    Pow => a.powf(b),
                    Rem => $fmod(a, b),
                    Max => {
                        if a.is_nan() || b.is_nan() {
                            <$t>::NAN
                        } else {
                            a.max(b)
                        }
                    }
                    Min => {
                        if a.is_nan() || b.is_nan() {
                            <$t>::NAN
                        } else {
                            a.min(b)
                        }
                    }
                    _ => unreachable!("comparisons and logic are handled apart"),
                }
            }
        }
    };
}

impl_real!(f32, kiln_rt::scalar::unary_f32, libm::fmodf);
impl_real!(f64, kiln_rt::scalar::unary_f64, libm::fmod);

/// Integer functions, wrapping at the type's width (signed or unsigned).
pub(crate) trait Int: Elem + Ord + Default {
    fn unary(f: UnaryOp, x: Self) -> Self;
    fn binary(f: BinaryOp, a: Self, b: Self) -> Self;
}

macro_rules! impl_int {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[allow(unused_comparisons)]
            fn unary(f: UnaryOp, a: $t) -> $t {
                match f {
                    UnaryOp::Neg => a.wrapping_neg(),
                    UnaryOp::Abs => {
                        if a < 0 {
                            a.wrapping_neg()
                        } else {
                            a
                        }
                    }
                    UnaryOp::Not => !a,
                    UnaryOp::Sign => {
                        if a > 0 {
                            1
                        } else if a == 0 {
                            0
                        } else {
                            (0 as $t).wrapping_sub(1)
                        }
                    }
                    UnaryOp::Exp
                    | UnaryOp::Log
                    | UnaryOp::Sqrt
                    | UnaryOp::Rsqrt
                    | UnaryOp::Recip
                    | UnaryOp::Sin
                    | UnaryOp::Cos
                    | UnaryOp::Tan
                    | UnaryOp::Asin
                    | UnaryOp::Acos
                    | UnaryOp::Atan
                    | UnaryOp::Sinh
                    | UnaryOp::Cosh
                    | UnaryOp::Asinh
                    | UnaryOp::Acosh
                    | UnaryOp::Atanh
                    | UnaryOp::Tanh
                    | UnaryOp::Sigmoid
                    | UnaryOp::Erf
                    | UnaryOp::Floor
                    | UnaryOp::Ceil
                    | UnaryOp::Round => {
                        unreachable!("{f:?} takes floats only (checked by infer_unary)")
                    }
                }
            }
            fn binary(f: BinaryOp, a: $t, b: $t) -> $t {
                use BinaryOp::*;
                match f {
                    Add => a.wrapping_add(b),
                    Sub => a.wrapping_sub(b),
                    Mul => a.wrapping_mul(b),
                    Div => {
                        if b == 0 {
                            0
                        } else {
                            a.wrapping_div(b)
                        }
                    }
                    Pow => kiln_rt::extern_fns::IntPow::pow_wrapping(a, b),
                    // a - trunc(a / b) * b with x / 0 = 0: x rem 0 = x.
                    Rem => {
                        if b == 0 {
                            a
                        } else {
                            a.wrapping_rem(b)
                        }
                    }
                    Max => a.max(b),
                    Min => a.min(b),
                    And => a & b,
                    Or => a | b,
                    Xor => a ^ b,
                    _ => unreachable!("comparisons are handled apart"),
                }
            }
        }
    )*};
}

impl_int!(i8, i16, i32, i64);
impl_int!(u8, u16, u32, u64);

/// Runs `$body` with `$x` bound to the value of an integer [`Scalar`] and
/// `$t` to its Rust type; `$other` for non-integer scalars.
macro_rules! with_int {
    ($s:expr, |$x:ident: $tt:ident| $body:expr, $other:expr) => {
        match $s {
            Scalar::I8($x) => {
                type $tt = i8;
                Scalar::I8($body)
            }
            Scalar::I16($x) => {
                type $tt = i16;
                Scalar::I16($body)
            }
            Scalar::I32($x) => {
                type $tt = i32;
                Scalar::I32($body)
            }
            Scalar::I64($x) => {
                type $tt = i64;
                Scalar::I64($body)
            }
            Scalar::U8($x) => {
                type $tt = u8;
                Scalar::U8($body)
            }
            Scalar::U16($x) => {
                type $tt = u16;
                Scalar::U16($body)
            }
            Scalar::U32($x) => {
                type $tt = u32;
                Scalar::U32($body)
            }
            Scalar::U64($x) => {
                type $tt = u64;
                Scalar::U64($body)
            }
            _ => $other,
        }
    };
}

/// The scalar meaning of a unary op: the single definition that the array
/// evaluation here and every kernel-level executor use.
pub fn unary_scalar(f: UnaryOp, x: Scalar) -> Scalar {
    match x {
        Scalar::F32(a) => Scalar::F32(f32::apply(f, a)),
        Scalar::F64(a) => Scalar::F64(f64::apply(f, a)),
        Scalar::Bool(a) => Scalar::Bool(!a),
        // Half types compute in f32, then round.
        Scalar::F16(a) => Scalar::F16(half::f16::from_f32(f32::apply(f, a.to_f32()))),
        Scalar::BF16(a) => Scalar::BF16(half::bf16::from_f32(f32::apply(f, a.to_f32()))),
        x => with_int!(
            x,
            |a: T| T::unary(f, a),
            unreachable!("every dtype is matched")
        ),
    }
}

/// The scalar meaning of a binary op (operands of equal dtype, as the shape
/// rule guarantees).
pub fn binary_scalar(f: BinaryOp, a: Scalar, b: Scalar) -> Scalar {
    match (a, b) {
        (Scalar::F32(x), Scalar::F32(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::F64(x), Scalar::F64(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::I32(x), Scalar::I32(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::I64(x), Scalar::I64(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::I8(x), Scalar::I8(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::I16(x), Scalar::I16(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::U8(x), Scalar::U8(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::U16(x), Scalar::U16(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::U32(x), Scalar::U32(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::U64(x), Scalar::U64(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::Bool(x), Scalar::Bool(y)) if f.is_comparison() => Scalar::Bool(compare(f, x, y)),
        (Scalar::F16(x), Scalar::F16(y)) if f.is_comparison() => {
            Scalar::Bool(compare(f, x.to_f32(), y.to_f32()))
        }
        (Scalar::BF16(x), Scalar::BF16(y)) if f.is_comparison() => {
            Scalar::Bool(compare(f, x.to_f32(), y.to_f32()))
        }
        // Half types compute in f32, then round.
        (Scalar::F16(x), Scalar::F16(y)) => {
            Scalar::F16(half::f16::from_f32(f32::binary(f, x.to_f32(), y.to_f32())))
        }
        (Scalar::BF16(x), Scalar::BF16(y)) => {
            Scalar::BF16(half::bf16::from_f32(f32::binary(f, x.to_f32(), y.to_f32())))
        }
        (Scalar::F32(x), Scalar::F32(y)) => Scalar::F32(f32::binary(f, x, y)),
        (Scalar::F64(x), Scalar::F64(y)) => Scalar::F64(f64::binary(f, x, y)),
        (Scalar::I32(x), Scalar::I32(y)) => Scalar::I32(Int::binary(f, x, y)),
        (Scalar::I64(x), Scalar::I64(y)) => Scalar::I64(Int::binary(f, x, y)),
        (Scalar::I8(x), Scalar::I8(y)) => Scalar::I8(Int::binary(f, x, y)),
        (Scalar::I16(x), Scalar::I16(y)) => Scalar::I16(Int::binary(f, x, y)),
        (Scalar::U8(x), Scalar::U8(y)) => Scalar::U8(Int::binary(f, x, y)),
        (Scalar::U16(x), Scalar::U16(y)) => Scalar::U16(Int::binary(f, x, y)),
        (Scalar::U32(x), Scalar::U32(y)) => Scalar::U32(Int::binary(f, x, y)),
        (Scalar::U64(x), Scalar::U64(y)) => Scalar::U64(Int::binary(f, x, y)),
        (Scalar::Bool(x), Scalar::Bool(y)) => Scalar::Bool(match f {
            BinaryOp::And => x & y,
            BinaryOp::Or => x | y,
            _ => x ^ y,
        }),
        (x, y) => panic!(
            "binary_scalar: dtypes differ ({} vs {}); the shape rule forbids this",
            x.dtype(),
            y.dtype()
        ),
    }
}

/// The scalar meaning of cast, with Rust `as` semantics: float to int
/// truncates toward zero and saturates, NaN gives 0; int narrowing wraps; to
/// bool is `!= 0`; bool is 0 or 1.
pub fn cast_scalar(x: Scalar, to: DType) -> Scalar {
    macro_rules! conv {
        ($v:expr) => {
            match to {
                DType::F32 => Scalar::F32($v as f32),
                DType::F64 => Scalar::F64($v as f64),
                DType::I32 => Scalar::I32($v as i32),
                DType::I64 => Scalar::I64($v as i64),
                DType::I8 => Scalar::I8($v as i8),
                DType::I16 => Scalar::I16($v as i16),
                DType::U8 => Scalar::U8($v as u8),
                DType::U16 => Scalar::U16($v as u16),
                DType::U32 => Scalar::U32($v as u32),
                DType::U64 => Scalar::U64($v as u64),
                DType::Bool => Scalar::Bool(($v as f64) != 0.0),
                // One rounding, from the exact value.
                DType::F16 => Scalar::F16(half::f16::from_f64($v as f64)),
                DType::BF16 => Scalar::BF16(half::bf16::from_f64($v as f64)),
            }
        };
    }
    match x {
        Scalar::F32(v) => conv!(v),
        Scalar::F64(v) => conv!(v),
        Scalar::I32(v) => conv!(v),
        Scalar::I64(v) => conv!(v),
        Scalar::I8(v) => conv!(v),
        Scalar::I16(v) => conv!(v),
        Scalar::U8(v) => conv!(v),
        Scalar::U16(v) => conv!(v),
        Scalar::U32(v) => conv!(v),
        Scalar::U64(v) => conv!(v),
        Scalar::Bool(v) => conv!(v as u8),
        // Exactly representable in f32, so as an f32.
        Scalar::F16(v) => conv!(v.to_f32()),
        Scalar::BF16(v) => conv!(v.to_f32()),
    }
}

/// Reference meaning of unary ops.
pub fn eval_unary(f: UnaryOp, x: &Array) -> Result<Array, String> {
    let v: Vec<Scalar> = (0..x.len()).map(|i| unary_scalar(f, x.get(i))).collect();
    Ok(Array::from_scalars(x.shape().to_vec(), x.dtype(), &v).expect("same element count"))
}

/// Combines two broadcast operands elementwise into a vector of shape `out`.
pub(crate) fn zip2<A: Copy, B: Copy, O>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    out: &[usize],
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    if ash == out && bsh == out {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let (sa, sb) = (bstrides(ash, out), bstrides(bsh, out));
    let mut v = Vec::with_capacity(out.iter().product());
    walk(out, [(0, &sa), (0, &sb)], |[i, j]| v.push(f(a[i], b[j])));
    v
}

fn compare<T: PartialOrd>(f: BinaryOp, a: T, b: T) -> bool {
    use BinaryOp::*;
    match f {
        Eq => a == b,
        Ne => a != b,
        Lt => a < b,
        Le => a <= b,
        Gt => a > b,
        Ge => a >= b,
        _ => unreachable!("not a comparison"),
    }
}

/// Reference meaning of binary ops, broadcasting both operands to `out`.
pub fn eval_binary(f: BinaryOp, a: &Array, b: &Array, out: &[usize]) -> Result<Array, String> {
    if a.dtype() != b.dtype() {
        return Err(format!("dtypes differ: {} vs {}", a.dtype(), b.dtype()));
    }
    let idx_a: Vec<usize> = (0..a.len()).collect();
    let idx_b: Vec<usize> = (0..b.len()).collect();
    let v = zip2(&idx_a, a.shape(), &idx_b, b.shape(), out, |i, j| {
        binary_scalar(f, a.get(i), b.get(j))
    });
    let dtype = if f.is_comparison() {
        DType::Bool
    } else {
        a.dtype()
    };
    Ok(Array::from_scalars(out.to_vec(), dtype, &v).expect("broadcast shape matches"))
}

/// Reference meaning of select: `c ? a : b`, all broadcast to `out`.
pub fn eval_select(c: &Array, a: &Array, b: &Array, out: &[usize]) -> Result<Array, String> {
    let cond = c.as_slice::<bool>().ok_or("condition must be bool")?;
    let (sc, sa, sb) = (
        bstrides(c.shape(), out),
        bstrides(a.shape(), out),
        bstrides(b.shape(), out),
    );
    macro_rules! sel {
        ($x:expr, $y:expr) => {{
            let mut v = Vec::with_capacity(out.iter().product());
            walk(out, [(0, &sc), (0, &sa), (0, &sb)], |[i, j, k]| {
                v.push(if cond[i] { $x[j] } else { $y[k] })
            });
            v
        }};
    }
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => Data::F32(sel!(x, y)),
        (Data::F64(x), Data::F64(y)) => Data::F64(sel!(x, y)),
        (Data::I32(x), Data::I32(y)) => Data::I32(sel!(x, y)),
        (Data::I64(x), Data::I64(y)) => Data::I64(sel!(x, y)),
        (Data::I8(x), Data::I8(y)) => Data::I8(sel!(x, y)),
        (Data::I16(x), Data::I16(y)) => Data::I16(sel!(x, y)),
        (Data::U8(x), Data::U8(y)) => Data::U8(sel!(x, y)),
        (Data::U16(x), Data::U16(y)) => Data::U16(sel!(x, y)),
        (Data::U32(x), Data::U32(y)) => Data::U32(sel!(x, y)),
        (Data::U64(x), Data::U64(y)) => Data::U64(sel!(x, y)),
        (Data::F16(x), Data::F16(y)) => Data::F16(sel!(x, y)),
        (Data::BF16(x), Data::BF16(y)) => Data::BF16(sel!(x, y)),
        (Data::Bool(x), Data::Bool(y)) => Data::Bool(sel!(x, y)),
        _ => {
            return Err(format!(
                "branch dtypes differ: {} vs {}",
                a.dtype(),
                b.dtype()
            ))
        }
    };
    Ok(Array::new(out.to_vec(), data).expect("broadcast shape matches"))
}

/// Reference meaning of cast (see [`cast_scalar`]).
pub fn eval_cast(x: &Array, to: DType) -> Array {
    let v: Vec<Scalar> = (0..x.len()).map(|i| cast_scalar(x.get(i), to)).collect();
    Array::from_scalars(x.shape().to_vec(), to, &v).expect("same element count")
}

// ---- gradients ----

use crate::autodiff::{unbroadcast, zeros_like};
use crate::builder::Tensor;

/// Gradient rule of unary ops: `g * f'(x)`, written with `y = f(x)` where cheaper.
#[track_caller]
pub(crate) fn grad_unary<'g>(
    f: UnaryOp,
    x: Tensor<'g>,
    y: Tensor<'g>,
    g: Tensor<'g>,
) -> crate::error::Result<Option<Tensor<'g>>> {
    use UnaryOp::*;
    if !x.dtype().is_float() {
        return Ok(None);
    }
    Ok(Some(match f {
        Neg => g.neg()?,
        Abs => g.mul(x.sign()?)?,
        Sign | Floor | Ceil | Round | Not => return Ok(None),
        Exp => g.mul(y)?,
        Log => g.div(x)?,
        Sqrt => g.mul(0.5)?.div(y)?,
        // d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3
        Rsqrt => g.mul(y.mul(y)?.mul(y)?.mul(-0.5)?)?,
        Recip => g.mul(y.mul(y)?)?.neg()?,
        Sin => g.mul(x.cos()?)?,
        Cos => g.mul(x.sin()?)?.neg()?,
        // 1 / cos^2 x
        Tan => g.div(x.cos()?.mul(x.cos()?)?)?,
        // ±1 / sqrt(1 - x^2)
        Asin => g.mul(x.mul(x)?.neg()?.add(1.0)?.rsqrt()?)?,
        Acos => g.mul(x.mul(x)?.neg()?.add(1.0)?.rsqrt()?)?.neg()?,
        // 1 / (1 + x^2)
        Atan => g.div(x.mul(x)?.add(1.0)?)?,
        Sinh => g.mul(x.cosh()?)?,
        Cosh => g.mul(x.sinh()?)?,
        // 1 / sqrt(x^2 + 1); 1 / sqrt(x^2 - 1) (x > 1)
        Asinh => g.mul(x.mul(x)?.add(1.0)?.rsqrt()?)?,
        Acosh => g.mul(x.mul(x)?.sub(1.0)?.rsqrt()?)?,
        // 1 / (1 - x^2)
        Atanh => g.div(x.mul(x)?.neg()?.add(1.0)?)?,
        Tanh => g.mul(y.mul(y)?.neg()?.add(1.0)?)?,
        Sigmoid => g.mul(y.mul(y.neg()?.add(1.0)?)?)?,
        Erf => g.mul(
            x.mul(x)?
                .neg()?
                .exp()?
                .mul(std::f64::consts::FRAC_2_SQRT_PI)?,
        )?,
    }))
}

/// Gradient rule of binary ops (each input's gradient summed over the dims
/// broadcasting added). Max and min send the gradient to the larger
/// (smaller) operand, to the first one on ties.
#[track_caller]
pub(crate) fn grad_binary<'g>(
    f: BinaryOp,
    a: Tensor<'g>,
    b: Tensor<'g>,
    y: Tensor<'g>,
    g: Tensor<'g>,
) -> crate::error::Result<Vec<Option<Tensor<'g>>>> {
    use BinaryOp::*;
    if f.is_comparison() || f.is_logical() || !a.dtype().is_float() {
        return Ok(vec![None, None]);
    }
    let (ga, gb) = match f {
        Add => (g, g),
        Sub => (g, g.neg()?),
        Mul => (g.mul(b)?, g.mul(a)?),
        Div => (g.div(b)?, g.mul(a)?.div(b.mul(b)?)?.neg()?),
        // a - trunc(a / b) * b: d/da = 1, d/db = -trunc(a / b) (the
        // quotient is piecewise constant), with trunc as floor of |q|
        // carrying q's sign.
        Rem => {
            let q = a.div(b)?;
            let t = q.abs()?.floor()?.mul(q.sign()?)?;
            (g, g.mul(t)?.neg()?)
        }
        Pow => {
            // d/da a^b = b a^(b-1); d/db a^b = a^b ln a (zero where a == 0).
            let da = g.mul(b)?.mul(a.pow(b.sub(1.0)?)?)?;
            let safe = a.builder().select(a.gt(0.0)?, a, a.mul(0.0)?.add(1.0)?)?;
            let db = g.mul(y)?.mul(safe.log()?)?;
            (da, db)
        }
        Max | Min => {
            let first = if f == Max { a.ge(b)? } else { a.le(b)? };
            let zero = zeros_like(g)?;
            let bld = a.builder();
            (bld.select(first, g, zero)?, bld.select(first, zero, g)?)
        }
        _ => unreachable!("comparisons and logic return above"),
    };
    Ok(vec![
        Some(unbroadcast(ga, &a.shape())?),
        Some(unbroadcast(gb, &b.shape())?),
    ])
}

/// Gradient rule of select: the gradient flows to the chosen branch.
#[track_caller]
pub(crate) fn grad_select<'g>(
    c: Tensor<'g>,
    a: Tensor<'g>,
    b: Tensor<'g>,
    g: Tensor<'g>,
) -> crate::error::Result<Vec<Option<Tensor<'g>>>> {
    if !a.dtype().is_float() {
        return Ok(vec![None, None, None]);
    }
    let zero = zeros_like(g)?;
    let bld = a.builder();
    let ga = unbroadcast(bld.select(c, g, zero)?, &a.shape())?;
    let gb = unbroadcast(bld.select(c, zero, g)?, &b.shape())?;
    Ok(vec![None, Some(ga), Some(gb)])
}

/// Gradient rule of cast: between float types the gradient casts back.
#[track_caller]
pub(crate) fn grad_cast<'g>(
    x: Tensor<'g>,
    g: Tensor<'g>,
) -> crate::error::Result<Option<Tensor<'g>>> {
    if x.dtype().is_float() && g.dtype().is_float() {
        Ok(Some(g.cast(x.dtype())?))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::op::{Op, UnaryOp};

    /// A graph file names a unary function as the rest of kiln does, and
    /// reads it back.
    #[test]
    fn unary_functions_serialize_by_name() {
        for &f in UnaryOp::ALL {
            let j = serde_json::to_value(Op::Unary { f }).expect("serializes");
            assert_eq!(j["f"], f.name(), "{f:?}");
            let back: Op = serde_json::from_value(j).expect("deserializes");
            assert_eq!(back, Op::Unary { f });
        }
    }
}

//! Elementwise ops: unary functions, binary functions with numpy
//! broadcasting, select and cast.

use super::{bstrides, walk};
use crate::array::{Array, Data, Elem};
use crate::dtype::DType;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::{broadcast_shapes, TensorType};

/// The name of a unary op.
pub fn unary_name(f: UnaryOp) -> &'static str {
    use UnaryOp::*;
    match f {
        Neg => "neg",
        Abs => "abs",
        Sign => "sign",
        Exp => "exp",
        Log => "log",
        Sqrt => "sqrt",
        Rsqrt => "rsqrt",
        Recip => "recip",
        Sin => "sin",
        Cos => "cos",
        Tanh => "tanh",
        Sigmoid => "sigmoid",
        Erf => "erf",
        Floor => "floor",
        Ceil => "ceil",
        Round => "round",
        Not => "not",
    }
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
    use UnaryOp::*;
    let ok = match f {
        Not => x.dtype == DType::Bool,
        Neg | Abs | Sign => x.dtype.is_numeric(),
        _ => x.dtype.is_float(),
    };
    if !ok {
        let want = match f {
            Not => "bool",
            Neg | Abs | Sign => "a numeric dtype",
            _ => "f32 or f64",
        };
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
    if f.is_logical() && a.dtype != DType::Bool {
        return Err(format!(
            "{} needs bool operands, got {}",
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

macro_rules! impl_real {
    ($t:ty, $erf:path) => {
        impl Real for $t {
            fn apply(f: UnaryOp, x: $t) -> $t {
                use UnaryOp::*;
                match f {
                    Neg => -x,
                    Abs => x.abs(),
                    Sign => {
                        if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            x
                        }
                    }
                    Exp => x.exp(),
                    Log => x.ln(),
                    Sqrt => x.sqrt(),
                    Rsqrt => 1.0 / x.sqrt(),
                    Recip => 1.0 / x,
                    Sin => x.sin(),
                    Cos => x.cos(),
                    Tanh => x.tanh(),
                    Sigmoid => 1.0 / (1.0 + (-x).exp()),
                    Erf => $erf(x),
                    Floor => x.floor(),
                    Ceil => x.ceil(),
                    Round => x.round_ties_even(),
                    Not => unreachable!("not is bool-only (checked by infer_unary)"),
                }
            }
            fn binary(f: BinaryOp, a: $t, b: $t) -> $t {
                use BinaryOp::*;
                match f {
                    Add => a + b,
                    Sub => a - b,
                    Mul => a * b,
                    Div => a / b,
                    Pow => a.powf(b),
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

impl_real!(f32, libm::erff);
impl_real!(f64, libm::erf);

macro_rules! int_binary {
    ($t:ty, $f:expr, $a:expr, $b:expr) => {{
        use BinaryOp::*;
        let (a, b): ($t, $t) = ($a, $b);
        match $f {
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
            Pow => {
                if b < 0 {
                    match a {
                        1 => 1,
                        -1 => {
                            if b % 2 == 0 {
                                1
                            } else {
                                -1
                            }
                        }
                        _ => 0,
                    }
                } else {
                    let mut result: $t = 1;
                    let mut base = a;
                    let mut e = b;
                    while e > 0 {
                        if e & 1 == 1 {
                            result = result.wrapping_mul(base);
                        }
                        base = base.wrapping_mul(base);
                        e >>= 1;
                    }
                    result
                }
            }
            Max => a.max(b),
            Min => a.min(b),
            _ => unreachable!("comparisons and logic are handled apart"),
        }
    }};
}

fn map_int_unary<T: Copy + Ord + Default>(v: &[T], f: impl Fn(T) -> T) -> Vec<T> {
    v.iter().map(|&x| f(x)).collect()
}

/// Reference meaning of unary ops.
pub fn eval_unary(f: UnaryOp, x: &Array) -> Result<Array, String> {
    let data = match x.data() {
        Data::F32(v) => Data::F32(v.iter().map(|&a| f32::apply(f, a)).collect()),
        Data::F64(v) => Data::F64(v.iter().map(|&a| f64::apply(f, a)).collect()),
        Data::I32(v) => Data::I32(map_int_unary(v, |a| match f {
            UnaryOp::Neg => a.wrapping_neg(),
            UnaryOp::Abs => a.wrapping_abs(),
            _ => a.signum(),
        })),
        Data::I64(v) => Data::I64(map_int_unary(v, |a| match f {
            UnaryOp::Neg => a.wrapping_neg(),
            UnaryOp::Abs => a.wrapping_abs(),
            _ => a.signum(),
        })),
        Data::Bool(v) => Data::Bool(v.iter().map(|&a| !a).collect()),
    };
    Ok(Array::new(x.shape().to_vec(), data).expect("same element count"))
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
    let (ash, bsh) = (a.shape(), b.shape());
    macro_rules! cmp {
        ($x:expr, $y:expr) => {
            Data::Bool(zip2($x, ash, $y, bsh, out, |p, q| compare(f, p, q)))
        };
    }
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) if f.is_comparison() => cmp!(x, y),
        (Data::F64(x), Data::F64(y)) if f.is_comparison() => cmp!(x, y),
        (Data::I32(x), Data::I32(y)) if f.is_comparison() => cmp!(x, y),
        (Data::I64(x), Data::I64(y)) if f.is_comparison() => cmp!(x, y),
        (Data::Bool(x), Data::Bool(y)) if f.is_comparison() => cmp!(x, y),
        (Data::F32(x), Data::F32(y)) => {
            Data::F32(zip2(x, ash, y, bsh, out, |p, q| f32::binary(f, p, q)))
        }
        (Data::F64(x), Data::F64(y)) => {
            Data::F64(zip2(x, ash, y, bsh, out, |p, q| f64::binary(f, p, q)))
        }
        (Data::I32(x), Data::I32(y)) => {
            Data::I32(zip2(x, ash, y, bsh, out, |p, q| int_binary!(i32, f, p, q)))
        }
        (Data::I64(x), Data::I64(y)) => {
            Data::I64(zip2(x, ash, y, bsh, out, |p, q| int_binary!(i64, f, p, q)))
        }
        (Data::Bool(x), Data::Bool(y)) => Data::Bool(zip2(x, ash, y, bsh, out, |p, q| match f {
            BinaryOp::And => p & q,
            BinaryOp::Or => p | q,
            _ => p ^ q,
        })),
        _ => return Err(format!("dtypes differ: {} vs {}", a.dtype(), b.dtype())),
    };
    Ok(Array::new(out.to_vec(), data).expect("broadcast shape matches"))
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

fn cast_vec<S: Copy, D>(v: &[S], f: impl Fn(S) -> D) -> Vec<D> {
    v.iter().map(|&x| f(x)).collect()
}

/// Reference meaning of cast, with Rust `as` semantics: float to int truncates
/// toward zero and saturates, NaN gives 0; int narrowing wraps; to bool is `!= 0`.
pub fn eval_cast(x: &Array, to: DType) -> Array {
    macro_rules! from {
        ($v:expr) => {
            match to {
                DType::F32 => Data::F32(cast_vec($v, |a| a as f32)),
                DType::F64 => Data::F64(cast_vec($v, |a| a as f64)),
                DType::I32 => Data::I32(cast_vec($v, |a| a as i32)),
                DType::I64 => Data::I64(cast_vec($v, |a| a as i64)),
                DType::Bool => Data::Bool(cast_vec($v, |a| a as f64 != 0.0)),
            }
        };
    }
    let data = match x.data() {
        Data::F32(v) => from!(v),
        Data::F64(v) => from!(v),
        Data::I32(v) => match to {
            DType::Bool => Data::Bool(cast_vec(v, |a| a != 0)),
            _ => from!(v),
        },
        Data::I64(v) => match to {
            DType::Bool => Data::Bool(cast_vec(v, |a| a != 0)),
            _ => from!(v),
        },
        Data::Bool(v) => {
            let u: Vec<u8> = v.iter().map(|&b| b as u8).collect();
            match to {
                DType::Bool => Data::Bool(v.clone()),
                _ => from!(&u),
            }
        }
    };
    Array::new(x.shape().to_vec(), data).expect("same element count")
}

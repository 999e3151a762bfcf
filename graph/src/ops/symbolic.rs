//! Shape values: small integer tensors whose values are expressions over the
//! symbolic dims (`Op::SymbolicConstant`), and their evaluation while the
//! graph is built.
//!
//! What shape code does with a tensor's shape — gather a dim, slice, concat,
//! reshape, unsqueeze, add/sub/mul/div/mod, min/max, compare, select,
//! cast, reduce — is done on the expressions when the node is added
//! ([`fold`]), so the result is again a symbolic constant (or a constant),
//! and ops that take a shape as a tensor (reshape, expand, full, range)
//! read its value as dim expressions. Movement ops are evaluated by running
//! their reference meaning on the elements' positions, so they share one
//! definition with the interpreter.

use crate::array::{Array, Data};
use crate::dim_expr::DimExpr;
use crate::dtype::DType;
use crate::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use crate::shape::{Bindings, Shape, TensorType};

/// Largest tensor evaluated symbolically: shape values are short.
pub const MAX_ELEMENTS: usize = 1024;

/// An integer (or bool: 0 and 1) tensor of dim expressions.
#[derive(Clone, Debug, PartialEq)]
pub struct SymTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<DimExpr>,
}

/// Shape rule of a symbolic constant.
pub fn infer(dtype: DType, shape: &[usize], values: &[DimExpr]) -> Result<TensorType, String> {
    if !(dtype.is_int() || dtype == DType::Bool) {
        return Err(format!(
            "symbolic constants are integers or bools, not {dtype}"
        ));
    }
    let n = crate::array::checked_product(shape).ok_or("its shape overflows")?;
    if n != values.len() {
        return Err(format!(
            "shape {shape:?} holds {n} values, but {} are given",
            values.len()
        ));
    }
    Ok(TensorType::new(dtype, shape.to_vec()))
}

/// The value of a symbolic constant under `bindings`.
pub fn eval(
    dtype: DType,
    shape: &[usize],
    values: &[DimExpr],
    bindings: &Bindings,
) -> Result<Array, String> {
    let v = values
        .iter()
        .map(|e| e.eval(bindings))
        .collect::<Result<Vec<i64>, String>>()?;
    let a = Array::new(shape.to_vec(), Data::I64(v))
        .ok_or_else(|| "shape does not match the values".to_string())?;
    Ok(super::elementwise::eval_cast(&a, dtype))
}

/// The value of a node's op where it is known as expressions: a symbolic
/// constant, a small integer or bool constant, or an iota of fixed shape.
pub fn known(op: &Op) -> Option<SymTensor> {
    match op {
        Op::SymbolicConstant {
            dtype,
            shape,
            values,
        } => Some(SymTensor {
            dtype: *dtype,
            shape: shape.clone(),
            values: values.clone(),
        }),
        Op::Constant { value } => {
            let a = &value.0;
            let dt = a.dtype();
            if !(dt.is_int() || dt == DType::Bool) || a.len() > MAX_ELEMENTS {
                return None;
            }
            let values = a
                .to_f64_vec()
                .into_iter()
                .map(|v| DimExpr::val(v as i64))
                .collect();
            // u64 above i64::MAX would not survive as an i64.
            if let Data::U64(v) = a.data() {
                if v.iter().any(|&x| x > i64::MAX as u64) {
                    return None;
                }
            }
            if let Data::I64(v) = a.data() {
                return Some(SymTensor {
                    dtype: dt,
                    shape: a.shape().to_vec(),
                    values: v.iter().map(|&x| DimExpr::val(x)).collect(),
                });
            }
            Some(SymTensor {
                dtype: dt,
                shape: a.shape().to_vec(),
                values,
            })
        }
        Op::Iota { dtype, shape, axis } if dtype.is_int() => {
            let dims = shape.as_fixed()?;
            let n = crate::array::checked_product(&dims).filter(|&n| n <= MAX_ELEMENTS)?;
            let a = super::index::eval_iota(DType::I64, &dims, *axis);
            let Data::I64(v) = a.data() else { return None };
            debug_assert_eq!(v.len(), n);
            Some(SymTensor {
                dtype: *dtype,
                shape: dims,
                values: v.iter().map(|&x| DimExpr::val(x)).collect(),
            })
        }
        _ => None,
    }
}

/// The op of a node holding `t`: a constant when no value uses a symbol.
pub fn to_op(t: SymTensor) -> Option<Op> {
    let consts: Option<Vec<i64>> = t.values.iter().map(DimExpr::as_const).collect();
    match consts {
        Some(v) => {
            let a = super::elementwise::eval_cast(&Array::new(t.shape, Data::I64(v))?, t.dtype);
            Some(Op::Constant {
                value: crate::op::Weight::new(a),
            })
        }
        None => Some(Op::SymbolicConstant {
            dtype: t.dtype,
            shape: t.shape,
            values: t.values,
        }),
    }
}

/// `op` over inputs known as expressions, evaluated as expressions; `None`
/// where the op or a value is beyond what expressions hold (a float, a
/// division whose rounding depends on signs no binding decides): the node
/// is then computed at run time like any other.
pub fn fold(op: &Op, ins: &[SymTensor], out: &TensorType) -> Option<SymTensor> {
    if !(out.dtype.is_int() || out.dtype == DType::Bool) {
        return None;
    }
    let shape = out.shape.as_fixed()?;
    let n = crate::array::checked_product(&shape).filter(|&n| n <= MAX_ELEMENTS)?;
    let values = match op {
        Op::Reshape { .. }
        | Op::Broadcast { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Concat { .. } => moved(op, ins, &shape)?,
        Op::Gather { .. } => {
            let idx = constant_array(&ins[1])?;
            let pos = positions(&ins[0].shape, 0)?;
            let a = op.eval(&[&pos, &idx], &shape).ok()?;
            pick(&a, &ins[0].values)?
        }
        Op::Cast { to } => {
            let x = &ins[0].values;
            if *to == DType::Bool {
                x.iter()
                    .map(|e| decide(e, &DimExpr::val(0), BinaryOp::Ne))
                    .collect::<Option<Vec<_>>>()?
            } else if to.is_int() {
                x.clone()
            } else {
                return None;
            }
        }
        Op::Unary { f } => ins[0]
            .values
            .iter()
            .map(|e| unary(*f, e))
            .collect::<Option<Vec<_>>>()?,
        Op::Binary { f } => {
            let a = spread(&ins[0], &shape)?;
            let b = spread(&ins[1], &shape)?;
            a.iter()
                .zip(&b)
                .map(|(x, y)| binary(*f, x, y, ins[0].dtype))
                .collect::<Option<Vec<_>>>()?
        }
        Op::Select => {
            let c = spread(&ins[0], &shape)?;
            let a = spread(&ins[1], &shape)?;
            let b = spread(&ins[2], &shape)?;
            c.iter()
                .zip(a.into_iter().zip(b))
                .map(|(c, (a, b))| Some(if c.as_const()? != 0 { a } else { b }))
                .collect::<Option<Vec<_>>>()?
        }
        Op::Reduce { f, axes, .. } => reduce(*f, axes, &ins[0], n)?,
        _ => return None,
    };
    (values.len() == n).then_some(SymTensor {
        dtype: out.dtype,
        shape,
        values,
    })
}

/// An array of the positions `base..base+len` in `shape`.
fn positions(shape: &[usize], base: usize) -> Option<Array> {
    let n = crate::array::checked_product(shape)?;
    Array::new(
        shape.to_vec(),
        Data::I64((base..base + n).map(|i| i as i64).collect()),
    )
}

fn constant_array(t: &SymTensor) -> Option<Array> {
    let v: Option<Vec<i64>> = t.values.iter().map(DimExpr::as_const).collect();
    Array::new(t.shape.clone(), Data::I64(v?))
}

/// The values at the positions an array of positions holds.
fn pick(a: &Array, values: &[DimExpr]) -> Option<Vec<DimExpr>> {
    let Data::I64(p) = a.data() else { return None };
    p.iter()
        .map(|&i| values.get(usize::try_from(i).ok()?).cloned())
        .collect()
}

/// A movement op on the positions of its inputs' values.
fn moved(op: &Op, ins: &[SymTensor], out: &[usize]) -> Option<Vec<DimExpr>> {
    let mut arrays = Vec::with_capacity(ins.len());
    let mut pool = Vec::new();
    for t in ins {
        arrays.push(positions(&t.shape, pool.len())?);
        pool.extend(t.values.iter().cloned());
    }
    let refs: Vec<&Array> = arrays.iter().collect();
    let a = op.eval(&refs, out).ok()?;
    pick(&a, &pool)
}

/// `t` broadcast to `out`.
fn spread(t: &SymTensor, out: &[usize]) -> Option<Vec<DimExpr>> {
    let op = Op::Broadcast {
        shape: Shape::fixed(out),
    };
    moved(&op, std::slice::from_ref(t), out)
}

fn bool_val(b: bool) -> DimExpr {
    DimExpr::val(b as i64)
}

/// A comparison the bounds decide.
fn decide(a: &DimExpr, b: &DimExpr, f: BinaryOp) -> Option<DimExpr> {
    let (lo, hi) = a.sub(b).ok()?.bounds();
    let r = match f {
        BinaryOp::Eq | BinaryOp::Ne => {
            let eq = if lo == 0 && hi == 0 {
                true
            } else if lo > 0 || hi < 0 {
                false
            } else {
                return None;
            };
            eq == (f == BinaryOp::Eq)
        }
        BinaryOp::Lt if hi < 0 => true,
        BinaryOp::Lt if lo >= 0 => false,
        BinaryOp::Le if hi <= 0 => true,
        BinaryOp::Le if lo > 0 => false,
        BinaryOp::Gt if lo > 0 => true,
        BinaryOp::Gt if hi <= 0 => false,
        BinaryOp::Ge if lo >= 0 => true,
        BinaryOp::Ge if hi < 0 => false,
        _ => return None,
    };
    Some(bool_val(r))
}

fn unary(f: UnaryOp, e: &DimExpr) -> Option<DimExpr> {
    let (lo, hi) = e.bounds();
    match f {
        UnaryOp::Neg => e.neg().ok(),
        UnaryOp::Abs if lo >= 0 => Some(e.clone()),
        UnaryOp::Abs if hi <= 0 => e.neg().ok(),
        UnaryOp::Sign if lo > 0 => Some(DimExpr::val(1)),
        UnaryOp::Sign if hi < 0 => Some(DimExpr::val(-1)),
        UnaryOp::Sign if lo == 0 && hi == 0 => Some(DimExpr::val(0)),
        UnaryOp::Not => e.as_const().map(|c| bool_val(c == 0)),
        _ => None,
    }
}

fn binary(f: BinaryOp, a: &DimExpr, b: &DimExpr, dtype: DType) -> Option<DimExpr> {
    let bools = dtype == DType::Bool;
    match f {
        BinaryOp::Add if !bools => a.add(b).ok(),
        BinaryOp::Sub if !bools => a.sub(b).ok(),
        BinaryOp::Mul if !bools => a.mul(b).ok(),
        // Integer division truncates toward zero (x / 0 = 0), remainder
        // takes the dividend's sign: floor division where both are not
        // negative, which the bounds must show.
        BinaryOp::Div | BinaryOp::Rem if !bools => {
            if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
                let r = if y == 0 {
                    if f == BinaryOp::Div {
                        0
                    } else {
                        x
                    }
                } else if f == BinaryOp::Div {
                    x.checked_div(y)?
                } else {
                    x.checked_rem(y)?
                };
                return Some(DimExpr::val(r));
            }
            if !a.is_nonneg() || b.bounds().0 < 1 {
                return None;
            }
            if f == BinaryOp::Div {
                a.div_floor(b).ok()
            } else {
                a.rem_floor(b).ok()
            }
        }
        BinaryOp::Max => a.max_with(b).ok(),
        BinaryOp::Min => a.min_with(b).ok(),
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            decide(a, b, f)
        }
        // `false and ?` is false, `true or ?` is true.
        BinaryOp::And if bools && (a.as_const() == Some(0) || b.as_const() == Some(0)) => {
            Some(bool_val(false))
        }
        BinaryOp::Or if bools && [a, b].iter().any(|v| v.as_const().is_some_and(|c| c != 0)) => {
            Some(bool_val(true))
        }
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor if bools => {
            let (x, y) = (a.as_const()? != 0, b.as_const()? != 0);
            Some(bool_val(match f {
                BinaryOp::And => x && y,
                BinaryOp::Or => x || y,
                _ => x != y,
            }))
        }
        _ => None,
    }
}

fn reduce(f: ReduceOp, axes: &[usize], x: &SymTensor, n_out: usize) -> Option<Vec<DimExpr>> {
    let st = crate::shape::strides(&x.shape);
    // The output position of each input element: its index with the
    // reduced axes dropped (keepdims only changes the shape).
    let kept: Vec<usize> = (0..x.shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept_dims: Vec<usize> = kept.iter().map(|&a| x.shape[a]).collect();
    let ost = crate::shape::strides(&kept_dims);
    let mut acc: Vec<Option<DimExpr>> = vec![None; n_out];
    for (i, v) in x.values.iter().enumerate() {
        let o: usize = kept
            .iter()
            .zip(&ost)
            .map(|(&a, &s)| (i / st[a]) % x.shape[a] * s)
            .sum();
        let slot = acc.get_mut(o)?;
        *slot = Some(match slot.take() {
            None => v.clone(),
            Some(p) => match f {
                ReduceOp::Sum => p.add(v).ok()?,
                ReduceOp::Prod => p.mul(v).ok()?,
                ReduceOp::Max => p.max_with(v).ok()?,
                ReduceOp::Min => p.min_with(v).ok()?,
            },
        });
    }
    // An empty reduction gives its identity (max/min of nothing: not folded).
    acc.into_iter()
        .map(|v| match (v, f) {
            (Some(v), _) => Some(v),
            (None, ReduceOp::Sum) => Some(DimExpr::val(0)),
            (None, ReduceOp::Prod) => Some(DimExpr::val(1)),
            (None, _) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(values: &[&str]) -> SymTensor {
        SymTensor {
            dtype: DType::I64,
            shape: vec![values.len()],
            values: values.iter().map(|v| DimExpr::parse(v).unwrap()).collect(),
        }
    }

    #[test]
    fn movement_and_arithmetic() {
        let s = sym(&["batch", "seq", "768"]);
        let g = fold(
            &Op::Gather { axis: 0 },
            &[s.clone(), sym(&["1"])],
            &TensorType::new(DType::I64, [1]),
        )
        .unwrap();
        assert_eq!(g.values, vec![DimExpr::sym("seq")]);
        let c = fold(
            &Op::Concat { axis: 0 },
            &[g.clone(), sym(&["12", "64"])],
            &TensorType::new(DType::I64, [3]),
        )
        .unwrap();
        assert_eq!(c.values[0], DimExpr::sym("seq"));
        assert_eq!(c.values[2], DimExpr::val(64));
        let m = fold(
            &Op::Binary { f: BinaryOp::Mul },
            &[s.clone(), sym(&["2"])],
            &TensorType::new(DType::I64, [3]),
        )
        .unwrap();
        assert_eq!(m.values[1], DimExpr::parse("2*seq").unwrap());
        let p = fold(
            &Op::Reduce {
                f: ReduceOp::Prod,
                axes: vec![0],
                keepdims: false,
            },
            &[s],
            &TensorType::new(DType::I64, Shape::scalar()),
        )
        .unwrap();
        assert_eq!(p.values[0], DimExpr::parse("768*batch*seq").unwrap());
    }

    #[test]
    fn undecidable_stays_run_time() {
        let eq = fold(
            &Op::Binary { f: BinaryOp::Eq },
            &[sym(&["seq"]), sym(&["4"])],
            &TensorType::new(DType::Bool, [1]),
        );
        assert!(eq.is_none());
        let eq = fold(
            &Op::Binary { f: BinaryOp::Eq },
            &[sym(&["seq"]), sym(&["-1"])],
            &TensorType::new(DType::Bool, [1]),
        )
        .unwrap();
        assert_eq!(eq.values[0], DimExpr::val(0));
        let div = fold(
            &Op::Binary { f: BinaryOp::Div },
            &[sym(&["seq-4"]), sym(&["2"])],
            &TensorType::new(DType::I64, [1]),
        );
        assert!(
            div.is_none(),
            "seq-4 may be negative: truncation is not floor"
        );
    }
}

//! One element's arithmetic in Cranelift IR, for the scalar loop nests
//! (`emit.rs`): every unary function (the fast approximations of the
//! transcendentals where the dtype is f32, else a call of kiln-rt's
//! shared function), every binary function with the reference's
//! semantics (integer division by zero, NaN-propagating min and max,
//! wrapping), and casts between every pair of dtypes.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, Value};

use kiln_graph::{BinaryOp, DType, UnaryOp};

use super::emit::Emitter;
use super::jit::cl;

impl Emitter<'_, '_> {
    /// `x` of integer dtype `from` widened to i64 (sign- or zero-extended).
    pub(super) fn widen_int(&mut self, from: DType, x: Value) -> Value {
        if cl(from) == types::I64 {
            x
        } else if from.is_signed_int() {
            self.b.ins().sextend(types::I64, x)
        } else {
            self.b.ins().uextend(types::I64, x)
        }
    }

    /// Unary op `f` on `x` of dtype `dt`.
    pub(super) fn unary(&mut self, f: UnaryOp, x: Value, dt: DType) -> Value {
        let ty = self.b.func.dfg.value_type(x);
        if ty.is_float() {
            let one = if ty == types::F32 {
                self.b.ins().f32const(1.0)
            } else {
                self.b.ins().f64const(1.0)
            };
            return match f {
                UnaryOp::Neg => self.b.ins().fneg(x),
                UnaryOp::Abs => self.b.ins().fabs(x),
                UnaryOp::Sqrt => self.b.ins().sqrt(x),
                UnaryOp::Recip => self.b.ins().fdiv(one, x),
                UnaryOp::Floor => self.b.ins().floor(x),
                UnaryOp::Ceil => self.b.ins().ceil(x),
                UnaryOp::Round => self.b.ins().nearest(x),
                UnaryOp::Sign => {
                    let zero = if ty == types::F32 {
                        self.b.ins().f32const(0.0)
                    } else {
                        self.b.ins().f64const(0.0)
                    };
                    let m1 = self.b.ins().fneg(one);
                    let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                    let lt = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
                    let neg_or_x = self.b.ins().select(lt, m1, x);
                    self.b.ins().select(gt, one, neg_or_x)
                }
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Erf
                    if ty == types::F32 =>
                {
                    // The same approximation as the vector lanes, on lane 0.
                    let v = self.b.ins().splat(types::F32X4, x);
                    let r = self.vunary(f, v);
                    self.b.ins().extractlane(r, 0)
                }
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Erf
                | UnaryOp::Rsqrt
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
                | UnaryOp::Not => {
                    let c = self.b.ins().iconst(types::I32, i64::from(f.code()));
                    self.call(
                        if ty == types::F32 {
                            "kiln_unary_f32"
                        } else {
                            "kiln_unary_f64"
                        },
                        &[c, x],
                    )
                }
            };
        }
        let zero = self.b.ins().iconst(ty, 0);
        match f {
            UnaryOp::Not if dt == DType::Bool => self.b.ins().bxor_imm_s(x, 1),
            UnaryOp::Not => self.b.ins().bnot(x),
            UnaryOp::Neg => self.b.ins().ineg(x),
            UnaryOp::Abs if dt.is_unsigned() => x,
            UnaryOp::Abs => {
                let neg = self.b.ins().ineg(x);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, x, zero);
                self.b.ins().select(lt, neg, x)
            }
            UnaryOp::Sign => {
                let one = self.b.ins().iconst(ty, 1);
                if dt.is_unsigned() {
                    let nz = self.b.ins().icmp(IntCC::NotEqual, x, zero);
                    return self.b.ins().select(nz, one, zero);
                }
                let m1 = self
                    .b
                    .ins()
                    .iconst(ty, (u64::MAX >> (64 - ty.bits())) as i64);
                let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, x, zero);
                let lt = self.b.ins().icmp(IntCC::SignedLessThan, x, zero);
                let neg_or_zero = self.b.ins().select(lt, m1, zero);
                self.b.ins().select(gt, one, neg_or_zero)
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
                unreachable!("{f:?} takes floats only (infer_unary refuses it on {dt})")
            }
        }
    }

    /// Binary op `f` on operands of dtype `dt`.
    pub(super) fn binary(&mut self, f: BinaryOp, a: Value, b: Value, dt: DType) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        if f.is_comparison() {
            if ty.is_float() {
                let cc = match f {
                    BinaryOp::Eq => FloatCC::Equal,
                    BinaryOp::Ne => FloatCC::NotEqual,
                    BinaryOp::Lt => FloatCC::LessThan,
                    BinaryOp::Le => FloatCC::LessThanOrEqual,
                    BinaryOp::Gt => FloatCC::GreaterThan,
                    _ => FloatCC::GreaterThanOrEqual,
                };
                return self.b.ins().fcmp(cc, a, b);
            }
            // Bools and unsigned integers compare as unsigned (false < true).
            let signed = dt.is_signed_int();
            let cc = match (f, signed) {
                (BinaryOp::Eq, _) => IntCC::Equal,
                (BinaryOp::Ne, _) => IntCC::NotEqual,
                (BinaryOp::Lt, true) => IntCC::SignedLessThan,
                (BinaryOp::Le, true) => IntCC::SignedLessThanOrEqual,
                (BinaryOp::Gt, true) => IntCC::SignedGreaterThan,
                (BinaryOp::Ge, true) => IntCC::SignedGreaterThanOrEqual,
                (BinaryOp::Lt, false) => IntCC::UnsignedLessThan,
                (BinaryOp::Le, false) => IntCC::UnsignedLessThanOrEqual,
                (BinaryOp::Gt, false) => IntCC::UnsignedGreaterThan,
                _ => IntCC::UnsignedGreaterThanOrEqual,
            };
            return self.b.ins().icmp(cc, a, b);
        }
        if ty.is_float() {
            return match f {
                BinaryOp::Add => self.b.ins().fadd(a, b),
                BinaryOp::Sub => self.b.ins().fsub(a, b),
                BinaryOp::Mul => self.b.ins().fmul(a, b),
                BinaryOp::Div => self.b.ins().fdiv(a, b),
                BinaryOp::Max => self.b.ins().fmax(a, b),
                BinaryOp::Min => self.b.ins().fmin(a, b),
                // IEEE fmod, exact: no instruction computes it.
                BinaryOp::Rem => self.call(
                    if ty == types::F32 {
                        "kiln_rem_f32"
                    } else {
                        "kiln_rem_f64"
                    },
                    &[a, b],
                ),
                _ => self.call(
                    if ty == types::F32 {
                        "kiln_pow_f32"
                    } else {
                        "kiln_pow_f64"
                    },
                    &[a, b],
                ),
            };
        }
        let unsigned = dt.is_unsigned();
        match f {
            BinaryOp::Add => self.b.ins().iadd(a, b),
            BinaryOp::Sub => self.b.ins().isub(a, b),
            BinaryOp::Mul => self.b.ins().imul(a, b),
            BinaryOp::Max if unsigned => self.b.ins().umax(a, b),
            BinaryOp::Min if unsigned => self.b.ins().umin(a, b),
            BinaryOp::Max => self.b.ins().smax(a, b),
            BinaryOp::Min => self.b.ins().smin(a, b),
            BinaryOp::And => self.b.ins().band(a, b),
            BinaryOp::Or => self.b.ins().bor(a, b),
            BinaryOp::Xor => self.b.ins().bxor(a, b),
            BinaryOp::Div if unsigned => {
                // x / 0 = 0, without trapping.
                let zero = self.b.ins().iconst(ty, 0);
                let one = self.b.ins().iconst(ty, 1);
                let is0 = self.b.ins().icmp(IntCC::Equal, b, zero);
                let safe = self.b.ins().select(is0, one, b);
                let q = self.b.ins().udiv(a, safe);
                self.b.ins().select(is0, zero, q)
            }
            BinaryOp::Div => {
                // x / 0 = 0 and MIN / -1 = MIN (wrapping), without trapping.
                let zero = self.b.ins().iconst(ty, 0);
                let one = self.b.ins().iconst(ty, 1);
                let m1 = self
                    .b
                    .ins()
                    .iconst(ty, (u64::MAX >> (64 - ty.bits())) as i64);
                let is0 = self.b.ins().icmp(IntCC::Equal, b, zero);
                let is_m1 = self.b.ins().icmp(IntCC::Equal, b, m1);
                let special = self.b.ins().bor(is0, is_m1);
                let safe = self.b.ins().select(special, one, b);
                let q = self.b.ins().sdiv(a, safe);
                let neg = self.b.ins().ineg(a);
                let q = self.b.ins().select(is_m1, neg, q);
                self.b.ins().select(is0, zero, q)
            }
            BinaryOp::Rem => {
                // a - trunc(a / b) * b with Div's x / 0 = 0 and wrapping
                // MIN / -1: x rem 0 = x, MIN rem -1 = 0.
                let q = self.binary(BinaryOp::Div, a, b, dt);
                let qb = self.b.ins().imul(q, b);
                self.b.ins().isub(a, qb)
            }
            _ if dt == DType::U64 => self.call("kiln_pow_u64", &[a, b]),
            _ if ty == types::I32 && dt == DType::I32 => self.call("kiln_pow_i32", &[a, b]),
            _ => {
                // Powers are consistent modulo 2^width: the i64 power of
                // the extended operands, truncated, is the narrow power.
                let (wa, wb) = (self.widen_int(dt, a), self.widen_int(dt, b));
                let p = self.call("kiln_pow_i64", &[wa, wb]);
                if ty == types::I64 {
                    p
                } else {
                    self.b.ins().ireduce(ty, p)
                }
            }
        }
    }

    /// Cast of `x` (of dtype `from`) to `to`, with Rust `as` semantics
    /// (float to integer saturates, NaN gives 0; integers wrap or extend).
    pub(super) fn cast(&mut self, to: DType, x: Value, from: DType) -> Value {
        if to.is_half() {
            // From f32 or f64 only (`widen_half` routes the rest through
            // f64): one rounding, kept in an f32 register. A half value
            // (already in f32) rounds to itself.
            let wide = if from == DType::F64 {
                x
            } else {
                self.b.ins().fpromote(types::F64, x)
            };
            let bf = self.b.ins().iconst(types::I32, (to == DType::BF16) as i64);
            return self.call("kiln_round_half_f64", &[wide, bf]);
        }
        let t = cl(to);
        // A half value is an f32 in its register.
        let from = if from.is_half() { DType::F32 } else { from };
        if from == to {
            return x;
        }
        let from_float = from.is_float();
        match to {
            DType::F32 | DType::F64 => {
                if from_float {
                    return if t == types::F64 {
                        self.b.ins().fpromote(t, x)
                    } else {
                        self.b.ins().fdemote(t, x)
                    };
                }
                if from == DType::U64 {
                    return self.b.ins().fcvt_from_uint(t, x);
                }
                // Bools and the other integers are exact in i64.
                let w = if from == DType::Bool {
                    self.b.ins().uextend(types::I64, x)
                } else {
                    self.widen_int(from, x)
                };
                self.b.ins().fcvt_from_sint(t, w)
            }
            DType::Bool => {
                if from_float {
                    let z = self.zero(from);
                    self.b.ins().fcmp(FloatCC::NotEqual, x, z)
                } else {
                    let z = self.zero(from);
                    self.b.ins().icmp(IntCC::NotEqual, x, z)
                }
            }
            _ if from_float => match to {
                DType::I32 | DType::I64 => self.b.ins().fcvt_to_sint_sat(t, x),
                DType::U32 | DType::U64 => self.b.ins().fcvt_to_uint_sat(t, x),
                _ => {
                    // Narrow targets: saturate in i32, clamp, truncate.
                    let (lo, hi) = match to {
                        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
                        DType::U8 => (0, u8::MAX as i64),
                        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
                        _ => (0, u16::MAX as i64),
                    };
                    let v = self.b.ins().fcvt_to_sint_sat(types::I32, x);
                    let lo = self.b.ins().iconst(types::I32, lo as u32 as i64);
                    let hi = self.b.ins().iconst(types::I32, hi);
                    let v = self.b.ins().smax(v, lo);
                    let v = self.b.ins().smin(v, hi);
                    self.b.ins().ireduce(t, v)
                }
            },
            _ => {
                // Integer (or bool) to integer: truncate, or extend by the
                // source's signedness (bools are 0 or 1).
                let ft = cl(from);
                if t.bits() < ft.bits() {
                    self.b.ins().ireduce(t, x)
                } else if t.bits() == ft.bits() {
                    x
                } else if from.is_signed_int() {
                    self.b.ins().sextend(t, x)
                } else {
                    self.b.ins().uextend(t, x)
                }
            }
        }
    }

    pub(super) fn cast_index(&mut self, i: Value, dtype: DType) -> Value {
        match dtype {
            DType::Bool => self.b.ins().icmp_imm_s(IntCC::NotEqual, i, 0),
            d if d.is_float() => self.b.ins().fcvt_from_sint(cl(d), i),
            d if cl(d) == types::I64 => i,
            d => self.b.ins().ireduce(cl(d), i),
        }
    }
}

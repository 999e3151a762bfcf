//! Vectorized elementwise kernels: the innermost loop runs four f32 lanes at
//! a time (Cranelift's 128-bit vectors on x86-64), with fast approximations
//! of the transcendental functions, and a scalar loop for the remainder.
//!
//! Approximations: exp and log are Cephes-style range reductions and
//! polynomials, tanh and sigmoid are built on exp (tanh by its odd Taylor
//! polynomial below 1/8), erf is a rational function in x^2 (the form XLA
//! and Eigen use). Every constant is `kiln_rt::approx`'s, which the
//! AVX-512 and AVX2 row code reads too. The scalar JIT code computes
//! these five with the same code on lane 0, so scalar, 4-lane, AVX2 and
//! AVX-512 rows agree to an ulp or two. Error bounds, per function and
//! path:
//!
//! | f32 function | reference | JIT scalar | 4-lane | AVX2 rows | AVX-512 rows | CUDA (its library) |
//! |---|---|---|---|---|---|---|
//! | exp | 0.50 | 0.96 | 0.96 | 0.96 | 0.96 | `expf` |
//! | log | 0.73 | 0.81 | 0.81 | 0.81 | 0.81 | `logf` |
//! | tanh | 1.93 | 2.36 | 2.36 | 2.76 | 2.76 | `tanhf` |
//! | sigmoid | 1.97 | 2.21 | 2.21 | 2.21 | 2.21 | `1/(1+expf(-x))` |
//! | erf | 0.78 | 5.50 | 5.50 | 6.18 | 6.18 | `erff` |
//! | sin, cos | 0.56 | = ref | = ref | = ref | = ref | `sinf`, `cosf` |
//! | tan, asin, acos, atan | 0.80, 0.65, 0.83, 0.73 | = ref | = ref | = ref | = ref | `tanf`, ... |
//! | sinh, cosh | 1.64, 1.22 | = ref | = ref | = ref | = ref | `sinhf`, `coshf` |
//! | asinh, acosh, atanh | 1.57, 1.47, 1.51 | = ref | = ref | = ref | = ref | `asinhf`, ... |
//! | rsqrt (`1/sqrt x`) | 1.44 | 1.44 | 1.44 | 1.44 | 1.44 | `1.0f/sqrtf(x)` |
//! | sqrt, recip, neg, abs, sign, floor, ceil, round | exact | exact | exact | exact | exact | exact |
//! | rem (fmod) | exact | exact | scalar | scalar | scalar | `fmodf` (exact) |
//!
//! Measured maximum errors in ulps of the f32 result against the true
//! value (computed in f64), over the whole f32 range: 239,128 inputs in
//! `tests/tests/math_range.rs` (every binade from 2^-149 to 2^127 at six
//! mantissas, both signs, 200,000 bit patterns spread over all 2^32, dense
//! samples around 0, ±1 and the overflow and underflow thresholds); that
//! test holds each path to a bound above these (exp, log: 2; tanh,
//! sigmoid: 4; erf: 8; libm functions: 2). "= ref": the same libm function
//! (the `libm` crate: the interpreter, JIT and ahead-of-time code agree bit
//! for bit); those ops have no vector form, so their rows run the scalar
//! loop. Where the true result is subnormal the vector approximations
//! (exp, sigmoid, tanh, erf) are exact only to 2^-126 absolutely (sigmoid
//! of x < -87.3 may give 0). NaN in gives NaN; ±inf and the ends of the
//! range give exactly the limit: exp is +inf exactly where e^x overflows
//! f32 (x > 88.7228) and 0 from -104 (never the least subnormal),
//! log(0) = -inf, log(x < 0) = NaN, log of subnormals is accurate,
//! tanh(±large) = ±1, sigmoid(+large) = 1, erf is exactly ±1 from |x| >= 3.919206 (where f32 erf rounds to 1), so GELU of
//! large negative x is exactly -0 on every path. f64 ops: exp, log, tanh,
//! sigmoid, erf call std/libm in every path; the libm-called ops are within
//! 2 f64 ulps of std's (measured; tested to 4). The CUDA column is
//! NVIDIA's library, whose documented bounds (CUDA C Programming Guide,
//! "Mathematical Functions") are 1 to 4 ulps; not measured here. The
//! AVX2 column was measured on Zen 1 (the hardware reciprocal estimate
//! inside tanh, sigmoid and erf differs between vendors; its third-order
//! refinement leaves that difference below the final rounding).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Value};

use kiln_graph::{BinaryOp, DType, ReduceOp, UnaryOp};
use kiln_optimizer::index::{Atom, Index};
use kiln_optimizer::kernel::{Access, BufferId, ElementProgram, Instr, KernelProgram, Storage};
use kiln_rt::approx::{
    ERF_CLAMP, ERF_DEN, ERF_NUM, ERF_ONE, EXP_HI, EXP_LO, EXP_POLY, EXP_ROUND, LN2_HI, LN2_LO,
    LOG_POLY, LOG_SUBNORMAL_SCALE, LOG_SUBNORMAL_SHIFT, TANH_SMALL, TANH_SMALL_BELOW,
};

use super::emit::Emitter;
use super::jit::flags;
use super::wide::{FromElements, Isa, RowAccess, RowProgram};
use crate::error::Result;

const LANES: usize = 4;
const V: types::Type = types::F32X4;

/// The innermost-variable coefficient of an access, if it is 0 or 1 and the
/// variable appears only linearly.
fn unit_stride(a: &Access, var: usize) -> Option<i64> {
    coefficient(a, var).filter(|&c| a.mask.is_empty() && (c == 0 || c == 1))
}

/// The coefficient of loop variable `var` in an access's offset, or `None`
/// where it appears inside a division or modulo.
fn coefficient(a: &Access, var: usize) -> Option<i64> {
    let mut c = 0;
    for (k, atom) in &a.offset.terms {
        match atom {
            Atom::Var(v) if *v == var => c += k,
            Atom::Var(_) => {}
            Atom::Div(i, _) | Atom::Mod(i, _) if i.mentions(var) => return None,
            Atom::Div(..) | Atom::Mod(..) => {}
        }
    }
    Some(c)
}

/// Row length from which a row runs in the row code of `isa` through a
/// call rather than inline in four lanes, or `None` where it stays inline
/// at any length.
///
/// AVX-512: from 64 elements for programs heavy in arithmetic (a
/// transcendental, square root or division), from 128 for the others.
///
/// AVX2: only programs with one of the approximated transcendentals (exp,
/// log, tanh, sigmoid, erf), from 64. Measured on Zen 1 (whose 256-bit
/// loads, stores, divisions and square roots are each two 128-bit halves)
/// against the inline four-lane loop, single-threaded, 65,536 elements:
/// erf 2.3x, GELU 1.7x, softmax 2.1x, exp 1.6x, sigmoid and SiLU 1.35x,
/// tanh 1.3x, log 1.15x faster in the row code; but lighter programs
/// mostly slower there (the block interpreter's extra passes through L1
/// slots cost more than the width gains, and the 256-bit divider is
/// slower than two 128-bit divisions): add and multiply-add 5-15%,
/// square root 1.35x, division 1.7x, row sums 1.8x (3.4x in rows of 128,
/// a call costing about 100 cycles), layer norm 1.3x slower; only relu
/// gained (15%).
fn wide_threshold(p: &ElementProgram, isa: Isa) -> Option<usize> {
    let transcendental = p
        .instrs
        .iter()
        .any(|i| matches!(i, Instr::Unary(f, _) if f.approximated()));
    let heavy = transcendental
        || p.instrs.iter().any(|i| match i {
            Instr::Unary(f, _) => matches!(f, UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip),
            Instr::Binary(f, ..) => *f == BinaryOp::Div,
            _ => false,
        });
    match isa {
        Isa::Avx512 if heavy => Some(64),
        Isa::Avx512 => Some(128),
        Isa::Avx2 if transcendental => Some(64),
        Isa::Avx2 => None,
    }
}

/// True for the f32 unary ops the vector paths (four lanes here, eight or
/// sixteen in the row code of `wide.rs`) compute; the others (libm's
/// functions, sign, not) run the scalar loop.
pub(crate) fn has_vector_form(f: UnaryOp) -> bool {
    use UnaryOp::*;
    match f {
        Neg | Abs | Sqrt | Recip | Rsqrt | Floor | Ceil | Round | Exp | Log | Tanh | Sigmoid
        | Erf => true,
        Sign | Sin | Cos | Tan | Asin | Acos | Atan | Sinh | Cosh | Asinh | Acosh | Atanh | Not => {
            false
        }
    }
}

/// True when every instruction of an f32 elementwise kernel has a vector
/// form and every load is contiguous or constant along the innermost dim.
pub(crate) fn vectorizable(
    prog: &KernelProgram,
    shape: &[usize],
    inputs: &[Access],
    p: &ElementProgram,
    out: BufferId,
    acc_from_out: bool,
) -> bool {
    let Some(&n) = shape.last() else { return false };
    n >= 2 * LANES
        && prog.buffer(out).dtype == DType::F32
        && program_vectorizable(prog, shape, inputs, p, acc_from_out) == Some(true)
}

/// `Some(true)` when a program's result is an f32 vector along the innermost
/// loop variable (`Some(false)`: a lane mask; `None`: not vectorizable).
fn program_vectorizable(
    prog: &KernelProgram,
    shape: &[usize],
    inputs: &[Access],
    p: &ElementProgram,
    acc_ok: bool,
) -> Option<bool> {
    let last = shape.len().checked_sub(1)?;
    // true: an f32 vector; false: a lane mask.
    let mut kinds: Vec<bool> = Vec::with_capacity(p.instrs.len());
    for ins in &p.instrs {
        let k = match ins {
            Instr::Load(a) => {
                let acc = &inputs[*a];
                if prog.buffer(acc.buffer).dtype != DType::F32 || unit_stride(acc, last).is_none() {
                    return None;
                }
                true
            }
            Instr::Const(c) if c.dtype() == DType::F32 => true,
            Instr::Unary(f, a) => {
                if !kinds[*a] || !has_vector_form(*f) {
                    return None;
                }
                true
            }
            Instr::Binary(f, a, b) => {
                use BinaryOp::*;
                if !kinds[*a] || !kinds[*b] {
                    return None;
                }
                match f {
                    Add | Sub | Mul | Div | Max | Min => true,
                    Eq | Ne | Lt | Le | Gt | Ge => false,
                    _ => return None,
                }
            }
            Instr::Select(c, a, b) => {
                if kinds[*c] || !kinds[*a] || !kinds[*b] {
                    return None;
                }
                true
            }
            Instr::Acc if acc_ok => true,
            _ => return None,
        };
        kinds.push(k);
    }
    Some(kinds[p.result])
}

fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl Emitter<'_, '_> {
    /// Whether a row of `n` elements of `p` runs in the row code (see
    /// [`wide_threshold`]).
    fn row_code(&self, p: &ElementProgram, n: usize) -> bool {
        self.wide
            .and_then(|isa| wide_threshold(p, isa))
            .is_some_and(|t| n >= t)
    }

    fn splat(&mut self, c: f32) -> Value {
        let s = self.b.ins().f32const(c);
        self.b.ins().splat(V, s)
    }

    fn isplat(&mut self, c: i32) -> Value {
        let s = self.b.ins().iconst(types::I32, c as i64);
        self.b.ins().splat(types::I32X4, s)
    }

    fn bits_of(&mut self, x: Value) -> Value {
        self.b.ins().bitcast(types::I32X4, lanes(), x)
    }

    fn floats_of(&mut self, x: Value) -> Value {
        self.b.ins().bitcast(V, lanes(), x)
    }

    /// `mask ? a : b` for an `fcmp` lane mask.
    fn vselect(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let m = self.floats_of(mask);
        self.b.ins().bitselect(m, a, b)
    }

    /// `a * b + c`, fused where the host has FMA.
    fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let t = self.b.ins().fmul(a, b);
            self.b.ins().fadd(t, c)
        }
    }

    /// Horner evaluation of `c[0] * x^(n-1) + ... + c[n-1]`.
    fn horner(&mut self, x: Value, c: &[f32]) -> Value {
        let mut acc = self.splat(c[0]);
        for &k in &c[1..] {
            let kk = self.splat(k);
            acc = self.mul_add(acc, x, kk);
        }
        acc
    }

    fn vexp(&mut self, x: Value) -> Value {
        // Clamp so that 2^n below stays representable; beyond +88.72 the final
        // products overflow to +inf; from -104 (where e^x < 2^-150, half the
        // least subnormal) they round to 0, not to 2^-149; NaN propagates
        // through the polynomial.
        let (hi, lo) = (self.splat(EXP_HI), self.splat(EXP_LO));
        let xc = self.b.ins().fmax(x, lo);
        let xc = self.b.ins().fmin(xc, hi);
        // n = round(x / ln 2) by the 1.5 * 2^23 trick: adding it rounds to an
        // integer, and its low mantissa bits are n.
        let log2e = self.splat(std::f32::consts::LOG2_E);
        let magic = self.splat(EXP_ROUND);
        let t = self.mul_add(xc, log2e, magic);
        let fx = self.b.ins().fsub(t, magic);
        let (c1, c2) = (self.splat(-LN2_HI), self.splat(-LN2_LO));
        let r = self.mul_add(fx, c1, xc);
        let r = self.mul_add(fx, c2, r);
        let p = self.horner(r, &EXP_POLY);
        let z = self.b.ins().fmul(r, r);
        let y = self.mul_add(p, z, r);
        let one = self.splat(1.0);
        let mut y = self.b.ins().fadd(y, one);
        // y * 2^n as y * 2^(n/2) * 2^(n - n/2): both factors stay normal over
        // the whole clamped range, so subnormal results come out right.
        let tb = self.bits_of(t);
        let mb = self.bits_of(magic);
        let n = self.b.ins().isub(tb, mb);
        let n1 = self.b.ins().sshr_imm_s(n, 1);
        let n2 = self.b.ins().isub(n, n1);
        let bias = self.isplat(127);
        for k in [n1, n2] {
            let e = self.b.ins().iadd(k, bias);
            let e = self.b.ins().ishl_imm_s(e, 23);
            let f = self.floats_of(e);
            y = self.b.ins().fmul(y, f);
        }
        y
    }

    fn vlog(&mut self, x: Value) -> Value {
        // Denormals are scaled into the normal range first.
        let min = self.splat(f32::MIN_POSITIVE);
        let small = self.b.ins().fcmp(FloatCC::LessThan, x, min);
        let scale = self.splat(LOG_SUBNORMAL_SCALE);
        let xs = self.b.ins().fmul(x, scale);
        let xn = self.vselect(small, xs, x);
        let bits = self.bits_of(xn);
        let e = self.b.ins().sshr_imm_s(bits, 23);
        let e126 = self.isplat(126);
        let e = self.b.ins().isub(e, e126);
        let mm = self.isplat(0x007f_ffff);
        let m = self.b.ins().band(bits, mm);
        let half = self.isplat(0x3f00_0000);
        let m = self.b.ins().bor(m, half);
        let m = self.floats_of(m);
        let e = self.b.ins().fcvt_from_sint(V, e);
        // m in [0.5, 1): fold into [sqrt(1/2), sqrt(2)).
        let sqrth = self.splat(std::f32::consts::FRAC_1_SQRT_2);
        let lt = self.b.ins().fcmp(FloatCC::LessThan, m, sqrth);
        let one = self.splat(1.0);
        let e1 = self.b.ins().fsub(e, one);
        let e = self.vselect(lt, e1, e);
        let m2 = self.b.ins().fadd(m, m);
        let m = self.vselect(lt, m2, m);
        let xr = self.b.ins().fsub(m, one);
        let z = self.b.ins().fmul(xr, xr);
        let p = self.horner(xr, &LOG_POLY);
        let y = self.b.ins().fmul(p, xr);
        let y = self.b.ins().fmul(y, z);
        let c2 = self.splat(LN2_LO);
        let t = self.b.ins().fmul(e, c2);
        let y = self.b.ins().fadd(y, t);
        let mhalf = self.splat(-0.5);
        let t = self.b.ins().fmul(z, mhalf);
        let y = self.b.ins().fadd(y, t);
        let r = self.b.ins().fadd(xr, y);
        let c1 = self.splat(LN2_HI);
        let t = self.b.ins().fmul(e, c1);
        let r = self.b.ins().fadd(r, t);
        let ln_scale = self.splat(LOG_SUBNORMAL_SHIFT);
        let rs = self.b.ins().fsub(r, ln_scale);
        let r = self.vselect(small, rs, r);
        // log(0) = -inf, log(+inf) = +inf, log(<0) = NaN, NaN stays NaN.
        let zero = self.splat(0.0);
        let inf = self.splat(f32::INFINITY);
        let ninf = self.splat(f32::NEG_INFINITY);
        let nan = self.splat(f32::NAN);
        let is0 = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let isinf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        let neg = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let isnan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        let r = self.vselect(is0, ninf, r);
        let r = self.vselect(isinf, inf, r);
        let bad = self.b.ins().bor(neg, isnan);
        self.vselect(bad, nan, r)
    }

    /// A non-negative `mag` with the sign of `sign_of`.
    fn copysign(&mut self, mag: Value, sign_of: Value) -> Value {
        let sm = self.isplat(i32::MIN);
        let sb = self.bits_of(sign_of);
        let sign = self.b.ins().band(sb, sm);
        let mb = self.bits_of(mag);
        let r = self.b.ins().bor(mb, sign);
        self.floats_of(r)
    }

    fn vtanh(&mut self, x: Value) -> Value {
        // tanh|x| = (1 - t) / (1 + t) with t = exp(-2|x|), then x's sign.
        let ax = self.b.ins().fabs(x);
        let m2 = self.splat(-2.0);
        let a = self.b.ins().fmul(ax, m2);
        let t = self.vexp(a);
        let one = self.splat(1.0);
        let n = self.b.ins().fsub(one, t);
        let d = self.b.ins().fadd(one, t);
        let r = self.b.ins().fdiv(n, d);
        let r = self.copysign(r, x);
        // Near 0, 1 - t cancels: the odd Taylor polynomial there (relative
        // error under 3e-9 for |x| < 1/8).
        let x2 = self.b.ins().fmul(x, x);
        let p = self.horner(x2, &TANH_SMALL);
        let p = self.b.ins().fmul(p, x);
        let lim = self.splat(TANH_SMALL_BELOW);
        let small = self.b.ins().fcmp(FloatCC::LessThan, ax, lim);
        self.vselect(small, p, r)
    }

    fn vsigmoid(&mut self, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.vexp(nx);
        let one = self.splat(1.0);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    fn verf(&mut self, x: Value) -> Value {
        // The rational approximation of the row code (`kiln_rt::rows`)
        // on x clamped to [-4, 4], with a division: relative accuracy near
        // 0, no exp. Then clamped to [-1, 1] and exactly +/-1 from
        // `ERF_ONE`, where f32 erf rounds to 1 (GELU of large negative x
        // is then exactly -0). NaN goes through every step.
        let (lo, hi) = (self.splat(-ERF_CLAMP), self.splat(ERF_CLAMP));
        let xc = self.b.ins().fmax(x, lo);
        let xc = self.b.ins().fmin(xc, hi);
        let x2 = self.b.ins().fmul(xc, xc);
        let p = self.horner(x2, &ERF_NUM);
        let q = self.horner(x2, &ERF_DEN);
        // x times P/Q (not xP / Q: xP of a tiny x is subnormal).
        let r = self.b.ins().fdiv(p, q);
        let r = self.b.ins().fmul(xc, r);
        let one = self.splat(1.0);
        let m1 = self.splat(-1.0);
        let r = self.b.ins().fmax(r, m1);
        let r = self.b.ins().fmin(r, one);
        let ax = self.b.ins().fabs(x);
        let t = self.splat(ERF_ONE);
        let big = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, ax, t);
        let s1 = self.copysign(one, x);
        self.vselect(big, s1, r)
    }

    /// `f` of four lanes: inline for an `f` that [`has_vector_form`]; the
    /// others (which `vectorizable` keeps out of vector code) lane by lane
    /// through the call the scalar code makes.
    pub(super) fn vunary(&mut self, f: UnaryOp, x: Value) -> Value {
        match f {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Recip => {
                let one = self.splat(1.0);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Rsqrt => {
                let one = self.splat(1.0);
                let s = self.b.ins().sqrt(x);
                self.b.ins().fdiv(one, s)
            }
            UnaryOp::Floor => self.b.ins().floor(x),
            UnaryOp::Ceil => self.b.ins().ceil(x),
            UnaryOp::Round => self.b.ins().nearest(x),
            UnaryOp::Exp => self.vexp(x),
            UnaryOp::Log => self.vlog(x),
            UnaryOp::Tanh => self.vtanh(x),
            UnaryOp::Sigmoid => self.vsigmoid(x),
            UnaryOp::Erf => self.verf(x),
            UnaryOp::Sign
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
                let code = self.b.ins().iconst(types::I32, i64::from(f.code()));
                let mut r = x;
                for lane in 0..LANES as u8 {
                    let e = self.b.ins().extractlane(x, lane);
                    let y = self.call("kiln_unary_f32", &[code, e]);
                    r = self.b.ins().insertlane(r, y, lane);
                }
                r
            }
        }
    }

    fn vbinary(&mut self, f: BinaryOp, a: Value, b: Value) -> Value {
        let cc = match f {
            BinaryOp::Add => return self.b.ins().fadd(a, b),
            BinaryOp::Sub => return self.b.ins().fsub(a, b),
            BinaryOp::Mul => return self.b.ins().fmul(a, b),
            BinaryOp::Div => return self.b.ins().fdiv(a, b),
            BinaryOp::Max => return self.b.ins().fmax(a, b),
            BinaryOp::Min => return self.b.ins().fmin(a, b),
            BinaryOp::Eq => FloatCC::Equal,
            BinaryOp::Ne => FloatCC::NotEqual,
            BinaryOp::Lt => FloatCC::LessThan,
            BinaryOp::Le => FloatCC::LessThanOrEqual,
            BinaryOp::Gt => FloatCC::GreaterThan,
            BinaryOp::Ge => FloatCC::GreaterThanOrEqual,
            BinaryOp::Pow | BinaryOp::Rem | BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                unreachable!("{f:?} has no vector form (checked by vectorizable)")
            }
        };
        self.b.ins().fcmp(cc, a, b)
    }

    /// `max(v, c)` or `min(v, c)` for a constant `c` (its splat `cv`) in
    /// one `maxps` / `minps`, where that has the same meaning: Cranelift's
    /// `fmax` / `fmin` (NaN wins, -0 < +0) take eight instructions, and
    /// ReLU, ReLU6 and hard-swish are these. The hardware returns its
    /// second operand unless the first compares greater (less), so `v`
    /// second passes a NaN through and keeps `v` where `v == c`, the same
    /// bits unless they are zeros of opposite signs: `max(-0, +0)` would
    /// be -0, so `+0` is added after (changing only a -0); `min(+0, -0)`
    /// has no such repair, so `min` with -0 keeps the general form (`None`).
    fn vclamp(&mut self, f: BinaryOp, v: Value, cv: Value, c: f32) -> Option<Value> {
        if c.is_nan() || (f == BinaryOp::Min && c.to_bits() == 0x8000_0000) {
            return None;
        }
        let r = if f == BinaryOp::Max {
            // maxps cv, v: cv where v < cv, else v.
            let lt = self.b.ins().fcmp(FloatCC::LessThan, v, cv);
            let m = self.floats_of(lt);
            let r = self.b.ins().bitselect(m, cv, v);
            if c.to_bits() == 0 {
                let zero = self.splat(0.0);
                self.b.ins().fadd(r, zero)
            } else {
                r
            }
        } else {
            // minps cv, v: cv where cv < v, else v.
            let lt = self.b.ins().fcmp(FloatCC::LessThan, cv, v);
            let m = self.floats_of(lt);
            self.b.ins().bitselect(m, cv, v)
        };
        Some(r)
    }

    fn vload(&mut self, a: &Access, idx: &[Value], last: usize) -> Value {
        let off = self.index(&a.offset, idx);
        let addr = self.address(a.buffer, off);
        if unit_stride(a, last) == Some(1) {
            self.b.ins().load(V, flags(), addr, 0)
        } else {
            let s = self.b.ins().load(types::F32, flags(), addr, 0);
            self.b.ins().splat(V, s)
        }
    }

    fn vprogram(
        &mut self,
        p: &ElementProgram,
        inputs: &[Access],
        idx: &[Value],
        acc: Option<Value>,
    ) -> Value {
        let last = idx.len() - 1;
        let mut vals: Vec<Value> = Vec::with_capacity(p.instrs.len());
        for ins in &p.instrs {
            let v = match ins {
                Instr::Load(a) => self.vload(&inputs[*a], idx, last),
                Instr::Const(c) => self.splat(c.to_f64() as f32),
                Instr::Unary(f, a) => self.vunary(*f, vals[*a]),
                Instr::Binary(f @ (BinaryOp::Max | BinaryOp::Min), a, b) => {
                    let konst = |i: usize| match &p.instrs[i] {
                        Instr::Const(c) => Some(c.to_f64() as f32),
                        _ => None,
                    };
                    // Both are commutative (NaN wins, -0 < +0).
                    let clamp = match (konst(*a), konst(*b)) {
                        (_, Some(c)) => self.vclamp(*f, vals[*a], vals[*b], c),
                        (Some(c), _) => self.vclamp(*f, vals[*b], vals[*a], c),
                        _ => None,
                    };
                    clamp.unwrap_or_else(|| self.vbinary(*f, vals[*a], vals[*b]))
                }
                Instr::Binary(f, a, b) => self.vbinary(*f, vals[*a], vals[*b]),
                Instr::Select(c, a, b) => self.vselect(vals[*c], vals[*a], vals[*b]),
                Instr::Acc => acc.expect("checked by vectorizable"),
                _ => unreachable!("checked by vectorizable"),
            };
            vals.push(v);
        }
        vals[p.result]
    }

    /// A loop of `var` over `start..end`: `vector` runs `step` iterations at
    /// a time while that many remain, then `scalar` one at a time.
    pub(super) fn vector_loop(
        &mut self,
        var: cranelift_frontend::Variable,
        (start, end): (Value, Value),
        step: usize,
        vector: &mut dyn FnMut(&mut Self) -> Result<()>,
        scalar: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        use cranelift_codegen::ir::condcodes::IntCC;
        self.b.def_var(var, start);
        let (vh, vb, rh, rb, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().jump(vh, &[]);
        self.b.switch_to_block(vh);
        let i = self.b.use_var(var);
        let i4 = self.b.ins().iadd_imm_s(i, step as i64);
        let c = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, i4, end);
        self.b.ins().brif(c, vb, &[], rh, &[]);
        self.b.switch_to_block(vb);
        vector(self)?;
        let i = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(i, step as i64);
        self.b.def_var(var, next);
        self.b.ins().jump(vh, &[]);
        self.b.switch_to_block(rh);
        let i = self.b.use_var(var);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(c, rb, &[], exit, &[]);
        self.b.switch_to_block(rb);
        scalar(self)?;
        let i = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(var, next);
        self.b.ins().jump(rh, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// The innermost dim of an elementwise kernel (or of a reduction's row
    /// map): four lanes at a time, then the remainder one element at a time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vector_row(
        &mut self,
        out: BufferId,
        shape: &[usize],
        strides: &[usize],
        inputs: &[Access],
        program: &ElementProgram,
        acc: RowAcc,
    ) -> Result<()> {
        let last = shape.len() - 1;
        let n = shape[last];
        let var = self.loop_vars[last];
        // A rank-1 kernel's only loop is the one the runtime may split: it
        // runs over lo..hi; any other innermost loop over 0..n.
        let (start, end) = if last == 0 && matches!(acc, RowAcc::None | RowAcc::FromOut) {
            self.range
        } else {
            (
                self.b.ins().iconst(types::I64, 0),
                self.b.ins().iconst(types::I64, n as i64),
            )
        };
        if self.row_code(program, n) {
            let access = match acc {
                RowAcc::None => RowAccess::None,
                RowAcc::FromOut => RowAccess::Row,
                RowAcc::Value(_) => RowAccess::Scalar,
            };
            let stride = |a: &Access| unit_stride(a, last);
            if let Some(rp) = RowProgram::from_elements(self.prog, inputs, program, &stride, access)
            {
                return self.wide_row(
                    Box::new(rp),
                    var,
                    (start, end),
                    out,
                    strides,
                    inputs,
                    acc,
                    false,
                );
            }
        }
        let splat_acc = match acc {
            RowAcc::Value(v) => Some(self.b.ins().splat(V, v)),
            _ => None,
        };
        self.vector_loop(
            var,
            (start, end),
            LANES,
            &mut |e| {
                let idx = e.idx();
                let lin = e.linear(&idx, strides);
                let addr = e.address(out, lin);
                let a = match acc {
                    RowAcc::None => None,
                    RowAcc::FromOut => Some(e.b.ins().load(V, flags(), addr, 0)),
                    RowAcc::Value(_) => splat_acc,
                };
                let v = e.vprogram(program, inputs, &idx, a);
                e.b.ins().store(flags(), v, addr, 0);
                Ok(())
            },
            &mut |e| {
                let idx = e.idx();
                let lin = e.linear(&idx, strides);
                let addr = e.address(out, lin);
                let a = match acc {
                    RowAcc::None => None,
                    RowAcc::FromOut => Some(e.b.ins().load(types::F32, flags(), addr, 0)),
                    RowAcc::Value(v) => Some(v),
                };
                let v = e.program(program, inputs, &idx, a.map(|a| (a, DType::F32)))?;
                e.store(out, lin, v);
                Ok(())
            },
        )
    }

    /// Where a reduction's row map starts by recomputing the reduced value
    /// (its instructions up to the body's result are the body's), the map
    /// rewritten to load that value from its own output instead, with the
    /// extra input: the reduction then keeps each value there. Only where
    /// the body and the map both run as row-code rows (the reduction row's
    /// call is what keeps the values).
    pub(super) fn map_reuse(
        &self,
        shape: &[usize],
        inputs: &[Access],
        body: &ElementProgram,
        map: Option<(BufferId, &ElementProgram)>,
        strides: &[usize],
    ) -> Option<(Vec<Access>, ElementProgram)> {
        let (mo, mp) = map?;
        let last = shape.len() - 1;
        let rb = body.result;
        // The kept values overwrite the map's output as the reduction goes;
        // no input may live there.
        let span = |b: BufferId| match self.prog.buffer(b).storage {
            Storage::Arena { offset } => Some(offset..offset + self.prog.buffer(b).size_bytes()),
            _ => None,
        };
        let overlaps = inputs.iter().any(|a| {
            a.buffer == mo
                || matches!((span(a.buffer), span(mo)), (Some(x), Some(y)) if x.start < y.end && y.start < x.end)
        });
        if overlaps
            || mp.instrs.len() <= rb
            || mp.instrs[..=rb] != body.instrs[..=rb]
            || !self.row_code(body, shape[last])
            || !self.row_code(mp, shape[last])
        {
            return None;
        }
        let mut offset = Index::constant(0);
        for (d, &s) in strides.iter().enumerate() {
            offset = offset.add(&Index::var(d).mul(s as i64));
        }
        let mut ins = inputs.to_vec();
        ins.push(Access {
            buffer: mo,
            offset,
            mask: Vec::new(),
        });
        let mut prog = mp.clone();
        prog.instrs[rb] = Instr::Load(inputs.len());
        let stride = |a: &Access| unit_stride(a, last);
        RowProgram::from_elements(self.prog, inputs, body, &stride, RowAccess::None)?;
        RowProgram::from_elements(self.prog, &ins, &prog, &stride, RowAccess::Scalar)?;
        Some((ins, prog))
    }

    /// A stack table of the addresses of every input's element at the
    /// current loop indices, then `acc` (where given); returns its address.
    fn row_pointers(&mut self, inputs: &[Access], acc: Option<Value>) -> Value {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let idx = self.idx();
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            ((inputs.len() + 1) * 8) as u32,
            3,
        ));
        for (k, a) in inputs.iter().enumerate() {
            let off = self.index(&a.offset, &idx);
            let addr = self.address(a.buffer, off);
            self.b
                .ins()
                .stack_store(types::I64, addr, slot, (k * 8) as i32);
        }
        if let Some(a) = acc {
            self.b
                .ins()
                .stack_store(types::I64, a, slot, (inputs.len() * 8) as i32);
        }
        self.b.ins().stack_addr(types::I64, slot, 0)
    }

    /// The address compiled code passes for row program `rp`: read-only
    /// data of an object, or (JIT) the boxed program this function keeps.
    fn row_address(&mut self, rp: Box<RowProgram>) -> Result<Value> {
        if let Some(place) = self.row_data.as_mut() {
            let gv = place(&rp, self.b.func)?;
            return Ok(self.b.ins().symbol_value(types::I64, gv));
        }
        let a = self
            .b
            .ins()
            .iconst(types::I64, &*rp as *const RowProgram as i64);
        self.rows.push(rp);
        Ok(a)
    }

    /// An elementwise kernel whose innermost two dims run as one segmented
    /// row-code row per iteration of the other loops (see
    /// `kiln_rt::rows::RowProgram::segmented`): where every input
    /// read along the row continues contiguously into the next row (a
    /// coefficient of `n` on the second-to-last variable) and every input
    /// read as a scalar per row moves by a fixed step from row to row. A
    /// convolution's per-channel bias and activation over small planes is
    /// the case: one call instead of one short row per channel. Returns
    /// `false` (nothing emitted) where the kernel does not have that form.
    pub(super) fn segmented_rows(
        &mut self,
        out: BufferId,
        shape: &[usize],
        inputs: &[Access],
        program: &ElementProgram,
        acc_from_out: bool,
    ) -> Result<bool> {
        let Some(last) = shape.len().checked_sub(1).filter(|&l| l > 0) else {
            return Ok(false);
        };
        let (outer, n) = (last - 1, shape[last]);
        let flat = shape[outer] * n;
        let fits = n >= LANES * 4
            && self.row_code(program, flat)
            && self.prog.buffer(out).dtype == DType::F32
            && program.split_row_select(last).is_none()
            && inputs.iter().all(|a| match unit_stride(a, last) {
                Some(1) => coefficient(a, outer) == Some(n as i64),
                Some(0) => coefficient(a, outer).is_some(),
                _ => false,
            });
        if !fits {
            return Ok(false);
        }
        let access = if acc_from_out {
            RowAccess::Row
        } else {
            RowAccess::None
        };
        let stride = |a: &Access| unit_stride(a, last);
        let Some(rp) = RowProgram::from_elements(self.prog, inputs, program, &stride, access)
            .and_then(|rp| {
                rp.segmented(n, &|k| {
                    inputs
                        .get(k as usize)
                        .and_then(|a| coefficient(a, outer))
                        .unwrap_or(0)
                })
            })
        else {
            return Ok(false);
        };
        let rp = Box::new(rp);
        let dims: Vec<(usize, usize)> = shape[..outer].iter().copied().enumerate().collect();
        let strides = kiln_graph::shape::strides(shape);
        let (var, row) = (self.loop_vars[outer], self.loop_vars[last]);
        self.loops(&dims, &mut |e| {
            // Loop variable 0 is the one the runtime splits: lo..hi of it.
            let (start, end) = if outer == 0 {
                e.range
            } else {
                (
                    e.b.ins().iconst(types::I64, 0),
                    e.b.ins().iconst(types::I64, shape[outer] as i64),
                )
            };
            let zero = e.b.ins().iconst(types::I64, 0);
            e.b.def_var(row, zero);
            let rows = e.b.ins().isub(end, start);
            let len = e.b.ins().imul_imm_s(rows, n as i64);
            let acc = if acc_from_out {
                RowAcc::FromOut
            } else {
                RowAcc::None
            };
            e.wide_row(
                rp.clone(),
                var,
                (start, len),
                out,
                &strides,
                inputs,
                acc,
                true,
            )
        })?;
        Ok(true)
    }

    /// A row handed to `kiln_row_f32`: the address of its first element
    /// in every input (and of its accumulator), then one call. `length`:
    /// the second value of the range is the row's length, not its end.
    #[allow(clippy::too_many_arguments)]
    fn wide_row(
        &mut self,
        rp: Box<RowProgram>,
        var: cranelift_frontend::Variable,
        (start, end): (Value, Value),
        out: BufferId,
        strides: &[usize],
        inputs: &[Access],
        acc: RowAcc,
        length: bool,
    ) -> Result<()> {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        self.b.def_var(var, start);
        let idx = self.idx();
        let lin = self.linear(&idx, strides);
        let out_addr = self.address(out, lin);
        let acc_addr = match acc {
            RowAcc::None => None,
            RowAcc::FromOut => Some(out_addr),
            RowAcc::Value(v) => {
                let s = self.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    4,
                    2,
                ));
                self.b.ins().stack_store(types::I64, v, s, 0);
                Some(self.b.ins().stack_addr(types::I64, s, 0))
            }
        };
        let table = self.row_pointers(inputs, acc_addr);
        let n = if length {
            end
        } else {
            self.b.ins().isub(end, start)
        };
        let prog = self.row_address(rp)?;
        let isa = self.wide.expect("a row only where the row code runs");
        self.call_void(isa.row_symbol(), &[prog, table, out_addr, n]);
        Ok(())
    }

    /// The innermost reduced dim of an f32 reduction: four partial results in
    /// lanes, the remainder in a scalar, combined at the end. Returns the
    /// row's reduced value.
    pub(super) fn vector_reduce(
        &mut self,
        f: ReduceOp,
        shape: &[usize],
        inputs: &[Access],
        body: &ElementProgram,
        acc: Value,
        keep: Option<(BufferId, &[usize])>,
    ) -> Result<Value> {
        let last = shape.len() - 1;
        let var = self.loop_vars[last];
        if let Some(isa) = self.wide.filter(|_| self.row_code(body, shape[last])) {
            let stride = |a: &Access| unit_stride(a, last);
            if let Some(rp) =
                RowProgram::from_elements(self.prog, inputs, body, &stride, RowAccess::None)
            {
                let rp = Box::new(rp);
                let start = self.b.ins().iconst(types::I64, 0);
                self.b.def_var(var, start);
                let table = self.row_pointers(inputs, None);
                let n = self.b.ins().iconst(types::I64, shape[last] as i64);
                let prog = self.row_address(rp)?;
                let code = self
                    .b
                    .ins()
                    .iconst(types::I32, super::wide::reduce_code(f) as i64);
                let store = match keep {
                    Some((buf, strides)) => {
                        let idx = self.idx();
                        let lin = self.linear(&idx, strides);
                        self.address(buf, lin)
                    }
                    None => self.b.ins().iconst(types::I64, 0),
                };
                let r = self.call(isa.reduce_symbol(), &[prog, table, n, code, store]);
                return Ok(reduce_combine(self, f, acc, r));
            }
        }
        // Two vectors of lanes, each started from the identity, so that
        // consecutive combines do not wait on each other (a NaN-aware f32x4
        // max is several instructions deep); the incoming value folds in once.
        let vaccs = [self.b.declare_var(V), self.b.declare_var(V)];
        let identity = match f {
            ReduceOp::Sum => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max => f32::NEG_INFINITY,
            ReduceOp::Min => f32::INFINITY,
        };
        let id = self.splat(identity);
        for v in vaccs {
            self.b.def_var(v, id);
        }
        let sacc = self.b.declare_var(types::F32);
        self.b.def_var(sacc, acc);
        let start = self.b.ins().iconst(types::I64, 0);
        let end = self.b.ins().iconst(types::I64, shape[last] as i64);
        self.vector_loop(
            var,
            (start, end),
            2 * LANES,
            &mut |e| {
                let i = e.b.use_var(var);
                for (k, vacc) in vaccs.into_iter().enumerate() {
                    let at = e.b.ins().iadd_imm_s(i, (k * LANES) as i64);
                    e.b.def_var(var, at);
                    let idx = e.idx();
                    let v = e.vprogram(body, inputs, &idx, None);
                    let a = e.b.use_var(vacc);
                    let n = reduce_combine(e, f, a, v);
                    e.b.def_var(vacc, n);
                }
                e.b.def_var(var, i);
                Ok(())
            },
            &mut |e| {
                let idx = e.idx();
                let v = e.program(body, inputs, &idx, None)?;
                let a = e.b.use_var(sacc);
                let n = reduce_combine(e, f, a, v);
                e.b.def_var(sacc, n);
                Ok(())
            },
        )?;
        let (a0, a1) = (self.b.use_var(vaccs[0]), self.b.use_var(vaccs[1]));
        let lanes = reduce_combine(self, f, a0, a1);
        let mut r = self.b.use_var(sacc);
        for l in 0..LANES as u8 {
            let x = self.b.ins().extractlane(lanes, l);
            r = reduce_combine(self, f, r, x);
        }
        Ok(r)
    }
}

/// Where the `Acc` of a vectorized row comes from.
#[derive(Clone, Copy)]
pub(super) enum RowAcc {
    /// No `Acc`.
    None,
    /// The element already in the output (epilogues applied in place).
    FromOut,
    /// A scalar f32 (the reduced value of a reduction's row).
    Value(Value),
}

fn reduce_combine(e: &mut Emitter<'_, '_>, f: ReduceOp, a: Value, v: Value) -> Value {
    match f {
        ReduceOp::Sum => e.b.ins().fadd(a, v),
        ReduceOp::Prod => e.b.ins().fmul(a, v),
        ReduceOp::Max => e.b.ins().fmax(a, v),
        ReduceOp::Min => e.b.ins().fmin(a, v),
    }
}

/// True when an f32 reduction's innermost loop can run in lanes: the last
/// dim is reduced, the body is vectorizable along it, and so is the map.
pub(crate) fn reduce_vectorizable(
    prog: &KernelProgram,
    shape: &[usize],
    axes: &[usize],
    inputs: &[Access],
    body: &ElementProgram,
    map: Option<(BufferId, &ElementProgram)>,
) -> bool {
    let Some(last) = shape.len().checked_sub(1) else {
        return false;
    };
    if !axes.contains(&last) || shape[last] < 2 * LANES {
        return false;
    }
    let ok_body = program_vectorizable(prog, shape, inputs, body, false) == Some(true);
    let ok_map = map.is_none_or(|(o, m)| {
        prog.buffer(o).dtype == DType::F32
            && program_vectorizable(prog, shape, inputs, m, true) == Some(true)
    });
    ok_body && ok_map
}

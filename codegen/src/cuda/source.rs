//! CUDA C for the elementwise and reduction kernels of a kernel program.
//!
//! Each kernel becomes one `extern "C" __global__` function whose
//! parameters are the device pointers of the buffers it touches (the
//! program's memory plan fixes them, so a launch, or a CUDA graph, binds
//! them once). An elementwise kernel runs a grid-stride loop over its
//! output's linear index and recovers the loop variables by division; a
//! reduction runs a warp per kept element where at least 32 elements are
//! reduced (lanes take strided parts, combine by shuffles, then split the
//! row map), else one thread per kept element looping over the reduced
//! ones, then its row map. Every scalar op means what `kiln-graph` says:
//! integer arithmetic wraps (done in unsigned), integer division by zero
//! gives 0, max and min propagate NaN, round is half to even, casts from
//! floats to integers saturate (NaN to 0) like Rust's `as`.
//!
//! Matrix products (cuBLAS) and primitive ops (`Kernel::Op`) get only their
//! epilogue, applied in place to their output.
//! Random ops use kiln-graph's counter-based generator (splitmix64 of seed
//! and element index), ported to CUDA C, so they give the reference's
//! samples up to libm rounding.

pub use super::op_source::{emit_matmul, emit_op, emit_scatter_add};
use std::fmt::Write;

use kiln_graph::{ArgOp, BinaryOp, DType, ReduceOp, Scalar, UnaryOp};
use kiln_optimizer::index::{Atom, Index};
use kiln_optimizer::kernel::{
    Access, BufferId, Cond, ElementProgram, Instr, Kernel, KernelProgram, ReduceKind,
};

/// One kernel's CUDA C: its entry point and the buffers its parameters
/// point at, in order.
#[derive(Clone, Debug)]
pub struct KernelSource {
    /// The function's name.
    pub name: String,
    /// The whole translation unit (prelude included).
    pub source: String,
    /// The kernel's function alone (see [`unit`]).
    pub function: String,
    /// Parameter `i` is the device pointer of `params[i]`; then one
    /// `long long` (elements or rows to cover).
    pub params: Vec<BufferId>,
    /// What the trailing count covers.
    pub count: usize,
    /// The kernel also takes, before the count, the address of an `int`
    /// error word, which it sets to its program kernel's index plus one
    /// when an input is out of range (an index of a gather).
    pub error_word: bool,
}

/// Elementwise kernels of at least this many elements take several per
/// thread and step (`CudaSettings::ilp`).
const ILP_MIN_ELEMENTS: usize = 1 << 20;

/// Helpers every kernel may use.
pub(super) const PRELUDE: &str = r#"
typedef long long i64;
typedef unsigned long long u64;
__device__ __forceinline__ i64 kfloordiv(i64 a, i64 k) { i64 q = a / k; return (a % k < 0) ? q - 1 : q; }
__device__ __forceinline__ i64 kmod(i64 a, i64 k) { i64 r = a % k; return r < 0 ? r + k : r; }
__device__ __forceinline__ float kmaxf(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b); }
__device__ __forceinline__ float kminf(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b); }
__device__ __forceinline__ double kmax(double a, double b) { return (a != a || b != b) ? __longlong_as_double(0x7ff8000000000000LL) : fmax(a, b); }
__device__ __forceinline__ double kmin(double a, double b) { return (a != a || b != b) ? __longlong_as_double(0x7ff8000000000000LL) : fmin(a, b); }
__device__ __forceinline__ int kdiv32(int a, int b) { return b == 0 ? 0 : (b == -1 ? (int)(0u - (unsigned)a) : a / b); }
__device__ __forceinline__ i64 kdiv64(i64 a, i64 b) { return b == 0 ? 0 : (b == -1 ? (i64)(0ull - (u64)a) : a / b); }
__device__ __forceinline__ int kf2i32(double x) { return x != x ? 0 : (x >= 2147483647.0 ? 2147483647 : (x <= -2147483648.0 ? (-2147483647 - 1) : (int)x)); }
__device__ __forceinline__ i64 kf2i64(double x) { return x != x ? 0 : (x >= 9223372036854775807.0 ? 9223372036854775807LL : (x <= -9223372036854775808.0 ? (-9223372036854775807LL - 1) : (i64)x)); }
__device__ __forceinline__ int kpow32(int a, int b) { if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0); unsigned r = 1, x = (unsigned)a; while (b > 0) { if (b & 1) r *= x; x *= x; b >>= 1; } return (int)r; }
__device__ __forceinline__ u64 ksplitmix(u64 z) { z += 0x9E3779B97F4A7C15ull; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull; z = (z ^ (z >> 27)) * 0x94D049BB133111EBull; return z ^ (z >> 31); }
__device__ __forceinline__ u64 kbits(u64 seed, u64 i) { return ksplitmix(ksplitmix(seed) ^ (i * 0xD2B74407B1CE6E93ull)); }
__device__ __forceinline__ double kunit(u64 seed, u64 i) { return (double)(kbits(seed, i) >> 11) * (1.0 / 9007199254740992.0); }
__device__ __forceinline__ double knormal(u64 seed, u64 i) { const double u1 = 1.0 - kunit(seed, 2 * i), u2 = kunit(seed, 2 * i + 1); return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2); }
__device__ __forceinline__ float kuniformf(u64 seed, u64 i, double low, double high) { const float l = (float)low, h = (float)high, u = (float)(kbits(seed, i) >> 40) * (1.0f / 16777216.0f); const float d = h - l; float v = isfinite(d) ? __fadd_rn(l, __fmul_rn(d, u)) : (float)(low + (high - low) * (double)u); return (v >= h && l < h) ? nextafterf(h, -1.0f / 0.0f) : v; }
__device__ __forceinline__ double kuniform(u64 seed, u64 i, double low, double high) { const double u = kunit(seed, i), d = high - low; double v = isfinite(d) ? __dadd_rn(low, __dmul_rn(d, u)) : __dadd_rn(__dmul_rn(low, 1.0 - u), __dmul_rn(high, u)); return (v >= high && low < high) ? nextafter(high, -1.0 / 0.0) : v; }
__device__ __forceinline__ float khalf2f(unsigned short h, int bf) { if (bf) return __int_as_float(((unsigned)h) << 16); const unsigned s = ((unsigned)h & 0x8000u) << 16, e = ((unsigned)h >> 10) & 0x1fu, m = (unsigned)h & 0x3ffu; if (e == 0x1fu) return __int_as_float((int)(s | 0x7f800000u | (m << 13))); if (e == 0u) return (s ? -1.0f : 1.0f) * (float)m * 5.9604644775390625e-8f; return __int_as_float((int)(s | ((e + 112u) << 23) | (m << 13))); }
__device__ __forceinline__ float kround_half(double x, int bf) { if (x != x) return __int_as_float(0x7fc00000); const double a = fabs(x); if (a == 0.0 || isinf(a)) return (float)x; int e; frexp(a, &e); const int emin = bf ? -126 : -14; const int lead = e - 1 < emin ? emin : e - 1; const double q = ldexp(1.0, lead - (bf ? 7 : 10)); double r = rint(a / q) * q; if (r > (bf ? 3.3895313892515355e38 : 65504.0)) r = 1.0 / 0.0; return (float)(x < 0 ? -r : r); }
__device__ __forceinline__ unsigned short kf2half(float v, int bf) { const float r = kround_half((double)v, bf); const unsigned u = (unsigned)__float_as_int(r); if (bf) return (unsigned short)(u >> 16); const unsigned s = (u >> 16) & 0x8000u, e = (u >> 23) & 0xffu, m = u & 0x7fffffu; if (e == 0xffu) return (unsigned short)(s | 0x7c00u | (m ? 0x200u : 0u)); if (e == 0u && m == 0u) return (unsigned short)s; const int E = (int)e - 127; if (E < -14) return (unsigned short)(s | (unsigned)(fabsf(r) * 16777216.0f)); return (unsigned short)(s | ((unsigned)(E + 15) << 10) | (m >> 13)); }
__device__ __forceinline__ i64 kclamp64(i64 x, i64 lo, i64 hi) { return x < lo ? lo : (x > hi ? hi : x); }
__device__ __forceinline__ u64 kf2u64(double x) { return x != x || x <= 0.0 ? 0ull : (x >= 18446744073709551615.0 ? 18446744073709551615ull : (u64)x); }
__device__ __forceinline__ u64 kpowu64(u64 a, u64 b) { u64 r = 1; while (b > 0) { if (b & 1) r *= a; a *= a; b >>= 1; } return r; }
__device__ __forceinline__ i64 kpow64(i64 a, i64 b) { if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0); u64 r = 1, x = (u64)a; while (b > 0) { if (b & 1) r *= x; x *= x; b >>= 1; } return (i64)r; }
"#;

/// One translation unit holding every kernel of `kernels` (the prelude
/// once): a program compiles with one NVRTC call and loads as one module.
pub fn unit(kernels: &[KernelSource]) -> String {
    let mut s = String::from(PRELUDE);
    for k in kernels {
        s.push('\n');
        s.push_str(&k.function);
    }
    s
}

/// The CUDA C type of `d`.
pub fn ctype(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I32 => "int",
        DType::I64 => "i64",
        DType::I8 => "signed char",
        DType::I16 => "short",
        DType::U8 => "unsigned char",
        DType::U16 => "unsigned short",
        DType::U32 => "unsigned",
        DType::U64 => "u64",
        DType::Bool => "bool",
        // Half values live in float registers (exactly) and in 16 bits in
        // memory (`load_expr`, `store_expr`).
        DType::F16 | DType::BF16 => "float",
    }
}

/// Element `idx` of the buffer at `ptr`, of dtype `t`, as its register type.
pub(super) fn load_expr(ptr: &str, idx: &str, t: DType) -> String {
    if t.is_half() {
        let bf = (t == DType::BF16) as u8;
        return format!("khalf2f(((unsigned short const*){ptr})[{idx}], {bf})");
    }
    format!("(({} const*){ptr})[{idx}]", ctype(t))
}

/// A statement storing `v` as element `idx` of the buffer at `ptr`.
pub(super) fn store_expr(ptr: &str, idx: &str, v: &str, t: DType) -> String {
    if t.is_half() {
        let bf = (t == DType::BF16) as u8;
        return format!("((unsigned short*){ptr})[{idx}] = kf2half({v}, {bf});");
    }
    format!("(({}*){ptr})[{idx}] = {v};", ctype(t))
}

/// Why a kernel has no CUDA C.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported(pub String);

/// The CUDA C of kernel `k` of `program`: the kernel itself for
/// elementwise and reduction kernels, the epilogue (applied in place to
/// the output) for matrix products and primitive ops, or `None` where
/// there is nothing to emit (an identity epilogue).
/// Large elementwise kernels take `ilp` elements per thread and step (1
/// to 8; `CudaSettings::ilp`).
pub fn emit(
    program: &KernelProgram,
    k: usize,
    ilp: usize,
) -> Result<Option<KernelSource>, Unsupported> {
    let ilp = ilp.clamp(1, 8);
    let name = format!("kiln_k{k}");
    match &program.kernels[k] {
        Kernel::Elementwise {
            out,
            shape,
            inputs,
            program: p,
        } => Emitter::new(program, inputs)
            .with_ilp(ilp)
            .elementwise(name, *out, shape, p, false)
            .map(Some),
        Kernel::Reduce {
            out,
            shape,
            axes,
            kind,
            inputs,
            body,
            map,
        } => Emitter::new(program, inputs)
            .reduce(name, *out, shape, axes, *kind, body, map.as_ref())
            .map(Some),
        Kernel::MatMul { out, epilogue, .. } | Kernel::Op { out, epilogue, .. } => {
            if epilogue.program.instrs.len() == 1 && epilogue.inputs.is_empty() {
                return Ok(None);
            }
            let shape = program.buffer(*out).shape.clone();
            Emitter::new(program, &epilogue.inputs)
                .with_ilp(ilp)
                .elementwise(
                    format!("{name}_epilogue"),
                    *out,
                    &shape,
                    &epilogue.program,
                    true,
                )
                .map(Some)
        }
    }
}

struct Emitter<'a> {
    prog: &'a KernelProgram,
    inputs: &'a [Access],
    params: Vec<BufferId>,
    body: String,
    next: usize,
    /// Elements per thread and step of large elementwise kernels.
    ilp: usize,
}

fn literal(s: Scalar) -> String {
    match s {
        Scalar::F32(v) => format!("__int_as_float({:#x})", v.to_bits() as i32),
        Scalar::F64(v) => format!("__longlong_as_double({:#x}LL)", v.to_bits() as i64),
        Scalar::I32(v) => format!("({v})"),
        Scalar::I64(v) if v == i64::MIN => "(-9223372036854775807LL - 1)".into(),
        Scalar::I64(v) => format!("({v}LL)"),
        Scalar::Bool(v) => (if v { "true" } else { "false" }).into(),
        Scalar::I8(v) => format!("((signed char){v})"),
        Scalar::I16(v) => format!("((short){v})"),
        Scalar::U8(v) => format!("((unsigned char){v}u)"),
        Scalar::U16(v) => format!("((unsigned short){v}u)"),
        Scalar::U32(v) => format!("({v}u)"),
        Scalar::U64(v) => format!("({v}ull)"),
        Scalar::F16(v) => format!("__int_as_float({:#x})", v.to_f32().to_bits() as i32),
        Scalar::BF16(v) => format!("__int_as_float({:#x})", v.to_f32().to_bits() as i32),
    }
}

impl<'a> Emitter<'a> {
    fn new(prog: &'a KernelProgram, inputs: &'a [Access]) -> Emitter<'a> {
        Emitter {
            prog,
            inputs,
            params: Vec::new(),
            body: String::new(),
            next: 0,
            ilp: 1,
        }
    }

    fn with_ilp(mut self, ilp: usize) -> Self {
        self.ilp = ilp;
        self
    }

    fn param(&mut self, b: BufferId) -> String {
        let i = match self.params.iter().position(|&p| p == b) {
            Some(i) => i,
            None => {
                self.params.push(b);
                self.params.len() - 1
            }
        };
        format!("p{i}")
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("v{}", self.next)
    }

    fn line(&mut self, indent: usize, s: &str) {
        for _ in 0..indent {
            self.body.push_str("    ");
        }
        self.body.push_str(s);
        self.body.push('\n');
    }

    fn index(e: &Index) -> String {
        let mut s = format!("({}LL", e.constant);
        for (c, a) in &e.terms {
            let atom = match a {
                Atom::Var(v) => format!("i{v}"),
                Atom::Div(inner, k) => format!("kfloordiv({}, {k}LL)", Self::index(inner)),
                Atom::Mod(inner, k) => format!("kmod({}, {k}LL)", Self::index(inner)),
            };
            let _ = write!(s, " + {c}LL * {atom}");
        }
        s.push(')');
        s
    }

    fn conds(cs: &[Cond]) -> String {
        if cs.is_empty() {
            return "true".into();
        }
        cs.iter()
            .map(|c| {
                let e = Self::index(&c.expr);
                format!("({e} >= {}LL && {e} < {}LL)", c.lo, c.hi)
            })
            .collect::<Vec<_>>()
            .join(" && ")
    }

    fn dtype_of(&self, b: BufferId) -> DType {
        self.prog.buffer(b).dtype
    }

    /// Emits `p`'s instructions at `indent`; returns the result's variable
    /// and type. `acc` is what `Instr::Acc` reads.
    fn program(
        &mut self,
        p: &ElementProgram,
        indent: usize,
        acc: Option<(&str, DType)>,
    ) -> Result<(String, DType), Unsupported> {
        let mut vals: Vec<(String, DType)> = Vec::with_capacity(p.instrs.len());
        for ins in &p.instrs {
            let (expr, t) = match ins {
                Instr::Load(a) => {
                    let acc = &self.inputs[*a];
                    let t = self.dtype_of(acc.buffer);
                    let ptr = self.param(acc.buffer);
                    let load = load_expr(&ptr, &Self::index(&acc.offset), t);
                    if acc.mask.is_empty() {
                        (load, t)
                    } else {
                        let zero = literal(Scalar::from_f64(t, 0.0));
                        (format!("({} ? {load} : {zero})", Self::conds(&acc.mask)), t)
                    }
                }
                Instr::Const(c) => (literal(*c), c.dtype()),
                Instr::Unary(f, a) => {
                    let (x, t) = vals[*a].clone();
                    (unary(*f, &x, t)?, t)
                }
                Instr::Binary(f, a, b) => {
                    let (x, t) = vals[*a].clone();
                    let (y, _) = vals[*b].clone();
                    let r = binary(*f, &x, &y, t)?;
                    (r, if f.is_comparison() { DType::Bool } else { t })
                }
                Instr::Select(c, a, b) => {
                    let t = vals[*a].1;
                    (
                        format!("({} ? {} : {})", vals[*c].0, vals[*a].0, vals[*b].0),
                        t,
                    )
                }
                Instr::Cast(to, a) => {
                    let (x, from) = vals[*a].clone();
                    (cast(&x, from, *to), *to)
                }
                Instr::Acc => match acc {
                    Some((v, t)) => (v.to_string(), t),
                    None => return Err(Unsupported("acc outside a reduction".into())),
                },
                Instr::InBounds(cs) => (Self::conds(cs), DType::Bool),
                Instr::IndexValue(e, t) => (cast(&Self::index(e), DType::I64, *t), *t),
                Instr::Random {
                    normal,
                    seed,
                    a,
                    b,
                    dtype,
                    index,
                } => {
                    let f = |v: f64| format!("__longlong_as_double({}LL)", v.to_bits() as i64);
                    let (i, sd) = (Self::index(index), format!("{seed}ull"));
                    let expr = match (normal, dtype) {
                        (true, DType::F32) => {
                            format!("(float)({} + {} * knormal({sd}, (u64)({i})))", f(*a), f(*b))
                        }
                        (true, _) => format!("({} + {} * knormal({sd}, (u64)({i})))", f(*a), f(*b)),
                        (false, DType::F32) => {
                            format!("kuniformf({sd}, (u64)({i}), {}, {})", f(*a), f(*b))
                        }
                        (false, _) => format!("kuniform({sd}, (u64)({i}), {}, {})", f(*a), f(*b)),
                    };
                    (expr, *dtype)
                }
            };
            let v = self.fresh();
            self.line(indent, &format!("const {} {v} = {expr};", ctype(t)));
            vals.push((v, t));
        }
        Ok(vals[p.result].clone())
    }

    /// Declares `i0..` from the linear index `lin` over `shape`.
    /// Declares `i{d}` for each dim of `vars` from `lin`, a linear index
    /// over those dims (row-major) that every caller keeps below their
    /// product: the outermost needs no remainder, a unit stride no
    /// division, and below 2^31 the arithmetic is 32-bit unsigned (64-bit
    /// division is a long call on GPUs; by a constant in 32 bits it is a
    /// multiply and a shift).
    fn unravel(&mut self, indent: usize, lin: &str, shape: &[usize], vars: &[usize]) {
        let total: usize = vars.iter().map(|&d| shape[d].max(1)).product();
        let narrow = total <= i32::MAX as usize;
        let (int, suffix, arg) = if narrow {
            ("(i64)", "u", format!("(unsigned){lin}"))
        } else {
            ("", "LL", lin.to_string())
        };
        let (mut stride, mut outer) = (total, 1usize);
        for &d in vars {
            let n = shape[d].max(1);
            stride /= n;
            let mut e = arg.clone();
            if stride != 1 {
                e = format!("({e} / {stride}{suffix})");
            }
            // Below the product, the outermost dims need no remainder.
            if outer != 1 {
                e = format!("({e} % {n}{suffix})");
            }
            outer *= n;
            self.line(indent, &format!("const i64 i{d} = {int}{e};"));
        }
    }

    fn finish(self, name: String, count: usize) -> KernelSource {
        let mut sig = Vec::new();
        for (i, _) in self.params.iter().enumerate() {
            sig.push(format!("void* __restrict__ p{i}"));
        }
        sig.push("const i64 count".into());
        let function = format!(
            "extern \"C\" __global__ void {name}({}) {{\n{}}}\n",
            sig.join(", "),
            self.body
        );
        KernelSource {
            name,
            source: format!("{PRELUDE}\n{function}"),
            function,
            params: self.params,
            count,
            error_word: false,
        }
    }

    fn elementwise(
        mut self,
        name: String,
        out: BufferId,
        shape: &[usize],
        p: &ElementProgram,
        acc_from_out: bool,
    ) -> Result<KernelSource, Unsupported> {
        let count: usize = shape.iter().product();
        let o = self.param(out);
        let ot = self.dtype_of(out);
        // Large kernels give each thread `ilp` elements a block apart per
        // step (still coalesced), so their loads are in flight together.
        let ilp = if count >= ILP_MIN_ELEMENTS {
            self.ilp
        } else {
            1
        };
        let ind = if ilp > 1 {
            self.line(
                1,
                &format!(
                    "for (i64 base = (i64)blockIdx.x * blockDim.x * {ilp} + threadIdx.x; base < count; base += (i64)gridDim.x * blockDim.x * {ilp}) {{"
                ),
            );
            self.line(2, "#pragma unroll");
            self.line(2, &format!("for (int u = 0; u < {ilp}; ++u) {{"));
            self.line(3, "const i64 t = base + (i64)u * blockDim.x;");
            self.line(3, "if (t >= count) break;");
            3
        } else {
            self.line(
                1,
                "for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {",
            );
            2
        };
        let vars: Vec<usize> = (0..shape.len()).collect();
        self.unravel(ind, "t", shape, &vars);
        if acc_from_out {
            self.line(
                ind,
                &format!("const {} acc = {};", ctype(ot), load_expr(&o, "t", ot)),
            );
        }
        let acc = acc_from_out.then_some(("acc", ot));
        let (v, t) = self.program(p, ind, acc)?;
        let v = if t == ot { v } else { cast(&v, t, ot) };
        self.line(ind, &store_expr(&o, "t", &v, ot));
        if ilp > 1 {
            self.line(2, "}");
        }
        self.line(1, "}");
        Ok(self.finish(name, count))
    }

    #[allow(clippy::too_many_arguments)]
    fn reduce(
        mut self,
        name: String,
        out: Option<BufferId>,
        shape: &[usize],
        axes: &[usize],
        kind: ReduceKind,
        body: &ElementProgram,
        map: Option<&(BufferId, ElementProgram)>,
    ) -> Result<KernelSource, Unsupported> {
        let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
        let count: usize = kept.iter().map(|&d| shape[d]).product();
        let reduced_n: usize = axes.iter().map(|&d| shape[d]).product();
        // The body's type, found by emitting it once into a scratch emitter.
        let in_t = {
            let mut probe = Emitter::new(self.prog, self.inputs);
            for &d in axes {
                probe.line(0, &format!("i64 i{d} = 0;"));
            }
            probe.program(body, 0, None)?.1
        };
        let (acc_t, init) = match kind {
            // Floats accumulate in double, as the reference does.
            ReduceKind::Value(f) => {
                let t = if in_t.is_float() { DType::F64 } else { in_t };
                let init = match (f, t) {
                    (ReduceOp::Sum, _) => literal(Scalar::from_f64(t, 0.0)),
                    (ReduceOp::Prod, _) => literal(Scalar::from_f64(t, 1.0)),
                    (ReduceOp::Max, DType::F64) => "(-1.0/0.0)".into(),
                    (ReduceOp::Min, DType::F64) => "(1.0/0.0)".into(),
                    (ReduceOp::Max, _) => literal(Scalar::int_min(t).expect("an integer")),
                    (ReduceOp::Min, _) => literal(Scalar::int_max(t).expect("an integer")),
                };
                (t, init)
            }
            ReduceKind::Arg(_) => (in_t, literal(Scalar::from_f64(in_t, 0.0))),
        };
        // A warp per kept element where rows are long enough to share:
        // lane `l` takes the reduced elements `l, l + 32, ...`, the lanes
        // combine by butterflies (every lane ends with the result), lane 0
        // writes it and the lanes split the row map. `count` covers 32
        // threads per kept element, so with a block size that is a
        // multiple of 32 every warp holds one kept element and its lanes
        // run the loop together (as full-mask shuffles need). Where the
        // block size is not a multiple of 32 (the host stand-in's single
        // thread), lane 0 alone does the whole row, as the serial form.
        let warp = reduced_n >= WARP_MIN_ROW;
        let (row, step) = if warp {
            self.line(1, "const int lanes = (blockDim.x & 31u) ? 1 : 32;");
            ("row", "lanes")
        } else {
            ("t", "1")
        };
        self.line(
            1,
            "for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < count; t += (i64)gridDim.x * blockDim.x) {",
        );
        if warp {
            self.line(2, "const i64 row = t >> 5;");
            self.line(2, "const int lane = (int)(t & 31);");
            self.line(2, "if (lane >= lanes) continue;");
        }
        let first = if warp { "lane" } else { "0" };
        self.unravel(2, row, shape, &kept);
        self.line(2, &format!("{} acc = {init};", ctype(acc_t)));
        self.line(2, "i64 best = 0; bool started = false;");
        self.line(
            2,
            &format!("for (i64 r = {first}; r < {reduced_n}LL; r += {step}) {{"),
        );
        self.unravel(3, "r", shape, axes);
        let (v, _) = self.program(body, 3, None)?;
        let in_float = in_t.is_float();
        match kind {
            ReduceKind::Value(f) => {
                let x = cast(&v, in_t, acc_t);
                let s = value_step(f, acc_t, "acc", &x);
                self.line(3, &format!("acc = {s};"));
            }
            ReduceKind::Arg(f) => {
                let better = arg_better(f, &v, "acc");
                let (nan, acc_nan) = if in_float {
                    (format!("({v} != {v})"), "(acc != acc)")
                } else {
                    ("false".to_string(), "false")
                };
                // First index of the extreme; a NaN wins and stays.
                self.line(
                    3,
                    &format!("if (!started || (!{acc_nan} && (({better}) || {nan}))) {{ acc = {v}; best = r; started = true; }}"),
                );
            }
        }
        self.line(2, "}");
        if warp {
            // Every lane has started (the row has at least 32 elements).
            self.line(2, "if (lanes == 32) {");
            self.line(3, "for (int o = 16; o > 0; o >>= 1) {");
            let other = shuffle_xor(acc_t, "acc", "o");
            self.line(4, &format!("const {} other = {other};", ctype(acc_t)));
            match kind {
                ReduceKind::Value(f) => {
                    let s = value_step(f, acc_t, "acc", "other");
                    self.line(4, &format!("acc = {s};"));
                }
                ReduceKind::Arg(f) => {
                    self.line(
                        4,
                        "const i64 other_best = __shfl_xor_sync(0xffffffffu, best, o);",
                    );
                    // The pair that comes first in (NaN first, then the
                    // extreme, then the smaller index): the same winner on
                    // both lanes of a butterfly, since indices differ.
                    let better = arg_better(f, "other", "acc");
                    let take = if in_float {
                        format!("(acc != acc) ? (other != other && other_best < best) : (other != other || {better} || (other == acc && other_best < best))")
                    } else {
                        format!("{better} || (other == acc && other_best < best)")
                    };
                    self.line(
                        4,
                        &format!("if ({take}) {{ acc = other; best = other_best; }}"),
                    );
                }
            }
            self.line(3, "}");
            self.line(2, "}");
        }
        let out_t = match kind {
            ReduceKind::Arg(_) => DType::I64,
            ReduceKind::Value(_) => in_t,
        };
        let result = match kind {
            ReduceKind::Arg(_) => "best".to_string(),
            ReduceKind::Value(_) => cast("acc", acc_t, out_t),
        };
        self.line(2, &format!("const {} result = {result};", ctype(out_t)));
        if let Some(o) = out {
            let p = self.param(o);
            let ot = self.dtype_of(o);
            let store = store_expr(&p, row, &cast("result", out_t, ot), ot);
            if warp {
                self.line(2, &format!("if (lane == 0) {store}"));
            } else {
                self.line(2, &store);
            }
        }
        if let Some((mo, mp)) = map {
            let strides = kiln_graph::shape::strides(shape);
            self.line(
                2,
                &format!("for (i64 r = {first}; r < {reduced_n}LL; r += {step}) {{"),
            );
            self.unravel(3, "r", shape, axes);
            let (v, t) = self.program(mp, 3, Some(("result", out_t)))?;
            let p = self.param(*mo);
            let mt = self.dtype_of(*mo);
            let lin = (0..shape.len())
                .map(|d| format!("{}LL * i{d}", strides[d]))
                .chain(std::iter::once("0LL".to_string()))
                .collect::<Vec<_>>()
                .join(" + ");
            self.line(3, &store_expr(&p, &lin, &cast(&v, t, mt), mt));
            self.line(2, "}");
        }
        self.line(1, "}");
        let count = if warp { count * 32 } else { count };
        Ok(self.finish(name, count))
    }
}

/// Reduced extents from which a reduction runs a warp per kept element.
const WARP_MIN_ROW: usize = 32;

/// `acc` combined with `x` by `f`, in `acc_t` (double for floats).
fn value_step(f: ReduceOp, acc_t: DType, acc: &str, x: &str) -> String {
    match (f, acc_t.is_float()) {
        (ReduceOp::Sum, true) => format!("{acc} + {x}"),
        (ReduceOp::Prod, true) => format!("{acc} * {x}"),
        (ReduceOp::Max, true) => format!("kmax({acc}, {x})"),
        (ReduceOp::Min, true) => format!("kmin({acc}, {x})"),
        (ReduceOp::Sum, false) => format!("({})((u64){acc} + (u64){x})", ctype(acc_t)),
        (ReduceOp::Prod, false) => format!("({})((u64){acc} * (u64){x})", ctype(acc_t)),
        (ReduceOp::Max, false) => format!("({acc} > {x} ? {acc} : {x})"),
        (ReduceOp::Min, false) => format!("({acc} < {x} ? {acc} : {x})"),
    }
}

/// Whether `v` is strictly more extreme than `acc` for `f`.
fn arg_better(f: ArgOp, v: &str, acc: &str) -> String {
    match f {
        ArgOp::ArgMax => format!("({v} > {acc})"),
        ArgOp::ArgMin => format!("({v} < {acc})"),
    }
}

/// Lane `lane ^ o`'s `x` (of type `t`) in a full warp.
fn shuffle_xor(t: DType, x: &str, o: &str) -> String {
    match t {
        DType::Bool => format!("(__shfl_xor_sync(0xffffffffu, (int){x}, {o}) != 0)"),
        _ => format!("__shfl_xor_sync(0xffffffffu, {x}, {o})"),
    }
}

fn unary(f: UnaryOp, x: &str, t: DType) -> Result<String, Unsupported> {
    use UnaryOp::*;
    let s = match (t, f) {
        (DType::F32, _) => match f {
            Neg => format!("(-{x})"),
            Abs => format!("fabsf({x})"),
            Sign => format!("({x} > 0.0f ? 1.0f : ({x} < 0.0f ? -1.0f : {x}))"),
            Exp => format!("expf({x})"),
            Log => format!("logf({x})"),
            Sqrt => format!("sqrtf({x})"),
            Rsqrt => format!("(1.0f / sqrtf({x}))"),
            Recip => format!("(1.0f / {x})"),
            Sin => format!("sinf({x})"),
            Cos => format!("cosf({x})"),
            Tan => format!("tanf({x})"),
            Asin => format!("asinf({x})"),
            Acos => format!("acosf({x})"),
            Atan => format!("atanf({x})"),
            Sinh => format!("sinhf({x})"),
            Cosh => format!("coshf({x})"),
            Asinh => format!("asinhf({x})"),
            Acosh => format!("acoshf({x})"),
            Atanh => format!("atanhf({x})"),
            Tanh => format!("tanhf({x})"),
            Sigmoid => format!("(1.0f / (1.0f + expf(-{x})))"),
            Erf => format!("erff({x})"),
            Floor => format!("floorf({x})"),
            Ceil => format!("ceilf({x})"),
            Round => format!("rintf({x})"),
            Not => return Err(Unsupported("not on f32".into())),
        },
        (DType::F64, _) => match f {
            Neg => format!("(-{x})"),
            Abs => format!("fabs({x})"),
            Sign => format!("({x} > 0.0 ? 1.0 : ({x} < 0.0 ? -1.0 : {x}))"),
            Exp => format!("exp({x})"),
            Log => format!("log({x})"),
            Sqrt => format!("sqrt({x})"),
            Rsqrt => format!("(1.0 / sqrt({x}))"),
            Recip => format!("(1.0 / {x})"),
            Sin => format!("sin({x})"),
            Cos => format!("cos({x})"),
            Tan => format!("tan({x})"),
            Asin => format!("asin({x})"),
            Acos => format!("acos({x})"),
            Atan => format!("atan({x})"),
            Sinh => format!("sinh({x})"),
            Cosh => format!("cosh({x})"),
            Asinh => format!("asinh({x})"),
            Acosh => format!("acosh({x})"),
            Atanh => format!("atanh({x})"),
            Tanh => format!("tanh({x})"),
            Sigmoid => format!("(1.0 / (1.0 + exp(-{x})))"),
            Erf => format!("erf({x})"),
            Floor => format!("floor({x})"),
            Ceil => format!("ceil({x})"),
            Round => format!("rint({x})"),
            Not => return Err(Unsupported("not on f64".into())),
        },
        (DType::Bool, Not) => format!("(!{x})"),
        (t, Neg) if t.is_int() => format!("({})(0ull - (u64){x})", ctype(t)),
        (t, Abs) if t.is_unsigned() => x.to_string(),
        (t, Abs) if t.is_int() => {
            format!("({x} < 0 ? ({})(0ull - (u64){x}) : {x})", ctype(t))
        }
        (t, Sign) if t.is_unsigned() => format!("({})({x} != 0)", ctype(t)),
        (t, Sign) if t.is_int() => format!("({})(({x} > 0) - ({x} < 0))", ctype(t)),
        (t, Not) if t.is_int() => format!("({})(~{x})", ctype(t)),
        (
            t,
            Neg | Abs | Sign | Exp | Log | Sqrt | Rsqrt | Recip | Sin | Cos | Tan | Asin | Acos
            | Atan | Sinh | Cosh | Asinh | Acosh | Atanh | Tanh | Sigmoid | Erf | Floor | Ceil
            | Round | Not,
        ) => {
            return Err(Unsupported(format!(
                "{f:?} on {t} has no CUDA form (the reference refuses it too)"
            )))
        }
    };
    Ok(s)
}

fn binary(f: BinaryOp, a: &str, b: &str, t: DType) -> Result<String, Unsupported> {
    use BinaryOp::*;
    let int = t.is_int();
    let c = ctype(t);
    let s = match f {
        Add | Sub | Mul if int => {
            let op = match f {
                Add => "+",
                Sub => "-",
                _ => "*",
            };
            format!("({c})((u64){a} {op} (u64){b})")
        }
        Add => format!("({a} + {b})"),
        Sub => format!("({a} - {b})"),
        Mul => format!("({a} * {b})"),
        Div => match t {
            DType::I32 => format!("kdiv32({a}, {b})"),
            DType::I64 => format!("kdiv64({a}, {b})"),
            // -128 / -1 is 128 in int, which wraps back to -128.
            DType::I8 | DType::I16 => format!("({c})kdiv32((int){a}, (int){b})"),
            _ if int => format!("({b} == 0 ? ({c})0 : ({c})({a} / {b}))"),
            _ => format!("({a} / {b})"),
        },
        Pow => match t {
            DType::F32 => format!("powf({a}, {b})"),
            DType::F64 => format!("pow({a}, {b})"),
            DType::I32 => format!("kpow32({a}, {b})"),
            DType::I64 => format!("kpow64({a}, {b})"),
            DType::U64 => format!("kpowu64({a}, {b})"),
            // Powers are consistent modulo 2^width.
            DType::I8 | DType::I16 | DType::U8 | DType::U16 | DType::U32 => {
                format!("({c})kpow64((i64){a}, (i64){b})")
            }
            DType::Bool | DType::F16 | DType::BF16 => {
                return Err(Unsupported(format!("pow on {t}")))
            }
        },
        Rem => match t {
            // IEEE fmod: exact in CUDA's math library too.
            DType::F32 => format!("fmodf({a}, {b})"),
            DType::F64 => format!("fmod({a}, {b})"),
            DType::Bool | DType::F16 | DType::BF16 => {
                return Err(Unsupported(format!("rem on {t}")))
            }
            // a - trunc(a / b) * b with Div's x / 0 = 0, modulo 2^64.
            _ => {
                let q = binary(Div, a, b, t)?;
                format!("({c})((u64){a} - (u64){q} * (u64){b})")
            }
        },
        Max => match t {
            DType::F32 => format!("kmaxf({a}, {b})"),
            DType::F64 => format!("kmax({a}, {b})"),
            _ => format!("({a} > {b} ? {a} : {b})"),
        },
        Min => match t {
            DType::F32 => format!("kminf({a}, {b})"),
            DType::F64 => format!("kmin({a}, {b})"),
            _ => format!("({a} < {b} ? {a} : {b})"),
        },
        Eq => format!("({a} == {b})"),
        Ne => format!("({a} != {b})"),
        Lt => format!("({a} < {b})"),
        Le => format!("({a} <= {b})"),
        Gt => format!("({a} > {b})"),
        Ge => format!("({a} >= {b})"),
        And if int => format!("({c})({a} & {b})"),
        Or if int => format!("({c})({a} | {b})"),
        Xor if int => format!("({c})({a} ^ {b})"),
        And => format!("({a} && {b})"),
        Or => format!("({a} || {b})"),
        Xor => format!("({a} != {b})"),
    };
    Ok(s)
}

/// `x` of type `from` as `to`, with Rust's `as` semantics.
fn cast(x: &str, from: DType, to: DType) -> String {
    if from == to {
        return x.to_string();
    }
    if to.is_half() {
        // One rounding from the exact value (`widen_half` brings only f32,
        // f64 and half values here), kept in a float.
        return format!("kround_half((double){x}, {})", (to == DType::BF16) as u8);
    }
    // A half value is an exact float.
    let from = if from.is_half() { DType::F32 } else { from };
    if from == to {
        return x.to_string();
    }
    match (from.is_float(), to) {
        (true, DType::I32) => format!("kf2i32((double){x})"),
        (true, DType::I64) => format!("kf2i64((double){x})"),
        (true, DType::U64) => format!("kf2u64((double){x})"),
        (true, t) if t.is_int() => {
            let (lo, hi) = (
                Scalar::int_min(t).expect("an integer").to_f64(),
                Scalar::int_max(t).expect("an integer").to_f64(),
            );
            format!(
                "(({})kclamp64(kf2i64((double){x}), {lo}LL, {hi}LL))",
                ctype(t)
            )
        }
        (_, DType::Bool) => format!("((double){x} != 0.0)"),
        _ => format!("(({}){x})", ctype(to)),
    }
}

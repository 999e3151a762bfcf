//! Long f32 elementwise rows in AVX-512 (16 lanes), where the host has it.
//!
//! Cranelift's x86-64 vectors are 128 bits wide, a quarter of what an
//! AVX-512 core computes per instruction, and elementwise chains of
//! transcendentals (GELU, sigmoid, tanh) are bound by arithmetic, not
//! memory. So a compiled kernel whose innermost row is long hands the row
//! to [`kiln_row_f32`]: precompiled AVX-512 code that evaluates the row's
//! [`RowProgram`] block by block (`BLOCK` elements, in L1-resident slots),
//! one step at a time over the whole block. Dispatch costs one branch per
//! step per block; every step runs as a tight loop of 16-lane operations.
//!
//! A [`RowProgram`] is plain data of a fixed size (`#[repr(C)]`, no
//! pointers), so an ahead-of-time object embeds its bytes as read-only
//! data and passes their address, as the JIT passes a boxed one; the
//! codegen crate builds them from element programs.
//!
//! The approximations are the algorithms of the 128-bit code in
//! kiln-codegen's `vector.rs`, with the same constants (both read
//! [`crate::approx`]), except that erf is a rational function
//! (no exp), that the reciprocals inside tanh, sigmoid and erf are a
//! hardware estimate refined by a Newton step rather than a division, and
//! that a product feeding only a sum or difference is one fused
//! multiply-add; both paths are held to the same error bounds by
//! `tests/tests/cpu_math.rs`, `tests/tests/cpu_wide.rs` and, over the whole
//! f32 range, `tests/tests/math_range.rs`. Measured bounds (ulps of the
//! f32 result over the whole range; the table of kiln-codegen's
//! `vector.rs` has every path): exp 0.96, log 0.81, tanh 2.76, sigmoid
//! 2.21, erf 6.18 (exactly ±1 from |x| >= `ERF_ONE`); subnormal results
//! within 2^-126 absolutely; NaN in, NaN out; exp is 0 from -104.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use crate::approx::{
    ERF_CLAMP, ERF_DEN, ERF_NUM, ERF_ONE, EXP_HI, EXP_LO, EXP_POLY, EXP_ROUND, LN2_HI, LN2_LO,
    LOG_POLY, LOG_SUBNORMAL_SCALE, LOG_SUBNORMAL_SHIFT, TANH_SMALL, TANH_SMALL_BELOW,
};
use crate::scalar::{self, UnaryFn};
use std::mem::MaybeUninit;

/// A reduction's combining op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Prod,
    Max,
    Min,
}

/// Lanes per vector.
const W: usize = 16;
/// Elements per block: each slot holds one block.
const BLOCK: usize = 256;
/// Slots a program may use (the scratch lives on the stack: 32 KiB).
pub const MAX_SLOTS: usize = 32;
/// Row pointers a program may read (inputs plus the accumulator).
pub const MAX_PTRS: usize = 64;
/// Steps a program may have.
pub const MAX_STEPS: usize = 128;

/// A binary op with a block form (comparisons give lane masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

const BINARY: [Binary; 12] = [
    Binary::Add,
    Binary::Sub,
    Binary::Mul,
    Binary::Div,
    Binary::Max,
    Binary::Min,
    Binary::Eq,
    Binary::Ne,
    Binary::Lt,
    Binary::Le,
    Binary::Gt,
    Binary::Ge,
];

/// Where an operand of a step comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    /// A scratch slot (one block).
    Slot(u16),
    /// Row pointer `k`, contiguous: the block starts at the block's offset.
    Ptr(u16),
}

/// A slot filled once per row: it holds the same value in every lane.
#[derive(Clone, Copy, Debug)]
pub enum Fill {
    Const(f32),
    /// The scalar row pointer `k` points at.
    Scalar(u16),
}

/// Which fused multiply-add: `a * b + c`, `a * b - c` or `c - a * b`.
#[derive(Clone, Copy, Debug)]
pub enum MulAdd {
    Add,
    Sub,
    SubFrom,
}

/// One step over a block.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A unary function: the functions the 128-bit path also computes in
    /// lanes run 16 lanes at a time, the others (libm's) one lane at a
    /// time through [`scalar::unary_f32`].
    Unary(UnaryFn, Src),
    Binary(Binary, Src, Src),
    MulAdd(MulAdd, Src, Src, Src),
    Select(Src, Src, Src),
    Copy(Src),
    /// `x * sigmoid(x)` (SiLU, EfficientNet's activation): one pass over
    /// the block where the product would be a second.
    Swish(Src),
}

/// A step as stored: kind, op, destination slot (`OUT`: the output row),
/// operands (`PTR` bit: a row pointer, else a slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawStep {
    kind: u8,
    op: u8,
    dst: u16,
    src: [u16; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawFill {
    slot: u16,
    /// `NONE` for a constant, else the scalar's row pointer.
    ptr: u16,
    value: f32,
    /// In a segmented program: elements the scalar pointer advances from
    /// one segment to the next.
    step: i32,
}

const OUT: u16 = u16::MAX;
const NONE: u16 = u16::MAX;
const PTR: u16 = 0x8000;

/// A row program: fills, steps and the contiguous rows, in fixed-size
/// arrays. Row pointers are one per kernel input (the address of the row's
/// first element), then the accumulator's where it has one.
///
/// A *segmented* program (`seg > 0`) runs several short rows of a kernel
/// as one long row: the contiguous rows continue from one short row into
/// the next, and each scalar fill holds, per element, the scalar of the
/// segment (short row) the element falls in: `ptr[s * step]` for segment
/// `s = element / seg`. A per-channel bias and activation over 7x7 planes
/// thus runs as one call over all the channels instead of a call (or a
/// four-lane loop) per 49 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RowProgram {
    ptrs: u32,
    nfills: u32,
    nsteps: u32,
    nrows: u32,
    /// Segment length (at least one vector), or 0.
    seg: u32,
    fills: [RawFill; MAX_SLOTS],
    rows: [u16; MAX_PTRS],
    steps: [RawStep; MAX_STEPS],
}

// No padding: the bytes of a program are exactly its fields.
const _: () = assert!(
    std::mem::size_of::<RowProgram>() == 20 + MAX_SLOTS * 12 + MAX_PTRS * 2 + MAX_STEPS * 10
);

fn raw_src(s: Src) -> u16 {
    match s {
        Src::Slot(k) => k,
        Src::Ptr(k) => PTR | k,
    }
}

impl RowProgram {
    /// A program reading `ptrs` row pointers, or `None` where it exceeds
    /// the fixed sizes.
    pub fn new(
        ptrs: usize,
        fills: &[(u16, Fill)],
        steps: &[(Step, Option<u16>)],
        rows: &[u16],
    ) -> Option<RowProgram> {
        if ptrs > MAX_PTRS
            || fills.len() > MAX_SLOTS
            || steps.len() > MAX_STEPS
            || rows.len() > MAX_PTRS
        {
            return None;
        }
        let mut p = RowProgram {
            ptrs: ptrs as u32,
            nfills: fills.len() as u32,
            nsteps: steps.len() as u32,
            nrows: rows.len() as u32,
            seg: 0,
            fills: [RawFill::default(); MAX_SLOTS],
            rows: [0; MAX_PTRS],
            steps: [RawStep::default(); MAX_STEPS],
        };
        for (d, &(slot, f)) in p.fills.iter_mut().zip(fills) {
            *d = match f {
                Fill::Const(value) => RawFill {
                    slot,
                    ptr: NONE,
                    value,
                    step: 0,
                },
                Fill::Scalar(k) => RawFill {
                    slot,
                    ptr: k,
                    value: 0.0,
                    step: 0,
                },
            };
        }
        p.rows[..rows.len()].copy_from_slice(rows);
        for (d, &(step, dst)) in p.steps.iter_mut().zip(steps) {
            let (kind, op, src) = match step {
                Step::Unary(f, a) => (0, f.code(), [a, a, a]),
                Step::Binary(f, a, b) => (1, BINARY.iter().position(|&u| u == f)? as u8, [a, b, b]),
                Step::MulAdd(k, a, b, c) => (2, k as u8, [a, b, c]),
                Step::Select(c, a, b) => (3, 0, [c, a, b]),
                Step::Copy(a) => (4, 0, [a, a, a]),
                Step::Swish(a) => (5, 0, [a, a, a]),
            };
            *d = RawStep {
                kind,
                op,
                dst: dst.unwrap_or(OUT),
                src: src.map(raw_src),
            };
        }
        Some(p)
    }

    /// This program as a segmented one: segments of `seg` elements (at
    /// least 16: a vector spans at most two), the scalar that row pointer
    /// `k` points at advancing `step(k)` elements per segment. `None` where
    /// `seg` is shorter than a vector or a step passes 32 bits.
    pub fn segmented(mut self, seg: usize, step: &dyn Fn(u16) -> i64) -> Option<RowProgram> {
        if seg < W || seg > u32::MAX as usize {
            return None;
        }
        self.seg = seg as u32;
        for f in &mut self.fills[..self.nfills as usize] {
            if f.ptr != NONE {
                f.step = i32::try_from(step(f.ptr)).ok()?;
            }
        }
        Some(self)
    }

    /// Its bytes (what an object file embeds).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: plain integers and floats without padding (asserted above).
        unsafe {
            std::slice::from_raw_parts(
                self as *const RowProgram as *const u8,
                std::mem::size_of::<RowProgram>(),
            )
        }
    }
}

/// Evaluates a row: `out[j] = program(j)` for `j` in `0..n`.
///
/// # Safety
/// `prog` must point at a live [`RowProgram`]; `ptrs` at its row pointers,
/// each valid for `n` elements where the row reads it contiguously and for
/// one where it reads a scalar (in a segmented program: for the element
/// `s * step` of every segment `s` the row reaches); `out` valid for `n`
/// elements; the host must have AVX-512 F and DQ.
#[no_mangle]
pub unsafe extern "C" fn kiln_row_f32(
    prog: *const RowProgram,
    ptrs: *const *const f32,
    out: *mut f32,
    n: i64,
) {
    if n <= 0 {
        return;
    }
    // SAFETY: as the caller promises.
    unsafe {
        let p = &*prog;
        let ptrs = std::slice::from_raw_parts(ptrs, p.ptrs as usize);
        p.run(ptrs, out, n as usize);
    }
}

#[repr(C, align(64))]
struct Scratch([f32; BLOCK * MAX_SLOTS]);

#[repr(C, align(64))]
struct Stage([[f32; W]; MAX_PTRS + 1]);

#[repr(C, align(64))]
struct Block([f32; BLOCK]);

fn identity(op: Reduce) -> f32 {
    match op {
        Reduce::Sum => 0.0,
        Reduce::Prod => 1.0,
        Reduce::Max => f32::NEG_INFINITY,
        Reduce::Min => f32::INFINITY,
    }
}

#[target_feature(enable = "avx512f,avx512dq")]
fn combine(op: Reduce, a: __m512, b: __m512) -> __m512 {
    match op {
        Reduce::Sum => _mm512_add_ps(a, b),
        Reduce::Prod => _mm512_mul_ps(a, b),
        Reduce::Max => max(a, b),
        Reduce::Min => min(a, b),
    }
}

/// The reference's meaning: NaN wins max and min.
fn combine_scalar(op: Reduce, a: f32, b: f32) -> f32 {
    match op {
        Reduce::Sum => a + b,
        Reduce::Prod => a * b,
        _ if a.is_nan() || b.is_nan() => f32::NAN,
        Reduce::Max => a.max(b),
        Reduce::Min => a.min(b),
    }
}

/// The reduction (`op`: 0 sum, 1 product, 2 max, 3 min) of a row's values:
/// the row program's result over `0..n`, also written to `store` unless it
/// is null (for a row map that reuses them).
///
/// # Safety
/// As [`kiln_row_f32`], with `store` (if not null) valid for `n` elements.
#[no_mangle]
pub unsafe extern "C" fn kiln_reduce_row_f32(
    prog: *const RowProgram,
    ptrs: *const *const f32,
    n: i64,
    op: i32,
    store: *mut f32,
) -> f32 {
    let op = match op {
        0 => Reduce::Sum,
        1 => Reduce::Prod,
        2 => Reduce::Max,
        _ => Reduce::Min,
    };
    if n <= 0 {
        return identity(op);
    }
    // SAFETY: as the caller promises.
    unsafe {
        let p = &*prog;
        let ptrs = std::slice::from_raw_parts(ptrs, p.ptrs as usize);
        p.reduce(ptrs, n as usize, op, store)
    }
}

impl RowProgram {
    /// Fills the row-invariant slots.
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn fill(&self, slots: *mut f32, ptrs: &[*const f32]) {
        // SAFETY: fills write whole slots inside the scratch; scalar
        // pointers are valid for one element.
        unsafe {
            for f in &self.fills[..self.nfills as usize] {
                let v = if f.ptr == NONE {
                    _mm512_set1_ps(f.value)
                } else if self.seg > 0 {
                    // Per block, by `segments`.
                    continue;
                } else {
                    _mm512_set1_ps(*ptrs[f.ptr as usize])
                };
                let d = slots.add(f.slot as usize * BLOCK);
                for j in 0..BLOCK / W {
                    _mm512_store_ps(d.add(j * W), v);
                }
            }
        }
    }

    /// A segmented program's scalar fills for the `nvec` vectors from
    /// element `off` of a row of `n`: each lane gets its segment's scalar
    /// (segments past the row's last are read as the last).
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn segments(
        &self,
        slots: *mut f32,
        ptrs: &[*const f32],
        off: usize,
        nvec: usize,
        n: usize,
        uniform: &mut usize,
    ) {
        if self.seg == 0 {
            return;
        }
        let seg = self.seg as usize;
        let last = (n - 1) / seg;
        // A block inside one segment (most of a long segment's blocks)
        // fills whole slots with its scalar, which later blocks of the
        // same segment reuse: `uniform` is the segment they hold.
        let first = off / seg;
        if first == ((off + nvec * W - 1) / seg).min(last) {
            if *uniform != first {
                // SAFETY: as below, for segment `first`.
                unsafe {
                    for f in self.fills[..self.nfills as usize]
                        .iter()
                        .filter(|f| f.ptr != NONE)
                    {
                        let v = *ptrs[f.ptr as usize].offset(first as isize * f.step as isize);
                        let d = slots.add(f.slot as usize * BLOCK);
                        for j in 0..BLOCK / W {
                            _mm512_store_ps(d.add(j * W), _mm512_set1_ps(v));
                        }
                    }
                }
                *uniform = first;
            }
            return;
        }
        *uniform = usize::MAX;
        // Per vector: its first lane's segment, and the lanes from which
        // the next segment's scalar applies.
        let mut at = [(0usize, 0u16); BLOCK / W];
        let mut s = off / seg;
        let mut next = (s + 1) * seg;
        for (j, a) in at[..nvec].iter_mut().enumerate() {
            let p = off + j * W;
            if p >= next {
                s += 1;
                next += seg;
            }
            let m = if p + W > next && s < last {
                // Lanes next - p .. 16 belong to segment s + 1.
                !((1u32 << (next - p)) - 1) as u16
            } else {
                0
            };
            *a = (s.min(last), m);
        }
        // SAFETY: fills write whole vectors of their slots; a scalar's row
        // pointer is valid for every segment's element, as the caller
        // promises.
        unsafe {
            for f in &self.fills[..self.nfills as usize] {
                if f.ptr == NONE {
                    continue;
                }
                let base = ptrs[f.ptr as usize];
                let step = f.step as isize;
                let value = |s: usize| *base.offset(s as isize * step);
                let d = slots.add(f.slot as usize * BLOCK);
                for (j, &(s, m)) in at[..nvec].iter().enumerate() {
                    let v = _mm512_set1_ps(value(s));
                    let v = if m != 0 {
                        _mm512_mask_blend_ps(m, v, _mm512_set1_ps(value(s + 1)))
                    } else {
                        v
                    };
                    _mm512_store_ps(d.add(j * W), v);
                }
            }
        }
    }

    /// Runs the last partial vector of a row (`rest` < 16 elements from
    /// `off`) through whole vectors: the contiguous rows are copied into
    /// `stage`, the result lands in `stage`'s last vector, returned.
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn tail(
        &self,
        slots: *mut f32,
        ptrs: &[*const f32],
        off: usize,
        rest: usize,
        stage: &mut MaybeUninit<Stage>,
    ) -> *mut f32 {
        let mask: __mmask16 = ((1u32 << rest) - 1) as __mmask16;
        let st = stage.as_mut_ptr() as *mut f32;
        let mut staged = [std::ptr::null::<f32>(); MAX_PTRS];
        staged[..ptrs.len()].copy_from_slice(ptrs);
        // SAFETY: each row has `rest` valid elements from `off`; the stage
        // has a vector per pointer and one for the result.
        unsafe {
            for &k in &self.rows[..self.nrows as usize] {
                let d = st.add(k as usize * W);
                let v = _mm512_maskz_loadu_ps(mask, ptrs[k as usize].add(off));
                _mm512_store_ps(d, v);
                staged[k as usize] = d.wrapping_sub(off);
            }
            let o = st.add(MAX_PTRS * W);
            self.block(slots, &staged[..ptrs.len()], off, o, 1);
            o
        }
    }

    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn run(&self, ptrs: &[*const f32], out: *mut f32, n: usize) {
        let mut scratch = MaybeUninit::<Scratch>::uninit();
        let slots = scratch.as_mut_ptr() as *mut f32;
        // SAFETY: the rows are valid for n elements, `out` too.
        unsafe {
            self.fill(slots, ptrs);
            let whole = n / W * W;
            let mut off = 0;
            let mut uniform = usize::MAX;
            while off < whole {
                let len = BLOCK.min(whole - off);
                self.segments(slots, ptrs, off, len / W, n, &mut uniform);
                self.block(slots, ptrs, off, out.add(off), len / W);
                off += len;
            }
            if off < n {
                self.segments(slots, ptrs, off, 1, n, &mut uniform);
                let mut stage = MaybeUninit::<Stage>::uninit();
                let o = self.tail(slots, ptrs, off, n - off, &mut stage);
                let mask: __mmask16 = ((1u32 << (n - off)) - 1) as __mmask16;
                _mm512_mask_storeu_ps(out.add(off), mask, _mm512_load_ps(o));
            }
        }
    }

    /// The reduction `op` of the row's values.
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn reduce(&self, ptrs: &[*const f32], n: usize, op: Reduce, store: *mut f32) -> f32 {
        let mut scratch = MaybeUninit::<Scratch>::uninit();
        let slots = scratch.as_mut_ptr() as *mut f32;
        let mut block = MaybeUninit::<Block>::uninit();
        let tmp = block.as_mut_ptr() as *mut f32;
        let id = splat(identity(op));
        // Four accumulators, so the combining chain's latency overlaps.
        let mut acc = [id; 4];
        // SAFETY: the rows are valid for n elements; `tmp` holds a block.
        unsafe {
            self.fill(slots, ptrs);
            let whole = n / W * W;
            let mut off = 0;
            let mut uniform = usize::MAX;
            while off < whole {
                let len = BLOCK.min(whole - off);
                // The values land where they are kept, if anywhere.
                let dst = if store.is_null() { tmp } else { store.add(off) };
                self.segments(slots, ptrs, off, len / W, n, &mut uniform);
                self.block(slots, ptrs, off, dst, len / W);
                for j in 0..len / W {
                    let v = _mm512_loadu_ps(dst.add(j * W));
                    acc[j % 4] = combine(op, acc[j % 4], v);
                }
                off += len;
            }
            if off < n {
                self.segments(slots, ptrs, off, 1, n, &mut uniform);
                let mut stage = MaybeUninit::<Stage>::uninit();
                let o = self.tail(slots, ptrs, off, n - off, &mut stage);
                let mask: __mmask16 = ((1u32 << (n - off)) - 1) as __mmask16;
                if !store.is_null() {
                    _mm512_mask_storeu_ps(store.add(off), mask, _mm512_load_ps(o));
                }
                let v = _mm512_mask_blend_ps(mask, id, _mm512_load_ps(o));
                acc[0] = combine(op, acc[0], v);
            }
        }
        let v = combine(op, combine(op, acc[0], acc[1]), combine(op, acc[2], acc[3]));
        let mut lanes = [0f32; W];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes
            .into_iter()
            .fold(identity(op), |a, b| combine_scalar(op, a, b))
    }

    /// Runs every step over `nvec` vectors from element `off` of the rows,
    /// writing the result at `out`.
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn block(
        &self,
        slots: *mut f32,
        ptrs: &[*const f32],
        off: usize,
        out: *mut f32,
        nvec: usize,
    ) {
        let at = |s: u16| -> *const f32 {
            if s & PTR != 0 {
                ptrs[(s & !PTR) as usize].wrapping_add(off)
            } else {
                slots.wrapping_add(s as usize * BLOCK)
            }
        };
        for st in &self.steps[..self.nsteps as usize] {
            let d = if st.dst == OUT {
                out
            } else {
                slots.wrapping_add(st.dst as usize * BLOCK)
            };
            let [a, b, c] = st.src.map(at);
            // SAFETY: every source and the destination hold nvec vectors.
            unsafe {
                match st.kind {
                    0 => match UnaryFn::from_code(st.op as u32) {
                        Some(f) => unary(f, d, a, nvec),
                        // Not a function's code (`new` writes only codes):
                        // the step writes NaN.
                        None => {
                            for j in 0..nvec {
                                _mm512_storeu_ps(d.add(j * W), splat(f32::NAN));
                            }
                        }
                    },
                    1 => binary(BINARY[st.op as usize], d, a, b, nvec),
                    2 => {
                        let k = match st.op {
                            0 => MulAdd::Add,
                            1 => MulAdd::Sub,
                            _ => MulAdd::SubFrom,
                        };
                        mul_add(k, d, a, b, c, nvec)
                    }
                    3 => select(d, a, b, c, nvec),
                    5 => swish(d, a, nvec),
                    _ => {
                        for j in 0..nvec {
                            _mm512_storeu_ps(d.add(j * W), _mm512_loadu_ps(a.add(j * W)));
                        }
                    }
                }
            }
        }
    }
}

macro_rules! map1 {
    ($d:expr, $a:expr, $n:expr, $f:expr) => {
        for j in 0..$n {
            let x = _mm512_loadu_ps($a.add(j * W));
            _mm512_storeu_ps($d.add(j * W), $f(x));
        }
    };
}

macro_rules! map2 {
    ($d:expr, $a:expr, $b:expr, $n:expr, $f:expr) => {
        for j in 0..$n {
            let x = _mm512_loadu_ps($a.add(j * W));
            let y = _mm512_loadu_ps($b.add(j * W));
            _mm512_storeu_ps($d.add(j * W), $f(x, y));
        }
    };
}

#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn unary(f: UnaryFn, d: *mut f32, a: *const f32, n: usize) {
    use UnaryFn::*;
    // SAFETY: `a` and `d` hold n vectors.
    unsafe {
        match f {
            Neg => map1!(d, a, n, neg),
            Abs => map1!(d, a, n, _mm512_abs_ps),
            Sqrt => map1!(d, a, n, _mm512_sqrt_ps),
            Recip => map1!(d, a, n, recip),
            Rsqrt => map1!(d, a, n, rsqrt),
            Floor => map1!(d, a, n, _mm512_roundscale_ps::<0x09>),
            Ceil => map1!(d, a, n, _mm512_roundscale_ps::<0x0a>),
            Round => map1!(d, a, n, _mm512_roundscale_ps::<0x08>),
            Exp => map1!(d, a, n, exp),
            Log => map1!(d, a, n, log),
            Tanh => map1!(d, a, n, tanh),
            Sigmoid => map1!(d, a, n, sigmoid),
            Erf => map1!(d, a, n, erf),
            Sign | Sin | Cos | Tan | Asin | Acos | Atan | Sinh | Cosh | Asinh | Acosh | Atanh
            | Not => {
                for i in 0..n * W {
                    *d.add(i) = scalar::unary_f32(f, *a.add(i));
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn swish(d: *mut f32, a: *const f32, n: usize) {
    // SAFETY: `a` and `d` hold n vectors.
    unsafe { map1!(d, a, n, |x| _mm512_mul_ps(x, sigmoid(x))) }
}

#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn binary(f: Binary, d: *mut f32, a: *const f32, b: *const f32, n: usize) {
    use Binary::*;
    // SAFETY: `a`, `b` and `d` hold n vectors.
    unsafe {
        match f {
            Add => map2!(d, a, b, n, _mm512_add_ps),
            Sub => map2!(d, a, b, n, _mm512_sub_ps),
            Mul => map2!(d, a, b, n, _mm512_mul_ps),
            Div => map2!(d, a, b, n, _mm512_div_ps),
            Max => map2!(d, a, b, n, max),
            Min => map2!(d, a, b, n, min),
            Eq => map2!(d, a, b, n, cmp::<_CMP_EQ_OQ>),
            Ne => map2!(d, a, b, n, cmp::<_CMP_NEQ_UQ>),
            Lt => map2!(d, a, b, n, cmp::<_CMP_LT_OQ>),
            Le => map2!(d, a, b, n, cmp::<_CMP_LE_OQ>),
            Gt => map2!(d, a, b, n, cmp::<_CMP_GT_OQ>),
            Ge => map2!(d, a, b, n, cmp::<_CMP_GE_OQ>),
        }
    }
}

#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn mul_add(k: MulAdd, d: *mut f32, a: *const f32, b: *const f32, c: *const f32, n: usize) {
    // SAFETY: every pointer holds n vectors.
    unsafe {
        for j in 0..n {
            let x = _mm512_loadu_ps(a.add(j * W));
            let y = _mm512_loadu_ps(b.add(j * W));
            let z = _mm512_loadu_ps(c.add(j * W));
            let r = match k {
                MulAdd::Add => _mm512_fmadd_ps(x, y, z),
                MulAdd::Sub => _mm512_fmsub_ps(x, y, z),
                MulAdd::SubFrom => _mm512_fnmadd_ps(x, y, z),
            };
            _mm512_storeu_ps(d.add(j * W), r);
        }
    }
}

#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn select(d: *mut f32, c: *const f32, a: *const f32, b: *const f32, n: usize) {
    // SAFETY: every pointer holds n vectors.
    unsafe {
        for j in 0..n {
            let m = _mm512_movepi32_mask(_mm512_castps_si512(_mm512_loadu_ps(c.add(j * W))));
            let x = _mm512_loadu_ps(a.add(j * W));
            let y = _mm512_loadu_ps(b.add(j * W));
            _mm512_storeu_ps(d.add(j * W), _mm512_mask_blend_ps(m, y, x));
        }
    }
}

/// A lane mask as all-ones or all-zeros lanes.
#[target_feature(enable = "avx512f,avx512dq")]
fn cmp<const P: i32>(a: __m512, b: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask::<P>(a, b)))
}

#[target_feature(enable = "avx512f,avx512dq")]
fn splat(c: f32) -> __m512 {
    _mm512_set1_ps(c)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn neg(x: __m512) -> __m512 {
    _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(x),
        _mm512_set1_epi32(i32::MIN),
    ))
}

#[target_feature(enable = "avx512f,avx512dq")]
fn recip(x: __m512) -> __m512 {
    _mm512_div_ps(splat(1.0), x)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn rsqrt(x: __m512) -> __m512 {
    _mm512_div_ps(splat(1.0), _mm512_sqrt_ps(x))
}

/// `1 / d` for `d >= 1` (or +inf, or NaN) to within 1 ulp or so: the
/// 14-bit hardware estimate and one Newton step, in place of a division
/// (which costs several times more on every AVX-512 core).
#[target_feature(enable = "avx512f,avx512dq")]
fn recip_ge1(d: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(d);
    let e = _mm512_fnmadd_ps(d, r, splat(1.0));
    let nr = _mm512_fmadd_ps(r, e, r);
    // 1/inf: the estimate is 0, the step would give NaN.
    let inf = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(d, splat(f32::INFINITY));
    _mm512_mask_blend_ps(inf, nr, r)
}

/// `max` that propagates NaN (the hardware returns its second operand).
#[target_feature(enable = "avx512f,avx512dq")]
fn max(a: __m512, b: __m512) -> __m512 {
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
    _mm512_mask_blend_ps(nan, _mm512_max_ps(a, b), _mm512_add_ps(a, b))
}

#[target_feature(enable = "avx512f,avx512dq")]
fn min(a: __m512, b: __m512) -> __m512 {
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
    _mm512_mask_blend_ps(nan, _mm512_min_ps(a, b), _mm512_add_ps(a, b))
}

/// `m ? a : b`.
#[target_feature(enable = "avx512f,avx512dq")]
fn blend(m: __mmask16, a: __m512, b: __m512) -> __m512 {
    _mm512_mask_blend_ps(m, b, a)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn horner(x: __m512, c: &[f32]) -> __m512 {
    let mut acc = splat(c[0]);
    for &k in &c[1..] {
        acc = _mm512_fmadd_ps(acc, x, splat(k));
    }
    acc
}

#[target_feature(enable = "avx512f,avx512dq")]
fn bits(x: __m512) -> __m512i {
    _mm512_castps_si512(x)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn floats(x: __m512i) -> __m512 {
    _mm512_castsi512_ps(x)
}

// The functions below follow `vector.rs` step for step.

#[target_feature(enable = "avx512f,avx512dq")]
fn exp(x: __m512) -> __m512 {
    // max/min return their second operand for NaN: x's NaN goes through.
    let xc = _mm512_max_ps(splat(EXP_LO), x);
    let xc = _mm512_min_ps(splat(EXP_HI), xc);
    let magic = splat(EXP_ROUND);
    let t = _mm512_fmadd_ps(xc, splat(std::f32::consts::LOG2_E), magic);
    let fx = _mm512_sub_ps(t, magic);
    let r = _mm512_fmadd_ps(fx, splat(-LN2_HI), xc);
    let r = _mm512_fmadd_ps(fx, splat(-LN2_LO), r);
    let p = horner(r, &EXP_POLY);
    let z = _mm512_mul_ps(r, r);
    let y = _mm512_fmadd_ps(p, z, r);
    let y = _mm512_add_ps(y, splat(1.0));
    // y * 2^fx in one instruction, rounded once: the same bits as the
    // 128-bit path's two exact-then-rounding products by 2^(fx/2).
    _mm512_scalef_ps(y, fx)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn log(x: __m512) -> __m512 {
    let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, splat(f32::MIN_POSITIVE));
    let xn = blend(small, _mm512_mul_ps(x, splat(LOG_SUBNORMAL_SCALE)), x);
    let b = bits(xn);
    let e = _mm512_sub_epi32(_mm512_srai_epi32::<23>(b), _mm512_set1_epi32(126));
    let m = _mm512_and_si512(b, _mm512_set1_epi32(0x007f_ffff));
    let m = floats(_mm512_or_si512(m, _mm512_set1_epi32(0x3f00_0000)));
    let e = _mm512_cvtepi32_ps(e);
    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m, splat(std::f32::consts::FRAC_1_SQRT_2));
    let one = splat(1.0);
    let e = blend(lt, _mm512_sub_ps(e, one), e);
    let m = blend(lt, _mm512_add_ps(m, m), m);
    let xr = _mm512_sub_ps(m, one);
    let z = _mm512_mul_ps(xr, xr);
    let p = horner(xr, &LOG_POLY);
    let y = _mm512_mul_ps(_mm512_mul_ps(p, xr), z);
    let y = _mm512_add_ps(y, _mm512_mul_ps(e, splat(LN2_LO)));
    let y = _mm512_add_ps(y, _mm512_mul_ps(z, splat(-0.5)));
    let r = _mm512_add_ps(xr, y);
    let r = _mm512_add_ps(r, _mm512_mul_ps(e, splat(LN2_HI)));
    let rs = _mm512_sub_ps(r, splat(LOG_SUBNORMAL_SHIFT));
    let r = blend(small, rs, r);
    let zero = splat(0.0);
    let is0 = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, zero);
    let isinf = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, splat(f32::INFINITY));
    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero);
    let isnan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let r = blend(is0, splat(f32::NEG_INFINITY), r);
    let r = blend(isinf, splat(f32::INFINITY), r);
    blend(neg | isnan, splat(f32::NAN), r)
}

/// A non-negative `mag` with the sign of `sign_of`.
#[target_feature(enable = "avx512f,avx512dq")]
fn copysign(mag: __m512, sign_of: __m512) -> __m512 {
    let sign = _mm512_and_si512(bits(sign_of), _mm512_set1_epi32(i32::MIN));
    floats(_mm512_or_si512(bits(mag), sign))
}

#[target_feature(enable = "avx512f,avx512dq")]
fn tanh(x: __m512) -> __m512 {
    let t = exp(_mm512_mul_ps(_mm512_abs_ps(x), splat(-2.0)));
    let one = splat(1.0);
    let r = _mm512_mul_ps(_mm512_sub_ps(one, t), recip_ge1(_mm512_add_ps(one, t)));
    let r = copysign(r, x);
    // Near 0, 1 - t cancels: the odd Taylor polynomial there (relative
    // error under 3e-9 for |x| < 1/8).
    let x2 = _mm512_mul_ps(x, x);
    let p = _mm512_mul_ps(horner(x2, &TANH_SMALL), x);
    let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(x), splat(TANH_SMALL_BELOW));
    blend(small, p, r)
}

#[target_feature(enable = "avx512f,avx512dq")]
fn sigmoid(x: __m512) -> __m512 {
    let e = exp(neg(x));
    recip_ge1(_mm512_add_ps(splat(1.0), e))
}

#[target_feature(enable = "avx512f,avx512dq")]
fn erf(x: __m512) -> __m512 {
    // A rational approximation in x^2 on [-4, 4] (odd numerator of degree
    // 13, even denominator of degree 8, the form XLA and Eigen use), where
    // erf reaches +/-1 in f32: no exp, one reciprocal. About 20 operations
    // against the 128-bit path's exp-based 35.
    let x0 = x;
    let x = _mm512_min_ps(splat(ERF_CLAMP), _mm512_max_ps(splat(-ERF_CLAMP), x));
    let x2 = _mm512_mul_ps(x, x);
    let p = horner(x2, &ERF_NUM);
    let q = horner(x2, &ERF_DEN);
    // q is in [-0.29, -0.014]: the estimate and one Newton step.
    let r = _mm512_rcp14_ps(q);
    let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, r, splat(1.0)), r);
    // Within [-1, 1] (max/min pass NaN through as their second operand),
    // and exactly +/-1 from where f32 erf rounds to 1: the rational is a
    // few ulps short of it there, which GELU of large negative x would
    // turn into -x * 1e-7 instead of -0.
    // x times P/Q (not xP / Q: xP of a tiny x is subnormal).
    let y = _mm512_mul_ps(x, _mm512_mul_ps(p, r));
    let y = _mm512_min_ps(splat(1.0), _mm512_max_ps(splat(-1.0), y));
    let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(x0), splat(ERF_ONE));
    blend(big, copysign(splat(1.0), x0), y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function through a one-step row program (two whole vectors
    /// and a partial one) against its scalar meaning: the exact ones bit
    /// for bit, the approximated ones closely.
    #[test]
    fn every_function_runs_in_rows() {
        if !crate::avx512() {
            return;
        }
        let x: Vec<f32> = (0..40).map(|i| -2.0 + i as f32 * 0.1).collect();
        for &f in UnaryFn::ALL {
            let steps = [(Step::Unary(f, Src::Ptr(0)), None)];
            let p = RowProgram::new(1, &[], &steps, &[0]).expect("fits");
            let mut out = vec![0f32; x.len()];
            let ptrs = [x.as_ptr()];
            // SAFETY: one contiguous row of x.len() elements, as many out;
            // the host has AVX-512 (checked above).
            unsafe { kiln_row_f32(&p, ptrs.as_ptr(), out.as_mut_ptr(), x.len() as i64) };
            for (&xi, &got) in x.iter().zip(&out) {
                let want = scalar::unary_f32(f, xi);
                let ok = if f.approximated() {
                    (got.is_nan() && want.is_nan())
                        || got == want
                        || (got - want).abs() <= 1e-5 * want.abs().max(1.0)
                } else {
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
                };
                assert!(ok, "{f:?}({xi}) = {got}, want {want}");
            }
        }
    }
}

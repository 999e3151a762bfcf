//! kiln's run-time library: the code compiled kernel programs run besides
//! their own loop nests. The CPU backend's executor (`exec`: steps split
//! across the worker team, matrix products, convolutions, the split tuner),
//! the AVX-512 GEMM and GEMV, the convolutions, and the scalar functions
//! generated code calls (`support`). The JIT links it as a Rust crate; an
//! ahead-of-time binary links it as `libkiln_rt.a` and enters it through
//! [`abi::kiln_rt_run`] with its steps encoded by [`blob`].
//!
//! It depends on no other kiln crate, so the static library stays small and
//! builds quickly; the meaning it shares with `kiln-graph` (the random
//! generator, the scalar functions) lives here and `kiln-graph` uses it.

pub mod abi;
pub mod blob;
pub mod conv;
pub mod exec;
pub mod gemv;
pub mod pool;
pub mod rng;
pub mod sgemm;
pub mod support;
pub mod team;
#[cfg(target_arch = "x86_64")]
pub mod wide;

/// A float element type of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Real {
    F32,
    F64,
}

/// The element type of a matrix product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    I32,
    I64,
    I8,
    I16,
    U8,
    U16,
    U32,
    U64,
}

impl Elem {
    /// Its code in a step blob.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The element type of a blob code.
    pub fn from_code(c: i64) -> Option<Elem> {
        [
            Elem::F32,
            Elem::F64,
            Elem::I32,
            Elem::I64,
            Elem::I8,
            Elem::I16,
            Elem::U8,
            Elem::U16,
            Elem::U32,
            Elem::U64,
        ]
        .get(usize::try_from(c).ok()?)
        .copied()
    }
}

/// True when this host runs the AVX-512 kernels (GEMM, row code).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

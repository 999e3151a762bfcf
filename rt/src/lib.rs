//! kiln's run-time library: the code compiled kernel programs run besides
//! their own loop nests. The CPU backend's executor (`executor`: steps
//! split across the worker team, matrix products, convolutions, the split
//! tuner), the AVX-512 GEMM and GEMV, the convolutions, the AVX-512 and
//! AVX2 row code (`rows`), and the functions generated code calls
//! (`extern_fns`). The JIT links it as a Rust crate; an ahead-of-time
//! binary links it as `libkiln_rt.a` and enters it through
//! [`abi::kiln_rt_run`] with its steps encoded by [`blob`].
//!
//! It depends on no other kiln crate, so the static library stays small and
//! builds quickly; the meaning it shares with `kiln-graph` lives here and
//! `kiln-graph` uses it: the random generator (`rng`), the unary functions
//! and their float meaning (`scalar`: `kiln-graph`'s `UnaryOp` is
//! [`scalar::UnaryFn`]), the wrapping integer powers
//! ([`extern_fns::IntPow`]). The constants of the fast f32 approximations
//! that the 128-bit, AVX2 and AVX-512 paths share are in `approx`. The `serde`
//! feature (which `kiln-graph` turns on; the static library leaves it off)
//! derives serde's traits for [`scalar::UnaryFn`].

pub mod abi;
pub mod approx;
pub mod blob;
pub mod conv;
pub mod conv_nhwc;
pub mod conv_nhwc_depthwise;
pub mod executor;
pub mod extern_fns;
pub mod fuse;
pub mod gather;
pub mod gemv;
pub mod pool;
pub mod rng;
#[cfg(target_arch = "x86_64")]
pub mod rows;
pub mod scalar;
pub mod settings;
pub mod sgemm;
pub mod team;

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

/// True on an AMD Zen 4 (family 19h with AVX-512), whose cores run each
/// 512-bit operation as two 256-bit halves; Zen 5 (family 1Ah) and Intel's
/// AVX-512 cores run them whole. Kernel choices measured to differ between
/// the two ask this.
pub fn zen4() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // Leaves 0 (vendor) and 1 (family) exist on every x86-64 processor.
        let (vendor, id) = (__cpuid(0), __cpuid(1));
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let base = (id.eax >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((id.eax >> 20) & 0xff)
        } else {
            base
        };
        amd && family == 0x19 && avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True when this host runs the AVX2 row code: AVX2 and FMA (Haswell,
/// Zen and later).
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

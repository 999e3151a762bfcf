//! Functions compiled code calls: the scalar meaning of ops that have no
//! instruction (transcendentals, powers, random samples), the half
//! conversions and the bounds-failure report. They compute exactly what
//! `kiln-graph`'s reference meaning computes (the unary functions are
//! [`crate::scalar`]'s, which the reference calls too; the powers are
//! [`IntPow`] and std's; `tests/tests/cpu_math.rs` compares them value by
//! value), so JIT code, ahead-of-time binaries and the interpreter agree. Exported unmangled: ahead-of-time objects import
//! them by these names from `libkiln_rt.a`.

use crate::rng;
use crate::scalar::{self, UnaryFn};

/// Function `op` (a [`UnaryFn`] code) of `x`, as the reference computes
/// it ([`scalar::unary_f32`]); NaN for an unknown code.
#[no_mangle]
pub extern "C" fn kiln_unary_f32(op: u32, x: f32) -> f32 {
    UnaryFn::from_code(op).map_or(f32::NAN, |f| scalar::unary_f32(f, x))
}

/// As [`kiln_unary_f32`], in f64 ([`scalar::unary_f64`]).
#[no_mangle]
pub extern "C" fn kiln_unary_f64(op: u32, x: f64) -> f64 {
    UnaryFn::from_code(op).map_or(f64::NAN, |f| scalar::unary_f64(f, x))
}

/// `a` to the power `b`.
#[no_mangle]
pub extern "C" fn kiln_pow_f32(a: f32, b: f32) -> f32 {
    a.powf(b)
}

/// `a` to the power `b`.
#[no_mangle]
pub extern "C" fn kiln_pow_f64(a: f64, b: f64) -> f64 {
    a.powf(b)
}

/// The truncated remainder of `a / b` (IEEE fmod: exact, the sign of `a`).
#[no_mangle]
pub extern "C" fn kiln_rem_f32(a: f32, b: f32) -> f32 {
    libm::fmodf(a, b)
}

/// The truncated remainder of `a / b` (IEEE fmod: exact, the sign of `a`).
#[no_mangle]
pub extern "C" fn kiln_rem_f64(a: f64, b: f64) -> f64 {
    libm::fmod(a, b)
}

/// Wrapping integer powers: `kiln-graph`'s meaning of pow on integers.
pub trait IntPow: Sized {
    /// `self` to the power `e`, wrapping; a negative exponent gives 0
    /// except for bases 1 and -1 (whose powers stay in range).
    fn pow_wrapping(self, e: Self) -> Self;
}

macro_rules! int_pow {
    ($name:ident, $t:ty) => {
        impl IntPow for $t {
            fn pow_wrapping(self, b: $t) -> $t {
                let a = self;
                if b < 0 {
                    return match a {
                        1 => 1,
                        -1 => {
                            if b % 2 == 0 {
                                1
                            } else {
                                -1
                            }
                        }
                        _ => 0,
                    };
                }
                let (mut result, mut base, mut e): ($t, $t, $t) = (1, a, b);
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

        /// See [`IntPow`].
        #[no_mangle]
        pub extern "C" fn $name(a: $t, b: $t) -> $t {
            a.pow_wrapping(b)
        }
    };
}

int_pow!(kiln_pow_i32, i32);
int_pow!(kiln_pow_i64, i64);

macro_rules! int_pow_narrow {
    ($($t:ty),*) => {$(
        impl IntPow for $t {
            fn pow_wrapping(self, e: $t) -> $t {
                // Powers are consistent modulo 2^width, so the i64 power of
                // the (sign- or zero-extended) values, truncated, is exact.
                (self as i64).pow_wrapping(e as i64) as $t
            }
        }
    )*};
}

int_pow_narrow!(i8, i16, u8, u16, u32);

impl IntPow for u64 {
    fn pow_wrapping(self, b: u64) -> u64 {
        let (mut result, mut base, mut e) = (1u64, self, b);
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

/// See [`IntPow`].
#[no_mangle]
pub extern "C" fn kiln_pow_u64(a: u64, b: u64) -> u64 {
    a.pow_wrapping(b)
}

/// Sample `index` of a uniform (`normal` = 0: in `[a, b)`) or normal
/// (mean `a`, standard deviation `b`) stream as f32.
#[no_mangle]
pub extern "C" fn kiln_random_f32(normal: u32, seed: u64, a: f64, b: f64, index: u64) -> f32 {
    if normal != 0 {
        rng::normal_sample(seed, a, b, index) as f32
    } else {
        rng::uniform_sample_f32(seed, a, b, index)
    }
}

/// As [`kiln_random_f32`], in f64.
#[no_mangle]
pub extern "C" fn kiln_random_f64(normal: u32, seed: u64, a: f64, b: f64, index: u64) -> f64 {
    if normal != 0 {
        rng::normal_sample(seed, a, b, index)
    } else {
        rng::uniform_sample_f64(seed, a, b, index)
    }
}

/// A half value's bits (`bf`: bf16, else f16) as the f32 it is exactly.
#[no_mangle]
pub extern "C" fn kiln_half_to_f32(bits: u32, bf: u32) -> f32 {
    if bf != 0 {
        f32::from_bits(bits << 16)
    } else {
        half::f16::from_bits(bits as u16).to_f32()
    }
}

/// The half bits (`bf`: bf16, else f16) nearest `x` (ties to even).
#[no_mangle]
pub extern "C" fn kiln_f32_to_half(x: f32, bf: u32) -> u32 {
    if bf != 0 {
        half::bf16::from_f32(x).to_bits() as u32
    } else {
        half::f16::from_f32(x).to_bits() as u32
    }
}

/// `x` rounded once to the half type (`bf`: bf16, else f16), as an f32.
#[no_mangle]
pub extern "C" fn kiln_round_half_f64(x: f64, bf: u32) -> f32 {
    if bf != 0 {
        half::bf16::from_f64(x).to_f32()
    } else {
        half::f16::from_f64(x).to_f32()
    }
}

/// The first out-of-bounds access a bounds-checked kernel reported:
/// buffer + 1 (0: none), index, length.
static BOUNDS: [std::sync::atomic::AtomicI64; 3] = [
    std::sync::atomic::AtomicI64::new(0),
    std::sync::atomic::AtomicI64::new(0),
    std::sync::atomic::AtomicI64::new(0),
];

/// Called by bounds-checked kernels (instead of the access) when element
/// `index` of buffer `buffer` (`len` elements) is out of bounds; the
/// executor turns it into an error after the step.
#[no_mangle]
pub extern "C" fn kiln_bounds_fail(buffer: i64, index: i64, len: i64) {
    use std::sync::atomic::Ordering;
    if BOUNDS[0]
        .compare_exchange(0, buffer + 1, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        BOUNDS[1].store(index, Ordering::Relaxed);
        BOUNDS[2].store(len, Ordering::Release);
    }
}

/// The out-of-bounds access reported since the last call, if any, as
/// (buffer, index, length); clears it.
pub fn take_bounds_failure() -> Option<(usize, i64, i64)> {
    use std::sync::atomic::Ordering;
    if BOUNDS[0].load(Ordering::Acquire) == 0 {
        return None;
    }
    let b = BOUNDS[0].swap(0, Ordering::AcqRel);
    (b != 0).then(|| {
        (
            (b - 1) as usize,
            BOUNDS[1].load(Ordering::Relaxed),
            BOUNDS[2].load(Ordering::Acquire),
        )
    })
}

/// Names and addresses of the support functions, for a JIT's symbol table.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("kiln_unary_f32", kiln_unary_f32 as *const u8),
        ("kiln_unary_f64", kiln_unary_f64 as *const u8),
        ("kiln_pow_f32", kiln_pow_f32 as *const u8),
        ("kiln_pow_f64", kiln_pow_f64 as *const u8),
        ("kiln_rem_f32", kiln_rem_f32 as *const u8),
        ("kiln_rem_f64", kiln_rem_f64 as *const u8),
        ("kiln_pow_i32", kiln_pow_i32 as *const u8),
        ("kiln_pow_i64", kiln_pow_i64 as *const u8),
        ("kiln_pow_u64", kiln_pow_u64 as *const u8),
        ("kiln_random_f32", kiln_random_f32 as *const u8),
        ("kiln_random_f64", kiln_random_f64 as *const u8),
        ("kiln_half_to_f32", kiln_half_to_f32 as *const u8),
        ("kiln_f32_to_half", kiln_f32_to_half as *const u8),
        ("kiln_round_half_f64", kiln_round_half_f64 as *const u8),
        ("kiln_bounds_fail", kiln_bounds_fail as *const u8),
    ]
}

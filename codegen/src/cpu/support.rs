//! Functions compiled code calls: the scalar meaning of ops that have no
//! instruction (transcendentals, powers, random samples), taken from
//! `kiln-graph` so the JIT agrees with the reference interpreter.

use kiln_graph::ops::elementwise::{binary_scalar, unary_scalar};
use kiln_graph::ops::random::{normal_element, uniform_element};
use kiln_graph::{BinaryOp, DType, Scalar, UnaryOp};

/// The unary ops compiled code calls out for, by code.
pub(crate) const CALLED_UNARY: [UnaryOp; 8] = [
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Erf,
    UnaryOp::Sigmoid,
    UnaryOp::Rsqrt,
];

extern "C" fn unary_f32(op: u32, x: f32) -> f32 {
    match unary_scalar(CALLED_UNARY[op as usize], Scalar::F32(x)) {
        Scalar::F32(v) => v,
        _ => f32::NAN,
    }
}

extern "C" fn unary_f64(op: u32, x: f64) -> f64 {
    match unary_scalar(CALLED_UNARY[op as usize], Scalar::F64(x)) {
        Scalar::F64(v) => v,
        _ => f64::NAN,
    }
}

extern "C" fn pow_f32(a: f32, b: f32) -> f32 {
    match binary_scalar(BinaryOp::Pow, Scalar::F32(a), Scalar::F32(b)) {
        Scalar::F32(v) => v,
        _ => f32::NAN,
    }
}

extern "C" fn pow_f64(a: f64, b: f64) -> f64 {
    match binary_scalar(BinaryOp::Pow, Scalar::F64(a), Scalar::F64(b)) {
        Scalar::F64(v) => v,
        _ => f64::NAN,
    }
}

extern "C" fn pow_i32(a: i32, b: i32) -> i32 {
    match binary_scalar(BinaryOp::Pow, Scalar::I32(a), Scalar::I32(b)) {
        Scalar::I32(v) => v,
        _ => 0,
    }
}

extern "C" fn pow_i64(a: i64, b: i64) -> i64 {
    match binary_scalar(BinaryOp::Pow, Scalar::I64(a), Scalar::I64(b)) {
        Scalar::I64(v) => v,
        _ => 0,
    }
}

extern "C" fn random_f32(normal: u32, seed: u64, a: f64, b: f64, index: u64) -> f32 {
    let s = if normal != 0 {
        normal_element(DType::F32, seed, a, b, index)
    } else {
        uniform_element(DType::F32, seed, a, b, index)
    };
    match s {
        Scalar::F32(v) => v,
        _ => f32::NAN,
    }
}

extern "C" fn random_f64(normal: u32, seed: u64, a: f64, b: f64, index: u64) -> f64 {
    let s = if normal != 0 {
        normal_element(DType::F64, seed, a, b, index)
    } else {
        uniform_element(DType::F64, seed, a, b, index)
    };
    match s {
        Scalar::F64(v) => v,
        _ => f64::NAN,
    }
}

/// A half value's bits (`bf`: bf16, else f16) as the f32 it is exactly.
extern "C" fn half_to_f32(bits: u32, bf: u32) -> f32 {
    if bf != 0 {
        f32::from_bits(bits << 16)
    } else {
        half::f16::from_bits(bits as u16).to_f32()
    }
}

/// The half bits (`bf`: bf16, else f16) nearest `x` (ties to even).
extern "C" fn f32_to_half(x: f32, bf: u32) -> u32 {
    if bf != 0 {
        half::bf16::from_f32(x).to_bits() as u32
    } else {
        half::f16::from_f32(x).to_bits() as u32
    }
}

/// `x` rounded once to the half type (`bf`: bf16, else f16), as an f32.
extern "C" fn round_half_f64(x: f64, bf: u32) -> f32 {
    if bf != 0 {
        half::bf16::from_f64(x).to_f32()
    } else {
        half::f16::from_f64(x).to_f32()
    }
}

/// Names and addresses of the support functions, for the JIT's symbol table.
pub(crate) fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("kiln_unary_f32", unary_f32 as *const u8),
        ("kiln_unary_f64", unary_f64 as *const u8),
        ("kiln_pow_f32", pow_f32 as *const u8),
        ("kiln_pow_f64", pow_f64 as *const u8),
        ("kiln_pow_i32", pow_i32 as *const u8),
        ("kiln_pow_i64", pow_i64 as *const u8),
        ("kiln_random_f32", random_f32 as *const u8),
        ("kiln_random_f64", random_f64 as *const u8),
        ("kiln_half_to_f32", half_to_f32 as *const u8),
        ("kiln_f32_to_half", f32_to_half as *const u8),
        ("kiln_round_half_f64", round_half_f64 as *const u8),
        ("kiln_row_f32", super::wide::kiln_row_f32 as *const u8),
        (
            "kiln_reduce_row_f32",
            super::wide::kiln_reduce_row_f32 as *const u8,
        ),
    ]
}

//! Functions compiled code calls: the scalar meaning of ops that have no
//! instruction (transcendentals, powers, random samples) and half
//! conversions, from `kiln-rt` (which ahead-of-time binaries link as
//! `libkiln_rt.a`), plus the AVX-512 row code of `wide.rs` (JIT only).

use kiln_graph::UnaryOp;

/// The unary ops compiled code calls out for, by code: the order of
/// `kiln_rt::support::UNARY_NAMES`.
pub(crate) const CALLED_UNARY: [UnaryOp; 17] = [
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tanh,
    UnaryOp::Erf,
    UnaryOp::Sigmoid,
    UnaryOp::Rsqrt,
    UnaryOp::Tan,
    UnaryOp::Asin,
    UnaryOp::Acos,
    UnaryOp::Atan,
    UnaryOp::Sinh,
    UnaryOp::Cosh,
    UnaryOp::Asinh,
    UnaryOp::Acosh,
    UnaryOp::Atanh,
];

/// Names and addresses of the support functions, for the JIT's symbol table.
pub(crate) fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut s = kiln_rt::support::symbols();
    s.push(("kiln_row_f32", kiln_rt::wide::kiln_row_f32 as *const u8));
    s.push((
        "kiln_reduce_row_f32",
        kiln_rt::wide::kiln_reduce_row_f32 as *const u8,
    ));
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn unary_codes_name_the_same_ops() {
        for (op, name) in super::CALLED_UNARY
            .iter()
            .zip(kiln_rt::support::UNARY_NAMES)
        {
            assert_eq!(kiln_graph::ops::elementwise::unary_name(*op), name);
        }
    }
}

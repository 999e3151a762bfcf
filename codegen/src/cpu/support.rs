//! Functions compiled code calls: the scalar meaning of ops that have no
//! instruction (transcendentals, powers, random samples) and half
//! conversions, from `kiln-rt` (which ahead-of-time binaries link as
//! `libkiln_rt.a`), plus the AVX-512 row code of `wide.rs` (JIT only).

/// Names and addresses of the support functions, for the JIT's symbol table.
pub(crate) fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut s = kiln_rt::extern_fns::symbols();
    s.push((
        "kiln_row_f32",
        kiln_rt::avx512_rows::kiln_row_f32 as *const u8,
    ));
    s.push((
        "kiln_reduce_row_f32",
        kiln_rt::avx512_rows::kiln_reduce_row_f32 as *const u8,
    ));
    s
}

//! Functions compiled code calls: the scalar meaning of ops that have no
//! instruction (transcendentals, powers, random samples) and half
//! conversions, from `kiln-rt` (which ahead-of-time binaries link as
//! `libkiln_rt.a`), plus the AVX-512 and AVX2 row code of `wide.rs` (JIT
//! only: an object's calls resolve against `libkiln_rt.a`, which exports
//! every `kiln_*` symbol).

/// Names and addresses of the support functions, for the JIT's symbol table.
pub(crate) fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut s = kiln_rt::extern_fns::symbols();
    use kiln_rt::rows::{self, Isa};
    // Each ISA's symbols (`Isa::row_symbol`, `Isa::reduce_symbol`).
    s.extend([
        (Isa::Avx512.row_symbol(), rows::kiln_row_f32 as *const u8),
        (
            Isa::Avx512.reduce_symbol(),
            rows::kiln_reduce_row_f32 as *const u8,
        ),
        (Isa::Avx2.row_symbol(), rows::kiln_row_f32_avx2 as *const u8),
        (
            Isa::Avx2.reduce_symbol(),
            rows::kiln_reduce_row_f32_avx2 as *const u8,
        ),
    ]);
    s
}

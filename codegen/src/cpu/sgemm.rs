//! f32 matrix products against a right-hand side packed once: dense layers
//! whose weights are constants of the compiled program.
//!
//! The weights `B[k, n]` are packed at compile time into panels of `NR` = 32
//! columns (two AVX-512 vectors), each panel `k`-major and zero-padded to
//! full width. A run packs `MR` = 12 rows of the activations at a time into
//! a small `k`-major block, then a 12 x 32 register tile (24 accumulators)
//! walks the panels: per `k`, two weight vectors and twelve broadcast
//! activations feed 24 fused multiply-adds. `K` is split into blocks of
//! `KC` so a panel's block (32 KiB) stays in L1 while the rows sweep it.
//! Threads split the rows (whole 12-row blocks) or, for few rows, the
//! panels.

use std::arch::x86_64::*;

/// Columns per panel.
const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 12;
/// Depth of one pass over a panel.
const KC: usize = 256;

/// True when this host runs the kernels here.
pub(crate) fn available() -> bool {
    super::wide::available()
}

/// A right-hand side `[k, n]` packed into 32-column panels.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs `b`, element `[r, c]` at `b[r * rs + c * cs]`.
    pub(crate) fn new(b: &[f32], rs: usize, cs: usize, k: usize, n: usize) -> PackedB {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for p in 0..panels {
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for r in 0..k {
                for j in 0..NR.min(n - p * NR) {
                    panel[r * NR + j] = b[r * rs + (p * NR + j) * cs];
                }
            }
        }
        PackedB { k, n, data }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// The left-hand side: `[m, k]`, element `[r, c]` at `a[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Lhs {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
    pub m: usize,
}

/// `out[m, n] = a @ b` (`out` contiguous), over up to `threads` threads of
/// the team where `parallel` (the product is large enough to pay).
///
/// # Safety
/// `a` must describe a readable `[m, k]` view and `out` point at `m * n`
/// writable floats; the host must have AVX-512 F and DQ.
pub(crate) unsafe fn matmul(a: Lhs, b: &PackedB, out: *mut f32, threads: usize, parallel: bool) {
    let blocks = a.m.div_ceil(MR);
    let panels = b.panels();
    let out = Out(out);
    let team = super::team::Team::global();
    let threads = threads.min(team.size());
    if !parallel || threads < 2 {
        // SAFETY: as the caller promises.
        return unsafe { part(a, b, out.0, (0, a.m), (0, panels)) };
    }
    // Rows (whole 12-row blocks) when there are enough to go round: each
    // thread then packs only its own rows (measured faster than splitting
    // the panels, even where the panels share out more evenly).
    let by_rows = blocks >= 2 * threads;
    let units = if by_rows { blocks } else { panels };
    let parts = threads.min(units);
    team.run(parts, &|t| {
        let (lo, hi) = (units * t / parts, units * (t + 1) / parts);
        let (rows, cols) = if by_rows {
            ((lo * MR, (hi * MR).min(a.m)), (0, panels))
        } else {
            ((0, a.m), (lo, hi))
        };
        let o = out;
        // SAFETY: the parts write disjoint tiles of `out`.
        unsafe { part(a, b, o.0, rows, cols) }
    });
}

#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: threads write disjoint parts of the output.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
// SAFETY: the left-hand side is only read.
unsafe impl Send for Lhs {}
unsafe impl Sync for Lhs {}

/// Rows `rows.0..rows.1` by panels `cols.0..cols.1` of the product. Per
/// depth block, the part's rows are packed first; then each panel's block
/// stays in L1 while every row block passes over it.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn part(a: Lhs, b: &PackedB, out: *mut f32, rows: (usize, usize), cols: (usize, usize)) {
    let k = b.k;
    let n = b.n;
    let blocks = (rows.1 - rows.0).div_ceil(MR);
    let mut apack = vec![0.0f32; blocks * MR * KC.min(k)];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        for bi in 0..blocks {
            let i0 = rows.0 + bi * MR;
            let mr = MR.min(rows.1 - i0);
            let dst = &mut apack[bi * MR * kc..(bi + 1) * MR * kc];
            // SAFETY: rows i0..i0+mr and columns k0..k0+kc lie in the view.
            unsafe {
                for kk in 0..kc {
                    for r in 0..mr {
                        dst[kk * MR + r] = *a
                            .ptr
                            .offset((i0 + r) as isize * a.rs + (k0 + kk) as isize * a.cs);
                    }
                }
            }
        }
        for p in cols.0..cols.1 {
            let bp = b.data[p * k * NR + k0 * NR..].as_ptr();
            let width = NR.min(n - p * NR);
            let first = k0 == 0;
            for bi in 0..blocks {
                let i0 = rows.0 + bi * MR;
                let mr = MR.min(rows.1 - i0);
                let ap = apack[bi * MR * kc..].as_ptr();
                // SAFETY: the tile lies inside `out` ([m, n], contiguous).
                let c = unsafe { out.add(i0 * n + p * NR) };
                unsafe {
                    match mr {
                        12 => tile::<12>(ap, bp, kc, c, n, first, width),
                        11 => tile::<11>(ap, bp, kc, c, n, first, width),
                        10 => tile::<10>(ap, bp, kc, c, n, first, width),
                        9 => tile::<9>(ap, bp, kc, c, n, first, width),
                        8 => tile::<8>(ap, bp, kc, c, n, first, width),
                        7 => tile::<7>(ap, bp, kc, c, n, first, width),
                        6 => tile::<6>(ap, bp, kc, c, n, first, width),
                        5 => tile::<5>(ap, bp, kc, c, n, first, width),
                        4 => tile::<4>(ap, bp, kc, c, n, first, width),
                        3 => tile::<3>(ap, bp, kc, c, n, first, width),
                        2 => tile::<2>(ap, bp, kc, c, n, first, width),
                        _ => tile::<1>(ap, bp, kc, c, n, first, width),
                    }
                }
            }
        }
        k0 += kc;
    }
}

/// One `R` x 32 tile over depth `kc`: `c = (first ? 0 : c) + a @ b`, the
/// tile's first `width` columns stored.
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
unsafe fn tile<const R: usize>(
    a: *const f32,
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
    width: usize,
) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    // SAFETY: `a` holds kc * MR floats, `b` kc * NR, `c` the tile.
    unsafe {
        for kk in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            let ar = a.add(kk * MR);
            for r in 0..R {
                let x = _mm512_set1_ps(*ar.add(r));
                lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
            }
        }
        let m0: __mmask16 = if width >= 16 {
            0xffff
        } else {
            ((1u32 << width) - 1) as __mmask16
        };
        let m1: __mmask16 = if width >= 32 {
            0xffff
        } else if width > 16 {
            ((1u32 << (width - 16)) - 1) as __mmask16
        } else {
            0
        };
        for r in 0..R {
            let row = c.add(r * ldc);
            let (mut x, mut y) = (lo[r], hi[r]);
            if !first {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m0, row));
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, x);
            _mm512_mask_storeu_ps(row.add(16), m1, y);
        }
    }
}

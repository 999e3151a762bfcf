//! f32 matrix products against a packed right-hand side: dense layers whose
//! weights are constants of the compiled program (packed once, at compile
//! time), and products of computed operands such as attention's (packed at
//! run time into a scratch buffer kept with the step).
//!
//! The right-hand side `B[k, n]` is packed into panels of `NR` = 32
//! columns (two AVX-512 vectors), each panel `k`-major and zero-padded to
//! full width. A run packs `MR` = 12 rows of the activations at a time into
//! a small `k`-major block, then a 12 x 32 register tile (24 accumulators)
//! walks the panels: per `k`, two weight vectors and twelve broadcast
//! activations feed 24 fused multiply-adds. `K` is split into blocks of
//! `KC` so a panel's block (32 KiB) stays in L1 while the rows sweep it,
//! and the rows into chunks of 144 whose packed block stays in L2 while
//! the panels sweep it.
//! Threads split the rows (whole 12-row blocks) or, for few rows, the
//! panels.
//!
//! Hosts with AVX2 and FMA but no AVX-512 run the same packed layouts
//! with a smaller register tile: sixteen 256-bit registers hold a 6 x 16
//! tile (12 accumulators, two weight vectors, one broadcast), so each
//! 12 x 32 tile runs as four of them, each over the whole depth block
//! while it sits in L1. Which code runs is an [`Isa`], fixed when the
//! operands are packed.

use std::arch::x86_64::*;

/// The instruction set a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F and DQ: 12 x 32 tiles.
    Avx512,
    /// AVX2 and FMA: 6 x 16 tiles.
    Avx2,
}

/// The kernels this host runs: AVX-512 where it has it and `avx512` allows
/// (`KILN_AVX512=0` measures the AVX2 code on an AVX-512 host), else AVX2
/// with FMA, else none.
pub fn isa(avx512: bool) -> Option<Isa> {
    if avx512 && crate::avx512() {
        Some(Isa::Avx512)
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Some(Isa::Avx2)
    } else {
        None
    }
}

/// Columns per panel.
const NR: usize = 32;
/// Rows per register tile.
pub(crate) const MR: usize = 12;
/// Depth of one pass over a panel.
const KC: usize = 256;
/// Row blocks per chunk of a part: a chunk's packed rows of one depth
/// block (144 x 256 floats, 144 KiB) stay in L2 while every panel passes
/// over them. With all of a 1576-row product's rows packed at once (1.5
/// MiB), each panel streamed them from L3: ViT-b8's MLP products ran at
/// 30-32 GF/s on a Zen 1, against 34-35 chunked (the `gemm` crate 33-34).
const MC_BLOCKS: usize = 12;

/// A right-hand side `[k, n]` packed into 32-column panels, for products
/// on `isa`.
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
    isa: Isa,
}

/// Floats a packed `[k, n]` right-hand side takes.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * k * NR
}

/// Packs `[k, n]` (element `[r, c]` at `b[r * rs + c * cs]`) into `dst`
/// (`packed_len(k, n)` floats); the padding columns are left as they are
/// (the tiles compute them but never store them).
///
/// # Safety
/// `b` must address every element of the view.
pub unsafe fn pack_into(dst: &mut [f32], b: *const f32, rs: isize, cs: isize, k: usize, n: usize) {
    for p in 0..n.div_ceil(NR) {
        let panel = &mut dst[p * k * NR..(p + 1) * k * NR];
        let width = NR.min(n - p * NR);
        if rs == 1 && cs != 1 {
            // A transposed view: read down its contiguous columns.
            for j in 0..width {
                let col = b.wrapping_offset((p * NR + j) as isize * cs);
                for r in 0..k {
                    // SAFETY: inside the view, as the caller promises.
                    panel[r * NR + j] = unsafe { *col.add(r) };
                }
            }
            continue;
        }
        for r in 0..k {
            let row = &mut panel[r * NR..r * NR + width];
            if cs == 1 {
                // Contiguous rows (activations, im2col columns): a copy.
                // SAFETY: inside the view, as the caller promises.
                let src = unsafe {
                    std::slice::from_raw_parts(b.offset(r as isize * rs + (p * NR) as isize), width)
                };
                row.copy_from_slice(src);
                continue;
            }
            for (j, v) in row.iter_mut().enumerate() {
                // SAFETY: inside the view, as the caller promises.
                *v = unsafe { *b.offset(r as isize * rs + (p * NR + j) as isize * cs) };
            }
        }
    }
}

impl PackedB {
    /// Packs `b`, element `[r, c]` at `b[r * rs + c * cs]`, for products
    /// on `isa` (one [`isa`] gave).
    pub fn new(b: &[f32], rs: usize, cs: usize, k: usize, n: usize, isa: Isa) -> PackedB {
        assert!(k > 0 && n > 0 && (k - 1) * rs + (n - 1) * cs < b.len());
        let mut data = vec![0.0f32; packed_len(k, n)];
        // SAFETY: the assertion above keeps every read inside `b`.
        unsafe { pack_into(&mut data, b.as_ptr(), rs as isize, cs as isize, k, n) };
        PackedB { k, n, data, isa }
    }

    fn view(&self) -> Packed<'_> {
        Packed {
            k: self.k,
            n: self.n,
            data: &self.data,
        }
    }
}

/// A packed right-hand side, borrowed.
#[derive(Clone, Copy)]
struct Packed<'a> {
    k: usize,
    n: usize,
    data: &'a [f32],
}

impl Packed<'_> {
    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// A left-hand side `[m, k]` packed once (a convolution's constant
/// weights): per depth block of `KC`, every 12-row block's chunks as
/// [`pack_rows`] writes them, so a product reads them as they are.
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
    isa: Isa,
}

impl PackedA {
    /// Packs `a` (`[a.m, k]`) for products on `isa` (one [`isa`] gave).
    ///
    /// # Safety
    /// `a` must describe a readable `[m, k]` view.
    pub unsafe fn new(a: Lhs, k: usize, isa: Isa) -> PackedA {
        let blocks = a.m.div_ceil(MR);
        let mut data = vec![0.0f32; blocks * MR * k.div_ceil(KC) * KC.next_multiple_of(KU)];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            for bi in 0..blocks {
                let (i0, len) = (bi * MR, Self::block_len(kc));
                let off = Self::offset(blocks, k0, bi, kc);
                // SAFETY: rows i0.. and depths k0..k0 + kc lie in the view.
                unsafe { pack_rows(a, i0, MR.min(a.m - i0), k0, kc, &mut data[off..off + len]) };
            }
            k0 += kc;
        }
        PackedA {
            m: a.m,
            k,
            data,
            isa,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Floats of one packed row block of depth `kc`.
    fn block_len(kc: usize) -> usize {
        MR * kc.next_multiple_of(KU)
    }

    /// Where row block `bi` of the depth block at `k0` starts (every depth
    /// block before it is a whole `KC` deep).
    fn offset(blocks: usize, k0: usize, bi: usize, kc: usize) -> usize {
        k0 / KC * blocks * MR * KC + bi * Self::block_len(kc)
    }

    fn block(&self, k0: usize, bi: usize) -> *const f32 {
        let kc = KC.min(self.k - k0);
        self.data[Self::offset(self.m.div_ceil(MR), k0, bi, kc)..].as_ptr()
    }
}

/// `out[rows, n] = a[rows, k] @ b`, on this thread: `rows` of a packed
/// left-hand side (starting at a multiple of 12) against a right-hand side
/// `[k, n]` that [`pack_into`] packed into `b`; `out` is `[m, n]`,
/// contiguous.
///
/// # Safety
/// `b` must hold `packed_len(k, n)` floats, `out` `m * n`.
pub unsafe fn packed_rows(
    a: &PackedA,
    rows: std::ops::Range<usize>,
    b: *const f32,
    n: usize,
    out: *mut f32,
) {
    debug_assert!(rows.start.is_multiple_of(MR) && rows.end <= a.m);
    let b = Packed {
        k: a.k,
        n,
        // SAFETY: as the caller promises.
        data: unsafe { std::slice::from_raw_parts(b, packed_len(a.k, n)) },
    };
    let panels = b.panels();
    // SAFETY: as the caller promises.
    unsafe {
        part(
            a.isa,
            Rows::Packed(a),
            &b,
            out,
            (rows.start, rows.end),
            (0, panels),
            None,
            None,
        )
    }
}

/// Rows of a product's left-hand side: a view packed as the product goes,
/// or packed once.
#[derive(Clone, Copy)]
enum Rows<'a> {
    View(Lhs),
    Packed(&'a PackedA),
}

/// The left-hand side: `[m, k]`, element `[r, c]` at `a[r * rs + c * cs]`;
/// or, grouped, rows in groups of `group` (a batch of products sharing
/// one right-hand side, whose batch dim does not merge into the rows),
/// row `r` at `(r / group) * gs + (r % group) * rs`.
#[derive(Clone, Copy)]
pub struct Lhs {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
    pub m: usize,
    /// Rows per group (`m`: one group).
    pub group: usize,
    /// Stride between groups.
    pub gs: isize,
}

impl Lhs {
    /// `[m, k]` with row stride `rs` and column stride `cs`.
    pub fn new(ptr: *const f32, rs: isize, cs: isize, m: usize) -> Lhs {
        Lhs {
            ptr,
            rs,
            cs,
            m,
            group: m.max(1),
            gs: 0,
        }
    }

    /// `groups` blocks of `group` rows each, `gs` apart.
    pub fn grouped(
        ptr: *const f32,
        rs: isize,
        cs: isize,
        group: usize,
        gs: isize,
        groups: usize,
    ) -> Lhs {
        Lhs {
            ptr,
            rs,
            cs,
            m: group * groups,
            group: group.max(1),
            gs,
        }
    }

    /// Where row `r` starts (as an offset in floats from `ptr`).
    fn row(&self, r: usize) -> isize {
        (r / self.group) as isize * self.gs + (r % self.group) as isize * self.rs
    }
}

/// `out[m, n] = a @ b` (`out` contiguous), over up to `threads` threads of
/// the team where `parallel` (the product is large enough to pay), with
/// `epilogue(lo, hi)` over row ranges covering `0..m` once: on each chunk
/// of rows as soon as it is final, where threads split the rows.
///
/// # Safety
/// `a` must describe a readable `[m, k]` view and `out` point at `m * n`
/// writable floats.
pub unsafe fn matmul(
    a: Lhs,
    b: &PackedB,
    out: *mut f32,
    threads: usize,
    parallel: bool,
    epilogue: Option<&(dyn Fn(usize, usize) + Sync)>,
) {
    // SAFETY: the caller's contract.
    unsafe { matmul_fused(a, b, out, threads, parallel, None, epilogue) }
}

/// [`matmul`] with `fused` applied to every element as its tile is stored
/// (AVX2; on AVX-512 to each chunk's tiles right after them), before
/// `epilogue` sees the rows.
///
/// # Safety
/// As [`matmul`]; `fused`'s operands hold `[m, n]` (the residual) and `n`
/// (the bias) floats.
pub unsafe fn matmul_fused(
    a: Lhs,
    b: &PackedB,
    out: *mut f32,
    threads: usize,
    parallel: bool,
    fused: Option<&crate::fuse::Fused>,
    epilogue: Option<&(dyn Fn(usize, usize) + Sync)>,
) {
    let isa = b.isa;
    let b = &b.view();
    let blocks = a.m.div_ceil(MR);
    let panels = b.panels();
    let out = Out(out);
    let team = super::team::Team::global();
    let threads = threads.min(team.size());
    if !parallel || threads < 2 {
        // SAFETY: as the caller promises.
        return unsafe {
            part(
                isa,
                Rows::View(a),
                b,
                out.0,
                (0, a.m),
                (0, panels),
                fused,
                epilogue,
            )
        };
    }
    // Rows (whole 12-row blocks) when there are enough to go round: each
    // thread then packs only its own rows (measured faster than splitting
    // the panels, even where the panels share out more evenly), and applies
    // the epilogue to its rows while they are in its cache.
    let by_rows = blocks >= 2 * threads;
    let units = if by_rows { blocks } else { panels };
    let parts = threads.min(units);
    team.run(parts, &|t| {
        let (lo, hi) = (units * t / parts, units * (t + 1) / parts);
        let (rows, cols) = if by_rows {
            // Even shares of rows (in fours), not of 12-row blocks: 128 rows
            // go 64 and 64 rather than 72 and 56.
            let cut = |t: usize| (a.m * t / parts).next_multiple_of(4).min(a.m);
            ((cut(t), cut(t + 1)), (0, panels))
        } else {
            ((0, a.m), (lo, hi))
        };
        let o = out;
        let done = epilogue.filter(|_| by_rows);
        // SAFETY: the parts write disjoint tiles of `out`.
        unsafe { part(isa, Rows::View(a), b, o.0, rows, cols, fused, done) };
    });
    if let Some(e) = epilogue.filter(|_| !by_rows) {
        e(0, a.m);
    }
}

/// One product of a batch: its left-hand side, right-hand side (`[k, n]`
/// with the batch's strides) and contiguous `[m, n]` output.
#[derive(Clone, Copy)]
pub struct Item {
    pub a: Lhs,
    pub b: *const f32,
    pub out: *mut f32,
}

/// Products whose right-hand sides are computed at run time: each packed
/// into `scratch` first (a cost of `k * n` per product against `m * k * n`
/// multiply-adds), then their row blocks shared out over the team.
///
/// # Safety
/// As [`matmul`], for every item; `b` views with strides `rs`, `cs`;
/// `isa` one [`isa`] gave.
#[allow(clippy::too_many_arguments)]
pub unsafe fn batched(
    isa: Isa,
    items: &[Item],
    rs: isize,
    cs: isize,
    k: usize,
    n: usize,
    scratch: &mut Vec<f32>,
    threads: usize,
    parallel: bool,
) {
    let len = packed_len(k, n);
    if scratch.len() < len * items.len() {
        scratch.resize(len * items.len(), 0.0);
    }
    let Some(m) = items.first().map(|it| it.a.m) else {
        return;
    };
    let team = super::team::Team::global();
    let threads = threads.min(team.size());
    {
        // Pack on every thread when there is work to share.
        let packs = Out(scratch.as_mut_ptr());
        let pack = |i: usize| {
            let o = packs;
            // SAFETY: item i's slice of the scratch is written by this call
            // alone; its view is valid as the caller promises.
            unsafe {
                let dst = std::slice::from_raw_parts_mut(o.0.add(i * len), len);
                pack_into(dst, items[i].b, rs, cs, k, n)
            }
        };
        let parts = threads.min(items.len());
        if parallel && parts > 1 {
            team.run(parts, &|t| {
                (items.len() * t / parts..items.len() * (t + 1) / parts).for_each(pack)
            });
        } else {
            (0..items.len()).for_each(pack);
        }
    }
    let blocks = m.div_ceil(MR);
    let panels = n.div_ceil(NR);
    let scratch = &scratch[..];
    let work = |lo: usize, hi: usize| {
        for w in lo..hi {
            let (i, bi) = (w / blocks, w % blocks);
            let it = items[i];
            let b = Packed {
                k,
                n,
                data: &scratch[i * len..(i + 1) * len],
            };
            let rows = (bi * MR, ((bi + 1) * MR).min(m));
            // SAFETY: items and row blocks write disjoint tiles.
            unsafe {
                part(
                    isa,
                    Rows::View(it.a),
                    &b,
                    it.out,
                    rows,
                    (0, panels),
                    None,
                    None,
                )
            };
        }
    };
    let total = items.len() * blocks;
    let threads = threads.min(total);
    if !parallel || threads < 2 {
        return work(0, total);
    }
    team.run(threads, &|t| {
        work(total * t / threads, total * (t + 1) / threads)
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
// SAFETY: items read their operands and write disjoint outputs.
unsafe impl Send for Item {}
unsafe impl Sync for Item {}

/// Rows `rows.0..rows.1` by panels `cols.0..cols.1` of the product, in
/// chunks of `MC_BLOCKS` row blocks. Per chunk and depth block, the
/// chunk's rows are packed first (unless they were packed once); then
/// each panel's block stays in L1 while every row block of the chunk
/// passes over it. `done(lo, hi)` is called on each chunk's rows once
/// they are final (the epilogue, while they are in cache).
#[allow(clippy::too_many_arguments)]
unsafe fn part(
    isa: Isa,
    a: Rows<'_>,
    b: &Packed<'_>,
    out: *mut f32,
    rows: (usize, usize),
    cols: (usize, usize),
    fused: Option<&crate::fuse::Fused>,
    done: Option<&(dyn Fn(usize, usize) + Sync)>,
) {
    thread_local! {
        /// Packed rows, kept between calls (every float read is written first).
        static APACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let k = b.k;
    let n = b.n;
    let chunk = MC_BLOCKS;
    let all = (rows.1 - rows.0).div_ceil(MR);
    let block_len = MR * KC.min(k).next_multiple_of(KU);
    // Contiguous rows of one depth block feed the AVX2 tiles as they lie:
    // packing them cost as much as the product where the depth is small
    // (MobileNet's 1x1 layers of 16 to 32 channels).
    let direct = match a {
        Rows::View(v) if isa == Isa::Avx2 && v.cs == 1 && v.group >= v.m && k <= DIRECT_K => {
            Some(v)
        }
        _ => None,
    };
    APACK.with_borrow_mut(|apack| {
        if let (Rows::View(_), None) = (a, direct) {
            let need = all.min(chunk) * block_len;
            if apack.len() < need {
                apack.resize(need, 0.0);
            }
        }
        let mut c0 = 0;
        while c0 < all {
            let blocks = chunk.min(all - c0);
            let first_row = rows.0 + c0 * MR;
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                if let (Rows::View(a), None) = (a, direct) {
                    for bi in 0..blocks {
                        let i0 = first_row + bi * MR;
                        let mr = MR.min(rows.1 - i0);
                        let dst = &mut apack[bi * block_len..(bi + 1) * block_len];
                        // SAFETY: rows i0..i0+mr and columns k0..k0+kc lie in the view.
                        unsafe { pack_rows(a, i0, mr, k0, kc, dst) };
                    }
                }
                let first = k0 == 0;
                // In registers on AVX2, as the last depth block stores.
                let fz = fused.filter(|_| k0 + kc == k && isa == Isa::Avx2);
                let tile_at = |p: usize, bi: usize| {
                    let bp = b.data[p * k * NR + k0 * NR..].as_ptr();
                    let width = NR.min(n - p * NR);
                    let i0 = first_row + bi * MR;
                    let mr = MR.min(rows.1 - i0);
                    let (ap, layout) = match (a, direct) {
                        // SAFETY: row i0 of the view.
                        (_, Some(v)) => (unsafe { v.ptr.offset(v.row(i0)) }, (v.rs as usize, KU)),
                        (Rows::View(_), None) => (apack[bi * block_len..].as_ptr(), (KU, MR * KU)),
                        (Rows::Packed(p), None) => {
                            (p.block(k0, first_row / MR + bi), (KU, MR * KU))
                        }
                    };
                    // SAFETY: the tile lies inside `out` ([m, n], contiguous).
                    let c = unsafe { out.add(i0 * n + p * NR) };
                    // SAFETY: as above; the host has the ISA (`isa` chose it).
                    unsafe {
                        match isa {
                            Isa::Avx512 => tile_avx512(mr, ap, bp, kc, c, n, first, width),
                            Isa::Avx2 => {
                                let fz = fz.map(|f| (f, p * NR, i0 * n + p * NR));
                                tile_avx2(mr, ap, layout, bp, kc, c, n, first, width, fz)
                            }
                        }
                    }
                };
                if kc * (cols.1 - cols.0) * NR <= ROWS_OUTER {
                    // Every panel's block fits L1 with room to spare: each
                    // row block's output is finished while it is there
                    // (panel by panel, a chunk's rows of 96 channels, 55
                    // KiB, left L1 between the panels' passes).
                    for bi in 0..blocks {
                        for p in cols.0..cols.1 {
                            tile_at(p, bi);
                        }
                    }
                } else {
                    // Each panel's block stays in L1 while the chunk's row
                    // blocks pass over it.
                    for p in cols.0..cols.1 {
                        for bi in 0..blocks {
                            tile_at(p, bi);
                        }
                    }
                }
                k0 += kc;
            }
            if let Some(f) = fused {
                let (lo, hi) = (first_row, (first_row + blocks * MR).min(rows.1));
                let cs = cols.0 * NR..(cols.1 * NR).min(n);
                // SAFETY: the chunk's final rows, in the output.
                unsafe {
                    if isa == Isa::Avx2 {
                        // The tiles applied the rest.
                        f.activate(out, n, lo..hi, cs)
                    } else {
                        f.apply_rows(out, n, lo..hi, cs)
                    }
                }
            }
            if let Some(done) = done {
                done(first_row, (first_row + blocks * MR).min(rows.1));
            }
            c0 += blocks;
        }
    })
}

/// The deepest product whose contiguous rows the AVX2 tiles read
/// unpacked. Zen 1, one thread: 12544 x 32 x 16 530 -> 430 us, but 3136 x
/// 144 x 24 890 -> 1340 (six rows 576 bytes apart, read once per 16
/// columns, against one packed run).
const DIRECT_K: usize = 32;

/// Floats of the panels' blocks below which a chunk runs row block by row
/// block (every panel for one row block, then the next) rather than panel
/// by panel: 16 KiB, half of L1.
const ROWS_OUTER: usize = 4096;

/// Depth values per chunk of a packed row block.
const KU: usize = 16;

/// Packs rows `i0..i0+mr`, depth `k0..k0+kc` of `a` into `dst` as chunks
/// of `KU` depth values: chunk `c`, row `r`, depth `j` at
/// `(c * MR + r) * KU + j`. Contiguous rows copy a chunk at a time, the
/// last one zero-padded.
unsafe fn pack_rows(a: Lhs, i0: usize, mr: usize, k0: usize, kc: usize, dst: &mut [f32]) {
    let chunks = kc.div_ceil(KU);
    debug_assert!(dst.len() >= chunks * MR * KU);
    let d = dst.as_mut_ptr();
    for r in 0..mr {
        // SAFETY: the row's depth range lies in the view; `dst` holds every chunk.
        unsafe {
            let row = a.ptr.offset(a.row(i0 + r) + k0 as isize * a.cs);
            for c in 0..chunks {
                let o = d.add((c * MR + r) * KU);
                let left = (kc - c * KU).min(KU);
                if a.cs == 1 && left == KU {
                    // A whole chunk: a fixed-size copy (a call to `memmove`
                    // per 64 bytes cost 4% of ViT's run).
                    o.cast::<[f32; KU]>()
                        .write_unaligned(row.add(c * KU).cast::<[f32; KU]>().read_unaligned());
                } else if a.cs == 1 {
                    std::ptr::copy_nonoverlapping(row.add(c * KU), o, left);
                    std::ptr::write_bytes(o.add(left), 0, KU - left);
                } else {
                    for j in 0..left {
                        *o.add(j) = *row.offset((c * KU + j) as isize * a.cs);
                    }
                }
            }
        }
    }
}

/// An `mr` x 32 tile (see [`tile`]) on AVX-512.
#[target_feature(enable = "avx512f,avx512dq")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    mr: usize,
    ap: *const f32,
    bp: *const f32,
    kc: usize,
    c: *mut f32,
    n: usize,
    first: bool,
    width: usize,
) {
    // SAFETY: the caller's contract, as `tile`'s.
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

/// An `mr` x 32 tile on AVX2: up to four 6 x 16 tiles (row halves by
/// column halves), those wholly past `width` skipped.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    mr: usize,
    ap: *const f32,
    layout: (usize, usize),
    bp: *const f32,
    kc: usize,
    c: *mut f32,
    n: usize,
    first: bool,
    width: usize,
    fused: Option<Fz<'_>>,
) {
    for r0 in (0..mr).step_by(6) {
        let rows = (mr - r0).min(6);
        for c0 in (0..width).step_by(16) {
            let w = (width - c0).min(16);
            // SAFETY: rows r0.. of the packed block, columns c0.. of the
            // panel and the tile.
            unsafe {
                let (a, b, o) = (ap.add(r0 * layout.0), bp.add(c0), c.add(r0 * n + c0));
                let f = fused.map(|(f, col, at)| (f, col + c0, at + r0 * n + c0));
                match rows {
                    6 => tile8::<6>(a, layout, b, kc, o, n, first, w, f),
                    5 => tile8::<5>(a, layout, b, kc, o, n, first, w, f),
                    4 => tile8::<4>(a, layout, b, kc, o, n, first, w, f),
                    3 => tile8::<3>(a, layout, b, kc, o, n, first, w, f),
                    2 => tile8::<2>(a, layout, b, kc, o, n, first, w, f),
                    _ => tile8::<1>(a, layout, b, kc, o, n, first, w, f),
                }
            }
        }
    }
}

/// The residual at output element `at` (null without one).
fn residual(f: &crate::fuse::Fused, at: usize) -> *const f32 {
    if f.residual.is_null() {
        std::ptr::null()
    } else {
        f.residual.wrapping_add(at)
    }
}

/// A fused epilogue for a tile: the epilogue, the tile's first column and
/// its first element's position in the output (where the residual is read).
type Fz<'a> = (&'a crate::fuse::Fused, usize, usize);

/// One `R` x 16 tile in eight-lane vectors over depth `kc`: `c = (first ?
/// 0 : c) + a @ b`, then `fused` if any, its first `width` columns stored;
/// `a` is row 0 of the tile in a block `pack_rows` packed, `b` column 0 of
/// the tile in a panel.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile8<const R: usize>(
    a: *const f32,
    (ra, ca): (usize, usize),
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
    width: usize,
    fused: Option<Fz<'_>>,
) {
    use crate::fuse::avx2 as fz;
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    // SAFETY: `a` holds the packed chunks, `b` kc rows of the panel, `c`
    // the tile's `width` columns of R rows.
    unsafe {
        let step = |lo: &mut [__m256; R], hi: &mut [__m256; R], kk: usize, ar: *const f32| {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*ar.add(r * ra));
                lo[r] = _mm256_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(x, b1, hi[r]);
            }
        };
        let full = kc / KU;
        for ch in 0..full {
            let base = a.add(ch * ca);
            for j in 0..KU {
                step(&mut lo, &mut hi, ch * KU + j, base.add(j));
            }
        }
        let base = a.add(full * ca);
        for j in 0..kc % KU {
            step(&mut lo, &mut hi, full * KU + j, base.add(j));
        }
        if width == 16 {
            let bias = fused.map(|(f, col, _)| {
                (
                    fz::bias(f, col, None),
                    fz::bias(f, col + 8, None),
                    fz::bounds(f),
                )
            });
            for r in 0..R {
                let row = c.add(r * ldc);
                let (mut x, mut y) = (lo[r], hi[r]);
                if !first {
                    x = _mm256_add_ps(x, _mm256_loadu_ps(row));
                    y = _mm256_add_ps(y, _mm256_loadu_ps(row.add(8)));
                }
                if let (Some((f, _, at)), Some((b0, b1, bs))) = (fused, bias) {
                    let at = at + r * ldc;
                    x = fz::apply(x, b0, residual(f, at), None, bs);
                    y = fz::apply(y, b1, residual(f, at + 8), None, bs);
                }
                _mm256_storeu_ps(row, x);
                _mm256_storeu_ps(row.add(8), y);
            }
        } else {
            // Lanes below `width` (of 0..16) stored.
            let lane = |i: i32| if (i as usize) < width { -1 } else { 0 };
            let m0 = _mm256_setr_epi32(
                lane(0),
                lane(1),
                lane(2),
                lane(3),
                lane(4),
                lane(5),
                lane(6),
                lane(7),
            );
            let m1 = _mm256_setr_epi32(
                lane(8),
                lane(9),
                lane(10),
                lane(11),
                lane(12),
                lane(13),
                lane(14),
                lane(15),
            );
            let bias = fused.map(|(f, col, _)| {
                let b = fz::bounds(f);
                (
                    fz::bias(f, col, Some(m0)),
                    fz::bias(f, col + 8, Some(m1)),
                    b,
                )
            });
            for r in 0..R {
                let row = c.add(r * ldc);
                let (mut x, mut y) = (lo[r], hi[r]);
                if !first {
                    x = _mm256_add_ps(x, _mm256_maskload_ps(row, m0));
                    y = _mm256_add_ps(y, _mm256_maskload_ps(row.add(8), m1));
                }
                if let (Some((f, _, at)), Some((b0, b1, bs))) = (fused, bias) {
                    let at = at + r * ldc;
                    x = fz::apply(x, b0, residual(f, at), Some(m0), bs);
                    y = fz::apply(y, b1, residual(f, at + 8), Some(m1), bs);
                }
                _mm256_maskstore_ps(row, m0, x);
                _mm256_maskstore_ps(row.add(8), m1, y);
            }
        }
    }
}

/// One `R` x 32 tile over depth `kc`: `c = (first ? 0 : c) + a @ b`, the
/// tile's first `width` columns stored. `a` is packed by `pack_rows`.
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
    // SAFETY: `a` holds the packed chunks, `b` kc * NR floats, `c` the tile.
    unsafe {
        let step = |lo: &mut [__m512; R], hi: &mut [__m512; R], kk: usize, ar: *const f32| {
            let b0 = _mm512_loadu_ps(b.add(kk * NR));
            let b1 = _mm512_loadu_ps(b.add(kk * NR + 16));
            for r in 0..R {
                let x = _mm512_set1_ps(*ar.add(r * KU));
                lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
            }
        };
        let full = kc / KU;
        for ch in 0..full {
            let base = a.add(ch * MR * KU);
            for j in 0..KU {
                step(&mut lo, &mut hi, ch * KU + j, base.add(j));
            }
        }
        let base = a.add(full * MR * KU);
        for j in 0..kc % KU {
            step(&mut lo, &mut hi, full * KU + j, base.add(j));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The ISAs the host runs (both, on an AVX-512 host).
    fn isas() -> Vec<Isa> {
        let mut v = Vec::new();
        if crate::avx512() {
            v.push(Isa::Avx512);
        }
        if isa(false) == Some(Isa::Avx2) {
            v.push(Isa::Avx2);
        }
        v
    }

    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for kk in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + kk] as f64 * b[kk * n + j] as f64;
                }
            }
        }
        c.into_iter().map(|v| v as f32).collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    /// Every tile height and edge width, one and two depth blocks, each
    /// way of running a product (rows packed as they go or once, one
    /// thread or the team, a batch packed at run time), on every ISA.
    #[test]
    fn products_match_the_definition() {
        let isas = isas();
        assert!(
            !isas.is_empty() || !std::arch::is_x86_feature_detected!("avx2"),
            "an AVX2 host runs kiln's GEMM"
        );
        for &isa in &isas {
            for (m, k, n) in [
                (1, 1, 1),
                (5, 7, 3),
                (12, 16, 32),
                (13, 17, 33),
                (7, 40, 16),
                (25, 300, 70),
                (6, 513, 9),
                (30, 33, 100),
                // Past one chunk of rows (144), whole and partial.
                (300, 20, 40),
                (161, 260, 35),
            ] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0)
                    .collect();
                let want = reference(&a, &b, m, k, n);
                let what = format!("{isa:?} m {m} k {k} n {n}");
                let lhs = Lhs::new(a.as_ptr(), k as isize, 1, m);
                let pb = PackedB::new(&b, n, 1, k, n, isa);
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; m * n];
                    // The epilogue sees each row once, already final.
                    let seen = std::sync::Mutex::new(vec![0u8; m]);
                    let at = Out(out.as_mut_ptr());
                    let check = |lo: usize, hi: usize| {
                        let o = at;
                        let rows =
                            unsafe { std::slice::from_raw_parts(o.0.add(lo * n), (hi - lo) * n) };
                        close(
                            rows,
                            &want[lo * n..hi * n],
                            &format!("{what} t{threads} rows {lo}..{hi}"),
                        );
                        seen.lock().unwrap()[lo..hi]
                            .iter_mut()
                            .for_each(|s| *s += 1);
                    };
                    unsafe {
                        matmul(
                            lhs,
                            &pb,
                            out.as_mut_ptr(),
                            threads,
                            threads > 1,
                            Some(&check),
                        )
                    };
                    close(&out, &want, &format!("{what} matmul t{threads}"));
                    assert!(
                        seen.into_inner().unwrap().iter().all(|&s| s == 1),
                        "{what} t{threads}: epilogue rows"
                    );
                }
                // A fused epilogue (bias, residual, clamp; each part alone
                // too), on AVX2 in the tiles, on AVX-512 per chunk.
                let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 - 3.0).collect();
                let res: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
                use crate::fuse::Act;
                for (with_bias, with_res, lo, hi, act) in [
                    (true, true, 0.0, 6.0, Act::Identity),
                    (true, false, 0.0, f32::INFINITY, Act::Identity),
                    (false, true, f32::NEG_INFINITY, 1.5, Act::Identity),
                    (true, false, f32::NEG_INFINITY, f32::INFINITY, Act::Identity),
                    (true, false, f32::NEG_INFINITY, f32::INFINITY, Act::Silu),
                    (true, true, -2.0, f32::INFINITY, Act::HardSwish),
                ] {
                    let f = crate::fuse::Fused {
                        bias: if with_bias {
                            bias.as_ptr()
                        } else {
                            std::ptr::null()
                        },
                        residual: if with_res {
                            res.as_ptr()
                        } else {
                            std::ptr::null()
                        },
                        lo,
                        hi,
                        act,
                    };
                    let fused_want: Vec<f32> = (0..m * n)
                        .map(|i| {
                            let mut v = want[i];
                            if with_bias {
                                v += bias[i % n];
                            }
                            if with_res {
                                v += res[i];
                            }
                            act.apply(v.max(lo).min(hi))
                        })
                        .collect();
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; m * n];
                        unsafe {
                            matmul_fused(
                                lhs,
                                &pb,
                                out.as_mut_ptr(),
                                threads,
                                threads > 1,
                                Some(&f),
                                None,
                            )
                        };
                        close(
                            &out,
                            &fused_want,
                            &format!(
                                "{what} fused {with_bias} {with_res} [{lo}, {hi}] {act:?} t{threads}"
                            ),
                        );
                    }
                }
                // Rows packed once, run by row blocks.
                let pa = unsafe { PackedA::new(lhs, k, isa) };
                let mut out = vec![f32::NAN; m * n];
                for lo in (0..m).step_by(MR) {
                    unsafe {
                        packed_rows(
                            &pa,
                            lo..(lo + MR).min(m),
                            pb.data.as_ptr(),
                            n,
                            out.as_mut_ptr(),
                        )
                    };
                }
                close(&out, &want, &format!("{what} packed rows"));
                let mut out = vec![f32::NAN; m * n];
                unsafe { packed_rows(&pa, 0..m, pb.data.as_ptr(), n, out.as_mut_ptr()) };
                close(&out, &want, &format!("{what} packed rows at once"));
                // A batch of two, the second the first's transpose-free twin.
                let mut outs = vec![f32::NAN; 2 * m * n];
                let items = [
                    Item {
                        a: lhs,
                        b: b.as_ptr(),
                        out: outs.as_mut_ptr(),
                    },
                    Item {
                        a: lhs,
                        b: b.as_ptr(),
                        out: outs[m * n..].as_mut_ptr(),
                    },
                ];
                let mut scratch = Vec::new();
                unsafe { batched(isa, &items, n as isize, 1, k, n, &mut scratch, 2, true) };
                close(&outs[..m * n], &want, &format!("{what} batched 0"));
                close(&outs[m * n..], &want, &format!("{what} batched 1"));
            }
        }
    }

    /// Grouped rows: a time-major view `[t, b, k]` of batch-major data
    /// `[b, t, k]` (an RNN's input projection) as one product of `t * b`
    /// rows: within a group (a time step) rows `t * k` apart, groups `k`
    /// apart.
    #[test]
    fn grouped_rows_match_the_definition() {
        for &isa in &isas() {
            for (batch, steps, k, n) in [
                (8, 32, 64, 40),
                (3, 5, 17, 33),
                (1, 7, 9, 5),
                (13, 2, 300, 16),
            ] {
                // x[b, t, c] at (b * steps + t) * k + c.
                let x: Vec<f32> = (0..batch * steps * k)
                    .map(|i| ((i * 29 % 103) as f32 - 51.0) / 26.0)
                    .collect();
                let w: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 41 % 89) as f32 - 44.0) / 22.0)
                    .collect();
                // The time-major rows, gathered: row t * batch + b.
                let mut rows = Vec::with_capacity(steps * batch * k);
                for t in 0..steps {
                    for b in 0..batch {
                        rows.extend_from_slice(&x[(b * steps + t) * k..][..k]);
                    }
                }
                let want = reference(&rows, &w, steps * batch, k, n);
                let lhs = Lhs::grouped(
                    x.as_ptr(),
                    (steps * k) as isize,
                    1,
                    batch,
                    k as isize,
                    steps,
                );
                let pb = PackedB::new(&w, n, 1, k, n, isa);
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; steps * batch * n];
                    unsafe { matmul(lhs, &pb, out.as_mut_ptr(), threads, threads > 1, None) };
                    close(
                        &out,
                        &want,
                        &format!("{isa:?} grouped {batch}x{steps}x{k}x{n} t{threads}"),
                    );
                }
            }
        }
    }
}

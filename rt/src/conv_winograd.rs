//! 3x3 f32 convolutions with stride 1 as Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016): each 2x2 block of output pixels (a tile) comes from a
//! 4x4 patch of the input, and in the transformed domain the 3x3 filter's
//! 9 taps per output pixel become 16 products per tile, 4 per pixel: 2.25
//! times fewer multiply-adds. ResNet's 3x3 layers are most of its work, and
//! ONNX Runtime's direct kernels run them near the FMA units' peak, so doing
//! fewer multiply-adds is the way past it.
//!
//! With `U = G g G^T` (per output and input channel, once: the weights are
//! constants), `V = B^T d B` (per input channel and tile) and `Y = A^T M A`:
//! - for each of the 16 positions `xi` of the 4x4 transformed tile, the
//!   products over input channels are one matrix product
//!   `M[xi][k, tile] = U[xi][k, c] @ V[xi][c, tile]`, run on kiln's packed
//!   GEMM (`sgemm.rs`) with `U[xi]` packed once as its left-hand side;
//! - tiles go in blocks of whole tile rows (about 32 tiles), each block's
//!   `V` written by the input transform straight into the GEMM's 32-column
//!   panel layout and its `M` transformed back into output rows while both
//!   are in cache; threads take blocks (so one image splits too).
//!
//! The input transform runs on vectors of 8 tiles along a row. A tile's
//! patch starts two input columns after the previous one, so each input
//! row is first split into its even and odd columns (zero where the patch
//! reaches the padding): a patch's four columns are then `even[t]`,
//! `odd[t]`, `even[t + 1]`, `odd[t + 1]` for tile `t`, four contiguous
//! loads for 8 tiles. Rows of tiles are padded to a multiple of 8 tiles
//! (those past the plane are computed and never stored).
//!
//! Where that padding would waste more than a quarter of the last vector
//! (7x7 planes: 4 tiles a row in 8 lanes) the plan is flat instead: tiles
//! numbered across the images without padding, transformed one at a time
//! (cheap beside products over the hundreds of channels such layers
//! have), in blocks of up to 64 tiles whose products and output transform
//! split by output channels across the team, so one 7x7 image still runs
//! on every thread.
//!
//! Rounding: the transforms add at most four values and halve, so the
//! result differs from a direct sum by rounding of the same order (the
//! conv tests hold it to the direct kernels' tolerance).

use super::SendPtr;
use crate::sgemm::{self, Isa, Lhs, PackedA};
use std::arch::x86_64::*;
use std::sync::Arc;

/// Tiles per vector of the transforms.
const L: usize = 8;
/// Positions of a transformed tile.
const XI: usize = 16;
/// Columns of a GEMM panel (`sgemm`'s `NR`).
const PANEL: usize = 32;
/// Tiles per block of the flat plan.
const FLAT_BLOCK: usize = 64;

/// A Winograd F(2x2, 3x3) plan for one shape.
pub(crate) struct Winograd {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    /// Output channels.
    k: usize,
    oh: usize,
    ow: usize,
    top: usize,
    left: usize,
    /// Tile rows, tiles per row, and tiles per row padded to whole vectors.
    th: usize,
    tw: usize,
    twp: usize,
    /// Tile rows per block.
    rows: usize,
    /// Small planes (rows of tiles that would leave much of their last
    /// vector empty, as 7x7's 4 tiles in 8 lanes): tiles numbered across
    /// the images with no padding, blocks of up to [`FLAT_BLOCK`] of them
    /// transformed one by one, and each block's products and output
    /// transform split by output channels across the team.
    flat: bool,
    isa: Isa,
    /// `U[xi]` (`[k, c]`) packed for the GEMM; shared by forks once the
    /// weights are constants.
    u: Option<Arc<Vec<PackedA>>>,
    prepacked: bool,
    /// Per thread: the staged input rows, a block's `V` and its `M`.
    scratch: Vec<f32>,
}

impl Winograd {
    /// A plan for a 3x3, stride-1, undilated f32 convolution of one group
    /// on a host with AVX2 and FMA, else `None`.
    pub(crate) fn new(
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        avx512: bool,
    ) -> Option<Winograd> {
        let [n, c, h, w] = input;
        let [k, cg, kh, kw] = weight;
        if cg != c || [kh, kw] != [3, 3] || stride != [1, 1] || dilation != [1, 1] {
            return None;
        }
        if n == 0 || c == 0 || k == 0 || out_hw[0] == 0 || out_hw[1] == 0 {
            return None;
        }
        let isa = sgemm::isa(avx512)?;
        let (th, tw) = (out_hw[0].div_ceil(2), out_hw[1].div_ceil(2));
        let twp = tw.next_multiple_of(L);
        // About one panel of tiles a block, while its V stays within
        // 256 KiB (half of a Zen 1 core's L2).
        let mut rows = (PANEL / twp).max(1).min(th);
        while rows > 1 && XI * c * rows * twp * 4 > 256 << 10 {
            rows /= 2;
        }
        let flat = 4 * (twp - tw) > twp;
        Some(Winograd {
            flat,
            n,
            c,
            h,
            w,
            k,
            oh: out_hw[0],
            ow: out_hw[1],
            top: padding[0],
            left: padding[1],
            th,
            tw,
            twp,
            rows,
            isa,
            u: None,
            prepacked: false,
            scratch: Vec::new(),
        })
    }

    /// Whether tiles go unpadded, one by one (see `flat`).
    pub(crate) fn flat(&self) -> bool {
        self.flat
    }

    /// A copy for another concurrent caller: weights transformed once are
    /// shared; the scratch is its own.
    pub(crate) fn fork(&self) -> Winograd {
        Winograd {
            u: if self.prepacked { self.u.clone() } else { None },
            scratch: Vec::new(),
            ..*self
        }
    }

    /// Transforms and packs constant weights now, once.
    ///
    /// # Safety
    /// `w` holds the `k * c * 9` weights.
    pub(crate) unsafe fn prepack(&mut self, w: *const f32) {
        self.u = Some(Arc::new(unsafe { self.transform_weights(w) }));
        self.prepacked = true;
    }

    /// `U[xi] = (G g G^T)[xi]` for every output and input channel, as 16
    /// `[k, c]` matrices packed for the GEMM.
    ///
    /// # Safety
    /// `w` holds the `k * c * 9` weights.
    unsafe fn transform_weights(&self, w: *const f32) -> Vec<PackedA> {
        let (k, c) = (self.k, self.c);
        let mut u = vec![0.0f32; XI * k * c];
        for o in 0..k {
            for i in 0..c {
                // SAFETY: filter (o, i) lies in the weights.
                let g = unsafe { std::slice::from_raw_parts(w.add((o * c + i) * 9), 9) };
                // G g: 4 x 3, then (G g) G^T: 4 x 4.
                let mut t = [[0.0f32; 3]; 4];
                for j in 0..3 {
                    let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                    t[0][j] = g0;
                    t[1][j] = (g0 + g1 + g2) * 0.5;
                    t[2][j] = (g0 - g1 + g2) * 0.5;
                    t[3][j] = g2;
                }
                for (r, row) in t.iter().enumerate() {
                    let [t0, t1, t2] = *row;
                    let v = [t0, (t0 + t1 + t2) * 0.5, (t0 - t1 + t2) * 0.5, t2];
                    for (j, x) in v.into_iter().enumerate() {
                        u[((r * 4 + j) * k + o) * c + i] = x;
                    }
                }
            }
        }
        (0..XI)
            .map(|xi| {
                let a = Lhs::new(u[xi * k * c..].as_ptr(), c as isize, 1, k);
                // SAFETY: `u[xi]` is `[k, c]`, contiguous.
                unsafe { PackedA::new(a, c, self.isa) }
            })
            .collect()
    }

    /// Floats of a block's `V` for one position: `c` rows of the block's
    /// tiles in 32-column panels.
    fn v_len(&self) -> usize {
        sgemm::packed_len(self.c, self.rows * self.twp)
    }

    /// Floats of the four staged input rows, each split into even and odd
    /// columns (`twp + L + 1` each: a vector's reach past the last tile).
    fn stage_len(&self) -> usize {
        8 * (self.twp + L + 1)
    }

    /// Floats of one thread's scratch: four staged rows (even and odd
    /// columns), then `V`, then `M`.
    fn per_thread(&self) -> usize {
        (self.stage_len() + XI * self.v_len() + XI * self.k * self.rows * self.twp)
            .next_multiple_of(16)
    }

    /// Runs the convolution (never its epilogue: blocks of rows end
    /// before a channel's plane is whole).
    ///
    /// # Safety
    /// `out`, `x`, `w` hold the plan's output, input and weights.
    pub(crate) unsafe fn run(
        &mut self,
        out: *mut f32,
        x: *const f32,
        w: *const f32,
        par: gemm::Parallelism,
    ) -> bool {
        if !self.prepacked {
            // Weights computed at run time: transformed on every run.
            // SAFETY: the caller's weights.
            self.u = Some(Arc::new(unsafe { self.transform_weights(w) }));
        }
        let team = crate::team::Team::global();
        let threads = super::team_threads(par);
        if self.flat {
            // SAFETY: the caller's buffers.
            unsafe { self.run_flat(out, x, threads) };
            return false;
        }
        let blocks = self.th.div_ceil(self.rows);
        let units = self.n * blocks;
        let parts = threads.min(units);
        let per = self.per_thread();
        if self.scratch.len() < per * parts + 16 {
            self.scratch = vec![0.0; per * parts + 16];
        }
        let first = self.scratch.as_ptr().align_offset(64).min(15);
        // SAFETY: within the scratch (16 floats of slack).
        let base = SendPtr(unsafe { self.scratch.as_mut_ptr().add(first) });
        let this = &*self;
        let (out, x) = (SendPtr(out), SendPtr(x as *mut f32));
        team.run(parts, &|t| {
            let (base, out, x) = (base, out, x);
            // SAFETY: part t owns scratch slot t and the output rows of
            // its blocks.
            let s = unsafe { base.0.add(t * per) };
            for unit in units * t / parts..units * (t + 1) / parts {
                let (b, blk) = (unit / blocks, unit % blocks);
                unsafe { this.block(b, blk, out.0, x.0, s) };
            }
        });
        false
    }

    /// The flat plan: per block of tiles, the input transform here, then
    /// output channels (whole 12-row blocks of the GEMM) across the team,
    /// each part its products and output transform.
    ///
    /// # Safety
    /// As [`Winograd::run`].
    unsafe fn run_flat(&mut self, out: *mut f32, x: *const f32, threads: usize) {
        let tiles = self.n * self.th * self.tw;
        let pb = FLAT_BLOCK.min(tiles);
        let vlen = sgemm::packed_len(self.c, pb);
        let need = XI * vlen + XI * self.k * pb;
        if self.scratch.len() < need {
            self.scratch = vec![0.0; need];
        }
        let v = SendPtr(self.scratch.as_mut_ptr());
        // SAFETY: M follows V in the scratch.
        let m = SendPtr(unsafe { v.0.add(XI * vlen) });
        let this = &*self;
        let (out, x) = (SendPtr(out), SendPtr(x as *mut f32));
        let rows = self.k.div_ceil(sgemm::MR);
        let parts = threads.min(rows);
        let team = crate::team::Team::global();
        for t0 in (0..tiles).step_by(pb) {
            let count = pb.min(tiles - t0);
            // SAFETY: V holds the block's panels; the input is the caller's.
            unsafe { this.input_flat(t0, count, x.0, v.0, vlen) };
            team.run(parts, &|t| {
                let (v, m, out) = (v, m, out);
                let lo = (rows * t / parts * sgemm::MR).min(this.k);
                let hi = (rows * (t + 1) / parts * sgemm::MR).min(this.k);
                let u = this.u.as_ref().expect("transformed weights");
                // SAFETY: part t writes M's rows lo..hi and those output
                // channels of the block's tiles.
                unsafe {
                    for (xi, a) in u.iter().enumerate() {
                        sgemm::packed_rows(
                            a,
                            lo..hi,
                            v.0.add(xi * vlen),
                            count,
                            m.0.add(xi * this.k * count),
                        );
                    }
                    this.output_flat(t0, count, lo..hi, m.0, out.0);
                }
            });
        }
    }

    /// Tile `t` (numbered across images, rows, columns): its image, tile
    /// row and column.
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per = self.th * self.tw;
        (t / per, t % per / self.tw, t % self.tw)
    }

    /// `V` of tiles `t0 .. t0 + count` (block column `q` for tile
    /// `t0 + q`, in 32-column panels as [`Winograd::input_transform`]
    /// writes), one tile at a time.
    ///
    /// # Safety
    /// As [`Winograd::block`]; `v` holds 16 times `vlen` floats.
    unsafe fn input_flat(&self, t0: usize, count: usize, x: *const f32, v: *mut f32, vlen: usize) {
        let (c, h, w) = (self.c, self.h, self.w);
        for q in 0..count {
            let (b, ty, tx) = self.tile(t0 + q);
            let (y0, x0) = (
                (2 * ty) as isize - self.top as isize,
                (2 * tx) as isize - self.left as isize,
            );
            let dst = (q / PANEL) * c * PANEL + q % PANEL;
            for i in 0..c {
                // SAFETY: reads inside the plane (checked); the write is
                // the block's panel slot of (i, q).
                unsafe {
                    let plane = x.add((b * c + i) * h * w);
                    let mut d = [[0.0f32; 4]; 4];
                    for (r, row) in d.iter_mut().enumerate() {
                        let iy = y0 + r as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for (col, e) in row.iter_mut().enumerate() {
                            let ix = x0 + col as isize;
                            if ix >= 0 && ix < w as isize {
                                *e = *plane.add(iy as usize * w + ix as usize);
                            }
                        }
                    }
                    let [r0, r1, r2, r3] =
                        d.map(|[d0, d1, d2, d3]| [d0 - d2, d1 + d2, d2 - d1, d1 - d3]);
                    for j in 0..4 {
                        let (w0, w1, w2, w3) = (r0[j], r1[j], r2[j], r3[j]);
                        let col = [w0 - w2, w1 + w2, w2 - w1, w1 - w3];
                        for (r4, val) in col.into_iter().enumerate() {
                            *v.add((r4 * 4 + j) * vlen + dst + i * PANEL) = val;
                        }
                    }
                }
            }
        }
    }

    /// `Y = A^T M A` for output channels `chans` of tiles `t0 .. t0 +
    /// count` (M: 16 `[k, count]` matrices), pixels past the plane dropped.
    ///
    /// # Safety
    /// As [`Winograd::block`].
    unsafe fn output_flat(
        &self,
        t0: usize,
        count: usize,
        chans: std::ops::Range<usize>,
        m: *const f32,
        out: *mut f32,
    ) {
        let (k, oh, ow) = (self.k, self.oh, self.ow);
        for q in 0..count {
            let (b, ty, tx) = self.tile(t0 + q);
            for o in chans.clone() {
                // SAFETY: M's element (xi, o, q); output pixels inside the plane.
                unsafe {
                    let at = |xi: usize| *m.add((xi * k + o) * count + q);
                    let mut sv = [0.0f32; 4];
                    let mut tv = [0.0f32; 4];
                    for j in 0..4 {
                        let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                        sv[j] = m0 + m1 + m2;
                        tv[j] = m1 - m2 - m3;
                    }
                    let plane = out.add((b * k + o) * oh * ow);
                    for (dy, v) in [sv, tv].iter().enumerate() {
                        let oy = 2 * ty + dy;
                        if oy >= oh {
                            break;
                        }
                        let ox = 2 * tx;
                        *plane.add(oy * ow + ox) = v[0] + v[1] + v[2];
                        if ox + 1 < ow {
                            *plane.add(oy * ow + ox + 1) = v[1] - v[2] - v[3];
                        }
                    }
                }
            }
        }
    }

    /// Tile rows `blk * rows ..` of image `b`: transform, 16 products,
    /// transform back into the output.
    ///
    /// # Safety
    /// As [`Winograd::run`]; `s` holds `per_thread` floats.
    unsafe fn block(&self, b: usize, blk: usize, out: *mut f32, x: *const f32, s: *mut f32) {
        let ty0 = blk * self.rows;
        let rows = self.rows.min(self.th - ty0);
        let pb = rows * self.twp;
        let v = unsafe { s.add(self.stage_len()) };
        let m = unsafe { v.add(XI * self.v_len()) };
        let u = self.u.as_ref().expect("transformed weights");
        // SAFETY (whole body): offsets stay in the scratch and the
        // caller's buffers, as the sizes above were made for.
        unsafe {
            self.input_transform(b, ty0, rows, x, s, v);
            for (xi, a) in u.iter().enumerate() {
                sgemm::packed_rows(
                    a,
                    0..self.k,
                    v.add(xi * self.v_len()),
                    pb,
                    m.add(xi * self.k * pb),
                );
            }
            self.output_transform(b, ty0, rows, m, out);
        }
    }

    /// `V = B^T d B` for every input channel and tile of the block, into
    /// each position's panels (tile `q` of the block, channel `i` at
    /// `(q / 32) * c * 32 + i * 32 + q % 32`).
    ///
    /// # Safety
    /// As [`Winograd::block`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn input_transform(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        x: *const f32,
        stage: *mut f32,
        v: *mut f32,
    ) {
        let (c, h, w, twp) = (self.c, self.h, self.w, self.twp);
        let half = twp + L + 1;
        let vlen = self.v_len();
        // SAFETY (whole body): staged rows hold `half` floats each; input
        // reads are bounds-checked; V writes stay in the block's panels.
        unsafe {
            for i in 0..c {
                let plane = x.add((b * c + i) * h * w);
                for r in 0..rows {
                    let ty = ty0 + r;
                    // Input rows 2ty - top .. +4, split into even and odd
                    // padded columns: even[j] = column 2j - left.
                    for dr in 0..4 {
                        let (even, odd) =
                            (stage.add(2 * dr * half), stage.add((2 * dr + 1) * half));
                        let iy = (2 * ty + dr) as isize - self.top as isize;
                        if iy < 0 || iy >= h as isize {
                            std::ptr::write_bytes(even, 0, half);
                            std::ptr::write_bytes(odd, 0, half);
                            continue;
                        }
                        stage_row(plane.add(iy as usize * w), w, self.left, even, odd, half);
                    }
                    for tx in (0..twp).step_by(L) {
                        let q = r * twp + tx;
                        let dst = (q / PANEL) * c * PANEL + i * PANEL + q % PANEL;
                        // d[row][col] for 8 tiles, then d B per row.
                        let mut db = [[_mm256_setzero_ps(); 4]; 4];
                        for (dr, out) in db.iter_mut().enumerate() {
                            let (even, odd) = (
                                stage.add(2 * dr * half + tx),
                                stage.add((2 * dr + 1) * half + tx),
                            );
                            let d0 = _mm256_loadu_ps(even);
                            let d1 = _mm256_loadu_ps(odd);
                            let d2 = _mm256_loadu_ps(even.add(1));
                            let d3 = _mm256_loadu_ps(odd.add(1));
                            *out = [
                                _mm256_sub_ps(d0, d2),
                                _mm256_add_ps(d1, d2),
                                _mm256_sub_ps(d2, d1),
                                _mm256_sub_ps(d1, d3),
                            ];
                        }
                        let [r0, r1, r2, r3] = db;
                        for j in 0..4 {
                            let (w0, w1, w2, w3) = (r0[j], r1[j], r2[j], r3[j]);
                            let col = [
                                _mm256_sub_ps(w0, w2),
                                _mm256_add_ps(w1, w2),
                                _mm256_sub_ps(w2, w1),
                                _mm256_sub_ps(w1, w3),
                            ];
                            for (r4, val) in col.into_iter().enumerate() {
                                _mm256_storeu_ps(v.add((r4 * 4 + j) * vlen + dst), val);
                            }
                        }
                    }
                }
            }
        }
    }

    /// `Y = A^T M A` for every output channel and tile of the block, into
    /// the output's rows (pixels past the plane dropped).
    ///
    /// # Safety
    /// As [`Winograd::block`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn output_transform(
        &self,
        b: usize,
        ty0: usize,
        rows: usize,
        m: *const f32,
        out: *mut f32,
    ) {
        let (k, oh, ow, twp) = (self.k, self.oh, self.ow, self.twp);
        let pb = rows * twp;
        // SAFETY (whole body): M holds 16 `[k, pb]` matrices; output
        // writes are clipped to the plane.
        unsafe {
            for o in 0..k {
                let plane = out.add((b * k + o) * oh * ow);
                for r in 0..rows {
                    let ty = ty0 + r;
                    for tx in (0..self.tw).step_by(L) {
                        let q = o * pb + r * twp + tx;
                        let at = |xi: usize| _mm256_loadu_ps(m.add(xi * k * pb + q));
                        // A^T M: s = M0 + M1 + M2, t = M1 - M2 - M3 (rows).
                        let mut s = [_mm256_setzero_ps(); 4];
                        let mut t = [_mm256_setzero_ps(); 4];
                        for j in 0..4 {
                            let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                            s[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                            t[j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                        }
                        let y = |v: &[__m256; 4]| {
                            (
                                _mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]),
                                _mm256_sub_ps(_mm256_sub_ps(v[1], v[2]), v[3]),
                            )
                        };
                        let x0 = 2 * tx;
                        let left = ow - x0;
                        for (dy, v) in [s, t].iter().enumerate() {
                            let oy = 2 * ty + dy;
                            if oy >= oh {
                                break;
                            }
                            let (a, bb) = y(v);
                            // Pixels 2t and 2t + 1 of tiles tx.. interleaved.
                            let lo = _mm256_unpacklo_ps(a, bb);
                            let hi = _mm256_unpackhi_ps(a, bb);
                            let p0 = _mm256_permute2f128_ps(lo, hi, 0x20);
                            let p1 = _mm256_permute2f128_ps(lo, hi, 0x31);
                            let dst = plane.add(oy * ow + x0);
                            if left >= 2 * L {
                                _mm256_storeu_ps(dst, p0);
                                _mm256_storeu_ps(dst.add(L), p1);
                            } else {
                                let mut tmp = [0.0f32; 2 * L];
                                _mm256_storeu_ps(tmp.as_mut_ptr(), p0);
                                _mm256_storeu_ps(tmp.as_mut_ptr().add(L), p1);
                                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, left);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Splits one input row (`w` floats at `line`) into `even[j]` = column
/// `2j - left` and `odd[j]` = column `2j + 1 - left`, `j < half`, zero
/// outside the row: 16 columns at a time (two loads, two shuffles, two
/// lane permutes) where they lie inside it.
///
/// # Safety
/// `line` holds `w` floats; `even` and `odd` `half` each.
#[target_feature(enable = "avx2,fma")]
unsafe fn stage_row(
    line: *const f32,
    w: usize,
    left: usize,
    even: *mut f32,
    odd: *mut f32,
    half: usize,
) {
    let at = |cx: isize| {
        if cx >= 0 && cx < w as isize {
            // SAFETY: inside the row.
            unsafe { *line.add(cx as usize) }
        } else {
            0.0
        }
    };
    // SAFETY (whole body): indices below `half`; vector loads of columns
    // `2j - left .. + 16` only where those lie inside the row.
    unsafe {
        let mut j = 0;
        while j < half {
            let x0 = (2 * j) as isize - left as isize;
            if x0 >= 0 && x0 as usize + 16 <= w && j + L <= half {
                let a = _mm256_loadu_ps(line.add(x0 as usize));
                let b = _mm256_loadu_ps(line.add(x0 as usize + L));
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e)));
                let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(o)));
                _mm256_storeu_ps(even.add(j), e);
                _mm256_storeu_ps(odd.add(j), o);
                j += L;
            } else {
                *even.add(j) = at(x0);
                *odd.add(j) = at(x0 + 1);
                j += 1;
            }
        }
    }
}

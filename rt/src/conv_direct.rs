//! Direct f32 convolution (one channel group) with an AVX-512 microkernel,
//! or an AVX2 one where the host has no AVX-512.
//!
//! Each image is first copied into a zero-padded scratch laid out so that
//! every tap of the filter reads a vector of consecutive output pixels
//! (16 on AVX-512, 8 on AVX2; below, the AVX-512 numbers) from as many
//! consecutive floats: channel planes of padded rows, each row split into
//! `sx` phases (`padded column c` lives in phase `c % sx` at index `c / sx`),
//! so a horizontal stride becomes unit stride. Output pixels are grouped in
//! "pixel vectors" of 16 consecutive pixels of the padded layout: with a
//! vertical stride of 1, consecutive output rows are one padded row apart
//! there, so a vector runs on from one output row into the next (only the
//! padded columns between them, `kw - 1` of each row, are lanes computed
//! for nothing: 56-wide rows fill 203 vectors instead of 224), and its
//! lanes are stored in up to three output rows by masked stores; with
//! other strides a vector holds up to 16 pixels of one output row. The
//! microkernel keeps an `MR` output channels x `NV` pixel vectors tile of
//! accumulators in registers and runs over every (input channel, ky, kx)
//! tap, broadcasting one weight per output channel. Padding positions of the
//! scratch are zeroed once and never written again.
//!
//! AVX2 has sixteen 256-bit registers: its tile is `MR_AVX2` = 4 channels
//! by the same 3 vectors (12 accumulators, 3 pixel vectors, 1 broadcast),
//! and only the lanes of vectors that straddle an output row's end are
//! stored masked (a masked store is microcoded on Zen 1).

use std::arch::x86_64::*;

use super::SendPtr;

/// Output channels per register tile, AVX-512.
const MR: usize = 8;
/// Output channels per register tile, AVX2.
const MR_AVX2: usize = 6;
/// Pixel vectors per register tile (`MR * NV` accumulators).
const NV: usize = 3;

/// A vector of consecutive pixels of the padded layout (16 or 8), stored
/// into up to three output rows.
#[derive(Clone, Copy, Debug)]
struct PixVec {
    /// Offset of the first pixel's tap (0, 0) in a padded image.
    x: u32,
    /// Per output row the vector reaches: where lane 0 would land in an
    /// output channel plane (lane `i` lands `i` further), and which lanes
    /// are that row's pixels.
    rows: [(i32, u16); 3],
}

/// A direct convolution plan for one shape.
pub(crate) struct Direct {
    /// Images, input channels, input rows and columns.
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    /// Output channels and taps per output channel (`c * kh * kw`).
    o: usize,
    k: usize,
    /// Output plane size (`oh * ow`).
    out_plane: usize,
    sx: usize,
    /// Top and left padding.
    pt: usize,
    pl: usize,
    /// Padded phase length, row length (`sx * phase`) and channel plane.
    phase: usize,
    row: usize,
    plane: usize,
    /// Floats of one padded image, with slack for the tail lanes' reads.
    padded: usize,
    /// The input rows that some tap reads.
    rows: Vec<usize>,
    /// Offset of every tap `(ci, ky, kx)` in a padded image.
    koff: Vec<u32>,
    vecs: Vec<PixVec>,
    /// Weights packed as `[o / MR][k][MR]` (zero rows past `o`): shared by
    /// every copy (`fork`) when packed once from constants, else each
    /// copy's own, filled on every run.
    packed: std::sync::Arc<Vec<f32>>,
    /// Padded images, one per thread.
    scratch: Vec<f32>,
    /// AVX-512 (16 lanes, `MR` channels per tile), else AVX2 (8 lanes,
    /// `MR_AVX2`).
    avx512: bool,
    /// The weights were packed once (they are constants): runs skip it.
    prepacked: bool,
}

impl Direct {
    /// A plan, or `None` where this path does not apply (neither AVX-512,
    /// allowed by `avx512`, nor AVX2 with FMA; or a shape whose offsets
    /// overflow 32 bits).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        avx512: bool,
    ) -> Option<Direct> {
        let avx512 = avx512 && std::arch::is_x86_feature_detected!("avx512f");
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if !(avx512 || avx2) {
            return None;
        }
        let lanes = if avx512 { 16 } else { 8 };
        let [n, c, h, w] = input;
        let [o, cw, kh, kw] = weight;
        let [oh, ow] = out_hw;
        let [sy, sx] = stride;
        let [dy, dx] = dilation;
        let [pt, pl, pb, pr] = padding;
        if cw != c || sx == 0 || sy == 0 || oh == 0 || ow == 0 || o == 0 {
            return None;
        }
        let ph = h + pt + pb;
        // Long enough for every tap of every output column.
        let pw = (w + pl + pr).max((ow - 1) * sx + (kw - 1) * dx + 1);
        let phase = pw.div_ceil(sx);
        let row = sx * phase;
        let plane = ph.max((oh - 1) * sy + (kh - 1) * dy + 1) * row;
        let padded = c * plane + 32;
        if padded >= u32::MAX as usize / 2 || oh * ow >= u32::MAX as usize / 2 {
            return None;
        }
        let mut koff = Vec::with_capacity(c * kh * kw);
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    let col = kx * dx;
                    koff.push((ci * plane + ky * dy * row + (col % sx) * phase + col / sx) as u32);
                }
            }
        }
        let mut vecs = Vec::new();
        if sy == 1 && row >= 8 {
            // Lane i of the vector at q0 is padded pixel q = q0 + i, output
            // row q / row, column q % row (a pixel where that is < ow).
            let end = (oh - 1) * row + ow;
            for q0 in (0..end).step_by(lanes) {
                let mut rows = [(0i32, 0u16); 3];
                let first = q0 / row;
                for (j, r) in rows.iter_mut().enumerate() {
                    let y = first + j;
                    if y >= oh {
                        break;
                    }
                    let mut mask = 0u16;
                    for i in 0..lanes {
                        let q = q0 + i;
                        if q / row == y && q % row < ow {
                            mask |= 1 << i;
                        }
                    }
                    *r = ((y * ow) as i32 - (y * row) as i32 + q0 as i32, mask);
                }
                vecs.push(PixVec { x: q0 as u32, rows });
            }
        } else {
            for oy in 0..oh {
                for ox in (0..ow).step_by(lanes) {
                    let out = (oy * ow + ox) as i32;
                    vecs.push(PixVec {
                        x: (oy * sy * row + ox) as u32,
                        rows: [(out, first_lanes((ow - ox).min(lanes))), (0, 0), (0, 0)],
                    });
                }
            }
        }
        // Input rows some tap reads (a 1x1 stride-2 convolution reads half).
        let mut rows = vec![false; h];
        for oy in 0..oh {
            for ky in 0..kh {
                if let Some(iy) = (oy * sy + ky * dy).checked_sub(pt) {
                    if iy < h {
                        rows[iy] = true;
                    }
                }
            }
        }
        let rows: Vec<usize> = (0..h).filter(|&iy| rows[iy]).collect();
        let k = c * kh * kw;
        Some(Direct {
            n,
            c,
            h,
            w,
            o,
            k,
            out_plane: oh * ow,
            sx,
            pt,
            pl,
            phase,
            row,
            plane,
            padded,
            rows,
            koff,
            vecs,
            packed: std::sync::Arc::new(Vec::new()),
            scratch: Vec::new(),
            prepacked: false,
            avx512,
        })
    }

    /// A copy for another concurrent caller: weights packed once are
    /// shared; the padded images and per-run packing are its own.
    pub(crate) fn fork(&self) -> Direct {
        Direct {
            rows: self.rows.clone(),
            koff: self.koff.clone(),
            vecs: self.vecs.clone(),
            packed: if self.prepacked {
                self.packed.clone()
            } else {
                std::sync::Arc::new(Vec::new())
            },
            scratch: Vec::new(),
            ..*self
        }
    }

    /// Runs the convolution: `out[n, o, oh, ow]`, `x[n, c, h, w]`,
    /// `w[o, c, kh, kw]`.
    ///
    /// # Safety
    /// The pointers must address buffers of this plan's shapes.
    pub(crate) unsafe fn run(
        &mut self,
        out: *mut f32,
        x: *const f32,
        w: *const f32,
        par: gemm::Parallelism,
        epilogue: Option<&super::Epilogue<'_>>,
    ) -> bool {
        let team = crate::team::Team::global();
        let threads = super::team_threads(par);
        if self.scratch.len() < self.padded * threads {
            self.scratch.resize(self.padded * threads, 0.0);
        }
        // SAFETY: `w` holds `o * k` floats.
        if !self.prepacked {
            unsafe { self.pack(w) };
        }
        let this = &*self;
        let scratch = SendPtr(this.scratch.as_ptr() as *mut f32);
        let (out, x) = (SendPtr(out), SendPtr(x as *mut f32));
        if threads == 1 {
            for b in 0..this.n {
                // SAFETY: slot 0 of the scratch is this thread's; image b is in bounds.
                unsafe { this.image(b, out, x, scratch, this.blocks(), epilogue) };
            }
            epilogue.is_some()
        } else if this.n >= threads {
            team.run(threads, &|t| {
                let base = scratch;
                // SAFETY: part t owns scratch slot t and images lo..hi.
                let s = SendPtr(unsafe { base.0.add(t * this.padded) });
                for b in this.n * t / threads..this.n * (t + 1) / threads {
                    unsafe { this.image(b, out, x, s, this.blocks(), epilogue) };
                }
            });
            epilogue.is_some()
        } else {
            // Fewer images than threads: each thread pads the image into its
            // own scratch (so no thread reads what another just wrote; on
            // vCPUs without a shared cache that costs more than the copy),
            // computes its share of the output channel blocks and applies
            // their epilogue.
            let blocks = this.o.div_ceil(this.mr());
            let parts = threads.min(blocks);
            for b in 0..this.n {
                team.run(parts, &|t| {
                    let base = scratch;
                    // SAFETY: part t owns scratch slot t and its channel blocks.
                    let s = SendPtr(unsafe { base.0.add(t * this.padded) });
                    let mine = blocks * t / parts..blocks * (t + 1) / parts;
                    unsafe { this.image(b, out, x, s, mine, epilogue) };
                });
            }
            epilogue.is_some()
        }
    }

    /// Output channels per tile.
    fn mr(&self) -> usize {
        if self.avx512 {
            MR
        } else {
            MR_AVX2
        }
    }

    fn blocks(&self) -> std::ops::Range<usize> {
        0..self.o.div_ceil(self.mr())
    }

    /// Packs constant weights now, once, instead of on every run.
    ///
    /// # Safety
    /// `w` must hold the `o * k` weights, and keep them for every run.
    pub(crate) unsafe fn prepack(&mut self, w: *const f32) {
        unsafe { self.pack(w) };
        self.prepacked = true;
    }

    /// Packs `w[o][k]` into `[o / mr][k][mr]`.
    unsafe fn pack(&mut self, w: *const f32) {
        let (o, k, mr) = (self.o, self.k, self.mr());
        // Unshared here: a copy that packs on every run has its own buffer.
        let packed = std::sync::Arc::make_mut(&mut self.packed);
        packed.resize(o.div_ceil(mr) * mr * k, 0.0);
        for blk in 0..o.div_ceil(mr) {
            for m in 0..mr {
                let oc = blk * mr + m;
                if oc >= o {
                    continue;
                }
                for kk in 0..k {
                    // SAFETY: oc < o and kk < k.
                    packed[(blk * k + kk) * mr + m] = unsafe { *w.add(oc * k + kk) };
                }
            }
        }
    }

    /// Pads image `b` into `scratch` and convolves output channel blocks `blocks`.
    unsafe fn image(
        &self,
        b: usize,
        out: SendPtr<f32>,
        x: SendPtr<f32>,
        scratch: SendPtr<f32>,
        blocks: std::ops::Range<usize>,
        epilogue: Option<&super::Epilogue<'_>>,
    ) {
        unsafe {
            self.pad(b, x, scratch);
            let mr = self.mr();
            for blk in blocks {
                self.tiles(b, out, scratch, blk, 0..self.vecs.len());
                // The block's channels are done: their epilogue runs while
                // they are in cache.
                if let Some(e) = epilogue {
                    e(b, blk * mr..((blk + 1) * mr).min(self.o));
                }
            }
        }
    }

    /// Copies image `b` into the padded layout (padding positions stay zero).
    unsafe fn pad(&self, b: usize, x: SendPtr<f32>, scratch: SendPtr<f32>) {
        let (c, h, w) = (self.c, self.h, self.w);
        unsafe {
            let src = x.0.add(b * c * h * w) as *const f32;
            for ci in 0..c {
                for &iy in &self.rows {
                    let line = src.add((ci * h + iy) * w);
                    let dst = scratch.0.add(ci * self.plane + (iy + self.pt) * self.row);
                    if self.sx == 1 {
                        std::ptr::copy_nonoverlapping(line, dst.add(self.pl), w);
                    } else if self.sx == 2 && self.avx512 {
                        deinterleave2(line, w, dst, self.pl, self.phase);
                    } else {
                        for ix in 0..w {
                            let col = ix + self.pl;
                            *dst.add((col % self.sx) * self.phase + col / self.sx) = *line.add(ix);
                        }
                    }
                }
            }
        }
    }

    /// Output channel block `blk` of image `b` at pixel vectors `range`.
    unsafe fn tiles(
        &self,
        b: usize,
        out: SendPtr<f32>,
        scratch: SendPtr<f32>,
        blk: usize,
        range: std::ops::Range<usize>,
    ) {
        let mr = self.mr();
        let valid = (self.o - blk * mr).min(mr);
        // SAFETY: offsets stay within the padded image, the packed weights and
        // the output image (checked when the plan was built).
        unsafe {
            let dst = out.0.add((b * self.o + blk * mr) * self.out_plane);
            let w = self.packed.as_ptr().add(blk * self.k * mr);
            let args = Args {
                x: scratch.0,
                koff: self.koff.as_ptr(),
                k: self.k,
                w,
                out: dst,
                plane: self.out_plane,
                valid,
            };
            let vecs = &self.vecs[range];
            let p = vecs.as_ptr();
            if !self.avx512 {
                // Six channels by two vectors: 12 accumulators, 2 pixel
                // vectors and a broadcast in the 16 registers.
                for t in 0..vecs.len() / 2 {
                    tile_avx2::<2>(&args, p.add(t * 2));
                }
                if vecs.len() % 2 == 1 {
                    tile_avx2::<1>(&args, p.add(vecs.len() - 1));
                }
                return;
            }
            // Tiles of NV = 3 vectors; a last single vector (half speed:
            // loads outnumber FMAs) is avoided by ending with 2 + 2.
            let mut full = vecs.len() / NV;
            let mut rest = vecs.len() % NV;
            if rest == 1 && full > 0 {
                full -= 1;
                rest = 4;
            }
            for t in 0..full {
                tile::<NV>(&args, p.add(t * NV));
            }
            let p = p.add(full * NV);
            match rest {
                0 => {}
                1 => tile::<1>(&args, p),
                2 => tile::<2>(&args, p),
                4 => {
                    tile::<2>(&args, p);
                    tile::<2>(&args, p.add(2));
                }
                _ => unreachable!("NV is 3"),
            }
        }
    }
}

/// What a microkernel call reads and writes, besides its pixel vectors.
struct Args {
    x: *const f32,
    koff: *const u32,
    k: usize,
    w: *const f32,
    out: *mut f32,
    plane: usize,
    valid: usize,
}

/// `MR` output channels x `V` pixel vectors: the sum over every tap of
/// weight x input, stored (masked) into the output planes.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const V: usize>(a: &Args, vecs: *const PixVec) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let mut base = [a.x; V];
        for (v, b) in base.iter_mut().enumerate() {
            *b = a.x.add((*vecs.add(v)).x as usize);
        }
        let mut w = a.w;
        for kk in 0..a.k {
            let off = *a.koff.add(kk) as usize;
            let mut xv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                xv[v] = _mm512_loadu_ps(base[v].add(off));
            }
            for (m, row) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*w.add(m));
                for v in 0..V {
                    row[v] = _mm512_fmadd_ps(wb, xv[v], row[v]);
                }
            }
            w = w.add(MR);
        }
        for v in 0..V {
            let pv = *vecs.add(v);
            for &(out, mask) in pv.rows.iter().filter(|r| r.1 != 0) {
                // Lanes outside the mask are not written (the base may lie
                // before the plane).
                let o = a.out.wrapping_offset(out as isize);
                for (m, row) in acc.iter().enumerate().take(a.valid) {
                    _mm512_mask_storeu_ps(o.wrapping_add(m * a.plane), mask, row[v]);
                }
            }
        }
    }
}

/// [`tile`] in eight-lane vectors for `MR_AVX2` channels; lanes stored by
/// a plain store where all eight are the row's.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const V: usize>(a: &Args, vecs: *const PixVec) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; MR_AVX2];
        let mut base = [a.x; V];
        for (v, b) in base.iter_mut().enumerate() {
            *b = a.x.add((*vecs.add(v)).x as usize);
        }
        let mut w = a.w;
        for kk in 0..a.k {
            let off = *a.koff.add(kk) as usize;
            let mut xv = [_mm256_setzero_ps(); V];
            for v in 0..V {
                xv[v] = _mm256_loadu_ps(base[v].add(off));
            }
            for (m, row) in acc.iter_mut().enumerate() {
                let wb = _mm256_broadcast_ss(&*w.add(m));
                for v in 0..V {
                    row[v] = _mm256_fmadd_ps(wb, xv[v], row[v]);
                }
            }
            w = w.add(MR_AVX2);
        }
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        for v in 0..V {
            let pv = *vecs.add(v);
            for &(out, mask) in pv.rows.iter().filter(|r| r.1 != 0) {
                let o = a.out.wrapping_offset(out as isize);
                if mask == 0xff {
                    for (m, row) in acc.iter().enumerate().take(a.valid) {
                        _mm256_storeu_ps(o.add(m * a.plane), row[v]);
                    }
                    continue;
                }
                // Lanes outside the mask are not written (the base may lie
                // before the plane).
                let sel = _mm256_and_si256(_mm256_set1_epi32(mask as i32), bits);
                let sel = _mm256_cmpeq_epi32(sel, bits);
                for (m, row) in acc.iter().enumerate().take(a.valid) {
                    _mm256_maskstore_ps(o.wrapping_add(m * a.plane), sel, row[v]);
                }
            }
        }
    }
}

/// Copies `w` floats of `line` to padded columns `pl..pl + w` of a row split
/// into two phases of length `phase` (even columns, then odd ones).
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave2(line: *const f32, w: usize, dst: *mut f32, pl: usize, phase: usize) {
    unsafe {
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        // Source floats 2j land on phase `pe` (the parity of `pl`), 2j + 1 on
        // the other one.
        let (pe, po) = (pl % 2, 1 - pl % 2);
        let mut ix = 0;
        while ix + 32 <= w {
            let a = _mm512_loadu_ps(line.add(ix));
            let b = _mm512_loadu_ps(line.add(ix + 16));
            let (ce, co) = (ix + pl, ix + pl + 1);
            _mm512_storeu_ps(
                dst.add(pe * phase + ce / 2),
                _mm512_permutex2var_ps(a, ie, b),
            );
            _mm512_storeu_ps(
                dst.add(po * phase + co / 2),
                _mm512_permutex2var_ps(a, io, b),
            );
            ix += 32;
        }
        if ix < w {
            let r = w - ix;
            let (ma, mb) = (first_lanes(r.min(16)), first_lanes(r.saturating_sub(16)));
            let a = _mm512_maskz_loadu_ps(ma, line.add(ix));
            let b = _mm512_maskz_loadu_ps(mb, line.add(ix + 16));
            let (ce, co) = (ix + pl, ix + pl + 1);
            _mm512_mask_storeu_ps(
                dst.add(pe * phase + ce / 2),
                first_lanes(r.div_ceil(2)),
                _mm512_permutex2var_ps(a, ie, b),
            );
            _mm512_mask_storeu_ps(
                dst.add(po * phase + co / 2),
                first_lanes(r / 2),
                _mm512_permutex2var_ps(a, io, b),
            );
        }
    }
}

/// A mask of the first `n <= 16` lanes.
fn first_lanes(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

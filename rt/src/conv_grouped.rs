//! Direct f32 convolution of grouped and depthwise layers (MobileNet's and
//! EfficientNet's 3x3 and 5x5 depthwise convolutions, ResNeXt's groups),
//! where im2col + GEMM would run one tiny product per group.
//!
//! For one image and group, the group's input channels are copied into a
//! zero-padded *phase* layout: padded row `r` and column `c` of a channel
//! land in phase plane `(r % sy, c % sx)` at row `r / sy`, column `c / sx`,
//! every plane `cols` wide. A tap `(ci, ky, kx)` then reads, for output
//! pixel `(y, x)`, the element at `tap + y * cols + x` of the layout, for a
//! fixed offset `tap`: strides and dilations become unit-stride reads, and
//! the whole output plane, computed `cols` wide (the columns past the
//! output width are discarded), is one vector of `oh * cols` lanes per
//! output channel. Each block of lanes (128 down to 16) keeps its
//! accumulators in registers across every tap. Small planes (7x7, 14x14)
//! thus fill whole vectors, where a kernel vectorised over one output row
//! would not. Padding positions of the layout are zeroed once, when the
//! scratch is allocated; each group writes only its input rows' columns.
//!
//! The loop is written once and compiled for AVX-512, AVX2 (8-lane) and the
//! baseline ISA; the widest the host has (and `Settings` allows) runs.

use super::SendPtr;

/// The output plane is computed in blocks of a multiple of this many lanes.
const LANES: usize = 16;

/// Output floats of one image whose epilogue runs in one call (16 KiB).
const EPILOGUE_FLOATS: usize = 4096;

/// Which compiled copy of the loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// A grouped convolution plan for one shape.
pub(crate) struct Grouped {
    /// Images, groups, input channels per group, output channels per group.
    n: usize,
    groups: usize,
    cg: usize,
    og: usize,
    /// Input rows and columns.
    h: usize,
    w: usize,
    /// Output rows and columns.
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    /// Columns of a phase plane.
    cols: usize,
    /// Offset of every tap `(ci, ky, kx)` in a group's layout.
    taps: Vec<u32>,
    /// The input rows of channel 0 that land in its phase planes (the
    /// other channels' are `ci * chan` and `ci * h * w` further); every
    /// other position of the layout is padding, zeroed once when the
    /// scratch is allocated and never written.
    copies: Vec<RowCopy>,
    /// Floats of one channel's phase planes.
    chan: usize,
    /// Floats of one group's layout (with slack for the last block's reads)
    /// and of one output channel computed `cols` wide.
    layout: usize,
    wide: usize,
    isa: Isa,
    /// Per thread: a layout and a wide output plane.
    scratch: Vec<f32>,
}

impl Grouped {
    /// A plan for `groups > 1` f32 convolutions, or `None` where the shape's
    /// offsets would pass 32 bits.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
        avx512: bool,
    ) -> Option<Grouped> {
        let [n, _, h, w] = input;
        let [o, cg, kh, kw] = weight;
        let [oh, ow] = out_hw;
        let [sy, sx] = stride;
        let [dy, dx] = dilation;
        if groups == 0 || sy == 0 || sx == 0 || oh == 0 || ow == 0 || o == 0 {
            return None;
        }
        // Phase rows and columns reach every tap of every output pixel.
        let rows = oh + (kh - 1) * dy / sy;
        let cols = ow + (kw - 1) * dx / sx;
        let plane = rows * cols;
        let chan = sy * sx * plane;
        let wide = (oh * cols).next_multiple_of(LANES);
        // The last block of the farthest tap reads past the layout.
        let layout = cg * chan + wide - oh * cols + cols + LANES;
        if layout >= u32::MAX as usize / 2 {
            return None;
        }
        let mut taps = Vec::with_capacity(cg * kh * kw);
        for ci in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (ry, rx) = (ky * dy, kx * dx);
                    let phase = (ry % sy) * sx + rx % sx;
                    taps.push((ci * chan + phase * plane + (ry / sy) * cols + rx / sx) as u32);
                }
            }
        }
        // Phase plane (py, px), row r, columns lo..hi hold input row
        // r * sy + py - pt, columns c * sx + px - pl.
        let mut copies = Vec::new();
        for py in 0..sy {
            for r in 0..rows {
                let Some(iy) = (r * sy + py).checked_sub(padding[0]).filter(|&iy| iy < h) else {
                    continue;
                };
                for px in 0..sx {
                    let pl = padding[1];
                    let lo = pl.saturating_sub(px).div_ceil(sx).min(cols);
                    let hi = (w + pl).saturating_sub(px).div_ceil(sx).clamp(lo, cols);
                    if hi > lo {
                        copies.push(RowCopy {
                            dst: (((py * sx + px) * rows + r) * cols + lo) as u32,
                            src: (iy * w + lo * sx + px - pl) as u32,
                            len: (hi - lo) as u32,
                        });
                    }
                }
            }
        }
        Some(Grouped {
            n,
            groups,
            cg,
            og: o / groups,
            h,
            w,
            oh,
            ow,
            stride,
            cols,
            taps,
            copies,
            chan,
            layout,
            wide,
            isa: detect(avx512),
            scratch: Vec::new(),
        })
    }

    /// A copy for another concurrent caller (its own scratch).
    pub(crate) fn fork(&self) -> Grouped {
        Grouped {
            taps: self.taps.clone(),
            copies: self.copies.clone(),
            scratch: Vec::new(),
            ..*self
        }
    }

    /// Runs the convolution `out[n, o, oh, ow]` of `x[n, c, h, w]` and
    /// `w[o, cg, kh, kw]`; returns whether it applied `epilogue` itself.
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
        let per = self.layout + self.wide;
        if self.scratch.len() < per * threads {
            self.scratch.resize(per * threads, 0.0);
        }
        let this = &*self;
        let slots = SendPtr(this.scratch.as_ptr() as *mut f32);
        let (out, x, w) = (SendPtr(out), SendPtr(x as *mut f32), SendPtr(w as *mut f32));
        let o = this.groups * this.og;
        // Per image, when whole images are done; when there is one image,
        // per run of groups `lo..=g` (of a part's `..hi`) whose outputs
        // together still sit in L1 or L2 (the executor's hook takes
        // either): a depthwise layer's 7x7 planes are a few dozen floats
        // each, too short a row apiece.
        let chunk = (EPILOGUE_FLOATS / (this.og * this.oh * this.ow).max(1)).max(1);
        let group_done = |b: usize, lo: &mut usize, g: usize, hi: usize| {
            if let (Some(e), 1) = (epilogue, this.n) {
                if g + 1 - *lo >= chunk || g + 1 == hi {
                    e(b, *lo * this.og..(g + 1) * this.og);
                    *lo = g + 1;
                }
            }
        };
        let image_done = |b: usize| {
            if let Some(e) = epilogue.filter(|_| this.n > 1) {
                e(b, 0..o);
            }
        };
        if threads == 1 || this.n >= threads {
            let parts = threads.min(this.n);
            team.run(parts, &|t| {
                let base = slots;
                // SAFETY: part t owns scratch slot t and images lo..hi.
                let s = unsafe { base.0.add(t * per) };
                for b in this.n * t / parts..this.n * (t + 1) / parts {
                    let mut pending = 0;
                    for g in 0..this.groups {
                        unsafe { this.group(b, g, out, x, w, s) };
                        group_done(b, &mut pending, g, this.groups);
                    }
                    image_done(b);
                }
            });
            epilogue.is_some()
        } else {
            // Fewer images than threads: the groups of each image split
            // across the team.
            let parts = threads.min(this.groups);
            for b in 0..this.n {
                team.run(parts, &|t| {
                    let base = slots;
                    // SAFETY: part t owns scratch slot t and its groups.
                    let s = unsafe { base.0.add(t * per) };
                    let (lo, hi) = (this.groups * t / parts, this.groups * (t + 1) / parts);
                    let mut pending = lo;
                    for g in lo..hi {
                        unsafe { this.group(b, g, out, x, w, s) };
                        group_done(b, &mut pending, g, hi);
                    }
                });
            }
            // Several images: the executor runs the epilogue afterwards.
            epilogue.is_some() && this.n == 1
        }
    }

    /// Convolves group `g` of image `b`, with `s` as the scratch, on the
    /// chosen ISA.
    unsafe fn group(
        &self,
        b: usize,
        g: usize,
        out: SendPtr<f32>,
        x: SendPtr<f32>,
        w: SendPtr<f32>,
        s: *mut f32,
    ) {
        let args = (b, g, out.0, x.0 as *const f32, w.0 as *const f32, s);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detected on this host; the caller's pointers.
            Isa::Avx512 => unsafe { self.group_avx512(args) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.group_avx2(args) },
            // SAFETY: the caller's pointers.
            _ => unsafe { self.group_body::<Plain>(args) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn group_avx512(&self, args: GroupArgs) {
        unsafe { self.group_body::<x86::Avx512>(args) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_avx2(&self, args: GroupArgs) {
        unsafe { self.group_body::<x86::Avx2>(args) }
    }

    /// The group's work, inlined into each ISA's copy.
    #[inline(always)]
    unsafe fn group_body<S: Simd>(&self, (b, g, out, x, w, s): GroupArgs) {
        let (layout, wide) = (s, unsafe { s.add(self.layout) });
        let c = self.groups * self.cg;
        let o = self.groups * self.og;
        let k = self.taps.len();
        let sx = self.stride[1];
        // SAFETY: offsets within the plan's shapes.
        unsafe {
            for ci in 0..self.cg {
                let src = x.add((b * c + g * self.cg + ci) * self.h * self.w);
                let dst = layout.add(ci * self.chan);
                for r in &self.copies {
                    let (d, s) = (dst.add(r.dst as usize), src.add(r.src as usize));
                    match sx {
                        1 => S::copy(d, s, r.len as usize),
                        2 => S::copy_even(d, s, r.len as usize),
                        _ => {
                            for i in 0..r.len as usize {
                                *d.add(i) = *s.add(i * sx);
                            }
                        }
                    }
                }
            }
            for m in 0..self.og {
                let oc = g * self.og + m;
                let wts = std::slice::from_raw_parts(w.add(oc * k), k);
                taps::<S>(layout, &self.taps, wts, wide, self.wide);
                let dst = out.add((b * o + oc) * self.oh * self.ow);
                for y in 0..self.oh {
                    S::copy(dst.add(y * self.ow), wide.add(y * self.cols), self.ow);
                }
            }
        }
    }
}

/// One input row's run of columns copied into a phase plane.
#[derive(Clone, Copy, Debug)]
struct RowCopy {
    /// Offsets in the channel's layout and input plane.
    dst: u32,
    src: u32,
    len: u32,
}

/// What differs between the ISAs' copies of the loop.
trait Simd {
    /// 16-lane vectors (32 registers): blocks of up to 128 lanes.
    const WIDE: bool;
    /// `acc + a * b`, one instruction where the ISA has FMA.
    fn madd(a: f32, b: f32, acc: f32) -> f32;
    /// Copies `n` floats (short rows without a libc call).
    ///
    /// # Safety
    /// As `copy_nonoverlapping`.
    unsafe fn copy(dst: *mut f32, src: *const f32, n: usize);
    /// `dst[i] = src[2 * i]` for `i < n` (a stride-2 row's phase); reads
    /// no further than `src[2 * n - 2]`.
    ///
    /// # Safety
    /// `dst` and `src` hold what is written and read.
    #[inline(always)]
    unsafe fn copy_even(dst: *mut f32, src: *const f32, n: usize) {
        for i in 0..n {
            unsafe { *dst.add(i) = *src.add(2 * i) };
        }
    }
}

/// The baseline ISA: no FMA instruction (`mul_add` would call libm).
struct Plain;

impl Simd for Plain {
    const WIDE: bool = false;
    #[inline(always)]
    fn madd(a: f32, b: f32, acc: f32) -> f32 {
        a * b + acc
    }
    #[inline(always)]
    unsafe fn copy(dst: *mut f32, src: *const f32, n: usize) {
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub(super) struct Avx512;
    pub(super) struct Avx2;

    impl super::Simd for Avx512 {
        const WIDE: bool = true;
        #[inline(always)]
        fn madd(a: f32, b: f32, acc: f32) -> f32 {
            a.mul_add(b, acc)
        }
        /// 16 floats a step, the tail masked.
        #[inline(always)]
        unsafe fn copy(dst: *mut f32, src: *const f32, n: usize) {
            let mut i = 0;
            // SAFETY: only inlined into `avx512f` functions; lanes < n.
            unsafe {
                while i + 16 <= n {
                    _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.add(i)));
                    i += 16;
                }
                if i < n {
                    let m = mask(n - i);
                    _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.add(i)));
                }
            }
        }
        /// Two 16-float loads, the even lanes picked by one permute; the
        /// tail's loads masked to what is there.
        #[inline(always)]
        unsafe fn copy_even(dst: *mut f32, src: *const f32, n: usize) {
            // SAFETY: only inlined into `avx512f` functions; the masks keep
            // reads at or before src[2n - 2] and writes before dst[n].
            unsafe {
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let mut i = 0;
                while i + 17 <= n {
                    let (a, b) = (
                        _mm512_loadu_ps(src.add(2 * i)),
                        _mm512_loadu_ps(src.add(2 * i + 16)),
                    );
                    _mm512_storeu_ps(dst.add(i), _mm512_permutex2var_ps(a, even, b));
                    i += 16;
                }
                if i < n {
                    // 2(n - i) - 1 floats remain to be read.
                    let left = 2 * (n - i) - 1;
                    let a = _mm512_maskz_loadu_ps(mask(left.min(16)), src.add(2 * i));
                    let b =
                        _mm512_maskz_loadu_ps(mask(left.saturating_sub(16)), src.add(2 * i + 16));
                    _mm512_mask_storeu_ps(
                        dst.add(i),
                        mask(n - i),
                        _mm512_permutex2var_ps(a, even, b),
                    );
                }
            }
        }
    }

    /// The first `n` (at most 16) lanes.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as u16
    }

    impl super::Simd for Avx2 {
        const WIDE: bool = false;
        #[inline(always)]
        fn madd(a: f32, b: f32, acc: f32) -> f32 {
            a.mul_add(b, acc)
        }
        #[inline(always)]
        unsafe fn copy(dst: *mut f32, src: *const f32, n: usize) {
            unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
        }
        /// Two 8-float loads; one shuffle and one cross-lane permute.
        #[inline(always)]
        unsafe fn copy_even(dst: *mut f32, src: *const f32, n: usize) {
            let mut i = 0;
            // SAFETY: only inlined into `avx2` functions; full vectors read
            // src[2i..2i + 16) with 2i + 15 <= 2n - 2.
            unsafe {
                while i + 9 <= n {
                    let (a, b) = (
                        _mm256_loadu_ps(src.add(2 * i)),
                        _mm256_loadu_ps(src.add(2 * i + 8)),
                    );
                    // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
                    let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                    let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                        _mm256_castps_pd(e),
                    ));
                    _mm256_storeu_ps(dst.add(i), e);
                    i += 8;
                }
                for j in i..n {
                    *dst.add(j) = *src.add(2 * j);
                }
            }
        }
    }
}

/// One group's work: image, group, output, input, weights, scratch.
type GroupArgs = (usize, usize, *mut f32, *const f32, *const f32, *mut f32);

fn detect(avx512: bool) -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    let _ = avx512;
    Isa::Baseline
}

/// `wide[i] = sum_t wts[t] * layout[taps[t] + i]` for `i < len` (a multiple
/// of 16): wide blocks first, then narrower ones whose taps alternate
/// between accumulator chains, so that even a 16-lane tail issues
/// independent multiply-adds instead of waiting on one register's latency.
///
/// # Safety
/// `layout` must hold `taps[t] + len` floats for every tap, `wide` `len`.
#[inline(always)]
unsafe fn taps<S: Simd>(layout: *const f32, taps: &[u32], wts: &[f32], wide: *mut f32, len: usize) {
    let mut i = 0;
    // SAFETY (every block): the caller's contract.
    if S::WIDE {
        while i + 128 <= len {
            unsafe { taps_block::<S, 128, 1>(layout, taps, wts, wide, i) };
            i += 128;
        }
        while i + 64 <= len {
            unsafe { taps_block::<S, 64, 2>(layout, taps, wts, wide, i) };
            i += 64;
        }
    } else {
        while i + 64 <= len {
            unsafe { taps_block::<S, 64, 1>(layout, taps, wts, wide, i) };
            i += 64;
        }
    }
    while i + 32 <= len {
        unsafe { taps_block::<S, 32, 2>(layout, taps, wts, wide, i) };
        i += 32;
    }
    while i < len {
        unsafe { taps_block::<S, 16, 4>(layout, taps, wts, wide, i) };
        i += 16;
    }
}

/// Lanes `i..i + N` of [`taps`], accumulated in registers: `C` chains,
/// tap `t` on chain `t % C`, summed at the end.
#[inline(always)]
unsafe fn taps_block<S: Simd, const N: usize, const C: usize>(
    layout: *const f32,
    taps: &[u32],
    wts: &[f32],
    wide: *mut f32,
    i: usize,
) {
    let mut acc = [[0f32; N]; C];
    let whole = taps.len() / C * C;
    let (taps, rest) = taps.split_at(whole);
    let (wts, rest_w) = wts.split_at(whole);
    let src = |t: u32| -> &[f32; N] {
        // SAFETY: the caller's contract.
        unsafe { &*(layout.add(t as usize + i) as *const [f32; N]) }
    };
    for (t, w) in taps.chunks_exact(C).zip(wts.chunks_exact(C)) {
        for c in 0..C {
            let (s, wt) = (src(t[c]), w[c]);
            for j in 0..N {
                acc[c][j] = S::madd(s[j], wt, acc[c][j]);
            }
        }
    }
    for (&t, &wt) in rest.iter().zip(rest_w) {
        let s = src(t);
        for j in 0..N {
            acc[0][j] = S::madd(s[j], wt, acc[0][j]);
        }
    }
    for c in 1..C {
        let chain = acc[c];
        for (a, b) in acc[0].iter_mut().zip(chain) {
            *a += b;
        }
    }
    // SAFETY: `wide` holds `i + N` floats.
    unsafe { std::ptr::copy_nonoverlapping(acc[0].as_ptr(), wide.add(i), N) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled copy of the loop the host runs computes what the
    /// plain one does (the convolution tests reach only the widest).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn taps_avx512(l: *const f32, t: &[u32], w: &[f32], o: *mut f32, len: usize) {
        unsafe { taps::<x86::Avx512>(l, t, w, o, len) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn taps_avx2(l: *const f32, t: &[u32], w: &[f32], o: *mut f32, len: usize) {
        unsafe { taps::<x86::Avx2>(l, t, w, o, len) }
    }

    #[test]
    fn every_isa_copy_agrees() {
        let len = 128 + 64 + 32 + 16;
        let layout: Vec<f32> = (0..len + 40)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let offs = [0u32, 1, 2, 13, 14, 15, 26, 27, 28, 39, 40];
        let wts: Vec<f32> = (0..offs.len()).map(|i| i as f32 * 0.25 - 1.0).collect();
        let run = |isa| {
            let mut wide = vec![0f32; len];
            let (l, o) = (layout.as_ptr(), wide.as_mut_ptr());
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { taps_avx512(l, &offs, &wts, o, len) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { taps_avx2(l, &offs, &wts, o, len) },
                _ => unsafe { taps::<Plain>(l, &offs, &wts, o, len) },
            }
            wide
        };
        let plain = run(Isa::Baseline);
        for i in 0..len {
            let want: f32 = offs
                .iter()
                .zip(&wts)
                .map(|(&t, &w)| w * layout[t as usize + i])
                .sum();
            assert!(
                (plain[i] - want).abs() <= 1e-5,
                "lane {i}: {} vs {want}",
                plain[i]
            );
        }
        for isa in [detect(true), detect(false)] {
            let got = run(isa);
            for i in 0..len {
                assert!((got[i] - plain[i]).abs() <= 1e-5, "{isa:?} lane {i}");
            }
        }
    }
}

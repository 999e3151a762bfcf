//! Max and average pooling over 2-D windows of NCHW f32/f64 tensors, with
//! `kiln-graph`'s meaning exactly: taps summed in window order in f64 and
//! divided once (by the taps inside the input, or inside the padded input
//! with `count_include_pad`; NaN for none), or the maximum with NaN
//! propagating, padding never winning and -inf for a window all in
//! padding; one rounding to the element type. Planes split across the team.

use crate::{team, Real};

/// A compiled pooling.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub dtype: Real,
    /// Max (else average).
    pub max: bool,
    /// Average pooling divides by the padded window size.
    pub count_include_pad: bool,
    /// Input dims `[n, c, h, w]`.
    pub input: [usize; 4],
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top, left, bottom, right.
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
}

/// Output elements below which pooling stays on one thread.
const SPLIT: usize = 1 << 14;

trait Value: Copy + Send + Sync {
    fn get(self) -> f64;
    fn from(v: f64) -> Self;
}

impl Value for f32 {
    fn get(self) -> f64 {
        self as f64
    }
    fn from(v: f64) -> f32 {
        v as f32
    }
}

impl Value for f64 {
    fn get(self) -> f64 {
        self
    }
    fn from(v: f64) -> f64 {
        v
    }
}

#[derive(Clone, Copy)]
struct Ptr(*mut u8);
// SAFETY: the parts of a split write disjoint planes and only read the input.
unsafe impl Send for Ptr {}
// SAFETY: as above.
unsafe impl Sync for Ptr {}

impl Pool {
    /// Pools `x` into `out`, split across `threads` when `split` and large.
    ///
    /// # Safety
    /// `x` and `out` must point at tensors of this pooling's shapes and type.
    pub unsafe fn run(&self, out: *mut u8, x: *const u8, threads: usize, split: bool) {
        let planes = self.input[0] * self.input[1];
        let per = self.out_hw[0] * self.out_hw[1];
        let team = team::Team::global();
        let parts = if split && planes * per >= SPLIT {
            threads.min(team.size()).min(planes).max(1)
        } else {
            1
        };
        let (o, i) = (Ptr(out), Ptr(x as *mut u8));
        let part = |p: usize| {
            let (o, i) = (o, i);
            let range = planes * p / parts..planes * (p + 1) / parts;
            // SAFETY: the caller's contract; parts take disjoint planes.
            unsafe {
                match self.dtype {
                    Real::F32 if self.max => {
                        self.max_planes_f32(o.0 as *mut f32, i.0 as *const f32, range)
                    }
                    Real::F32 => self.planes::<f32>(o.0 as *mut f32, i.0 as *const f32, range),
                    Real::F64 => self.planes::<f64>(o.0 as *mut f64, i.0 as *const f64, range),
                }
            }
        };
        team.run(parts, &part);
    }

    /// f32 max pooling, tap by tap over whole output rows (vectorized:
    /// a ResNet's 3x3 stride-2 pool took 5.6 ms a window at a time). The
    /// maximum of a window is the same in any order, NaN wins, padding
    /// never does, and a window all in padding stays -inf, as in `planes`.
    ///
    /// # Safety
    /// As [`Pool::run`]'s, for `planes`.
    unsafe fn max_planes_f32(&self, out: *mut f32, x: *const f32, planes: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: detected; the caller's contract.
            return unsafe { self.max_planes_avx512(out, x, planes) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: detected; the caller's contract.
            return unsafe { self.max_planes_avx2(out, x, planes) };
        }
        unsafe { self.max_planes_body(out, x, planes) }
    }

    /// [`Pool::max_planes_avx512`] in 8-lane vectors.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn max_planes_avx2(&self, out: *mut f32, x: *const f32, planes: std::ops::Range<usize>) {
        if self.stride[1] > 2 {
            return unsafe { self.max_planes_body(out, x, planes) };
        }
        // SAFETY: the caller's contract; the host has AVX2.
        unsafe { self.max_windows::<simd::Avx2>(out, x, planes) }
    }

    /// Column strides 1 and 2 (a ResNet's stem pool) in 16-lane vectors,
    /// each output vector's maximum kept in a register over its window's
    /// taps and stored once; other strides as `max_planes_body`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn max_planes_avx512(
        &self,
        out: *mut f32,
        x: *const f32,
        planes: std::ops::Range<usize>,
    ) {
        if self.stride[1] > 2 {
            return unsafe { self.max_planes_body(out, x, planes) };
        }
        // SAFETY: the caller's contract; the host has AVX-512.
        unsafe { self.max_windows::<simd::Avx512>(out, x, planes) }
    }

    /// Max pooling with column stride 1 or 2, up to four vectors of `S::W`
    /// output columns at a time: each one's maximum over the window's taps
    /// (rows, then columns, as the reference takes them) in a register,
    /// NaN winning, stored once.
    /// A tap's lanes whose columns fall in the padding read -inf (masked
    /// loads, only in the vectors at a row's ends); rows in the padding
    /// are skipped. Tap by tap over whole rows instead, as before, took
    /// 472 us for ResNet-18's stem pool on a Zen 5, against ONNX Runtime's
    /// 102-163.
    ///
    /// # Safety
    /// As [`Pool::run`]'s, for `planes`; the host has `S`'s ISA.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn max_windows<S: simd::Lanes>(
        &self,
        out: *mut f32,
        x: *const f32,
        planes: std::ops::Range<usize>,
    ) {
        let [_, _, h, w] = self.input;
        let [oh, ow] = self.out_hw;
        let [sy, sx] = self.stride;
        let [dy, dx] = self.dilation;
        let [kh, kw] = self.kernel;
        let (pt, pl) = (self.padding[0], self.padding[1]);
        // Per output vector and tap column: where lane 0's tap is in the
        // input row (maybe before it), and the lanes `a..b` whose taps
        // land inside the row (0 <= j * sx + kx * dx - pl < w).
        let vectors = ow.div_ceil(S::W);
        let mut taps = Vec::with_capacity(vectors * kw);
        for v in 0..vectors {
            let (j0, n) = (v * S::W, (ow - v * S::W).min(S::W));
            for kx in 0..kw {
                let off = kx * dx;
                let lo = pl.saturating_sub(off).div_ceil(sx).min(ow);
                let hi = (w + pl).saturating_sub(off).div_ceil(sx).clamp(lo, ow);
                let (a, b) = (lo.max(j0) - j0, hi.min(j0 + n).max(j0) - j0);
                taps.push(((j0 * sx + off) as isize - pl as isize, a, b.max(a)));
            }
        }
        // Output vectors side by side, each its own chain of maxima.
        const GROUP: usize = 4;
        for plane in planes {
            // SAFETY (loop): reads inside the plane's rows (masked off
            // past them), writes inside the output plane.
            let xp = unsafe { x.add(plane * h * w) };
            let op = unsafe { out.add(plane * oh * ow) };
            for y in 0..oh {
                let rows = (0..kh)
                    .filter_map(|ky| (y * sy + ky * dy).checked_sub(pt).filter(|&iy| iy < h));
                for v0 in (0..vectors).step_by(GROUP) {
                    let g = (vectors - v0).min(GROUP);
                    unsafe {
                        let mut acc = [S::neg_inf(); GROUP];
                        for iy in rows.clone() {
                            let line = xp.add(iy * w);
                            for kx in 0..kw {
                                for (i, acc) in acc.iter_mut().enumerate().take(g) {
                                    let (at, a, b) = taps[(v0 + i) * kw + kx];
                                    if a == b {
                                        continue;
                                    }
                                    let src = line.wrapping_offset(at);
                                    let v = if a == 0 && b == S::W {
                                        S::load(src, sx)
                                    } else {
                                        S::load_lanes(src, sx, a, b)
                                    };
                                    *acc = S::max_nan(*acc, v);
                                }
                            }
                        }
                        for (i, acc) in acc.iter().enumerate().take(g) {
                            let j0 = (v0 + i) * S::W;
                            S::store(op.add(y * ow + j0), *acc, (ow - j0).min(S::W));
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn max_planes_body(&self, out: *mut f32, x: *const f32, planes: std::ops::Range<usize>) {
        let sx = self.stride[1];
        let tap = |dst: *mut f32, src: *const f32, n: usize| {
            for j in 0..n {
                // SAFETY: as in `max_rows`'s contract for `tap`.
                unsafe {
                    let (m, v) = (&mut *dst.add(j), *src.add(j * sx));
                    // NaN wins: a NaN `m` stays, a NaN `v` replaces.
                    *m = if v > *m || v.is_nan() { v } else { *m };
                }
            }
        };
        unsafe { self.max_rows(out, x, planes, &tap) }
    }

    /// The output rows of `planes`, each the maximum over its window's
    /// taps: `tap(dst, src, n)` folds `src[j * stride]` into `dst[j]` for
    /// `j < n`, the columns where the tap lands inside the input row.
    #[inline(always)]
    unsafe fn max_rows(
        &self,
        out: *mut f32,
        x: *const f32,
        planes: std::ops::Range<usize>,
        tap: &dyn Fn(*mut f32, *const f32, usize),
    ) {
        let [_, _, h, w] = self.input;
        let [oh, ow] = self.out_hw;
        let [sy, sx] = self.stride;
        let [dy, dx] = self.dilation;
        let (pt, pl) = (self.padding[0], self.padding[1]);
        if oh * ow == 0 {
            return;
        }
        for plane in planes {
            // SAFETY: planes of the caller's tensors.
            let xp = unsafe { std::slice::from_raw_parts(x.add(plane * h * w), h * w) };
            let op = unsafe { std::slice::from_raw_parts_mut(out.add(plane * oh * ow), oh * ow) };
            for (y, row) in op.chunks_exact_mut(ow).enumerate() {
                row.fill(f32::NEG_INFINITY);
                for ky in 0..self.kernel[0] {
                    let Some(iy) = (y * sy + ky * dy).checked_sub(pt).filter(|&iy| iy < h) else {
                        continue;
                    };
                    let line = &xp[iy * w..(iy + 1) * w];
                    for kx in 0..self.kernel[1] {
                        // Output columns whose tap lands inside the row:
                        // 0 <= xo * sx + kx * dx - pl < w.
                        let off = kx * dx;
                        let lo = pl.saturating_sub(off).div_ceil(sx).min(ow);
                        let hi = (w + pl).saturating_sub(off).div_ceil(sx).clamp(lo, ow);
                        if lo == hi {
                            continue;
                        }
                        let first = lo * sx + off - pl;
                        tap(row[lo..hi].as_mut_ptr(), line[first..].as_ptr(), hi - lo);
                    }
                }
            }
        }
    }

    unsafe fn planes<T: Value>(&self, out: *mut T, x: *const T, planes: std::ops::Range<usize>) {
        let [_, _, h, w] = self.input;
        let [oh, ow] = self.out_hw;
        let [pt, pl, pb, pr] = self.padding;
        for plane in planes {
            // SAFETY (loop): offsets stay inside the plane (checked taps).
            let xp = unsafe { x.add(plane * h * w) };
            let op = unsafe { out.add(plane * oh * ow) };
            for y in 0..oh {
                for xo in 0..ow {
                    // -0.0: what `Iterator::sum` of f64 starts from.
                    let (mut sum, mut m, mut taps, mut padded) =
                        (-0.0f64, f64::NEG_INFINITY, 0usize, 0usize);
                    for ky in 0..self.kernel[0] {
                        let iy =
                            (y * self.stride[0] + ky * self.dilation[0]) as isize - pt as isize;
                        let in_pad_y = iy < (h + pb) as isize;
                        for kx in 0..self.kernel[1] {
                            let ix = (xo * self.stride[1] + kx * self.dilation[1]) as isize
                                - pl as isize;
                            if in_pad_y && ix < (w + pr) as isize {
                                padded += 1;
                            }
                            if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                                let v = unsafe { *xp.add(iy as usize * w + ix as usize) }.get();
                                taps += 1;
                                sum += v;
                                m = if v.is_nan() || m.is_nan() {
                                    f64::NAN
                                } else {
                                    m.max(v)
                                };
                            }
                        }
                    }
                    let r = if self.max {
                        m
                    } else {
                        let d = if self.count_include_pad { padded } else { taps };
                        if d == 0 {
                            f64::NAN
                        } else {
                            sum / d as f64
                        }
                    };
                    unsafe { *op.add(y * ow + xo) = T::from(r) };
                }
            }
        }
    }
}

/// The vector operations of [`Pool::max_windows`] in each ISA.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub(super) trait Lanes {
        /// Lanes per vector.
        const W: usize;
        type V: Copy;
        unsafe fn neg_inf() -> Self::V;
        /// `W` floats from `p`, `sx` (1 or 2) apart.
        unsafe fn load(p: *const f32, sx: usize) -> Self::V;
        /// Lanes `a..b` as `load`'s, -inf in the others (whose floats are
        /// not read).
        unsafe fn load_lanes(p: *const f32, sx: usize, a: usize, b: usize) -> Self::V;
        /// `max(acc, v)` where a NaN in either wins; on a tie (+0, -0)
        /// `acc`, the earlier tap.
        unsafe fn max_nan(acc: Self::V, v: Self::V) -> Self::V;
        /// The first `n` lanes to `p`.
        unsafe fn store(p: *mut f32, v: Self::V, n: usize);
    }

    pub(super) struct Avx512;

    /// Bits `a..b` (of 0..16).
    fn bits(a: usize, b: usize) -> __mmask16 {
        let upto = |n: usize| if n >= 16 { 0xffff } else { (1u32 << n) - 1 };
        (upto(b) & !upto(a)) as __mmask16
    }

    impl Lanes for Avx512 {
        const W: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn neg_inf() -> __m512 {
            unsafe { _mm512_set1_ps(f32::NEG_INFINITY) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, sx: usize) -> __m512 {
            // SAFETY: the caller's contract (16 floats, or 31 at stride 2).
            unsafe {
                if sx == 1 {
                    _mm512_loadu_ps(p)
                } else {
                    let lo = _mm512_loadu_ps(p);
                    let hi = _mm512_maskz_loadu_ps(0x7fff, p.add(16));
                    even16(lo, hi)
                }
            }
        }
        #[inline(always)]
        unsafe fn load_lanes(p: *const f32, sx: usize, a: usize, b: usize) -> __m512 {
            // SAFETY: masked-off floats are neither read nor faulted on.
            unsafe {
                let fill = Self::neg_inf();
                if sx == 1 {
                    _mm512_mask_loadu_ps(fill, bits(a, b), p)
                } else {
                    // Floats 2a ..= 2(b - 1) of the two vectors.
                    let (f0, f1) = (2 * a, 2 * b - 1);
                    let lo = _mm512_mask_loadu_ps(fill, bits(f0.min(16), f1.min(16)), p);
                    let hi = _mm512_mask_loadu_ps(
                        fill,
                        bits(f0.saturating_sub(16), f1.saturating_sub(16)),
                        p.wrapping_add(16),
                    );
                    even16(lo, hi)
                }
            }
        }
        #[inline(always)]
        unsafe fn max_nan(acc: __m512, v: __m512) -> __m512 {
            unsafe {
                // max_ps gives its second operand where either is NaN or
                // on a tie: acc (a NaN there stays); a NaN v is taken.
                let m = _mm512_max_ps(v, acc);
                _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v), v)
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, bits(0, n), v) }
        }
    }

    /// The even floats of `lo` (floats 0..16) and `hi` (16..32).
    #[inline(always)]
    unsafe fn even16(lo: __m512, hi: __m512) -> __m512 {
        unsafe {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            _mm512_permutex2var_ps(lo, even, hi)
        }
    }

    pub(super) struct Avx2;

    /// Lanes `a..b` (of 0..8) set.
    #[inline(always)]
    unsafe fn lanes(a: usize, b: usize) -> __m256i {
        unsafe {
            let i = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let ge = _mm256_cmpgt_epi32(i, _mm256_set1_epi32(a as i32 - 1));
            let lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(b as i32), i);
            _mm256_and_si256(ge, lt)
        }
    }

    impl Lanes for Avx2 {
        const W: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn neg_inf() -> __m256 {
            unsafe { _mm256_set1_ps(f32::NEG_INFINITY) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32, sx: usize) -> __m256 {
            // SAFETY: the caller's contract (8 floats, or 15 at stride 2).
            unsafe {
                if sx == 1 {
                    _mm256_loadu_ps(p)
                } else {
                    even(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(7)))
                }
            }
        }
        #[inline(always)]
        unsafe fn load_lanes(p: *const f32, sx: usize, a: usize, b: usize) -> __m256 {
            // SAFETY: masked-off floats are neither read nor faulted on.
            unsafe {
                let v = if sx == 1 {
                    _mm256_maskload_ps(p, lanes(a, b))
                } else {
                    // Floats 2a ..= 2(b - 1): 0..8 from `p`, 7..15 from `p + 7`.
                    let (f0, f1) = (2 * a, 2 * b - 1);
                    let lo = _mm256_maskload_ps(p, lanes(f0.min(8), f1.min(8)));
                    let hi = _mm256_maskload_ps(
                        p.wrapping_add(7),
                        lanes(f0.saturating_sub(7), f1.saturating_sub(7)),
                    );
                    even(lo, hi)
                };
                _mm256_blendv_ps(Self::neg_inf(), v, _mm256_castsi256_ps(lanes(a, b)))
            }
        }
        #[inline(always)]
        unsafe fn max_nan(acc: __m256, v: __m256) -> __m256 {
            unsafe {
                // As AVX-512's; a NaN v OR-ed in (NaN OR anything is NaN).
                let nan = _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v), v);
                _mm256_or_ps(_mm256_max_ps(v, acc), nan)
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256, n: usize) {
            unsafe {
                if n == 8 {
                    _mm256_storeu_ps(p, v)
                } else {
                    _mm256_maskstore_ps(p, lanes(0, n), v)
                }
            }
        }
    }

    /// The even floats of `a` (floats 0..8) and `b` (floats 7..15):
    /// floats 0, 2, .., 14.
    #[inline(always)]
    unsafe fn even(a: __m256, b: __m256) -> __m256 {
        unsafe {
            // [a0 a2 b1 b3 | a4 a6 b5 b7], then 64-bit lanes 0 2 1 3.
            let e = _mm256_shuffle_ps::<0b11_01_10_00>(a, b);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The vector max pools against the scalar loop, bit for bit (NaN as
    /// NaN), on every ISA the host has: strides 1 and 2, dilation,
    /// asymmetric padding, windows past the input (ceil mode), rows
    /// shorter than a vector and with a rest.
    #[test]
    fn vector_max_pools_match_the_scalar_loop() {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        for (kernel, stride, padding, dilation, ceil) in [
            ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], false),
            ([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], true),
            ([3, 2], [1, 2], [2, 0, 1, 1], [1, 2], false),
            ([3, 3], [1, 1], [2, 2, 2, 2], [1, 1], true),
            ([1, 5], [1, 1], [0, 3, 0, 1], [1, 1], false),
            ([3, 3], [2, 1], [0, 1, 0, 1], [2, 2], false),
        ] {
            for (h, w) in [(7, 3), (9, 13), (5, 41), (4, 64)] {
                let span = |n: usize, k: usize, s: usize, d: usize, p: usize| {
                    let reach = n + p - (d * (k - 1) + 1).min(n + p);
                    if ceil {
                        reach.div_ceil(s) + 1
                    } else {
                        reach / s + 1
                    }
                };
                let oh = span(
                    h,
                    kernel[0],
                    stride[0],
                    dilation[0],
                    padding[0] + padding[2],
                );
                let ow = span(
                    w,
                    kernel[1],
                    stride[1],
                    dilation[1],
                    padding[1] + padding[3],
                );
                let pool = Pool {
                    dtype: Real::F32,
                    max: true,
                    count_include_pad: false,
                    input: [1, 3, h, w],
                    out_hw: [oh, ow],
                    kernel,
                    stride,
                    padding,
                    dilation,
                };
                let mut x: Vec<f32> = (0..3 * h * w)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                    .collect();
                for (i, v) in [(2, f32::NAN), (5, f32::NEG_INFINITY), (8, -0.0), (9, 0.0)] {
                    if i < x.len() {
                        x[i] = v;
                    }
                }
                x[3 * h * w - 1] = f32::NAN;
                let run = |f: &dyn Fn(*mut f32)| {
                    let mut out = vec![1.5f32; 3 * oh * ow];
                    f(out.as_mut_ptr());
                    out.iter()
                        .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                        .collect::<Vec<_>>()
                };
                let want = run(&|o| unsafe { pool.max_planes_body(o, x.as_ptr(), 0..3) });
                let what = format!("{kernel:?} {stride:?} {padding:?} {dilation:?} {h}x{w}");
                if avx512 {
                    let got = run(&|o| unsafe { pool.max_planes_avx512(o, x.as_ptr(), 0..3) });
                    assert_eq!(got, want, "AVX-512 {what}");
                }
                if avx2 {
                    let got = run(&|o| unsafe { pool.max_planes_avx2(o, x.as_ptr(), 0..3) });
                    assert_eq!(got, want, "AVX2 {what}");
                }
            }
        }
    }
}

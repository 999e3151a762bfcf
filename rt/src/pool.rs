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

    /// [`Pool::max_planes_avx512`] in 8-lane vectors: a stride-2 tap's
    /// columns picked from two loads by a shuffle and a lane permute; the
    /// columns past the last whole vector one at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn max_planes_avx2(&self, out: *mut f32, x: *const f32, planes: std::ops::Range<usize>) {
        use std::arch::x86_64::*;
        let sx = self.stride[1];
        if sx > 2 {
            return unsafe { self.max_planes_body(out, x, planes) };
        }
        // out[j] = max(out[j], src[j * sx]) for j < n, NaN winning.
        let tap = |dst: *mut f32, src: *const f32, n: usize| {
            // SAFETY: a vector at j reads src[j * sx ..= (j + 7) * sx] (a
            // stride-2 pair of loads src[2j..2j+8) and src[2j+7..2j+15)),
            // inside the tap's columns while j + 8 <= n; the output row
            // holds n floats from dst.
            unsafe {
                let vector = |j: usize| {
                    let v = if sx == 1 {
                        _mm256_loadu_ps(src.add(j))
                    } else {
                        let a = _mm256_loadu_ps(src.add(2 * j));
                        let b = _mm256_loadu_ps(src.add(2 * j + 7));
                        // [a0 a2 b1 b3 | a4 a6 b5 b7], then 64-bit lanes 0 2 1 3.
                        let e = _mm256_shuffle_ps::<0b11_01_10_00>(a, b);
                        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                            e,
                        )))
                    };
                    // max_ps(v, cur) is cur where either is NaN (a NaN
                    // already there stays); a NaN v is OR-ed in (NaN OR
                    // anything is NaN). No select of the loaded value: LLVM
                    // turned that into a masked store, which on Zen 1 is
                    // microcoded and never forwards to the next tap's load
                    // (ResNet's stem pool took 2.6 ms instead of 0.9).
                    let cur = _mm256_loadu_ps(dst.add(j));
                    let nan = _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v), v);
                    _mm256_storeu_ps(dst.add(j), _mm256_or_ps(_mm256_max_ps(v, cur), nan));
                };
                if n < 8 {
                    for j in 0..n {
                        let (m, v) = (&mut *dst.add(j), *src.add(j * sx));
                        *m = if v > *m || v.is_nan() { v } else { *m };
                    }
                    return;
                }
                let mut j = 0;
                while j + 8 <= n {
                    vector(j);
                    j += 8;
                }
                // The last columns as a vector overlapping the one before:
                // a maximum taken twice is the same.
                if j < n {
                    vector(n - 8);
                }
            }
        };
        // SAFETY: the caller's contract.
        unsafe { self.max_rows(out, x, planes, &tap) }
    }

    /// Column strides 1 and 2 (a ResNet's stem pool) in 16-lane vectors, a
    /// stride-2 tap's columns picked from two loads by one permute; other
    /// strides as `max_planes_body`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn max_planes_avx512(
        &self,
        out: *mut f32,
        x: *const f32,
        planes: std::ops::Range<usize>,
    ) {
        use std::arch::x86_64::*;
        let sx = self.stride[1];
        if sx > 2 {
            return unsafe { self.max_planes_body(out, x, planes) };
        }
        let mask = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as u16
            }
        };
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // out[j] = max(out[j], src[j * sx]) for j < n, NaN winning.
        let tap = |dst: *mut f32, src: *const f32, n: usize| {
            let mut j = 0;
            while j < n {
                let c = (n - j).min(16);
                let m = mask(c);
                // SAFETY: the tap's columns lie inside the input row (a
                // stride-2 read reaches src[2(n - 1)] at most) and the
                // output row holds n floats from dst.
                unsafe {
                    let v = if sx == 1 {
                        _mm512_maskz_loadu_ps(m, src.add(j))
                    } else {
                        let left = 2 * c - 1;
                        let a = _mm512_maskz_loadu_ps(mask(left), src.add(2 * j));
                        let b = _mm512_maskz_loadu_ps(
                            mask(left.saturating_sub(16)),
                            src.add(2 * j + 16),
                        );
                        _mm512_permutex2var_ps(a, even, b)
                    };
                    let cur = _mm512_maskz_loadu_ps(m, dst.add(j));
                    let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, cur)
                        | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    _mm512_mask_storeu_ps(dst.add(j), m, _mm512_mask_blend_ps(take, cur, v));
                }
                j += 16;
            }
        };
        // SAFETY: the caller's contract.
        unsafe { self.max_rows(out, x, planes, &tap) }
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

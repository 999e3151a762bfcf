//! 2-D convolution of channels-last (NHWC) tensors: input `[n, h, w, c]`,
//! weight `[o, c/groups, kh, kw]` (OIHW, as graphs hold it), output
//! `[n, oh, ow, o]`. The optimizer's `ChannelsLast` pass moves chains of
//! pointwise and depthwise convolutions (MobileNet's and EfficientNet's
//! blocks) here, where:
//! - a pointwise convolution (1x1, stride 1, unpadded) *is* a matrix
//!   product, `out[pixels, o] = x[pixels, c] @ w^T`, with the input as it
//!   lies for its left-hand side: kiln's GEMM (`sgemm.rs`) against the
//!   weights packed once, its epilogue on each chunk of pixels as soon as
//!   it is final (in NCHW the product runs the other way round, weights
//!   times a plane, and the `gemm` crate's result went through the
//!   epilogue in a pass of its own);
//! - a depthwise one runs `conv_nhwc_depthwise.rs`, vectorised over the
//!   channels that lie side by side, with no transposes in or out (the
//!   NCHW kernel transposes every block of channels both ways);
//! - any other convolution of one group multiplies per image an im2col
//!   matrix whose rows are pixels (`[oh * ow, kh * kw * c]`, each tap's `c`
//!   channels one contiguous copy) by the weights reordered to
//!   `[kh * kw * c, o]` and packed once;
//! - what is left (f64, several groups of several channels, or a host
//!   without AVX2 and FMA) runs a plain direct loop.
//!
//! The epilogue is called on ranges of pixels (numbered over `[n, oh,
//! ow]`), each pixel once, after its channels are final.

use crate::conv::SendPtr;
use crate::conv_nhwc_depthwise::DepthwiseNhwc;
use crate::fuse::Fused;
use crate::sgemm::{self, Isa, PackedB};
use crate::Real;
use std::ops::Range;
use std::sync::Arc;

/// The epilogue of a channels-last convolution: called with a range of
/// output pixels once every channel of them is final.
pub type Epilogue<'a> = dyn Fn(Range<usize>) + Sync + 'a;

/// A compiled convolution of NHWC tensors.
pub struct ConvNhwc {
    pub dtype: Real,
    /// The input's dims as `[n, c, h, w]` (the geometry, whatever the
    /// layout; the tensor itself is `[n, h, w, c]`).
    pub input: [usize; 4],
    /// Weight dims `[o, c/groups, kh, kw]`.
    pub weight: [usize; 4],
    pub out_hw: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
    plan: Plan,
}

enum Plan {
    /// 1x1, stride 1, unpadded, one group: the input is the left-hand side.
    Pointwise(Isa, Option<Arc<PackedB>>),
    /// One group: im2col rows of pixels times the reordered weights.
    Columns(Isa, Option<Arc<PackedB>>),
    /// One channel per group.
    Depthwise(Box<DepthwiseNhwc>),
    /// Anything else: a direct loop.
    Plain,
}

impl ConvNhwc {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dtype: Real,
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
        settings: crate::settings::Settings,
    ) -> ConvNhwc {
        let [n, c, h, w] = input;
        let [o, cg, kh, kw] = weight;
        let isa = sgemm::isa(settings.avx512).filter(|_| dtype == Real::F32);
        let pointwise = [kh, kw] == [1, 1] && stride == [1, 1] && padding == [0; 4];
        let plan = match isa {
            _ if n * o * out_hw[0] * out_hw[1] == 0 || c * kh * kw == 0 => Plan::Plain,
            _ if groups == c && groups == o && cg == 1 && dtype == Real::F32 => {
                Plan::Depthwise(Box::new(DepthwiseNhwc::new(
                    [n, h, w, c],
                    [kh, kw],
                    out_hw,
                    stride,
                    padding,
                    dilation,
                )))
            }
            Some(isa) if groups == 1 && pointwise => Plan::Pointwise(isa, None),
            Some(isa) if groups == 1 => Plan::Columns(isa, None),
            _ => Plan::Plain,
        };
        ConvNhwc {
            dtype,
            input,
            weight,
            out_hw,
            stride,
            padding,
            dilation,
            groups,
            plan,
        }
    }

    /// Which kernel runs (for profiles and tests).
    pub fn kernel(&self) -> &'static str {
        match self.plan {
            Plan::Pointwise(..) => "pointwise GEMM",
            Plan::Columns(..) => "im2col GEMM",
            Plan::Depthwise(_) => "depthwise",
            Plan::Plain => "direct loop",
        }
    }

    /// The weights as the GEMM's right-hand side `[kh * kw * c, o]`,
    /// packed: tap-major rows, so an im2col row is each tap's channels in
    /// turn.
    ///
    /// # Safety
    /// `w` holds the weights.
    unsafe fn pack(&self, isa: Isa, w: *const f32) -> PackedB {
        let [o, c, kh, kw] = self.weight;
        let taps = kh * kw;
        // SAFETY: the caller's contract.
        let w = unsafe { std::slice::from_raw_parts(w, o * c * taps) };
        if taps == 1 {
            // `[c, o]` is the weights' transpose: rows of stride 1.
            return PackedB::new(w, 1, c, c, o, isa);
        }
        let mut t = vec![0.0f32; taps * c * o];
        for oc in 0..o {
            for ci in 0..c {
                for tap in 0..taps {
                    t[(tap * c + ci) * o + oc] = w[(oc * c + ci) * taps + tap];
                }
            }
        }
        PackedB::new(&t, o, 1, taps * c, o, isa)
    }

    /// The packed weights: those packed once, else `w` packed for this run.
    ///
    /// # Safety
    /// `w` holds the weights.
    unsafe fn weights(
        &self,
        isa: Isa,
        packed: &Option<Arc<PackedB>>,
        w: *const f32,
    ) -> Arc<PackedB> {
        match packed {
            Some(p) => p.clone(),
            // SAFETY: the caller's contract.
            None => Arc::new(unsafe { self.pack(isa, w) }),
        }
    }

    /// Packs constant weights once.
    ///
    /// # Safety
    /// `w` must point at the weights, which must not change afterwards.
    pub unsafe fn prepack(&mut self, w: *const u8) {
        let w = w as *const f32;
        match &self.plan {
            Plan::Pointwise(isa, _) | Plan::Columns(isa, _) => {
                let isa = *isa;
                // SAFETY: the caller's contract.
                let packed = Some(Arc::new(unsafe { self.pack(isa, w) }));
                match &mut self.plan {
                    Plan::Pointwise(_, p) | Plan::Columns(_, p) => *p = packed,
                    _ => unreachable!("a GEMM plan"),
                }
            }
            Plan::Depthwise(_) => {
                if let Plan::Depthwise(d) = &mut self.plan {
                    // SAFETY: the caller's contract.
                    unsafe { d.prepack(w) }
                }
            }
            Plan::Plain => {}
        }
    }

    /// A copy for another concurrent caller: plans and packed weights shared.
    pub fn fork(&self) -> ConvNhwc {
        ConvNhwc {
            dtype: self.dtype,
            input: self.input,
            weight: self.weight,
            out_hw: self.out_hw,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            plan: match &self.plan {
                Plan::Pointwise(isa, p) => Plan::Pointwise(*isa, p.clone()),
                Plan::Columns(isa, p) => Plan::Columns(*isa, p.clone()),
                Plan::Depthwise(d) => Plan::Depthwise(Box::new(d.fork())),
                Plan::Plain => Plan::Plain,
            },
        }
    }

    /// Runs the convolution on up to `threads` threads of the team, calling
    /// `epilogue` on ranges of output pixels once they are final (each
    /// pixel once). `scratch` holds the im2col rows (f32 in f64 slots),
    /// grown as needed.
    ///
    /// # Safety
    /// `out`, `x` and `w` must point at buffers of this convolution's
    /// shapes and dtype.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        &self,
        out: *mut u8,
        x: *const u8,
        w: *const u8,
        threads: usize,
        fused: Option<&Fused>,
        epilogue: Option<&Epilogue<'_>>,
        scratch: &mut Vec<f64>,
    ) {
        let [n, c, ..] = self.input;
        let o = self.weight[0];
        let pixels = self.out_hw[0] * self.out_hw[1];
        let (out32, x32) = (out as *mut f32, x as *const f32);
        match &self.plan {
            Plan::Depthwise(d) => {
                let dst = SendPtr(out32);
                let then = |r: Range<usize>| {
                    let out = dst;
                    if let Some(f) = fused {
                        // SAFETY: the range's pixels, final.
                        unsafe { f.apply_rows(out.0, o, r.clone(), 0..o) };
                    }
                    if let Some(e) = epilogue {
                        e(r)
                    }
                };
                let then: Option<&Epilogue<'_>> =
                    (fused.is_some() || epilogue.is_some()).then_some(&then);
                // SAFETY: the caller's contract.
                unsafe { d.run(out32, x32, w as *const f32, threads, then) }
            }
            Plan::Pointwise(isa, packed) => {
                // SAFETY: the caller's contract.
                let b = &*unsafe { self.weights(*isa, packed, w as *const f32) };
                let a = sgemm::Lhs::new(x32, c as isize, 1, n * pixels);
                let e = |lo: usize, hi: usize| {
                    if let Some(e) = epilogue {
                        e(lo..hi)
                    }
                };
                // SAFETY: `x` is `[n * pixels, c]`, `out` `[n * pixels, o]`.
                unsafe { sgemm::matmul_fused(a, b, out32, threads, threads > 1, fused, Some(&e)) }
            }
            Plan::Columns(isa, packed) => {
                // SAFETY: the caller's contract.
                let b = &*unsafe { self.weights(*isa, packed, w as *const f32) };
                let [_, cg, kh, kw] = self.weight;
                let k = cg * kh * kw;
                let len = (pixels * k).div_ceil(2);
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                let col = scratch.as_mut_ptr() as *mut f32;
                for b_i in 0..n {
                    // SAFETY: image `b_i` of the input; the scratch holds
                    // `pixels * k` floats.
                    unsafe { self.im2col(b_i, x32, col, threads) };
                    let a = sgemm::Lhs::new(col, k as isize, 1, pixels);
                    let base = b_i * pixels;
                    let e = |lo: usize, hi: usize| {
                        if let Some(e) = epilogue {
                            e(base + lo..base + hi)
                        }
                    };
                    // The image's share of the residual.
                    let f = fused.map(|f| Fused {
                        residual: if f.residual.is_null() {
                            f.residual
                        } else {
                            f.residual.wrapping_add(base * o)
                        },
                        ..*f
                    });
                    // SAFETY: the columns are `[pixels, k]`, the image's
                    // output `[pixels, o]`.
                    unsafe {
                        sgemm::matmul_fused(
                            a,
                            b,
                            out32.add(base * o),
                            threads,
                            threads > 1,
                            f.as_ref(),
                            Some(&e),
                        )
                    }
                }
            }
            Plan::Plain => {
                // SAFETY: the caller's contract.
                unsafe {
                    match self.dtype {
                        Real::F32 => self.plain::<f32>(out as *mut f32, x32, w as *const f32),
                        _ => self.plain::<f64>(out as *mut f64, x as *const f64, w as *const f64),
                    }
                }
                if let Some(f) = fused {
                    // SAFETY: the whole output, final.
                    unsafe { f.apply_rows(out as *mut f32, o, 0..n * pixels, 0..o) };
                }
                if let Some(e) = epilogue {
                    e(0..n * pixels)
                }
            }
        }
    }

    /// Image `b`'s im2col rows into `col`: row `oy * ow + ox` holds, tap
    /// by tap (`ky`, then `kx`), the `c` channels of the input pixel the
    /// tap reads, or zeros where it falls in the padding. Bands of rows
    /// across `threads` threads where the image is large.
    ///
    /// # Safety
    /// `x` holds the input, `col` `oh * ow * kh * kw * c` floats.
    unsafe fn im2col(&self, b: usize, x: *const f32, col: *mut f32, threads: usize) {
        let [_, c, h, w] = self.input;
        let [_, _, kh, kw] = self.weight;
        let [oh, ow] = self.out_hw;
        let k = kh * kw * c;
        let image = SendPtr(x.wrapping_add(b * h * w * c) as *mut f32);
        let col = SendPtr(col);
        let rows = |ys: Range<usize>| {
            let (image, col) = (image, col);
            for oy in ys {
                for ox in 0..ow {
                    // SAFETY: row `oy * ow + ox` of the columns.
                    let row = unsafe { col.0.add((oy * ow + ox) * k) };
                    for ky in 0..kh {
                        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize
                            - self.padding[0] as isize;
                        let ix0 = (ox * self.stride[1]) as isize - self.padding[1] as isize;
                        if self.dilation[1] == 1
                            && iy >= 0
                            && iy < h as isize
                            && ix0 >= 0
                            && ix0 + kw as isize <= w as isize
                        {
                            // The tap row's pixels lie side by side: one
                            // copy of `kw * c` floats (a 3-channel stem's
                            // nine, rather than three copies of three).
                            let at = (iy as usize * w + ix0 as usize) * c;
                            // SAFETY: pixels `(iy, ix0..ix0 + kw)` of the
                            // image, into the row's tap row `ky`.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    image.0.add(at),
                                    row.add(ky * kw * c),
                                    kw * c,
                                )
                            };
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * self.stride[1] + kx * self.dilation[1]) as isize
                                - self.padding[1] as isize;
                            // SAFETY: tap `(ky, kx)`'s `c` floats of the row.
                            let dst = unsafe { row.add((ky * kw + kx) * c) };
                            if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                // SAFETY: as above.
                                unsafe { std::ptr::write_bytes(dst, 0, c) };
                            } else {
                                let at = (iy as usize * w + ix as usize) * c;
                                // SAFETY: pixel `(iy, ix)` of the image.
                                unsafe { std::ptr::copy_nonoverlapping(image.0.add(at), dst, c) };
                            }
                        }
                    }
                }
            }
        };
        let parts = threads.min(oh).min((oh * ow * k) / (1 << 15)).max(1);
        if parts < 2 {
            return rows(0..oh);
        }
        crate::team::Team::global().run(parts, &|t| rows(oh * t / parts..oh * (t + 1) / parts));
    }

    /// The definition, for what no kernel here covers.
    ///
    /// # Safety
    /// Buffers of the plan's shapes.
    unsafe fn plain<T: Copy + Into<f64> + FromF64>(&self, out: *mut T, x: *const T, w: *const T) {
        let [n, c, h, wd] = self.input;
        let [o, cg, kh, kw] = self.weight;
        let [oh, ow] = self.out_hw;
        let og = o / self.groups;
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for oc in 0..o {
                        let g = oc / og;
                        let mut s = 0f64;
                        for ky in 0..kh {
                            let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize
                                - self.padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * self.stride[1] + kx * self.dilation[1]) as isize
                                    - self.padding[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let px = ((b * h + iy as usize) * wd + ix as usize) * c;
                                for ic in 0..cg {
                                    // SAFETY: inside the input and weights.
                                    let (xv, wv) = unsafe {
                                        (
                                            *x.add(px + g * cg + ic),
                                            *w.add(((oc * cg + ic) * kh + ky) * kw + kx),
                                        )
                                    };
                                    s += xv.into() * wv.into();
                                }
                            }
                        }
                        // SAFETY: inside the output.
                        unsafe { *out.add(((b * oh + oy) * ow + ox) * o + oc) = T::from_f64(s) };
                    }
                }
            }
        }
    }
}

/// The conversion back from the f64 accumulator.
trait FromF64 {
    fn from_f64(v: f64) -> Self;
}

impl FromF64 for f32 {
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl FromF64 for f64 {
    fn from_f64(v: f64) -> f64 {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The NCHW convolution's definition, on NHWC buffers.
    #[allow(clippy::too_many_arguments)]
    fn definition(
        x: &[f32],
        w: &[f32],
        input: [usize; 4],
        weight: [usize; 4],
        out_hw: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 4],
        dilation: [usize; 2],
        groups: usize,
    ) -> Vec<f64> {
        let [n, c, h, wd] = input;
        let [o, cg, kh, kw] = weight;
        let [oh, ow] = out_hw;
        let og = o / groups;
        let mut out = vec![0f64; n * oh * ow * o];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for oc in 0..o {
                        let g = oc / og;
                        let mut s = 0f64;
                        for ic in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride[0] + ky * dilation[0]) as isize
                                        - padding[0] as isize;
                                    let ix = (ox * stride[1] + kx * dilation[1]) as isize
                                        - padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((b * h + iy as usize) * wd + ix as usize) * c
                                        + g * cg
                                        + ic];
                                    let wv = w[((oc * cg + ic) * kh + ky) * kw + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out[((b * oh + oy) * ow + ox) * o + oc] = s;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_plan_matches_the_definition() {
        // (n, c, h, w, o, kh, kw, stride, padding, dilation, groups)
        type Case = (
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            [usize; 4],
            usize,
            usize,
        );
        let cases: &[Case] = &[
            (1, 16, 14, 14, 24, 1, 1, 1, [0; 4], 1, 1),
            (2, 13, 5, 7, 40, 1, 1, 1, [0; 4], 1, 1),
            (1, 3, 17, 17, 32, 3, 3, 2, [1, 1, 1, 1], 1, 1),
            (2, 5, 9, 8, 7, 3, 3, 1, [0, 1, 2, 0], 1, 1),
            (1, 8, 12, 12, 16, 1, 1, 2, [0; 4], 1, 1),
            (1, 6, 10, 10, 9, 3, 2, 1, [1, 0, 1, 0], 2, 1),
            (2, 24, 9, 9, 24, 3, 3, 1, [1, 1, 1, 1], 1, 24),
            (1, 16, 11, 11, 16, 5, 5, 2, [2, 2, 2, 2], 1, 16),
            (1, 8, 6, 6, 16, 3, 3, 1, [1, 1, 1, 1], 1, 2),
            (1, 300, 20, 20, 70, 1, 1, 1, [0; 4], 1, 1),
        ];
        for &(n, c, h, wd, o, kh, kw, s, padding, d, groups) in cases {
            let oh = (h + padding[0] + padding[2] - d * (kh - 1) - 1) / s + 1;
            let ow = (wd + padding[1] + padding[3] - d * (kw - 1) - 1) / s + 1;
            let input = [n, c, h, wd];
            let weight = [o, c / groups, kh, kw];
            let x = rand(n * c * h * wd, 1);
            let w = rand(o * (c / groups) * kh * kw, 2);
            let want = definition(
                &x,
                &w,
                input,
                weight,
                [oh, ow],
                [s, s],
                padding,
                [d, d],
                groups,
            );
            for prepack in [false, true] {
                for threads in [1, 2] {
                    let mut conv = ConvNhwc::new(
                        Real::F32,
                        input,
                        weight,
                        [oh, ow],
                        [s, s],
                        padding,
                        [d, d],
                        groups,
                        Default::default(),
                    );
                    if prepack {
                        // SAFETY: the weights, unchanged while `conv` lives.
                        unsafe { conv.prepack(w.as_ptr() as *const u8) };
                    }
                    let mut out = vec![f32::NAN; n * oh * ow * o];
                    let seen = std::sync::Mutex::new(vec![0u8; n * oh * ow]);
                    let outp = SendPtr(out.as_mut_ptr());
                    let hook = |r: Range<usize>| {
                        let p = outp;
                        let mut seen = seen.lock().unwrap();
                        for px in r {
                            seen[px] += 1;
                            for oc in 0..o {
                                // SAFETY: the pixel's channels, final now.
                                let v = unsafe { *p.0.add(px * o + oc) } as f64;
                                let t = want[px * o + oc];
                                assert!((v - t).abs() <= 1e-4 * (1.0 + t.abs()), "early epilogue");
                            }
                        }
                    };
                    let mut scratch = Vec::new();
                    // SAFETY: buffers of the planned shapes.
                    unsafe {
                        conv.run(
                            out.as_mut_ptr() as *mut u8,
                            x.as_ptr() as *const u8,
                            w.as_ptr() as *const u8,
                            threads,
                            None,
                            Some(&hook),
                            &mut scratch,
                        )
                    };
                    let what = format!(
                        "{} on {input:?} {weight:?} stride {s} pad {padding:?} dil {d} groups {groups}, {threads} threads, prepacked {prepack}",
                        conv.kernel()
                    );
                    assert!(
                        seen.lock().unwrap().iter().all(|&k| k == 1),
                        "{what}: pixels not handed once"
                    );
                    for (i, (&v, &t)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (v as f64 - t).abs() <= 1e-4 * (1.0 + t.abs()),
                            "{what}: element {i}: {v} vs {t}"
                        );
                    }
                }
            }
        }
    }
}

//! Epilogues simple enough to apply in registers while a kernel stores its
//! results: a per-channel bias, a residual of the output's own layout, and
//! clamps by constants (ReLU, ReLU6), in the order the graph applies them.
//! A pointwise layer of MobileNet-V2 then writes its activations once,
//! where the compiled epilogue passed over them again (1.07 of 2.99 ms in
//! its 112x112 expansion, on a Zen 1).
//!
//! The compiler matches an epilogue against these steps
//! (`kiln_codegen::cpu`); anything else stays a compiled epilogue. The
//! results are those of the compiled epilogue: the same operations in the
//! same order, each rounded once; a clamp keeps a NaN (as the compiled
//! `max` and `min` do) but may give -0 where they give +0.

use std::ops::Range;

/// One step of a fused epilogue, applied to the value in order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// Plus the bias of the value's column (output channel).
    Bias,
    /// Plus the residual's element at the value's own position.
    Residual,
    /// `max(value, c)`.
    Max(f32),
    /// `min(value, c)`.
    Min(f32),
}

/// A fused epilogue for one run, in the one order the kernels apply:
/// plus the bias, plus the residual, then clamped to `[lo, hi]` (each
/// part optional: a null pointer, or an infinite bound).
#[derive(Clone, Copy, Debug)]
pub struct Fused {
    /// The bias, one per column (null: none).
    pub bias: *const f32,
    /// The residual, laid out as the output (null: none).
    pub residual: *const f32,
    /// `max(value, lo)` (minus infinity: none).
    pub lo: f32,
    /// `min(value, hi)` (infinity: none).
    pub hi: f32,
}

// SAFETY: read-only pointers into buffers that outlive the run.
unsafe impl Send for Fused {}
// SAFETY: as above.
unsafe impl Sync for Fused {}

/// The bounds of `steps` in the kernels' order, where they are in it: a
/// bias, a residual, then at most one `max` and one `min` (either order
/// when `max <= min`, where they commute); `None` otherwise.
pub fn canonical(steps: &[Step]) -> Option<(bool, bool, f32, f32)> {
    let (mut bias, mut residual) = (false, false);
    let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
    let (mut seen_lo, mut seen_hi) = (false, false);
    for s in steps {
        let clamped = seen_lo || seen_hi;
        match *s {
            Step::Bias if !bias && !residual && !clamped => bias = true,
            Step::Residual if !residual && !clamped => residual = true,
            Step::Max(k) if !seen_lo && !k.is_nan() => {
                seen_lo = true;
                lo = k;
            }
            Step::Min(k) if !seen_hi && !k.is_nan() => {
                seen_hi = true;
                hi = k;
            }
            _ => return None,
        }
    }
    (lo <= hi).then_some((bias, residual, lo, hi))
}

impl Fused {
    /// Applies the epilogue to rows `rows`, columns `cols` of the `[m, n]`
    /// output `out` in place (kernels that do not fuse it in registers
    /// call this per chunk, while it is in cache).
    ///
    /// # Safety
    /// `out` (and the residual) hold those rows of `n` floats, the bias `n`.
    pub unsafe fn apply_rows(
        &self,
        out: *mut f32,
        n: usize,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the caller's contract; the host has AVX2.
            return unsafe { avx2::rows(self, out, n, rows, cols) };
        }
        for r in rows {
            for c in cols.clone() {
                let at = r * n + c;
                // SAFETY: inside the output, the residual and the bias.
                unsafe {
                    let mut v = *out.add(at);
                    if !self.bias.is_null() {
                        v += *self.bias.add(c);
                    }
                    if !self.residual.is_null() {
                        v += *self.residual.add(at);
                    }
                    *out.add(at) = min(max(v, self.lo), self.hi);
                }
            }
        }
    }
}

/// `max` keeping a NaN, as the vector code's `max_ps(k, v)` does.
fn max(v: f32, k: f32) -> f32 {
    if k > v {
        k
    } else {
        v
    }
}

fn min(v: f32, k: f32) -> f32 {
    if k < v {
        k
    } else {
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::Fused;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The clamp's bounds, splat.
    #[derive(Clone, Copy)]
    pub(crate) struct Bounds(__m256, __m256);

    /// # Safety
    /// The host has AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn bounds(f: &Fused) -> Bounds {
        Bounds(_mm256_set1_ps(f.lo), _mm256_set1_ps(f.hi))
    }

    /// The epilogue on eight values: `bias` their columns' biases (zeros
    /// without a bias), `residual` the residual at their position (null:
    /// none), read under `mask` (all lanes, or the first few).
    ///
    /// # Safety
    /// The host has AVX2; the residual holds the masked lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn apply(
        v: __m256,
        bias: __m256,
        residual: *const f32,
        mask: Option<__m256i>,
        b: Bounds,
    ) -> __m256 {
        let mut v = _mm256_add_ps(v, bias);
        if !residual.is_null() {
            // SAFETY: the caller's contract.
            let r = unsafe {
                match mask {
                    None => _mm256_loadu_ps(residual),
                    Some(m) => _mm256_maskload_ps(residual, m),
                }
            };
            v = _mm256_add_ps(v, r);
        }
        _mm256_min_ps(b.1, _mm256_max_ps(b.0, v))
    }

    /// The biases of eight columns from `col` (zeros without a bias).
    ///
    /// # Safety
    /// The host has AVX2; the bias holds the masked lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn bias(f: &Fused, col: usize, mask: Option<__m256i>) -> __m256 {
        if f.bias.is_null() {
            return _mm256_setzero_ps();
        }
        // SAFETY: the caller's contract.
        unsafe {
            match mask {
                None => _mm256_loadu_ps(f.bias.add(col)),
                Some(m) => _mm256_maskload_ps(f.bias.add(col), m),
            }
        }
    }

    /// [`Fused::apply_rows`] in eight lanes.
    ///
    /// # Safety
    /// As `apply_rows`; the host has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn rows(
        f: &Fused,
        out: *mut f32,
        n: usize,
        rows: Range<usize>,
        cols: Range<usize>,
    ) {
        let b = bounds(f);
        let lane = |i: usize, left: usize| if i < left { -1 } else { 0 };
        for r in rows {
            let mut c = cols.start;
            while c < cols.end {
                let left = cols.end - c;
                let mask = (left < 8).then(|| {
                    _mm256_setr_epi32(
                        lane(0, left),
                        lane(1, left),
                        lane(2, left),
                        lane(3, left),
                        lane(4, left),
                        lane(5, left),
                        lane(6, left),
                        lane(7, left),
                    )
                });
                let at = r * n + c;
                // SAFETY: the caller's contract, for the masked lanes.
                unsafe {
                    let res = if f.residual.is_null() {
                        std::ptr::null()
                    } else {
                        f.residual.add(at)
                    };
                    let p = out.add(at);
                    let v = match mask {
                        None => _mm256_loadu_ps(p),
                        Some(m) => _mm256_maskload_ps(p, m),
                    };
                    let v = apply(v, bias(f, c, mask), res, mask, b);
                    match mask {
                        None => _mm256_storeu_ps(p, v),
                        Some(m) => _mm256_maskstore_ps(p, m, v),
                    }
                }
                c += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_in_the_kernels_order_only() {
        use Step::*;
        let inf = f32::INFINITY;
        assert_eq!(
            canonical(&[Bias, Max(0.0), Min(6.0)]),
            Some((true, false, 0.0, 6.0))
        );
        assert_eq!(
            canonical(&[Bias, Min(6.0), Max(0.0)]),
            Some((true, false, 0.0, 6.0))
        );
        assert_eq!(canonical(&[Residual]), Some((false, true, -inf, inf)));
        assert_eq!(
            canonical(&[Bias, Residual, Max(0.0)]),
            Some((true, true, 0.0, inf))
        );
        // Another order rounds differently, or does not commute.
        assert_eq!(canonical(&[Residual, Bias]), None);
        assert_eq!(canonical(&[Max(0.0), Bias]), None);
        assert_eq!(canonical(&[Bias, Bias]), None);
        assert_eq!(canonical(&[Min(0.0), Max(1.0)]), None);
        assert_eq!(canonical(&[Max(f32::NAN)]), None);
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn rows_match_the_definition() {
        let (m, n) = (5, 21);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 4.0).collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 9) as f32 - 4.0).collect();
        let base: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 - 6.0).collect();
        let f = Fused {
            bias: bias.as_ptr(),
            residual: res.as_ptr(),
            lo: -1.0,
            hi: 3.0,
        };
        let mut out = base.clone();
        out[7] = f32::NAN;
        // Rows 1..4, columns 3..20: a partial vector at each end.
        unsafe { f.apply_rows(out.as_mut_ptr(), n, 1..4, 3..20) };
        for r in 0..m {
            for c in 0..n {
                let i = r * n + c;
                let inside = (1..4).contains(&r) && (3..20).contains(&c);
                let want = if i == 7 {
                    f32::NAN
                } else if inside {
                    (base[i] + bias[c] + res[i]).clamp(-1.0, 3.0)
                } else {
                    base[i]
                };
                assert!(
                    out[i] == want || (out[i].is_nan() && want.is_nan()),
                    "[{r}, {c}]: {} vs {want}",
                    out[i]
                );
            }
        }
    }
}

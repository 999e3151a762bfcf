//! Epilogues simple enough to apply in registers while a kernel stores its
//! results: a per-channel bias, a residual of the output's own layout,
//! clamps by constants (ReLU, ReLU6) and an activation (sigmoid, SiLU,
//! hard-swish), in the order the graph applies them. A pointwise layer of
//! MobileNet-V2 then writes its activations once, where the compiled
//! epilogue passed over them again (1.07 of 2.99 ms in its 112x112
//! expansion, on a Zen 1).
//!
//! The compiler matches an epilogue against these steps
//! (`kiln_codegen::cpu`); anything else stays a compiled epilogue. The
//! results are those of the compiled epilogue: the same operations in the
//! same order, each rounded once, and the AVX2 row code's sigmoid; a clamp
//! keeps a NaN (as the compiled `max` and `min` do) but may give -0 where
//! they give +0.

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
    /// `sigmoid(value)`.
    Sigmoid,
    /// `value * sigmoid(value)` (SiLU, swish).
    Silu,
    /// `max(value, -3) * min(max((value + 3) / 6, 0), 1)`: hard-swish as
    /// kiln's ONNX import writes it.
    HardSwish,
}

/// The activation a fused epilogue ends with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    /// None.
    #[default]
    Identity,
    /// [`Step::Sigmoid`].
    Sigmoid,
    /// [`Step::Silu`].
    Silu,
    /// [`Step::HardSwish`].
    HardSwish,
}

impl Act {
    /// The activation of one value (the scalar path).
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Sigmoid => crate::scalar::unary_f32(crate::scalar::UnaryFn::Sigmoid, v),
            Act::Silu => v * crate::scalar::unary_f32(crate::scalar::UnaryFn::Sigmoid, v),
            Act::HardSwish => max(v, -3.0) * min(max((v + 3.0) / 6.0, 0.0), 1.0),
        }
    }
}

/// A fused epilogue for one run, in the one order the kernels apply:
/// plus the bias, plus the residual, clamped to `[lo, hi]`, then the
/// activation (each part optional: a null pointer, an infinite bound, the
/// identity).
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
    /// The activation, last.
    pub act: Act,
}

// SAFETY: read-only pointers into buffers that outlive the run.
unsafe impl Send for Fused {}
// SAFETY: as above.
unsafe impl Sync for Fused {}

/// A list of steps in the kernels' order: what it applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Form {
    /// Whether it adds a bias.
    pub bias: bool,
    /// Whether it adds a residual.
    pub residual: bool,
    /// The clamp's lower bound (minus infinity: none).
    pub lo: f32,
    /// The clamp's upper bound (infinity: none).
    pub hi: f32,
    /// The activation.
    pub act: Act,
}

impl Default for Form {
    /// The identity: no step.
    fn default() -> Self {
        Form {
            bias: false,
            residual: false,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
            act: Act::Identity,
        }
    }
}

/// What `steps` apply, where they are in the kernels' order: a bias, a
/// residual, at most one `max` and one `min` (either order when `max <=
/// min`, where they commute), then at most one activation; `None`
/// otherwise.
pub fn canonical(steps: &[Step]) -> Option<Form> {
    let mut f = Form::default();
    let (mut seen_lo, mut seen_hi) = (false, false);
    for s in steps {
        let clamped = seen_lo || seen_hi;
        let acted = f.act != Act::Identity;
        match *s {
            Step::Bias if !f.bias && !f.residual && !clamped && !acted => f.bias = true,
            Step::Residual if !f.residual && !clamped && !acted => f.residual = true,
            Step::Max(k) if !seen_lo && !acted && !k.is_nan() => {
                seen_lo = true;
                f.lo = k;
            }
            Step::Min(k) if !seen_hi && !acted && !k.is_nan() => {
                seen_hi = true;
                f.hi = k;
            }
            Step::Sigmoid if !acted => f.act = Act::Sigmoid,
            Step::Silu if !acted => f.act = Act::Silu,
            Step::HardSwish if !acted => f.act = Act::HardSwish,
            _ => return None,
        }
    }
    (f.lo <= f.hi).then_some(f)
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
                    *out.add(at) = self.act.apply(min(max(v, self.lo), self.hi));
                }
            }
        }
    }
}

impl Fused {
    /// Applies the activation alone to rows `rows`, columns `cols` of the
    /// `[m, n]` output `out` in place: after kernels that applied the rest
    /// in registers as they stored.
    ///
    /// # Safety
    /// `out` holds those rows of `n` floats.
    pub unsafe fn activate(&self, out: *mut f32, n: usize, rows: Range<usize>, cols: Range<usize>) {
        if self.act == Act::Identity || cols.is_empty() {
            return;
        }
        let run = |at: usize, len: usize| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the caller's contract; the host has AVX2.
                return unsafe { crate::rows::activate_avx2(self.act, out.add(at), len) };
            }
            for i in at..at + len {
                // SAFETY: inside the output.
                unsafe { *out.add(i) = self.act.apply(*out.add(i)) };
            }
        };
        if cols.len() == n {
            // Whole rows: one run.
            run(rows.start * n, rows.len() * n);
        } else {
            for r in rows {
                run(r * n + cols.start, cols.len());
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

    /// The epilogue but its activation on eight values: `bias` their
    /// columns' biases (zeros without a bias), `residual` the residual at
    /// their position (null: none), read under `mask` (all lanes, or the
    /// first few). The activation follows on whole rows
    /// ([`Fused::activate`]): a chain as long as a sigmoid is bound by its
    /// latency one vector at a time.
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
        for r in rows.clone() {
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
        // SAFETY: the caller's contract.
        unsafe { f.activate(out, n, rows, cols) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(bias: bool, residual: bool, lo: f32, hi: f32, act: Act) -> Option<Form> {
        Some(Form {
            bias,
            residual,
            lo,
            hi,
            act,
        })
    }

    #[test]
    fn steps_in_the_kernels_order_only() {
        use Act::*;
        use Step::*;
        let inf = f32::INFINITY;
        let relu6 = form(true, false, 0.0, 6.0, Identity);
        assert_eq!(canonical(&[Bias, Max(0.0), Min(6.0)]), relu6);
        assert_eq!(canonical(&[Bias, Min(6.0), Max(0.0)]), relu6);
        assert_eq!(
            canonical(&[Residual]),
            form(false, true, -inf, inf, Identity)
        );
        assert_eq!(
            canonical(&[Bias, Residual, Max(0.0)]),
            form(true, true, 0.0, inf, Identity)
        );
        assert_eq!(
            canonical(&[Bias, Step::Silu]),
            form(true, false, -inf, inf, Act::Silu)
        );
        assert_eq!(
            canonical(&[Bias, Residual, Step::HardSwish]),
            form(true, true, -inf, inf, Act::HardSwish)
        );
        // Another order rounds differently, or does not commute.
        assert_eq!(canonical(&[Residual, Bias]), None);
        assert_eq!(canonical(&[Max(0.0), Bias]), None);
        assert_eq!(canonical(&[Bias, Bias]), None);
        assert_eq!(canonical(&[Min(0.0), Max(1.0)]), None);
        assert_eq!(canonical(&[Max(f32::NAN)]), None);
        assert_eq!(canonical(&[Step::Silu, Bias]), None);
        assert_eq!(canonical(&[Step::Silu, Max(0.0)]), None);
        assert_eq!(canonical(&[Step::Silu, Step::HardSwish]), None);
    }

    /// The activations as the graph defines them, in f64.
    fn act64(act: Act, v: f32) -> f64 {
        let v = v as f64;
        match act {
            Act::Identity => v,
            Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Act::Silu => v / (1.0 + (-v).exp()),
            Act::HardSwish => v.max(-3.0) * ((v + 3.0) / 6.0).clamp(0.0, 1.0),
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn rows_match_the_definition() {
        let (m, n) = (5, 21);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 4.0).collect();
        let res: Vec<f32> = (0..m * n).map(|i| (i % 9) as f32 - 4.0).collect();
        let base: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 - 6.0).collect();
        for act in [Act::Identity, Act::Sigmoid, Act::Silu, Act::HardSwish] {
            let f = Fused {
                bias: bias.as_ptr(),
                residual: res.as_ptr(),
                lo: -5.0,
                hi: 3.0,
                act,
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
                        f64::NAN
                    } else if inside {
                        act64(act, (base[i] + bias[c] + res[i]).clamp(-5.0, 3.0))
                    } else {
                        base[i] as f64
                    };
                    // The clamp and the sums are exact; sigmoid within a few ulps.
                    let ok = (out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs())
                        || (out[i].is_nan() && want.is_nan());
                    assert!(ok, "{act:?} [{r}, {c}]: {} vs {want}", out[i]);
                }
            }
        }
    }
}

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
                    Real::F32 => self.planes::<f32>(o.0 as *mut f32, i.0 as *const f32, range),
                    Real::F64 => self.planes::<f64>(o.0 as *mut f64, i.0 as *const f64, range),
                }
            }
        };
        team.run(parts, &part);
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

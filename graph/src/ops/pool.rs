//! Pooling: max and average over 2-D windows of NCHW tensors.

use super::linalg::float_array;
use crate::array::Array;
use crate::op::Window2d;
use crate::shape::{Dim, Shape, TensorType};

/// The number of pooling windows along one dim: ONNX's (and PyTorch's)
/// rule, `floor((size + pads - span) / stride) + 1`, or with `ceil` the
/// ceiling, less one where the last window would start in the trailing
/// padding; `span = dilation * (kernel - 1) + 1`. In ceil mode the last
/// window may run past the padded input (its taps there are ignored), so
/// a window larger than the padded input still gives one output. `None`
/// where the count is negative (no window at all fits), an attribute is 0,
/// or a size overflows; `Some(0)` is an empty output.
pub fn pool_out(
    size: usize,
    pad_begin: usize,
    pad_end: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let i = |v: usize| i128::try_from(v).ok();
    let span = i(dilation)? * (i(kernel)? - 1) + 1;
    let lead = i(size)? + i(pad_begin)?;
    let room = lead + i(pad_end)? - span;
    let s = i(stride)?;
    let mut out = if ceil {
        -(-room).div_euclid(s) + 1
    } else {
        room.div_euclid(s) + 1
    };
    if ceil && out > 0 && (out - 1) * s >= lead {
        out -= 1;
    }
    usize::try_from(out).ok()
}

/// Shape rule of pooling: a float NCHW input, padding smaller than the
/// window, and a window count per dim that is not negative ([`pool_out`];
/// 0 is an empty output).
pub fn infer_pool(x: &TensorType, w: &Window2d) -> Result<TensorType, String> {
    super::require_float(x, "input")?;
    super::require_rank(x, 4, "input (NCHW)")?;
    for i in 0..2 {
        let span = w.dilation[i]
            .saturating_mul(w.kernel[i].saturating_sub(1))
            .saturating_add(1);
        if w.padding[i] >= span || w.padding[i + 2] >= span {
            return Err(format!(
                "padding {:?} must be smaller than the window {:?}",
                w.padding, w.kernel
            ));
        }
    }
    let mut out = vec![x.shape.0[0].clone(), x.shape.0[1].clone()];
    for i in 0..2 {
        let size = x.shape.0[2 + i].fixed().ok_or_else(|| {
            format!(
                "spatial dim {} must be a fixed size, got {}",
                2 + i,
                x.shape.0[2 + i]
            )
        })?;
        let o = pool_out(
            size,
            w.padding[i],
            w.padding[i + 2],
            w.kernel[i],
            w.stride[i],
            w.dilation[i],
            w.ceil_mode,
        )
        .ok_or_else(|| {
            format!(
                "window {:?} (stride {:?}, dilation {:?}) does not fit the padded input",
                w.kernel, w.stride, w.dilation
            )
        })?;
        out.push(Dim::Fixed(o));
    }
    Ok(TensorType::new(x.dtype, Shape(out)))
}

/// Visits each output position with the in-bounds input taps of its window.
/// `f(out_index, taps, padded_count)` gets the input offsets and the number of
/// window positions inside the padded extent.
fn for_windows(x: &Array, w: &Window2d, out: &[usize], mut f: impl FnMut(usize, &[usize], usize)) {
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let (oh, ow) = (out[2], out[3]);
    let mut taps = Vec::with_capacity(w.kernel[0] * w.kernel[1]);
    for plane in 0..n * c {
        for y in 0..oh {
            for xo in 0..ow {
                taps.clear();
                let mut padded = 0;
                for ky in 0..w.kernel[0] {
                    let iy =
                        (y * w.stride[0] + ky * w.dilation[0]) as isize - w.padding[0] as isize;
                    let in_pad_y = iy < (h + w.padding[2]) as isize;
                    for kx in 0..w.kernel[1] {
                        let ix = (xo * w.stride[1] + kx * w.dilation[1]) as isize
                            - w.padding[1] as isize;
                        if in_pad_y && ix < (wd + w.padding[3]) as isize {
                            padded += 1;
                        }
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                            taps.push((plane * h + iy as usize) * wd + ix as usize);
                        }
                    }
                }
                f((plane * oh + y) * ow + xo, &taps, padded);
            }
        }
    }
}

/// Reference meaning of max pooling: padding never wins; NaN propagates; a
/// window entirely in padding gives -inf.
pub fn eval_max_pool(x: &Array, w: &Window2d, out: &[usize]) -> Result<Array, String> {
    let xs = x.to_f64_vec();
    let mut res = vec![0f64; out.iter().product()];
    for_windows(x, w, out, |o, taps, _| {
        let mut m = f64::NEG_INFINITY;
        for &t in taps {
            if xs[t].is_nan() || m.is_nan() {
                m = f64::NAN;
            } else {
                m = m.max(xs[t]);
            }
        }
        res[o] = m;
    });
    Ok(float_array(x.dtype(), out, res))
}

/// Reference meaning of average pooling. The divisor is the number of window
/// positions inside the input, or inside the padded input with `count_include_pad`.
pub fn eval_avg_pool(
    x: &Array,
    w: &Window2d,
    count_include_pad: bool,
    out: &[usize],
) -> Result<Array, String> {
    let xs = x.to_f64_vec();
    let mut res = vec![0f64; out.iter().product()];
    for_windows(x, w, out, |o, taps, padded| {
        let s: f64 = taps.iter().map(|&t| xs[t]).sum();
        let d = if count_include_pad {
            padded
        } else {
            taps.len()
        };
        res[o] = if d == 0 { f64::NAN } else { s / d as f64 };
    });
    Ok(float_array(x.dtype(), out, res))
}

// ---- gradients ----

use crate::builder::Tensor;
use crate::dim_expr::DimExpr;
use crate::dtype::DType;
use crate::op::SliceAxis;
use crate::ops::movement::spread;

/// The padding to add after the input so every window fits (ceil mode).
fn tail(
    size: usize,
    pad_before: usize,
    pad_after: usize,
    out: usize,
    k: usize,
    s: usize,
    d: usize,
) -> usize {
    let need = (out.max(1) - 1) * s + (k - 1) * d + 1;
    need.saturating_sub(size + pad_before).max(pad_after)
}

/// For each window tap `(ky, kx)`: the strided slice of the padded input
/// under that tap in every window, and a function placing a tensor of
/// window values back at those positions.
struct Taps {
    dims: [usize; 4],
    extra: [usize; 2],
}

impl Taps {
    fn new(x: &Tensor<'_>, y: &Tensor<'_>, w: &Window2d) -> Taps {
        let (xs, ys) = (x.shape(), y.shape());
        let f = |s: &Shape, i: usize| s.dims()[i].fixed().unwrap_or(0);
        let (h, wd, oh, ow) = (f(&xs, 2), f(&xs, 3), f(&ys, 2), f(&ys, 3));
        let extra = [
            tail(
                h,
                w.padding[0],
                w.padding[2],
                oh,
                w.kernel[0],
                w.stride[0],
                w.dilation[0],
            ),
            tail(
                wd,
                w.padding[1],
                w.padding[3],
                ow,
                w.kernel[1],
                w.stride[1],
                w.dilation[1],
            ),
        ];
        Taps {
            dims: [h, wd, oh, ow],
            extra,
        }
    }

    fn padded(&self, w: &Window2d) -> [usize; 2] {
        [
            self.dims[0] + w.padding[0] + self.extra[0],
            self.dims[1] + w.padding[1] + self.extra[1],
        ]
    }

    /// The input values under tap `(ky, kx)` of every window.
    #[track_caller]
    fn under<'g>(
        &self,
        xp: Tensor<'g>,
        w: &Window2d,
        ky: usize,
        kx: usize,
    ) -> crate::error::Result<Tensor<'g>> {
        let [_, _, oh, ow] = self.dims;
        let ax = |k: usize, i: usize, n: usize| {
            let start = (k * w.dilation[i]) as i64;
            SliceAxis {
                start,
                end: start + (n as i64 - 1) * w.stride[i] as i64 + 1,
                step: w.stride[i] as i64,
            }
        };
        xp.slice(&[
            SliceAxis::FULL,
            SliceAxis::FULL,
            ax(ky, 0, oh),
            ax(kx, 1, ow),
        ])
    }

    /// Window values `v` placed back under tap `(ky, kx)`, in the padded input.
    #[track_caller]
    fn place<'g>(
        &self,
        v: Tensor<'g>,
        w: &Window2d,
        ky: usize,
        kx: usize,
    ) -> crate::error::Result<Tensor<'g>> {
        let [hp, wp] = self.padded(w);
        let at = |k: usize, d: usize| DimExpr::val((k * d) as i64);
        let t = spread(
            v,
            2,
            &at(ky, w.dilation[0]),
            w.stride[0] as i64,
            Dim::Fixed(hp),
        )?;
        spread(
            t,
            3,
            &at(kx, w.dilation[1]),
            w.stride[1] as i64,
            Dim::Fixed(wp),
        )
    }

    /// Cuts the padding off a padded-input-shaped tensor.
    #[track_caller]
    fn unpad<'g>(&self, t: Tensor<'g>, w: &Window2d) -> crate::error::Result<Tensor<'g>> {
        let [h, wd, _, _] = self.dims;
        let ax = |p: usize, n: usize| SliceAxis {
            start: p as i64,
            end: (p + n) as i64,
            step: 1,
        };
        t.slice(&[
            SliceAxis::FULL,
            SliceAxis::FULL,
            ax(w.padding[0], h),
            ax(w.padding[1], wd),
        ])
    }
}

/// Gradient rule of max pooling: each window's gradient goes to the first
/// element (in window order) equal to the window's maximum.
#[track_caller]
pub(crate) fn grad_max_pool<'g>(
    x: Tensor<'g>,
    y: Tensor<'g>,
    w: &Window2d,
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let taps = Taps::new(&x, &y, w);
    let b = x.builder();
    let xp = x.pad(
        &[0, 0, w.padding[0], w.padding[1]],
        &[0, 0, taps.extra[0], taps.extra[1]],
        f64::NEG_INFINITY,
    )?;
    let zero = crate::autodiff::zeros_like(g)?;
    let mut taken = b.scalar(0.0, DType::Bool)?.broadcast_to(y.shape())?;
    let mut total: Option<Tensor<'g>> = None;
    for ky in 0..w.kernel[0] {
        for kx in 0..w.kernel[1] {
            let hit = taps.under(xp, w, ky, kx)?.eq(y)?.and(taken.not()?)?;
            taken = taken.or(hit)?;
            let placed = taps.place(b.select(hit, g, zero)?, w, ky, kx)?;
            total = Some(match total {
                Some(t) => t.add(placed)?,
                None => placed,
            });
        }
    }
    taps.unpad(total.expect("a window has taps"), w)
}

/// Gradient rule of average pooling: each window's gradient, divided by its
/// divisor, spread over its taps.
#[track_caller]
pub(crate) fn grad_avg_pool<'g>(
    x: Tensor<'g>,
    w: &Window2d,
    count_include_pad: bool,
    g: Tensor<'g>,
) -> crate::error::Result<Tensor<'g>> {
    let y_like = g;
    let taps = Taps::new(&x, &y_like, w);
    let [h, wd, oh, ow] = taps.dims;
    // The divisor of every window, as the reference computes it.
    let probe = Array::zeros(x.dtype(), &[1, 1, h, wd]);
    let mut div = vec![0f64; oh * ow];
    for_windows(&probe, w, &[1, 1, oh, ow], |o, t, padded| {
        let d = if count_include_pad { padded } else { t.len() };
        div[o] = if d == 0 { 0.0 } else { 1.0 / d as f64 };
    });
    let b = x.builder();
    let inv = b.constant(super::linalg::float_array(x.dtype(), &[oh, ow], div))?;
    let share = g.mul(inv)?;
    let mut total: Option<Tensor<'g>> = None;
    for ky in 0..w.kernel[0] {
        for kx in 0..w.kernel[1] {
            let placed = taps.place(share, w, ky, kx)?;
            total = Some(match total {
                Some(t) => t.add(placed)?,
                None => placed,
            });
        }
    }
    taps.unpad(total.expect("a window has taps"), w)
}

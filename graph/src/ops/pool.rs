//! Pooling: max and average over 2-D windows of NCHW tensors.

use super::linalg::{float_array, window_out};
use crate::array::Array;
use crate::op::Window2d;
use crate::shape::{Dim, Shape, TensorType};

/// Shape rule of pooling: a float NCHW input; the window must fit.
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
        let o = window_out(
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

//! Contractions: batched matmul with broadcast batch dims, and 2-D convolution.

use super::bstrides;
use super::elementwise::Int;
use crate::array::{Array, Data};
use crate::op::BinaryOp;
use crate::shape::{broadcast_shapes, Dim, Shape, TensorType};

/// Shape rule of matmul: `[..., m, k] x [..., k, n] -> [..., m, n]`.
pub fn infer_matmul(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if a.dtype != b.dtype {
        return Err(format!("dtypes differ: {} vs {}", a.dtype, b.dtype));
    }
    if !a.dtype.is_numeric() {
        return Err(format!("cannot multiply {} matrices", a.dtype));
    }
    if a.rank() < 2 || b.rank() < 2 {
        return Err("both operands need rank >= 2".into());
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (k1, k2) = (&a.shape.0[ra - 1], &b.shape.0[rb - 2]);
    crate::shape::unify_dims(k1, k2, "inner dimensions")
        .map_err(|_| format!("inner dimensions differ: {k1} vs {k2}"))?;
    let batch_a = Shape(a.shape.0[..ra - 2].to_vec());
    let batch_b = Shape(b.shape.0[..rb - 2].to_vec());
    let mut out =
        broadcast_shapes(&[&batch_a, &batch_b]).map_err(|e| format!("batch dims: {e}"))?;
    out.0.push(a.shape.0[ra - 2].clone());
    out.0.push(b.shape.0[rb - 1].clone());
    Ok(TensorType::new(a.dtype, out))
}

/// Reference meaning of matmul: floats accumulate in f64, integers wrap.
pub fn eval_matmul(a: &Array, b: &Array, out: &[usize]) -> Result<Array, String> {
    let (ash, bsh) = (a.shape(), b.shape());
    let (m, k, n) = (ash[ash.len() - 2], ash[ash.len() - 1], bsh[bsh.len() - 1]);
    let batch = &out[..out.len() - 2];
    let sa = bstrides(&ash[..ash.len() - 2], batch);
    let sb = bstrides(&bsh[..bsh.len() - 2], batch);
    let nb: usize = batch.iter().product();
    let mut offsets = Vec::with_capacity(nb);
    super::walk(batch, [(0, &sa), (0, &sb)], |[i, j]| {
        offsets.push((i * m * k, j * k * n))
    });
    if batch.is_empty() {
        offsets = vec![(0, 0)];
    }
    macro_rules! mm {
        ($x:expr, $y:expr, $acc:ty, $zero:expr, $mac:expr, $fin:expr) => {{
            let mut res = Vec::with_capacity(nb * m * n);
            for &(oa, ob) in &offsets {
                for i in 0..m {
                    for j in 0..n {
                        let mut s: $acc = $zero;
                        for p in 0..k {
                            s = $mac(s, $x[oa + i * k + p], $y[ob + p * n + j]);
                        }
                        res.push($fin(s));
                    }
                }
            }
            res
        }};
    }
    let data = match (a.data(), b.data()) {
        (Data::F32(x), Data::F32(y)) => Data::F32(mm!(
            x,
            y,
            f64,
            0.0,
            |s: f64, p: f32, q: f32| s + p as f64 * q as f64,
            |s: f64| s as f32
        )),
        (Data::F64(x), Data::F64(y)) => Data::F64(mm!(
            x,
            y,
            f64,
            0.0,
            |s: f64, p: f64, q: f64| s + p * q,
            |s| s
        )),
        (Data::I8(x), Data::I8(y)) => Data::I8(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::I16(x), Data::I16(y)) => Data::I16(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::I32(x), Data::I32(y)) => Data::I32(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::I64(x), Data::I64(y)) => Data::I64(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::U8(x), Data::U8(y)) => Data::U8(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::U16(x), Data::U16(y)) => Data::U16(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::U32(x), Data::U32(y)) => Data::U32(wrapping_mm(x, y, &offsets, [m, k, n])),
        (Data::U64(x), Data::U64(y)) => Data::U64(wrapping_mm(x, y, &offsets, [m, k, n])),
        _ => return Err(format!("cannot multiply {} by {}", a.dtype(), b.dtype())),
    };
    Ok(Array::new(out.to_vec(), data).expect("matmul shape matches"))
}

/// Integer matrix products (one per `offsets` pair of `a` and `b` element
/// offsets), wrapping at the type's width.
fn wrapping_mm<T: Int>(
    a: &[T],
    b: &[T],
    offsets: &[(usize, usize)],
    [m, k, n]: [usize; 3],
) -> Vec<T> {
    let mut res = Vec::with_capacity(offsets.len() * m * n);
    for &(oa, ob) in offsets {
        for i in 0..m {
            for j in 0..n {
                let mut s = T::default();
                for p in 0..k {
                    let prod = T::binary(BinaryOp::Mul, a[oa + i * k + p], b[ob + p * n + j]);
                    s = T::binary(BinaryOp::Add, s, prod);
                }
                res.push(s);
            }
        }
    }
    res
}

fn fixed(d: &Dim, what: &str) -> Result<usize, String> {
    d.fixed()
        .ok_or_else(|| format!("{what} must be a fixed size, got {d}"))
}

/// Output size of a sliding window along one dim (floor or ceil mode); `None`
/// when the window does not fit or an attribute is 0.
pub fn window_out(
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
    let span = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    let padded = size.checked_add(pad_begin)?.checked_add(pad_end)?;
    let room = padded.checked_sub(span)?;
    let mut out = if ceil {
        room.div_ceil(stride)
    } else {
        room / stride
    } + 1;
    // In ceil mode the last window must still start inside the input or its leading padding.
    if ceil && out > 1 && (out - 1) * stride >= size + pad_begin {
        out -= 1;
    }
    Some(out)
}

/// Shape rule of conv2d: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`.
pub fn infer_conv2d(
    x: &TensorType,
    w: &TensorType,
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Result<TensorType, String> {
    super::require_float(x, "input")?;
    if x.dtype != w.dtype {
        return Err(format!("dtypes differ: {} vs {}", x.dtype, w.dtype));
    }
    super::require_rank(x, 4, "input (NCHW)")?;
    super::require_rank(w, 4, "weight (OIHW)")?;
    if stride.contains(&0) || dilation.contains(&0) || groups == 0 {
        return Err("stride, dilation and groups must be at least 1".into());
    }
    let c = fixed(&x.shape.0[1], "input channels")?;
    let [o, ci, kh, kw] = [0, 1, 2, 3].map(|i| w.shape.0[i].fixed());
    let (o, ci, kh, kw) = match (o, ci, kh, kw) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => return Err("weight dims must be fixed".into()),
    };
    if c % groups != 0 || o % groups != 0 {
        return Err(format!(
            "channels in ({c}) and out ({o}) must be divisible by groups ({groups})"
        ));
    }
    if ci != c / groups {
        return Err(format!(
            "weight expects {ci} channels per group, input has {} ({c}/{groups})",
            c / groups
        ));
    }
    let h = fixed(&x.shape.0[2], "input height")?;
    let wd = fixed(&x.shape.0[3], "input width")?;
    let oh = window_out(h, padding[0], padding[2], kh, stride[0], dilation[0], false);
    let ow = window_out(
        wd,
        padding[1],
        padding[3],
        kw,
        stride[1],
        dilation[1],
        false,
    );
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(TensorType::new(
            x.dtype,
            Shape(vec![
                x.shape.0[0].clone(),
                Dim::Fixed(o),
                Dim::Fixed(oh),
                Dim::Fixed(ow),
            ]),
        )),
        _ => Err(format!(
            "kernel {kh}x{kw} (dilation {dilation:?}) does not fit the padded {h}x{wd} input"
        )),
    }
}

/// Reference meaning of conv2d (direct loops, f64 accumulation).
pub fn eval_conv2d(
    x: &Array,
    w: &Array,
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    out: &[usize],
) -> Result<Array, String> {
    let (xs, ws) = (x.to_f64_vec(), w.to_f64_vec());
    let [n, c, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let [o, cg, kh, kw] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
    let (oh, ow) = (out[2], out[3]);
    let og = o / groups;
    let mut res = vec![0f64; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = 0f64;
                    for ic in 0..cg {
                        let cin = g * cg + ic;
                        for ky in 0..kh {
                            let iy =
                                (y * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (xo * stride[1] + kx * dilation[1]) as isize
                                    - padding[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = xs[((b * c + cin) * h + iy as usize) * wd + ix as usize];
                                let wv = ws[((oc * cg + ic) * kh + ky) * kw + kx];
                                s += xv * wv;
                            }
                        }
                    }
                    res[((b * o + oc) * oh + y) * ow + xo] = s;
                }
            }
        }
    }
    Ok(float_array(x.dtype(), out, res))
}

/// An f32/f64 array from f64 values.
pub(crate) fn float_array(dtype: crate::dtype::DType, shape: &[usize], v: Vec<f64>) -> Array {
    let data = match dtype {
        crate::dtype::DType::F32 => Data::F32(v.into_iter().map(|a| a as f32).collect()),
        crate::dtype::DType::F16 => Data::F16(v.into_iter().map(half::f16::from_f64).collect()),
        crate::dtype::DType::BF16 => Data::BF16(v.into_iter().map(half::bf16::from_f64).collect()),
        _ => Data::F64(v),
    };
    Array::new(shape.to_vec(), data).expect("float array shape matches")
}

// ---- gradients ----

use crate::autodiff::unbroadcast;
use crate::builder::Tensor;
use crate::dim_expr::DimExpr;
use crate::op::SliceAxis;
use crate::ops::movement::spread;
use crate::tensor_ops::Conv2dOptions;

/// Gradient rule of matmul: `g @ b^T` and `a^T @ g`, summed over broadcast batch dims.
#[track_caller]
pub(crate) fn grad_matmul<'g>(
    a: Tensor<'g>,
    b: Tensor<'g>,
    g: Tensor<'g>,
) -> crate::error::Result<Vec<Option<Tensor<'g>>>> {
    if !a.dtype().is_float() {
        return Ok(vec![None, None]);
    }
    let ga = unbroadcast(g.matmul(b.transpose()?)?, &a.shape())?;
    let gb = unbroadcast(a.transpose()?.matmul(g)?, &b.shape())?;
    Ok(vec![Some(ga), Some(gb)])
}

/// Pads (`before >= 0`) or cuts (`before < 0`) the start of `axis`, then pads
/// or cuts its end to length `len`.
#[track_caller]
fn fit<'g>(
    t: Tensor<'g>,
    axis: usize,
    before: i64,
    len: usize,
) -> crate::error::Result<Tensor<'g>> {
    let rank = t.rank();
    let mut t = if before > 0 {
        let mut b = vec![0; rank];
        b[axis] = before as usize;
        t.pad(&b, &vec![0; rank], 0.0)?
    } else if before < 0 {
        t.slice_axis(axis as i64, -before, i64::MAX, 1)?
    } else {
        t
    };
    let cur = t.shape().dims()[axis].fixed().unwrap_or(0);
    if cur < len {
        let mut a = vec![0; rank];
        a[axis] = len - cur;
        t = t.pad(&vec![0; rank], &a, 0.0)?;
    } else if cur > len {
        t = t.slice_axis(axis as i64, 0, len as i64, 1)?;
    }
    Ok(t)
}

/// Gradient rule of conv2d, built from convolutions: the input's gradient
/// convolves the stride-spread output gradient with the flipped weights; the
/// weights' gradient correlates the padded input with the output gradient
/// (batch and channels swapped), one group at a time.
#[track_caller]
pub(crate) fn grad_conv2d<'g>(
    x: Tensor<'g>,
    w: Tensor<'g>,
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    g: Tensor<'g>,
) -> crate::error::Result<Vec<Option<Tensor<'g>>>> {
    let xs = x.shape();
    let ws = w.shape();
    let fixed = |s: &Shape, i: usize| s.dims()[i].fixed().unwrap_or(0);
    let (c, h, wd) = (fixed(&xs, 1), fixed(&xs, 2), fixed(&xs, 3));
    let (o, cg, kh, kw) = (fixed(&ws, 0), fixed(&ws, 1), fixed(&ws, 2), fixed(&ws, 3));
    let gs = g.shape();
    let (oh, ow) = (fixed(&gs, 2), fixed(&gs, 3));
    let og = o / groups;
    let k = [kh, kw];
    let size = [h, wd];
    let pad_before = [padding[0], padding[1]];
    // Input gradient.
    let mut gd = g;
    for i in 0..2 {
        let n = [oh, ow][i];
        gd = spread(
            gd,
            2 + i,
            &DimExpr::val(0),
            stride[i] as i64,
            Dim::Fixed((n.max(1) - 1) * stride[i] + 1),
        )?;
        let reach = ((k[i] - 1) * dilation[i]) as i64;
        gd = fit(
            gd,
            2 + i,
            reach - pad_before[i] as i64,
            size[i] + reach as usize,
        )?;
    }
    let flipped = w.slice(&[
        SliceAxis::FULL,
        SliceAxis::FULL,
        SliceAxis {
            start: i64::MAX,
            end: i64::MIN,
            step: -1,
        },
        SliceAxis {
            start: i64::MAX,
            end: i64::MIN,
            step: -1,
        },
    ])?;
    let wt = flipped
        .reshape([groups, og, cg, kh, kw])?
        .permute(&[0, 2, 1, 3, 4])?
        .reshape([c, og, kh, kw])?;
    let opts = Conv2dOptions {
        stride: [1, 1],
        padding: [0; 4],
        dilation,
        groups,
    };
    let gx = gd.conv2d(wt, opts)?;
    // Weight gradient, per group.
    let xp = x.pad(
        &[0, 0, padding[0], padding[1]],
        &[0, 0, padding[2], padding[3]],
        0.0,
    )?;
    let mut parts = Vec::with_capacity(groups);
    for grp in 0..groups {
        let xg = if groups == 1 {
            xp
        } else {
            xp.slice_axis(1, (grp * cg) as i64, ((grp + 1) * cg) as i64, 1)?
        };
        let gg = if groups == 1 {
            g
        } else {
            g.slice_axis(1, (grp * og) as i64, ((grp + 1) * og) as i64, 1)?
        };
        // [cg, n, hp, wp] correlated with [og, n, oh, ow]: taps oh apart by the stride.
        let opts = Conv2dOptions {
            stride: dilation,
            padding: [0; 4],
            dilation: stride,
            groups: 1,
        };
        let dw = xg
            .permute(&[1, 0, 2, 3])?
            .conv2d(gg.permute(&[1, 0, 2, 3])?, opts)?;
        let dw = dw.slice(&[
            SliceAxis::FULL,
            SliceAxis::FULL,
            SliceAxis {
                start: 0,
                end: kh as i64,
                step: 1,
            },
            SliceAxis {
                start: 0,
                end: kw as i64,
                step: 1,
            },
        ])?;
        parts.push(dw.permute(&[1, 0, 2, 3])?);
    }
    let gw = if parts.len() == 1 {
        parts[0]
    } else {
        x.builder().concat(&parts, 0)?
    };
    Ok(vec![Some(gx), Some(gw)])
}

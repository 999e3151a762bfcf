//! `DeformConv` (opset 19+, 2-D): a convolution whose taps sample the input
//! at learned fractional offsets, each weighted by an optional mask.
//!
//! Each tap's position (`top-left + tap * dilation + offset`) is sampled
//! bilinearly as ONNX's reference does (GridSample with aligned corners and
//! zeros outside): the four neighbouring pixels, a neighbour outside the
//! image weighing 0. The samples of every (offset group, tap, output
//! position) are read with one gather from X laid out as
//! `[N * offset_group * H * W, C / offset_group]`, weighted and summed into
//! columns `[N, group, C / group * kH * kW, oH * oW]`, and one batched
//! matrix product with W (reshaped to `[group, oC / group, C / group * kH *
//! kW]`) gives the output, plus the bias.

use kiln_graph::{Array, DType, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("DeformConv", deform_conv)];

/// A 2-element attribute, or `default` where absent.
fn pair(n: &Node<'_, '_>, name: &str, len: usize, default: i64) -> R<Vec<i64>> {
    match n.ints(name) {
        None => Ok(vec![default; len]),
        Some(v) if v.is_empty() => Ok(vec![default; len]),
        Some(v) if v.len() != len => {
            Err(format!("{name} has {} values, expected {len}", v.len()).into())
        }
        Some(v) if v.iter().any(|&x| x < 0) => {
            Err(format!("{name} has a negative value: {v:?}").into())
        }
        Some(v) => Ok(v),
    }
}

fn deform_conv<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, w, offset) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(format!("X must be floating point, got {dtype}").into());
    }
    let xs = fixed_shape(x)?;
    let ws = fixed_shape(w)?;
    let os = fixed_shape(offset)?;
    if xs.len() != 4 {
        return n.unsupported(format!(
            "X of shape {xs:?}: only 2-D deformable convolutions (rank-4 X) are converted"
        ));
    }
    if ws.len() != 4 || os.len() != 4 {
        return Err(format!("W {ws:?} and offset {os:?} must have rank 4 like X {xs:?}").into());
    }
    let (nb, c, ih, iw) = (xs[0], xs[1], xs[2], xs[3]);
    let oc = ws[0];
    let kernel = pair(n, "kernel_shape", 2, 0)?;
    let (kh, kw) = if kernel == [0, 0] {
        (ws[2], ws[3])
    } else {
        (kernel[0] as usize, kernel[1] as usize)
    };
    if (kh, kw) != (ws[2], ws[3]) {
        return Err(format!(
            "kernel_shape {kernel:?} differs from W's spatial dims {:?}",
            &ws[2..]
        )
        .into());
    }
    let strides = pair(n, "strides", 2, 1)?;
    let dilations = pair(n, "dilations", 2, 1)?;
    let pads = pair(n, "pads", 4, 0)?;
    let group = n.int("group", 1);
    let og = n.int("offset_group", 1);
    if group < 1 || og < 1 || strides.contains(&0) || dilations.contains(&0) {
        return Err("group, offset_group, strides and dilations must be positive".into());
    }
    let (group, og) = (group as usize, og as usize);
    if c % group != 0 || ws[1] * group != c || oc % group != 0 {
        return Err(format!("X's {c} channels, W {ws:?} and group {group} do not fit").into());
    }
    if c % og != 0 {
        return Err(format!("X's {c} channels are not divisible by offset_group {og}").into());
    }
    let k = kh * kw;
    let (oh, ow) = (os[2], os[3]);
    let out_dim = |size: usize, kk: usize, s: i64, d: i64, p0: i64, p1: i64| -> i64 {
        (size as i64 + p0 + p1 - ((kk as i64 - 1) * d + 1)) / s + 1
    };
    if os[0] != nb
        || os[1] != og * k * 2
        || out_dim(ih, kh, strides[0], dilations[0], pads[0], pads[2]) != oh as i64
        || out_dim(iw, kw, strides[1], dilations[1], pads[1], pads[3]) != ow as i64
    {
        return Err(format!(
            "offset shape {os:?} does not fit X {xs:?}, kernel {kh}x{kw}, strides {strides:?}, \
             dilations {dilations:?}, pads {pads:?} and offset_group {og}"
        )
        .into());
    }
    let mask = match n.opt(4) {
        Some(m) => {
            let ms = fixed_shape(m)?;
            if ms != [nb, og * k, oh, ow] {
                return Err(format!("mask shape {ms:?} is not {:?}", [nb, og * k, oh, ow]).into());
            }
            Some(m.cast(dtype)?.reshape(vec![nb, og, k, oh, ow])?)
        }
        None => None,
    };
    // Sampling positions in the working float type: [N, og, K, oH, oW].
    let ft = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let off = offset.cast(ft)?.reshape(vec![nb, og, k, 2, oh, ow])?;
    let window = Window {
        kernel: (kh, kw),
        out: (oh, ow),
        pads: [pads[0], pads[1]],
        strides: [strides[0], strides[1]],
        dilations: [dilations[0], dilations[1]],
    };
    let ph = off
        .slice_axis(3, 0, 1, 1)?
        .squeeze(3)?
        .add(window.base(n, 0, ft)?)?;
    let pw = off
        .slice_axis(3, 1, 2, 1)?
        .squeeze(3)?
        .add(window.base(n, 1, ft)?)?;
    let th = bilinear_taps(ph, ih, ft)?;
    let tw = bilinear_taps(pw, iw, ft)?;
    // Flat row of each (n, group) block: ((n * og + g) * H * W).
    let block =
        n.g.iota(DType::I64, vec![nb, og, k, oh, ow], 0)?
            .mul(og as i64)?
            .add(n.g.iota(DType::I64, vec![nb, og, k, oh, ow], 1)?)?
            .mul((ih * iw) as i64)?;
    let (mut idx, mut wts) = (Vec::new(), Vec::new());
    for (hi, hw) in &th {
        for (wi, ww) in &tw {
            let flat = block.add(hi.mul(iw as i64)?)?.add(*wi)?;
            idx.push(flat.unsqueeze(0)?);
            wts.push(hw.mul(*ww)?.unsqueeze(0)?);
        }
    }
    let idx = n.g.concat(&idx, 0)?;
    let mut weight = n.g.concat(&wts, 0)?;
    if let Some(m) = mask {
        weight = weight.mul(m.cast(ft)?)?;
    }
    // X as [N * og * H * W, C / og].
    let cpg = c / og;
    let data = x
        .reshape(vec![nb, og, cpg, ih * iw])?
        .permute(&[0, 1, 3, 2])?
        .reshape(vec![nb * og * ih * iw, cpg])?;
    // [4, N, og, K, oH, oW, C/og], weighted and summed over the taps.
    let sampled = data
        .gather(idx, 0)?
        .mul(weight.cast(dtype)?.unsqueeze(-1)?)?
        .sum(&[0], false)?;
    // Columns [N, group, C/group * K, oH * oW] (channel-major, then tap).
    let cols =
        sampled
            .permute(&[0, 1, 5, 2, 3, 4])?
            .reshape(vec![nb, group, (c / group) * k, oh * ow])?;
    let wm = w
        .cast(dtype)?
        .reshape(vec![1, group, oc / group, (c / group) * k])?;
    let mut y = wm.matmul(cols)?.reshape(vec![nb, oc, oh, ow])?;
    if let Some(b) = n.opt(3) {
        let bs = fixed_shape(b)?;
        if bs != [oc] {
            return Err(format!("B shape {bs:?} is not [{oc}]").into());
        }
        y = y.add(b.cast(dtype)?.reshape(vec![oc, 1, 1])?)?;
    }
    Ok(vec![y])
}

/// The kernel window of a deformable convolution: kernel and output sizes,
/// and the leading pads, strides and dilations, per spatial dim (h, w).
struct Window {
    kernel: (usize, usize),
    out: (usize, usize),
    pads: [i64; 2],
    strides: [i64; 2],
    dilations: [i64; 2],
}

impl Window {
    /// Each tap's un-offset position along `axis` (0: h, 1: w) per (tap,
    /// output position): a constant `[K, oH, oW]` of type `ft`.
    fn base<'g>(&self, n: &Node<'_, 'g>, axis: usize, ft: DType) -> R<Tensor<'g>> {
        let ((kh, kw), (oh, ow)) = (self.kernel, self.out);
        let (pads, strides, dilations) = (self.pads, self.strides, self.dilations);
        let mut v = Vec::with_capacity(kh * kw * oh * ow);
        for ki in 0..kh {
            for kj in 0..kw {
                for i in 0..oh {
                    for j in 0..ow {
                        let p = if axis == 0 {
                            -pads[0] + strides[0] * i as i64 + dilations[0] * ki as i64
                        } else {
                            -pads[1] + strides[1] * j as i64 + dilations[1] * kj as i64
                        };
                        v.push(p as f64);
                    }
                }
            }
        }
        let a = kiln_graph::ops::elementwise::eval_cast(
            &Array::from_vec(vec![kh * kw, oh, ow], v).ok_or("base positions")?,
            ft,
        );
        n.constant(a)
    }
}

/// The two bilinear taps at positions `p` along a dim of `size`: (index,
/// weight), the weight zero outside the dim.
fn bilinear_taps<'g>(p: Tensor<'g>, size: usize, ft: DType) -> R<[(Tensor<'g>, Tensor<'g>); 2]> {
    let f = p.floor()?;
    let t = p.sub(f)?;
    let mut out = Vec::with_capacity(2);
    for (idx, wgt) in [(f, t.neg()?.add(1.0)?), (f.add(1.0)?, t)] {
        let inside = idx.ge(0.0)?.and(idx.le(size as f64 - 1.0)?)?.cast(ft)?;
        let i = idx
            .cast(DType::I64)?
            .maximum(0i64)?
            .minimum(size as i64 - 1)?;
        out.push((i, wgt.mul(inside)?));
    }
    let [a, b]: [(Tensor<'g>, Tensor<'g>); 2] =
        out.try_into().map_err(|_| "two taps".to_string())?;
    Ok([a, b])
}

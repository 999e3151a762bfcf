//! Convolutions, as compositions of kiln's primitives, and the spatial
//! attributes (`kernel_shape`, `strides`, `pads`, `dilations`, `auto_pad`)
//! they share with pooling ([`Spatial`]):
//!
//! - `Conv`: 2-D directly; 1-D as 2-D over a unit height; 3-D as 2-D convs
//!   over the depth taps stacked into channels (output depths folded into
//!   the batch, or one conv per depth where the batch is symbolic).
//!   `ConvTranspose` with a constant, finite weight: zero insertion,
//!   padding (or cropping), and a conv with the flipped, group-transposed
//!   weights; otherwise (a weight computed at run time, or holding NaN or
//!   infinities) by its definition, a matmul of input and weights whose
//!   products a scatter-add places, so that no inserted or padded zero
//!   meets a weight (`0 * inf` would be NaN where no input reaches).
//!   `output_shape`, `output_padding` and `auto_pad` decide the padding:
//!   the total padding is the natural size less `output_shape` (or, for
//!   SAME, less `in * stride`), split as the spec says (SAME_UPPER: the
//!   smaller half first; otherwise the larger), halves floored as ONNX's
//!   reference does; a negative total extends both ends.
//! - `CausalConvWithState` (opset 27): a depthwise causal 1-D convolution
//!   with a carried left context and optional fused SiLU, unrolled over the
//!   kernel taps.
//!
//! Deliberate limits: spatial dims must be fixed (as kiln's conv needs),
//! and so must channels where dims are merged (1-D transposed convs, 3-D
//! and up); convolutions of 4 and more spatial dims are refused.

use kiln_graph::{Array, Conv2dOptions, DType, Dim, Shape, SliceAxis, Tensor, Window2d};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("CausalConvWithState", causal_conv_with_state),
];

pub(crate) fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// The spatial axes `2..rank` of an `[N, C, ...]` tensor.
pub(crate) fn spatial_axes(x: Tensor<'_>) -> R<Vec<i64>> {
    if x.rank() < 3 {
        return Err(format!("needs an [N, C, spatial...] input, got {}", x.shape()).into());
    }
    Ok((2..x.rank() as i64).collect())
}

/// The fixed sizes of dims `from..` of `x`.
pub(crate) fn fixed_from(x: Tensor<'_>, from: usize) -> R<Vec<usize>> {
    let shape = x.shape();
    shape
        .0
        .get(from..)
        .ok_or_else(|| format!("needs rank above {from}, got {}", x.shape()))?
        .iter()
        .map(|d| {
            d.fixed().ok_or_else(|| {
                format!("dims from {from} on must be fixed, got {}", x.shape()).into()
            })
        })
        .collect()
}

/// The product of `dims` as one dim: fixed, or a lone symbolic dim.
pub(crate) fn dim_product(dims: &[Dim]) -> R<Dim> {
    match dims {
        [] => Ok(Dim::Fixed(1)),
        [d] => Ok(d.clone()),
        _ => dims
            .iter()
            .map(|d| d.fixed())
            .product::<Option<usize>>()
            .map(Dim::Fixed)
            .ok_or_else(|| format!("cannot merge dims with symbolic sizes: {dims:?}").into()),
    }
}

pub(crate) fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// `x` reshaped to `dims`.
pub(crate) fn reshape<'g>(x: Tensor<'g>, dims: Vec<Dim>) -> R<Tensor<'g>> {
    Ok(x.reshape(Shape(dims))?)
}

/// A non-negative integer attribute list, or `default` where absent.
pub(crate) fn usizes(n: &Node<'_, '_>, name: &str, len: usize, default: usize) -> R<Vec<usize>> {
    match n.ints(name) {
        None => Ok(vec![default; len]),
        Some(v) if v.is_empty() => Ok(vec![default; len]),
        Some(v) if v.len() != len => {
            Err(format!("{name} has {} values, expected {len}", v.len()).into())
        }
        Some(v) => v
            .iter()
            .map(|&x| {
                usize::try_from(x).map_err(|_| format!("{name} has a negative value {x}").into())
            })
            .collect(),
    }
}

// ---- windows: kernel, strides, dilations, pads ----

/// The window of a conv or pool node, per spatial dim.
#[derive(Clone, Debug)]
pub(crate) struct Spatial {
    pub(crate) kernel: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    pub(crate) begin: Vec<usize>,
    pub(crate) end: Vec<usize>,
}

impl Spatial {
    /// The window of `n` over spatial `sizes` with `kernel`: `strides`,
    /// `dilations`, and `pads` or `auto_pad`.
    pub(crate) fn of(n: &Node<'_, '_>, sizes: &[usize], kernel: Vec<usize>) -> R<Spatial> {
        let k = sizes.len();
        if kernel.len() != k {
            return Err(
                format!("kernel_shape {kernel:?} does not match the {k} spatial dims").into(),
            );
        }
        let strides = usizes(n, "strides", k, 1)?;
        let dilations = usizes(n, "dilations", k, 1)?;
        if strides.contains(&0) || dilations.contains(&0) || kernel.contains(&0) {
            return Err("kernel, strides and dilations must be positive".into());
        }
        let auto = n.string("auto_pad").unwrap_or_default();
        let (begin, end) = match auto.as_str() {
            "" | "NOTSET" => {
                let p = usizes(n, "pads", 2 * k, 0)?;
                (p[..k].to_vec(), p[k..].to_vec())
            }
            "VALID" => (vec![0; k], vec![0; k]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let (mut b, mut e) = (vec![0; k], vec![0; k]);
                for i in 0..k {
                    let out = sizes[i].div_ceil(strides[i]);
                    let span = (kernel[i] - 1) * dilations[i] + 1;
                    let total = ((out.max(1) - 1) * strides[i] + span).saturating_sub(sizes[i]);
                    let small = total / 2;
                    (b[i], e[i]) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                }
                (b, e)
            }
            other => return n.unsupported(format!("auto_pad {other}")),
        };
        Ok(Spatial {
            kernel,
            strides,
            dilations,
            begin,
            end,
        })
    }

    /// The 2-D window over dims `i` and `j` (`None`: a unit dim).
    pub(crate) fn window2d(&self, i: Option<usize>, j: Option<usize>, ceil: bool) -> Window2d {
        let get = |v: &Vec<usize>, d: Option<usize>, unit: usize| d.map_or(unit, |d| v[d]);
        Window2d {
            kernel: [get(&self.kernel, i, 1), get(&self.kernel, j, 1)],
            stride: [get(&self.strides, i, 1), get(&self.strides, j, 1)],
            padding: [
                get(&self.begin, i, 0),
                get(&self.begin, j, 0),
                get(&self.end, i, 0),
                get(&self.end, j, 0),
            ],
            dilation: [get(&self.dilations, i, 1), get(&self.dilations, j, 1)],
            ceil_mode: ceil,
        }
    }
}

// ---- convolution ----

/// `Conv`: `X [N, C, spatial...]`, `W [M, C/group, kernel...]`, optional
/// bias `B [M]`.
pub(crate) fn conv<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let y = conv_of(n, n.input(0)?, n.input(1)?)?;
    add_bias(y, n.opt(2)).map(one)
}

/// The convolution of `x` by `w` with `n`'s window attributes
/// (`kernel_shape`, `strides`, `dilations`, `pads` or `auto_pad`, `group`),
/// as `Conv` reads them; no bias. Float inputs (kiln's conv is float only).
pub(super) fn conv_of<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, w: Tensor<'g>) -> R<Tensor<'g>> {
    let sizes = fixed_from(x, 2)?;
    let wshape = fixed_shape(w)?;
    if wshape.len() != x.rank() || x.rank() < 3 {
        return Err(format!(
            "input {} and weight {} must be [N, C, spatial...] and [M, C/group, kernel...]",
            x.shape(),
            w.shape()
        )
        .into());
    }
    let kernel = wshape[2..].to_vec();
    if let Some(ks) = n.ints("kernel_shape") {
        if ks.iter().map(|&k| k as usize).ne(kernel.iter().copied()) {
            return Err(format!("kernel_shape {ks:?} differs from the weight's {kernel:?}").into());
        }
    }
    let s = Spatial::of(n, &sizes, kernel)?;
    let groups = usize::try_from(n.int("group", 1)).map_err(|_| "negative group")?;
    conv_nd(x, w, &s, groups)
}

/// `y + b` with `b [M]` along dim 1.
fn add_bias<'g>(y: Tensor<'g>, b: Option<Tensor<'g>>) -> R<Tensor<'g>> {
    let Some(b) = b else { return Ok(y) };
    let mut dims = vec![Dim::Fixed(1); y.rank() - 1];
    dims[0] = dim_product(&b.shape().0)?;
    Ok(y.add(reshape(b, dims)?)?)
}

/// A convolution of any supported spatial rank (non-negative pads).
fn conv_nd<'g>(x: Tensor<'g>, w: Tensor<'g>, s: &Spatial, groups: usize) -> R<Tensor<'g>> {
    let opts = |win: Window2d| Conv2dOptions {
        stride: win.stride,
        padding: win.padding,
        dilation: win.dilation,
        groups,
    };
    match x.rank() - 2 {
        1 => {
            // [N, C, L] as [N, C, 1, L].
            let win = s.window2d(None, Some(0), false);
            let y = x.unsqueeze(2)?.conv2d(w.unsqueeze(2)?, opts(win));
            Ok(y?.squeeze(2)?)
        }
        2 => Ok(x.conv2d(w, opts(s.window2d(Some(0), Some(1), false)))?),
        3 => conv3d(x, w, s, groups),
        k => Err(format!("unsupported: {k}-D convolution").into()),
    }
}

/// A 3-D conv as 2-D convs: each output depth's `KD` input slices stacked
/// into channels (group-major, as grouping needs) against the weights'
/// depth taps merged likewise. With a fixed batch the output depths fold
/// into the batch (one conv); with a symbolic one, one conv per depth.
fn conv3d<'g>(x: Tensor<'g>, w: Tensor<'g>, s: &Spatial, groups: usize) -> R<Tensor<'g>> {
    let nb = x.shape().0[0].clone();
    let [c, d, h, wd] = <[usize; 4]>::try_from(fixed_from(x, 1)?).map_err(|_| "rank")?;
    let ws = fixed_shape(w)?;
    let (m, cg, kd) = (ws[0], ws[1], ws[2]);
    if groups == 0 || c % groups != 0 || c / groups != cg {
        return Err(format!(
            "weight {} does not fit {c} input channels in {groups} groups",
            w.shape()
        )
        .into());
    }
    let xp = x.pad(&[0, 0, s.begin[0], 0, 0], &[0, 0, s.end[0], 0, 0], 0.0)?;
    let span = (kd - 1) * s.dilations[0] + 1;
    let padded = d + s.begin[0] + s.end[0];
    if padded < span {
        return Err(format!(
            "kernel depth {kd} (dilation {}) does not fit the padded depth {padded}",
            s.dilations[0]
        )
        .into());
    }
    let od = (padded - span) / s.strides[0] + 1;
    let mut taps = Vec::with_capacity(kd);
    for t in 0..kd {
        let start = (t * s.dilations[0]) as i64;
        let end = start + ((od - 1) * s.strides[0]) as i64 + 1;
        let sl = xp.slice_axis(2, start, end, s.strides[0] as i64)?;
        taps.push(sl.unsqueeze(1)?);
    }
    // [N, KD, C, OD, H, W], channels as [group, KD, C/group].
    let b = x.builder();
    let st = b.concat(&taps, 1)?;
    let mut dims = vec![nb.clone()];
    dims.extend(fixed(&[kd, groups, cg, od, h, wd]));
    let st = reshape(st, dims)?;
    // [M, C/group, KD, KH, KW] -> [M, KD * C/group, KH, KW].
    let w2 = w.permute(&[0, 2, 1, 3, 4])?;
    let w2 = reshape(w2, fixed(&[m, kd * cg, ws[3], ws[4]]))?;
    let win = s.window2d(Some(1), Some(2), false);
    let opts = Conv2dOptions {
        stride: win.stride,
        padding: win.padding,
        dilation: win.dilation,
        groups,
    };
    if let Some(batch) = nb.fixed() {
        let st = st.permute(&[0, 4, 2, 1, 3, 5, 6])?;
        let st = reshape(st, fixed(&[batch * od, groups * kd * cg, h, wd]))?;
        let y = st.conv2d(w2, opts)?;
        let ys = fixed_shape(y)?;
        let y = reshape(y, fixed(&[batch, od, m, ys[2], ys[3]]))?;
        return Ok(y.permute(&[0, 2, 1, 3, 4])?);
    }
    let mut outs = Vec::with_capacity(od);
    for o in 0..od {
        let sl = st.slice_axis(4, o as i64, o as i64 + 1, 1)?;
        let sl = sl.permute(&[0, 2, 1, 3, 4, 5, 6])?;
        let mut dims = vec![nb.clone()];
        dims.extend(fixed(&[groups * kd * cg, h, wd]));
        let y = reshape(sl, dims)?.conv2d(w2, opts)?;
        outs.push(y.unsqueeze(2)?);
    }
    Ok(b.concat(&outs, 2)?)
}

/// `ConvTranspose`: `X [N, C, in...]`, `W [C, M/group, kernel...]`. The
/// input gets `stride - 1` zeros between elements; a stride-1 conv with
/// the spatially flipped, group-transposed weights and padding
/// `dilation * (kernel - 1) - pad` (negative: cropped; the end also gets
/// `output_padding`) then gives the transposed convolution.
fn conv_transpose<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, w) = (n.input(0)?, n.input(1)?);
    let sizes = fixed_from(x, 2)?;
    let k = sizes.len();
    let ws = fixed_shape(w)?;
    if ws.len() != k + 2 || k == 0 {
        return Err(format!(
            "input {} and weight {} must be [N, C, spatial...] and [C, M/group, kernel...]",
            x.shape(),
            w.shape()
        )
        .into());
    }
    let kernel = ws[2..].to_vec();
    let groups = usize::try_from(n.int("group", 1)).map_err(|_| "negative group")?;
    let c = x.shape().0[1]
        .fixed()
        .ok_or("input channels must be fixed")?;
    if groups == 0 || c % groups != 0 || ws[0] != c {
        return Err(format!(
            "weight {} does not fit {c} input channels in {groups} groups",
            w.shape()
        )
        .into());
    }
    let strides = usizes(n, "strides", k, 1)?;
    let dil = usizes(n, "dilations", k, 1)?;
    let out_pad = usizes(n, "output_padding", k, 0)?;
    if strides.contains(&0) || dil.contains(&0) {
        return Err("strides and dilations must be positive".into());
    }
    let natural: Vec<i64> = (0..k)
        .map(|i| (strides[i] * (sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1) as i64)
        .collect();
    let auto = n.string("auto_pad").unwrap_or_default();
    let output_shape = n.ints("output_shape").filter(|v| !v.is_empty());
    let (begin, end): (Vec<i64>, Vec<i64>) =
        if output_shape.is_some() || auto == "SAME_UPPER" || auto == "SAME_LOWER" {
            let target: Vec<i64> = match output_shape {
                Some(o) if o.len() >= k => o[o.len() - k..].to_vec(),
                Some(o) => return Err(format!("output_shape {o:?} has fewer than {k} dims").into()),
                None => (0..k).map(|i| (sizes[i] * strides[i]) as i64).collect(),
            };
            (0..k)
                .map(|i| {
                    let total = natural[i] - target[i];
                    // The spec's `total / 2`, as ONNX's reference evaluator
                    // reads it (floor): for a negative total (a stride
                    // larger than the dilated kernel, or an output_shape
                    // larger than the natural size) both ends extend, also
                    // without auto_pad (the spec's "Else" split; onnxruntime
                    // extends one end, and ONNX's reference refuses).
                    let half = total.div_euclid(2);
                    if auto == "SAME_UPPER" {
                        (half, total - half)
                    } else {
                        (total - half, half)
                    }
                })
                .unzip()
        } else if auto.is_empty() || auto == "NOTSET" || auto == "VALID" {
            let p = if auto == "VALID" {
                vec![0; 2 * k]
            } else {
                usizes(n, "pads", 2 * k, 0)?
            };
            (
                p[..k].iter().map(|&v| v as i64).collect(),
                p[k..].iter().map(|&v| v as i64).collect(),
            )
        } else {
            return n.unsupported(format!("auto_pad {auto}"));
        };
    let out: Vec<i64> = (0..k).map(|i| natural[i] - begin[i] - end[i]).collect();
    if let Some(i) = out.iter().position(|&o| o < 0) {
        return Err(format!(
            "pads {begin:?} and {end:?} crop spatial dim {i} ({} long) below zero",
            natural[i]
        )
        .into());
    }
    // A constant weight without NaN or infinities: the zero-inserted
    // input's conv (its inserted and padded zeros times finite weights are
    // zeros). Otherwise a zero times a NaN or infinite weight would be NaN
    // where no input reaches: the scatter form multiplies real pairs only.
    let finite_w = n.inputs[1]
        .as_ref()
        .and_then(|v| v.value.as_ref())
        .is_some_and(|a| a.to_f64_vec().iter().all(|v| v.is_finite()));
    let t = Transposed {
        groups,
        c,
        mg: ws[1],
        kernel: &kernel,
        sizes: &sizes,
        strides: &strides,
        dil: &dil,
        begin: &begin,
        out: &out,
    };
    let y = if finite_w {
        t.as_conv(x, w, &end, &out_pad)?
    } else {
        t.scatter(n, x, w)?
    };
    add_bias(y, n.opt(2)).map(one)
}

/// A `ConvTranspose`'s sizes: `groups`, input channels `c`, output channels
/// per group `mg`, and per spatial dim the kernel, input size, stride,
/// dilation, leading pad (negative: extension) and output size.
struct Transposed<'a> {
    groups: usize,
    c: usize,
    mg: usize,
    kernel: &'a [usize],
    sizes: &'a [usize],
    strides: &'a [usize],
    dil: &'a [usize],
    begin: &'a [i64],
    out: &'a [i64],
}

impl Transposed<'_> {
    /// The transposed conv as a conv: the input gets `stride - 1` zeros
    /// between elements; a stride-1 conv with the spatially flipped,
    /// group-transposed weights and padding `dilation * (kernel - 1) - pad`
    /// (negative: cropped; the end also gets `output_padding`).
    fn as_conv<'g>(
        &self,
        x: Tensor<'g>,
        w: Tensor<'g>,
        end: &[i64],
        out_pad: &[usize],
    ) -> R<Tensor<'g>> {
        let (k, sizes, strides, kernel) = (self.sizes.len(), self.sizes, self.strides, self.kernel);
        let (dil, begin, groups) = (self.dil, self.begin, self.groups);
        // Zero insertion: [N, C, d0, 1, d1, 1, ...] padded to [.., d, s, ..],
        // merged to d * s (the trailing s - 1 zeros count as end padding).
        let xs = x.shape().0;
        let mut up = x;
        if strides.iter().any(|&s| s > 1) {
            let mut dims = vec![xs[0].clone(), xs[1].clone()];
            let (mut after, mut merged) = (vec![0, 0], vec![xs[0].clone(), xs[1].clone()]);
            for i in 0..k {
                dims.extend([Dim::Fixed(sizes[i]), Dim::Fixed(1)]);
                after.extend([0, strides[i] - 1]);
                merged.push(Dim::Fixed(sizes[i] * strides[i]));
            }
            up = reshape(x, dims)?;
            up = up.pad(&vec![0; 2 + 2 * k], &after, 0.0)?;
            up = reshape(up, merged)?;
        }
        // Conv padding per side; negative: crop the (upsampled) input.
        let mut s = Spatial {
            kernel: kernel.to_vec(),
            strides: vec![1; k],
            dilations: dil.to_vec(),
            begin: vec![0; k],
            end: vec![0; k],
        };
        let mut crop = vec![SliceAxis::FULL; k + 2];
        for i in 0..k {
            let reach = ((kernel[i] - 1) * dil[i]) as i64;
            let b = reach - begin[i];
            let e = reach - end[i] + out_pad[i] as i64 - (strides[i] - 1) as i64;
            if b < 0 || e < 0 {
                let len = (sizes[i] * strides[i]) as i64;
                crop[i + 2] = SliceAxis {
                    start: (-b).max(0),
                    end: len - (-e).max(0),
                    step: 1,
                };
            }
            s.begin[i] = b.max(0) as usize;
            s.end[i] = e.max(0) as usize;
        }
        if crop.iter().any(|a| *a != SliceAxis::FULL) {
            up = up.slice(&crop)?;
        }
        // W [C, M/g, k...] -> [g, C/g, M/g, k...] -> [g, M/g, C/g, k...] -> [M, C/g, k...], flipped.
        let (cg, mg) = (self.c / groups, self.mg);
        let mut wd = fixed(&[groups, cg, mg]);
        wd.extend(fixed(kernel));
        let mut perm = vec![0, 2, 1];
        perm.extend(3..3 + k);
        let wt = reshape(w, wd)?.permute(&perm)?;
        let mut wd = fixed(&[groups * mg, cg]);
        wd.extend(fixed(kernel));
        let wt = reshape(wt, wd)?;
        let mut flip = vec![SliceAxis::FULL; k + 2];
        for f in &mut flip[2..] {
            *f = SliceAxis {
                start: -1,
                end: i64::MIN,
                step: -1,
            };
        }
        let wt = wt.slice(&flip)?;
        conv_nd(up, wt, &s, groups)
    }

    /// The transposed conv by its definition: every input element's
    /// products with the weights (a matmul per group: `[M/g * K, C/g]` by
    /// `[C/g, in]`), then added into the output by one scatter-add (col2im:
    /// tap `j` of input position `p` lands at `p * stride + j * dilation -
    /// begin` per dim; what lands outside the output goes to a spare slot
    /// that is cut off). Only real input-weight pairs multiply.
    fn scatter<'g>(&self, n: &Node<'_, 'g>, x: Tensor<'g>, w: Tensor<'g>) -> R<Tensor<'g>> {
        let k = self.sizes.len();
        let (g, cg, mg) = (self.groups, self.c / self.groups, self.mg);
        let taps: usize = self.kernel.iter().product();
        let inner: usize = self.sizes.iter().product();
        let nb = x.shape().0[0].clone();
        let dtype = x.dtype();
        // kiln's scatter-add is f32/f64: half floats accumulate in f32.
        let acc = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        // W [C, M/g, K] as [g, M/g * K, C/g]; X as [N, g, C/g, in].
        let wt = reshape(w.cast(acc)?, fixed(&[g, cg, mg * taps]))?.permute(&[0, 2, 1])?;
        let mut dims = vec![nb.clone()];
        dims.extend(fixed(&[g, cg, inner]));
        let cols = wt.matmul(reshape(x.cast(acc)?, dims)?)?;
        // Where tap `kk` of input position `pp` lands: the output's flat
        // index, or the spare slot `total` past the output.
        let total = self.out.iter().product::<i64>();
        super::table_len("the ConvTranspose scatter indices", &[taps, inner])?;
        let mut idx = Vec::with_capacity(taps * inner);
        for kk in 0..taps {
            for pp in 0..inner {
                let (mut kr, mut pr, mut flat, mut inside) = (kk, pp, 0i64, true);
                let mut scale = 1i64;
                for i in (0..k).rev() {
                    let (j, p) = ((kr % self.kernel[i]) as i64, (pr % self.sizes[i]) as i64);
                    kr /= self.kernel[i];
                    pr /= self.sizes[i];
                    let o = p * self.strides[i] as i64 + j * self.dil[i] as i64 - self.begin[i];
                    inside &= (0..self.out[i]).contains(&o);
                    flat += o * scale;
                    scale *= self.out[i];
                }
                idx.push(if inside { flat } else { total });
            }
        }
        // cols [N, g, M/g * K, in] as [N, M, K * in], added into [N, M, total + 1].
        let mut dims = vec![nb.clone(), Dim::Fixed(g * mg), Dim::Fixed(taps * inner)];
        let updates = reshape(cols, dims.clone())?;
        dims[2] = Dim::Fixed(total as usize + 1);
        let data = n.scalar(0.0, acc)?.broadcast_to(Shape(dims))?;
        let idx = n.constant(Array::from_vec(vec![idx.len()], idx).expect("1-D"))?;
        let y = data
            .scatter_add(idx, updates, 2)?
            .slice_axis(2, 0, total, 1)?;
        let mut dims = vec![nb, Dim::Fixed(g * mg)];
        dims.extend(self.out.iter().map(|&o| Dim::Fixed(o as usize)));
        Ok(reshape(y, dims)?.cast(dtype)?)
    }
}

/// `CausalConvWithState`: `padded = concat(past_state or zeros, input)`
/// along time; output = depthwise valid conv of `padded` (plus bias,
/// optionally SiLU), computed in float32 as a sum over the kernel taps;
/// `present_state` = the last `k - 1` steps of `padded`.
fn causal_conv_with_state<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let act = n.string("activation").unwrap_or_else(|| "none".into());
    let silu = match act.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        a => return n.unsupported(format!("activation {a}")),
    };
    let x = n.input(0)?;
    let w = n.input(1)?;
    let dtype = x.dtype();
    let xs = fixed_shape(x)?;
    let ws = fixed_shape(w)?;
    if xs.len() != 3 || ws.len() != 3 {
        return Err("input and weight must have rank 3".into());
    }
    let (c, l, kk) = (xs[1], xs[2], ws[2]);
    if ws[0] != c || ws[1] != 1 || kk == 0 {
        return Err(format!("weight shape {ws:?} is not ({c}, 1, k)").into());
    }
    let padded = match n.opt(3) {
        Some(p) => n.g.concat(&[p, x], 2)?,
        None if kk > 1 => x.pad(&[0, 0, kk - 1], &[0, 0, 0], 0.0)?,
        None => x,
    };
    let pf = padded.cast(DType::F32)?;
    let wf = w.cast(DType::F32)?;
    let mut acc: Option<Tensor<'g>> = None;
    for j in 0..kk {
        let tap = pf.slice_axis(2, j as i64, (j + l) as i64, 1)?;
        let wj = wf
            .slice_axis(2, j as i64, j as i64 + 1, 1)?
            .reshape_to(&[c as i64, 1])?;
        let term = tap.mul(wj)?;
        acc = Some(match acc {
            None => term,
            Some(a) => a.add(term)?,
        });
    }
    let mut y = acc.ok_or("empty kernel")?;
    if let Some(bias) = n.opt(2) {
        let bias = bias.cast(DType::F32)?.reshape_to(&[c as i64, 1])?;
        y = y.add(bias)?;
    }
    if silu {
        // The reference rounds the convolution to the input dtype first.
        y = y.cast(dtype)?.cast(DType::F32)?;
        y = y.mul(y.sigmoid()?)?;
    }
    let total = (l + kk - 1) as i64;
    let state = padded.slice_axis(2, total - (kk as i64 - 1), total, 1)?;
    Ok(vec![y.cast(dtype)?, state])
}

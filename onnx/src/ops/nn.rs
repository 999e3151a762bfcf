//! ONNX ops of the nn family, as compositions of kiln's primitives:
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
//! - `MaxPool` (with `Indices` in any spatial rank), `AveragePool`,
//!   `LpPool`: 2-D directly; 1-D as 2-D over a unit width; 3-D and up as a
//!   2-D pool over the last two dims, then a pool along each other dim
//!   (windows are boxes and the padding counts are products, so max,
//!   average and sum separate); `MaxPool` of integers (i8, u8) as the f64
//!   pool cast back. The output size is ONNX's: with `ceil_mode` the last
//!   window may run past the padded input (it must start inside the input
//!   or the leading padding), even a window larger than the padded input;
//!   taps past the padding are ignored, and `count_include_pad` counts the
//!   taps inside the padded input only (as ONNX's reference and PyTorch
//!   do). A count of 0 windows is an empty output.
//!   `GlobalAveragePool`, `GlobalMaxPool`, `GlobalLpPool` as reductions.
//! - `Gemm`, `MatMul` (numpy semantics), `Einsum` (diagonals, sums, then
//!   pairwise contractions as batched matmuls).
//! - `BatchNormalization` (inference, and training mode's batch statistics
//!   and running averages), `InstanceNormalization`, `LayerNormalization`
//!   (with `Mean` and `InvStdDev`, in `stash_type`), `GroupNormalization`
//!   (scale and bias per group, opset 18, or per channel, opset 21: told
//!   apart by length), `MeanVarianceNormalization`, `LRN`.
//! - `Softmax`, `LogSoftmax`, `Hardmax` (before opset 13 over every dim
//!   from `axis` on, which is ONNX's coercion to 2-D), `Shrink`.
//!
//! Deliberate limits: spatial dims must be fixed (as kiln's conv and
//! pooling need), and so must channels where dims are merged (1-D
//! transposed convs, 3-D and up); convolutions of 4 and more spatial dims
//! are refused; `auto_pad` SAME with `ceil_mode` pads as without it;
//! `LpPool` sums the taps inside the input (padding adds zeros), also in
//! ceil mode. `Hardmax` of an input with an empty dim is empty.

use kiln_graph::ops::pool::pool_out;
use kiln_graph::{Array, Conv2dOptions, DType, Dim, Shape, SliceAxis, Tensor, Window2d};

use super::{axis, fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("MaxPool", |n| pool(n, Pool::Max)),
    ("AveragePool", |n| {
        let include = n.int("count_include_pad", 0) != 0;
        pool(n, Pool::Avg(include))
    }),
    ("LpPool", |n| pool(n, Pool::Lp(n.int("p", 2)))),
    ("GlobalAveragePool", |n| {
        let x = n.input(0)?;
        Ok(one(x.mean(&spatial_axes(x)?, true)?))
    }),
    ("GlobalMaxPool", |n| {
        let x = n.input(0)?;
        Ok(one(x.max(&spatial_axes(x)?, true)?))
    }),
    ("GlobalLpPool", |n| {
        let x = n.input(0)?;
        lp_sum(x, n.int("p", 2), &spatial_axes(x)?).map(one)
    }),
    ("Gemm", gemm),
    ("MatMul", |n| Ok(one(n.input(0)?.matmul(n.input(1)?)?))),
    ("Einsum", einsum),
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("LayerNormalization", layer_norm),
    ("GroupNormalization", group_norm),
    ("MeanVarianceNormalization", mvn),
    ("LRN", lrn),
    ("Softmax", |n| softmax(n, Soft::Softmax)),
    ("LogSoftmax", |n| softmax(n, Soft::Log)),
    ("Hardmax", |n| softmax(n, Soft::Hard)),
    ("Shrink", shrink),
];

fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// The spatial axes `2..rank` of an `[N, C, ...]` tensor.
fn spatial_axes(x: Tensor<'_>) -> R<Vec<i64>> {
    if x.rank() < 3 {
        return Err(format!("needs an [N, C, spatial...] input, got {}", x.shape()).into());
    }
    Ok((2..x.rank() as i64).collect())
}

/// The fixed sizes of dims `from..` of `x`.
fn fixed_from(x: Tensor<'_>, from: usize) -> R<Vec<usize>> {
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
fn dim_product(dims: &[Dim]) -> R<Dim> {
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

fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// `x` reshaped to `dims`.
fn reshape<'g>(x: Tensor<'g>, dims: Vec<Dim>) -> R<Tensor<'g>> {
    Ok(x.reshape(Shape(dims))?)
}

/// A non-negative integer attribute list, or `default` where absent.
fn usizes(n: &Node<'_, '_>, name: &str, len: usize, default: usize) -> R<Vec<usize>> {
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
struct Spatial {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    begin: Vec<usize>,
    end: Vec<usize>,
}

impl Spatial {
    /// The window of `n` over spatial `sizes` with `kernel`: `strides`,
    /// `dilations`, and `pads` or `auto_pad`.
    fn of(n: &Node<'_, '_>, sizes: &[usize], kernel: Vec<usize>) -> R<Spatial> {
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
    fn window2d(&self, i: Option<usize>, j: Option<usize>, ceil: bool) -> Window2d {
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
fn conv<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
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

// ---- pooling ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pool {
    Max,
    /// Average; whether padding counts in the divisor.
    Avg(bool),
    /// `(sum |x|^p)^(1/p)`.
    Lp(i64),
}

/// `MaxPool`, `AveragePool`, `LpPool`: `kernel_shape`, `strides`,
/// `dilations`, `pads` or `auto_pad`, `ceil_mode`.
fn pool<'g>(n: &Node<'_, 'g>, kind: Pool) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if matches!(kind, Pool::Max) && x.dtype().is_int() {
        // kiln pools floats: an integer max pool (ONNX's are i8 and u8) is
        // the f64 pool, exact for integers of up to 32 bits, cast back.
        if matches!(x.dtype(), DType::I64 | DType::U64) {
            return n.unsupported(format!("MaxPool of {} (not exact in f64)", x.dtype()));
        }
        let mut outs = pool_float(n, x.cast(DType::F64)?, kind)?;
        outs[0] = outs[0].cast(x.dtype())?;
        return Ok(outs);
    }
    pool_float(n, x, kind)
}

/// [`pool`] of a float input.
fn pool_float<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, kind: Pool) -> R<Vec<Tensor<'g>>> {
    let sizes = fixed_from(x, 2)?;
    if sizes.is_empty() {
        return Err(format!("needs an [N, C, spatial...] input, got {}", x.shape()).into());
    }
    let kernel = usizes(n, "kernel_shape", sizes.len(), 0)?;
    let mut s = Spatial::of(n, &sizes, kernel)?;
    let ceil = n.int("ceil_mode", 0) != 0;
    let y = match kind {
        Pool::Max if n.wants_output(1) => {
            let order = n.int("storage_order", 0) != 0;
            return max_pool_indices(x, &s, ceil, order);
        }
        Pool::Max | Pool::Avg(_) => pool_nd(x, &s, ceil, kind)?,
        Pool::Lp(p) => {
            // A sum: the average counting padding, times the window size. In
            // ceil mode, pad the end so every window lies in the padding (the
            // taps past it hold zeros, as the ones past the input do).
            if ceil {
                let mut outs = Vec::with_capacity(sizes.len());
                for (i, &size) in sizes.iter().enumerate() {
                    let span = (s.kernel[i] - 1) * s.dilations[i] + 1;
                    let padded = size + s.begin[i] + s.end[i];
                    let out = pool_out(
                        size,
                        s.begin[i],
                        s.end[i],
                        s.kernel[i],
                        s.strides[i],
                        s.dilations[i],
                        true,
                    )
                    .ok_or_else(|| {
                        format!(
                            "the window {:?} (strides {:?}, dilations {:?}) does not fit the padded input",
                            s.kernel, s.strides, s.dilations
                        )
                    })?;
                    if out > 0 {
                        s.end[i] += ((out - 1) * s.strides[i] + span).saturating_sub(padded);
                    }
                    outs.push(Dim::Fixed(out));
                }
                if outs.contains(&Dim::Fixed(0)) {
                    // No window along some dim: an empty output.
                    let xs = x.shape().0;
                    let mut dims = vec![xs[0].clone(), xs[1].clone()];
                    dims.extend(outs);
                    let zero = n.scalar(0.0, x.dtype())?;
                    return Ok(vec![zero.broadcast_to(Shape(dims))?]);
                }
            }
            let xp = pow_abs(x, p)?;
            let size: usize = s.kernel.iter().product();
            let sum = pool_nd(xp, &s, false, Pool::Avg(true))?.mul(size as f64)?;
            root(sum, p)?
        }
    };
    Ok(vec![y])
}

/// `MaxPool` with its `Indices` output, any spatial rank: each window's
/// first maximum (in window order) as a flat index into the input over
/// `N * C * spatial...`, the spatial part row-major or, with
/// `storage_order`, column-major (the first spatial dim fastest). The
/// taps are walked last to first, each overwriting the index where its
/// value equals the max (or, for a NaN max, is NaN: kiln's max propagates
/// NaN, and its index is the first NaN's). Taps in the padding or past it
/// are masked out, so they are never chosen, even for a max of -inf.
fn max_pool_indices<'g>(
    x: Tensor<'g>,
    s: &Spatial,
    ceil: bool,
    column_major: bool,
) -> R<Vec<Tensor<'g>>> {
    let y = pool_nd(x, s, ceil, Pool::Max)?;
    let sizes = fixed_from(x, 2)?;
    let outs = fixed_from(y, 2)?;
    let k = sizes.len();
    if outs.contains(&0) {
        // No window: an empty index tensor.
        let zero = x.builder().scalar(0.0, DType::I64)?;
        return Ok(vec![y, zero.broadcast_to(y.shape())?]);
    }
    // Pad so every window's taps exist (ceil mode may reach past the padding).
    let mut before = vec![0, 0];
    let mut after = vec![0, 0];
    for i in 0..k {
        let need = (outs[i] - 1) * s.strides[i] + (s.kernel[i] - 1) * s.dilations[i] + 1;
        let padded = sizes[i] + s.begin[i] + s.end[i];
        before.push(s.begin[i]);
        after.push(s.end[i] + need.saturating_sub(padded));
    }
    let xp = x.pad(&before, &after, 0.0)?;
    let y_nan = y.ne(y)?;
    // Each spatial dim's weight in the flat index.
    let weight: Vec<i64> = (0..k)
        .map(|i| {
            let others = if column_major { 0..i } else { i + 1..k };
            others.map(|m| sizes[m] as i64).product()
        })
        .collect();
    let b = x.builder();
    let mut idx = b.scalar(0.0, DType::I64)?;
    let taps: usize = s.kernel.iter().product();
    let count: usize = outs.iter().product();
    for t in (0..taps).rev() {
        // Tap `t` as a multi-index into the kernel (row-major).
        let mut tap = vec![0; k];
        let mut rest = t;
        for i in (0..k).rev() {
            tap[i] = rest % s.kernel[i];
            rest /= s.kernel[i];
        }
        let mut ranges = vec![SliceAxis::FULL; 2];
        for i in 0..k {
            let start = tap[i] * s.dilations[i];
            ranges.push(SliceAxis {
                start: start as i64,
                end: (start + (outs[i] - 1) * s.strides[i] + 1) as i64,
                step: s.strides[i] as i64,
            });
        }
        let under = xp.slice(&ranges)?;
        // The flat input position of this tap in every window, and whether
        // it lies inside the input.
        let mut pos = vec![0i64; count];
        let mut inside = vec![true; count];
        for o in 0..count {
            let mut rest = o;
            for i in (0..k).rev() {
                let oi = rest % outs[i];
                rest /= outs[i];
                let at = (oi * s.strides[i] + tap[i] * s.dilations[i]) as i64 - s.begin[i] as i64;
                inside[o] &= at >= 0 && at < sizes[i] as i64;
                pos[o] += at * weight[i];
            }
        }
        if !inside.contains(&true) {
            continue;
        }
        let nan_hit = under.ne(under)?.and(y_nan)?;
        let mut hit = under.eq(y)?.or(nan_hit)?;
        if inside.contains(&false) {
            let mask = Array::from_vec(outs.clone(), inside).ok_or("mask shape")?;
            hit = hit.and(b.constant(mask)?)?;
        }
        let pos = Array::from_vec(outs.clone(), pos).ok_or("index shape")?;
        idx = b.select(hit, b.constant(pos)?, idx)?;
    }
    // Plus each plane's offset, (n * C + c) * prod(spatial).
    let xs = x.shape().0;
    let mut plane_dims = vec![xs[0].clone(), xs[1].clone()];
    plane_dims.extend(std::iter::repeat_n(Dim::Fixed(1), k));
    let plane_shape = Shape(plane_dims);
    let c = xs[1].fixed().ok_or("channels must be fixed")? as f64;
    let plane = b
        .iota(DType::I64, plane_shape.clone(), 0)?
        .mul(c)?
        .add(b.iota(DType::I64, plane_shape, 1)?)?
        .mul(sizes.iter().product::<usize>() as f64)?;
    Ok(vec![y, idx.add(plane)?])
}

/// `|x|^p`.
fn pow_abs<'g>(x: Tensor<'g>, p: i64) -> R<Tensor<'g>> {
    match p {
        1 => Ok(x.abs()?),
        2 => Ok(x.mul(x)?),
        p => Ok(x.abs()?.pow(p as f64)?),
    }
}

/// `s^(1/p)`.
fn root<'g>(s: Tensor<'g>, p: i64) -> R<Tensor<'g>> {
    match p {
        1 => Ok(s),
        2 => Ok(s.sqrt()?),
        p => Ok(s.pow(1.0 / p as f64)?),
    }
}

/// `(sum |x|^p)^(1/p)` over `axes`, keeping them.
fn lp_sum<'g>(x: Tensor<'g>, p: i64, axes: &[i64]) -> R<Tensor<'g>> {
    root(pow_abs(x, p)?.sum(axes, true)?, p)
}

/// Max or average pooling of any spatial rank.
fn pool_nd<'g>(x: Tensor<'g>, s: &Spatial, ceil: bool, kind: Pool) -> R<Tensor<'g>> {
    let p2 = |t: Tensor<'g>, w: Window2d| -> R<Tensor<'g>> {
        match kind {
            Pool::Max => Ok(t.max_pool2d(w)?),
            Pool::Avg(include) => Ok(t.avg_pool2d(w, include)?),
            Pool::Lp(_) => Err("an Lp pool is an average pool of powers".into()),
        }
    };
    let k = x.rank() - 2;
    match k {
        1 => {
            // [N, C, L] as [N, C, L, 1].
            let y = p2(x.unsqueeze(3)?, s.window2d(Some(0), None, ceil))?;
            Ok(y.squeeze(3)?)
        }
        2 => p2(x, s.window2d(Some(0), Some(1), ceil)),
        _ => {
            // The last two dims, then each other spatial dim in turn.
            let xs = x.shape().0;
            let n = xs[0].clone();
            let sizes = fixed_from(x, 1)?;
            let (c, sp) = (sizes[0], &sizes[1..]);
            let lead = k - 2;
            let planes: usize = c * sp[..lead].iter().product::<usize>();
            let t = reshape(
                x,
                vec![
                    n.clone(),
                    Dim::Fixed(planes),
                    Dim::Fixed(sp[lead]),
                    Dim::Fixed(sp[lead + 1]),
                ],
            )?;
            let t = p2(t, s.window2d(Some(lead), Some(lead + 1), ceil))?;
            let ts = fixed_from(t, 2)?;
            let mut cur: Vec<usize> = sp[..lead].to_vec();
            cur.push(ts[0] * ts[1]);
            let mut t = t;
            for i in 0..lead {
                let pre = c * cur[..i].iter().product::<usize>();
                let post: usize = cur[i + 1..].iter().product();
                t = reshape(
                    t,
                    vec![
                        n.clone(),
                        Dim::Fixed(pre),
                        Dim::Fixed(cur[i]),
                        Dim::Fixed(post),
                    ],
                )?;
                t = p2(t, s.window2d(Some(i), None, ceil))?;
                cur[i] = fixed_from(t, 2)?[0];
            }
            let mut out = vec![n, Dim::Fixed(c)];
            out.extend(fixed(&cur[..lead]));
            out.extend(fixed(&ts));
            reshape(t, out)
        }
    }
}

// ---- contractions ----

/// `Gemm`: `alpha * A' B' + beta * C`, `A'`/`B'` transposed per `transA`/`transB`.
fn gemm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (mut a, mut b) = (n.input(0)?, n.input(1)?);
    if n.int("transA", 0) != 0 {
        a = a.transpose()?;
    }
    if n.int("transB", 0) != 0 {
        b = b.transpose()?;
    }
    let (alpha, beta) = (n.float("alpha", 1.0) as f64, n.float("beta", 1.0) as f64);
    let mut y = a.matmul(b)?;
    if alpha != 1.0 {
        y = y.mul(alpha)?;
    }
    if let Some(c) = n.opt(2) {
        if beta != 0.0 {
            let c = if beta != 1.0 { c.mul(beta)? } else { c };
            y = y.add(c)?;
        }
    }
    Ok(vec![y])
}

/// An operand of an einsum: a tensor and one label per dim.
struct Term<'g> {
    t: Tensor<'g>,
    labels: Vec<char>,
}

/// The labels of one einsum term of an operand of `rank` (`None`: the
/// output); `...` becomes the trailing broadcast labels of `ell` that the
/// rank leaves room for (all of them in the output).
fn parse_term(term: &str, ell: &[char], rank: Option<usize>) -> R<Vec<char>> {
    let letters = term.replace("...", "");
    if letters.chars().any(|c| !c.is_ascii_alphabetic()) {
        return Err(format!("unsupported: einsum term '{term}'").into());
    }
    let letters: Vec<char> = letters.chars().collect();
    let Some(pos) = term.find("...") else {
        if rank.is_some_and(|r| r != letters.len()) {
            return Err(format!("einsum term '{term}' does not match rank {rank:?}").into());
        }
        return Ok(letters);
    };
    let e = match rank {
        Some(r) => r
            .checked_sub(letters.len())
            .ok_or_else(|| format!("einsum term '{term}' has more labels than rank {r}"))?,
        None => ell.len(),
    };
    let before = term[..pos].chars().count();
    let mut v = letters[..before].to_vec();
    v.extend(&ell[ell.len() - e..]);
    v.extend(&letters[before..]);
    Ok(v)
}

/// `Einsum` (explicit or implicit output, `...` broadcasting): each
/// operand's repeated labels become diagonals and labels no one else needs
/// are summed; operands are then contracted left to right, each pair as one
/// batched matmul (shared labels still needed are batch dims, the others
/// contracted); the result is permuted to the output.
fn einsum<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let eq: String = n
        .string("equation")
        .ok_or("needs an equation")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let inputs = n.all_inputs();
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != inputs.len() {
        return Err(format!(
            "equation '{eq}' has {} operands, the node {}",
            terms.len(),
            inputs.len()
        )
        .into());
    }
    // Broadcast (ellipsis) labels: private-use characters.
    let mut e = 0;
    for (term, t) in terms.iter().zip(&inputs) {
        if term.contains("...") {
            let letters = term.replace("...", "").chars().count();
            e = e.max(t.rank().saturating_sub(letters));
        }
    }
    let ell: Vec<char> = (0..e as u32)
        .map(|i| char::from_u32(0xE000 + i).expect("private use"))
        .collect();
    let mut ops = Vec::with_capacity(inputs.len());
    for (term, &t) in terms.iter().zip(&inputs) {
        let labels = parse_term(term, &ell, Some(t.rank()))?;
        ops.push(Term { t, labels });
    }
    let out: Vec<char> = match rhs {
        Some(r) => parse_term(r, &ell, None)?,
        None => {
            let mut counts = std::collections::BTreeMap::new();
            for o in &ops {
                for &l in &o.labels {
                    *counts.entry(l).or_insert(0) += 1;
                }
            }
            let mut v = ell.clone();
            v.extend(
                counts
                    .iter()
                    .filter(|&(l, &c)| c == 1 && l.is_ascii_alphabetic())
                    .map(|(&l, _)| l),
            );
            v
        }
    };
    for &l in &out {
        if !ops.iter().any(|o| o.labels.contains(&l)) {
            return Err(format!("output label '{l}' is in no operand of '{eq}'").into());
        }
    }
    // Diagonals, then sums of labels only this operand has.
    for i in 0..ops.len() {
        diagonals(&mut ops[i])?;
        let others: Vec<char> = ops
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .flat_map(|(_, o)| o.labels.iter().copied())
            .chain(out.iter().copied())
            .collect();
        sum_out(&mut ops[i], |l| others.contains(&l))?;
    }
    let mut rest = ops.into_iter();
    let mut acc = rest.next().ok_or("einsum needs an operand")?;
    let rest: Vec<Term<'g>> = rest.collect();
    for (i, b) in rest.iter().enumerate() {
        let keep: Vec<char> = rest[i + 1..]
            .iter()
            .flat_map(|o| o.labels.iter().copied())
            .chain(out.iter().copied())
            .collect();
        acc = contract(acc, b, &keep)?;
    }
    sum_out(&mut acc, |l| out.contains(&l))?;
    let perm: Vec<usize> = out
        .iter()
        .map(|l| acc.labels.iter().position(|x| x == l).expect("kept"))
        .collect();
    let y = if perm.iter().enumerate().all(|(i, &p)| i == p) {
        acc.t
    } else {
        acc.t.permute(&perm)?
    };
    Ok(vec![y])
}

/// Replaces each repeated label of `o` by the diagonal over its dims.
fn diagonals(o: &mut Term<'_>) -> R<()> {
    while let Some((i, j)) = (0..o.labels.len()).find_map(|i| {
        (i + 1..o.labels.len())
            .find(|&j| o.labels[j] == o.labels[i])
            .map(|j| (i, j))
    }) {
        let shape = o.t.shape().0;
        let size = shape[i]
            .fixed()
            .filter(|&s| shape[j].fixed() == Some(s))
            .ok_or_else(|| format!("diagonal over dims {} and {} of {}", i, j, o.t.shape()))?;
        let mut perm: Vec<usize> = (0..o.labels.len()).filter(|&d| d != i && d != j).collect();
        let mut dims: Vec<Dim> = perm.iter().map(|&d| shape[d].clone()).collect();
        let mut labels: Vec<char> = perm.iter().map(|&d| o.labels[d]).collect();
        labels.push(o.labels[i]);
        perm.extend([i, j]);
        dims.push(Dim::Fixed(size * size));
        let t = reshape(o.t.permute(&perm)?, dims)?;
        o.t = t.slice_axis(-1, 0, i64::MAX, size as i64 + 1)?;
        o.labels = labels;
    }
    Ok(())
}

/// Sums the dims of `o` whose label `keep` rejects.
fn sum_out(o: &mut Term<'_>, keep: impl Fn(char) -> bool) -> R<()> {
    let axes: Vec<i64> = (0..o.labels.len())
        .filter(|&d| !keep(o.labels[d]))
        .map(|d| d as i64)
        .collect();
    if !axes.is_empty() {
        o.t = o.t.sum(&axes, false)?;
        o.labels.retain(|&l| keep(l));
    }
    Ok(())
}

/// The dims of `labels` in `o`.
fn label_dims(o: &Term<'_>, labels: &[char]) -> Vec<Dim> {
    let shape = o.t.shape().0;
    labels
        .iter()
        .map(|l| shape[o.labels.iter().position(|x| x == l).expect("own label")].clone())
        .collect()
}

/// A group of labels split into leading ones kept as dims of their own and
/// a tail merged into one matrix dim: the whole group where its sizes
/// merge (all fixed, or one), else only its last label.
fn split_group(o: &Term<'_>, mut group: Vec<char>) -> (Vec<char>, Vec<char>) {
    if dim_product(&label_dims(o, &group)).is_ok() {
        return (Vec::new(), group);
    }
    let last = group.pop().expect("a group of several labels");
    (group, vec![last])
}

/// `a` and `b` contracted over their shared labels not in `keep`, as one
/// batched matmul `[batch, a lead, 1.., a rows, shared] x [batch, 1..,
/// b lead, shared, b cols]`: rows and columns merge each side's own labels
/// where sizes allow, the rest broadcast as batch dims.
fn contract<'g>(mut a: Term<'g>, b: &Term<'g>, keep: &[char]) -> R<Term<'g>> {
    sum_out(&mut a, |l| b.labels.contains(&l) || keep.contains(&l))?;
    let mut b = Term {
        t: b.t,
        labels: b.labels.clone(),
    };
    sum_out(&mut b, |l| a.labels.contains(&l) || keep.contains(&l))?;
    let (al, bl) = (a.labels.clone(), b.labels.clone());
    let batch: Vec<char> = al
        .iter()
        .copied()
        .filter(|l| bl.contains(l) && keep.contains(l))
        .collect();
    let shared: Vec<char> = al
        .iter()
        .copied()
        .filter(|l| bl.contains(l) && !keep.contains(l))
        .collect();
    let (a_lead, a_rows) =
        split_group(&a, al.iter().copied().filter(|l| !bl.contains(l)).collect());
    let (b_lead, b_cols) =
        split_group(&b, bl.iter().copied().filter(|l| !al.contains(l)).collect());
    let ones = |k: usize| vec![Dim::Fixed(1); k];
    let arrange = |o: &Term<'g>, order: [&[char]; 4], dims: Vec<Dim>| -> R<Tensor<'g>> {
        let perm: Vec<usize> = order
            .iter()
            .flat_map(|g| g.iter())
            .map(|l| o.labels.iter().position(|x| x == l).expect("own label"))
            .collect();
        reshape(o.t.permute(&perm)?, dims)
    };
    let mut da = label_dims(&a, &batch);
    da.extend(label_dims(&a, &a_lead));
    da.extend(ones(b_lead.len()));
    da.push(dim_product(&label_dims(&a, &a_rows))?);
    da.push(dim_product(&label_dims(&a, &shared))?);
    let ta = arrange(&a, [&batch, &a_lead, &a_rows, &shared], da)?;
    let mut db = label_dims(&b, &batch);
    db.extend(ones(a_lead.len()));
    db.extend(label_dims(&b, &b_lead));
    db.push(dim_product(&label_dims(&b, &shared))?);
    db.push(dim_product(&label_dims(&b, &b_cols))?);
    let tb = arrange(&b, [&batch, &b_lead, &shared, &b_cols], db)?;
    let y = ta.matmul(tb)?;
    let ys = y.shape().0;
    let mut dims = ys[..ys.len() - 2].to_vec();
    dims.extend(label_dims(&a, &a_rows));
    dims.extend(label_dims(&b, &b_cols));
    let mut labels = batch;
    labels.extend(a_lead);
    labels.extend(b_lead);
    labels.extend(a_rows);
    labels.extend(b_cols);
    Ok(Term {
        t: reshape(y, dims)?,
        labels,
    })
}

// ---- normalization ----

/// `p` (of shape `[C]`) reshaped to broadcast along dim 1 of a rank-`rank`
/// tensor, cast to `dtype`.
fn per_channel<'g>(p: Tensor<'g>, rank: usize, dtype: DType) -> R<Tensor<'g>> {
    let p = p.cast(dtype)?;
    if p.rank() != 1 {
        return Ok(p);
    }
    let mut dims = vec![Dim::Fixed(1); rank.saturating_sub(1)];
    if dims.is_empty() {
        return Ok(p);
    }
    dims[0] = p.shape().0[0].clone();
    reshape(p, dims)
}

/// The moments of `x` over `axes` (kept dims): `x - mean`, the mean and the
/// (biased) variance, two-pass (the mean of `(x - mean)^2`).
fn moments<'g>(x: Tensor<'g>, axes: &[i64]) -> R<(Tensor<'g>, Tensor<'g>, Tensor<'g>)> {
    let mean = exact_mean(x, axes)?;
    let centered = x.sub(mean)?;
    let var = exact_mean(centered.mul(centered)?, axes)?;
    Ok((centered, mean, var))
}

/// The mean over `axes` (kept) as the sum divided by the count, correctly
/// rounded from the sum: a constant slice's mean is then its value
/// exactly, so it centers to 0 (`sum * (1 / n)`, kiln's `mean`, can miss
/// by an ulp, which a normalization's tiny variance then blows up). f32
/// and f64 with a fixed count; others take `mean`.
fn exact_mean<'g>(x: Tensor<'g>, axes: &[i64]) -> R<Tensor<'g>> {
    let shape = x.shape();
    let rank = x.rank() as i64;
    let mut count = 1usize;
    for &a in axes {
        let i = if a < 0 { a + rank } else { a } as usize;
        match shape.0.get(i) {
            Some(Dim::Fixed(n)) => count *= n,
            _ => return Ok(x.mean(axes, true)?),
        }
    }
    if !matches!(x.dtype(), DType::F32 | DType::F64) || count == 0 {
        return Ok(x.mean(axes, true)?);
    }
    Ok(x.sum(axes, true)?.div(count as f64)?)
}

/// `(x - mean) / sqrt(var + eps)` over `axes`, with the mean and
/// `1 / sqrt(var + eps)` (kept dims).
fn standardize<'g>(
    x: Tensor<'g>,
    axes: &[i64],
    eps: f64,
) -> R<(Tensor<'g>, Tensor<'g>, Tensor<'g>)> {
    let (centered, mean, var) = moments(x, axes)?;
    let inv = var.add(eps)?.rsqrt()?;
    Ok((centered.mul(inv)?, mean, inv))
}

/// `BatchNormalization`. Inference: `(x - mean) / sqrt(var + eps) * scale
/// + B` with the given statistics. Training mode (`training_mode`; before
/// opset 7 `is_test = 0`; opsets 7 to 13 more than one output): the
/// batch's statistics (variance biased) normalize, and the running ones
/// come out as `mean * momentum + batch * (1 - momentum)`.
fn batch_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dt = x.dtype();
    let r = x.rank();
    let eps = n.float("epsilon", 1e-5) as f64;
    let training = if n.opset >= 14 {
        n.int("training_mode", 0) != 0
    } else if n.opset < 7 {
        n.int("is_test", 0) == 0
    } else {
        n.proto.output.iter().skip(1).any(|o| !o.is_empty())
    };
    if n.opset < 9 && n.int("spatial", 1) == 0 && training {
        return n.unsupported("training mode with spatial = 0");
    }
    let [scale, bias, mean, var] =
        [1, 2, 3, 4].map(|i| n.input(i).and_then(|t| per_channel(t, r, dt)));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    // `(x - mean) * rsqrt(var + eps)` first, then the scale, as the
    // definition reads: a huge scale times the factor could overflow where
    // the normalized value times the scale does not. (Inference graphs
    // still fold the two constants into one, or into the conv's weights,
    // wherever that does not overflow.)
    if !training {
        let inv = var.add(eps)?.rsqrt()?;
        let y = x.sub(mean)?.mul(inv)?.mul(scale)?;
        return Ok(vec![y.add(bias)?]);
    }
    let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
    let (centered, bmean, bvar) = moments(x, &axes)?;
    let inv = bvar.add(eps)?.rsqrt()?;
    let y = centered.mul(inv)?.mul(scale)?.add(bias)?;
    let m = n.float("momentum", 0.9) as f64;
    // Statistics come out shaped like the given mean ([C]).
    let stat_shape = n.input(3)?.shape();
    let flat = |t: Tensor<'g>| -> R<Tensor<'g>> { Ok(t.reshape(stat_shape.clone())?) };
    let run = |old: Tensor<'g>, new: Tensor<'g>| flat(old.mul(m)?.add(new.mul(1.0 - m)?)?);
    let mut outs = vec![y, run(mean, bmean)?, run(var, bvar)?];
    if n.opset < 14 {
        outs.push(flat(bmean)?);
        outs.push(flat(bvar)?);
    }
    Ok(outs)
}

/// `InstanceNormalization`: per sample and channel over the spatial dims.
fn instance_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (r, dt) = (x.rank(), x.dtype());
    let eps = n.float("epsilon", 1e-5) as f64;
    let (normed, _, _) = standardize(x, &spatial_axes(x)?, eps)?;
    let scale = per_channel(n.input(1)?, r, dt)?;
    let bias = per_channel(n.input(2)?, r, dt)?;
    Ok(one(normed.mul(scale)?.add(bias)?))
}

/// The computation type of `stash_type` (ONNX data type code) for `x`.
fn stash_dtype(n: &Node<'_, '_>, x: Tensor<'_>) -> R<DType> {
    match n.attr("stash_type") {
        // Opset 18's GroupNormalization has none: the input's type, widened.
        None if n.op() == "GroupNormalization" => Ok(match x.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        }),
        _ => Ok(crate::tensor::dtype_of(n.int("stash_type", 1) as i32)?),
    }
}

/// `LayerNormalization`: over dims `axis..`, computed in `stash_type`;
/// outputs `Y`, `Mean` and `InvStdDev` (the last two in `stash_type`).
fn layer_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    let a = axis(n.int("axis", -1), r)?;
    let axes: Vec<i64> = (a as i64..r as i64).collect();
    let eps = n.float("epsilon", 1e-5) as f64;
    let st = stash_dtype(n, x)?;
    let (normed, mean, inv) = standardize(x.cast(st)?, &axes, eps)?;
    let mut y = normed.cast(x.dtype())?.mul(n.input(1)?.cast(x.dtype())?)?;
    if let Some(b) = n.opt(2) {
        y = y.add(b.cast(x.dtype())?)?;
    }
    Ok(vec![y, mean, inv])
}

/// `GroupNormalization`: channels split into `num_groups` groups, each
/// normalized over its channels and the spatial dims; scale and bias per
/// group (opset 18) or per channel (opset 21), told apart by length.
fn group_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (scale, bias) = (n.input(1)?, n.input(2)?);
    let g = usize::try_from(n.int("num_groups", 0))
        .ok()
        .filter(|&g| g > 0)
        .ok_or("num_groups must be positive")?;
    let rest = fixed_from(x, 1)?;
    let c = rest[0];
    if c % g != 0 {
        return Err(format!("{c} channels do not split into {g} groups").into());
    }
    let eps = n.float("epsilon", 1e-5) as f64;
    let st = stash_dtype(n, x)?;
    let per: usize = rest.iter().product::<usize>() / g;
    let nd = x.shape().0[0].clone();
    let grouped = reshape(x.cast(st)?, vec![nd, Dim::Fixed(g), Dim::Fixed(per)])?;
    let (normed, _, _) = standardize(grouped, &[2], eps)?;
    let y = reshape(normed.cast(x.dtype())?, x.shape().0)?;
    let channel = |p: Tensor<'g>| -> R<Tensor<'g>> {
        let len = fixed_shape(p)?.iter().product::<usize>();
        let p = if len == c || len == 1 {
            reshape(p, fixed(&[len]))?
        } else if len == g {
            // One value per group: repeated over the group's channels.
            let t = reshape(p, fixed(&[g, 1]))?.broadcast_to(Shape::fixed(&[g, c / g]));
            reshape(t?, fixed(&[c]))?
        } else {
            return Err(format!(
                "scale/bias of {len} values fit neither {c} channels nor {g} groups"
            )
            .into());
        };
        per_channel(p, x.rank(), x.dtype())
    };
    Ok(one(y.mul(channel(scale)?)?.add(channel(bias)?)?))
}

/// `MeanVarianceNormalization`: `(x - mean) / (std + 1e-9)` over `axes`,
/// the variance as the mean of `(x - mean)^2` (two passes; ONNX's function
/// body writes `E[x^2] - E[x]^2`, which cancels, and onnxruntime's NaN for
/// a constant slice comes from there). The rounded mean (its sum rounds,
/// and kiln's mean multiplies it by `1 / count`) can miss a constant
/// slice's value by an ulp, which the `1e-9` next to an ulp-sized std
/// would blow up to about ±1: the mean of the residual, subtracted once
/// more, makes a constant slice's centered values exactly 0 (its residual
/// is one value, exact, whose mean is itself).
fn mvn<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let axes = n.ints("axes").unwrap_or_else(|| vec![0, 2, 3]);
    let rough = x.sub(x.mean(&axes, true)?)?;
    let centered = rough.sub(rough.mean(&axes, true)?)?;
    let std = centered.mul(centered)?.mean(&axes, true)?.sqrt()?;
    Ok(one(centered.div(std.add(1e-9)?)?))
}

/// `LRN`: `x / (bias + alpha / size * sum of x^2 over nearby channels)^beta`.
fn lrn<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let size = usize::try_from(n.int("size", 0))
        .ok()
        .filter(|&s| s > 0)
        .ok_or("size must be positive")?;
    let (alpha, beta, bias) = (
        n.float("alpha", 1e-4) as f64,
        n.float("beta", 0.75) as f64,
        n.float("bias", 1.0) as f64,
    );
    let c = x
        .shape()
        .0
        .get(1)
        .and_then(|d| d.fixed())
        .ok_or("channels must be fixed")?;
    let lo = (size - 1) / 2;
    let hi = size - 1 - lo;
    let sq = x.mul(x)?;
    let mut before = vec![0; x.rank()];
    let mut after = vec![0; x.rank()];
    before[1] = lo;
    after[1] = hi;
    let padded = sq.pad(&before, &after, 0.0)?;
    let mut sum: Option<Tensor<'g>> = None;
    for j in 0..size {
        let s = padded.slice_axis(1, j as i64, (j + c) as i64, 1)?;
        sum = Some(match sum {
            None => s,
            Some(t) => t.add(s)?,
        });
    }
    let sum = sum.expect("size >= 1");
    let d = sum.mul(alpha / size as f64)?.add(bias)?.pow(beta)?;
    Ok(one(x.div(d)?))
}

// ---- softmax family, Shrink ----

#[derive(Clone, Copy, PartialEq)]
enum Soft {
    Softmax,
    Log,
    Hard,
}

/// `Softmax`, `LogSoftmax`, `Hardmax`: along `axis` (opset 13 and later,
/// default -1) or, before, over every dim from `axis` on (default 1).
fn softmax<'g>(n: &Node<'_, 'g>, kind: Soft) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let r = x.rank();
    if r == 0 {
        return Err("needs rank >= 1".into());
    }
    let legacy = n.opset < 13;
    let a = axis(n.int("axis", if legacy { 1 } else { -1 }), r)?;
    let axes: Vec<i64> = if legacy {
        (a as i64..r as i64).collect()
    } else {
        vec![a as i64]
    };
    match kind {
        Soft::Softmax => {
            let e = x.sub(x.max(&axes, true)?)?.exp()?;
            Ok(one(e.div(e.sum(&axes, true)?)?))
        }
        Soft::Log => {
            let s = x.sub(x.max(&axes, true)?)?;
            Ok(one(s.sub(s.exp()?.sum(&axes, true)?.log()?)?))
        }
        Soft::Hard => {
            let shape = x.shape().0;
            if shape.iter().any(|d| d.fixed() == Some(0)) {
                // No element (an empty axis, or another empty dim): an empty
                // result of the input's shape.
                let zero = n.scalar(0.0, x.dtype())?;
                return Ok(one(zero.broadcast_to(x.shape())?));
            }
            // Merge the dims from `a` on where there are several.
            let flat = if axes.len() > 1 {
                let mut dims = shape[..a].to_vec();
                dims.push(dim_product(&shape[a..])?);
                reshape(x, dims)?
            } else {
                x
            };
            let len = flat.shape().0[a].clone();
            let am = flat.argmax(a as i64, true)?;
            let mut idims = vec![Dim::Fixed(1); flat.rank()];
            idims[a] = len.clone();
            let iota = x.builder().iota(DType::I64, Shape(vec![len]), 0)?;
            let hot = am.eq(reshape(iota, idims)?)?.cast(x.dtype())?;
            reshape(hot, shape).map(one)
        }
    }
}

/// `Shrink`: `x + bias` below `-lambd`, `x - bias` above `lambd`, else 0.
fn shrink<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let (lambd, bias) = (n.float("lambd", 0.5) as f64, n.float("bias", 0.0) as f64);
    let zero = n.scalar(0.0, x.dtype())?;
    let hi = n.g.select(x.gt(lambd)?, x.sub(bias)?, zero)?;
    Ok(one(n.g.select(x.lt(-lambd)?, x.add(bias)?, hi)?))
}

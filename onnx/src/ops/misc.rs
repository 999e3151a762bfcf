//! ONNX ops of the misc family, each a composition of kiln primitives:
//!
//! - `GridSample` (modes linear/bilinear, nearest, cubic/bicubic; padding
//!   zeros, border, reflection; `align_corners`; any number of spatial
//!   dims): sample coordinates are computed in the graph from the run-time
//!   grid (floor, clamp, reflection arithmetic), every tap's flat index
//!   into `[N * spatial, C]` goes into one gather, and the taps' weights
//!   (fractional parts, cubic coefficients, in-range masks) sum them.
//! - `AffineGrid` (2-D and 3-D): a constant base grid times `theta`.
//! - `LpNormalization` (p 1 or 2), `CenterCropPad` (slice and zero pad),
//!   `Col2Im` (scatter-add of the columns into the padded image),
//!   `MaxUnpool` (scatter-add at the run-time indices; an index given twice
//!   holds the mean of its values, not the last one), `ReverseSequence`
//!   (one gather at indices computed from the run-time lengths).
//! - `HannWindow`, `HammingWindow`, `BlackmanWindow`, `MelWeightMatrix`:
//!   constants (their sizes decide the output shape, so they must be known
//!   at import time).
//! - `Det`: a cofactor expansion for n <= 4, Gaussian elimination with
//!   partial pivoting (one-hot row swaps) above.
//! - `DFT` (opsets 17 and 20: real or complex input, `onesided`,
//!   `inverse`, including the real inverse of a onesided spectrum) and
//!   `STFT`: matrix products with constant cosine and sine matrices,
//!   computed in f64 and rounded once (the transform length and axis must
//!   be known at import time). Exact zeros stay exact: test data holding
//!   numpy's float32 FFT round-off there (1e-7 to 1e-6) does not match.
//! - `Bernoulli`, `RandomUniform`, `RandomNormal`, `RandomUniformLike`,
//!   `RandomNormalLike`: kiln's counter-based random sources. Their values
//!   are a function of the seed (the `seed` attribute, else one derived from
//!   the node's output name), the same on every run; they cannot reproduce
//!   another runtime's samples.
//! - `RoiAlign` (modes avg and max, `half_pixel` and `output_half_pixel`):
//!   bilinear sampling as per-ROI interpolation matrices (rows of the
//!   feature map, columns) multiplied around the gathered feature maps;
//!   `sampling_ratio` 0 (a grid from each ROI's size) needs the ROIs at
//!   import time.
//! - `Compress` (an import-time condition: a gather), `Unique` and
//!   `NonMaxSuppression` (output shapes depend on the values, so their
//!   inputs must be known at import time: the node is folded to constants).

use std::collections::HashMap;

use kiln_graph::{Array, DType, Scalar, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("GridSample", grid_sample),
    ("AffineGrid", affine_grid),
    ("LpNormalization", lp_normalization),
    ("CenterCropPad", center_crop_pad),
    ("Col2Im", col2im),
    ("MaxUnpool", max_unpool),
    ("ReverseSequence", reverse_sequence),
    ("HannWindow", |n| window(n, [0.5, 0.5, 0.0])),
    ("HammingWindow", |n| {
        window(n, [25.0 / 46.0, 21.0 / 46.0, 0.0])
    }),
    ("BlackmanWindow", |n| window(n, [0.42, 0.5, 0.08])),
    ("Det", det),
    ("DFT", dft),
    ("STFT", stft),
    ("MelWeightMatrix", mel_weight_matrix),
    ("Bernoulli", bernoulli),
    ("RandomUniform", |n| random(n, false, false)),
    ("RandomNormal", |n| random(n, true, false)),
    ("RandomUniformLike", |n| random(n, false, true)),
    ("RandomNormalLike", |n| random(n, true, true)),
    ("Compress", compress),
    ("Unique", unique),
    ("NonMaxSuppression", non_max_suppression),
    ("RoiAlign", roi_align),
];

fn one(t: Tensor<'_>) -> Vec<Tensor<'_>> {
    vec![t]
}

/// A constant array of `dtype` from f64 values.
fn array_of(values: &[f64], shape: &[usize], dtype: DType) -> R<Array> {
    let s: Vec<Scalar> = values.iter().map(|&v| Scalar::from_f64(dtype, v)).collect();
    Array::from_scalars(shape.to_vec(), dtype, &s)
        .ok_or_else(|| format!("{} values do not fill shape {shape:?}", values.len()).into())
}

/// A constant tensor of `dtype` from f64 values.
fn constant<'g>(n: &Node<'_, 'g>, values: &[f64], shape: &[usize], dtype: DType) -> R<Tensor<'g>> {
    n.constant(array_of(values, shape, dtype)?)
}

/// A constant i64 tensor.
fn int_constant<'g>(n: &Node<'_, 'g>, values: Vec<i64>, shape: &[usize]) -> R<Tensor<'g>> {
    let a = Array::from_vec(shape.to_vec(), values)
        .ok_or_else(|| format!("index values do not fill shape {shape:?}"))?;
    n.constant(a)
}

/// The kiln dtype of an ONNX element type attribute.
fn onnx_dtype(code: i64) -> R<DType> {
    Ok(crate::tensor::dtype_of(code as i32)?)
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// The multi-index of flat position `i` in `dims` (row-major).
fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut out = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        out[d] = i % dims[d].max(1);
        i /= dims[d].max(1);
    }
    out
}

// ---------------------------------------------------------------- GridSample

#[derive(Clone, Copy, PartialEq, Eq)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// `v` reflected by the borders `lo` and `hi` until it lies between them
/// (ONNX's `_gs_reflect`; values already inside are kept).
fn reflect<'g>(v: Tensor<'g>, lo: f64, hi: f64) -> R<Tensor<'g>> {
    let g = v.builder();
    let span = hi - lo;
    if span <= 0.0 {
        return Ok(v.mul(0.0)?.add(lo)?);
    }
    let below = v.lt(lo)?;
    let above = v.gt(hi)?;
    let dx = g.select(below, v.neg()?.add(lo)?, v.sub(hi)?)?;
    let flips = dx.div(span)?.floor()?;
    let r = dx.sub(flips.mul(span)?)?;
    let odd = flips.sub(flips.mul(0.5)?.floor()?.mul(2.0)?)?.gt(0.5)?;
    let from_lo = r.add(lo)?;
    let from_hi = r.neg()?.add(hi)?;
    let b = g.select(odd, from_hi, from_lo)?;
    let a = g.select(odd, from_lo, from_hi)?;
    let inner = g.select(above, a, v)?;
    Ok(g.select(below, b, inner)?)
}

/// Keys' cubic convolution coefficients (alpha -0.75) of the four taps at
/// offsets -1, 0, 1, 2 from `floor(x)`, for `t = x - floor(x)`.
fn cubic_coeffs<'g>(t: Tensor<'g>) -> R<[Tensor<'g>; 4]> {
    const A: f64 = -0.75;
    // Outer taps (distance s in [1, 2)): ((A s - 5A) s + 8A) s - 4A.
    let outer = |s: Tensor<'g>| -> R<Tensor<'g>> {
        Ok(s.mul(A)?
            .sub(5.0 * A)?
            .mul(s)?
            .add(8.0 * A)?
            .mul(s)?
            .sub(4.0 * A)?)
    };
    // Inner taps (distance s in [0, 1]): ((A + 2) s - (A + 3)) s s + 1.
    let inner = |s: Tensor<'g>| -> R<Tensor<'g>> {
        Ok(s.mul(A + 2.0)?.sub(A + 3.0)?.mul(s)?.mul(s)?.add(1.0)?)
    };
    let one_minus = t.neg()?.add(1.0)?;
    Ok([
        outer(t.add(1.0)?)?,
        inner(t)?,
        inner(one_minus)?,
        outer(t.neg()?.add(2.0)?)?,
    ])
}

/// `GridSample`: `Y[n, c, o...] = interpolate(X[n, c], grid[n, o...])`.
///
/// Per spatial dim the normalized coordinate is mapped to pixel space,
/// rounded (nearest) or split into taps with weights (linear: 2, cubic:
/// 4), and out-of-range coordinates are handled as ONNX's reference does
/// (border: clamped; reflection: reflected; zeros: the tap weighs 0). The
/// taps of all dims combine into one index tensor `[taps, N, O...]` of
/// flat positions into `X` laid out as `[N * spatial, C]`, one gather
/// reads them and a weighted sum over the taps gives `Y`.
fn grid_sample<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, grid) = (n.input(0)?, n.input(1)?);
    let mode = match n.string("mode").as_deref() {
        None | Some("bilinear") | Some("linear") => Interp::Linear,
        Some("nearest") => Interp::Nearest,
        Some("bicubic") | Some("cubic") => Interp::Cubic,
        Some(m) => return n.unsupported(format!("mode '{m}'")),
    };
    let padding = match n.string("padding_mode").as_deref() {
        None | Some("zeros") => Padding::Zeros,
        Some("border") => Padding::Border,
        Some("reflection") => Padding::Reflection,
        Some(p) => return n.unsupported(format!("padding_mode '{p}'")),
    };
    let align = n.int("align_corners", 0) != 0;
    let xs = fixed_shape(x)?;
    let gs = fixed_shape(grid)?;
    if xs.len() < 3 {
        return Err(format!("X must have rank >= 3, has shape {xs:?}").into());
    }
    let r = xs.len() - 2;
    if gs.len() != r + 2 || gs[r + 1] != r || gs[0] != xs[0] {
        return Err(format!(
            "grid shape {gs:?} does not fit X shape {xs:?} (want [N, out..., {r}])"
        )
        .into());
    }
    if !x.dtype().is_float() || !grid.dtype().is_float() {
        return Err("X and grid must be floating point".into());
    }
    let (nb, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let out = &gs[1..=r];
    let spatial: usize = dims.iter().product();
    let st = strides(dims);
    // Coordinates in the grid's precision (f64 stays f64, halves in f32).
    let ft = if grid.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let g = grid.cast(ft)?;

    // Per spatial dim: its taps, as (flat offset, weight) pairs.
    type Tap<'g> = (Tensor<'g>, Option<Tensor<'g>>);
    let mut per_dim: Vec<Vec<Tap<'g>>> = Vec::with_capacity(r);
    for (i, (&d, &stride)) in dims.iter().zip(&st).enumerate() {
        let d = d as f64;
        // Spatial dim i reads grid component r - 1 - i (x is the last dim).
        let comp = g
            .slice_axis(-1, (r - 1 - i) as i64, (r - i) as i64, 1)?
            .squeeze(-1)?;
        let mut v = if align {
            comp.add(1.0)?.mul((d - 1.0) / 2.0)?
        } else {
            comp.add(1.0)?.mul(d)?.sub(1.0)?.mul(0.5)?
        };
        let (lo, hi) = if align {
            (0.0, d - 1.0)
        } else {
            (-0.5, d - 0.5)
        };
        if mode == Interp::Nearest {
            // Half to even (nearbyint), for every rank: what the test data
            // holds (ONNX's reference once used std::round for 3-D).
            v = v.round()?;
        }
        match padding {
            Padding::Zeros => {}
            Padding::Border => {
                let outside = v.lt(lo)?.or(v.gt(hi)?)?;
                let clamped = v.maximum(0.0)?.minimum(d - 1.0)?;
                v = n.g.select(outside, clamped, v)?;
            }
            Padding::Reflection => v = reflect(v, lo, hi)?,
        }
        let taps: Vec<(Tensor<'g>, Option<Tensor<'g>>)> = match mode {
            Interp::Nearest => vec![(v, None)],
            Interp::Linear => {
                let f = v.floor()?;
                let t = v.sub(f)?;
                vec![(f, Some(t.neg()?.add(1.0)?)), (f.add(1.0)?, Some(t))]
            }
            Interp::Cubic => {
                let f = v.floor()?;
                let t = v.sub(f)?;
                let [c0, c1, c2, c3] = cubic_coeffs(t)?;
                vec![
                    (f.sub(1.0)?, Some(c0)),
                    (f, Some(c1)),
                    (f.add(1.0)?, Some(c2)),
                    (f.add(2.0)?, Some(c3)),
                ]
            }
        };
        let mut list = Vec::with_capacity(taps.len());
        for (k, w) in taps {
            let (idx, w) = match padding {
                Padding::Zeros => {
                    let valid = k.ge(0.0)?.and(k.le(d - 1.0)?)?.cast(ft)?;
                    let w = match w {
                        Some(w) => w.mul(valid)?,
                        None => valid,
                    };
                    (k, Some(w))
                }
                Padding::Border => (k, w),
                Padding::Reflection => (reflect(k, lo, hi)?, w),
            };
            // Truncation toward zero (as the reference's int()), then a
            // clamp so every gathered index is in range.
            let idx = idx
                .cast(DType::I64)?
                .maximum(0i64)?
                .minimum(d as i64 - 1)?
                .mul(stride as i64)?;
            list.push((idx, w));
        }
        per_dim.push(list);
    }

    // Every combination of taps: its flat index and weight.
    let mut bshape = vec![nb];
    bshape.extend_from_slice(out);
    let batch =
        n.g.iota(DType::I64, bshape.clone(), 0)?
            .mul(spatial as i64)?;
    let mut combos: Vec<(Tensor<'g>, Option<Tensor<'g>>)> = vec![(batch, None)];
    for list in &per_dim {
        let mut next = Vec::with_capacity(combos.len() * list.len());
        for (ci, cw) in &combos {
            for (ti, tw) in list {
                let w = match (cw, tw) {
                    (Some(a), Some(b)) => Some(a.mul(*b)?),
                    (Some(a), None) => Some(*a),
                    (None, b) => *b,
                };
                next.push((ci.add(*ti)?, w));
            }
        }
        combos = next;
    }
    let idx: Vec<Tensor<'g>> = combos
        .iter()
        .map(|(i, _)| Ok(i.unsqueeze(0)?))
        .collect::<R<_>>()?;
    let idx = n.g.concat(&idx, 0)?;
    // X as [N * spatial, C].
    let data = x
        .reshape(vec![nb, c, spatial])?
        .permute(&[0, 2, 1])?
        .reshape(vec![nb * spatial, c])?;
    // [taps, N, out..., C]
    let gathered = data.gather(idx, 0)?;
    let y = if combos.iter().all(|(_, w)| w.is_none()) {
        gathered.squeeze(0)?
    } else {
        let ws: Vec<Tensor<'g>> = combos
            .iter()
            .map(|(_, w)| {
                let w = w.ok_or("mixed weighted and unweighted taps")?;
                Ok(w.cast(x.dtype())?.unsqueeze(0)?.unsqueeze(-1)?)
            })
            .collect::<R<_>>()?;
        let w = n.g.concat(&ws, 0)?;
        gathered.mul(w)?.sum(&[0], false)?
    };
    // [N, out..., C] -> [N, C, out...]
    let mut perm = vec![0, r + 1];
    perm.extend(1..=r);
    Ok(one(y.permute(&perm)?))
}

// ---------------------------------------------------------------- AffineGrid

/// `AffineGrid`: `grid[n, p] = theta[n] @ [x_p, y_p, (z_p,) 1]` over the
/// base grid of the (import-time) `size`, normalized to [-1, 1].
fn affine_grid<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let theta = n.input(0)?;
    let size = n.const_ints(1)?.ok_or("input 'size' is required")?;
    let align = n.int("align_corners", 0) != 0;
    if size.len() != 4 && size.len() != 5 {
        return n.unsupported(format!("size of length {} (2-D and 3-D only)", size.len()));
    }
    let r = size.len() - 2;
    let spatial: Vec<usize> = size[2..]
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("bad size {size:?}").into()))
        .collect::<R<_>>()?;
    let ts = fixed_shape(theta)?;
    if ts.len() != 3 || ts[1] != r || ts[2] != r + 1 || ts[0] as i64 != size[0] {
        return Err(format!(
            "theta shape {ts:?} does not fit size {size:?} (want [N, {r}, {}])",
            r + 1
        )
        .into());
    }
    let coord = |i: usize, d: usize| -> f64 {
        if align {
            if d <= 1 {
                -1.0
            } else {
                -1.0 + 2.0 * i as f64 / (d - 1) as f64
            }
        } else {
            (2 * i + 1) as f64 / d as f64 - 1.0
        }
    };
    let p: usize = spatial.iter().product();
    let mut base = Vec::with_capacity(p * (r + 1));
    for flat in 0..p {
        let at = unravel(flat, &spatial);
        // Columns: x (last dim), y, (z,) then 1.
        for j in 0..r {
            let dim = r - 1 - j;
            base.push(coord(at[dim], spatial[dim]));
        }
        base.push(1.0);
    }
    let base = constant(n, &base, &[p, r + 1], theta.dtype())?;
    let grid = base.matmul(theta.permute(&[0, 2, 1])?)?;
    let mut shape = vec![ts[0]];
    shape.extend_from_slice(&spatial);
    shape.push(r);
    Ok(one(grid.reshape(shape)?))
}

// ------------------------------------------------------- normalization, crop

/// `LpNormalization`: `x / ||x||_p` along `axis` (p 1 or 2; 0 where the
/// norm is 0).
fn lp_normalization<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let a = axis(n.int("axis", -1), x.rank())? as i64;
    let norm = match n.int("p", 2) {
        1 => x.abs()?.sum(&[a], true)?,
        2 => x.mul(x)?.sum(&[a], true)?.sqrt()?,
        p => return n.unsupported(format!("p = {p} (1 or 2)")),
    };
    // A zero norm gives zeros (the test data's meaning), not NaN.
    let safe = n.g.select(norm.eq(0.0)?, norm.add(1.0)?, norm)?;
    Ok(one(x.div(safe)?))
}

/// `CenterCropPad`: each axis cropped (centered, the extra element at the
/// end) or zero padded (likewise) to the import-time `shape`.
fn center_crop_pad<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let mut x = n.input(0)?;
    let shape = n.const_ints(1)?.ok_or("input 'shape' is required")?;
    let rank = x.rank();
    let axes: Vec<usize> = match n.ints("axes") {
        Some(a) => a.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        None => (0..rank).collect(),
    };
    if axes.len() != shape.len() {
        return Err(format!("shape has {} values for {} axes", shape.len(), axes.len()).into());
    }
    let dims = fixed_shape(x)?;
    let mut before = vec![0; rank];
    let mut after = vec![0; rank];
    for (&a, &want) in axes.iter().zip(&shape) {
        let want = usize::try_from(want).map_err(|_| format!("bad shape {shape:?}"))?;
        let dim = dims[a];
        if want < dim {
            let start = (dim - want) / 2;
            x = x.slice_axis(a as i64, start as i64, (start + want) as i64, 1)?;
        } else if want > dim {
            before[a] = (want - dim) / 2;
            after[a] = want - dim - before[a];
        }
    }
    if before.iter().chain(&after).any(|&p| p > 0) {
        x = x.pad(&before, &after, 0.0)?;
    }
    Ok(vec![x])
}

// ------------------------------------------------------- Col2Im, MaxUnpool

/// `Col2Im`: the columns `[N, C * prod(block), L]` added into the padded
/// image at the positions each block element covers (one scatter-add at
/// constant indices), then the padding cut off.
fn col2im<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let image = n.const_ints(1)?.ok_or("input 'image_shape' is required")?;
    let block = n.const_ints(2)?.ok_or("input 'block_shape' is required")?;
    let r = image.len();
    if block.len() != r || r == 0 {
        return Err(
            format!("image_shape {image:?} and block_shape {block:?} differ in length").into(),
        );
    }
    let to_usize = |v: &[i64], what: &str| -> R<Vec<usize>> {
        v.iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("bad {what} {v:?}").into()))
            .collect()
    };
    let image = to_usize(&image, "image_shape")?;
    let block = to_usize(&block, "block_shape")?;
    let dil = to_usize(&n.ints("dilations").unwrap_or(vec![1; r]), "dilations")?;
    let st = to_usize(&n.ints("strides").unwrap_or(vec![1; r]), "strides")?;
    let pads = to_usize(&n.ints("pads").unwrap_or(vec![0; 2 * r]), "pads")?;
    if dil.len() != r || st.len() != r || pads.len() != 2 * r {
        return Err("dilations, strides and pads must match the image rank".into());
    }
    let xs = fixed_shape(x)?;
    let bsz: usize = block.iter().product();
    if xs.len() != 3 || bsz == 0 || xs[1] % bsz != 0 {
        return Err(format!("input shape {xs:?} does not fit block_shape {block:?}").into());
    }
    let (nb, c) = (xs[0], xs[1] / bsz);
    let padded: Vec<usize> = (0..r).map(|i| image[i] + pads[i] + pads[r + i]).collect();
    let mut grid = Vec::with_capacity(r);
    for i in 0..r {
        let span = dil[i] * (block[i] - 1) + 1;
        if padded[i] < span || st[i] == 0 {
            return Err(format!("block {block:?} does not fit the padded image {padded:?}").into());
        }
        grid.push((padded[i] - span) / st[i] + 1);
    }
    let l: usize = grid.iter().product();
    if xs[2] != l {
        return Err(format!("input has {} blocks, the image holds {l}", xs[2]).into());
    }
    let pst = strides(&padded);
    let mut idx = Vec::with_capacity(bsz * l);
    for b in 0..bsz {
        let bi = unravel(b, &block);
        for li in 0..l {
            let gi = unravel(li, &grid);
            let flat: usize = (0..r)
                .map(|d| (gi[d] * st[d] + bi[d] * dil[d]) * pst[d])
                .sum();
            idx.push(flat as i64);
        }
    }
    let total: usize = padded.iter().product();
    let idx = int_constant(n, idx, &[bsz * l])?;
    let zeros = n.g.full(0.0, x.dtype(), &[nb, c, total])?;
    let updates = x.reshape(vec![nb, c, bsz * l])?;
    let mut y = zeros.scatter_add(idx, updates, 2)?;
    let mut shape = vec![nb, c];
    shape.extend_from_slice(&padded);
    y = y.reshape(shape)?;
    for i in 0..r {
        if pads[i] > 0 || pads[r + i] > 0 {
            y = y.slice_axis(
                (i + 2) as i64,
                pads[i] as i64,
                (pads[i] + image[i]) as i64,
                1,
            )?;
        }
    }
    Ok(vec![y])
}

/// `MaxUnpool`: `X` placed at its flat `indices` in a zero tensor of the
/// inferred shape (a scatter-add; an index given twice holds the mean of
/// its values, which is the value itself for MaxPool's indices), then
/// zero padded at the end to `output_shape` where that is given.
fn max_unpool<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, idx) = (n.input(0)?, n.input(1)?);
    let output_shape = n.const_ints(2)?;
    let xs = fixed_shape(x)?;
    let kernel = n.ints("kernel_shape").ok_or("kernel_shape is required")?;
    let r = kernel.len();
    if xs.len() != r + 2 {
        return Err(format!("X shape {xs:?} does not fit kernel_shape {kernel:?}").into());
    }
    let st = n.ints("strides").unwrap_or(vec![1; r]);
    let pads = n.ints("pads").unwrap_or(vec![0; 2 * r]);
    if st.len() != r || pads.len() != 2 * r {
        return Err("strides and pads must match kernel_shape".into());
    }
    let mut inferred = vec![xs[0], xs[1]];
    for i in 0..r {
        let d = (xs[i + 2] as i64 - 1) * st[i] - pads[i] - pads[r + i] + kernel[i];
        let d = usize::try_from(d).map_err(|_| format!("output dim {i} would be {d}"))?;
        inferred.push(d);
    }
    // Zero padding at the end up to output_shape.
    let mut after = vec![0; inferred.len()];
    if let Some(shape) = &output_shape {
        if shape.len() != inferred.len() {
            return Err(format!("output_shape {shape:?} has the wrong rank").into());
        }
        for (i, (&want, &have)) in shape.iter().zip(&inferred).enumerate() {
            match usize::try_from(want) {
                Ok(want) if want >= have => after[i] = want - have,
                _ => {
                    return n.unsupported(format!(
                        "output_shape {shape:?} smaller than the inferred {inferred:?}"
                    ))
                }
            }
        }
    }
    let total: usize = inferred.iter().product();
    let numel: usize = xs.iter().product();
    let flat_i = idx.cast(DType::I64)?.reshape(vec![numel])?;
    let flat_x = x.reshape(vec![numel])?;
    let zeros = n.g.full(0.0, x.dtype(), &[total])?;
    let sum = zeros.scatter_add(flat_i, flat_x, 0)?;
    let ones = n.g.full(1.0, x.dtype(), &[numel])?;
    let count = zeros.scatter_add(flat_i, ones, 0)?.maximum(1.0)?;
    let mut y = sum.div(count)?.reshape(inferred)?;
    if after.iter().any(|&a| a > 0) {
        y = y.pad(&vec![0; after.len()], &after, 0.0)?;
    }
    Ok(vec![y])
}

/// `ReverseSequence`: the first `sequence_lens[b]` steps of each batch
/// entry reversed: one gather over the merged batch and time dims at
/// indices computed from the (run-time) lengths.
fn reverse_sequence<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, lens) = (n.input(0)?, n.input(1)?);
    let xs = fixed_shape(x)?;
    let (ba, ta) = (n.int("batch_axis", 1), n.int("time_axis", 0));
    if !matches!((ba, ta), (0, 1) | (1, 0)) || xs.len() < 2 {
        return n.unsupported(format!("batch_axis {ba} with time_axis {ta}"));
    }
    let (ba, ta) = (ba as usize, ta as usize);
    let (b, t) = (xs[ba], xs[ta]);
    let lead = vec![xs[0], xs[1]];
    let tt = n.g.iota(DType::I64, lead.clone(), ta)?;
    let bb = n.g.iota(DType::I64, lead.clone(), ba)?;
    let mut lshape = vec![1, 1];
    lshape[ba] = b;
    let len = lens.cast(DType::I64)?.reshape(lshape)?;
    let rev = len.sub(1i64)?.sub(tt)?;
    let src = n.g.select(tt.lt(len)?, rev, tt)?;
    let flat = if ta == 0 {
        src.mul(b as i64)?.add(bb)?
    } else {
        bb.mul(t as i64)?.add(src)?
    };
    let mut merged = vec![xs[0] * xs[1]];
    merged.extend_from_slice(&xs[2..]);
    Ok(one(x.reshape(merged)?.gather(flat, 0)?))
}

// ---------------------------------------------------------------- windows

/// The generalized cosine windows: `a0 - a1 cos(2 pi k / N) + a2 cos(4 pi
/// k / N)`, `N` the size (periodic) or size - 1 (symmetric).
fn window<'g>(n: &Node<'_, 'g>, a: [f64; 3]) -> R<Vec<Tensor<'g>>> {
    let size = n.const_scalar(0)?.ok_or("input 'size' is required")?;
    if size < 0.0 || size.fract() != 0.0 {
        return Err(format!("bad window size {size}").into());
    }
    let size = size as usize;
    let periodic = n.int("periodic", 1) != 0;
    let dtype = onnx_dtype(n.int("output_datatype", 1))?;
    let denom = if periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let v: Vec<f64> = (0..size)
        .map(|k| {
            let x = if denom > 0.0 {
                2.0 * std::f64::consts::PI * k as f64 / denom
            } else {
                0.0
            };
            a[0] - a[1] * x.cos() + a[2] * (2.0 * x).cos()
        })
        .collect();
    constant(n, &v, &[size], dtype).map(one)
}

/// `MelWeightMatrix`: the triangular mel filter bank, computed at import
/// time as ONNX's reference does (bins floored to DFT indices).
fn mel_weight_matrix<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let get = |i: usize, what: &str| -> R<f64> {
        n.const_scalar(i)?
            .ok_or_else(|| format!("input '{what}' is required").into())
    };
    let mels = get(0, "num_mel_bins")?;
    let dft_len = get(1, "dft_length")?;
    let rate = get(2, "sample_rate")?;
    let (lower, upper) = (get(3, "lower_edge_hertz")?, get(4, "upper_edge_hertz")?);
    if mels < 0.0 || dft_len < 0.0 || rate <= 0.0 {
        return Err("num_mel_bins, dft_length and sample_rate must be positive".into());
    }
    let (mels, dft_len) = (mels as usize, dft_len as usize);
    let dtype = onnx_dtype(n.int("output_datatype", 1))?;
    let bins = dft_len / 2 + 1;
    // The reference computes the edges in f32 (its inputs' type).
    let to_mel = |hz: f64| (2595.0f32 * (1.0f32 + hz as f32 / 700.0f32).log10()) as f64;
    let (lo, hi) = (to_mel(lower), to_mel(upper));
    let step = ((hi - lo) as f32 / (mels + 2) as f32) as f64;
    let freq: Vec<i64> = (0..mels + 2)
        .map(|i| {
            let mel = i as f64 * step + lo;
            let hz = 700.0 * (10f64.powf(mel / 2595.0) - 1.0);
            (((dft_len + 1) as f64 * hz) / rate).floor() as i64
        })
        .collect();
    let mut out = vec![0.0; super::table_len("the mel weight matrix", &[bins, mels])?];
    let mut set = |j: i64, i: usize, v: f64| -> R<()> {
        let j = usize::try_from(j)
            .ok()
            .filter(|&j| j < bins)
            .ok_or_else(|| format!("mel bin edge {j} is outside the {bins} spectrogram bins"))?;
        out[j * mels + i] = v;
        Ok(())
    };
    for i in 0..mels {
        let (l, c, h) = (freq[i], freq[i + 1], freq[i + 2]);
        if c == l {
            set(c, i, 1.0)?;
        } else {
            for j in l..=c {
                set(j, i, (j - l) as f64 / (c - l) as f64)?;
            }
        }
        if h > c {
            for j in c..h {
                set(j, i, (h - j) as f64 / (h - c) as f64)?;
            }
        }
    }
    constant(n, &out, &[bins, mels], dtype).map(one)
}

// ---------------------------------------------------------------- Det

/// `Det` of `[..., m, m]`: a cofactor expansion (memoized over column
/// subsets) for m <= 4, Gaussian elimination with partial pivoting above.
fn det<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let xs = fixed_shape(x)?;
    let r = xs.len();
    if r < 2 || xs[r - 1] != xs[r - 2] {
        return Err(format!("Det needs [..., m, m], got {xs:?}").into());
    }
    if !x.dtype().is_float() {
        return Err(format!("Det needs floating point input, got {}", x.dtype()).into());
    }
    let m = xs[r - 1];
    if m == 0 {
        return Ok(one(n.g.full(1.0, x.dtype(), &xs[..r - 2])?));
    }
    if m <= 4 {
        return cofactor_det(x, m).map(one);
    }
    elimination_det(n, x, &xs).map(one)
}

fn cofactor_det<'g>(x: Tensor<'g>, m: usize) -> R<Tensor<'g>> {
    let mut e = Vec::with_capacity(m);
    for i in 0..m {
        let row = x.slice_axis(-2, i as i64, i as i64 + 1, 1)?.squeeze(-2)?;
        let mut cols = Vec::with_capacity(m);
        for j in 0..m {
            cols.push(row.slice_axis(-1, j as i64, j as i64 + 1, 1)?.squeeze(-1)?);
        }
        e.push(cols);
    }
    // minor(mask): the determinant of the last popcount(mask) rows over the
    // columns in mask, expanded along its first row.
    fn minor<'g>(
        e: &[Vec<Tensor<'g>>],
        mask: u32,
        memo: &mut HashMap<u32, Tensor<'g>>,
    ) -> R<Tensor<'g>> {
        if let Some(t) = memo.get(&mask) {
            return Ok(*t);
        }
        let m = e.len();
        let k = mask.count_ones() as usize;
        let row = m - k;
        let cols: Vec<usize> = (0..m).filter(|&j| mask & (1 << j) != 0).collect();
        let out = if k == 1 {
            e[row][cols[0]]
        } else {
            let mut acc: Option<Tensor<'g>> = None;
            for (pos, &j) in cols.iter().enumerate() {
                let term = e[row][j].mul(minor(e, mask & !(1 << j), memo)?)?;
                acc = Some(match acc {
                    None if pos % 2 == 0 => term,
                    None => term.neg()?,
                    Some(a) if pos % 2 == 0 => a.add(term)?,
                    Some(a) => a.sub(term)?,
                });
            }
            acc.expect("k >= 2 columns")
        };
        memo.insert(mask, out);
        Ok(out)
    }
    minor(&e, (1u32 << m) - 1, &mut HashMap::new())
}

fn elimination_det<'g>(n: &Node<'_, 'g>, x: Tensor<'g>, xs: &[usize]) -> R<Tensor<'g>> {
    let r = xs.len();
    let m = xs[r - 1];
    let dt = x.dtype();
    let rows = n.g.iota(DType::I64, vec![m], 0)?;
    let mut a = x;
    let mut det: Option<Tensor<'g>> = None;
    for k in 0..m {
        // Column k; rows above k are out of the running.
        let col = a.slice_axis(-1, k as i64, k as i64 + 1, 1)?.squeeze(-1)?;
        let below = constant(
            n,
            &(0..m)
                .map(|i| if i >= k { 0.0 } else { -1.0 })
                .collect::<Vec<_>>(),
            &[m],
            dt,
        )?;
        let avail = rows.ge(k as i64)?;
        let score = n.g.select(avail, col.abs()?, below)?;
        let p = score.argmax(-1, true)?; // [..., 1]
        let onehot = rows.eq(p)?.cast(dt)?; // [..., m]
        let oh = onehot.unsqueeze(-1)?; // [..., m, 1]
        let row_p = a.mul(oh)?.sum(&[-2], false)?; // [..., m]
        let row_k = a.slice_axis(-2, k as i64, k as i64 + 1, 1)?.squeeze(-2)?;
        let ek = constant(
            n,
            &(0..m)
                .map(|i| if i == k { 1.0 } else { 0.0 })
                .collect::<Vec<_>>(),
            &[m, 1],
            dt,
        )?;
        // Swap rows k and p (a no-op where p == k).
        let diff = row_k.sub(row_p)?.unsqueeze(-2)?; // [..., 1, m]
        a = a.add(oh.mul(diff)?)?.sub(ek.mul(diff)?)?;
        let swapped = p.squeeze(-1)?.ne(k as i64)?;
        let pivot = row_p
            .slice_axis(-1, k as i64, k as i64 + 1, 1)?
            .squeeze(-1)?;
        let signed = n.g.select(swapped, pivot.neg()?, pivot)?;
        det = Some(match det {
            None => signed,
            Some(d) => d.mul(signed)?,
        });
        if k + 1 < m {
            // Eliminate column k below row k (a zero pivot: det is 0, and
            // the factors are kept finite).
            let zero = pivot.eq(0.0)?;
            let safe = n.g.select(zero, pivot.add(1.0)?, pivot)?;
            let col = a.slice_axis(-1, k as i64, k as i64 + 1, 1)?.squeeze(-1)?;
            let lower = rows.gt(k as i64)?.cast(dt)?;
            let factor = col.mul(lower)?.div(safe.unsqueeze(-1)?)?;
            a = a.sub(factor.unsqueeze(-1)?.mul(row_p.unsqueeze(-2)?)?)?;
        }
    }
    det.ok_or_else(|| "empty matrix".into())
}

// ---------------------------------------------------------------- DFT

/// The DFT of `re` (+ `im`) along `axis` (not the trailing complex dim;
/// both without it): transform length `len`, as a real linear map with
/// constant cosine and sine matrices, in f64. Returns `[..., K, ..., 1 or 2]`.
fn dft_along<'g>(
    n: &Node<'_, 'g>,
    re: Tensor<'g>,
    im: Option<Tensor<'g>>,
    axis: usize,
    len: usize,
    inverse: bool,
    onesided: bool,
) -> R<Tensor<'g>> {
    let shape = fixed_shape(re)?;
    let rank = shape.len();
    let l = shape[axis];
    // Computed in f64 (as the reference's FFT is), rounded once at the end:
    // with f32 twiddles the near-zero outputs miss by more than 1e-7.
    let out_dt = re.dtype();
    let dt = DType::F64;
    let re = re.cast(dt)?;
    let im = im.map(|t| t.cast(dt)).transpose()?;
    if len == 0 {
        return Err("dft_length must be positive".into());
    }
    let nf = len as f64;
    let theta = |k: usize, j: usize| 2.0 * std::f64::consts::PI * ((k * j) % len) as f64 / nf;
    // Rows: input positions used (a longer input is truncated, a shorter
    // one zero padded); columns: output positions.
    let real_out = inverse && onesided;
    let (rows, k_out) = if real_out {
        (l.min(len / 2 + 1), len)
    } else if onesided {
        (l.min(len), len / 2 + 1)
    } else {
        (l.min(len), len)
    };
    let scale = if inverse { 1.0 / nf } else { 1.0 };
    let mut rr = vec![0.0; super::table_len("the DFT matrix", &[l, k_out])?];
    let mut ir = vec![0.0; l * k_out];
    let mut ri = vec![0.0; l * k_out];
    let mut ii = vec![0.0; l * k_out];
    for j in 0..rows {
        // irfft: the bins between DC and Nyquist stand for two.
        let w = if real_out && j != 0 && !(len.is_multiple_of(2) && j == len / 2) {
            2.0
        } else {
            1.0
        };
        for k in 0..k_out {
            let (c, s) = (theta(k, j).cos(), theta(k, j).sin());
            let at = j * k_out + k;
            if inverse {
                // (a + ib)(c + is) = (ac - bs) + i(as + bc)
                rr[at] = w * c * scale;
                ir[at] = -w * s * scale;
                ri[at] = s * scale;
                ii[at] = c * scale;
            } else {
                // (a + ib)(c - is) = (ac + bs) + i(bc - as)
                rr[at] = c;
                ir[at] = s;
                ri[at] = -s;
                ii[at] = c;
            }
        }
    }
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
    perm.push(axis);
    let mut back = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        back[p] = i;
    }
    let re_t = re.permute(&perm)?;
    let im_t = im.map(|t| t.permute(&perm)).transpose()?;
    let mat = |v: &[f64]| constant(n, v, &[l, k_out], dt);
    let apply = |a: Tensor<'g>, m: &[f64], b: Option<Tensor<'g>>, mb: &[f64]| -> R<Tensor<'g>> {
        let mut y = a.matmul(mat(m)?)?;
        if let Some(b) = b {
            y = y.add(b.matmul(mat(mb)?)?)?;
        }
        Ok(y.permute(&back)?.unsqueeze(-1)?)
    };
    let yr = apply(re_t, &rr, im_t, &ir)?;
    if real_out {
        return Ok(yr.cast(out_dt)?);
    }
    let yi = apply(re_t, &ri, im_t, &ii)?;
    Ok(n.g.concat(&[yr, yi], -1)?.cast(out_dt)?)
}

/// Splits `[..., 1 or 2]` into its real and imaginary parts (without the
/// trailing dim).
fn complex_parts<'g>(x: Tensor<'g>) -> R<(Tensor<'g>, Option<Tensor<'g>>)> {
    let xs = fixed_shape(x)?;
    match xs.last() {
        Some(1) => Ok((x.squeeze(-1)?, None)),
        Some(2) => Ok((
            x.slice_axis(-1, 0, 1, 1)?.squeeze(-1)?,
            Some(x.slice_axis(-1, 1, 2, 1)?.squeeze(-1)?),
        )),
        _ => Err(format!("the last dim must be 1 (real) or 2 (complex), shape {xs:?}").into()),
    }
}

/// `DFT`: opset 17 takes `axis` as an attribute (default 1), opset 20 as
/// input 2 (default -2); `dft_length` is input 1. Both must be known at
/// import time. `inverse` with `onesided` is the real inverse of a
/// onesided spectrum (length `2 (n - 1)` by default).
fn dft<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let rank = x.rank();
    if !x.dtype().is_float() {
        return Err(format!("DFT needs floating point input, got {}", x.dtype()).into());
    }
    let raw_axis = if n.opset >= 20 {
        match n.const_ints(2)? {
            Some(v) if v.len() == 1 => v[0],
            Some(v) => return Err(format!("axis must be one value, got {v:?}").into()),
            None => -2,
        }
    } else {
        n.int("axis", 1)
    };
    let a = axis(raw_axis, rank)?;
    if a + 1 >= rank {
        return Err(format!("axis {raw_axis} is the complex dim").into());
    }
    let inverse = n.int("inverse", 0) != 0;
    let onesided = n.int("onesided", 0) != 0;
    let l = fixed_shape(x)?[a];
    let len = match n.const_ints(1)? {
        Some(v) if v.len() == 1 && v[0] > 0 => v[0] as usize,
        Some(v) => return Err(format!("bad dft_length {v:?}").into()),
        None if inverse && onesided => 2 * l.saturating_sub(1),
        None => l,
    };
    let (re, im) = complex_parts(x)?;
    dft_along(n, re, im, a, len, inverse, onesided).map(one)
}

/// `STFT`: frames of `frame_length` every `frame_step` (one gather at
/// constant indices), times the window, then the DFT of each frame.
fn stft<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let xs = fixed_shape(x)?;
    if xs.len() != 3 {
        return Err(format!("signal must be [batch, length, 1 or 2], got {xs:?}").into());
    }
    let step = n.const_ints(1)?.ok_or("input 'frame_step' is required")?;
    let step = match step.as_slice() {
        [s] if *s > 0 => *s as usize,
        _ => return Err(format!("bad frame_step {step:?}").into()),
    };
    let window = n.opt(2);
    let frame = match n.const_ints(3)? {
        Some(v) if v.len() == 1 && v[0] > 0 => v[0] as usize,
        Some(v) => return Err(format!("bad frame_length {v:?}").into()),
        None => match window {
            Some(w) => fixed_shape(w)?
                .first()
                .copied()
                .ok_or("window must be 1-D")?,
            None => xs[1],
        },
    };
    if frame > xs[1] {
        return Err(format!("frame_length {frame} exceeds the signal length {}", xs[1]).into());
    }
    let frames = 1 + (xs[1] - frame) / step;
    let idx: Vec<i64> = (0..frames)
        .flat_map(|f| (0..frame).map(move |j| (f * step + j) as i64))
        .collect();
    let idx = int_constant(n, idx, &[frames, frame])?;
    let mut framed = x.gather(idx, 1)?; // [B, F, frame, c]
    if let Some(w) = window {
        if fixed_shape(w)? != [frame] {
            return Err(format!("window must have length {frame}").into());
        }
        let w = w.cast(x.dtype())?.reshape(vec![1, 1, frame, 1])?;
        framed = framed.mul(w)?;
    }
    let onesided = n.int("onesided", 1) != 0;
    let (re, im) = complex_parts(framed)?;
    dft_along(n, re, im, 2, frame, false, onesided).map(one)
}

// ---------------------------------------------------------------- random

/// The seed of a random node: its `seed` attribute, else one derived from
/// its first output's name (stable across imports).
fn seed_of(n: &Node<'_, '_>) -> u64 {
    match n.attr("seed") {
        Some(a) => (a.f as f64).to_bits(),
        None => {
            n.g.seed_for(n.proto.output.first().map(String::as_str).unwrap_or(""))
        }
    }
}

/// `RandomUniform`/`RandomNormal` (shape attribute) and their `Like` forms
/// (the input's shape, and dtype unless `dtype` is given).
fn random<'g>(n: &Node<'_, 'g>, normal: bool, like: bool) -> R<Vec<Tensor<'g>>> {
    let (shape, dtype) = if like {
        let x = n.input(0)?;
        let dtype = match n.attr("dtype") {
            Some(a) => onnx_dtype(a.i)?,
            None => x.dtype(),
        };
        (x.shape(), dtype)
    } else {
        let shape = n.ints("shape").ok_or("shape is required")?;
        let dims = shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("bad shape {shape:?}").into()))
            .collect::<R<Vec<_>>>()?;
        (
            kiln_graph::Shape::from(dims),
            onnx_dtype(n.int("dtype", 1))?,
        )
    };
    if !dtype.is_float() {
        return n.unsupported(format!("random values of {dtype}"));
    }
    let seed = seed_of(n);
    let t = if normal {
        let (mean, scale) = (n.float("mean", 0.0) as f64, n.float("scale", 1.0) as f64);
        n.g.random_normal(dtype, shape, seed, mean, scale)?
    } else {
        let (low, high) = (n.float("low", 0.0) as f64, n.float("high", 1.0) as f64);
        n.g.random_uniform(dtype, shape, seed, low, high)?
    };
    Ok(vec![t])
}

/// `Bernoulli`: 1 where a uniform sample in [0, 1) is below the
/// probability `x`, else 0, in `dtype` (default `x`'s).
fn bernoulli<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let dtype = match n.attr("dtype") {
        Some(a) => onnx_dtype(a.i)?,
        None => x.dtype(),
    };
    let ft = if x.dtype().is_float() {
        x.dtype()
    } else {
        DType::F32
    };
    let u = n.g.random_uniform(ft, x.shape(), seed_of(n), 0.0, 1.0)?;
    Ok(one(u.lt(x.cast(ft)?)?.cast(dtype)?))
}

// ------------------------------------------------- value-dependent shapes

/// `Compress` with an import-time condition: a gather of the selected
/// positions along `axis` (of the flattened input without one).
fn compress<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let cond = n.const_input(1)?.ok_or("input 'condition' is required")?;
    let cond = cond.to_f64_vec();
    let (data, a) = match n.attr("axis") {
        Some(at) => (x, axis(at.i, x.rank())?),
        None => {
            let numel: usize = fixed_shape(x)?.iter().product();
            (x.reshape(vec![numel])?, 0)
        }
    };
    let len = fixed_shape(data)?[a];
    if cond.len() > len {
        return Err(format!("condition has {} values for an axis of {len}", cond.len()).into());
    }
    let idx: Vec<i64> = (0..cond.len())
        .filter(|&i| cond[i] != 0.0)
        .map(|i| i as i64)
        .collect();
    let k = idx.len();
    Ok(one(data.gather(int_constant(n, idx, &[k])?, a as i64)?))
}

/// Orders f64 values as numpy sorts them (NaN last, -0 == 0).
fn cmp_f64(a: f64, b: f64) -> std::cmp::Ordering {
    a.partial_cmp(&b)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// `Unique` of an import-time tensor (its output shapes depend on the
/// values): `Y` is a gather of the input at the first occurrences; the
/// index outputs are constants.
fn unique<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    let value = n.const_input(0)?.ok_or("input 'X' is required")?;
    let shape = value.shape().to_vec();
    let vals = value.to_f64_vec();
    let sorted = n.int("sorted", 1) != 0;
    // The slices compared: elements (no axis), or sub-tensors along axis.
    let (data, a, keys): (Tensor<'g>, usize, Vec<Vec<f64>>) = match n.attr("axis") {
        None => (
            x.reshape(vec![vals.len()])?,
            0,
            vals.iter().map(|&v| vec![v]).collect(),
        ),
        Some(at) => {
            let a = axis(at.i, shape.len())?;
            let (outer, len): (usize, usize) = (shape[..a].iter().product(), shape[a]);
            let inner: usize = shape[a + 1..].iter().product();
            let keys = (0..len)
                .map(|i| {
                    (0..outer)
                        .flat_map(|o| {
                            let at = (o * len + i) * inner;
                            vals[at..at + inner].iter().copied()
                        })
                        .collect()
                })
                .collect();
            (x, a, keys)
        }
    };
    let cmp = |p: &Vec<f64>, q: &Vec<f64>| {
        p.iter()
            .zip(q)
            .map(|(&u, &v)| cmp_f64(u, v))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    };
    // First occurrences, in order of appearance.
    let mut firsts: Vec<usize> = Vec::new();
    let mut which: Vec<usize> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        match firsts.iter().position(|&f| cmp(&keys[f], k).is_eq()) {
            Some(u) => which.push(u),
            None => {
                which.push(firsts.len());
                firsts.push(i);
            }
        }
    }
    // Output order: sorted by key, or by first appearance.
    let mut order: Vec<usize> = (0..firsts.len()).collect();
    if sorted {
        order.sort_by(|&p, &q| cmp(&keys[firsts[p]], &keys[firsts[q]]));
    }
    let mut rank = vec![0; order.len()];
    for (pos, &u) in order.iter().enumerate() {
        rank[u] = pos;
    }
    let u = order.len();
    let indices: Vec<i64> = order.iter().map(|&o| firsts[o] as i64).collect();
    let inverse: Vec<i64> = which.iter().map(|&w| rank[w] as i64).collect();
    let mut counts = vec![0i64; u];
    for &w in &which {
        counts[rank[w]] += 1;
    }
    let idx_t = int_constant(n, indices.clone(), &[u])?;
    let y = data.gather(idx_t, a as i64)?;
    let m = inverse.len();
    Ok(vec![
        y,
        int_constant(n, indices, &[u])?,
        int_constant(n, inverse, &[m])?,
        int_constant(n, counts, &[u])?,
    ])
}

/// `NonMaxSuppression` of import-time boxes and scores (the number of
/// selected boxes depends on them), as ONNX's reference does it: per batch
/// and class, candidates above `score_threshold` by descending score (ties:
/// lower index first), each kept unless its IoU with a kept box exceeds
/// `iou_threshold`, at most `max_output_boxes_per_class`.
fn non_max_suppression<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let boxes = n.const_input(0)?.ok_or("input 'boxes' is required")?;
    let scores = n.const_input(1)?.ok_or("input 'scores' is required")?;
    let max_out = match n.const_ints(2)? {
        Some(v) => v.first().copied().unwrap_or(0).max(0) as usize,
        None => 0,
    };
    let iou_thr = n.const_scalar(3)?.unwrap_or(0.0);
    let score_thr = n.const_scalar(4)?;
    let center = n.int("center_point_box", 0) != 0;
    let (bs, ss) = (boxes.shape(), scores.shape());
    if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return Err(
            format!("boxes {bs:?} and scores {ss:?} must be [B, N, 4] and [B, C, N]").into(),
        );
    }
    let (nb, nc, nbox) = (bs[0], ss[1], bs[1]);
    let bv = boxes.to_f64_vec();
    let sv = scores.to_f64_vec();
    // (x_min, x_max, y_min, y_max) of box i of batch b.
    let corners = |b: usize, i: usize| -> [f64; 4] {
        let p = &bv[(b * nbox + i) * 4..(b * nbox + i) * 4 + 4];
        if center {
            let (hw, hh) = (p[2] / 2.0, p[3] / 2.0);
            [p[0] - hw, p[0] + hw, p[1] - hh, p[1] + hh]
        } else {
            [
                p[1].min(p[3]),
                p[1].max(p[3]),
                p[0].min(p[2]),
                p[0].max(p[2]),
            ]
        }
    };
    let suppress = |b: usize, i: usize, j: usize| -> bool {
        let (p, q) = (corners(b, i), corners(b, j));
        let (ix0, ix1) = (p[0].max(q[0]), p[1].min(q[1]));
        let (iy0, iy1) = (p[2].max(q[2]), p[3].min(q[3]));
        if ix1 <= ix0 || iy1 <= iy0 {
            return false;
        }
        let inter = (ix1 - ix0) * (iy1 - iy0);
        let a1 = (p[1] - p[0]) * (p[3] - p[2]);
        let a2 = (q[1] - q[0]) * (q[3] - q[2]);
        let union = a1 + a2 - inter;
        if inter <= 0.0 || a1 <= 0.0 || a2 <= 0.0 || union <= 0.0 {
            return false;
        }
        inter / union > iou_thr
    };
    let mut out: Vec<i64> = Vec::new();
    for b in 0..nb {
        for c in 0..nc {
            let s = &sv[(b * nc + c) * nbox..(b * nc + c + 1) * nbox];
            let mut cand: Vec<usize> = (0..nbox)
                .filter(|&i| score_thr.is_none_or(|t| s[i] > t))
                .collect();
            cand.sort_by(|&i, &j| cmp_f64(s[j], s[i]).then(i.cmp(&j)));
            let mut kept: Vec<usize> = Vec::new();
            for i in cand {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&k| !suppress(b, i, k)) {
                    kept.push(i);
                    out.extend([b as i64, c as i64, i as i64]);
                }
            }
        }
    }
    let k = out.len() / 3;
    int_constant(n, out, &[k, 3]).map(one)
}

/// `RoiAlign(X, rois, batch_indices)`: each ROI's `output_height x
/// output_width` bins, each the mean (or max) of a grid of bilinear
/// samples, as ONNX's reference computes them. Bilinear sampling separates
/// into rows and columns: per ROI, a `[samples, H]` matrix of the rows'
/// weights and a `[samples, W]` one of the columns' (a sample outside the
/// map has zero weights) make `rows @ X[b] @ columns^T`. Max mode takes
/// the largest of a sample's four weighted corners, one product per corner
/// with one-hot matrices.
fn roi_align<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, rois, bi) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let xs = fixed_shape(x)?;
    if xs.len() != 4 {
        return Err(format!("X must be [N, C, H, W], got {:?}", xs).into());
    }
    let r = fixed_shape(rois)?;
    if r.len() != 2 || r[1] != 4 {
        return Err(format!("rois must be [num_rois, 4], got {r:?}").into());
    }
    let (ph, pw) = (
        n.int("output_height", 1).max(1) as usize,
        n.int("output_width", 1).max(1) as usize,
    );
    let ratio = n.int("sampling_ratio", 0);
    let scale = f64::from(n.float("spatial_scale", 1.0));
    // Opset 10 has no coordinate_transformation_mode: it is
    // output_half_pixel's (no offset).
    let half_pixel = n.opset >= 16
        && match n.string("coordinate_transformation_mode").as_deref() {
            None | Some("half_pixel") => true,
            Some("output_half_pixel") => false,
            Some(m) => return n.unsupported(format!("coordinate_transformation_mode '{m}'")),
        };
    let max = match n.string("mode").as_deref() {
        None | Some("avg") => false,
        Some("max") => true,
        Some(m) => return n.unsupported(format!("mode '{m}'")),
    };
    let xg = x.gather(bi.cast(DType::I64)?, 0)?;
    let rois = rois.cast(DType::F64)?;
    let geo = RoiGeometry {
        size: [xs[2], xs[3]],
        pooled: [ph, pw],
        scale,
        half_pixel,
        max,
    };
    if ratio > 0 {
        let g = ratio as usize;
        return roi_bins(n, xg, rois, [g, g], &geo).map(one);
    }
    // A grid from each ROI's size: the ROIs must be known.
    let a = n.const_input(1)?.ok_or("rois are required")?;
    let v = a.to_f64_vec();
    let off = if half_pixel { 0.5 } else { 0.0 };
    let mut parts = Vec::with_capacity(r[0]);
    for i in 0..r[0] {
        let c = |k: usize| v[i * 4 + k] * scale - off;
        let (mut rw, mut rh) = (c(2) - c(0), c(3) - c(1));
        if !half_pixel {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let grid = [
            (rh / ph as f64).ceil().max(0.0) as usize,
            (rw / pw as f64).ceil().max(0.0) as usize,
        ];
        let xi = xg.slice_axis(0, i as i64, i as i64 + 1, 1)?;
        let ri = rois.slice_axis(0, i as i64, i as i64 + 1, 1)?;
        parts.push(if grid[0] == 0 || grid[1] == 0 {
            // No samples: ONNX's reference gives zeros.
            xi.slice_axis(2, 0, 1, 1)?
                .slice_axis(3, 0, 1, 1)?
                .mul(0.0)?
                .broadcast_to([1, xs[1], ph, pw])?
        } else {
            roi_bins(n, xi, ri, grid, &geo)?
        });
    }
    Ok(one(n.g.concat(&parts, 0)?))
}

/// What `RoiAlign` samples: the feature map's `[H, W]`, the bins per ROI,
/// the ROIs' scale and coordinate mode, max or mean.
struct RoiGeometry {
    size: [usize; 2],
    pooled: [usize; 2],
    scale: f64,
    half_pixel: bool,
    max: bool,
}

/// The `[R, C, ph, pw]` bins of ROIs `rois` (`[R, 4]` f64) over their
/// feature maps `xg` (`[R, C, H, W]`), with a `grid` of samples per bin.
fn roi_bins<'g>(
    n: &Node<'_, 'g>,
    xg: Tensor<'g>,
    rois: Tensor<'g>,
    grid: [usize; 2],
    geo: &RoiGeometry,
) -> R<Tensor<'g>> {
    let dtype = xg.dtype();
    let off = if geo.half_pixel { 0.5 } else { 0.0 };
    let col = |k: i64| -> R<Tensor<'g>> {
        Ok(rois.slice_axis(1, k, k + 1, 1)?.mul(geo.scale)?.sub(off)?)
    };
    // Per axis (rows, then columns): the samples' one-hot corner matrices
    // and weights.
    let mut axes = Vec::with_capacity(2);
    // A ROI is [x1, y1, x2, y2]: rows from columns 1 and 3, columns from
    // 0 and 2.
    for (d, (first, last)) in [(1, 3), (0, 2)].into_iter().enumerate() {
        let start = col(first)?;
        let mut extent = col(last)?.sub(start)?;
        if !geo.half_pixel {
            extent = extent.maximum(1.0)?;
        }
        let (bins, g, size) = (geo.pooled[d], grid[d], geo.size[d]);
        let bin = extent.div(bins as f64)?;
        let frac: Vec<f64> = (0..bins * g)
            .map(|s| (s / g) as f64 + ((s % g) as f64 + 0.5) / g as f64)
            .collect();
        let frac = constant(n, &frac, &[1, bins * g], DType::F64)?;
        let pos = start.add(bin.mul(frac)?)?;
        let outside = pos.lt(-1.0)?.or(pos.gt(size as f64)?)?;
        let last = (size - 1) as f64;
        let p = pos.maximum(0.0)?.minimum(last)?;
        let lo = p.floor()?;
        let hi = lo.add(1.0)?.minimum(last)?;
        let frac_hi = p.sub(lo)?;
        let zero = n.scalar(0.0, DType::F64)?;
        let w_hi = n.g.select(outside, zero, frac_hi)?;
        let w_lo = n.g.select(outside, zero, frac_hi.neg()?.add(1.0)?)?;
        let at = n.g.iota(DType::F64, [1, 1, size], 2)?;
        let hot = |i: Tensor<'g>| -> R<Tensor<'g>> { Ok(i.unsqueeze(2)?.eq(at)?.cast(dtype)?) };
        axes.push([(hot(lo)?, w_lo), (hot(hi)?, w_hi)]);
    }
    // rows [R, S, H] and columns [R, S, W] around the maps [R, C, H, W].
    let around = |rows: Tensor<'g>, cols: Tensor<'g>| -> R<Tensor<'g>> {
        let rows = rows.unsqueeze(1)?;
        let cols = cols.permute(&[0, 2, 1])?.unsqueeze(1)?;
        Ok(rows.matmul(xg)?.matmul(cols)?)
    };
    let weights = |wr: Tensor<'g>, wc: Tensor<'g>| -> R<Tensor<'g>> {
        // [R, 1, SY, 1] * [R, 1, 1, SX]
        Ok(wr
            .unsqueeze(1)?
            .unsqueeze(3)?
            .mul(wc.unsqueeze(1)?.unsqueeze(2)?)?
            .cast(dtype)?)
    };
    let [(rlo, wrlo), (rhi, wrhi)] = axes[0];
    let [(clo, wclo), (chi, wchi)] = axes[1];
    let r = xg.shape().0[0].fixed().ok_or("a fixed ROI count")?;
    let c = xg.shape().0[1].fixed().ok_or("a fixed channel count")?;
    let split = [r, c, geo.pooled[0], grid[0], geo.pooled[1], grid[1]];
    let samples = if geo.max {
        let mut best: Option<Tensor<'g>> = None;
        for (rows, wr) in [(rlo, wrlo), (rhi, wrhi)] {
            for (cols, wc) in [(clo, wclo), (chi, wchi)] {
                let v = around(rows, cols)?.mul(weights(wr, wc)?)?;
                best = Some(match best {
                    None => v,
                    Some(b) => b.maximum(v)?,
                });
            }
        }
        best.ok_or("no corners")?
    } else {
        let mix = |(lo, wlo): (Tensor<'g>, Tensor<'g>),
                   (hi, whi): (Tensor<'g>, Tensor<'g>)|
         -> R<Tensor<'g>> {
            let wl = wlo.unsqueeze(2)?.cast(dtype)?;
            let wh = whi.unsqueeze(2)?.cast(dtype)?;
            Ok(lo.mul(wl)?.add(hi.mul(wh)?)?)
        };
        around(
            mix((rlo, wrlo), (rhi, wrhi))?,
            mix((clo, wclo), (chi, wchi))?,
        )?
    };
    let binned = samples.reshape(split)?;
    if geo.max {
        Ok(binned.max(&[3, 5], false)?)
    } else {
        Ok(binned.mean(&[3, 5], false)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kiln_graph::{Array, GraphBuilder};

    use super::super::{find, Input, Node};
    use crate::proto::{AttributeProto, NodeProto};

    fn float_attr(name: &str, f: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            f,
            r#type: 1,
            ..Default::default()
        }
    }

    fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints,
            r#type: 7,
            ..Default::default()
        }
    }

    /// Converts one node with constant inputs and evaluates its first output.
    fn eval(op: &str, attrs: Vec<AttributeProto>, inputs: Vec<Array>) -> Vec<f64> {
        let g = GraphBuilder::new();
        let proto = NodeProto {
            input: (0..inputs.len()).map(|i| format!("in{i}")).collect(),
            output: vec!["y".into()],
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        };
        let ins = inputs
            .into_iter()
            .map(|a| {
                Some(Input {
                    t: g.constant(a.clone()).unwrap(),
                    value: Some(std::rc::Rc::new(a)),
                })
            })
            .collect();
        let node = Node::new(&g, &proto, 22, ins);
        let outs = find(op).unwrap()(&node).unwrap();
        let graph = g.graph();
        let run = kiln_graph::interp::run(
            &graph,
            &kiln_graph::interp::RunInputs {
                feeds: &HashMap::new(),
                variables: &HashMap::new(),
                bindings: &kiln_graph::Bindings::new(),
            },
            &[outs[0].id()],
        )
        .unwrap();
        run.fetched[0].to_f64_vec()
    }

    #[test]
    fn random_uniform_stays_in_range() {
        let v = eval(
            "RandomUniform",
            vec![
                ints_attr("shape", vec![1000]),
                float_attr("low", 2.0),
                float_attr("high", 3.0),
            ],
            vec![],
        );
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| (2.0..3.0).contains(&x)));
        let mean = v.iter().sum::<f64>() / 1000.0;
        assert!((mean - 2.5).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn random_normal_like_has_its_moments() {
        let x = Array::from_vec(vec![4000], vec![0f32; 4000]).unwrap();
        let v = eval(
            "RandomNormalLike",
            vec![float_attr("mean", 5.0), float_attr("scale", 0.5)],
            vec![x],
        );
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 5.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.05, "std {}", var.sqrt());
    }

    #[test]
    fn bernoulli_follows_the_probabilities() {
        let p: Vec<f32> = (0..4000)
            .map(|i| if i % 2 == 0 { 0.2 } else { 1.0 })
            .collect();
        let v = eval(
            "Bernoulli",
            vec![float_attr("seed", 5.0)],
            vec![Array::from_vec(vec![4000], p).unwrap()],
        );
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
        assert!(v.iter().skip(1).step_by(2).all(|&x| x == 1.0));
        let ones = v.iter().step_by(2).filter(|&&x| x == 1.0).count() as f64 / 2000.0;
        assert!((ones - 0.2).abs() < 0.04, "fraction {ones}");
    }
}

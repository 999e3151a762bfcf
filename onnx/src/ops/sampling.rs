//! Sampling a feature map at computed coordinates:
//!
//! - `GridSample` (modes linear/bilinear, nearest, cubic/bicubic; padding
//!   zeros, border, reflection; `align_corners`; any number of spatial
//!   dims): sample coordinates are computed in the graph from the run-time
//!   grid (floor, clamp, reflection arithmetic), every tap's flat index
//!   into `[N * spatial, C]` goes into one gather, and the taps' weights
//!   (fractional parts, cubic coefficients, in-range masks) sum them.
//! - `AffineGrid` (2-D and 3-D): a constant base grid times `theta`.
//! - `RoiAlign` (modes avg and max, `half_pixel` and `output_half_pixel`):
//!   bilinear sampling as per-ROI interpolation matrices (rows of the
//!   feature map, columns) multiplied around the gathered feature maps;
//!   `sampling_ratio` 0 (a grid from each ROI's size) needs the ROIs at
//!   import time.

use kiln_graph::{DType, Tensor};

use super::{fixed_shape, Converter, Node, R};
use crate::ops::tables::{constant, one, strides, unravel};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("GridSample", grid_sample),
    ("AffineGrid", affine_grid),
    ("RoiAlign", roi_align),
];

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
pub(crate) fn reflect<'g>(v: Tensor<'g>, lo: f64, hi: f64) -> R<Tensor<'g>> {
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
pub(crate) fn cubic_coeffs<'g>(t: Tensor<'g>) -> R<[Tensor<'g>; 4]> {
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
    let sample = Sampling {
        mode,
        padding,
        align,
    };
    let mut per_dim: Vec<Vec<Tap<'g>>> = Vec::with_capacity(r);
    for (i, (&d, &stride)) in dims.iter().zip(&st).enumerate() {
        let d = d as f64;
        // Spatial dim i reads grid component r - 1 - i (x is the last dim).
        let comp = g
            .slice_axis(-1, (r - 1 - i) as i64, (r - i) as i64, 1)?
            .squeeze(-1)?;
        per_dim.push(dim_taps(n, comp, d, stride, &sample, ft)?);
    }

    // Every combination of taps: its flat index and weight.
    let mut bshape = vec![nb];
    bshape.extend_from_slice(out);
    let batch =
        n.g.iota(DType::I64, bshape.clone(), 0)?
            .mul(spatial as i64)?;
    let mut combos: Vec<Tap<'g>> = vec![(batch, None)];
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

/// A tap of a sample: its flat offset, and its weight (`None`: 1).
type Tap<'g> = (Tensor<'g>, Option<Tensor<'g>>);

/// How `GridSample` samples.
struct Sampling {
    mode: Interp,
    padding: Padding,
    align: bool,
}

/// The taps along one spatial dim of size `d` (and flat stride `stride`)
/// at the grid's component `comp` (in [-1, 1]), in float type `ft`.
fn dim_taps<'g>(
    n: &Node<'_, 'g>,
    comp: Tensor<'g>,
    d: f64,
    stride: usize,
    sample: &Sampling,
    ft: DType,
) -> R<Vec<Tap<'g>>> {
    let (mode, padding, align) = (sample.mode, sample.padding, sample.align);
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
    let taps: Vec<Tap<'g>> = match mode {
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
    Ok(list)
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

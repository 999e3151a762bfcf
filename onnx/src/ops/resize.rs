//! `Resize` (opsets 10 to 19) and `Upsample` (7 to 9). Resizing is
//! separable, and every output position's source taps and weights depend
//! only on the (static) sizes, so they are computed here, at import time,
//! axis by axis, with the spec's coordinate transformations, nearest
//! rounding, linear and cubic kernels, antialiasing, exclude_outside and
//! tf_crop_and_resize's extrapolation.
//!
//! Each axis becomes, per tap slot, a gather along the axis (one constant
//! input index per output position) times a constant weight per output
//! position, summed over the slots (2 for linear, 4 for cubic, the stretched
//! footprint when antialiasing; nearest is a single gather). Every output
//! reads only its own taps, so a NaN or infinity in the input reaches only
//! the outputs whose taps read it, and the cost is O(taps) per output.
//!
//! Which taps: those ONNX Runtime reads, taps of weight zero included (so
//! NaN and infinity land where they land there), from the coordinate
//! computed in `f32` as ONNX Runtime computes it: nearest rounds it; linear
//! and cubic read 2 and 4 samples around it; antialiasing reads the
//! stretched kernel's window of samples (as Pillow does). Along the axes
//! ONNX Runtime interpolates together, an axis of scale 1 is interpolated
//! too (its zero-weight taps spread NaN as there). Where ONNX Runtime and
//! ONNX's reference disagree on values, the spec's text decides
//! (pytorch_half_pixel and tf_crop_and_resize with one output position;
//! tf_crop_and_resize dividing by the integer output length);
//! align_corners divides by the fractional output width `scale * input`,
//! as the reference and the ONNX conformance data do.

use kiln_graph::{Array, Tensor};

use super::{Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("Resize", resize), ("Upsample", upsample)];

/// How output positions map to input ones.
struct Spec {
    mode: String,
    coord: String,
    nearest: String,
    cubic_a: f64,
    exclude_outside: bool,
    antialias: bool,
    extrapolation: f64,
}

/// The cubic kernel's weights (coefficient `a`) of the four samples around
/// a position `r` (in `[0, 1)`) past the second of them.
fn cubic_coeffs(a: f64, r: f64) -> Vec<f64> {
    let q = 1.0 - r;
    vec![
        ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
        ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
        ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
        ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
    ]
}

/// One output position along an axis: its input taps (indices already in
/// range) and their weights, or `None` where it lies outside the crop
/// (tf_crop_and_resize: the extrapolation value).
type Row = Option<(Vec<usize>, Vec<f64>)>;

/// The original coordinate of output position `y`, computed in `f32` in the
/// order ONNX Runtime computes it (so that a position that lands exactly on
/// an input sample there lands on it here too, and picks the same taps),
/// with the spec's formulas. `align_corners` divides by the fractional
/// output width `scale * input` as ONNX's reference and its conformance
/// data do. Returns the coordinate and whether it lies outside the crop.
fn coordinate_f32(
    s: &Spec,
    y: usize,
    input: usize,
    output: usize,
    scale: f64,
    roi: Option<(f64, f64)>,
) -> R<(f64, bool)> {
    let yf = y as f32;
    let sc = scale as f32;
    let len = input as f32;
    let out = output as f32;
    let x = match s.coord.as_str() {
        "align_corners" => {
            let out_w = sc * len;
            if out_w == 1.0 {
                0.0
            } else {
                yf * (len - 1.0) / (out_w - 1.0)
            }
        }
        "asymmetric" => yf / sc,
        "tf_crop_and_resize" => {
            let (r0, r1) = roi.ok_or("tf_crop_and_resize needs roi")?;
            let (r0, r1) = (r0 as f32, r1 as f32);
            let x = if output > 1 {
                r0 * (len - 1.0) + (yf * (r1 - r0) * (len - 1.0)) / (out - 1.0)
            } else {
                (0.5 * (r0 as f64 + r1 as f64) * (len as f64 - 1.0)) as f32
            };
            let outside = x < 0.0 || x > len - 1.0;
            return Ok((x as f64, outside));
        }
        "pytorch_half_pixel" => {
            if output > 1 {
                (yf + 0.5) / sc - 0.5
            } else {
                0.0
            }
        }
        "half_pixel" => (yf + 0.5) / sc - 0.5,
        "half_pixel_symmetric" => {
            let adjustment = out / (sc * len);
            let offset = len / 2.0 * (1.0 - adjustment);
            (offset as f64 + (yf as f64 + 0.5) / sc as f64 - 0.5) as f32
        }
        other => return Err(format!("unknown coordinate_transformation_mode '{other}'").into()),
    };
    Ok((x as f64, false))
}

/// The taps of a nearest, linear or cubic (not antialiased) output position
/// at original coordinate `x`: nearest's one sample, rounded per
/// `nearest_mode` and clamped into the input; else the taps ONNX Runtime reads, weights included
/// that happen to be zero (a NaN or infinity there still reaches the
/// output, as it does there). Linear clamps `x` into the input and reads
/// `floor(x)` and the next sample (the last sample twice, halves, at the
/// end); cubic reads `floor(x) - 1 ..= floor(x) + 2`, clamped into the
/// input (with `exclude_outside`, those outside weigh zero and the rest are
/// renormalized).
fn interpolation_taps(s: &Spec, x: f64, input: usize) -> R<(Vec<usize>, Vec<f64>)> {
    let last = input as f64 - 1.0;
    if s.mode == "nearest" {
        let i = match s.nearest.as_str() {
            // Halfway rounds down, else to the nearest.
            "round_prefer_floor" if x == x.trunc() + 0.5 => x.floor(),
            "round_prefer_floor" | "round_prefer_ceil" => x.round(),
            "floor" => x.floor(),
            "ceil" => x.ceil(),
            other => return Err(format!("unknown nearest_mode '{other}'").into()),
        };
        return Ok((vec![i.clamp(0.0, last) as usize], vec![1.0]));
    }
    if s.mode == "linear" {
        let x = x.clamp(0.0, last);
        let x1 = (x as usize).min(input - 1);
        let x2 = (x1 + 1).min(input - 1);
        if x1 == x2 {
            return Ok((vec![x1, x1], vec![0.5, 0.5]));
        }
        return Ok((vec![x1, x2], vec![x2 as f64 - x, x - x1 as f64]));
    }
    let xi = x.floor();
    let c = cubic_coeffs(s.cubic_a, x - xi);
    let first = xi as i64 - 1;
    let taps = (0..c.len() as i64)
        .map(|k| (first + k).clamp(0, input as i64 - 1) as usize)
        .collect();
    let mut weights = c;
    if s.exclude_outside {
        // Taps outside weigh zero (still read, clamped, as ONNX Runtime
        // reads them: an infinity there gives NaN), the rest renormalized.
        for (k, w) in weights.iter_mut().enumerate() {
            let i = first + k as i64;
            if i < 0 || i >= input as i64 {
                *w = 0.0;
            }
        }
        let sum: f64 = weights.iter().sum();
        if sum != 0.0 {
            weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
    Ok((taps, weights))
}

/// For each output position along one axis: its taps and weights (see
/// [`Row`]).
fn taps(s: &Spec, input: usize, output: usize, scale: f64, roi: Option<(f64, f64)>) -> R<Vec<Row>> {
    if !matches!(s.mode.as_str(), "nearest" | "linear" | "cubic") {
        return Err(format!("unknown mode '{}'", s.mode).into());
    }
    // Antialiasing stretches the linear and cubic kernels only.
    let antialias = s.antialias && s.mode != "nearest";
    // The number of taps of a row, as the table's width: 1 (nearest), 2
    // (linear), 4 (cubic), the stretched window when antialiasing.
    let width = if antialias {
        antialias_support(s, scale).1
    } else {
        4
    };
    super::table_len("the resize taps", &[output, width.max(16)])?;
    let mut rows = Vec::with_capacity(output);
    for y in 0..output {
        let (x, outside) = coordinate_f32(s, y, input, output, scale, roi)?;
        rows.push(if outside {
            None
        } else if antialias {
            // ONNX Runtime centres an axis of scale 1 on the output index.
            let x = if scale as f32 == 1.0 { y as f64 } else { x };
            Some(antialias_taps(s, x, input, scale))
        } else {
            Some(interpolation_taps(s, x, input)?)
        });
    }
    Ok(rows)
}

/// The antialiased kernel's half-width in input samples (the kernel is
/// stretched by `1 / scale` when downsampling), and the most taps a row
/// can have.
/// In `f32`, as ONNX Runtime computes it (the window's ends are floors of
/// `f32` sums there).
fn antialias_support(s: &Spec, scale: f64) -> (f32, usize) {
    let half: f32 = if s.mode == "cubic" { 2.0 } else { 1.0 };
    let stretch = 1.0 / scale as f32;
    let support = if stretch >= 1.0 { half * stretch } else { half };
    (support, support.ceil() as usize * 2 + 1)
}

/// The taps of an antialiased (linear or cubic) output position at original
/// coordinate `x`, as ONNX Runtime and Pillow window them: every input
/// sample within the stretched kernel's support around `x` (weights of
/// zero at the window's ends included), weighted by the kernel at
/// `(i - x) * min(scale, 1)` and normalized over the whole window; the
/// weights of the window's samples outside the input fold onto the edge
/// samples (their clamped values), or with `exclude_outside` are dropped.
fn antialias_taps(s: &Spec, x: f64, input: usize, scale: f64) -> (Vec<usize>, Vec<f64>) {
    let a = s.cubic_a;
    let kernel = |t: f64| {
        let t = t.abs();
        if s.mode == "cubic" {
            if t < 1.0 {
                ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
            } else if t < 2.0 {
                (((t - 5.0) * t + 8.0) * t - 4.0) * a
            } else {
                0.0
            }
        } else if t < 1.0 {
            1.0 - t
        } else {
            0.0
        }
    };
    let (support, window) = antialias_support(s, scale);
    let inv = scale.min(1.0);
    let center32 = 0.5 + x as f32;
    let lo = (center32 - support + 0.5).floor() as i64;
    let hi = lo + (((center32 + support + 0.5).floor() as i64) - lo).clamp(0, window as i64);
    let center = center32 as f64;
    let (lo_in, hi_in) = (lo.clamp(0, input as i64), hi.clamp(0, input as i64));
    let mut weights = vec![0.0; (hi_in - lo_in).max(0) as usize];
    let mut total = 0.0;
    for i in lo..hi {
        let w = kernel((i as f64 - center + 0.5) * inv);
        let inside = i >= 0 && i < input as i64;
        if !inside && s.exclude_outside {
            continue;
        }
        total += w;
        if weights.is_empty() {
            continue;
        }
        let j = i.clamp(lo_in, hi_in - 1) - lo_in;
        weights[j as usize] += w;
    }
    if total != 0.0 {
        weights.iter_mut().for_each(|w| *w /= total);
    }
    let taps = (lo_in..hi_in).map(|i| i as usize).collect();
    (taps, weights)
}

/// Pads a row to `n` taps without changing what it computes: the tap of
/// largest weight is split in two halves (`w/2 * v + w/2 * v == w * v`),
/// so no sample is read that the row did not read already. A row with no
/// taps (an antialiasing window wholly outside the input) reads sample 0
/// with weight 0.
fn pad_row(taps: &mut Vec<usize>, weights: &mut Vec<f64>, n: usize) {
    if taps.is_empty() {
        taps.push(0);
        weights.push(0.0);
    }
    while taps.len() < n {
        let mut j = 0;
        for k in 1..weights.len() {
            if weights[k].abs() > weights[j].abs() {
                j = k;
            }
        }
        weights[j] /= 2.0;
        taps.push(taps[j]);
        weights.push(weights[j]);
    }
}

/// Resizes `x` along `axis` to `output` positions: for each tap slot, a
/// gather of the input along `axis` (a constant index per output position)
/// times a constant weight per output position, summed over the slots.
/// Each output reads only its own taps, so a NaN or infinity reaches only
/// the outputs whose taps read it. Nearest is a single gather.
fn resize_axis<'g>(
    n: &Node<'_, 'g>,
    x: Tensor<'g>,
    axis: usize,
    output: usize,
    scale: f64,
    s: &Spec,
    roi: Option<(f64, f64)>,
) -> R<Tensor<'g>> {
    let input = x.shape().0[axis]
        .fixed()
        .ok_or("resized dims must be fixed sizes")?;
    if input == 0 {
        return Err("resizing an empty dim".into());
    }
    let mut rows = taps(s, input, output, scale, roi)?;
    let dtype = x.dtype();
    let rank = x.rank();
    let width = rows
        .iter()
        .flatten()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(1)
        .max(1);
    for (t, w) in rows.iter_mut().flatten() {
        pad_row(t, w, width);
    }
    // Gathers along the last axis pick single elements; along another axis
    // they copy whole rows, several times faster: interpolate the last
    // axis as the one before it, between two transposes.
    let swap: Vec<usize> = if axis + 1 == rank && rank >= 2 && s.mode != "nearest" {
        let mut p: Vec<usize> = (0..rank).collect();
        p.swap(rank - 2, rank - 1);
        p
    } else {
        Vec::new()
    };
    let (x, axis) = if swap.is_empty() {
        (x, axis)
    } else {
        (x.permute(&swap)?, rank - 2)
    };
    let mut shape = vec![1usize; rank];
    shape[axis] = output;
    let mut y: Option<Tensor<'g>> = None;
    for k in 0..width {
        let idx: Vec<i64> = rows
            .iter()
            .map(|r| r.as_ref().map_or(0, |(t, _)| t[k] as i64))
            .collect();
        let idx = n.constant(Array::from_vec(vec![output], idx).ok_or("indices")?)?;
        let g = x.gather(idx, axis as i64)?;
        if s.mode == "nearest" {
            y = Some(g);
            break;
        }
        let w: Vec<f64> = rows
            .iter()
            .map(|r| r.as_ref().map_or(0.0, |(_, w)| w[k]))
            .collect();
        let w = Array::from_vec(shape.clone(), w).ok_or("weights")?;
        let term = g.mul(n.constant(w)?.cast(dtype)?)?;
        y = Some(match y {
            None => term,
            Some(acc) => acc.add(term)?,
        });
    }
    let mut y = y.ok_or("no resize taps")?;
    if rows.iter().any(|r| r.is_none()) {
        let mask: Vec<bool> = rows.iter().map(|r| r.is_none()).collect();
        let mask = n.constant(Array::from_vec(shape, mask).ok_or("mask")?)?;
        let e = n.scalar(s.extrapolation, dtype)?;
        y = n.g.select(mask, e, y)?;
    }
    if !swap.is_empty() {
        y = y.permute(&swap)?;
    }
    Ok(y)
}

fn floats(a: &Array) -> Vec<f64> {
    a.to_f64_vec()
}

/// The axes ONNX Runtime interpolates together for linear and cubic
/// (bilinear over the last two axes of 2-D and 4-D NCHW input, or axes 1
/// and 2 of 4-D NHWC; trilinear over the last three of 3-D and 5-D): it
/// interpolates each of them, ones of scale 1 included, and a tap of weight
/// zero still spreads a NaN or infinity along such an axis (as in ONNX's
/// reference, which interpolates every axis). Resizing along them all,
/// whenever one of the axes is resized, puts NaN where it puts it. Other
/// axes of scale 1 are left alone.
fn joint_axes(s: &Spec, rank: usize, scales: &[f64]) -> Vec<usize> {
    if s.antialias || !(s.mode == "linear" || s.mode == "cubic") {
        return Vec::new();
    }
    let one = |a: usize| (scales[a] - 1.0).abs() < 1e-12;
    match rank {
        2 => vec![0, 1],
        4 if one(0) && one(1) => vec![2, 3],
        4 if one(0) && one(3) => vec![1, 2],
        3 if s.mode == "linear" => vec![0, 1, 2],
        5 if s.mode == "linear" && one(0) && one(1) => vec![2, 3, 4],
        _ => Vec::new(),
    }
}

/// Resizes `x` to `sizes` (with `scales` as the coordinate scales).
fn apply<'g>(
    n: &Node<'_, 'g>,
    x: Tensor<'g>,
    scales: &[f64],
    sizes: &[usize],
    s: &Spec,
    roi: Option<&[f64]>,
) -> R<Vec<Tensor<'g>>> {
    let rank = x.rank();
    let identity: Vec<bool> = (0..rank)
        .map(|axis| {
            let r = roi.map(|r| (r[axis], r[axis + rank]));
            x.shape().0[axis].fixed() == Some(sizes[axis])
                && (scales[axis] - 1.0).abs() < 1e-12
                && r.is_none_or(|(a, b)| a.abs() < 1e-12 && (b - 1.0).abs() < 1e-12)
        })
        .collect();
    // An axis of length 1 kept at length 1 reads its one sample whatever
    // the scale (all taps clamp to it, weights summing to 1): when every
    // axis is such or an identity, the output is the input, as ONNX Runtime
    // makes it (it copies when the output shape is the input's).
    let copy = s.coord != "tf_crop_and_resize"
        && (0..rank).all(|a| identity[a] || (x.shape().0[a].fixed() == Some(1) && sizes[a] == 1));
    if copy {
        return Ok(vec![x]);
    }
    let joint = joint_axes(s, rank, scales);
    let any = identity.iter().any(|&i| !i);
    // Shrinking axes first and growing ones last keeps the intermediate
    // tensors small; among equal ratios the last axis (the dearer one,
    // between transposes) goes first. The order changes no NaN position:
    // an output reads the product of its taps along every axis either way.
    let mut order: Vec<usize> = (0..rank)
        .filter(|&a| !identity[a] || (any && joint.contains(&a)))
        .collect();
    let ratio = |a: usize| sizes[a] as f64 / x.shape().0[a].fixed().unwrap_or(1).max(1) as f64;
    order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)).then(b.cmp(&a)));
    let mut y = x;
    for axis in order {
        let r = roi.map(|r| (r[axis], r[axis + rank]));
        y = resize_axis(n, y, axis, sizes[axis], scales[axis], s, r)?;
    }
    if y.dtype() != x.dtype() {
        y = y.cast(x.dtype())?;
    }
    Ok(vec![y])
}

fn resize<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if !x.dtype().is_float() {
        return n.unsupported(format!("Resize of {} tensors", x.dtype()));
    }
    let rank = x.rank();
    let dims: Vec<usize> = super::fixed_shape(x)?;
    let s = Spec {
        mode: n.string("mode").unwrap_or_else(|| "nearest".into()),
        coord: n
            .string("coordinate_transformation_mode")
            .unwrap_or_else(|| {
                if n.opset < 11 {
                    "asymmetric"
                } else {
                    "half_pixel"
                }
                .into()
            }),
        nearest: n.string("nearest_mode").unwrap_or_else(|| {
            if n.opset < 11 {
                "floor"
            } else {
                "round_prefer_floor"
            }
            .into()
        }),
        cubic_a: n.float("cubic_coeff_a", -0.75) as f64,
        exclude_outside: n.int("exclude_outside", 0) != 0,
        antialias: n.int("antialias", 0) != 0,
        extrapolation: n.float("extrapolation_value", 0.0) as f64,
    };
    let (roi, scales, sizes) = if n.opset < 11 {
        (None, n.const_input(1)?, None)
    } else {
        (n.const_input(1)?, n.const_input(2)?, n.const_input(3)?)
    };
    let axes: Vec<usize> = match n.ints("axes") {
        Some(a) => a.iter().map(|&v| super::axis(v, rank)).collect::<R<_>>()?,
        None => (0..rank).collect(),
    };
    let roi_full = roi.filter(|r| !r.is_empty()).map(|r| {
        let v = floats(&r);
        if axes.len() == rank {
            v
        } else {
            let mut full = vec![0.0; rank];
            full.extend(vec![1.0; rank]);
            for (i, &a) in axes.iter().enumerate() {
                full[a] = v[i];
                full[a + rank] = v[i + axes.len()];
            }
            full
        }
    });
    let mut scale = vec![1.0; rank];
    let mut size = dims.clone();
    match (
        sizes.filter(|s| !s.is_empty()),
        scales.filter(|s| !s.is_empty()),
    ) {
        (Some(sz), _) => {
            let sz = super::ints_of(&sz)?;
            if sz.len() != axes.len() {
                return Err(
                    format!("sizes has {} values for {} axes", sz.len(), axes.len()).into(),
                );
            }
            for (&a, &v) in axes.iter().zip(&sz) {
                size[a] = v.max(0) as usize;
                scale[a] = v as f64 / dims[a] as f64;
            }
            let policy = n
                .string("keep_aspect_ratio_policy")
                .unwrap_or_else(|| "stretch".into());
            if policy != "stretch" {
                let pick = axes.iter().map(|&a| scale[a]);
                let s1 = match policy.as_str() {
                    "not_larger" => pick.fold(f64::INFINITY, f64::min),
                    "not_smaller" => pick.fold(f64::NEG_INFINITY, f64::max),
                    other => return Err(format!("keep_aspect_ratio_policy '{other}'").into()),
                };
                for &a in &axes {
                    scale[a] = s1;
                    size[a] = (s1 * dims[a] as f64 + 0.5) as usize;
                }
            }
        }
        (None, Some(sc)) => {
            let sc = floats(&sc);
            if sc.len() != axes.len() {
                return Err(
                    format!("scales has {} values for {} axes", sc.len(), axes.len()).into(),
                );
            }
            for (&a, &v) in axes.iter().zip(&sc) {
                scale[a] = v;
                size[a] = (v * dims[a] as f64) as usize;
            }
        }
        (None, None) => return Err("neither scales nor sizes is given".into()),
    }
    apply(n, x, &scale, &size, &s, roi_full.as_deref())
}

/// `Upsample`: nearest (floor) or linear resizing with asymmetric
/// coordinates by scales (an attribute in opset 7, an input after).
fn upsample<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let x = n.input(0)?;
    if !x.dtype().is_float() {
        return n.unsupported(format!("Upsample of {} tensors", x.dtype()));
    }
    let dims = super::fixed_shape(x)?;
    let scales: Vec<f64> = match n.floats("scales") {
        Some(s) => s.iter().map(|&v| v as f64).collect(),
        None => floats(&*n.const_input(1)?.ok_or("no scales")?),
    };
    if scales.len() != dims.len() {
        return Err(format!("{} scales for rank {}", scales.len(), dims.len()).into());
    }
    let mode = n.string("mode").unwrap_or_else(|| "nearest".into());
    let s = Spec {
        mode: if mode == "bilinear" {
            "linear".into()
        } else {
            mode
        },
        coord: "asymmetric".into(),
        nearest: "floor".into(),
        cubic_a: -0.75,
        exclude_outside: false,
        antialias: false,
        extrapolation: 0.0,
    };
    let sizes: Vec<usize> = dims
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s) as usize)
        .collect();
    apply(n, x, &scales, &sizes, &s, None)
}

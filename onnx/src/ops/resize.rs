//! `Resize` (opsets 10 to 19) and `Upsample` (7 to 9). Resizing is
//! separable, and every output position's source taps and weights depend
//! only on the (static) sizes, so they are computed here, at import time,
//! exactly as ONNX's reference computes them (coordinate transformation,
//! nearest rounding, linear and cubic kernels, antialiasing, exclude_outside,
//! tf_crop_and_resize's extrapolation), axis by axis: a gather where each
//! output copies one input position (nearest), else a product with the
//! constant `[in, out]` weight matrix along that axis.

use kiln_graph::{Array, Tensor};

use super::{Converter, Kiln, Node, R};

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

/// The kernel weights of a position `ratio` past its left neighbour.
fn coeffs(s: &Spec, ratio: f64, scale: f64) -> R<Vec<f64>> {
    Ok(match s.mode.as_str() {
        "nearest" => {
            if ratio.fract() == 0.0 {
                return Ok(vec![0.0, 1.0]);
            }
            let right = match s.nearest.as_str() {
                "round_prefer_floor" => ratio > 0.5,
                "round_prefer_ceil" => ratio >= 0.5,
                "floor" => false,
                "ceil" => true,
                other => return Err(format!("unknown nearest_mode '{other}'")),
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        "linear" if s.antialias => {
            let scale = scale.min(1.0);
            let start = (-1.0 / scale).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> = (start..start + footprint)
                .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        "linear" => vec![1.0 - ratio, ratio],
        "cubic" if s.antialias => {
            let a = s.cubic_a;
            let scale = scale.min(1.0);
            let f = |x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let start = (-2.0 / scale).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end)
                .map(|i| f(scale * (i as f64 - ratio)))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        "cubic" => {
            let a = s.cubic_a;
            let r = ratio;
            let q = 1.0 - r;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
            ]
        }
        other => return Err(format!("unknown mode '{other}'")),
    })
}

/// For each output position along one axis: its taps (clamped input
/// indices) and weights, and whether it lies outside the input
/// (tf_crop_and_resize: the extrapolation value).
#[allow(clippy::type_complexity)]
fn taps(
    s: &Spec,
    input: usize,
    output: usize,
    scale: f64,
    roi: Option<(f64, f64)>,
) -> R<Vec<(Vec<usize>, Vec<f64>, bool)>> {
    let out_w = scale * input as f64;
    // Each row holds a few taps and weights: counted as 16 values.
    super::table_len("the resize taps", &[output, 16])?;
    let mut rows = Vec::with_capacity(output);
    for y in 0..output {
        let yf = y as f64;
        let mut outside = false;
        let x = match s.coord.as_str() {
            "align_corners" => {
                if out_w == 1.0 {
                    0.0
                } else {
                    yf * (input as f64 - 1.0) / (out_w - 1.0)
                }
            }
            "asymmetric" => yf / scale,
            "tf_crop_and_resize" => {
                let (r0, r1) = roi.ok_or("tf_crop_and_resize needs roi")?;
                let mut x = if out_w == 1.0 {
                    (r1 - r0) * (input as f64 - 1.0) / 2.0
                } else {
                    yf * (r1 - r0) * (input as f64 - 1.0) / (out_w - 1.0)
                };
                x += r0 * (input as f64 - 1.0);
                outside = x < 0.0 || x > input as f64 - 1.0;
                x
            }
            "pytorch_half_pixel" => {
                if out_w == 1.0 {
                    -0.5
                } else {
                    (yf + 0.5) / scale - 0.5
                }
            }
            "half_pixel" => (yf + 0.5) / scale - 0.5,
            "half_pixel_symmetric" => {
                let adjustment = output as f64 / out_w;
                let center = input as f64 / 2.0;
                center * (1.0 - adjustment) + (yf + 0.5) / scale - 0.5
            }
            other => return Err(format!("unknown coordinate_transformation_mode '{other}'")),
        };
        let xi = x.floor();
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut c = coeffs(s, ratio, scale)?;
        let n = c.len() as i64;
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor() as i64;
        let frac = xp - p as f64;
        let offset = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = p + offset;
        let idx: Vec<i64> = (0..n).map(|k| start + k - pad).collect();
        if s.exclude_outside {
            for (k, &i) in idx.iter().enumerate() {
                if i < 0 || i >= input as i64 {
                    c[k] = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            c.iter_mut().for_each(|v| *v /= sum);
        }
        let clamped = idx
            .iter()
            .map(|&i| i.clamp(0, input as i64 - 1) as usize)
            .collect();
        rows.push((clamped, c, outside));
    }
    Ok(rows)
}

/// Resizes `x` along `axis` to `output` positions.
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
    let rows = taps(s, input, output, scale, roi)?;
    let dtype = x.dtype();
    let one_hot = rows.iter().all(|(_, c, out)| {
        !out && c.iter().filter(|&&v| v != 0.0).count() <= 1 && c.contains(&1.0)
    });
    if one_hot {
        let idx: Vec<i64> = rows
            .iter()
            .map(|(i, c, _)| i[c.iter().position(|&v| v == 1.0).unwrap_or(0)] as i64)
            .collect();
        let idx = n.constant(Array::from_vec(vec![output], idx).ok_or("indices")?)?;
        return x.gather(idx, axis as i64).k();
    }
    // The weights as an [in, out] matrix, applied along `axis`.
    let mut w = vec![0f64; super::table_len("the resize weights", &[input, output])?];
    for (o, (idx, c, _)) in rows.iter().enumerate() {
        for (&i, &v) in idx.iter().zip(c) {
            w[i * output + o] += v;
        }
    }
    let wm = Array::from_vec(vec![input, output], w).ok_or("weights")?;
    let wm = n.constant(wm)?.cast(dtype).k()?;
    let rank = x.rank();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != axis).collect();
    perm.push(axis);
    let mut back = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        back[p] = i;
    }
    let mut y = x.permute(&perm).k()?.matmul(wm).k()?.permute(&back).k()?;
    if rows.iter().any(|r| r.2) {
        let mask: Vec<bool> = rows.iter().map(|r| r.2).collect();
        let mut shape = vec![1usize; rank];
        shape[axis] = output;
        let mask = n.constant(Array::from_vec(shape, mask).ok_or("mask")?)?;
        let e = n.scalar(s.extrapolation, dtype)?;
        y = n.g.select(mask, e, y).k()?;
    }
    Ok(y)
}

fn floats(a: &Array) -> Vec<f64> {
    a.to_f64_vec()
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
    let mut y = x;
    for axis in 0..rank {
        let input = x.shape().0[axis].fixed();
        let r = roi.map(|r| (r[axis], r[axis + rank]));
        let identity = input == Some(sizes[axis])
            && (scales[axis] - 1.0).abs() < 1e-12
            && r.is_none_or(|(a, b)| a.abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
        if identity {
            continue;
        }
        y = resize_axis(n, y, axis, sizes[axis], scales[axis], s, r)?;
    }
    if y.dtype() != x.dtype() {
        y = y.cast(x.dtype()).k()?;
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
                return Err(format!(
                    "sizes has {} values for {} axes",
                    sz.len(),
                    axes.len()
                ));
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
                    other => return Err(format!("keep_aspect_ratio_policy '{other}'")),
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
                return Err(format!(
                    "scales has {} values for {} axes",
                    sc.len(),
                    axes.len()
                ));
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
        return Err(format!("{} scales for rank {}", scales.len(), dims.len()));
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

//! Signal processing:
//!
//! - `HannWindow`, `HammingWindow`, `BlackmanWindow`, `MelWeightMatrix`:
//!   constants (their sizes decide the output shape, so they must be known
//!   at import time).
//! - `DFT` (opsets 17 and 20: real or complex input, `onesided`,
//!   `inverse`, including the real inverse of a onesided spectrum) and
//!   `STFT`: matrix products with constant cosine and sine matrices,
//!   computed in f64 and rounded once (the transform length and axis must
//!   be known at import time). Exact zeros stay exact: test data holding
//!   numpy's float32 FFT round-off there (1e-7 to 1e-6) does not match.

use kiln_graph::{DType, Tensor};

use super::{axis, fixed_shape, Converter, Node, R};
use crate::ops::tables::{constant, int_constant, one, onnx_dtype};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("HannWindow", |n| window(n, [0.5, 0.5, 0.0])),
    ("HammingWindow", |n| {
        window(n, [25.0 / 46.0, 21.0 / 46.0, 0.0])
    }),
    ("BlackmanWindow", |n| window(n, [0.42, 0.5, 0.08])),
    ("DFT", dft),
    ("STFT", stft),
    ("MelWeightMatrix", mel_weight_matrix),
];

// ---------------------------------------------------------------- windows

/// The generalized cosine windows: `a0 - a1 cos(2 pi k / N) + a2 cos(4 pi
/// k / N)`, `N` the size (periodic) or size - 1 (symmetric).
pub(crate) fn window<'g>(n: &Node<'_, 'g>, a: [f64; 3]) -> R<Vec<Tensor<'g>>> {
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

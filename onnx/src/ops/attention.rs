//! Transformer ops of opset 23: `Attention` (3-D inputs with head counts,
//! or 4-D; key/value caches; boolean or additive masks; causal masking;
//! grouped-query heads; scale; softcap; the QK output modes),
//! `RMSNormalization` and `RotaryEmbedding`, composed of kiln's matmul,
//! softmax and movement ops as ONNX's reference defines them.
//! Deliberately not: `softmax_precision` other than the input's type.

use kiln_graph::{DType, Dim, Shape, Tensor};

use super::{axis, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Attention", attention),
    ("RMSNormalization", rms_norm),
    ("RotaryEmbedding", rotary),
];

fn dims(t: Tensor<'_>) -> Vec<Dim> {
    t.shape().0
}

fn fixed(d: &Dim, what: &str) -> R<usize> {
    d.fixed()
        .ok_or_else(|| format!("{what} must be a fixed size, got {d}").into())
}

/// `[b, s, h * d]` as `[b, h, s, d]`.
fn split_heads<'g>(x: Tensor<'g>, heads: usize) -> R<Tensor<'g>> {
    let d = dims(x);
    let hidden = fixed(&d[2], "the hidden size")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(format!("hidden size {hidden} does not split into {heads} heads").into());
    }
    let shape = Shape(vec![
        d[0].clone(),
        d[1].clone(),
        Dim::Fixed(heads),
        Dim::Fixed(hidden / heads),
    ]);
    Ok(x.reshape(shape)?.permute(&[0, 2, 1, 3])?)
}

fn attention<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (mut q, mut k, mut v) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let mask = n.opt(3);
    let (past_k, past_v) = (n.opt(4), n.opt(5));
    if let Some(p) = n.attr("softmax_precision") {
        if crate::tensor::dtype_of(p.i as i32).ok() != Some(q.dtype()) {
            return n.unsupported("a softmax_precision other than the input's type");
        }
    }
    let three_d = q.rank() == 3;
    let (qh, kvh) = (n.int("q_num_heads", 0), n.int("kv_num_heads", 0));
    if three_d {
        if qh <= 0 || kvh <= 0 {
            return Err("3-D inputs need q_num_heads and kv_num_heads".into());
        }
        q = split_heads(q, qh as usize)?;
        k = split_heads(k, kvh as usize)?;
        v = split_heads(v, kvh as usize)?;
    } else if q.rank() != 4 {
        return Err(format!("Q must be 3-D or 4-D, got {}", q.shape()).into());
    }
    let dtype = q.dtype();
    let head = fixed(&dims(q)[3], "the head size")?;
    let scale = match n.attr("scale") {
        Some(a) => a.f as f64,
        None => 1.0 / (head as f64).sqrt(),
    };
    let root = scale.sqrt();
    let present_k = match past_k {
        Some(p) => n.g.concat(&[p, k], 2)?,
        None => k,
    };
    let present_v = match past_v {
        Some(p) => n.g.concat(&[p, v], 2)?,
        None => v,
    };
    let (mut kk, mut vv) = (present_k, present_v);
    let past = past_k
        .map(|p| fixed(&dims(p)[2], "the past length"))
        .transpose()?
        .unwrap_or(0);
    let qs = fixed(&dims(q)[2], "the query length")?;
    let kvs = fixed(&dims(kk)[2], "the key length")?;
    // Grouped-query attention: each key/value head serves q_heads / kv_heads
    // query heads, repeated head by head ([h0, h0, h1, h1, ...]).
    let q_heads = fixed(&dims(q)[1], "the query heads")?;
    let k_heads = fixed(&dims(kk)[1], "the key heads")?;
    if q_heads != k_heads {
        if k_heads == 0 || q_heads % k_heads != 0 {
            return Err(
                format!("{q_heads} query heads do not group over {k_heads} key heads").into(),
            );
        }
        let reps = q_heads / k_heads;
        kk = repeat_heads(kk, reps, q_heads)?;
        vv = repeat_heads(vv, reps, q_heads)?;
    }
    let kt = kk.permute(&[0, 1, 3, 2])?;
    let mut qk = q.mul(root)?.matmul(kt.mul(root)?)?;
    let mut qk_out = None;
    if let Some(a) = n.attr("softcap") {
        let cap = a.f as f64;
        if cap > 0.0 {
            qk = qk.div(cap)?.tanh()?.mul(cap)?;
        }
    }
    let mode = n.int("qk_matmul_output_mode", 0);
    if mode == 0 || mode == 1 {
        qk_out = Some(qk);
    }
    let bias = additive_bias(n, q, mask, (qs, kvs), past, dtype)?;
    if let Some(b) = bias {
        qk = qk.add(b)?;
    }
    if mode == 2 {
        qk_out = Some(qk);
    }
    let p = qk.softmax(-1)?;
    if mode == 3 {
        qk_out = Some(p);
    }
    let mut y = p.matmul(vv)?;
    if three_d {
        let d = dims(y);
        let hidden = fixed(&d[1], "heads")? * fixed(&d[3], "the value head size")?;
        y = y.permute(&[0, 2, 1, 3])?.reshape(Shape(vec![
            d[0].clone(),
            d[2].clone(),
            Dim::Fixed(hidden),
        ]))?;
    }
    let mut out = vec![y];
    for (i, t) in [present_k, present_v].into_iter().enumerate() {
        if n.outputs() > i + 1 {
            out.push(t);
        }
    }
    if n.outputs() > 3 {
        out.push(qk_out.ok_or_else(|| format!("qk_matmul_output_mode {mode}"))?);
    }
    Ok(out)
}

/// `t` ([B, kv_heads, S, D]) with each head repeated `reps` times, head by
/// head ([h0, h0, h1, h1, ...]): [B, q_heads, S, D].
fn repeat_heads(t: Tensor<'_>, reps: usize, q_heads: usize) -> R<Tensor<'_>> {
    let d = dims(t);
    let wide = Shape(vec![
        d[0].clone(),
        d[1].clone(),
        Dim::Fixed(reps),
        d[2].clone(),
        d[3].clone(),
    ]);
    let merged = Shape(vec![
        d[0].clone(),
        Dim::Fixed(q_heads),
        d[2].clone(),
        d[3].clone(),
    ]);
    Ok(t.unsqueeze(2)?.broadcast_to(wide)?.reshape(merged)?)
}

/// The additive bias of the attention scores (`None`: none): the mask
/// (padded with "masked" to the key length), the causal triangle, and the
/// keys past each batch's length (input 6); `(qs, kvs)` are the query and key
/// lengths, `past` the past key length.
fn additive_bias<'g>(
    n: &Node<'_, 'g>,
    q: Tensor<'g>,
    mask: Option<Tensor<'g>>,
    (qs, kvs): (usize, usize),
    past: usize,
    dtype: DType,
) -> R<Option<Tensor<'g>>> {
    let neg_inf = n.scalar(f64::NEG_INFINITY, dtype)?;
    let zero = n.scalar(0.0, dtype)?;
    let mut bias: Option<Tensor<'g>> = None;
    if let Some(m) = mask {
        let ml = fixed(dims(m).last().ok_or("a rank-0 mask")?, "the mask length")?;
        let mut m = if m.dtype() == DType::Bool {
            n.g.select(m, zero, neg_inf)?
        } else {
            m.cast(dtype)?
        };
        if ml < kvs {
            let mut pd = dims(m);
            let last = pd.len() - 1;
            pd[last] = Dim::Fixed(kvs - ml);
            let pad = neg_inf.broadcast_to(Shape(pd))?;
            m = n.g.concat(&[m, pad], -1)?;
        }
        bias = Some(m);
    }
    if n.int("is_causal", 0) != 0 {
        // Masked where j - past > i.
        let i = n.g.iota(DType::I64, Shape::fixed(&[qs, kvs]), 0)?;
        let j = n.g.iota(DType::I64, Shape::fixed(&[qs, kvs]), 1)?;
        let allowed = j.sub(past as f64)?.le(i)?;
        let tri = n.g.select(allowed, zero, neg_inf)?;
        bias = Some(match bias {
            Some(b) => b.add(tri)?,
            None => tri,
        });
    }
    if let Some(lens) = n.opt(6) {
        // Keys at or past each batch's non-padded length are masked.
        let b = dims(q)[0].clone();
        let pos =
            n.g.iota(DType::I64, Shape(vec![b.clone(), Dim::Fixed(kvs)]), 1)?;
        let valid = pos.lt(lens.cast(DType::I64)?.unsqueeze(1)?)?;
        let pad = n.g.select(valid, zero, neg_inf)?.reshape(Shape(vec![
            b,
            Dim::Fixed(1),
            Dim::Fixed(1),
            Dim::Fixed(kvs),
        ]))?;
        bias = Some(match bias {
            Some(b) => b.add(pad)?,
            None => pad,
        });
    }
    Ok(bias)
}

/// `x / sqrt(mean(x^2 over axis..) + epsilon) * scale`.
fn rms_norm<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, scale) = (n.input(0)?, n.input(1)?);
    let a = axis(n.int("axis", -1), x.rank())?;
    let eps = n.float("epsilon", 1e-5) as f64;
    let axes: Vec<i64> = (a as i64..x.rank() as i64).collect();
    let dtype = x.dtype();
    // stash_type 1: statistics in f32 (f64 inputs keep f64).
    let xs = if dtype == DType::F64 {
        x
    } else {
        x.cast(DType::F32)?
    };
    let ms = xs.mul(xs)?.mean(&axes, true)?;
    let y = xs.mul(ms.add(eps)?.rsqrt()?)?.cast(dtype)?;
    Ok(y.mul(scale.cast(dtype)?)?).map(|t| vec![t])
}

/// Rotary position embedding over the first `rotary_embedding_dim` of
/// each head (halves, or interleaved pairs).
fn rotary<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let (x, mut cos, mut sin) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let rank = x.rank();
    // [b, s, h, d]
    let x4 = if rank == 4 {
        x.permute(&[0, 2, 1, 3])?
    } else if rank == 3 {
        let heads = n.int("num_heads", 0);
        if heads <= 0 {
            return Err("3-D input needs num_heads".into());
        }
        let d = dims(x);
        let hidden = fixed(&d[2], "the hidden size")?;
        let h = heads as usize;
        if hidden % h != 0 {
            return Err(format!("hidden size {hidden} does not split into {h} heads").into());
        }
        x.reshape(Shape(vec![
            d[0].clone(),
            d[1].clone(),
            Dim::Fixed(h),
            Dim::Fixed(hidden / h),
        ]))?
    } else {
        return Err(format!("input must be 3-D or 4-D, got {}", x.shape()).into());
    };
    let head = fixed(&dims(x4)[3], "the head size")?;
    let rot = match n.int("rotary_embedding_dim", 0) {
        0 => head,
        r => r as usize,
    };
    if rot > head || rot % 2 != 0 {
        return Err(format!("rotary_embedding_dim {rot} for heads of {head}").into());
    }
    if let Some(pos) = n.opt(3) {
        cos = cos.gather(pos, 0)?;
        sin = sin.gather(pos, 0)?;
    }
    let (cos, sin) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?);
    let part = x4.slice_axis(3, 0, rot as i64, 1)?;
    let interleaved = n.int("interleaved", 0) != 0;
    let half = rot as i64 / 2;
    let (x1, x2) = if interleaved {
        (
            part.slice_axis(3, 0, rot as i64, 2)?,
            part.slice_axis(3, 1, rot as i64, 2)?,
        )
    } else {
        (
            part.slice_axis(3, 0, half, 1)?,
            part.slice_axis(3, half, rot as i64, 1)?,
        )
    };
    let real = cos.mul(x1)?.sub(sin.mul(x2)?)?;
    let imag = sin.mul(x1)?.add(cos.mul(x2)?)?;
    let rotated = if interleaved {
        let pairs =
            n.g.concat(&[real.unsqueeze(-1)?, imag.unsqueeze(-1)?], -1)?;
        pairs.reshape(part.shape())?
    } else {
        n.g.concat(&[real, imag], -1)?
    };
    let full = if rot < head {
        let rest = x4.slice_axis(3, rot as i64, head as i64, 1)?;
        n.g.concat(&[rotated, rest], -1)?
    } else {
        rotated
    };
    let y = if rank == 4 {
        full.permute(&[0, 2, 1, 3])?
    } else {
        full.reshape(x.shape())?
    };
    Ok(vec![y])
}

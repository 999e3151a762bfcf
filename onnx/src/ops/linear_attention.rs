//! `LinearAttention` (opset 27): the recurrent linear-attention family
//!   (`linear`, `gated`, `delta`, `gated_delta` update rules) with
//!   grouped-query heads. The recurrence is unrolled over the sequence, so
//!   the sequence length (and every other dim) must be fixed. State is
//!   accumulated in float32, as the reference does.

use kiln_graph::{DType, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("LinearAttention", linear_attention)];

/// `LinearAttention`: per time step `t` (unrolled), with `S` the
/// `(B, H_kv, d_k, d_v)` state:
/// `S *= exp(decay_t)` (gated), `v_t = beta_t * (v_t - S^T k_t)` (delta),
/// `S += k_t v_t^T`, `o_t = scale * q_t S` where query head `h` reads the
/// state of kv head `h / (H_q / H_kv)`. Outputs `(B, T, H_q d_v)` and the
/// final state.
fn linear_attention<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    let rule = n
        .string("update_rule")
        .unwrap_or_else(|| "gated_delta".into());
    let (gating, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        r => return n.unsupported(format!("update_rule {r}")),
    };
    let hq = n.int("q_num_heads", 0);
    let hkv = n.int("kv_num_heads", 0);
    if hq <= 0 || hkv <= 0 || hq % hkv != 0 {
        return Err(format!(
            "q_num_heads ({hq}) must be a positive multiple of kv_num_heads ({hkv})"
        )
        .into());
    }
    let (hq, hkv) = (hq as usize, hkv as usize);
    let group = hq / hkv;
    let out_dtype = n.input(0)?.dtype();
    let f32 = |t: Tensor<'g>| t.cast(DType::F32);
    let q = f32(n.input(0)?)?;
    let k = f32(n.input(1)?)?;
    let v = f32(n.input(2)?)?;
    let qs = fixed_shape(q)?;
    let ks = fixed_shape(k)?;
    let vs = fixed_shape(v)?;
    if qs.len() != 3 || ks.len() != 3 || vs.len() != 3 {
        return Err("query, key and value must have rank 3".into());
    }
    let (b, t) = (qs[0], qs[1]);
    if qs[2] % hq != 0 || vs[2] % hkv != 0 {
        return Err("hidden sizes are not divisible by the head counts".into());
    }
    let dk = qs[2] / hq;
    let dv = vs[2] / hkv;
    if ks[2] != hkv * dk {
        return Err(format!("key hidden size {} is not {}", ks[2], hkv * dk).into());
    }
    let decay = match n.opt(4) {
        Some(d) => Some(f32(d)?),
        None => None,
    };
    let beta = match n.opt(5) {
        Some(d) => Some(f32(d)?),
        None => None,
    };
    if gating != decay.is_some() {
        return Err(format!("update_rule {rule} and the decay input disagree").into());
    }
    if delta != beta.is_some() {
        return Err(format!("update_rule {rule} and the beta input disagree").into());
    }
    let last = |x: Tensor<'g>| -> R<usize> {
        let s = fixed_shape(x)?;
        if s.len() != 3 {
            return Err("decay and beta must have rank 3".into());
        }
        Ok(s[2])
    };
    let decay_w = match decay {
        Some(d) => {
            let w = last(d)?;
            if w != hkv && w != hkv * dk {
                return Err(format!("decay last dim {w} must be {hkv} or {}", hkv * dk).into());
            }
            w / hkv
        }
        None => 0,
    };
    let beta_h = match beta {
        Some(x) => {
            let w = last(x)?;
            if w != hkv && w != 1 {
                return Err(format!("beta last dim {w} must be {hkv} or 1").into());
            }
            w
        }
        None => 0,
    };
    let (state_dtype, mut state) = match n.opt(3) {
        Some(p) => (p.dtype(), f32(p)?.reshape_to(&dims(&[b, hkv, dk, dv]))?),
        None => (out_dtype, n.g.full(0.0, DType::F32, &[b, hkv, dk, dv])?),
    };
    let scale = match n.float("scale", 0.0) as f64 {
        0.0 => 1.0 / (dk as f64).sqrt(),
        s => s,
    };
    // Step `i` of a `(B, T, X)` tensor, reshaped to `shape`.
    let step = |x: Tensor<'g>, i: usize, shape: &[usize]| -> R<Tensor<'g>> {
        Ok(x.slice_axis(1, i as i64, i as i64 + 1, 1)?
            .reshape_to(&dims(shape))?)
    };
    let mut outs = Vec::with_capacity(t);
    for i in 0..t {
        if let Some(d) = decay {
            let g = step(d, i, &[b, hkv, decay_w, 1])?;
            state = state.mul(g.exp()?)?;
        }
        let k_row = step(k, i, &[b, hkv, 1, dk])?;
        let k_col = step(k, i, &[b, hkv, dk, 1])?;
        let mut v_t = step(v, i, &[b, hkv, 1, dv])?;
        if let Some(be) = beta {
            let retrieved = k_row.matmul(state)?;
            let be = step(be, i, &[b, beta_h, 1, 1])?;
            v_t = v_t.sub(retrieved)?.mul(be)?;
        }
        state = state.add(k_col.mul(v_t)?)?;
        let q_t = step(q, i, &[b, hkv, group, dk])?;
        let o = q_t.matmul(state)?.mul(scale)?;
        outs.push(o.reshape_to(&dims(&[b, 1, hq * dv]))?);
    }
    let out = if outs.len() == 1 {
        outs[0]
    } else {
        n.g.concat(&outs, 1)?
    };
    Ok(vec![out.cast(out_dtype)?, state.cast(state_dtype)?])
}

/// Fixed dims as `reshape_to` dims.
fn dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&x| x as i64).collect()
}

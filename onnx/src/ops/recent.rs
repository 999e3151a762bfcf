//! ONNX ops of the newest opsets (24 and later):
//!
//! - `LinearAttention` (opset 27): the recurrent linear-attention family
//!   (`linear`, `gated`, `delta`, `gated_delta` update rules) with
//!   grouped-query heads. The recurrence is unrolled over the sequence, so
//!   the sequence length (and every other dim) must be fixed. State is
//!   accumulated in float32, as the reference does.
//! - `CausalConvWithState` (opset 27): a depthwise causal 1-D convolution
//!   with a carried left context and optional fused SiLU, unrolled over the
//!   kernel taps.
//! - `TfIdfVectorizer` (opset 9): n-gram counting over integer inputs
//!   (`[C]` or `[B, C]`, int32/int64), one equality test per (gram size,
//!   skip distance) against the pool, mapped to outputs by a one-hot
//!   matmul. `pool_strings` (string inputs) are unsupported.

use std::collections::BTreeMap;

use kiln_graph::{Array, DType, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("LinearAttention", linear_attention),
    ("CausalConvWithState", causal_conv_with_state),
    ("TfIdfVectorizer", tfidf_vectorizer),
];

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

/// `TfIdfVectorizer`: counts, per row, the windows `(x[i], x[i + s], ..,
/// x[i + s (n - 1)])` equal to a pool n-gram of size `n` in
/// `[min_gram_length, max_gram_length]`, for skip distances
/// `s = 1..=max_skip_count + 1` (unigrams only once), into column
/// `ngram_indexes[gram]`; then weights the counts by `mode`. As in the
/// reference (a trie), a repeated gram counts only for its last position.
fn tfidf_vectorizer<'g>(n: &Node<'_, 'g>) -> R<Vec<Tensor<'g>>> {
    if n.attr("pool_strings")
        .is_some_and(|a| !a.strings.is_empty())
    {
        return n.unsupported("pool_strings");
    }
    let pool = n.ints("pool_int64s").unwrap_or_default();
    let counts = n.ints("ngram_counts").unwrap_or_default();
    let indexes = n.ints("ngram_indexes").unwrap_or_default();
    let weights = n.floats("weights").unwrap_or_default();
    let min_n = n.int("min_gram_length", 1).max(1) as usize;
    let max_n = n.int("max_gram_length", 1).max(0) as usize;
    let max_skip = n.int("max_skip_count", 0).max(0) as usize;
    let mode = n.string("mode").unwrap_or_default();
    if !matches!(mode.as_str(), "TF" | "IDF" | "TFIDF") {
        return n.unsupported(format!("mode {mode:?}"));
    }
    let out_size = indexes.iter().copied().max().unwrap_or(-1) + 1;
    if out_size <= 0 || indexes.iter().any(|&i| i < 0) {
        return Err("ngram_indexes must be non-empty and non-negative".into());
    }
    let out_size = out_size as usize;
    if !weights.is_empty() && weights.len() < out_size {
        return Err(format!("weights has {} values, needs {out_size}", weights.len()).into());
    }
    let x = n.input(0)?;
    if !matches!(x.dtype(), DType::I32 | DType::I64) {
        return n.unsupported(format!("input dtype {}", x.dtype()));
    }
    let xs = fixed_shape(x)?;
    let (rows, c, batched) = match xs.as_slice() {
        [c] => (1, *c, false),
        [b, c] if *b > 0 => (*b, *c, true),
        _ => return Err(format!("input shape {xs:?} is not [C] or [B, C]").into()),
    };
    let x2 = x.reshape_to(&[rows as i64, c as i64])?;
    // The grams of each size: tuple -> output column (the last one wins).
    let mut grams: BTreeMap<usize, BTreeMap<Vec<i64>, usize>> = BTreeMap::new();
    let mut gram_no = 0usize;
    for (i, &start) in counts.iter().enumerate() {
        let size = i + 1;
        let end = counts.get(i + 1).copied().unwrap_or(pool.len() as i64);
        if start < 0 || end < start || end as usize > pool.len() {
            return Err(format!("bad ngram_counts {counts:?}").into());
        }
        let items = &pool[start as usize..end as usize];
        for g in items.chunks_exact(size) {
            let col = *indexes
                .get(gram_no)
                .ok_or("fewer ngram_indexes than n-grams")? as usize;
            gram_no += 1;
            if size >= min_n && size <= max_n {
                grams.entry(size).or_default().insert(g.to_vec(), col);
            }
        }
    }
    let mut freq: Option<Tensor<'g>> = None;
    for (&size, set) in &grams {
        let g = set.len();
        let mut onehot = vec![0f32; super::table_len("the n-gram table", &[g, out_size])?];
        for (j, &col) in set.values().enumerate() {
            onehot[j * out_size + col] = 1.0;
        }
        let onehot = n.constant(Array::from_vec([g, out_size], onehot).ok_or("bad map")?)?;
        let skips = if size == 1 { 1 } else { max_skip + 1 };
        for s in 1..=skips {
            let span = s * (size - 1);
            if span >= c {
                break;
            }
            let starts = c - span;
            let mut hit: Option<Tensor<'g>> = None;
            for k in 0..size {
                let vals: Vec<i64> = set.keys().map(|t| t[k]).collect();
                let vals = n
                    .constant(Array::from_vec([g], vals).ok_or("bad pool")?)?
                    .cast(x.dtype())?;
                let off = (k * s) as i64;
                let xk = x2.slice_axis(1, off, off + starts as i64, 1)?;
                let eq = xk.unsqueeze(-1)?.eq(vals)?;
                hit = Some(match hit {
                    None => eq,
                    Some(h) => h.and(eq)?,
                });
            }
            let hit = hit.ok_or("empty n-gram")?;
            // [rows, starts, g] -> [rows, g] counts -> [rows, out_size].
            let cnt = hit.cast(DType::F32)?.sum(&[1], false)?;
            let f = cnt.matmul(onehot)?;
            freq = Some(match freq {
                None => f,
                Some(a) => a.add(f)?,
            });
        }
    }
    let freq = match freq {
        Some(f) => f,
        None => n.g.full(0.0, DType::F32, &[rows, out_size])?,
    };
    let w = || -> R<Tensor<'g>> {
        n.constant(Array::from_vec([out_size], weights[..out_size].to_vec()).ok_or("bad weights")?)
    };
    let y = match (mode.as_str(), weights.is_empty()) {
        ("TF", _) | ("TFIDF", true) => freq,
        ("IDF", true) => freq.gt(0.0)?.cast(DType::F32)?,
        ("IDF", false) => freq.gt(0.0)?.cast(DType::F32)?.mul(w()?)?,
        _ => freq.mul(w()?)?,
    };
    Ok(vec![if batched {
        y
    } else {
        y.reshape_to(&[out_size as i64])?
    }])
}

/// Fixed dims as `reshape_to` dims.
fn dims(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&x| x as i64).collect()
}

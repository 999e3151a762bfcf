//! Text features. `TfIdfVectorizer` (opset 9): n-gram counting over integer inputs
//!   (`[C]` or `[B, C]`, int32/int64), one equality test per (gram size,
//!   skip distance) against the pool, mapped to outputs by a one-hot
//!   matmul. `pool_strings` (string inputs) are unsupported.

use std::collections::BTreeMap;

use kiln_graph::{Array, DType, Tensor};

use super::{fixed_shape, Converter, Node, R};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[("TfIdfVectorizer", tfidf_vectorizer)];

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

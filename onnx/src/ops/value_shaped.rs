//! Ops whose output shapes depend on their input values: `Compress` (an
//! import-time condition: a gather), `Unique` and `NonMaxSuppression`
//! (their inputs must be known at import time: the node is folded to
//! constants).

use kiln_graph::Tensor;

use super::{axis, fixed_shape, Converter, Node, R};
use crate::ops::tables::{int_constant, one};

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[
    ("Compress", compress),
    ("Unique", unique),
    ("NonMaxSuppression", non_max_suppression),
];

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

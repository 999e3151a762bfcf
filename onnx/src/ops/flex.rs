//! `FlexAttention` (`ai.onnx.preview`, opset 1): scaled dot-product
//! attention over `(batch, heads, sequence, head size)` tensors whose
//! scores and probabilities pass through the node's optional subgraphs
//! (`score_mod`, `mask_mod`, `prob_mod`: each takes the whole
//! `(B, H, L, S)` tensor and returns one of the same shape).
//!
//! As ONNX's function body does: `sqrt(scale)` (default scale
//! `1 / sqrt(head size)`, in f32) scales Q and K in their own type, `Q K^T`
//! is taken in that type, the scores are cast to the compute type (f32
//! for half inputs, else the input type) for the subgraphs, the softmax
//! over the last axis and the product with V, and the result is cast to
//! V's type. Grouped-query attention repeats each K/V head for
//! `q_heads / kv_heads` consecutive query heads.
//!
//! The subgraphs read values by name, so the importer calls this
//! converter itself (with its scope).

use kiln_graph::{DType, GraphBuilder, Tensor};

use super::{fixed_shape, ConvertError};
use crate::control::call_subgraph;
use crate::error::Result;
use crate::proto::NodeProto;
use crate::scope::{node_error, Item, Scope, Value};

/// The op's key: domain and op type.
pub(crate) const FLEX_ATTENTION: &str = "ai.onnx.preview.FlexAttention";

pub(crate) fn flex_attention<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
    inputs: &[Option<Item<'g>>],
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let k = |r: kiln_graph::Result<Tensor<'g>>| r.map_err(|e| fail(e.into()));
    let input = |i: usize, what: &str| -> Result<Tensor<'g>> {
        match inputs.get(i) {
            Some(Some(Item::Tensor(v))) => Ok(v.t),
            Some(Some(other)) => Err(fail(
                format!("{what} is a {}, not a tensor", other.kind()).into(),
            )),
            _ => Err(fail(format!("input {i} ({what}) is required").into())),
        }
    };
    let (q, kt, v) = (input(0, "Q")?, input(1, "K")?, input(2, "V")?);
    let qs = fixed_shape(q).map_err(fail)?;
    let ks = fixed_shape(kt).map_err(fail)?;
    let vs = fixed_shape(v).map_err(fail)?;
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(fail(
            format!(
            "Q {qs:?}, K {ks:?} and V {vs:?} must have rank 4 (batch, heads, sequence, head size)"
        )
            .into(),
        ));
    }
    let (b, hq, e) = (qs[0], qs[1], qs[3]);
    let (hkv, s, ev) = (ks[1], ks[2], vs[3]);
    if ks[0] != b || vs[0] != b || vs[1] != hkv || vs[2] != s || ks[3] != e {
        return Err(fail(
            format!("Q {qs:?}, K {ks:?} and V {vs:?} do not fit together").into(),
        ));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(fail(
            format!("Q's {hq} heads are not a multiple of K's {hkv}").into(),
        ));
    }
    for t in [q, kt, v] {
        if !t.dtype().is_float() {
            return Err(fail(
                format!("Q, K and V must be floats, got {}", t.dtype()).into(),
            ));
        }
    }
    let in_t = q.dtype();
    let compute = if in_t.is_half() { DType::F32 } else { in_t };
    // K and V heads repeated for grouped-query attention.
    let repeat = |t: Tensor<'g>, d: usize| -> Result<Tensor<'g>> {
        if hq == hkv {
            return Ok(t);
        }
        let t = k(t.unsqueeze(2))?;
        let t = k(t.broadcast_to(vec![b, hkv, hq / hkv, s, d]))?;
        k(t.reshape(vec![b, hq, s, d]))
    };
    let scale = n
        .attribute
        .iter()
        .find(|a| a.name == "scale")
        .map_or(1.0 / (e as f32).sqrt(), |a| a.f);
    let root = k(g.scalar(scale.sqrt() as f64, in_t))?;
    let qk = k(q.mul(root))?;
    let kk = k(repeat(kt, e)?.mul(root))?;
    let scores = k(qk.matmul(k(kk.permute(&[0, 1, 3, 2]))?))?;
    let mut scores = k(scores.cast(compute))?;
    let apply = |t: Tensor<'g>, attr: &str| -> Result<Tensor<'g>> {
        if !n.attribute.iter().any(|a| a.name == attr && a.g.is_some()) {
            return Ok(t);
        }
        let out = call_subgraph(g, n, attr, opset, scope, &[Item::Tensor(Value::runtime(t))])?;
        match out.as_slice() {
            [Item::Tensor(v)] => {
                if v.t.shape() != t.shape() {
                    return Err(fail(
                        format!("{attr} gives shape {}, want {}", v.t.shape(), t.shape()).into(),
                    ));
                }
                k(v.t.cast(compute))
            }
            _ => Err(fail(format!("{attr} must give one tensor").into())),
        }
    };
    scores = apply(scores, "score_mod")?;
    scores = apply(scores, "mask_mod")?;
    let probs = apply(k(scores.softmax(-1))?, "prob_mod")?;
    let vv = k(repeat(v, ev)?.cast(compute))?;
    let y = k(k(probs.matmul(vv))?.cast(v.dtype()))?;
    Ok(vec![Item::Tensor(Value::runtime(y))])
}

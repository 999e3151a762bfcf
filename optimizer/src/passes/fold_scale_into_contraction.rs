//! `fold_scale_into_contraction`: a per-output-channel constant scale of a
//! conv or matmul with constant weights becomes part of the weights:
//! `conv(x, w) * k = conv(x, w * k)` for `k` varying only along the output
//! channel, and `(x @ w) * k = x @ (w * k)` for `k` varying only along the
//! last dim. With `simplify_algebra`'s reassociation and distribution this
//! folds inference batch norm into the preceding conv or matmul.
//!
//! Deliberately not done: scales that hold a zero or a non-finite value
//! (folding them would change where NaN appears: `(x @ w) * 0` is NaN
//! where `x @ w` overflows, `x @ (w * 0)` is 0), scales that vary along other dims, weights that
//! are not constants (run `freeze_variables` first for inference), and
//! contractions with several users (the unscaled value is still needed).

use kiln_graph::op::Weight;
use kiln_graph::{BinaryOp, Graph, NodeId, Op};

use super::constant;
use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Folding scales into conv/matmul weights; see the module docs.
pub struct FoldScaleIntoContraction;

/// The shape `k` must take to multiply the weight, if `k` varies only along
/// the output-channel dim `axis` of an output of rank `rank`.
fn channel_shape(
    k: &[usize],
    rank: usize,
    axis: usize,
    channels: usize,
    weight_rank: usize,
    weight_axis: usize,
) -> Option<Vec<usize>> {
    if k.len() > rank {
        return None;
    }
    let off = rank - k.len();
    let mut c = 1;
    for (i, &d) in k.iter().enumerate() {
        if off + i == axis {
            if d != 1 && d != channels {
                return None;
            }
            c = d;
        } else if d != 1 {
            return None;
        }
    }
    let mut shape = vec![1; weight_rank];
    shape[weight_axis] = c;
    Some(shape)
}

impl Pass for FoldScaleIntoContraction {
    fn name(&self) -> &'static str {
        "fold_scale_into_contraction"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        for id in g.topo_order() {
            if let Some((c, k)) = self.matches(g, id) {
                let (x, w) = (rb.mapped_inputs(c)[0], rb.mapped_inputs(c)[1]);
                let (Some(wv), Some(kv)) = (constant(rb.new_graph(), w), constant(g, k)) else {
                    rb.copy(id)?;
                    continue;
                };
                // A zero or non-finite scale stays: `(x @ w) * 0` is NaN
                // where `x @ w` is infinite, `x @ (w * 0)` is not.
                if kv.to_f64_vec().iter().any(|v| *v == 0.0 || !v.is_finite()) {
                    rb.copy(id)?;
                    continue;
                }
                let out_ty = &g.node(c).ty;
                let (axis, w_axis) = match g.node(c).op {
                    Op::Conv2d { .. } => (1, 0),
                    _ => (out_ty.rank() - 1, 1),
                };
                let channels = wv.shape()[w_axis];
                if let Some(ks) = channel_shape(
                    kv.shape(),
                    out_ty.rank(),
                    axis,
                    channels,
                    wv.shape().len(),
                    w_axis,
                ) {
                    let kr = kv.clone().reshaped(ks).expect("same element count");
                    let scaled = (Op::Binary { f: BinaryOp::Mul })
                        .eval(&[wv, &kr], wv.shape())
                        .expect("broadcast checked");
                    // Finite weights times a finite scale that overflow stay
                    // unfolded: the original order may not overflow.
                    let finite =
                        |a: &kiln_graph::Array| a.to_f64_vec().iter().all(|v| v.is_finite());
                    if finite(wv) && !finite(&scaled) {
                        rb.copy(id)?;
                        continue;
                    }
                    let loc = g.node(c).location.clone();
                    let wname = format!("{}/scaled", rb.new_graph().node(w).name);
                    let new_w = rb.add(
                        &wname,
                        Op::Constant {
                            value: Weight::new(scaled),
                        },
                        &[],
                        loc,
                    )?;
                    rb.replace(id, g.node(c).op.clone(), &[x, new_w])?;
                    report.count("folded");
                    continue;
                }
            }
            rb.copy(id)?;
        }
        Ok((rb.finish()?, report))
    }
}

impl FoldScaleIntoContraction {
    /// `(contraction, scale)` when `id` is `contraction * constant` (either
    /// order), the contraction has this one user, a 2-D weight for matmul,
    /// and the product keeps the contraction's type.
    fn matches(&self, g: &Graph, id: NodeId) -> Option<(NodeId, NodeId)> {
        if !matches!(g.node(id).op, Op::Binary { f: BinaryOp::Mul }) {
            return None;
        }
        let ins = g.inputs(id);
        let (c, k) = if constant(g, ins[1]).is_some() {
            (ins[0], ins[1])
        } else {
            (ins[1], ins[0])
        };
        constant(g, k)?;
        let cn = g.node(c);
        let ok = match cn.op {
            Op::Conv2d { .. } => true,
            Op::MatMul => g.node(g.inputs(c)[1]).ty.rank() == 2,
            _ => false,
        };
        let single = g.users(c).len() == 1 && !g.outputs().contains(&c);
        (ok && single && cn.ty == g.node(id).ty && cn.ty.dtype.is_float() && !cn.ty.dtype.is_half())
            .then_some((c, k))
    }
}

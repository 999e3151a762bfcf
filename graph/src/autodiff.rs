//! Reverse-mode automatic differentiation: `GraphBuilder::gradients` adds
//! the gradient graph of `y` with respect to `xs` to the same builder.
//!
//! The driver walks the nodes between `xs` and `y` in reverse topological
//! order, asks each op's rule (beside the op in `ops/`) for its inputs'
//! gradients and sums contributions. Only floating-point values carry
//! gradients; integer and bool paths stop them.

use std::collections::{HashMap, HashSet};

use crate::builder::{GraphBuilder, Tensor};
use crate::error::{Error, Result, SourceLoc};
use crate::graph::NodeId;
use crate::op::Op;
use crate::ops;
use crate::shape::{Dim, Shape};

impl GraphBuilder {
    /// The gradients of `sum(y)` with respect to each of `xs` (zeros for an
    /// `x` that `y` does not depend on), as new nodes under `gradients/`.
    #[track_caller]
    pub fn gradients<'g>(&'g self, y: Tensor<'g>, xs: &[Tensor<'g>]) -> Result<Vec<Tensor<'g>>> {
        let loc = SourceLoc::caller();
        if !y.dtype().is_float() {
            return Err(y.err(
                "gradients",
                &[],
                loc,
                format!("cannot differentiate a {} value", y.dtype()),
            ));
        }
        let graph = self.graph();
        let order = graph.ancestors(&[y.id]);
        let mut reach: HashSet<NodeId> = xs.iter().map(|x| x.id).collect();
        for &n in &order {
            if graph.inputs(n).iter().any(|i| reach.contains(i)) {
                reach.insert(n);
            }
        }
        let _scope = self.scope("gradients");
        let mut grads: HashMap<NodeId, Tensor<'g>> = HashMap::new();
        if reach.contains(&y.id) {
            let one = self.scalar(1.0, y.dtype())?;
            grads.insert(y.id, one.broadcast_to(y.shape())?);
        }
        for &n in order.iter().rev() {
            let Some(&g) = grads.get(&n) else { continue };
            let node = graph.node(n);
            let ins: Vec<Tensor<'g>> = graph
                .inputs(n)
                .into_iter()
                .map(|i| self.tensor(i))
                .collect::<Result<_>>()?;
            if ins.iter().all(|i| !reach.contains(&i.id)) {
                continue;
            }
            let out = self.tensor(n)?;
            let wanted: Vec<bool> = ins.iter().map(|i| reach.contains(&i.id)).collect();
            let input_grads = input_gradients(&node.op, graph.functions(), &wanted, &ins, out, g)
                .map_err(|e| match e {
                Error::Type {
                    op,
                    location,
                    reason,
                    operands,
                } => Error::Type {
                    op: format!("gradient of {op}"),
                    location,
                    reason: format!("{reason} (while differentiating node '{}')", node.name),
                    operands,
                },
                other => other,
            })?;
            for (x, gx) in ins.iter().zip(input_grads) {
                let Some(gx) = gx else { continue };
                if !reach.contains(&x.id) || !x.dtype().is_float() {
                    continue;
                }
                let total = match grads.get(&x.id) {
                    Some(&prev) => prev.add(gx)?,
                    None => gx,
                };
                grads.insert(x.id, total);
            }
        }
        xs.iter()
            .map(|&x| match grads.get(&x.id) {
                Some(&g) => Ok(g),
                None => zeros_like(x),
            })
            .collect()
    }
}

/// Zeros of `t`'s type (symbolic dims included).
#[track_caller]
pub(crate) fn zeros_like<'g>(t: Tensor<'g>) -> Result<Tensor<'g>> {
    let z = t.builder().scalar(0.0, t.dtype())?;
    z.broadcast_to(t.shape())
}

/// Sums `g` over the dims that broadcasting added to reach it from `target`.
#[track_caller]
pub(crate) fn unbroadcast<'g>(g: Tensor<'g>, target: &Shape) -> Result<Tensor<'g>> {
    let shape = g.shape();
    if shape == *target {
        return Ok(g);
    }
    let off = shape.rank() - target.rank();
    let mut axes: Vec<i64> = (0..off as i64).collect();
    for (i, d) in target.dims().iter().enumerate() {
        if *d == Dim::Fixed(1) && shape.dims()[off + i] != Dim::Fixed(1) {
            axes.push((off + i) as i64);
        }
    }
    let summed = if axes.is_empty() {
        g
    } else {
        g.sum(&axes, false)?
    };
    if summed.shape() == *target {
        Ok(summed)
    } else {
        summed.reshape(target.clone())
    }
}

/// The gradients of an op's inputs given its output and the output's
/// gradient (`wanted`: which inputs lead to the differentiated values; ops
/// that build whole calls per input, like control flow, skip the others).
#[track_caller]
fn input_gradients<'g>(
    op: &Op,
    functions: &[std::sync::Arc<crate::graph::Function>],
    wanted: &[bool],
    ins: &[Tensor<'g>],
    out: Tensor<'g>,
    g: Tensor<'g>,
) -> Result<Vec<Option<Tensor<'g>>>> {
    Ok(match op {
        Op::Placeholder { .. }
        | Op::Constant { .. }
        | Op::Variable { .. }
        | Op::SymbolicConstant { .. }
        | Op::Iota { .. }
        | Op::RandomUniform { .. }
        | Op::RandomNormal { .. } => vec![],
        Op::Unary { f } => vec![ops::elementwise::grad_unary(*f, ins[0], out, g)?],
        Op::Binary { f } => ops::elementwise::grad_binary(*f, ins[0], ins[1], out, g)?,
        Op::Select => ops::elementwise::grad_select(ins[0], ins[1], ins[2], g)?,
        Op::Cast { .. } => vec![ops::elementwise::grad_cast(ins[0], g)?],
        Op::Reduce { f, axes, keepdims } => vec![ops::reduce::grad_reduce(
            *f, ins[0], out, axes, *keepdims, g,
        )?],
        Op::ArgReduce { .. } => vec![None],
        Op::Reshape { .. } => vec![Some(g.reshape(ins[0].shape())?)],
        Op::Permute { perm } => vec![Some(ops::movement::grad_permute(perm, g)?)],
        Op::Broadcast { .. } => vec![Some(unbroadcast(g, &ins[0].shape())?)],
        Op::Slice { axes } => vec![Some(ops::movement::grad_slice(ins[0], axes, g)?)],
        Op::Pad { before, after, .. } => {
            vec![Some(ops::movement::grad_pad(ins[0], before, after, g)?)]
        }
        Op::Concat { axis } => ops::movement::grad_concat(ins, *axis, g)?,
        Op::MatMul => ops::linalg::grad_matmul(ins[0], ins[1], g)?,
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
            channels_last: false,
        } => ops::linalg::grad_conv2d(ins[0], ins[1], *stride, *padding, *dilation, *groups, g)?,
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
            channels_last: true,
        } => {
            // The NCHW gradients, moved to and from channels-last.
            let (x, g) = (ins[0].permute(&[0, 3, 1, 2])?, g.permute(&[0, 3, 1, 2])?);
            let mut grads =
                ops::linalg::grad_conv2d(x, ins[1], *stride, *padding, *dilation, *groups, g)?;
            if let Some(gx) = grads[0].take() {
                grads[0] = Some(gx.permute(&[0, 2, 3, 1])?);
            }
            grads
        }
        Op::MaxPool2d { window } => vec![Some(ops::pool::grad_max_pool(ins[0], out, window, g)?)],
        Op::AvgPool2d {
            window,
            count_include_pad,
        } => {
            vec![Some(ops::pool::grad_avg_pool(
                ins[0],
                window,
                *count_include_pad,
                g,
            )?)]
        }
        Op::Gather { axis } => vec![
            Some(ops::index::grad_gather(ins[0], ins[1], *axis, g)?),
            None,
        ],
        Op::ScatterAdd { axis } => {
            vec![Some(g), None, Some(g.gather(ins[1], *axis as i64)?)]
        }
        Op::Assign => vec![None, None],
        Op::Group => vec![None; ins.len()],
        Op::Cond { .. } | Op::While { .. } | Op::WhileGrad { .. } => {
            ops::control::grad(op, functions, wanted, ins, g)?
        }
    })
}

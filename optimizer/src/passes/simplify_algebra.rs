//! `simplify_algebra`: algebraic identities and movement chains.
//!
//! - `x + 0`, `x - 0`, `x * 1`, `x / 1`, `x ^ 1` become `x`; `neg(neg x)` is `x`;
//!   a cast to the same dtype is `x`; `x ^ 2` and `x ^ 3` become products
//!   (floats but the half types).
//! - `permute(permute x)` composes (and vanishes when the identity), a
//!   reshape of a reshape is one reshape, and reshapes, broadcasts, slices,
//!   pads and concats that change nothing vanish.
//! - Constant chains reassociate: `(y + c1) + c2` is `y + (c1 + c2)`,
//!   `(y * c1) * c2` is `y * (c1 * c2)`, `y - c` is `y + (-c)`, and a scale
//!   after a bias on a matmul/conv output distributes,
//!   `(mm + c1) * c2 = mm * c2 + c1 * c2`, so the scale can fold into the
//!   weights (see `fold_scale_into_contraction`) and batch norm disappears.
//!
//! Deliberately not done: reassociation on half types (each of their ops
//! rounds to a coarse type; compiled programs compute them in f32 after
//! `widen_half`, where these rules apply), any rewrite that changes the node's type (`x + 0`
//! where the zero broadcasts `x` to a larger shape stays), `x * 0` (wrong for
//! NaN and infinity), reassociation of non-constant operands, and
//! combining finite constants into a non-finite one (an overflow the
//! original order does not have).

use std::collections::HashMap;

use kiln_graph::op::Weight;
use kiln_graph::{BinaryOp, Graph, NodeId, Op, SliceAxis, TensorType, UnaryOp};

use super::{all_equal, constant};
use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Algebraic simplification; see the module docs.
pub struct SimplifyAlgebra;

struct Ctx<'a, 'b> {
    rb: &'b mut Rebuild<'a>,
    /// Users (in the old graph) of the old node each new node stands for.
    users: HashMap<NodeId, usize>,
}

impl Ctx<'_, '_> {
    fn g(&self) -> &Graph {
        self.rb.new_graph()
    }

    fn op(&self, id: NodeId) -> &Op {
        &self.g().node(id).op
    }

    fn single_user(&self, id: NodeId) -> bool {
        self.users.get(&id).copied() == Some(1)
    }

    fn binary_const(&self, id: NodeId, f: BinaryOp) -> Option<(NodeId, NodeId)> {
        match self.op(id) {
            Op::Binary { f: g } if *g == f => {
                let ins = self.g().inputs(id);
                match (constant(self.g(), ins[0]), constant(self.g(), ins[1])) {
                    (None, Some(_)) => Some((ins[0], ins[1])),
                    (Some(_), None) if matches!(f, BinaryOp::Add | BinaryOp::Mul) => {
                        Some((ins[1], ins[0]))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The type of `f(a, b)` where `b` is a constant of shape `b_shape`.
    fn result_type(
        &self,
        f: BinaryOp,
        a: NodeId,
        dtype: kiln_graph::DType,
        b_shape: &[usize],
    ) -> Option<TensorType> {
        let b = TensorType::new(dtype, b_shape.to_vec());
        Op::Binary { f }.infer(&[&self.g().node(a).ty, &b]).ok()
    }

    /// The broadcast shape of two constants.
    fn const_shape(&self, a: NodeId, b: NodeId) -> Option<Vec<usize>> {
        let (x, y) = (constant(self.g(), a)?, constant(self.g(), b)?);
        kiln_graph::shape::broadcast_concrete(&[x.shape(), y.shape()])
    }

    /// A new constant `f(a, b)` (broadcast), or `None` if it cannot be computed.
    fn fold(&mut self, f: BinaryOp, a: NodeId, b: NodeId, hint: &str) -> Result<Option<NodeId>> {
        let (x, y) = (
            constant(self.g(), a).cloned(),
            constant(self.g(), b).cloned(),
        );
        let (Some(x), Some(y)) = (x, y) else {
            return Ok(None);
        };
        let Some(out) = kiln_graph::shape::broadcast_concrete(&[x.shape(), y.shape()]) else {
            return Ok(None);
        };
        let Ok(v) = (Op::Binary { f }).eval(&[&x, &y], &out) else {
            return Ok(None);
        };
        // Two finite constants whose combination overflows stay apart:
        // `(y * 1e30) * 1e-30` is `y`, `y * (1e30 * 1e-30)` too, but
        // `(y * 1e-30) * 1e30` must not become `y * inf`.
        let finite = |a: &kiln_graph::Array| {
            !a.dtype().is_float() || a.to_f64_vec().iter().all(|v| v.is_finite())
        };
        if finite(&x) && finite(&y) && !finite(&v) {
            return Ok(None);
        }
        let loc = self.g().node(a).location.clone();
        Ok(Some(self.rb.add(
            hint,
            Op::Constant {
                value: Weight::new(v),
            },
            &[],
            loc,
        )?))
    }
}

fn is_full_slice(axes: &[SliceAxis], dims: &[usize]) -> bool {
    axes.iter().zip(dims).all(|(a, &d)| {
        let (start, len, step) = kiln_graph::ops::movement::slice_range(d, *a);
        step == 1 && start == 0 && len == d
    })
}

impl SimplifyAlgebra {
    /// The existing new node that old node `id` reduces to, if any.
    fn identity(&self, cx: &Ctx<'_, '_>, id: NodeId, ins: &[NodeId]) -> Option<NodeId> {
        let old = cx.rb.old();
        let n = old.node(id);
        let same_type = |x: NodeId| cx.g().node(x).ty == n.ty;
        let pick = |x: NodeId| same_type(x).then_some(x);
        let is_const = |x: NodeId, v: f64| constant(cx.g(), x).is_some_and(|a| all_equal(a, v));
        match &n.op {
            Op::Binary { f: BinaryOp::Add } if is_const(ins[1], 0.0) => pick(ins[0]),
            Op::Binary { f: BinaryOp::Add } if is_const(ins[0], 0.0) => pick(ins[1]),
            Op::Binary { f: BinaryOp::Sub } if is_const(ins[1], 0.0) => pick(ins[0]),
            Op::Binary { f: BinaryOp::Mul } if is_const(ins[1], 1.0) => pick(ins[0]),
            Op::Binary { f: BinaryOp::Mul } if is_const(ins[0], 1.0) => pick(ins[1]),
            Op::Binary {
                f: BinaryOp::Div | BinaryOp::Pow,
            } if is_const(ins[1], 1.0) => pick(ins[0]),
            Op::Unary { f: UnaryOp::Neg } => match cx.op(ins[0]) {
                Op::Unary { f: UnaryOp::Neg } => pick(cx.g().inputs(ins[0])[0]),
                _ => None,
            },
            Op::Cast { .. } => pick(ins[0]),
            Op::Reshape { .. } | Op::Broadcast { .. } => pick(ins[0]),
            Op::Permute { perm } if perm.iter().enumerate().all(|(i, &p)| i == p) => pick(ins[0]),
            Op::Slice { axes } => {
                let dims = cx.g().node(ins[0]).ty.shape.as_fixed()?;
                (is_full_slice(axes, &dims))
                    .then_some(ins[0])
                    .and_then(pick)
            }
            Op::Pad { before, after, .. } if before.iter().chain(after).all(|&p| p == 0) => {
                pick(ins[0])
            }
            Op::Concat { .. } if ins.len() == 1 => pick(ins[0]),
            _ => None,
        }
    }

    /// A rewrite of old node `id` into new nodes, if a rule applies.
    fn rewrite(
        &self,
        cx: &mut Ctx<'_, '_>,
        id: NodeId,
        ins: &[NodeId],
        report: &mut PassReport,
    ) -> Result<Option<NodeId>> {
        let op = cx.rb.old().node(id).op.clone();
        match &op {
            Op::Permute { perm } => {
                if let Op::Permute { perm: inner } = cx.op(ins[0]).clone() {
                    let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
                    let x = cx.g().inputs(ins[0])[0];
                    report.count("movement chains");
                    if composed.iter().enumerate().all(|(i, &p)| i == p) {
                        return Ok(Some(x));
                    }
                    return Ok(Some(cx.rb.replace(
                        id,
                        Op::Permute { perm: composed },
                        &[x],
                    )?));
                }
            }
            Op::Reshape { shape } => {
                if let Op::Reshape { .. } = cx.op(ins[0]) {
                    let x = cx.g().inputs(ins[0])[0];
                    report.count("movement chains");
                    if cx.g().node(x).ty.shape == *shape {
                        return Ok(Some(x));
                    }
                    return Ok(Some(cx.rb.replace(
                        id,
                        Op::Reshape {
                            shape: shape.clone(),
                        },
                        &[x],
                    )?));
                }
            }
            // x ^ 2 -> x * x, x ^ 3 -> (x * x) * x: GELU's tanh form cubes
            // its input, and pow has no vector code (a libm call per
            // element). Exact for signed zeros, infinities and NaN alike;
            // within an ulp or two of pow elsewhere. Half types keep pow
            // (each multiply would round to them).
            Op::Binary { f: BinaryOp::Pow } => {
                let ty = cx.rb.old().node(id).ty.clone();
                let power = [2.0, 3.0]
                    .into_iter()
                    .find(|&p| constant(cx.g(), ins[1]).is_some_and(|a| all_equal(a, p)));
                if let Some(p) = power.filter(|_| {
                    ty.dtype.is_float() && !ty.dtype.is_half() && cx.g().node(ins[0]).ty == ty
                }) {
                    let x = ins[0];
                    report.count("small powers");
                    let mul = Op::Binary { f: BinaryOp::Mul };
                    if p == 2.0 {
                        return Ok(Some(cx.rb.replace(id, mul, &[x, x])?));
                    }
                    let loc = cx.rb.old().node(id).location.clone();
                    let hint = format!("{}/square", cx.rb.old().node(id).name);
                    let sq = cx.rb.add(&hint, mul.clone(), &[x, x], loc)?;
                    cx.users.insert(sq, 1);
                    return Ok(Some(cx.rb.replace(id, mul, &[sq, x])?));
                }
            }
            Op::Binary { f: BinaryOp::Sub }
                if constant(cx.g(), ins[1]).is_some() && constant(cx.g(), ins[0]).is_none() =>
            {
                let c = constant(cx.g(), ins[1]).cloned().expect("checked");
                if c.dtype().is_float() {
                    let neg = kiln_graph::ops::elementwise::eval_unary(UnaryOp::Neg, &c)
                        .expect("float neg");
                    let loc = cx.g().node(ins[1]).location.clone();
                    let name = format!("{}/neg", cx.g().node(ins[1]).name);
                    let k = cx.rb.add(
                        &name,
                        Op::Constant {
                            value: Weight::new(neg),
                        },
                        &[],
                        loc,
                    )?;
                    report.count("sub to add");
                    return Ok(Some(cx.rb.replace(
                        id,
                        Op::Binary { f: BinaryOp::Add },
                        &[ins[0], k],
                    )?));
                }
            }
            Op::Binary {
                f: f @ (BinaryOp::Add | BinaryOp::Mul),
            } => {
                let f = *f;
                let (outer_x, outer_c) = match (constant(cx.g(), ins[0]), constant(cx.g(), ins[1]))
                {
                    (None, Some(_)) => (ins[0], ins[1]),
                    (Some(_), None) => (ins[1], ins[0]),
                    _ => return Ok(None),
                };
                let node_ty = cx.rb.old().node(id).ty.clone();
                let dtype = node_ty.dtype;
                // Each op on a half type rounds to it: regrouping constants
                // moves results by up to a half-type ulp (2^-8 for bf16).
                if dtype.is_half() {
                    return Ok(None);
                }
                // (y op c1) op c2 -> y op (c1 op c2)
                if let Some((y, c1)) = cx.binary_const(outer_x, f) {
                    let fits = cx
                        .const_shape(c1, outer_c)
                        .and_then(|s| cx.result_type(f, y, dtype, &s));
                    if cx.single_user(outer_x) && fits.as_ref() == Some(&node_ty) {
                        let name = format!(
                            "{}/{}",
                            cx.g().node(c1).name,
                            if f == BinaryOp::Add { "sum" } else { "product" }
                        );
                        if let Some(c) = cx.fold(f, c1, outer_c, &name)? {
                            report.count("reassociated");
                            return Ok(Some(cx.rb.replace(id, Op::Binary { f }, &[y, c])?));
                        }
                    }
                }
                // (mm + c1) * c2 -> mm * c2 + c1 * c2, for matmul/conv outputs.
                if f == BinaryOp::Mul && dtype.is_float() {
                    if let Some((y, c1)) = cx.binary_const(outer_x, BinaryOp::Add) {
                        let contraction = matches!(cx.op(y), Op::MatMul | Op::Conv2d { .. });
                        let c2_shape = constant(cx.g(), outer_c)
                            .map(|a| a.shape().to_vec())
                            .unwrap_or_default();
                        let scaled_fits =
                            cx.result_type(BinaryOp::Mul, y, dtype, &c2_shape).as_ref()
                                == Some(&node_ty);
                        let sum_fits = cx
                            .const_shape(c1, outer_c)
                            .and_then(|s| cx.result_type(BinaryOp::Add, y, dtype, &s));
                        if contraction
                            && cx.single_user(outer_x)
                            && scaled_fits
                            && sum_fits.as_ref() == Some(&node_ty)
                        {
                            let name = format!("{}/scaled", cx.g().node(c1).name);
                            if let Some(c) = cx.fold(BinaryOp::Mul, c1, outer_c, &name)? {
                                let loc = cx.rb.old().node(id).location.clone();
                                let hint = format!("{}/scale", cx.rb.old().node(id).name);
                                let scaled = cx.rb.add(
                                    &hint,
                                    Op::Binary { f: BinaryOp::Mul },
                                    &[y, outer_c],
                                    loc,
                                )?;
                                cx.users.insert(scaled, 1);
                                report.count("distributed");
                                return Ok(Some(cx.rb.replace(
                                    id,
                                    Op::Binary { f: BinaryOp::Add },
                                    &[scaled, c],
                                )?));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

impl Pass for SimplifyAlgebra {
    fn name(&self) -> &'static str {
        "simplify_algebra"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        let mut cx = Ctx {
            rb: &mut rb,
            users: HashMap::new(),
        };
        for id in g.topo_order() {
            let ins = cx.rb.mapped_inputs(id);
            if let Some(x) = self.identity(&cx, id, &ins) {
                cx.rb.alias(id, x);
                report.count("identities");
                continue;
            }
            let new = match self.rewrite(&mut cx, id, &ins, &mut report)? {
                Some(new) => {
                    cx.rb.alias(id, new);
                    new
                }
                None => cx.rb.copy(id)?,
            };
            cx.users.insert(
                new,
                g.users(id)
                    .len()
                    .max(usize::from(g.outputs().contains(&id)) * 2),
            );
        }
        Ok((rb.finish()?, report))
    }
}

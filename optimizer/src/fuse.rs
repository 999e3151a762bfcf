//! Fusion: deciding which graph nodes share a kernel.
//!
//! Walking the graph from its outputs back (XLA's producer-consumer
//! fusion), each node either joins the single kernel all its users are in
//! or starts a kernel of its own, whose result is then materialized in a
//! buffer:
//!
//! - Elementwise and movement ops (and iota, random) join their users'
//!   kernel when every user is in one kernel; a value needed by two kernels
//!   is computed once and stored, never recomputed.
//! - A reduction whose users are all in one elementwise kernel over the
//!   reduction's input shape becomes that kernel's anchor: the kernel reduces
//!   each row and then maps over it (softmax and layer norm: two kernels).
//!   Otherwise it ends its own kernel, absorbing its elementwise producers.
//! - Matmul, conv, pooling, gather and scatter-add take their users
//!   elementwise kernel as an epilogue when it runs over their output shape
//!   and keeps their dtype (an epilogue rewrites the result in place).
//! - Movement ops feeding a matmul join it as strided operand views (a
//!   transpose costs nothing); anything else feeding a matmul, conv, pool,
//!   gather or scatter is materialized.
//!
//! Deliberately not done: two reductions in one kernel, and fusing a
//! producer into a consumer that broadcasts it when the producer is a
//! reduction or contraction (that would recompute it), or a transcendental
//! (exp, log, tanh, sigmoid, erf, square roots, reciprocals, division)
//! broadcast eightfold or more: a squeeze-and-excitation block's sigmoid of
//! one value per channel would be computed once per pixel of the scaled
//! image (12,544 times per channel in EfficientNet's first block); stored,
//! it runs once per channel, in its producer's epilogue.

use std::collections::{BTreeSet, HashMap, HashSet};

use kiln_graph::{Graph, NodeId, Op};

/// What anchors a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// A pure elementwise/movement kernel.
    None,
    /// A reduction (sum/prod/max/min/argmax/argmin).
    Reduce(NodeId),
    /// A matmul.
    MatMul(NodeId),
    /// Conv, pooling, gather or scatter-add.
    Op(NodeId),
}

/// One kernel-to-be: its anchor, its root (whose value it stores) and members.
#[derive(Clone, Debug)]
pub struct Group {
    /// The anchor.
    pub anchor: Anchor,
    /// The node whose value the kernel writes.
    pub root: NodeId,
    /// Every node computed inside the kernel (anchor and root included).
    pub members: BTreeSet<NodeId>,
}

/// How a node takes part in fusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Placeholder, variable or constant: a buffer or an inline constant.
    Source,
    /// Elementwise, iota or random.
    Elementwise,
    /// Reshape, permute, broadcast, slice, pad, concat.
    Movement,
    /// Reduce or argmax/argmin.
    Reduce,
    /// Matmul.
    MatMul,
    /// Conv, pooling, gather, scatter-add.
    Opaque,
    /// Assign (no kernel; its value is stored for the update).
    Assign,
}

/// The class of an op.
pub fn class(op: &Op) -> Class {
    match op {
        Op::Placeholder { .. }
        | Op::Variable { .. }
        | Op::Constant { .. }
        | Op::SymbolicConstant { .. } => Class::Source,
        Op::Iota { .. } | Op::RandomUniform { .. } | Op::RandomNormal { .. } => Class::Elementwise,
        Op::Unary { .. } | Op::Binary { .. } | Op::Select | Op::Cast { .. } => Class::Elementwise,
        Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. } => Class::Movement,
        Op::Reduce { .. } | Op::ArgReduce { .. } => Class::Reduce,
        Op::MatMul => Class::MatMul,
        Op::Conv2d { .. }
        | Op::MaxPool2d { .. }
        | Op::AvgPool2d { .. }
        | Op::Gather { .. }
        | Op::ScatterAdd { .. } => Class::Opaque,
        Op::Assign => Class::Assign,
        Op::Group => Class::Elementwise,
        Op::Cond { .. } | Op::While { .. } | Op::WhileGrad { .. } => Class::Opaque,
    }
}

/// Whether an elementwise op costs enough per element (a transcendental
/// or a division) that recomputing it per broadcast element loses.
fn costly(op: &Op) -> bool {
    use kiln_graph::{BinaryOp, UnaryOp};
    match op {
        Op::Unary { f } => {
            f.approximated() || matches!(f, UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip)
        }
        Op::Binary { f } => matches!(f, BinaryOp::Div | BinaryOp::Pow),
        _ => false,
    }
}

/// Whether `n` is computed (through a few elementwise or movement ops)
/// from a reduction: a layer norm's reciprocal square root of the variance
/// stays in the reduction's row map, where it costs no second pass over
/// the rows.
fn after_reduce(g: &Graph, n: NodeId) -> bool {
    let mut todo = vec![(n, 0)];
    while let Some((m, depth)) = todo.pop() {
        for i in g.inputs(m) {
            match class(&g.node(i).op) {
                Class::Reduce => return true,
                Class::Elementwise | Class::Movement if depth < 8 => todo.push((i, depth + 1)),
                _ => {}
            }
        }
    }
    false
}

/// Groups the nodes `needed` into kernels. `forced` nodes are always
/// materialized (outputs, assigned values, operands of opaque ops, and what
/// lowering found it could not fuse). `shapes` are the concrete shapes.
pub fn group(
    g: &Graph,
    needed: &[NodeId],
    forced: &HashSet<NodeId>,
    shapes: &HashMap<NodeId, Vec<usize>>,
) -> Vec<Group> {
    let needed_set: HashSet<NodeId> = needed.iter().copied().collect();
    let mut group_of: HashMap<NodeId, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut shape_of_group: Vec<Vec<usize>> = Vec::new();
    for &n in needed.iter().rev() {
        let c = class(&g.node(n).op);
        if matches!(c, Class::Source | Class::Assign) {
            continue;
        }
        let users: Vec<NodeId> = g
            .users(n)
            .into_iter()
            .filter(|u| needed_set.contains(u))
            .collect();
        let target: Option<usize> = if forced.contains(&n) || users.is_empty() {
            None
        } else {
            let gs: BTreeSet<Option<usize>> =
                users.iter().map(|u| group_of.get(u).copied()).collect();
            match gs.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(k)] => Some(*k),
                _ => None,
            }
        };
        let joined = target.and_then(|k| {
            let grp = &groups[k];
            // Users for which `n` is an operand of the kernel's anchor.
            let operand_of: Vec<Class> = users
                .iter()
                .filter(|u| grp.anchor == Anchor::MatMul(**u) || grp.anchor == Anchor::Op(**u))
                .map(|u| class(&g.node(*u).op))
                .collect();
            match c {
                // Elementwise values feeding an anchor as operands are stored;
                // movement ops may feed a matmul as strided views.
                Class::Elementwise => {
                    let numel = |s: &[usize]| s.iter().product::<usize>();
                    let broadcast = numel(&shapes[&n]) * 8 <= numel(&shape_of_group[k]);
                    let recompute = broadcast && costly(&g.node(n).op) && !after_reduce(g, n);
                    (operand_of.is_empty() && !recompute).then_some(k)
                }
                Class::Movement => operand_of
                    .iter()
                    .all(|&uc| uc == Class::MatMul)
                    .then_some(k),
                Class::Reduce | Class::MatMul | Class::Opaque => {
                    // An epilogue writes over the contraction's result in place, so
                    // it must keep the result's dtype (a row map has no such limit).
                    let fits = match c {
                        Class::Reduce => shapes[&g.inputs(n)[0]] == shape_of_group[k],
                        _ => {
                            shapes[&n] == shape_of_group[k]
                                && g.node(grp.root).ty.dtype == g.node(n).ty.dtype
                        }
                    };
                    (grp.anchor == Anchor::None && fits).then_some(k)
                }
                Class::Source | Class::Assign => None,
            }
        });
        match joined {
            Some(k) => {
                let grp = &mut groups[k];
                grp.members.insert(n);
                match c {
                    Class::Reduce => grp.anchor = Anchor::Reduce(n),
                    Class::MatMul => grp.anchor = Anchor::MatMul(n),
                    Class::Opaque => grp.anchor = Anchor::Op(n),
                    _ => {}
                }
                group_of.insert(n, k);
            }
            None => {
                let anchor = match c {
                    Class::Reduce => Anchor::Reduce(n),
                    Class::MatMul => Anchor::MatMul(n),
                    Class::Opaque => Anchor::Op(n),
                    _ => Anchor::None,
                };
                let loop_shape = match c {
                    Class::Reduce => shapes[&g.inputs(n)[0]].clone(),
                    _ => shapes[&n].clone(),
                };
                groups.push(Group {
                    anchor,
                    root: n,
                    members: BTreeSet::from([n]),
                });
                shape_of_group.push(loop_shape);
                group_of.insert(n, groups.len() - 1);
            }
        }
    }
    groups
}

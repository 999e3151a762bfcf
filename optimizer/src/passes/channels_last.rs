//! `channels_last`: moves the convolutions of depthwise networks
//! (MobileNet, EfficientNet: chains of pointwise and depthwise layers
//! joined by elementwise activations, residual sums and squeeze-and-excite
//! gates) to NHWC, where the CPU runs a pointwise layer as one matrix
//! product over the input as it lies and a depthwise one vectorised over
//! the channels that lie side by side (see `kiln_rt::conv_nhwc`).
//!
//! Each such convolution becomes `permute(conv_nhwc(permute(x)))`; an
//! elementwise op or a keep-dims reduction of rank-4 values is rebuilt on
//! the NHWC values of its operands where one of them has one (the others,
//! constants or small values like a bias or a gate, permuted to match),
//! so the values between two convolutions of a chain stay NHWC and the
//! permutes in between are never used (dead-code elimination removes
//! them). What the pass does not rebuild (pooling windows, reshapes,
//! concatenations) takes the NCHW value, a transpose kernel.
//!
//! Which convolutions move: the graph's rank-4 f32 values that can be
//! NHWC (convolutions of one group or one channel per group, the
//! elementwise ops and reductions between them) fall into connected
//! regions; a region moves when it holds a depthwise convolution, and
//! then all its convolutions move. ResNet's regions hold none and stay on
//! the NCHW kernels (Winograd and the direct kernel), which its 3x3 layers
//! run faster.
//!
//! Not in the default pipeline: only the CPU compiler runs it (the CUDA
//! kernels are NCHW), with `CompileOptions::channels_last`.

use std::collections::HashMap;

use kiln_graph::op::Weight;
use kiln_graph::{Array, DType, Graph, NodeId, Op, ReduceOp, Shape};

use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// NCHW -> NHWC.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// NHWC -> NCHW.
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// See the module docs.
pub struct ChannelsLast;

/// How a node takes part.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// A convolution that can run NHWC; `depthwise` marks the regions that move.
    Conv { depthwise: bool },
    /// An elementwise op or keep-dims reduction of a rank-4 value.
    Follow,
}

fn f32_rank4(g: &Graph, id: NodeId) -> bool {
    let ty = &g.node(id).ty;
    ty.dtype == DType::F32 && ty.rank() == 4 && ty.shape.as_fixed().is_some()
}

fn role(g: &Graph, id: NodeId) -> Option<Role> {
    if !f32_rank4(g, id) {
        return None;
    }
    match &g.node(id).op {
        Op::Conv2d {
            groups,
            channels_last: false,
            ..
        } => {
            let w = g.node(g.inputs(id)[1]).ty.shape.as_fixed()?;
            let depthwise = w[1] == 1 && *groups == w[0] && *groups > 1;
            (*groups == 1 || depthwise).then_some(Role::Conv { depthwise })
        }
        Op::Unary { .. } | Op::Binary { .. } | Op::Select | Op::Cast { .. } => {
            // Every operand broadcasts into the rank-4 result.
            g.inputs(id)
                .iter()
                .all(|&i| g.node(i).ty.rank() <= 4)
                .then_some(Role::Follow)
        }
        Op::Reduce { keepdims: true, .. } => f32_rank4(g, g.inputs(id)[0]).then_some(Role::Follow),
        _ => None,
    }
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

impl ChannelsLast {
    /// The nodes that move: those of regions holding a depthwise convolution.
    fn moving(&self, g: &Graph) -> HashMap<NodeId, Role> {
        let order = g.topo_order();
        let roles: HashMap<NodeId, Role> = order
            .iter()
            .filter_map(|&id| Some((id, role(g, id)?)))
            .collect();
        let index: HashMap<NodeId, usize> =
            roles.keys().enumerate().map(|(i, &id)| (id, i)).collect();
        let mut parent: Vec<usize> = (0..index.len()).collect();
        for (&id, &i) in &index {
            // A convolution joins its data input's region; an elementwise op
            // or reduction all of its rank-4 operands'.
            let ins = g.inputs(id);
            let joined: &[NodeId] = match roles[&id] {
                Role::Conv { .. } => &ins[..1],
                Role::Follow => &ins,
            };
            for j in joined.iter().filter_map(|x| index.get(x)) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, *j));
                parent[a] = b;
            }
        }
        let mut has_depthwise = vec![false; index.len()];
        for (&id, &i) in &index {
            if roles[&id] == (Role::Conv { depthwise: true }) {
                let r = find(&mut parent, i);
                has_depthwise[r] = true;
            }
        }
        roles
            .into_iter()
            .filter(|(id, _)| {
                let r = find(&mut parent, index[id]);
                has_depthwise[r]
            })
            .collect()
    }
}

impl Pass for ChannelsLast {
    fn name(&self) -> &'static str {
        "channels_last"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let moving = self.moving(g);
        let mut rb = Rebuild::new(g);
        // Old node -> its value NHWC in the new graph.
        let mut nhwc: HashMap<NodeId, NodeId> = HashMap::new();
        for id in g.topo_order() {
            let Some(role) = moving.get(&id) else {
                rb.copy(id)?;
                continue;
            };
            let node = g.node(id);
            let loc = node.location.clone();
            let ins = g.inputs(id);
            let has_twin = ins.iter().any(|i| nhwc.contains_key(i));
            if *role == Role::Follow && !has_twin {
                rb.copy(id)?;
                continue;
            }
            // An operand's NHWC value: its own, or the NCHW one permuted
            // (a rank below 4 first padded with leading unit dims, as
            // broadcasting reads it); scalars as they are.
            let operand = |rb: &mut Rebuild<'_>, i: NodeId| -> Result<NodeId> {
                if let Some(&t) = nhwc.get(&i) {
                    return Ok(t);
                }
                let ty = &g.node(i).ty;
                let mut v = rb.mapped(i);
                if ty.rank() == 0 {
                    return Ok(v);
                }
                if ty.rank() < 4 {
                    let mut dims = vec![kiln_graph::Dim::from(1usize); 4 - ty.rank()];
                    dims.extend(ty.shape.dims().iter().cloned());
                    v = rb.add(
                        &format!("{}/nchw4", g.node(i).name),
                        Op::Reshape {
                            shape: Shape::from(dims),
                        },
                        &[v],
                        loc.clone(),
                    )?;
                }
                rb.add(
                    &format!("{}/nhwc", g.node(i).name),
                    Op::Permute {
                        perm: TO_NHWC.to_vec(),
                    },
                    &[v],
                    loc.clone(),
                )
            };
            let op = match (&node.op, role) {
                (
                    Op::Conv2d {
                        stride,
                        padding,
                        dilation,
                        groups,
                        ..
                    },
                    Role::Conv { .. },
                ) => {
                    report.count("convolutions");
                    Op::Conv2d {
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                        channels_last: true,
                    }
                }
                (
                    Op::Reduce {
                        f,
                        axes,
                        keepdims: true,
                    },
                    Role::Follow,
                ) => Op::Reduce {
                    f: *f,
                    axes: {
                        let mut a: Vec<usize> = axes.iter().map(|&a| TO_NCHW[a]).collect();
                        a.sort_unstable();
                        a
                    },
                    keepdims: true,
                },
                (op, _) => op.clone(),
            };
            let new_ins: Vec<NodeId> = match role {
                Role::Conv { .. } => vec![operand(&mut rb, ins[0])?, rb.mapped(ins[1])],
                Role::Follow => ins
                    .iter()
                    .map(|&i| operand(&mut rb, i))
                    .collect::<Result<_>>()?,
            };
            let t = match &op {
                Op::Reduce {
                    f: ReduceOp::Sum,
                    axes,
                    ..
                } if axes == &[1, 2] => {
                    // A sum over the pixels (a global average pool) as a
                    // product by ones, `[n, 1, h * w] @ [n, h * w, c]`: the
                    // row code then runs along the channels that lie side
                    // by side (a reduction over the middle axis walks them
                    // one at a time, 5x slower).
                    // (The old graph's NCHW dims.)
                    let s = g.node(ins[0]).ty.shape.as_fixed().unwrap_or_default();
                    let (n, c, pixels) = (s[0], s[1], s[2] * s[3]);
                    let flat = rb.add(
                        &format!("{}/pixels", node.name),
                        Op::Reshape {
                            shape: Shape::fixed(&[n, pixels, c]),
                        },
                        &new_ins,
                        loc.clone(),
                    )?;
                    let ones = rb.add(
                        &format!("{}/ones", node.name),
                        Op::Constant {
                            value: Weight::new(Array::filled(DType::F32, &[1, 1, pixels], 1.0)),
                        },
                        &[],
                        loc.clone(),
                    )?;
                    let sum = rb.add(
                        &format!("{}/sum", node.name),
                        Op::MatMul,
                        &[ones, flat],
                        loc.clone(),
                    )?;
                    rb.add(
                        &format!("{}/nhwc", node.name),
                        Op::Reshape {
                            shape: Shape::fixed(&[n, 1, 1, c]),
                        },
                        &[sum],
                        loc.clone(),
                    )?
                }
                _ => rb.add(&format!("{}/nhwc", node.name), op, &new_ins, loc.clone())?,
            };
            nhwc.insert(id, t);
            // The NCHW value, for users outside the region (unused, and so
            // removed, where there are none).
            rb.replace(
                id,
                Op::Permute {
                    perm: TO_NCHW.to_vec(),
                },
                &[t],
            )?;
        }
        Ok((rb.finish()?, report))
    }
}

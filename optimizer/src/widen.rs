//! Half types in compiled programs: `f16` and `bf16` mean "compute in f32,
//! round each result once" (`kiln_graph::Op::eval`). Before anything else,
//! [`widen_half`] makes that explicit: every op with a half input or half
//! type of its own runs on inputs cast to f32, and its result, where it is
//! half, is cast back. What remains of the half types in the graph is
//! storage (placeholders, variables, constants, results) and casts
//! between them and f32 or f64, which is all the backends convert.

use std::collections::HashMap;

use kiln_graph::{DType, Graph, NodeId, Op};

use crate::error::Result;
use crate::rewrite::Rebuild;

/// The dtype an op carries itself (iota and random sources).
fn own_dtype(op: &Op) -> Option<DType> {
    match op {
        Op::Iota { dtype, .. }
        | Op::RandomUniform { dtype, .. }
        | Op::RandomNormal { dtype, .. } => Some(*dtype),
        _ => None,
    }
}

/// `op` with a half dtype of its own changed to f32.
fn widened_op(op: &Op) -> Op {
    let mut op = op.clone();
    if let Op::Iota { dtype, .. }
    | Op::RandomUniform { dtype, .. }
    | Op::RandomNormal { dtype, .. } = &mut op
    {
        if dtype.is_half() {
            *dtype = DType::F32;
        }
    }
    op
}

/// The graph with every computation on half types done in f32 (see the
/// module docs); the graph itself where it has none.
pub fn widen_half(g: &Graph) -> Result<Graph> {
    let has_half = g.topo_order().into_iter().any(|id| {
        let n = g.node(id);
        n.ty.dtype.is_half() || own_dtype(&n.op).is_some_and(DType::is_half)
    });
    if !has_half {
        return Ok(g.clone());
    }
    let mut rb = Rebuild::new(g);
    // Each new node's f32 copy, made once.
    let mut wide: HashMap<NodeId, NodeId> = HashMap::new();
    for id in g.topo_order() {
        let n = g.node(id);
        let inputs = rb.mapped_inputs(id);
        let dtype_of = |rb: &Rebuild<'_>, x: NodeId| rb.new_graph().node(x).ty.dtype;
        let mut cast = |rb: &mut Rebuild<'_>, x: NodeId, to: DType| -> Result<NodeId> {
            if to == DType::F32 {
                if let Some(&w) = wide.get(&x) {
                    return Ok(w);
                }
            }
            let hint = format!("{}_{to}", rb.new_graph().node(x).name);
            let c = rb.add(&hint, Op::Cast { to }, &[x], n.location.clone())?;
            if to == DType::F32 {
                wide.insert(x, c);
            }
            Ok(c)
        };
        match &n.op {
            Op::Cast { to } => {
                let from = dtype_of(&rb, inputs[0]);
                // Backends convert half from and to f32 and f64 only: other
                // casts go through them, which the reference's meaning
                // (`cast_scalar`) makes exact.
                let via = if from.is_half() && !matches!(to, DType::F32 | DType::F64) {
                    Some(DType::F32)
                } else if to.is_half() && !matches!(from, DType::F32 | DType::F64) {
                    Some(DType::F64)
                } else {
                    None
                };
                match via {
                    Some(v) => {
                        let c = cast(&mut rb, inputs[0], v)?;
                        rb.replace(id, n.op.clone(), &[c])?;
                    }
                    None => {
                        rb.copy(id)?;
                    }
                }
            }
            Op::Constant { .. }
            | Op::Placeholder { .. }
            | Op::Variable { .. }
            | Op::Assign
            | Op::Group
            | Op::Cond { .. }
            | Op::While { .. }
            | Op::WhileGrad { .. } => {
                rb.copy(id)?;
            }
            op => {
                let half_in = inputs.iter().any(|&x| dtype_of(&rb, x).is_half());
                let own = own_dtype(op).is_some_and(DType::is_half);
                if !half_in && !own {
                    rb.copy(id)?;
                    continue;
                }
                let mut ins = Vec::with_capacity(inputs.len());
                for &x in &inputs {
                    ins.push(if dtype_of(&rb, x).is_half() {
                        cast(&mut rb, x, DType::F32)?
                    } else {
                        x
                    });
                }
                let op32 = widened_op(op);
                if n.ty.dtype.is_half() {
                    let w = rb.add(&format!("{}_f32", n.name), op32, &ins, n.location.clone())?;
                    rb.replace(id, Op::Cast { to: n.ty.dtype }, &[w])?;
                } else {
                    rb.replace(id, op32, &ins)?;
                }
            }
        }
    }
    rb.finish()
}

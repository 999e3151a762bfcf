//! The reference interpreter: evaluates a graph op by op on the host, simply
//! and obviously correctly. It defines what every op means and is the oracle
//! every pass and backend is checked against.
//!
//! Variable semantics: every read of a variable in one run sees its value at
//! the start of the run; assignments take effect when the run ends. Two
//! assignments to one variable in one run are an error.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::array::Array;
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::shape::Bindings;

/// What a run produced: the fetched values and the variable updates to commit.
#[derive(Debug)]
pub struct RunOutput {
    /// One value per fetch, in fetch order.
    pub fetched: Vec<Array>,
    /// New variable values, to apply when the run ends.
    pub updates: Vec<(NodeId, Array)>,
}

/// Inputs of one run: fed placeholder values, current variable values and
/// the sizes of symbolic dims.
pub struct RunInputs<'a> {
    /// Values of placeholders, by placeholder name.
    pub feeds: &'a HashMap<&'a str, &'a Array>,
    /// Current values of variables, by variable name.
    pub variables: &'a HashMap<String, Array>,
    /// Sizes of symbolic dims.
    pub bindings: &'a Bindings,
}

/// Evaluates the nodes `fetches` depend on and returns the fetched values.
pub fn run(graph: &Graph, inputs: &RunInputs<'_>, fetches: &[NodeId]) -> Result<RunOutput> {
    let order = graph.ancestors(fetches);
    let mut values: HashMap<NodeId, Cow<'_, Array>> = HashMap::with_capacity(order.len());
    let mut updates: Vec<(NodeId, Array)> = Vec::new();
    // The nodes of one control-flow call (one per result) run it once.
    let calls = crate::ops::control::CallCache::default();
    for id in order {
        let node = graph.node(id);
        let eval_err = |reason: String| Error::Eval {
            node: node.name.clone(),
            op: node.op.name().into(),
            reason,
        };
        if !node.checks.is_empty() {
            graph.check_node(id, inputs.bindings)?;
        }
        let out_shape = node.ty.shape.resolve(inputs.bindings).map_err(|why| {
            eval_err(format!(
                "its shape {} has no size in this run: {why}",
                node.ty.shape
            ))
        })?;
        let bytes = crate::array::checked_product(&out_shape)
            .and_then(|n| n.checked_mul(node.ty.dtype.size_bytes()));
        if bytes.is_none_or(|b| b > isize::MAX as usize) {
            return Err(eval_err(format!(
                "its output {out_shape:?} is too large to allocate"
            )));
        }
        // A large output (a shape from a file, say) is first asked of the
        // allocator fallibly, so that memory it cannot give is an error of
        // this node rather than an abort.
        if let Some(b) = bytes.filter(|&b| b > 1 << 30) {
            if Vec::<u8>::new().try_reserve_exact(b).is_err() {
                return Err(eval_err(format!(
                    "its output {out_shape:?} needs {b} bytes, more than can be allocated"
                )));
            }
        }
        let value: Cow<'_, Array> = match &node.op {
            Op::Placeholder { .. } => Cow::Borrowed(
                *inputs
                    .feeds
                    .get(node.name.as_str())
                    .ok_or_else(|| eval_err("placeholder was not fed".into()))?,
            ),
            Op::Variable { .. } => Cow::Borrowed(
                inputs
                    .variables
                    .get(&node.name)
                    .ok_or_else(|| eval_err("variable has no value in this session".into()))?,
            ),
            Op::Constant { value } => Cow::Borrowed(&*value.0),
            Op::SymbolicConstant {
                dtype,
                shape,
                values,
            } => Cow::Owned(
                crate::ops::symbolic::eval(*dtype, shape, values, inputs.bindings)
                    .map_err(eval_err)?,
            ),
            op if op.is_control_flow() => {
                let ins: Vec<NodeId> = graph.inputs(id);
                let args: Vec<&Array> = ins.iter().map(|i| values[i].as_ref()).collect();
                let v = crate::ops::control::eval(
                    op,
                    graph.functions(),
                    &args,
                    inputs.bindings,
                    &calls,
                    &crate::ops::control::Interpreted,
                )
                .map_err(|e| eval_err(e.to_string()))?;
                Cow::Owned(v)
            }
            op => {
                let ins: Vec<NodeId> = graph.inputs(id);
                let args: Vec<&Array> = ins.iter().map(|i| values[i].as_ref()).collect();
                let v = op.eval(&args, &out_shape).map_err(eval_err)?;
                if let Op::Assign = op {
                    if updates.iter().any(|(var, _)| *var == ins[0]) {
                        return Err(eval_err(format!(
                            "variable '{}' is assigned more than once in one run",
                            graph.node(ins[0]).name
                        )));
                    }
                    updates.push((ins[0], v.clone()));
                }
                Cow::Owned(v)
            }
        };
        if value.shape() != out_shape.as_slice() || value.dtype() != node.ty.dtype {
            return Err(eval_err(format!(
                "produced {}{:?} but its type is {} (resolved to {:?})",
                value.dtype(),
                value.shape(),
                node.ty,
                out_shape
            )));
        }
        values.insert(id, value);
    }
    let fetched = fetches
        .iter()
        .map(|f| values[f].clone().into_owned())
        .collect();
    Ok(RunOutput { fetched, updates })
}

//! Evaluating nodes at import time: the fold limit of the running import
//! ([`fold_limit`]), evaluating a scratch builder's outputs ([`evaluate`])
//! and building a computation or folding it to constants
//! ([`build_or_fold`]).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_graph::{Array, GraphBuilder, Tensor};

use crate::ops::{self};
use crate::scope::Value;

thread_local! {
    /// The fold limit of the import running on this thread
    /// ([`ImportOptions::fold_limit_bytes`]): read where nodes are
    /// evaluated, deep in the walk and in converters, where threading it
    /// through every call would not pay.
    static FOLD_LIMIT: std::cell::Cell<usize> =
        const { std::cell::Cell::new(crate::DEFAULT_FOLD_LIMIT_BYTES) };
}

/// The most bytes one node may compute at import time (see
/// [`ImportOptions::fold_limit_bytes`]); a converter computing a constant
/// of its own (`Range`, `EyeLike`) builds a run-time op above it.
pub(crate) fn fold_limit() -> usize {
    FOLD_LIMIT.with(|l| l.get())
}

/// Sets the fold limit of this thread's import until dropped.
pub(crate) struct FoldLimit(usize);

impl FoldLimit {
    pub(crate) fn set(bytes: usize) -> FoldLimit {
        FoldLimit(FOLD_LIMIT.with(|l| l.replace(bytes)))
    }
}

impl Drop for FoldLimit {
    fn drop(&mut self) {
        FOLD_LIMIT.with(|l| l.set(self.0));
    }
}

/// The bytes a value of type `ty` holds (`None`: not a fixed shape, or
/// more than a `usize` counts).
fn value_bytes(ty: &kiln_graph::TensorType) -> Option<usize> {
    ty.shape
        .as_fixed()?
        .iter()
        .try_fold(ty.dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
}

/// Evaluates `outs` of the scratch builder `scratch` (whose inputs are all
/// constants); `None` where the values it would compute (every node but
/// the constants) hold more than [`fold_limit`] bytes: the node then stays
/// a graph op, computed at run time.
pub(crate) fn evaluate(scratch: &GraphBuilder, outs: &[Tensor<'_>]) -> ops::R<Option<Vec<Array>>> {
    let ids: Vec<_> = outs.iter().map(|t| t.id()).collect();
    let graph = scratch.graph();
    let limit = fold_limit();
    let mut total = 0usize;
    for id in graph.ancestors(&ids) {
        let node = graph.node(id);
        if matches!(node.op, kiln_graph::Op::Constant { .. }) {
            continue;
        }
        total = match value_bytes(&node.ty).and_then(|b| total.checked_add(b)) {
            Some(t) if t <= limit => t,
            _ => return Ok(None),
        };
    }
    let run = kiln_graph::interp::run(
        &graph,
        &kiln_graph::interp::RunInputs {
            feeds: &HashMap::new(),
            variables: &HashMap::new(),
            bindings: &kiln_graph::Bindings::new(),
        },
        &ids,
    )
    .map_err(|e| format!("evaluating its constant inputs: {e}"))?;
    Ok(Some(run.fetched))
}

/// A computation on tensors, on any builder (`build_or_fold`).
type Build<'f> = &'f dyn for<'b> Fn(&'b GraphBuilder, &[Tensor<'b>]) -> ops::R<Vec<Tensor<'b>>>;

/// `f` built on `g` over `inputs`, or evaluated at import time when every
/// input is known then (its results are then constants).
pub(crate) fn build_or_fold<'g>(
    g: &'g GraphBuilder,
    inputs: &[Value<'g>],
    f: Build<'_>,
) -> ops::R<Vec<Value<'g>>> {
    let constants: Option<Vec<&Arc<Array>>> = inputs.iter().map(|v| v.constant.as_ref()).collect();
    if let Some(arrays) = constants.filter(|a| !a.is_empty()) {
        let scratch = GraphBuilder::new();
        let ts = arrays
            .iter()
            .map(|a| scratch.constant_shared(Arc::clone(a)))
            .collect::<kiln_graph::Result<Vec<_>>>()?;
        let outs = f(&scratch, &ts)?;
        if let Some(arrays) = evaluate(&scratch, &outs)? {
            return arrays
                .into_iter()
                .map(|a| {
                    let t = g.constant(a)?;
                    Ok(Value::of(t))
                })
                .collect();
        }
        // Too large to evaluate now: built like the rest.
    }
    let ts: Vec<Tensor<'g>> = inputs.iter().map(|v| v.t).collect();
    Ok(f(g, &ts)?.into_iter().map(Value::of).collect())
}

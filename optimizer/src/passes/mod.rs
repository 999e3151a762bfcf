//! The graph passes. Each file holds one pass, documented with what it does
//! and what it deliberately does not do.

mod channels_last;
mod eliminate_common_subexpressions;
mod eliminate_dead_code;
mod fold_constants;
mod fold_scale_into_contraction;
mod freeze_variables;
mod simplify_algebra;

pub use channels_last::ChannelsLast;
pub use eliminate_common_subexpressions::EliminateCommonSubexpressions;
pub use eliminate_dead_code::EliminateDeadCode;
pub use fold_constants::FoldConstants;
pub use fold_scale_into_contraction::FoldScaleIntoContraction;
pub use freeze_variables::FreezeVariables;
pub use simplify_algebra::SimplifyAlgebra;

use kiln_graph::{Array, Graph, NodeId, Op};

use crate::pass::{Pass, Pipeline};

/// The simplification passes, in the order the default pipeline runs them.
pub fn simplification_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(FoldConstants::default()),
        Box::new(SimplifyAlgebra),
        Box::new(FoldScaleIntoContraction),
        Box::new(EliminateCommonSubexpressions),
        Box::new(EliminateDeadCode),
    ]
}

/// The default pipeline: simplification to a fixpoint. With `freeze`,
/// variables that nothing assigns first become constants (inference).
pub fn default_pipeline(freeze: bool) -> Pipeline {
    let prelude: Vec<Box<dyn Pass>> = if freeze {
        vec![Box::new(FreezeVariables)]
    } else {
        Vec::new()
    };
    // Freezing runs once, first: after dead-code elimination the assignments
    // that keep a variable a variable may be gone from the graph.
    Pipeline::new(simplification_passes()).with_prelude(prelude)
}

/// Every pass by name (for `--after` and `--only` knobs).
pub fn all_pass_names() -> Vec<&'static str> {
    let mut v = vec![FreezeVariables.name()];
    v.extend(simplification_passes().iter().map(|p| p.name()));
    v
}

/// The value of a constant node.
pub(crate) fn constant(g: &Graph, id: NodeId) -> Option<&Array> {
    match &g.node(id).op {
        Op::Constant { value } => Some(&value.0),
        _ => None,
    }
}

/// True when `a` is non-empty and every element equals `v`.
pub(crate) fn all_equal(a: &Array, v: f64) -> bool {
    !a.is_empty() && a.to_f64_vec().iter().all(|&x| x == v)
}

//! `fold_constants`: evaluates nodes whose inputs are all constants, whole
//! constant subgraphs included (one topological sweep folds chains), using
//! the ops' reference meaning.
//!
//! Deliberately not done: folding sources (random values, iota) or anything
//! stateful (variables, assign); folding nodes with symbolic shapes; and
//! folding that grows the constant data (a broadcast of a scalar to a large
//! shape stays a cheap view instead of becoming a large weight) — unless
//! the grown values feed a transcendental function (sin, cos, exp, log,
//! tanh, erf, pow, ...), whose result of at most [`FoldConstants::max_table`]
//! elements is folded: a rotary-embedding table or a fixed mask is then
//! computed once, as an import at fixed sizes computes it, instead of on
//! every run.

use kiln_graph::{Array, Graph, Op};

use super::constant;
use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Constant folding; see the module docs.
pub struct FoldConstants {
    /// Largest output (elements) a fold may create beyond its largest input.
    pub max_growth: usize,
    /// Largest output (elements) of a transcendental function folded over
    /// grown constant values.
    pub max_table: usize,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants {
            max_growth: 64,
            max_table: 1 << 16,
        }
    }
}

/// Functions worth computing once rather than on every run.
fn is_costly(op: &Op) -> bool {
    use kiln_graph::{BinaryOp, UnaryOp};
    match op {
        Op::Unary { f } => !matches!(
            f,
            UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sign
                | UnaryOp::Floor
                | UnaryOp::Ceil
                | UnaryOp::Round
                | UnaryOp::Not
        ),
        Op::Binary { f } => matches!(f, BinaryOp::Pow),
        _ => false,
    }
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold_constants"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        // Values of nodes kept as ops because folding them grows the
        // constant data, by old id: a costly function over them folds.
        let mut grown: std::collections::HashMap<kiln_graph::NodeId, Array> = Default::default();
        for id in g.topo_order() {
            let n = g.node(id);
            let foldable = !n.op.is_source() && !matches!(n.op, Op::Assign);
            let ins = rb.mapped_inputs(id);
            let old_ins = g.inputs(id);
            let values: Option<Vec<&Array>> = ins
                .iter()
                .zip(&old_ins)
                .map(|(&i, old)| constant(rb.new_graph(), i).or_else(|| grown.get(old)))
                .collect();
            let out = n.ty.shape.as_fixed();
            match (foldable, values, out) {
                (true, Some(values), Some(out)) => {
                    let uses_grown = old_ins.iter().any(|i| grown.contains_key(i));
                    let largest = values
                        .iter()
                        .zip(&old_ins)
                        .filter(|(_, i)| !grown.contains_key(i))
                        .map(|(a, _)| a.len())
                        .max()
                        .unwrap_or(0);
                    let count: usize = out.iter().product();
                    let grows = uses_grown || (count > largest.max(1) && count > self.max_growth);
                    if grows && !(is_costly(&n.op) && count <= self.max_table) {
                        // Kept; its value is remembered (within the table
                        // bound) for a costly function further on.
                        if count <= self.max_table {
                            if let Ok(v) = n.op.eval(&values, &out) {
                                grown.insert(id, v);
                            }
                        }
                        rb.copy(id)?;
                        continue;
                    }
                    match n.op.eval(&values, &out) {
                        Ok(v) => {
                            rb.replace(
                                id,
                                Op::Constant {
                                    value: kiln_graph::op::Weight::new(v),
                                },
                                &[],
                            )?;
                            report.count("folded");
                        }
                        // A constant expression that fails (e.g. an out-of-range
                        // gather) is left for run time to report.
                        Err(_) => {
                            rb.copy(id)?;
                        }
                    }
                }
                _ => {
                    rb.copy(id)?;
                }
            }
        }
        Ok((rb.finish()?, report))
    }
}

//! `fold_constants`: evaluates nodes whose inputs are all constants, whole
//! constant subgraphs included (one topological sweep folds chains), using
//! the ops' reference meaning.
//!
//! Deliberately not done: folding sources (random values, iota) or anything
//! stateful (variables, assign); folding nodes with symbolic shapes; and
//! folding that grows the constant data (a broadcast of a scalar to a large
//! shape stays a cheap view instead of becoming a large weight).

use kiln_graph::{Array, Graph, Op};

use super::constant;
use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Constant folding; see the module docs.
pub struct FoldConstants {
    /// Largest output (elements) a fold may create beyond its largest input.
    pub max_growth: usize,
}

impl Default for FoldConstants {
    fn default() -> Self {
        FoldConstants { max_growth: 64 }
    }
}

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold_constants"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        for id in g.topo_order() {
            let n = g.node(id);
            let foldable = !n.op.is_source() && !matches!(n.op, Op::Assign);
            let ins = rb.mapped_inputs(id);
            let values: Option<Vec<&Array>> =
                ins.iter().map(|&i| constant(rb.new_graph(), i)).collect();
            let out = n.ty.shape.as_fixed();
            match (foldable, values, out) {
                (true, Some(values), Some(out)) => {
                    let largest = values.iter().map(|a| a.len()).max().unwrap_or(0);
                    let count: usize = out.iter().product();
                    if count > largest.max(1) && count > self.max_growth {
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

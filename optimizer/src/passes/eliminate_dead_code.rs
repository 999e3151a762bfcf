//! `eliminate_dead_code`: removes every node the graph's outputs do not
//! depend on.
//!
//! Deliberately not done: keeping unused placeholders or variables (the
//! session validates feeds against the original graph, not this one) or
//! assignments that are not outputs (they would not run anyway).

use kiln_graph::Graph;

use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Dead-code elimination; see the module docs.
pub struct EliminateDeadCode;

impl Pass for EliminateDeadCode {
    fn name(&self) -> &'static str {
        "eliminate_dead_code"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let live = g.ancestors(g.outputs());
        for _ in live.len()..g.len() {
            report.count("removed");
        }
        let mut rb = Rebuild::new(g);
        for id in live {
            rb.copy(id)?;
        }
        Ok((rb.finish()?, report))
    }
}

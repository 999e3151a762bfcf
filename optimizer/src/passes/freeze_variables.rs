//! `freeze_variables`: turns every variable that no assignment in the
//! graph updates into a constant holding its current value, so inference
//! graphs can fold through their weights (batch-norm statistics included).
//!
//! Deliberately not done: freezing a variable that some `assign` updates
//! (its value changes between runs).

use std::collections::HashSet;

use kiln_graph::{Graph, Op};

use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Variable freezing; see the module docs.
pub struct FreezeVariables;

impl Pass for FreezeVariables {
    fn name(&self) -> &'static str {
        "freeze_variables"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let assigned: HashSet<_> = g
            .topo_order()
            .into_iter()
            .filter(|&id| matches!(g.node(id).op, Op::Assign))
            .map(|id| g.inputs(id)[0])
            .collect();
        let mut rb = Rebuild::new(g);
        for id in g.topo_order() {
            match &g.node(id).op {
                Op::Variable { init, .. } if !assigned.contains(&id) => {
                    rb.replace(
                        id,
                        Op::Constant {
                            value: init.clone(),
                        },
                        &[],
                    )?;
                    report.count("frozen");
                }
                _ => {
                    rb.copy(id)?;
                }
            }
        }
        Ok((rb.finish()?, report))
    }
}

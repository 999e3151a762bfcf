//! `eliminate_common_subexpressions`: merges nodes that apply the same op
//! with the same attributes to the same inputs, and identical constants.
//!
//! Deliberately not done: merging placeholders, variables or assignments
//! (each is a distinct piece of state), or ops that differ only in name.

use std::collections::HashMap;

use kiln_graph::{Graph, NodeId, Op};

use crate::error::Result;
use crate::pass::{Pass, PassReport};
use crate::rewrite::Rebuild;

/// Common-subexpression elimination; see the module docs.
pub struct EliminateCommonSubexpressions;

/// A key equal for nodes that compute the same value (constants compare by data).
fn key(g: &Graph, op: &Op, inputs: &[NodeId]) -> Option<String> {
    match op {
        Op::Placeholder { .. } | Op::Variable { .. } | Op::Assign => None,
        Op::Constant { value } => {
            let a = &value.0;
            let mut h: u64 = 0xCBF2_9CE4_8422_2325;
            for b in a.data().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
            }
            Some(format!("const {} {:?} {h:x}", a.dtype(), a.shape()))
        }
        // Debug, not JSON: JSON writes every non-finite float as `null`, which
        // made pads with -inf, +inf and NaN one key. Debug keeps each f64
        // attribute exact (shortest round-trip form, inf, -inf, NaN, -0.0).
        _ => {
            let _ = g;
            Some(format!("{op:?} {inputs:?}"))
        }
    }
}

impl Pass for EliminateCommonSubexpressions {
    fn name(&self) -> &'static str {
        "eliminate_common_subexpressions"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        let mut seen: HashMap<String, NodeId> = HashMap::new();
        for id in g.topo_order() {
            let n = g.node(id);
            let ins = rb.mapped_inputs(id);
            let k = key(g, &n.op, &ins);
            if let Some(existing) = k.as_ref().and_then(|k| seen.get(k)) {
                // Hash collisions of constants are ruled out by comparing the data.
                let same = match (&n.op, &rb.new_graph().node(*existing).op) {
                    (Op::Constant { value: a }, Op::Constant { value: b }) => {
                        a.0.data().to_le_bytes() == b.0.data().to_le_bytes()
                    }
                    _ => true,
                };
                if same {
                    rb.alias(id, *existing);
                    report.count("merged");
                    continue;
                }
            }
            let new = rb.copy(id)?;
            if let Some(k) = k {
                seen.entry(k).or_insert(new);
            }
        }
        Ok((rb.finish()?, report))
    }
}

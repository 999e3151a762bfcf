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

/// A key equal for nodes that compute the same value. A constant's key is
/// its dtype, shape and a hash of a sample of its bytes (at most 4 KiB, so
/// a model's megabytes of weights are not read in every round of the
/// pipeline); equal keys are confirmed by comparing the whole data.
fn key(op: &Op, inputs: &[NodeId]) -> Option<String> {
    match op {
        Op::Placeholder { .. } | Op::Variable { .. } | Op::Assign => None,
        Op::Constant { value } => {
            let a = &value.0;
            let bytes = a.as_bytes();
            const SAMPLE: usize = 4096;
            let mut h: u64 = 0xCBF2_9CE4_8422_2325;
            let mut mix = |b: u8| h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
            if bytes.len() <= SAMPLE {
                bytes.iter().for_each(|&b| mix(b));
            } else {
                // The first and last KiB, and 2 KiB spread over the rest.
                bytes[..1024].iter().for_each(|&b| mix(b));
                bytes[bytes.len() - 1024..].iter().for_each(|&b| mix(b));
                let step = bytes.len() / 2048;
                (0..2048).for_each(|i| mix(bytes[i * step]));
            }
            Some(format!("const {} {:?} {h:x}", a.dtype(), a.shape()))
        }
        // Debug, not JSON: JSON writes every non-finite float as `null`, which
        // made pads with -inf, +inf and NaN one key. Debug keeps each f64
        // attribute exact (shortest round-trip form, inf, -inf, NaN, -0.0).
        _ => Some(format!("{op:?} {inputs:?}")),
    }
}

impl Pass for EliminateCommonSubexpressions {
    fn name(&self) -> &'static str {
        "eliminate_common_subexpressions"
    }

    fn run(&self, g: &Graph) -> Result<(Graph, PassReport)> {
        let mut report = PassReport::new(self.name());
        let mut rb = Rebuild::new(g);
        // Per key, the nodes kept (constants whose samples agree but whose
        // data differs each stay).
        let mut seen: HashMap<String, Vec<NodeId>> = HashMap::new();
        for id in g.topo_order() {
            let n = g.node(id);
            let ins = rb.mapped_inputs(id);
            let k = key(&n.op, &ins);
            let existing = k.as_ref().and_then(|k| seen.get(k)).and_then(|nodes| {
                nodes
                    .iter()
                    .copied()
                    .find(|&e| match (&n.op, &rb.new_graph().node(e).op) {
                        (Op::Constant { value: a }, Op::Constant { value: b }) => {
                            std::sync::Arc::ptr_eq(&a.0, &b.0) || a.0.same_bits(&b.0)
                        }
                        _ => true,
                    })
            });
            if let Some(existing) = existing {
                rb.alias(id, existing);
                report.count("merged");
                continue;
            }
            let new = rb.copy(id)?;
            if let Some(k) = k {
                seen.entry(k).or_default().push(new);
            }
        }
        Ok((rb.finish()?, report))
    }
}

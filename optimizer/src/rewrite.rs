//! Building a rewritten graph from an old one: passes never mutate the
//! graph they walk; they copy, replace or alias nodes into a new graph.

use std::collections::HashMap;

use kiln_graph::{Graph, NodeId, Op, SourceLoc};

use crate::error::Result;

/// A new graph under construction from `old`, with a map from old node ids
/// to the new nodes that now compute their values.
pub struct Rebuild<'a> {
    old: &'a Graph,
    new: Graph,
    map: HashMap<NodeId, NodeId>,
}

impl<'a> Rebuild<'a> {
    /// Starts an empty rebuild of `old`.
    pub fn new(old: &'a Graph) -> Rebuild<'a> {
        Rebuild {
            old,
            new: old.empty_like(),
            map: HashMap::new(),
        }
    }

    /// The graph being rewritten.
    pub fn old(&self) -> &'a Graph {
        self.old
    }

    /// The graph built so far.
    pub fn new_graph(&self) -> &Graph {
        &self.new
    }

    /// The new node standing for old node `id` (which must be handled already).
    pub fn mapped(&self, id: NodeId) -> NodeId {
        self.map[&id]
    }

    /// The new inputs of old node `id`.
    pub fn mapped_inputs(&self, id: NodeId) -> Vec<NodeId> {
        self.old.inputs(id).iter().map(|i| self.map[i]).collect()
    }

    /// Copies old node `id` unchanged (inputs remapped).
    pub fn copy(&mut self, id: NodeId) -> Result<NodeId> {
        let inputs = self.mapped_inputs(id);
        let new = self.new.add_copy(self.old, id, &inputs)?;
        self.map.insert(id, new);
        Ok(new)
    }

    /// Replaces old node `id` by `op` over new `inputs`, keeping its name and location.
    pub fn replace(&mut self, id: NodeId, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        let n = self.old.node(id);
        let new = self.new.add_node(&n.name, op, inputs, n.location.clone())?;
        self.map.insert(id, new);
        Ok(new)
    }

    /// Makes old node `id` stand for the existing new node `to`.
    pub fn alias(&mut self, id: NodeId, to: NodeId) {
        self.map.insert(id, to);
    }

    /// Adds a helper node with a fresh name derived from `hint`.
    pub fn add(
        &mut self,
        hint: &str,
        op: Op,
        inputs: &[NodeId],
        location: SourceLoc,
    ) -> Result<NodeId> {
        let mut name = hint.to_string();
        let mut k = 0;
        while self.new.has_name(&name) || self.old.has_name(&name) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        Ok(self.new.add_node(&name, op, inputs, location)?)
    }

    /// Finishes the rebuild: the old graph's outputs, remapped position by
    /// position, become the new outputs.
    pub fn finish(mut self) -> Result<Graph> {
        let outputs = self.old.outputs().iter().map(|o| self.map[o]).collect();
        self.new.set_outputs(outputs)?;
        Ok(self.new)
    }
}

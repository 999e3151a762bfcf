//! `Graph`: the dataflow graph value. petgraph holds the nodes; each node
//! carries its op, a unique name, its inferred output type and the user's
//! source location. Edges carry the input slot they feed.

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;

use crate::error::{Error, Result, SourceLoc};
use crate::op::Op;
use crate::ops::format_types;
use crate::shape::TensorType;

/// A typed index of a node in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex<u32>);

impl NodeId {
    /// The raw index.
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}

/// A node: an op applied to the outputs of other nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name within the graph (`fc1/weight`, `matmul_3`, ...).
    pub name: String,
    /// The op.
    pub op: Op,
    /// The inferred output type.
    pub ty: TensorType,
    /// Where the user added the node.
    pub location: SourceLoc,
    /// Conditions on symbolic sizes its type assumes that the build could
    /// not decide (`seq` equals `n`), checked when the symbols are bound.
    pub checks: Vec<crate::shape::DimCheck>,
}

/// A dataflow graph. Cloning gives an independent value: a session compiled
/// from one clone is unaffected by nodes later added to another.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32>,
    names: HashMap<String, NodeId>,
    outputs: Vec<NodeId>,
    /// Functions that control-flow ops (`cond`, `while`) call, by index.
    functions: Vec<std::sync::Arc<Function>>,
}

/// A graph called by a control-flow op: its placeholders `params` take the
/// call's arguments, in order; `results` are its values. A function holds
/// no variables or assignments.
#[derive(Clone, Debug)]
pub struct Function {
    /// The body.
    pub graph: Graph,
    /// The parameters (placeholders of `graph`), in argument order.
    pub params: Vec<NodeId>,
    /// The results, in order.
    pub results: Vec<NodeId>,
}

impl Function {
    /// The parameters' types.
    pub fn param_types(&self) -> Vec<TensorType> {
        self.params
            .iter()
            .map(|&p| self.graph.node(p).ty.clone())
            .collect()
    }

    /// The results' types.
    pub fn result_types(&self) -> Vec<TensorType> {
        self.results
            .iter()
            .map(|&r| self.graph.node(r).ty.clone())
            .collect()
    }
}

/// Checks that a node name is usable: non-empty printable text without quotes.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 512 {
        return Err("is longer than 512 bytes".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '"' || c.is_whitespace())
    {
        return Err("contains whitespace, a quote or a control character".into());
    }
    if name.starts_with("__") {
        return Err("starts with '__', which is reserved".into());
    }
    Ok(())
}

/// Whether two function lists are the same functions (one list's clones).
fn same_functions(a: &[std::sync::Arc<Function>], b: &[std::sync::Arc<Function>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| std::sync::Arc::ptr_eq(x, y))
}

impl Graph {
    /// Adds a function for control-flow ops to call; returns its index.
    pub fn add_function(&mut self, f: Function) -> usize {
        self.functions.push(std::sync::Arc::new(f));
        self.functions.len() - 1
    }

    /// The functions control-flow ops call.
    pub fn functions(&self) -> &[std::sync::Arc<Function>] {
        &self.functions
    }

    /// An empty graph with this graph's functions (for passes that rebuild it).
    pub fn empty_like(&self) -> Graph {
        Graph {
            functions: self.functions.clone(),
            ..Graph::default()
        }
    }

    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node after inferring its type from its inputs; the error names
    /// the op, the operand types and `location`.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[NodeId],
        location: SourceLoc,
    ) -> Result<NodeId> {
        self.check_new_name(name, &location)?;
        for i in inputs {
            if !self.g.contains_node(i.0) {
                return Err(Error::InvalidGraph(format!(
                    "node '{name}' has input {i}, which is not in the graph"
                )));
            }
        }
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.g[i.0].ty).collect();
        let type_error = |reason: String| Error::Type {
            op: op.name().into(),
            location: location.clone(),
            reason,
            operands: format_types(&types),
        };
        crate::shape::take_deferred();
        let ty = op.infer(&types).map_err(type_error);
        let checks = crate::shape::take_deferred();
        let ty = ty?;
        // A value no run could allocate (a huge shape in a file, say) is
        // refused here, before an executor computes its size.
        if let Some(dims) = ty.shape.as_fixed() {
            let bytes = crate::array::checked_product(&dims)
                .and_then(|n| n.checked_mul(ty.dtype.size_bytes()));
            if bytes.is_none_or(|b| b > isize::MAX as usize) {
                return Err(type_error(format!(
                    "its result {ty} has more bytes than fit in memory"
                )));
            }
        }
        if let Some(reason) = crate::ops::control::check(&op, &types, &self.functions) {
            return Err(type_error(reason));
        }
        if matches!(op, Op::Assign) && !matches!(self.g[inputs[0].0].op, Op::Variable { .. }) {
            return Err(type_error("the first operand must be a variable".into()));
        }
        let id = NodeId(self.g.add_node(Node {
            name: name.into(),
            op,
            ty,
            location,
            checks,
        }));
        for (slot, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i.0, id.0, slot as u32);
        }
        self.names.insert(name.into(), id);
        Ok(id)
    }

    /// Adds a copy of node `id` of `from` (a graph this one was started
    /// from with [`Graph::empty_like`], so with the same functions) over
    /// `inputs` of this graph, under its name. Where every input has the
    /// type the original's input had, the copy keeps the original's type
    /// and deferred checks without inferring them again: inference is a
    /// function of the op and its operands' types, and the original passed
    /// it. Otherwise (and for an assignment, whose check reads its target's
    /// op) it is added as by [`Graph::add_node`].
    pub fn add_copy(&mut self, from: &Graph, id: NodeId, inputs: &[NodeId]) -> Result<NodeId> {
        let n = from.node(id);
        let same = !matches!(n.op, Op::Assign)
            && same_functions(&self.functions, &from.functions)
            && from.inputs(id).len() == inputs.len()
            && from
                .inputs(id)
                .iter()
                .zip(inputs)
                .all(|(&o, &i)| self.g.contains_node(i.0) && self.g[i.0].ty == from.g[o.0].ty);
        if !same {
            return self.add_node(&n.name, n.op.clone(), inputs, n.location.clone());
        }
        if self.names.contains_key(n.name.as_str()) {
            return Err(Error::Name {
                name: n.name.clone(),
                location: n.location.clone(),
                reason: "is already used by another node".into(),
            });
        }
        let new = NodeId(self.g.add_node(n.clone()));
        for (slot, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i.0, new.0, slot as u32);
        }
        self.names.insert(n.name.clone(), new);
        Ok(new)
    }

    /// The node `id`.
    ///
    /// Panics if `id` is not a node of this graph (ids come from this graph).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }

    /// The node `id`, if it exists.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.g.node_weight(id.0)
    }

    /// The inputs of `id`, in slot order.
    pub fn inputs(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        e.sort();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that use `id` (each once, in index order).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self
            .g
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        set.into_iter().collect()
    }

    /// Looks a node up by name.
    pub fn find(&self, name: &str) -> Result<NodeId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownNode { name: name.into() })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// All node ids in a deterministic topological order: among ready nodes the
    /// lowest index goes first, so a graph built front to back keeps its order.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut indeg: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg.insert(n, d);
            if d == 0 {
                ready.push(std::cmp::Reverse(n));
            }
        }
        let mut order = Vec::with_capacity(self.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(NodeId(n));
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg
                    .get_mut(&e.target())
                    .expect("every node has an in-degree");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        order
    }

    /// The nodes `roots` depend on (themselves included), in topological order.
    pub fn ancestors(&self, roots: &[NodeId]) -> Vec<NodeId> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(
                    self.g
                        .neighbors_directed(n.0, Direction::Incoming)
                        .map(NodeId),
                );
            }
        }
        self.topo_order()
            .into_iter()
            .filter(|n| seen.contains(n))
            .collect()
    }

    /// The graph's declared outputs (what `kiln run` fetches by default).
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Declares `id` an output (once).
    pub fn add_output(&mut self, id: NodeId) -> Result<()> {
        if !self.g.contains_node(id.0) {
            return Err(Error::InvalidGraph(format!(
                "output {id} is not a node of the graph"
            )));
        }
        if !self.outputs.contains(&id) {
            self.outputs.push(id);
        }
        Ok(())
    }

    /// Replaces the output list. Positions matter and may repeat a node (two
    /// fetches of one value), which passes rely on to keep fetches in place.
    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) -> Result<()> {
        if let Some(o) = outputs.iter().find(|o| !self.g.contains_node(o.0)) {
            return Err(Error::InvalidGraph(format!(
                "output {o} is not a node of the graph"
            )));
        }
        self.outputs = outputs;
        Ok(())
    }

    /// A name error unless `name` is valid and unused.
    fn check_new_name(&self, name: &str, location: &SourceLoc) -> Result<()> {
        let reason = match check_name(name) {
            Err(reason) => reason,
            Ok(()) if self.names.contains_key(name) => "is already used by another node".into(),
            Ok(()) => return Ok(()),
        };
        Err(Error::Name {
            name: name.into(),
            location: location.clone(),
            reason,
        })
    }

    /// Renames a node; the new name must be valid and unused.
    pub fn rename(&mut self, id: NodeId, name: &str, location: SourceLoc) -> Result<()> {
        if self.g[id.0].name == name {
            return Ok(());
        }
        self.check_new_name(name, &location)?;
        let old = std::mem::replace(&mut self.g[id.0].name, name.into());
        self.names.remove(&old);
        self.names.insert(name.into(), id);
        Ok(())
    }

    /// True when `name` is taken.
    pub fn has_name(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Placeholders, in topological order.
    pub fn placeholders(&self) -> Vec<NodeId> {
        self.topo_order()
            .into_iter()
            .filter(|&n| matches!(self.node(n).op, Op::Placeholder { .. }))
            .collect()
    }

    /// Variables, in topological order.
    pub fn variables(&self) -> Vec<NodeId> {
        self.topo_order()
            .into_iter()
            .filter(|&n| matches!(self.node(n).op, Op::Variable { .. }))
            .collect()
    }

    /// Number of scalar parameters (elements of variables) and their bytes.
    pub fn parameter_count(&self) -> (usize, usize) {
        let mut count = 0;
        let mut bytes = 0;
        for v in self.variables() {
            if let Op::Variable { init, .. } = &self.node(v).op {
                count += init.0.len();
                bytes += init.0.size_bytes();
            }
        }
        (count, bytes)
    }

    /// Elements and bytes held by constants.
    pub fn constant_bytes(&self) -> usize {
        self.g
            .node_weights()
            .map(|n| match &n.op {
                Op::Constant { value } => value.0.size_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// Mutable access to a node's op, for replacing a constant or variable
    /// value of the same type (e.g. a checkpoint or a loader filling weights).
    pub fn set_weight(&mut self, id: NodeId, value: crate::array::Array) -> Result<()> {
        let node = &mut self.g[id.0];
        let ty = TensorType::new(value.dtype(), value.shape().to_vec());
        if ty != node.ty {
            return Err(Error::InvalidGraph(format!(
                "value of type {ty} does not fit node '{}' of type {}",
                node.name, node.ty
            )));
        }
        match &mut node.op {
            Op::Constant { value: w } | Op::Variable { init: w, .. } => {
                *w = crate::op::Weight::new(value);
                Ok(())
            }
            _ => Err(Error::InvalidGraph(format!(
                "node '{}' is not a constant or variable",
                node.name
            ))),
        }
    }
}

// ---- symbolic sizes: checks and specialization ----

impl Graph {
    /// Checks, under `bindings`, the size conditions that building left to
    /// the binding (`seq` equals `n`; [`Node::checks`]), in this graph and
    /// its functions. The error is the node's type error, as the build
    /// would have given it: op, source line, operand types and both sizes.
    pub fn check_bindings(&self, bindings: &crate::shape::Bindings) -> Result<()> {
        // Every run binds: a scan in index order, nothing allocated.
        for i in self.g.node_indices() {
            if !self.g[i].checks.is_empty() {
                self.check_node(NodeId(i), bindings)?;
            }
        }
        for f in &self.functions {
            f.graph.check_bindings(bindings)?;
        }
        Ok(())
    }

    /// Adds size checks to node `id` (a builder method that decides sizes
    /// before it adds the node that needs them).
    pub(crate) fn add_checks(&mut self, id: NodeId, checks: Vec<crate::shape::DimCheck>) {
        self.g[id.0].checks.extend(checks);
    }

    /// [`Graph::check_bindings`] for one node.
    pub fn check_node(&self, id: NodeId, bindings: &crate::shape::Bindings) -> Result<()> {
        let node = self.node(id);
        for c in &node.checks {
            let Some(why) = c.violation(bindings) else {
                continue;
            };
            let ins = self.inputs(id);
            let types: Vec<&TensorType> = ins.iter().map(|&i| &self.node(i).ty).collect();
            let bound: Vec<String> = c
                .found
                .expr()
                .symbols()
                .into_iter()
                .chain(c.expected.expr().symbols())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|s| bindings.get(&s).map(|v| format!("{s}={v}")))
                .collect();
            return Err(Error::Type {
                op: node.op.name().into(),
                location: node.location.clone(),
                reason: format!("node '{}', with {}: {why}", node.name, bound.join(", ")),
                operands: format_types(&types),
            });
        }
        Ok(())
    }

    /// The graph with the bound symbols replaced by their sizes, in every
    /// type, every shape an op holds and every symbolic constant (which
    /// becomes a constant when all its symbols are bound), functions
    /// included; the size checks are made first ([`Graph::check_bindings`]).
    /// A compiled program is built from this, so the sizes are constants
    /// in it.
    pub fn specialize(&self, bindings: &crate::shape::Bindings) -> Result<Graph> {
        if bindings.is_empty() {
            return Ok(self.clone());
        }
        for (name, &v) in bindings {
            crate::dim_expr::check_binding(name, v).map_err(Error::InvalidGraph)?;
        }
        self.check_bindings(bindings)?;
        let mut out = self.clone();
        let ids: Vec<NodeIndex<u32>> = out.g.node_indices().collect();
        for idx in ids {
            let node = &mut out.g[idx];
            let fail = |reason: String| Error::Type {
                op: node.op.name().into(),
                location: node.location.clone(),
                reason: format!("node '{}': {reason}", node.name),
                operands: String::new(),
            };
            let sub = |s: &crate::shape::Shape| s.substitute(bindings).map_err(&fail);
            node.ty.shape = sub(&node.ty.shape)?;
            node.checks.clear();
            let mut op = node.op.clone();
            match &mut op {
                Op::Placeholder { shape, .. }
                | Op::RandomUniform { shape, .. }
                | Op::RandomNormal { shape, .. }
                | Op::Reshape { shape }
                | Op::Broadcast { shape } => *shape = sub(shape)?,
                Op::Cond { ty, .. } | Op::While { ty, .. } | Op::WhileGrad { ty, .. } => {
                    ty.shape = sub(&ty.shape)?
                }
                Op::Iota { dtype, shape, axis } => {
                    let fixed = sub(shape)?;
                    let small = fixed.as_fixed().filter(|dims| {
                        crate::array::checked_product(dims).is_some_and(|n| n <= 1 << 16)
                    });
                    match small {
                        // An iota of a symbolic length is shape arithmetic
                        // (a range, a slice's positions): a constant once
                        // bound, as a fixed-size import makes it, so what
                        // uses it folds too.
                        Some(dims) if shape.is_symbolic() => {
                            let value = crate::ops::index::eval_iota(*dtype, &dims, *axis);
                            op = Op::Constant {
                                value: crate::op::Weight::new(value),
                            };
                        }
                        _ => *shape = fixed,
                    }
                }
                Op::SymbolicConstant {
                    dtype,
                    shape,
                    values,
                } => {
                    let values = values
                        .iter()
                        .map(|v| v.substitute(bindings))
                        .collect::<std::result::Result<Vec<_>, String>>()
                        .map_err(&fail)?;
                    op = crate::ops::symbolic::to_op(crate::ops::symbolic::SymTensor {
                        dtype: *dtype,
                        shape: shape.clone(),
                        values,
                    })
                    .ok_or_else(|| fail("its values do not fit its type".into()))?;
                }
                _ => continue,
            }
            node.op = op;
        }
        // Every node's shape rule again, on the sizes: a size that does not
        // fit in memory, or an op the sizes make invalid (an arg-max over
        // an axis bound to 0), is an error naming the node and the sizes.
        let given: Vec<String> = bindings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for id in out.topo_order() {
            let node = out.node(id);
            if node.op.is_control_flow() {
                continue;
            }
            let ins = out.inputs(id);
            let types: Vec<&TensorType> = ins.iter().map(|&i| &out.node(i).ty).collect();
            let fail = |reason: String| Error::Type {
                op: node.op.name().into(),
                location: node.location.clone(),
                reason: format!("node '{}', with {}: {reason}", node.name, given.join(", ")),
                operands: format_types(&types),
            };
            crate::shape::take_deferred();
            node.op.infer(&types).map_err(&fail)?;
            crate::shape::take_deferred();
            if let Some(dims) = node.ty.shape.as_fixed() {
                let bytes = crate::array::checked_product(&dims)
                    .and_then(|n| n.checked_mul(node.ty.dtype.size_bytes()));
                if bytes.is_none_or(|b| b > isize::MAX as usize) {
                    return Err(fail(format!(
                        "its {} {dims:?} is too large to allocate",
                        node.ty.dtype
                    )));
                }
            }
        }
        out.functions = self
            .functions
            .iter()
            .map(|f| {
                Ok(std::sync::Arc::new(Function {
                    graph: f.graph.specialize(bindings)?,
                    params: f.params.clone(),
                    results: f.results.clone(),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(out)
    }
}

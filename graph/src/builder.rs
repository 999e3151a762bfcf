//! The define-then-run builder: `GraphBuilder` adds nodes, `Tensor` is a
//! cheap handle to one node's output. Every method checks types when it is
//! called and reports mistakes at the caller's source line.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::array::{Array, Data};
use crate::dim_expr::DimExpr;
use crate::dtype::DType;
use crate::error::{Error, Result, SourceLoc};
use crate::graph::{Graph, NodeId};
use crate::init::Init;
use crate::op::Op;
use crate::ops::format_types;
use crate::shape::{Dim, Shape, TensorType};

struct State {
    graph: Graph,
    scopes: Vec<String>,
    counters: HashMap<String, usize>,
    seed: u64,
    /// Update ops (assignments of statistics, like TensorFlow's
    /// `UPDATE_OPS`), each with the layer output it belongs to.
    updates: Vec<(NodeId, NodeId)>,
}

/// Builds a [`Graph`] op by op. Methods take `&self`, so calls nest freely:
/// `g.relu(g.matmul(x, w)?)`.
pub struct GraphBuilder {
    state: RefCell<State>,
}

impl Default for GraphBuilder {
    fn default() -> Self {
        GraphBuilder::new()
    }
}

/// A handle to the output of one node of a [`GraphBuilder`]'s graph.
#[derive(Clone, Copy)]
pub struct Tensor<'g> {
    pub(crate) b: &'g GraphBuilder,
    pub(crate) id: NodeId,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} '{}': {})", self.id, self.name(), self.ty())
    }
}

/// Pops a name scope when dropped; see [`GraphBuilder::scope`].
pub struct ScopeGuard<'g> {
    b: &'g GraphBuilder,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        self.b.state.borrow_mut().scopes.pop();
    }
}

impl GraphBuilder {
    /// A builder for an empty graph; variable initializers use seed 0.
    pub fn new() -> GraphBuilder {
        GraphBuilder::with_seed(0)
    }

    /// A builder whose random variable initializers derive from `seed`.
    pub fn with_seed(seed: u64) -> GraphBuilder {
        GraphBuilder {
            state: RefCell::new(State {
                graph: Graph::new(),
                scopes: Vec::new(),
                counters: HashMap::new(),
                seed,
                updates: Vec::new(),
            }),
        }
    }

    /// Adds a function for control-flow ops; returns its index.
    pub(crate) fn add_function(&self, f: crate::graph::Function) -> usize {
        self.state.borrow_mut().graph.add_function(f)
    }

    /// A copy of the graph built so far.
    pub fn graph(&self) -> Graph {
        self.state.borrow().graph.clone()
    }

    /// The finished graph.
    pub fn into_graph(self) -> Graph {
        self.state.into_inner().graph
    }

    /// Prefixes the names of nodes added while the guard lives with `name/`.
    pub fn scope(&self, name: &str) -> ScopeGuard<'_> {
        self.state.borrow_mut().scopes.push(name.to_string());
        ScopeGuard { b: self }
    }

    /// `name` under the current scopes.
    pub fn scoped_name(&self, name: &str) -> String {
        let st = self.state.borrow();
        let mut s = String::new();
        for sc in &st.scopes {
            s.push_str(sc);
            s.push('/');
        }
        s.push_str(name);
        s
    }

    /// The seed random initializers of variable `name` use.
    pub fn seed_for(&self, name: &str) -> u64 {
        crate::rng::splitmix64(self.state.borrow().seed ^ crate::rng::hash_str(name))
    }

    /// Declares `t` a graph output (fetched by default by `kiln run`).
    pub fn output(&self, t: Tensor<'_>) -> Result<()> {
        self.state.borrow_mut().graph.add_output(t.id)
    }

    /// The tensor handle of an existing node.
    pub fn tensor(&self, id: NodeId) -> Result<Tensor<'_>> {
        let st = self.state.borrow();
        st.graph
            .get(id)
            .map(|_| Tensor { b: self, id })
            .ok_or_else(|| Error::InvalidGraph(format!("{id} is not a node of this builder")))
    }

    /// The tensor handle of the node named `name`.
    pub fn get(&self, name: &str) -> Result<Tensor<'_>> {
        let id = self.state.borrow().graph.find(name)?;
        Ok(Tensor { b: self, id })
    }

    /// Adds a node with an explicit name (scoped).
    pub(crate) fn push_named(
        &self,
        name: &str,
        op: Op,
        inputs: &[Tensor<'_>],
        loc: SourceLoc,
    ) -> Result<Tensor<'_>> {
        self.push_raw(&self.scoped_name(name), op, inputs, loc)
    }

    /// Adds a node named after its op and a counter (`matmul_3`).
    pub(crate) fn push(&self, op: Op, inputs: &[Tensor<'_>], loc: SourceLoc) -> Result<Tensor<'_>> {
        let base = self.scoped_name(op.name());
        let name = {
            let mut st = self.state.borrow_mut();
            loop {
                let n = st.counters.entry(base.clone()).or_insert(0);
                let cand = format!("{base}_{n}");
                *n += 1;
                if !st.graph.has_name(&cand) {
                    break cand;
                }
            }
        };
        self.push_raw(&name, op, inputs, loc)
    }

    fn push_raw(
        &self,
        name: &str,
        op: Op,
        inputs: &[Tensor<'_>],
        loc: SourceLoc,
    ) -> Result<Tensor<'_>> {
        if let Some(t) = inputs.iter().find(|t| !std::ptr::eq(t.b, self)) {
            return Err(Error::Type {
                op: op.name().into(),
                location: loc,
                reason: format!(
                    "operand '{}' belongs to a different graph builder",
                    t.name()
                ),
                operands: String::new(),
            });
        }
        let ids: Vec<NodeId> = inputs.iter().map(|t| t.id).collect();
        let (op, ids) = self.fold_symbolic(op, ids);
        let id = self
            .state
            .borrow_mut()
            .graph
            .add_node(name, op, &ids, loc)?;
        Ok(Tensor { b: self, id })
    }

    /// Adds size checks to the node of `t` ([`Graph::add_checks`]).
    pub(crate) fn add_checks(&self, t: Tensor<'_>, checks: Vec<crate::shape::DimCheck>) {
        self.state.borrow_mut().graph.add_checks(t.id, checks);
    }

    /// An op over shape values (one input a symbolic constant, the others
    /// known too) evaluated on their expressions: it becomes a symbolic
    /// constant, or a constant, with no inputs ([`crate::ops::symbolic`]).
    fn fold_symbolic(&self, op: Op, ids: Vec<NodeId>) -> (Op, Vec<NodeId>) {
        use crate::ops::symbolic;
        let st = self.state.borrow();
        let g = &st.graph;
        if ids.is_empty()
            || !ids
                .iter()
                .any(|&i| matches!(g.node(i).op, Op::SymbolicConstant { .. }))
        {
            return (op, ids);
        }
        let Some(ins) = ids
            .iter()
            .map(|&i| symbolic::known(&g.node(i).op))
            .collect::<Option<Vec<_>>>()
        else {
            return (op, ids);
        };
        let types: Vec<&crate::shape::TensorType> = ids.iter().map(|&i| &g.node(i).ty).collect();
        crate::shape::take_deferred();
        let out = op.infer(&types);
        crate::shape::take_deferred();
        match out
            .ok()
            .and_then(|ty| symbolic::fold(&op, &ins, &ty))
            .and_then(symbolic::to_op)
        {
            Some(folded) => (folded, Vec::new()),
            None => (op, ids),
        }
    }

    /// A type error for `op` at `loc`, listing the operands.
    pub(crate) fn type_error(
        &self,
        op: &str,
        inputs: &[Tensor<'_>],
        loc: SourceLoc,
        reason: String,
    ) -> Error {
        let types: Vec<TensorType> = inputs.iter().map(|t| t.ty()).collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        Error::Type {
            op: op.into(),
            location: loc,
            reason,
            operands: format_types(&refs),
        }
    }

    // ---- sources ----

    /// A placeholder fed at run time; `shape` may hold symbolic dims (`shape!["batch", 784]`).
    #[track_caller]
    pub fn placeholder(
        &self,
        name: &str,
        dtype: DType,
        shape: impl Into<Shape>,
    ) -> Result<Tensor<'_>> {
        self.push_named(
            name,
            Op::Placeholder {
                dtype,
                shape: shape.into(),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// A constant tensor.
    #[track_caller]
    pub fn constant(&self, value: Array) -> Result<Tensor<'_>> {
        self.push(
            Op::Constant {
                value: crate::op::Weight::new(value),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// A constant holding `value` itself: the graph shares the array, with
    /// no copy (an importer's weights, a value folded once and used twice).
    #[track_caller]
    pub fn constant_shared(&self, value: std::sync::Arc<Array>) -> Result<Tensor<'_>> {
        self.push(
            Op::Constant {
                value: crate::op::Weight(value),
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// A rank-0 constant `v` of `dtype`.
    #[track_caller]
    pub fn scalar(&self, v: f64, dtype: DType) -> Result<Tensor<'_>> {
        self.constant(Array::new(Vec::<usize>::new(), Data::filled(dtype, 1, v)).expect("scalar"))
    }

    /// A constant filled with `v`.
    #[track_caller]
    pub fn full(&self, v: f64, dtype: DType, shape: &[usize]) -> Result<Tensor<'_>> {
        self.constant(Array::filled(dtype, shape, v))
    }

    /// A variable with the given initial value, trainable (see
    /// [`GraphBuilder::non_trainable_variable`] for statistics).
    #[track_caller]
    pub fn variable(&self, name: &str, init: Array) -> Result<Tensor<'_>> {
        self.push_named(
            name,
            Op::Variable {
                init: crate::op::Weight::new(init),
                trainable: true,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// A variable that no optimizer updates (`trainable` false): a
    /// statistic or a counter that assignments change, such as batch norm's
    /// running mean. [`GraphBuilder::minimize`] skips it; checkpoints keep it.
    #[track_caller]
    pub fn non_trainable_variable(&self, name: &str, init: Array) -> Result<Tensor<'_>> {
        self.push_named(
            name,
            Op::Variable {
                init: crate::op::Weight::new(init),
                trainable: false,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Registers `update` (usually an assignment of a statistic) as an
    /// update op of the layer output `owner`: the train op of every loss
    /// that depends on `owner` runs it (see [`GraphBuilder::updates_for`]).
    pub fn add_update<'g>(&'g self, owner: Tensor<'g>, update: Tensor<'g>) {
        self.state.borrow_mut().updates.push((owner.id, update.id));
    }

    /// The update ops registered for layer outputs that `loss` depends on,
    /// in the order they were added: what [`GraphBuilder::minimize`] groups
    /// with its train op, and what a training step built by hand from
    /// [`GraphBuilder::gradients`] should fetch (or group) too.
    pub fn updates_for<'g>(&'g self, loss: Tensor<'g>) -> Vec<Tensor<'g>> {
        let st = self.state.borrow();
        let needed: std::collections::HashSet<NodeId> =
            st.graph.ancestors(&[loss.id]).into_iter().collect();
        st.updates
            .iter()
            .filter(|(owner, _)| needed.contains(owner))
            .map(|&(_, id)| Tensor { b: self, id })
            .collect()
    }

    /// A variable whose initial value is drawn now from `init` (seeded by the
    /// builder's seed and the variable's name, so rebuilding gives the same values).
    #[track_caller]
    pub fn variable_init(
        &self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        init: Init,
    ) -> Result<Tensor<'_>> {
        let loc = SourceLoc::caller();
        let full = self.scoped_name(name);
        let value = init
            .sample(dtype, shape, self.seed_for(&full))
            .map_err(|reason| Error::Type {
                op: "variable".into(),
                location: loc.clone(),
                reason,
                operands: "none".into(),
            })?;
        self.push_named(
            name,
            Op::Variable {
                init: crate::op::Weight::new(value),
                trainable: true,
            },
            &[],
            loc,
        )
    }

    /// The shape of `x` as a 1-D i64 tensor whose values are its dims'
    /// expressions: known while the graph is built, so ops over it fold
    /// (`gather`, `mul`, `concat`, ...) and a tensor computed from it can
    /// be a shape ([`Tensor::reshape_by`]). A constant when every dim is
    /// fixed.
    #[track_caller]
    pub fn shape_of(&self, x: Tensor<'_>) -> Result<Tensor<'_>> {
        let dims: Vec<DimExpr> = x.shape().0.iter().map(Dim::expr).collect();
        self.sizes_value(&dims, &[dims.len()], SourceLoc::caller())
    }

    /// A scalar i64 tensor holding the size `e` (`batch*seq`): a symbolic
    /// constant, or a constant when `e` is one.
    #[track_caller]
    pub fn size_value(&self, e: &DimExpr) -> Result<Tensor<'_>> {
        self.sizes_value(std::slice::from_ref(e), &[], SourceLoc::caller())
    }

    /// An i64 tensor of shape `shape` holding the expressions `values`.
    #[track_caller]
    pub fn sizes(&self, values: &[DimExpr], shape: &[usize]) -> Result<Tensor<'_>> {
        self.sizes_value(values, shape, SourceLoc::caller())
    }

    pub(crate) fn sizes_value(
        &self,
        values: &[DimExpr],
        shape: &[usize],
        loc: SourceLoc,
    ) -> Result<Tensor<'_>> {
        let t = crate::ops::symbolic::SymTensor {
            dtype: DType::I64,
            shape: shape.to_vec(),
            values: values.to_vec(),
        };
        let op = crate::ops::symbolic::to_op(t).ok_or_else(|| Error::Type {
            op: "symbolic_constant".into(),
            location: loc.clone(),
            reason: format!("{} values do not fill shape {shape:?}", values.len()),
            operands: String::new(),
        })?;
        self.push(op, &[], loc)
    }

    /// `out[i] = i[axis]`.
    #[track_caller]
    pub fn iota(&self, dtype: DType, shape: impl Into<Shape>, axis: usize) -> Result<Tensor<'_>> {
        self.push(
            Op::Iota {
                dtype,
                shape: shape.into(),
                axis,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Uniform samples in `[low, high)`; the same seed gives the same values on every run.
    #[track_caller]
    pub fn random_uniform(
        &self,
        dtype: DType,
        shape: impl Into<Shape>,
        seed: u64,
        low: f64,
        high: f64,
    ) -> Result<Tensor<'_>> {
        self.push(
            Op::RandomUniform {
                dtype,
                shape: shape.into(),
                seed,
                low,
                high,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// Normal samples; the same seed gives the same values on every run.
    #[track_caller]
    pub fn random_normal(
        &self,
        dtype: DType,
        shape: impl Into<Shape>,
        seed: u64,
        mean: f64,
        std: f64,
    ) -> Result<Tensor<'_>> {
        self.push(
            Op::RandomNormal {
                dtype,
                shape: shape.into(),
                seed,
                mean,
                std,
            },
            &[],
            SourceLoc::caller(),
        )
    }

    /// `cond ? a : b`, broadcasting all three.
    #[track_caller]
    pub fn select<'g>(
        &'g self,
        cond: Tensor<'g>,
        a: Tensor<'g>,
        b: Tensor<'g>,
    ) -> Result<Tensor<'g>> {
        self.push(Op::Select, &[cond, a, b], SourceLoc::caller())
    }

    /// Joins tensors along `axis` (negative counts from the end).
    #[track_caller]
    pub fn concat<'g>(&'g self, xs: &[Tensor<'g>], axis: i64) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        let rank = xs.first().map(|t| t.rank()).unwrap_or(0);
        let axis = crate::shape::normalize_axis(axis, rank)
            .map_err(|r| self.type_error("concat", xs, loc.clone(), r))?;
        self.push(Op::Concat { axis }, xs, loc)
    }
}

impl<'g> Tensor<'g> {
    /// The node id (stable in the built graph; use it or the name to fetch).
    pub fn id(self) -> NodeId {
        self.id
    }

    /// The builder this tensor belongs to.
    pub fn builder(self) -> &'g GraphBuilder {
        self.b
    }

    /// The node's name.
    pub fn name(self) -> String {
        self.b.state.borrow().graph.node(self.id).name.clone()
    }

    /// The value of a constant node (`None` for any other op).
    pub fn constant_value(self) -> Option<std::sync::Arc<Array>> {
        match &self.b.state.borrow().graph.node(self.id).op {
            Op::Constant { value } => Some(value.0.clone()),
            _ => None,
        }
    }

    /// True for a variable that optimizers may update (see
    /// [`GraphBuilder::non_trainable_variable`]); false for any other node.
    pub fn is_trainable(self) -> bool {
        matches!(
            self.b.state.borrow().graph.node(self.id).op,
            Op::Variable {
                trainable: true,
                ..
            }
        )
    }

    /// The static type.
    pub fn ty(self) -> TensorType {
        self.b.state.borrow().graph.node(self.id).ty.clone()
    }

    /// The static shape.
    pub fn shape(self) -> Shape {
        self.ty().shape
    }

    /// Dim `i` of the shape: a size, a symbol or an expression (`batch*seq`).
    ///
    /// Panics if `i` is not below the rank.
    pub fn dim(self, i: usize) -> Dim {
        self.ty().shape.0[i].clone()
    }

    /// The values where they are known while building, as expressions: a
    /// shape value ([`GraphBuilder::shape_of`] and what is computed from
    /// it), or a small integer constant.
    pub fn sym_values(self) -> Option<Vec<DimExpr>> {
        crate::ops::symbolic::known(&self.b.state.borrow().graph.node(self.id).op).map(|t| t.values)
    }

    /// The dtype.
    pub fn dtype(self) -> DType {
        self.ty().dtype
    }

    /// The rank.
    pub fn rank(self) -> usize {
        self.ty().rank()
    }

    /// Renames the node (the name must be unused), e.g. to fetch it by name.
    #[track_caller]
    pub fn named(self, name: &str) -> Result<Tensor<'g>> {
        let loc = SourceLoc::caller();
        self.b.state.borrow_mut().graph.rename(self.id, name, loc)?;
        Ok(self)
    }

    /// Adds an op on this tensor and `others`.
    pub(crate) fn op(self, op: Op, others: &[Tensor<'g>], loc: SourceLoc) -> Result<Tensor<'g>> {
        let mut ins = Vec::with_capacity(1 + others.len());
        ins.push(self);
        ins.extend_from_slice(others);
        self.b.push(op, &ins, loc)
    }

    /// A type error for `op` on this tensor (and `others`) at `loc`.
    pub(crate) fn err(
        self,
        op: &str,
        others: &[Tensor<'g>],
        loc: SourceLoc,
        reason: String,
    ) -> Error {
        let mut ins = vec![self];
        ins.extend_from_slice(others);
        self.b.type_error(op, &ins, loc, reason)
    }

    /// Normalises a possibly negative axis, or a type error naming `op`.
    pub(crate) fn axis(self, op: &str, axis: i64, loc: &SourceLoc) -> Result<usize> {
        crate::shape::normalize_axis(axis, self.rank())
            .map_err(|r| self.err(op, &[], loc.clone(), r))
    }
}

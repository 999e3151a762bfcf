//! The graph walk: placeholders for inputs, constants (or variables) for
//! initializers, each node through its converter in `ops/` (evaluated at
//! import time when its inputs are all constants), outputs by name.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use kiln_graph::{Array, Dim, Graph, GraphBuilder, NodeId, Shape, Tensor};

use crate::error::{Error, Result, UnsupportedNode};
use crate::ops::{self, Input, Node};
use crate::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use crate::tensor;
use crate::ImportOptions;

/// The opsets this importer is written for (of the default domain): 7 to
/// 22, and 6 as far as the converters know its older forms (binary ops'
/// `broadcast`/`axis`, attributes that later became inputs): the
/// pytorch-converted test models are opset 6. Newer ones are read with
/// opset 22's meaning (later opsets added types and ops, which the op
/// table covers or reports).
pub(crate) const OPSETS: std::ops::RangeInclusive<i64> = 6..=22;

/// A value of the ONNX graph: its tensor, and its value where it is known
/// at import time.
#[derive(Clone)]
pub(crate) struct Value<'g> {
    pub t: Tensor<'g>,
    pub constant: Option<Rc<Array>>,
}

/// A name made fit for a kiln node or symbol: whitespace, quotes and
/// control characters become `_`; an empty or reserved name gets a prefix.
pub(crate) fn kiln_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_control() || c == '"' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.starts_with("__") {
        s.insert_str(0, "onnx");
    }
    s.truncate(400);
    s
}

/// The default domain's opset of `model`.
fn default_opset(model: &ModelProto) -> Result<i64> {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        // A model of other domains' ops only: their nodes are listed as
        // unsupported (the default domain's opset does not matter).
        .or(Some(*OPSETS.end()))
        .ok_or_else(|| Error::Invalid("no opset".into()))
}

/// The node's name for messages: its name, else its first output.
pub(crate) fn node_label(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

fn op_label(n: &NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

/// Every node of `g` (and of its subgraphs) whose op kiln cannot convert.
fn unsupported(g: &GraphProto, opset: i64, out: &mut Vec<UnsupportedNode>) {
    for n in &g.node {
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        let reason = if !default {
            Some(format!("the '{}' domain is not supported", n.domain))
        } else if ops::find(&n.op_type).is_none() {
            Some("no conversion to kiln's primitives".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(UnsupportedNode {
                op: op_label(n),
                node: node_label(n),
                opset,
                reason,
            });
        }
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                unsupported(sub, opset, out);
            }
            for sub in &a.graphs {
                unsupported(sub, opset, out);
            }
        }
    }
}

/// The kiln shape of a value's declared type (`None` dims get a symbol of
/// their own, named after the value and position).
pub(crate) fn declared_type(v: &ValueInfoProto) -> Result<(kiln_graph::DType, Shape)> {
    use crate::proto::type_proto::Value as T;
    let bad = |why: String| Error::Invalid(format!("input '{}': {why}", v.name));
    let tt = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(tt)) => tt,
        Some(_) => return Err(bad("only tensor inputs are supported".into())),
        None => return Err(bad("no type".into())),
    };
    let dtype = tensor::dtype_of(tt.elem_type).map_err(bad)?;
    let shape = match &tt.shape {
        None => return Err(bad("no shape (kiln needs each input's rank)".into())),
        Some(s) => s
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| {
                use crate::proto::tensor_shape_proto::dimension::Value as D;
                match &d.value {
                    Some(D::DimValue(n)) if *n >= 0 => Ok(Dim::Fixed(*n as usize)),
                    Some(D::DimValue(n)) => Err(bad(format!("dim {i} is {n}"))),
                    Some(D::DimParam(p)) if !p.is_empty() => Ok(Dim::sym(&kiln_name(p))),
                    _ => Ok(Dim::sym(&kiln_name(&format!("{}_{i}", v.name)))),
                }
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok((dtype, Shape(shape)))
}

/// Imports `model`.
pub(crate) fn import_model(model: &ModelProto, options: &ImportOptions) -> Result<Graph> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Invalid("the model has no graph".into()))?;
    let opset = default_opset(model)?;
    // Before opset 6, only models of ops whose meaning has not changed
    // since (elementwise unary ops and logic) are taken.
    const SAME_SINCE_1: [&str; 16] = [
        "Not",
        "And",
        "Or",
        "Xor",
        "Identity",
        "Abs",
        "Neg",
        "Ceil",
        "Floor",
        "Sqrt",
        "Exp",
        "Log",
        "Reciprocal",
        "Relu",
        "Sigmoid",
        "Tanh",
    ];
    let unchanged = graph
        .node
        .iter()
        .all(|n| SAME_SINCE_1.contains(&n.op_type.as_str()));
    if opset < *OPSETS.start() && !unchanged {
        return Err(Error::Invalid(format!(
            "opset {opset}: kiln imports opsets {} and later (upgrade the model with onnx.version_converter)",
            OPSETS.start(),
        )));
    }
    let mut missing = Vec::new();
    unsupported(graph, opset, &mut missing);
    if !missing.is_empty() {
        return Err(Error::Unsupported(missing));
    }
    let g = GraphBuilder::new();
    let mut scope = Scope::default();
    for init in &graph.initializer {
        let a = tensor::to_array(init)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        let name = kiln_name(&init.name);
        let t = if options.initializers_as_variables {
            g.variable(&name, a.clone())
        } else {
            g.constant(a.clone()).and_then(|t| t.named(&name))
        }
        .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope.owned.insert(t.id());
        scope.values.insert(
            init.name.clone(),
            Value {
                t,
                constant: (!options.initializers_as_variables).then(|| Rc::new(a)),
            },
        );
    }
    for input in &graph.input {
        // Before IR 4, initializers are listed as inputs too.
        if scope.values.contains_key(&input.name) {
            continue;
        }
        if let Some(a) = options.constant_inputs.get(&input.name) {
            // Bound by the caller: a constant of the declared type.
            let (dtype, shape) = declared_type(input)?;
            let fits = a.dtype() == dtype
                && a.shape().len() == shape.rank()
                && shape
                    .0
                    .iter()
                    .zip(a.shape())
                    .all(|(d, &n)| d.fixed().is_none_or(|f| f == n));
            if !fits {
                return Err(Error::Invalid(format!(
                    "input '{}' is bound to a {}{:?}, the model declares {dtype}{shape}",
                    input.name,
                    a.dtype(),
                    a.shape()
                )));
            }
            let t = g
                .constant(a.clone())
                .and_then(|t| t.named(&kiln_name(&input.name)))
                .map_err(|e| Error::Invalid(format!("input '{}': {e}", input.name)))?;
            scope.owned.insert(t.id());
            scope.values.insert(
                input.name.clone(),
                Value {
                    t,
                    constant: Some(Rc::new(a.clone())),
                },
            );
            continue;
        }
        let (dtype, shape) = declared_type(input)?;
        let t = g
            .placeholder(&kiln_name(&input.name), dtype, shape)
            .map_err(|e| Error::Invalid(format!("input '{}': {e}", input.name)))?;
        scope.owned.insert(t.id());
        scope.fed.insert(input.name.clone());
        scope
            .values
            .insert(input.name.clone(), Value { t, constant: None });
    }
    convert_nodes(&g, graph, opset, &mut scope)?;
    let mut fetched: HashSet<NodeId> = HashSet::new();
    for out in &graph.output {
        let v = scope.values.get(&out.name).ok_or_else(|| {
            Error::Invalid(format!(
                "graph output '{}' is computed by no node",
                out.name
            ))
        })?;
        let name = kiln_name(&out.name);
        let t = if v.t.name() == name && !fetched.contains(&v.t.id()) {
            Ok(v.t)
        } else {
            // Named otherwise (an input, an initializer, an output twice):
            // an identity node carries the output's name.
            v.t.add(0)
                .or_else(|_| v.t.or(v.t))
                .and_then(|t| t.named(&name))
        };
        let t = t.map_err(|e| Error::Invalid(format!("output '{}': {e}", out.name)))?;
        fetched.insert(t.id());
        g.output(t)
            .map_err(|e| Error::Invalid(format!("output '{}': {e}", out.name)))?;
    }
    Ok(g.into_graph())
}

/// The values of one graph (the main graph, or a subgraph with the values
/// of its enclosing scopes it uses), and the nodes that stand for them.
#[derive(Default)]
pub(crate) struct Scope<'g> {
    values: HashMap<String, Value<'g>>,
    /// Nodes that already stand for an ONNX value (and carry its name).
    owned: HashSet<NodeId>,
    /// The inputs of the node computing each value.
    deps: HashMap<String, Vec<String>>,
    /// The graph's inputs fed at run time.
    fed: HashSet<String>,
}

impl<'g> Scope<'g> {
    /// The graph inputs fed at run time that `value` is computed from.
    fn inputs_of(&self, value: &str) -> Vec<String> {
        let (mut seen, mut stack, mut found) =
            (HashSet::new(), vec![value.to_string()], Vec::new());
        while let Some(v) = stack.pop() {
            if !seen.insert(v.clone()) {
                continue;
            }
            if self.fed.contains(&v) {
                found.push(v);
            } else if let Some(d) = self.deps.get(&v) {
                stack.extend(d.iter().filter(|s| !s.is_empty()).cloned());
            }
        }
        found.sort();
        found
    }

    /// Binds node `n`'s outputs to `outputs`.
    fn bind(
        &mut self,
        n: &NodeProto,
        outputs: Vec<Value<'g>>,
        fail: &dyn Fn(String) -> Error,
    ) -> Result<()> {
        if outputs.len() < n.output.iter().filter(|o| !o.is_empty()).count() {
            return Err(fail(format!(
                "gave {} outputs, the node has {}",
                outputs.len(),
                n.output.len()
            )));
        }
        for (name, v) in n.output.iter().zip(outputs) {
            if name.is_empty() {
                continue;
            }
            self.deps.insert(name.clone(), n.input.clone());
            // Name a node this conversion made after its ONNX output (where
            // the name is free); one standing for another value keeps its name.
            if self.owned.insert(v.t.id()) {
                let _ = v.t.named(&kiln_name(name));
            }
            self.values.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// Converts `graph`'s initializers and nodes into `scope`.
fn convert_nodes<'g>(
    g: &'g GraphBuilder,
    graph: &GraphProto,
    opset: i64,
    scope: &mut Scope<'g>,
) -> Result<()> {
    for n in &graph.node {
        convert_node(g, n, opset, scope)?;
    }
    Ok(())
}

/// The names `graph` (and its subgraphs) read from enclosing scopes, in
/// first-use order.
fn free_names(graph: &GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    let mut free: Vec<String> = Vec::new();
    let use_name = |name: &str, defined: &HashSet<&str>, free: &mut Vec<String>| {
        if !name.is_empty() && !defined.contains(name) && !free.iter().any(|f| f == name) {
            free.push(name.to_string());
        }
    };
    for n in &graph.node {
        for i in &n.input {
            use_name(i, &defined, &mut free);
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                for f in free_names(sub) {
                    use_name(&f, &defined, &mut free);
                }
            }
        }
        for o in &n.output {
            defined.insert(o);
        }
    }
    for o in &graph.output {
        use_name(&o.name, &defined, &mut free);
    }
    free
}

/// A subgraph attribute of `n`.
fn subgraph<'a>(n: &'a NodeProto, name: &str) -> std::result::Result<&'a GraphProto, String> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| format!("no '{name}' subgraph"))
}

/// Runs `sub` in a scope of its own on builder `b`: `outer` values it
/// reads (constants re-made in `b`, the rest from `params`, in `captured`
/// order), its inputs bound to `inputs`; returns its outputs.
fn run_subgraph<'s>(
    b: &'s GraphBuilder,
    sub: &GraphProto,
    opset: i64,
    constants: &[(String, Rc<Array>)],
    captured: &[String],
    params: &[Tensor<'s>],
    inputs: &[Value<'s>],
) -> Result<Vec<Value<'s>>> {
    let mut scope = Scope::default();
    for (name, a) in constants {
        let t = b
            .constant((**a).clone())
            .map_err(|e| Error::Invalid(format!("'{name}': {e}")))?;
        scope.values.insert(
            name.clone(),
            Value {
                t,
                constant: Some(a.clone()),
            },
        );
    }
    for (name, &t) in captured.iter().zip(params) {
        scope
            .values
            .insert(name.clone(), Value { t, constant: None });
    }
    for init in &sub.initializer {
        let a = tensor::to_array(init)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        let t = b
            .constant(a.clone())
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope.values.insert(
            init.name.clone(),
            Value {
                t,
                constant: Some(Rc::new(a)),
            },
        );
    }
    if inputs.len() != sub.input.len() {
        return Err(Error::Invalid(format!(
            "subgraph '{}' takes {} inputs, is given {}",
            sub.name,
            sub.input.len(),
            inputs.len()
        )));
    }
    for (i, v) in sub.input.iter().zip(inputs) {
        scope.values.insert(i.name.clone(), v.clone());
    }
    convert_nodes(b, sub, opset, &mut scope)?;
    sub.output
        .iter()
        .map(|o| {
            scope.values.get(&o.name).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "subgraph '{}': output '{}' is computed by no node",
                    sub.name, o.name
                ))
            })
        })
        .collect()
}

/// The outer values a subgraph reads: constants (re-made inside), and
/// the rest (passed in), by name.
#[allow(clippy::type_complexity)]
fn captures<'g>(
    scope: &Scope<'g>,
    names: &[String],
) -> std::result::Result<(Vec<(String, Rc<Array>)>, Vec<String>, Vec<Tensor<'g>>), String> {
    let (mut constants, mut names_rt, mut tensors) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let v = scope.values.get(name).ok_or_else(|| {
            format!("its subgraph reads '{name}', which no enclosing graph defines")
        })?;
        match &v.constant {
            Some(a) => constants.push((name.clone(), a.clone())),
            None => {
                names_rt.push(name.clone());
                tensors.push(v.t);
            }
        }
    }
    Ok((constants, names_rt, tensors))
}

/// Keeps the first error a subgraph closure met (kiln's closures return
/// kiln errors; the importer's is more precise).
struct FirstError(std::cell::RefCell<Option<Error>>);

impl FirstError {
    fn keep<T>(&self, r: Result<T>) -> kiln_graph::Result<T> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.0.borrow_mut().get_or_insert(e);
            kiln_graph::Error::InvalidGraph(msg)
        })
    }
}

/// `If`: an import-time condition inlines its branch; otherwise kiln's
/// `cond` runs one branch (both must give results of the same types).
fn control_if<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Value<'g>>> {
    let fail = |reason: String| Error::Node {
        op: op_label(n),
        node: node_label(n),
        opset,
        reason,
    };
    let cond = n
        .input
        .first()
        .and_then(|c| scope.values.get(c))
        .ok_or_else(|| fail("no condition".into()))?;
    let (then_g, else_g) = (
        subgraph(n, "then_branch").map_err(fail)?,
        subgraph(n, "else_branch").map_err(fail)?,
    );
    if let Some(c) = &cond.constant {
        let branch = if c.to_f64_vec().first().is_some_and(|&v| v != 0.0) {
            then_g
        } else {
            else_g
        };
        let names = free_names(branch);
        let (constants, captured, params) = captures(scope, &names).map_err(fail)?;
        return run_subgraph(g, branch, opset, &constants, &captured, &params, &[]);
    }
    let mut names = free_names(then_g);
    for f in free_names(else_g) {
        if !names.contains(&f) {
            names.push(f);
        }
    }
    let (constants, captured, params) = captures(scope, &names).map_err(fail)?;
    let pred = cond
        .t
        .reshape(kiln_graph::Shape(Vec::new()))
        .map_err(|e| fail(format!("the condition must hold one value: {e}")))?;
    let first = FirstError(std::cell::RefCell::new(None));
    let r = g.cond(
        pred,
        &params,
        |b, p| branch_results(b, p, then_g, opset, &constants, &captured, &first),
        |b, p| branch_results(b, p, else_g, opset, &constants, &captured, &first),
    );
    match (r, first.0.into_inner()) {
        (Ok(ts), _) => Ok(ts
            .into_iter()
            .map(|t| Value { t, constant: None })
            .collect()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(fail(format!("its branches: {e}"))),
    }
}

/// A branch of an `If` as kiln's `cond` calls it.
fn branch_results<'s>(
    b: &'s GraphBuilder,
    p: &[Tensor<'s>],
    sub: &GraphProto,
    opset: i64,
    constants: &[(String, Rc<Array>)],
    captured: &[String],
    first: &FirstError,
) -> kiln_graph::Result<Vec<Tensor<'s>>> {
    let outs = first.keep(run_subgraph(b, sub, opset, constants, captured, p, &[]))?;
    Ok(outs.into_iter().map(|v| v.t).collect())
}

/// Trip counts up to which a `Loop` with scan outputs is unrolled.
const MAX_UNROLL: i64 = 4096;

/// `Loop`: with scan outputs (per-iteration values stacked), a constant
/// trip count and a condition that stays true, the body is unrolled;
/// otherwise kiln's `while_loop` carries (iteration, condition, values).
fn control_loop<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Value<'g>>> {
    let fail = |reason: String| Error::Node {
        op: op_label(n),
        node: node_label(n),
        opset,
        reason,
    };
    let body = subgraph(n, "body").map_err(fail)?;
    let input = |i: usize| -> Option<&Value<'g>> {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| scope.values.get(s))
    };
    let trip = input(0);
    let cond = input(1);
    let vars: Vec<Value<'g>> = (2..n.input.len())
        .map(|i| {
            input(i)
                .cloned()
                .ok_or_else(|| fail(format!("input {i} is missing")))
        })
        .collect::<Result<_>>()?;
    let nv = vars.len();
    let scans = body
        .output
        .len()
        .checked_sub(1 + nv)
        .ok_or_else(|| fail("the body gives fewer outputs than loop values".into()))?;
    let names = free_names(body);
    let (constants, captured, params) = captures(scope, &names).map_err(fail)?;
    let scalar = |v: f64, dtype| {
        Array::new(Vec::new(), kiln_graph::Data::filled(dtype, 1, v))
            .map(Rc::new)
            .ok_or_else(|| fail("a scalar".into()))
    };
    let const_value = |a: Rc<Array>| -> Result<Value<'g>> {
        let t = g.constant((*a).clone()).map_err(|e| fail(e.to_string()))?;
        Ok(Value {
            t,
            constant: Some(a),
        })
    };
    let trip_const = trip
        .and_then(|t| t.constant.as_ref())
        .map(|a| a.to_f64_vec()[0] as i64);
    let cond_true = cond.is_none_or(|c| {
        c.constant
            .as_ref()
            .is_some_and(|a| a.to_f64_vec().first().is_some_and(|&v| v != 0.0))
    });
    if let (Some(m), true) = (trip_const, cond_true) {
        if m <= MAX_UNROLL && (scans > 0 || m <= 16) {
            // Unrolled: each iteration the body with a constant iteration number.
            let mut cur = vars;
            let mut stacked: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); scans];
            let params_v: Vec<Tensor<'g>> = params.clone();
            for i in 0..m.max(0) {
                let mut ins = vec![
                    const_value(scalar(i as f64, kiln_graph::DType::I64)?)?,
                    const_value(scalar(1.0, kiln_graph::DType::Bool)?)?,
                ];
                ins.extend(cur.iter().cloned());
                let outs = run_subgraph(g, body, opset, &constants, &captured, &params_v, &ins)?;
                let go = &outs[0];
                if !go
                    .constant
                    .as_ref()
                    .is_some_and(|a| a.to_f64_vec().first().is_some_and(|&v| v != 0.0))
                {
                    return Err(fail(
                        "a loop whose condition may turn false inside an unrolled trip count"
                            .into(),
                    ));
                }
                cur = outs[1..1 + nv].to_vec();
                for (k, s) in outs[1 + nv..].iter().enumerate() {
                    stacked[k].push(s.t.unsqueeze(0).map_err(|e| fail(e.to_string()))?);
                }
            }
            let mut out = cur;
            for s in stacked {
                if s.is_empty() {
                    return Err(fail("scan outputs of a loop that runs no iteration".into()));
                }
                let t = g.concat(&s, 0).map_err(|e| fail(e.to_string()))?;
                out.push(Value { t, constant: None });
            }
            return Ok(out);
        }
    }
    if scans > 0 {
        return Err(fail(
            "scan outputs need a constant trip count (and no condition that can turn false)".into(),
        ));
    }
    // while (i < M && cond) { (cond, vars) = body(i, cond, vars); i += 1 }
    let i0 = g
        .scalar(0.0, kiln_graph::DType::I64)
        .map_err(|e| fail(e.to_string()))?;
    let c0 = match cond {
        Some(c) => {
            c.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.to_string()))?
        }
        None => g
            .scalar(1.0, kiln_graph::DType::Bool)
            .map_err(|e| fail(e.to_string()))?,
    };
    let mut state = vec![i0, c0];
    state.extend(vars.iter().map(|v| v.t));
    let mut captured_t = params.clone();
    let has_trip = trip.is_some();
    if let Some(m) = trip {
        captured_t.push(
            m.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.to_string()))?,
        );
    }
    let first = FirstError(std::cell::RefCell::new(None));
    let ns = state.len();
    let ncap = captured.len();
    let r = g.while_loop(
        &state,
        &captured_t,
        |_b, p| {
            let go = p[1];
            if has_trip {
                go.and(p[0].lt(p[ns + ncap])?)
            } else {
                Ok(go)
            }
        },
        |b, p| {
            let ins: Vec<Value<'_>> = p[..ns]
                .iter()
                .map(|&t| Value { t, constant: None })
                .collect();
            let outs = first.keep(run_subgraph(
                b,
                body,
                opset,
                &constants,
                &captured,
                &p[ns..ns + ncap],
                &ins,
            ))?;
            let mut next = vec![p[0].add(1.0)?];
            next.push(outs[0].t.reshape(kiln_graph::Shape(Vec::new()))?);
            next.extend(outs[1..].iter().map(|v| v.t));
            next.extend_from_slice(&p[ns..]);
            Ok(next[..ns].to_vec())
        },
    );
    match (r, first.0.into_inner()) {
        (Ok(ts), _) => Ok(ts[2..]
            .iter()
            .map(|&t| Value { t, constant: None })
            .collect()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(fail(format!("its body: {e}"))),
    }
}

/// `Scan` (opset 9 and later): the body unrolled over the scan axis (a
/// fixed size), states carried from step to step, scan outputs stacked.
fn control_scan<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Value<'g>>> {
    let fail = |reason: String| Error::Node {
        op: op_label(n),
        node: node_label(n),
        opset,
        reason,
    };
    if opset < 9 {
        return Err(fail(
            "Scan before opset 9 (batched, with sequence_lens) is not supported".into(),
        ));
    }
    let body = subgraph(n, "body").map_err(fail)?;
    let attr_ints = |name: &str| -> Vec<i64> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
            .unwrap_or_default()
    };
    let m = n
        .attribute
        .iter()
        .find(|a| a.name == "num_scan_inputs")
        .map(|a| a.i as usize)
        .ok_or_else(|| fail("no num_scan_inputs".into()))?;
    let ins: Vec<Value<'g>> = n
        .input
        .iter()
        .map(|name| {
            scope
                .values
                .get(name)
                .cloned()
                .ok_or_else(|| fail(format!("input '{name}' is computed by no earlier node")))
        })
        .collect::<Result<_>>()?;
    let nstate = ins
        .len()
        .checked_sub(m)
        .ok_or_else(|| fail("more scan inputs than inputs".into()))?;
    let nscan_out = body
        .output
        .len()
        .checked_sub(nstate)
        .ok_or_else(|| fail("the body gives fewer outputs than states".into()))?;
    let in_axes = attr_ints("scan_input_axes");
    let in_dirs = attr_ints("scan_input_directions");
    let out_axes = attr_ints("scan_output_axes");
    let out_dirs = attr_ints("scan_output_directions");
    let err = |e: kiln_graph::Error| fail(e.to_string());
    let mut len = None;
    let mut scans = Vec::new();
    for (j, v) in ins[nstate..].iter().enumerate() {
        let rank = v.t.rank() as i64;
        let a = in_axes.get(j).copied().unwrap_or(0);
        let a = if a < 0 { a + rank } else { a };
        let l = v.t.shape().0[a as usize]
            .fixed()
            .ok_or_else(|| fail("the scan axis must be a fixed size".into()))?;
        if len.is_some_and(|x| x != l) {
            return Err(fail("scan inputs of different lengths".into()));
        }
        len = Some(l);
        scans.push((v.t, a, in_dirs.get(j).copied().unwrap_or(0) != 0));
    }
    let len = len.ok_or_else(|| fail("no scan inputs".into()))?;
    let names = free_names(body);
    let (constants, captured, params) = captures(scope, &names).map_err(fail)?;
    let mut states: Vec<Value<'g>> = ins[..nstate].to_vec();
    let mut stacked: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
    for t in 0..len {
        let mut step = states.clone();
        for &(x, a, reverse) in &scans {
            let i = if reverse { len - 1 - t } else { t } as i64;
            let s = x
                .slice_axis(a, i, i + 1, 1)
                .map_err(err)?
                .squeeze(a)
                .map_err(err)?;
            step.push(Value {
                t: s,
                constant: None,
            });
        }
        let outs = run_subgraph(g, body, opset, &constants, &captured, &params, &step)?;
        states = outs[..nstate].to_vec();
        for (k, o) in outs[nstate..].iter().enumerate() {
            stacked[k].push(o.t);
        }
    }
    let mut out = states;
    for (k, mut steps) in stacked.into_iter().enumerate() {
        if out_dirs.get(k).copied().unwrap_or(0) != 0 {
            steps.reverse();
        }
        let rank = steps[0].rank() as i64 + 1;
        let a = out_axes.get(k).copied().unwrap_or(0);
        let a = if a < 0 { a + rank } else { a };
        let parts: Vec<Tensor<'g>> = steps
            .iter()
            .map(|s| s.unsqueeze(a))
            .collect::<kiln_graph::Result<_>>()
            .map_err(err)?;
        let t = g.concat(&parts, a).map_err(err)?;
        out.push(Value { t, constant: None });
    }
    Ok(out)
}

/// Converts one node, folding it to constants when its inputs all are; a
/// value it needs at import time is traced back to the graph inputs.
fn convert_node<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &mut Scope<'g>,
) -> Result<()> {
    convert_node_in(g, n, opset, scope).map_err(|e| match e {
        Error::NeedsValue {
            op,
            node,
            opset,
            value,
            ..
        } => Error::NeedsValue {
            inputs: scope.inputs_of(&value),
            op,
            node,
            opset,
            value,
        },
        e => e,
    })
}

fn convert_node_in<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &mut Scope<'g>,
) -> Result<()> {
    let fail = |reason: String| match reason.strip_prefix(ops::NEEDS_VALUE) {
        Some(value) => Error::NeedsValue {
            op: op_label(n),
            node: node_label(n),
            opset,
            value: value.to_string(),
            inputs: Vec::new(),
        },
        None => Error::Node {
            op: op_label(n),
            node: node_label(n),
            opset,
            reason,
        },
    };
    if matches!(n.op_type.as_str(), "If" | "Loop" | "Scan") {
        let outputs = match n.op_type.as_str() {
            "If" => control_if(g, n, opset, scope)?,
            "Loop" => control_loop(g, n, opset, scope)?,
            _ => control_scan(g, n, opset, scope)?,
        };
        return scope.bind(n, outputs, &fail);
    }
    let values = &scope.values;
    let convert = ops::find(&n.op_type).ok_or_else(|| fail("no conversion".into()))?;
    let mut inputs = Vec::with_capacity(n.input.len());
    for name in &n.input {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        let v = values
            .get(name)
            .ok_or_else(|| fail(format!("input '{name}' is computed by no earlier node")))?;
        inputs.push(Some(v.clone()));
    }
    let foldable = inputs.iter().flatten().all(|v| v.constant.is_some())
        && !n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
    let outputs: Vec<Value<'g>> = if foldable {
        let scratch = GraphBuilder::new();
        let ins = inputs
            .iter()
            .map(|v| {
                v.as_ref()
                    .map(|v| {
                        let a = v.constant.clone().expect("checked above");
                        scratch
                            .constant((*a).clone())
                            .map(|t| Input { t, value: Some(a) })
                    })
                    .transpose()
            })
            .collect::<kiln_graph::Result<Vec<_>>>()
            .map_err(|e| fail(e.to_string()))?;
        let node = Node::new(&scratch, n, opset, ins);
        let outs = convert(&node).map_err(fail)?;
        let ids: Vec<_> = outs.iter().map(|t| t.id()).collect();
        let graph = scratch.graph();
        let run = kiln_graph::interp::run(
            &graph,
            &kiln_graph::interp::RunInputs {
                feeds: &HashMap::new(),
                variables: &HashMap::new(),
                bindings: &kiln_graph::Bindings::new(),
            },
            &ids,
        )
        .map_err(|e| fail(format!("evaluating its constant inputs: {e}")))?;
        run.fetched
            .into_iter()
            .map(|a| {
                let t = g.constant(a.clone()).map_err(|e| fail(e.to_string()))?;
                Ok(Value {
                    t,
                    constant: Some(Rc::new(a)),
                })
            })
            .collect::<Result<_>>()?
    } else {
        let ins = inputs
            .into_iter()
            .map(|v| {
                v.map(|v| Input {
                    t: v.t,
                    value: v.constant,
                })
            })
            .collect();
        let node = Node::new(g, n, opset, ins);
        // An output that is a constant node (`Shape` of fixed dims, say) is
        // known at import time too.
        convert(&node)
            .map_err(fail)?
            .into_iter()
            .map(|t| Value {
                t,
                constant: t.constant_value().map(|a| Rc::new((*a).clone())),
            })
            .collect()
    };
    scope.bind(n, outputs, &fail)
}

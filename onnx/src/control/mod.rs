//! Control flow: ONNX nodes with subgraphs, which the importer converts
//! itself (their bodies are graphs of ONNX nodes, converted recursively):
//! `If` here, `Loop` in `loops.rs`, `Scan` in `scan.rs`; and running a
//! subgraph in a scope of its own ([`call_subgraph`], for `SequenceMap`
//! and the like).

pub(crate) mod loops;
pub(crate) mod scan;

use std::collections::HashSet;

use kiln_graph::{GraphBuilder, Tensor};

use crate::error::{Error, Result};
use crate::import::convert_nodes;
use crate::ops::{self, ConvertError};
use crate::proto::{GraphProto, NodeProto};
use crate::scope::{needs_value, node_error, Form, Item, Scope, Value};
use crate::tensor;

/// The names `graph` (and its subgraphs) read from enclosing scopes, in
/// first-use order.
pub(crate) fn free_names(graph: &GraphProto) -> Vec<String> {
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
pub(crate) fn subgraph<'a>(n: &'a NodeProto, name: &str) -> ops::R<&'a GraphProto> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| ConvertError::Invalid(format!("no '{name}' subgraph")))
}

/// Runs `sub` in a scope of its own on builder `b`: the `outer` values it
/// reads (already on `b`), its inputs bound to `inputs`; returns its
/// outputs.
pub(crate) fn run_subgraph<'s>(
    b: &'s GraphBuilder,
    sub: &GraphProto,
    opset: i64,
    outer: &[(String, Item<'s>)],
    inputs: &[Item<'s>],
) -> Result<Vec<Item<'s>>> {
    let mut scope = Scope::default();
    scope.declare(sub);
    for (name, item) in outer {
        for v in item.tensors() {
            scope.owned.insert(v.t.id());
        }
        scope.values.insert(name.clone(), item.clone());
    }
    for init in &sub.initializer {
        let a = tensor::to_array(init)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        let t = b
            .constant(a)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope
            .values
            .insert(init.name.clone(), Item::Tensor(Value::of(t)));
    }
    if inputs.len() != sub.input.len() {
        return Err(Error::Invalid(format!(
            "subgraph '{}' takes {} inputs, is given {}",
            sub.name,
            sub.input.len(),
            inputs.len()
        )));
    }
    for (i, item) in sub.input.iter().zip(inputs) {
        for v in item.tensors() {
            scope.owned.insert(v.t.id());
        }
        scope.values.insert(i.name.clone(), item.clone());
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

/// Runs node `n`'s subgraph attribute `attr` on `g` with its inputs bound
/// to `inputs` (the values of `scope` it reads taken as they are): a body
/// applied once, such as `SequenceMap`'s per element.
pub(crate) fn call_subgraph<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    attr: &str,
    opset: i64,
    scope: &Scope<'g>,
    inputs: &[Item<'g>],
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let sub = subgraph(n, attr).map_err(fail)?;
    let outer = captures(scope, &free_names(sub)).map_err(fail)?;
    run_subgraph(g, sub, opset, &outer, inputs)
}

/// The outer values a subgraph reads, by name.
pub(crate) fn captures<'g>(scope: &Scope<'g>, names: &[String]) -> ops::R<Vec<(String, Item<'g>)>> {
    names
        .iter()
        .map(|name| {
            let item = scope.values.get(name).ok_or_else(|| {
                format!("its subgraph reads '{name}', which no enclosing graph defines")
            })?;
            Ok((name.clone(), item.clone()))
        })
        .collect()
}

/// The tensors of `outer` computed at run time: the parameters of a kiln
/// function (an `If` branch, a loop body) that reads `outer`.
pub(crate) fn runtime_params<'g>(outer: &[(String, Item<'g>)]) -> Vec<Tensor<'g>> {
    outer
        .iter()
        .flat_map(|(_, item)| item.tensors())
        .filter(|v| v.constant.is_none())
        .map(|v| v.t)
        .collect()
}

/// `outer` inside a kiln function on builder `b`: constants re-made, the
/// rest its parameters `params` (in [`runtime_params`] order).
pub(crate) fn remake<'s>(
    b: &'s GraphBuilder,
    outer: &[(String, Item<'_>)],
    params: &[Tensor<'s>],
) -> Result<Vec<(String, Item<'s>)>> {
    let mut next = params.iter();
    let mut out = Vec::with_capacity(outer.len());
    for (name, item) in outer {
        let item = item.map(&mut |v| match &v.constant {
            Some(a) => {
                let t = b
                    .constant((**a).clone())
                    .map_err(|e| Error::Invalid(format!("'{name}': {e}")))?;
                Ok(Value {
                    t,
                    constant: Some(a.clone()),
                })
            }
            None => next
                .next()
                .map(|&t| Value::runtime(t))
                .ok_or_else(|| Error::Invalid(format!("'{name}': a parameter is missing"))),
        })?;
        out.push((name.clone(), item));
    }
    Ok(out)
}

/// Keeps the first error a subgraph closure met (kiln's closures return
/// kiln errors; the importer's is more precise).
pub(crate) struct FirstError(std::cell::RefCell<Option<Error>>);

impl FirstError {
    fn new() -> FirstError {
        FirstError(std::cell::RefCell::new(None))
    }

    fn keep<T>(&self, r: Result<T>) -> kiln_graph::Result<T> {
        r.map_err(|e| {
            let msg = e.to_string();
            self.0.borrow_mut().get_or_insert(e);
            kiln_graph::Error::InvalidGraph(msg)
        })
    }
}

/// `If`: an import-time condition inlines its branch; otherwise kiln's
/// `cond` runs one branch. Branches whose results differ in structure
/// (sequence lengths, optionals present or not) or types need the
/// condition at import time (`Error::NeedsValue`).
pub(crate) fn control_if<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let cond = n
        .input
        .first()
        .and_then(|c| scope.tensor(c))
        .ok_or_else(|| fail("no condition (a tensor)".into()))?;
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
        let outer = captures(scope, &free_names(branch)).map_err(fail)?;
        return run_subgraph(g, branch, opset, &outer, &[]);
    }
    let mut names = free_names(then_g);
    for f in free_names(else_g) {
        if !names.contains(&f) {
            names.push(f);
        }
    }
    let outer = captures(scope, &names).map_err(fail)?;
    let params = runtime_params(&outer);
    let pred = cond
        .t
        .reshape(kiln_graph::Shape(Vec::new()))
        .map_err(|e| fail(format!("the condition must hold one value: {e}").into()))?;
    let first = FirstError::new();
    let forms: [std::cell::RefCell<Option<Vec<Form>>>; 2] = Default::default();
    let r = g.cond(
        pred,
        &params,
        |b, p| branch_results(b, p, then_g, opset, &outer, &first, &forms[0]),
        |b, p| branch_results(b, p, else_g, opset, &outer, &first, &forms[1]),
    );
    if let Some(e) = first.0.into_inner() {
        return Err(e);
    }
    let [then_form, else_form] = forms.map(|f| f.into_inner());
    match r {
        Ok(ts) if then_form == else_form => {
            let mut ts = ts.into_iter();
            then_form
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    f.build(&mut ts)
                        .ok_or_else(|| fail("its branches gave too few results".into()))
                })
                .collect()
        }
        // The branches give values of other structures or types: kiln
        // needs to know which one at import time.
        _ => Err(needs_value(n, opset, &n.input[0])),
    }
}

/// A branch of an `If` as kiln's `cond` calls it: its results flattened
/// to tensors, their structure kept in `form`.
fn branch_results<'s>(
    b: &'s GraphBuilder,
    p: &[Tensor<'s>],
    sub: &GraphProto,
    opset: i64,
    outer: &[(String, Item<'_>)],
    first: &FirstError,
    form: &std::cell::RefCell<Option<Vec<Form>>>,
) -> kiln_graph::Result<Vec<Tensor<'s>>> {
    let outer = first.keep(remake(b, outer, p))?;
    let outs = first.keep(run_subgraph(b, sub, opset, &outer, &[]))?;
    *form.borrow_mut() = Some(outs.iter().map(Item::form).collect());
    Ok(outs.iter().flat_map(Item::tensors).map(|v| v.t).collect())
}

/// The tensors named `names` (each must be a tensor of an earlier node).
pub(crate) fn tensor_inputs<'g>(
    scope: &Scope<'g>,
    names: &[String],
    fail: &dyn Fn(ConvertError) -> Error,
) -> Result<Vec<Value<'g>>> {
    names
        .iter()
        .map(|name| match scope.values.get(name) {
            Some(Item::Tensor(v)) => Ok(v.clone()),
            Some(other) => Err(fail(format!("input '{name}' is {}", other.kind()).into())),
            None => Err(fail(
                format!("input '{name}' is computed by no earlier node").into(),
            )),
        })
        .collect()
}

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

/// The opsets this importer is written for (of the default domain).
pub(crate) const OPSETS: std::ops::RangeInclusive<i64> = 7..=22;

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
        .ok_or_else(|| Error::Invalid("the model imports no opset of the default domain".into()))
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
    let mut missing = Vec::new();
    unsupported(graph, opset, &mut missing);
    if !missing.is_empty() {
        return Err(Error::Unsupported(missing));
    }
    let g = GraphBuilder::new();
    let mut values: HashMap<String, Value<'_>> = HashMap::new();
    // Nodes that already stand for an ONNX value (and carry its name).
    let mut owned: HashSet<NodeId> = HashSet::new();
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
        owned.insert(t.id());
        values.insert(
            init.name.clone(),
            Value {
                t,
                constant: (!options.initializers_as_variables).then(|| Rc::new(a)),
            },
        );
    }
    for input in &graph.input {
        // Before IR 4, initializers are listed as inputs too.
        if values.contains_key(&input.name) {
            continue;
        }
        let (dtype, shape) = declared_type(input)?;
        let t = g
            .placeholder(&kiln_name(&input.name), dtype, shape)
            .map_err(|e| Error::Invalid(format!("input '{}': {e}", input.name)))?;
        owned.insert(t.id());
        values.insert(input.name.clone(), Value { t, constant: None });
    }
    for n in &graph.node {
        convert_node(&g, n, opset, &mut values, &mut owned)?;
    }
    let mut fetched: HashSet<NodeId> = HashSet::new();
    for out in &graph.output {
        let v = values.get(&out.name).ok_or_else(|| {
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

/// Converts one node, folding it to constants when its inputs all are.
fn convert_node<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    values: &mut HashMap<String, Value<'g>>,
    owned: &mut HashSet<NodeId>,
) -> Result<()> {
    let fail = |reason: String| Error::Node {
        op: op_label(n),
        node: node_label(n),
        opset,
        reason,
    };
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
        convert(&node)
            .map_err(fail)?
            .into_iter()
            .map(|t| Value { t, constant: None })
            .collect()
    };
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
        // Name a node this conversion made after its ONNX output (where
        // the name is free); one standing for another value keeps its name.
        if owned.insert(v.t.id()) {
            let _ = v.t.named(&kiln_name(name));
        }
        values.insert(name.clone(), v);
    }
    Ok(())
}

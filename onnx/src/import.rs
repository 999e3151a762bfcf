//! The graph walk: placeholders for inputs, constants (or variables) for
//! initializers, each node through its converter in `ops/` (evaluated at
//! import time when its inputs are all constants), outputs by name.
//!
//! Sequences and optionals exist at import time only: kiln has no such
//! types, so a sequence is a list of tensors whose length is known while
//! importing, and an optional is known to hold a value or none ([`Item`]).
//! Sequence ops (`ops/sequence.rs`) rearrange those lists; `If`, `Loop` and
//! `Identity` pass them through. At the graph's edges:
//!
//! - a sequence input `x` becomes one placeholder per element, named
//!   `x/0`, `x/1`, ... (the element shapes, and so the length, come from
//!   [`ImportOptions::sequence_inputs`]);
//! - an optional input is a placeholder (or a sequence's placeholders) when
//!   present, and holds none when listed in
//!   [`ImportOptions::absent_inputs`];
//! - a sequence output `y` becomes one kiln output per element, named
//!   `y/0`, `y/1`, ...; an optional output is its value's output(s) when
//!   present, and no output at all when none.

use std::collections::{HashMap, HashSet};

use kiln_graph::{Dim, Graph, GraphBuilder, NodeId, Shape, SourceLoc, Tensor};

use crate::check;
use crate::control::control_if;
use crate::control::loops::control_loop;
use crate::control::scan::control_scan;
use crate::error::{unnamed, Error, Result, UnsupportedNode};
use crate::fold::{evaluate, FoldLimit};
use crate::ops::{self, sequence, training, ConvertError, Input, Node};
use crate::proto::{type_proto, GraphProto, ModelProto, NodeProto, TypeProto};
use crate::scope::{kiln_name, node_error, node_label, op_label, Item, Scope, Value};
use crate::tensor;
use crate::{ImportOptions, Imported};

/// The opsets this importer is written for (of the default domain): 7 to
/// 22, and 6 as far as the converters know its older forms (binary ops'
/// `broadcast`/`axis`, attributes that later became inputs): the
/// pytorch-converted test models are opset 6. Newer ones are read with
/// opset 22's meaning (later opsets added types and ops, which the op
/// table covers or reports).
pub(crate) const OPSETS: std::ops::RangeInclusive<i64> = 6..=22;

/// Every node of `g` (and of its subgraphs) whose op kiln cannot convert.
fn unsupported(g: &GraphProto, opset: i64, out: &mut Vec<UnsupportedNode>) {
    for (index, n) in g.node.iter().enumerate() {
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        let label = op_label(n);
        let reason = if ops::find(&label).is_some()
            || label == training::GRADIENT
            || label == ops::flex::FLEX_ATTENTION
        {
            None
        } else if !default && !ops::knows_domain(&n.domain) {
            Some(format!("the '{}' domain is not supported", n.domain))
        } else {
            Some("no conversion to kiln's primitives".to_string())
        };
        if let Some(reason) = reason {
            out.push(UnsupportedNode {
                op: op_label(n),
                node: node_label(n),
                index: n.name.is_empty().then_some(index),
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

/// The kiln dtype and shape of a declared tensor type (`None` dims get a
/// symbol of their own, named after the value and position; `None` when
/// the type has no shape): the shape `options` gives the input instead
/// where it does, symbols `options` fixes made fixed.
fn tensor_type(
    name: &str,
    tt: &type_proto::Tensor,
    options: &ImportOptions,
) -> Result<(kiln_graph::DType, Option<Shape>)> {
    let bad = |why: String| Error::Invalid(format!("input '{name}': {why}"));
    let dtype = tensor::dtype_of(tt.elem_type).map_err(bad)?;
    let fix = |symbol: String| match options.dims.get(&symbol) {
        Some(&n) => Dim::Fixed(n),
        None => Dim::sym(&kiln_name(&symbol)),
    };
    if let Some(given) = options.input_shapes.get(name) {
        let dims = given
            .0
            .iter()
            .map(|d| match d {
                Dim::Fixed(_) => d.clone(),
                _ => fix(d.to_string()),
            })
            .collect();
        return Ok((dtype, Some(Shape(dims))));
    }
    let Some(s) = &tt.shape else {
        return Ok((dtype, None));
    };
    let dims = s
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| {
            use crate::proto::tensor_shape_proto::dimension::Value as D;
            match &d.value {
                Some(D::DimValue(n)) if *n >= 0 => Ok(Dim::Fixed(*n as usize)),
                Some(D::DimValue(n)) => Err(bad(format!("dim {i} is {n}"))),
                Some(D::DimParam(p)) if !p.is_empty() => Ok(fix(p.clone())),
                _ => Ok(fix(kiln_name(&format!("{name}_{i}")))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((dtype, Some(Shape(dims))))
}

/// The kiln value of graph input `name` of declared type `ty`: a
/// placeholder (or a constant, when bound in `options`) for a tensor, one
/// per element for a sequence, either or none for an optional.
fn input_item<'g>(
    g: &'g GraphBuilder,
    name: &str,
    ty: Option<&TypeProto>,
    options: &ImportOptions,
    linked: &HashSet<String>,
    scope: &mut Scope<'g>,
) -> Result<Item<'g>> {
    use crate::proto::type_proto::Value as T;
    let bad = |why: String| Error::Invalid(format!("input '{name}': {why}"));
    let kiln = |e: kiln_graph::Error| bad(e.to_string());
    match ty.and_then(|t| t.value.as_ref()) {
        None => Err(bad("no type".into())),
        Some(T::TensorType(tt)) => {
            let (dtype, shape) = tensor_type(name, tt, options)?;
            if let Some(a) = options.constant_inputs.get(name) {
                // Bound by the caller: a constant of the declared type.
                let fits = a.dtype() == dtype
                    && shape.as_ref().is_none_or(|shape| {
                        a.shape().len() == shape.rank()
                            && shape
                                .0
                                .iter()
                                .zip(a.shape())
                                .all(|(d, &n)| d.fixed().is_none_or(|f| f == n))
                    });
                if !fits {
                    let declared = shape.map_or("?".to_string(), |s| s.to_string());
                    return Err(bad(format!(
                        "bound to a {}{:?}, the model declares {dtype}{declared}",
                        a.dtype(),
                        a.shape()
                    )));
                }
                let t = g
                    .constant(a.clone())
                    .and_then(|t| t.named(&kiln_name(name)))
                    .map_err(kiln)?;
                scope.owned.insert(t.id());
                return Ok(Item::Tensor(Value::of(t)));
            }
            let shape =
                shape.ok_or_else(|| bad("no shape (kiln needs each input's rank)".into()))?;
            let t = g
                .placeholder(&kiln_name(name), dtype, shape)
                .map_err(kiln)?;
            scope.owned.insert(t.id());
            scope.fed.insert(name.to_string());
            Ok(Item::Tensor(Value::runtime(t)))
        }
        Some(T::SequenceType(sq)) => {
            let tt = match sq.elem_type.as_deref().and_then(|t| t.value.as_ref()) {
                Some(T::TensorType(tt)) => tt,
                _ => return Err(bad("only sequences of tensors are supported".into())),
            };
            let (dtype, declared) = tensor_type(name, tt, options)?;
            let shapes = options.sequence_inputs.get(name).ok_or_else(|| {
                bad("a sequence: its element shapes must be given \
                     (ImportOptions::sequence_inputs)"
                    .into())
            })?;
            // A dim named (`dim_param`) like a dim of a tensor input stays
            // that symbol where every element is given the same size there
            // (ONNX's meaning: one size for the name), so that the two
            // agree; it is bound when they are fed.
            let named = |k: usize| {
                use crate::proto::tensor_shape_proto::dimension::Value as D;
                let d = tt.shape.as_ref()?.dim.get(k)?;
                match &d.value {
                    Some(D::DimParam(p)) if linked.contains(p) => {
                        let first = shapes.first()?.0.get(k)?;
                        shapes
                            .iter()
                            .all(|s| s.0.get(k) == Some(first))
                            .then(|| Dim::sym(&kiln_name(p)))
                    }
                    _ => None,
                }
            };
            let mut elems = Vec::with_capacity(shapes.len());
            for (i, shape) in shapes.iter().enumerate() {
                let fits = declared.as_ref().is_none_or(|d| {
                    d.rank() == shape.rank()
                        && d.0
                            .iter()
                            .zip(&shape.0)
                            .all(|(d, s)| d.fixed().is_none_or(|f| s.fixed() == Some(f)))
                });
                if !fits {
                    return Err(bad(format!(
                        "element {i} is given the shape {shape}, the model declares {}",
                        declared.as_ref().map_or("?".to_string(), |s| s.to_string())
                    )));
                }
                let shape = Shape(
                    shape
                        .0
                        .iter()
                        .enumerate()
                        .map(|(k, d)| named(k).unwrap_or_else(|| d.clone()))
                        .collect(),
                );
                let t = g
                    .placeholder(&format!("{}/{i}", kiln_name(name)), dtype, shape)
                    .map_err(kiln)?;
                scope.owned.insert(t.id());
                elems.push(Value::runtime(t));
            }
            scope.fed.insert(name.to_string());
            Ok(Item::Sequence(elems))
        }
        Some(T::OptionalType(o)) => {
            if options.absent_inputs.contains(name) {
                return Ok(Item::Optional(None));
            }
            let inner = input_item(g, name, o.elem_type.as_deref(), options, linked, scope)?;
            Ok(Item::Optional(Some(Box::new(inner))))
        }
        Some(T::MapType(_)) => Err(bad("map inputs are not supported".into())),
        Some(T::SparseTensorType(_)) => Err(bad("sparse tensor inputs are not supported".into())),
        Some(T::OpaqueType(_)) => Err(bad("opaque inputs are not supported".into())),
    }
}

/// Makes `item` graph output(s) named `name`: a tensor one output, a
/// sequence one per element (`name/i`), an optional its value's (none
/// when it holds none).
fn output_item(
    g: &GraphBuilder,
    name: &str,
    item: &Item<'_>,
    fetched: &mut HashSet<NodeId>,
) -> Result<()> {
    let bad = |e: kiln_graph::Error| Error::Invalid(format!("output '{name}': {e}"));
    match item {
        Item::Tensor(v) => {
            let t = if v.t.name() == name && !fetched.contains(&v.t.id()) {
                Ok(v.t)
            } else {
                // Named otherwise (an input, an initializer, an output
                // twice): an identity node carries the output's name.
                v.t.add(0)
                    .or_else(|_| v.t.or(v.t))
                    .and_then(|t| t.named(name))
            };
            let t = t.map_err(bad)?;
            fetched.insert(t.id());
            g.output(t).map_err(bad)
        }
        Item::Sequence(vs) => {
            for (i, v) in vs.iter().enumerate() {
                output_item(g, &format!("{name}/{i}"), &Item::Tensor(v.clone()), fetched)?;
            }
            Ok(())
        }
        Item::Optional(None) => Ok(()),
        Item::Optional(Some(i)) => output_item(g, name, i, fetched),
    }
}

/// Imports `model`.
/// Drops the data of a tensor already converted (its name, type and
/// dims stay).
fn free_data(t: &mut crate::proto::TensorProto) {
    t.raw_data = Vec::new();
    t.float_data = Vec::new();
    t.double_data = Vec::new();
    t.int32_data = Vec::new();
    t.int64_data = Vec::new();
    t.uint64_data = Vec::new();
    t.string_data = Vec::new();
}

/// Imports `model`, emptying its initializers' data as they become the
/// graph's constants (so the weights are held about once, not twice).
pub(crate) fn import_model(model: &mut ModelProto, options: &ImportOptions) -> Result<Imported> {
    let (opset, warnings) = check::opset(model)?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::Invalid("the model has no graph".into()))?;
    check::single_writers(graph)?;
    check::options(graph, options)?;
    let _limit = FoldLimit::set(options.fold_limit_bytes);
    let mut missing = Vec::new();
    unsupported(graph, opset, &mut missing);
    if !missing.is_empty() {
        return Err(Error::Unsupported(missing));
    }
    let g = GraphBuilder::new();
    let mut scope = Scope::default();
    scope.declare(graph);
    // A BatchNormalization's running mean and variance (inputs 3 and 4) are
    // statistics, not weights: with `initializers_as_variables` they become
    // variables no optimizer updates.
    let statistics: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| {
            n.op_type == "BatchNormalization" && matches!(n.domain.as_str(), "" | "ai.onnx")
        })
        .flat_map(|n| n.input.iter().skip(3).take(2))
        .map(String::as_str)
        .collect();
    for init in graph.initializer.iter_mut() {
        let _origin = SourceLoc::set_origin(SourceLoc::origin(format!(
            "ONNX initializer '{}'",
            init.name
        )));
        let a = tensor::to_array(init)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        free_data(init);
        let name = kiln_name(&init.name);
        // The graph's constant is the folding's value too: one copy of
        // the weights (GPT-2's import peaked at four).
        let t = if options.initializers_as_variables {
            if statistics.contains(init.name.as_str()) {
                g.non_trainable_variable(&name, a)
            } else {
                g.variable(&name, a)
            }
        } else {
            g.constant(a).and_then(|t| t.named(&name))
        }
        .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope.owned.insert(t.id());
        scope
            .values
            .insert(init.name.clone(), Item::Tensor(Value::of(t)));
    }
    // The dim names of tensor inputs (sequence elements' dims of those
    // names stay symbolic).
    let linked: HashSet<String> = graph
        .input
        .iter()
        .filter_map(|i| match i.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(tt) => tt.shape.as_ref(),
            _ => None,
        })
        .flat_map(|s| &s.dim)
        .filter_map(|d| match &d.value {
            Some(crate::proto::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                Some(p.clone())
            }
            _ => None,
        })
        .filter(|p| !p.is_empty())
        .collect();
    for input in &graph.input {
        // Before IR 4, initializers are listed as inputs too.
        if scope.values.contains_key(&input.name) {
            continue;
        }
        let _origin = SourceLoc::set_origin(SourceLoc::origin(format!(
            "ONNX graph input '{}'",
            input.name
        )));
        let ty = input.r#type.as_ref();
        let item = input_item(&g, &input.name, ty, options, &linked, &mut scope)?;
        scope.values.insert(input.name.clone(), item);
    }
    convert_nodes(&g, graph, opset, &mut scope)?;
    let mut fetched: HashSet<NodeId> = HashSet::new();
    for out in &graph.output {
        let item = scope.values.get(&out.name).ok_or_else(|| {
            Error::Invalid(format!(
                "graph output '{}' is computed by no node",
                out.name
            ))
        })?;
        let _origin = SourceLoc::set_origin(SourceLoc::origin(format!(
            "ONNX graph output '{}'",
            out.name
        )));
        output_item(&g, &kiln_name(&out.name), item, &mut fetched)?;
    }
    let graph = prune(g.into_graph())?;
    Ok(Imported { graph, warnings })
}

/// `graph` without the nodes that neither its outputs nor its interface
/// (placeholders, variables) need: values folded at import time into
/// constants that later nodes read (shape arithmetic, say) are not written
/// to the file, nor are the remains of conversions abandoned.
fn prune(graph: Graph) -> Result<Graph> {
    let mut roots: Vec<NodeId> = graph.outputs().to_vec();
    roots.extend(graph.placeholders());
    roots.extend(graph.variables());
    let live = graph.ancestors(&roots);
    if live.len() == graph.len() {
        return Ok(graph);
    }
    let bad = |e: kiln_graph::Error| Error::Invalid(format!("removing unused nodes: {e}"));
    let mut out = graph.empty_like();
    let mut new_id: HashMap<NodeId, NodeId> = HashMap::with_capacity(live.len());
    for id in live {
        let n = graph.node(id);
        let inputs: Vec<NodeId> = graph.inputs(id).iter().map(|i| new_id[i]).collect();
        let nid = out
            .add_node(&n.name, n.op.clone(), &inputs, n.location.clone())
            .map_err(bad)?;
        new_id.insert(id, nid);
    }
    out.set_outputs(graph.outputs().iter().map(|o| new_id[o]).collect())
        .map_err(bad)?;
    Ok(out)
}

/// Converts `graph`'s initializers and nodes into `scope`.
pub(crate) fn convert_nodes<'g>(
    g: &'g GraphBuilder,
    graph: &GraphProto,
    opset: i64,
    scope: &mut Scope<'g>,
) -> Result<()> {
    for (index, n) in graph.node.iter().enumerate() {
        // What kiln adds for the node, and its errors, are said of the node.
        let node = if n.name.is_empty() {
            unnamed(index, n.output.first().map_or("", String::as_str))
        } else {
            format!("'{}'", n.name)
        };
        let _origin = SourceLoc::set_origin(SourceLoc::origin(format!(
            "ONNX node {node} ({})",
            op_label(n)
        )));
        convert_node(g, n, opset, scope).map_err(|e| e.of_unnamed(n, index))?;
    }
    Ok(())
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
    let fail = |e: ConvertError| node_error(n, opset, e);
    if op_label(n) == training::GRADIENT {
        let outputs = training::gradient(g, n, scope).map_err(fail)?;
        return scope.bind(n, outputs, &fail);
    }
    if op_label(n) == ops::flex::FLEX_ATTENTION {
        let items = n
            .input
            .iter()
            .map(|name| {
                if name.is_empty() {
                    return Ok(None);
                }
                scope.values.get(name).cloned().map(Some).ok_or_else(|| {
                    fail(format!("input '{name}' is computed by no earlier node").into())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = ops::flex::flex_attention(g, n, opset, scope, &items)?;
        return scope.bind(n, outputs, &fail);
    }
    if matches!(n.op_type.as_str(), "If" | "Loop" | "Scan") {
        let outputs = match n.op_type.as_str() {
            "If" => control_if(g, n, opset, scope)?,
            "Loop" => control_loop(g, n, opset, scope)?,
            _ => control_scan(g, n, opset, scope)?,
        };
        return scope.bind(n, outputs, &fail);
    }
    let mut items = Vec::with_capacity(n.input.len());
    for name in &n.input {
        if name.is_empty() {
            items.push(None);
            continue;
        }
        let v = scope
            .values
            .get(name)
            .ok_or_else(|| fail(format!("input '{name}' is computed by no earlier node").into()))?;
        items.push(Some(v.clone()));
    }
    // Sequences and optionals: through `Identity` as they are, and the
    // sequence and optional ops.
    if n.op_type == "Identity" {
        if let Some(Some(item @ (Item::Sequence(_) | Item::Optional(_)))) = items.first() {
            let item = item.clone();
            return scope.bind(n, vec![item], &fail);
        }
    }
    if let Some(convert) = sequence::find(&n.op_type) {
        let node = sequence::SeqNode {
            g,
            proto: n,
            opset,
            inputs: items,
            scope,
        };
        let outputs = convert(&node)?;
        return scope.bind(n, outputs, &fail);
    }
    let mut inputs = Vec::with_capacity(items.len());
    for (name, item) in n.input.iter().zip(items) {
        inputs.push(match item {
            None => None,
            Some(Item::Tensor(v)) => Some(v),
            Some(other) => {
                return Err(fail(
                    format!("input '{name}' is {}, not a tensor", other.kind()).into(),
                ))
            }
        });
    }
    let foldable = inputs.iter().flatten().all(|v| v.constant.is_some())
        && !n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
    // Evaluated at import time where its inputs are known then and its
    // results are not too large (`fold_limit`).
    let folded = if foldable {
        fold_node(g, n, opset, scope, &inputs).map_err(fail)?
    } else {
        None
    };
    let outputs = match folded {
        Some(outputs) => outputs,
        None => build_node(g, n, opset, scope, inputs).map_err(fail)?,
    };
    scope.note_sub_byte_output(n);
    scope.bind(n, outputs.into_iter().map(Item::Tensor).collect(), &fail)
}

/// Node `n` over constant `inputs`, evaluated at import time; `None` where
/// its results are too large to hold (`fold_limit`) or an input is not a
/// constant.
fn fold_node<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
    inputs: &[Option<Value<'g>>],
) -> ops::R<Option<Vec<Value<'g>>>> {
    let scratch = GraphBuilder::new();
    let mut ins = Vec::with_capacity(inputs.len());
    for v in inputs {
        ins.push(match v {
            None => None,
            Some(v) => {
                // Not all constants: built like the rest (callers check).
                let Some(a) = v.constant.clone() else {
                    return Ok(None);
                };
                let t = scratch.constant((*a).clone())?;
                Some(Input { t, value: Some(a) })
            }
        });
    }
    let mut node = Node::new(&scratch, n, opset, ins);
    node.declared = scope.declared_inputs(n);
    let outs = convert_tensor_node(&node)?;
    let Some(arrays) = evaluate(&scratch, &outs)? else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(arrays.len());
    for a in arrays {
        let t = g.constant(a)?;
        values.push(Value::of(t));
    }
    Ok(Some(values))
}

/// Node `n` built on `g` over `inputs`; an output that is a constant node
/// (`Shape` of fixed dims, say) is known at import time too.
fn build_node<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
    inputs: Vec<Option<Value<'g>>>,
) -> ops::R<Vec<Value<'g>>> {
    let ins = inputs
        .into_iter()
        .map(|v| {
            v.map(|v| Input {
                t: v.t,
                value: v.constant,
            })
        })
        .collect();
    let mut node = Node::new(g, n, opset, ins);
    node.declared = scope.declared_inputs(n);
    Ok(convert_tensor_node(&node)?
        .into_iter()
        .map(Value::of)
        .collect())
}

/// Runs the converter of a node of tensors.
fn convert_tensor_node<'g>(node: &Node<'_, 'g>) -> ops::R<Vec<Tensor<'g>>> {
    let convert = ops::find(&op_label(node.proto)).ok_or_else(|| "no conversion".to_string())?;
    convert(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::attribute_proto::AttributeType;
    use crate::proto::tensor_proto::DataType;
    use crate::proto::{
        tensor_shape_proto, AttributeProto, OperatorSetIdProto, TensorShapeProto, ValueInfoProto,
    };
    use kiln_graph::Array;

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        // 399 ASCII bytes then a two-byte character: byte 400 falls inside it.
        let name = format!("{}é{}", "a".repeat(399), "b".repeat(10));
        let k = kiln_name(&name);
        assert_eq!(k, "a".repeat(399));
        let k = kiln_name(&"é".repeat(300));
        assert_eq!(k, "é".repeat(200));
    }

    fn tensor_ty(dims: &[i64]) -> TypeProto {
        use tensor_shape_proto::{dimension::Value as D, Dimension};
        TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(D::DimValue(d)),
                            ..Dimension::default()
                        })
                        .collect(),
                }),
            })),
            ..TypeProto::default()
        }
    }

    fn value(name: &str, ty: TypeProto) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(ty),
            ..ValueInfoProto::default()
        }
    }

    fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..NodeProto::default()
        }
    }

    /// Sequence inputs become one placeholder per element, sequence
    /// outputs one output per element; an absent optional holds none.
    #[test]
    fn sequences_and_optionals_at_the_edges() {
        let seq = TypeProto {
            value: Some(type_proto::Value::SequenceType(type_proto::Sequence {
                elem_type: Some(Box::new(tensor_ty(&[2]))),
            })),
            ..TypeProto::default()
        };
        let opt = TypeProto {
            value: Some(type_proto::Value::OptionalType(type_proto::Optional {
                elem_type: Some(Box::new(tensor_ty(&[2]))),
            })),
            ..TypeProto::default()
        };
        let axis = AttributeProto {
            name: "axis".into(),
            r#type: AttributeType::Int as i32,
            i: 0,
            ..AttributeProto::default()
        };
        let graph = GraphProto {
            input: vec![value("xs", seq.clone()), value("o", opt.clone())],
            output: vec![
                value("has", tensor_ty(&[])),
                value("cat", tensor_ty(&[6])),
                value("ys", seq),
                value("o2", opt),
                value("n", tensor_ty(&[])),
            ],
            node: vec![
                node("OptionalHasElement", &["o"], &["has"], vec![]),
                node("ConcatFromSequence", &["xs"], &["cat"], vec![axis]),
                node("SequenceErase", &["xs"], &["ys"], vec![]),
                node("Identity", &["o"], &["o2"], vec![]),
                node("SequenceLength", &["ys"], &["n"], vec![]),
            ],
            ..GraphProto::default()
        };
        let mut model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 18,
            }],
            graph: Some(graph),
            ..ModelProto::default()
        };
        let mut options = ImportOptions::default();
        let e = import_model(&mut model.clone(), &options)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sequence_inputs"), "{e}");
        options
            .sequence_inputs
            .insert("xs".into(), vec![Shape::fixed(&[2]); 3]);
        options.absent_inputs.insert("o".into());
        let g = import_model(&mut model, &options).unwrap().graph;
        let names = |ids: Vec<NodeId>| -> Vec<String> {
            ids.into_iter().map(|i| g.node(i).name.clone()).collect()
        };
        assert_eq!(names(g.placeholders()), ["xs/0", "xs/1", "xs/2"]);
        assert_eq!(
            names(g.outputs().to_vec()),
            ["has", "cat", "ys/0", "ys/1", "n"]
        );
        let x: Vec<Array> = (0..3)
            .map(|i| Array::from_vec(vec![2], vec![i as f32, 10.0 + i as f32]).unwrap())
            .collect();
        let feeds: HashMap<&str, &Array> = [("xs/0", &x[0]), ("xs/1", &x[1]), ("xs/2", &x[2])]
            .into_iter()
            .collect();
        let run = kiln_graph::interp::run(
            &g,
            &kiln_graph::interp::RunInputs {
                feeds: &feeds,
                variables: &HashMap::new(),
                bindings: &kiln_graph::Bindings::new(),
            },
            g.outputs(),
        )
        .unwrap();
        assert_eq!(run.fetched[0].to_f64_vec(), [0.0]);
        assert_eq!(
            run.fetched[1].to_f64_vec(),
            [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
        );
        assert_eq!(run.fetched[3].to_f64_vec(), [1.0, 11.0]);
        assert_eq!(run.fetched[4].to_f64_vec(), [2.0]);
    }
}

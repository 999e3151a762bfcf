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
use std::rc::Rc;

use kiln_graph::{Array, Dim, Graph, GraphBuilder, NodeId, Shape, SourceLoc, Tensor};

use crate::check;
use crate::error::{unnamed, Error, Result, UnsupportedNode};
use crate::ops::{self, sequence, ConvertError, Input, Node};
use crate::proto::{type_proto, GraphProto, ModelProto, NodeProto, TypeProto};
use crate::tensor;
use crate::{ImportOptions, Imported};

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

impl<'g> Value<'g> {
    /// A value computed at run time.
    pub(crate) fn runtime(t: Tensor<'g>) -> Value<'g> {
        Value { t, constant: None }
    }
}

/// Any value of the ONNX graph: a tensor, a sequence of tensors (its length
/// known at import time), or an optional (whether it holds a value is known
/// at import time).
#[derive(Clone)]
pub(crate) enum Item<'g> {
    Tensor(Value<'g>),
    Sequence(Vec<Value<'g>>),
    Optional(Option<Box<Item<'g>>>),
}

/// The structure of an [`Item`] without its tensors: what a kiln function
/// (an `If` branch) returns is flattened to tensors and rebuilt by it.
#[derive(Clone, Debug, PartialEq)]
enum Form {
    Tensor,
    Sequence(usize),
    Optional(Option<Box<Form>>),
}

impl<'g> Item<'g> {
    /// What kind of value it is, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Item::Tensor(_) => "a tensor",
            Item::Sequence(_) => "a sequence",
            Item::Optional(_) => "an optional",
        }
    }

    /// The tensors it holds, in order.
    fn tensors(&self) -> Vec<&Value<'g>> {
        match self {
            Item::Tensor(v) => vec![v],
            Item::Sequence(vs) => vs.iter().collect(),
            Item::Optional(o) => o.as_deref().map_or_else(Vec::new, Item::tensors),
        }
    }

    fn form(&self) -> Form {
        match self {
            Item::Tensor(_) => Form::Tensor,
            Item::Sequence(vs) => Form::Sequence(vs.len()),
            Item::Optional(o) => Form::Optional(o.as_deref().map(|i| Box::new(i.form()))),
        }
    }

    /// The same structure with each tensor mapped by `f`.
    fn map<'b>(&self, f: &mut dyn FnMut(&Value<'g>) -> Result<Value<'b>>) -> Result<Item<'b>> {
        Ok(match self {
            Item::Tensor(v) => Item::Tensor(f(v)?),
            Item::Sequence(vs) => Item::Sequence(vs.iter().map(&mut *f).collect::<Result<_>>()?),
            Item::Optional(None) => Item::Optional(None),
            Item::Optional(Some(i)) => Item::Optional(Some(Box::new(i.map(f)?))),
        })
    }
}

impl Form {
    /// The item of this structure holding the next tensors of `ts`.
    fn build<'g>(&self, ts: &mut dyn Iterator<Item = Tensor<'g>>) -> Option<Item<'g>> {
        Some(match self {
            Form::Tensor => Item::Tensor(Value::runtime(ts.next()?)),
            Form::Sequence(n) => Item::Sequence(
                (0..*n)
                    .map(|_| ts.next().map(Value::runtime))
                    .collect::<Option<_>>()?,
            ),
            Form::Optional(None) => Item::Optional(None),
            Form::Optional(Some(f)) => Item::Optional(Some(Box::new(f.build(ts)?))),
        })
    }
}

/// The error of converting node `n`, said of the node: its name (or first
/// output), op type and opset, with the converter's reason (which names
/// the input or attribute at fault where it knows). A kiln error's
/// location is left out: it is this node (`SourceLoc::set_origin`), or a
/// line of the importer's own source, which means nothing to its user.
pub(crate) fn node_error(n: &NodeProto, opset: i64, e: impl Into<ConvertError>) -> Error {
    match e.into() {
        ConvertError::NeedsValue(value) => Error::NeedsValue {
            op: op_label(n),
            node: node_label(n),
            opset,
            value,
            inputs: Vec::new(),
        },
        e @ (ConvertError::Unsupported(_) | ConvertError::Kiln(_) | ConvertError::Invalid(_)) => {
            Error::Node {
                op: op_label(n),
                node: node_label(n),
                opset,
                reason: e.to_string(),
            }
        }
    }
}

/// That node `n` needs the value of `value` at import time.
fn needs_value(n: &NodeProto, opset: i64, value: &str) -> Error {
    node_error(n, opset, ConvertError::NeedsValue(value.to_string()))
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
    // At most 400 bytes, cut at a character boundary.
    let mut end = s.len().min(400);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// The node's name for messages: its name, else its first output.
pub(crate) fn node_label(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

/// The op's name for messages and the converter table: its op type in the
/// default domain, `domain.op_type` in others (`ai.onnx.ml.Binarizer`).
fn op_label(n: &NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

/// Every node of `g` (and of its subgraphs) whose op kiln cannot convert.
fn unsupported(g: &GraphProto, opset: i64, out: &mut Vec<UnsupportedNode>) {
    for (index, n) in g.node.iter().enumerate() {
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        let label = op_label(n);
        let reason = if ops::find(&label).is_some()
            || label == GRADIENT
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
                return Ok(Item::Tensor(Value {
                    t,
                    constant: Some(Rc::new(a.clone())),
                }));
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
pub(crate) fn import_model(model: &ModelProto, options: &ImportOptions) -> Result<Imported> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Invalid("the model has no graph".into()))?;
    let (opset, warnings) = check::opset(model)?;
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
    for init in &graph.initializer {
        let _origin = SourceLoc::set_origin(SourceLoc::origin(format!(
            "ONNX initializer '{}'",
            init.name
        )));
        let a = tensor::to_array(init)
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        let name = kiln_name(&init.name);
        let t = if options.initializers_as_variables {
            if statistics.contains(init.name.as_str()) {
                g.non_trainable_variable(&name, a.clone())
            } else {
                g.variable(&name, a.clone())
            }
        } else {
            g.constant(a.clone()).and_then(|t| t.named(&name))
        }
        .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope.owned.insert(t.id());
        scope.values.insert(
            init.name.clone(),
            Item::Tensor(Value {
                t,
                constant: (!options.initializers_as_variables).then(|| Rc::new(a)),
            }),
        );
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

/// The values of one graph (the main graph, or a subgraph with the values
/// of its enclosing scopes it uses), and the nodes that stand for them.
#[derive(Default)]
pub(crate) struct Scope<'g> {
    values: HashMap<String, Item<'g>>,
    /// Nodes that already stand for an ONNX value (and carry its name).
    owned: HashSet<NodeId>,
    /// The inputs of the node computing each value.
    deps: HashMap<String, Vec<String>>,
    /// The graph's inputs fed at run time.
    fed: HashSet<String>,
    /// ONNX element types of values, where declared or made by a cast (see
    /// `Node::declared`).
    declared: HashMap<String, i32>,
}

impl<'g> Scope<'g> {
    /// Records the element types `graph` declares: inputs, outputs,
    /// `value_info` and initializers.
    fn declare(&mut self, graph: &GraphProto) {
        for v in graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
        {
            if let Some(type_proto::Value::TensorType(t)) =
                v.r#type.as_ref().and_then(|t| t.value.as_ref())
            {
                self.declared.insert(v.name.clone(), t.elem_type);
            }
        }
        for init in &graph.initializer {
            self.declared.insert(init.name.clone(), init.data_type);
        }
    }

    /// The declared element types of `n`'s inputs.
    fn declared_inputs(&self, n: &NodeProto) -> Vec<Option<i32>> {
        n.input
            .iter()
            .map(|name| self.declared.get(name).copied())
            .collect()
    }

    /// Records the sub-byte element type of `n`'s output where `n` makes
    /// one (a cast to it, or quantization with such a zero point or
    /// `output_dtype`), so later nodes tell it from a byte type.
    fn note_sub_byte_output(&mut self, n: &NodeProto) {
        let attr = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.i as i32)
        };
        let input_type = |i: usize| {
            n.input
                .get(i)
                .and_then(|name| self.declared.get(name))
                .copied()
        };
        let made = match n.op_type.as_str() {
            "Cast" => attr("to"),
            "CastLike" => input_type(1),
            "QuantizeLinear" => input_type(2).or(attr("output_dtype")),
            _ => None,
        };
        let special = |t: i32| tensor::sub_byte(t).is_some() || tensor::minifloat(t).is_some();
        if let (Some(t), Some(out)) = (made.filter(|&t| special(t)), n.output.first()) {
            self.declared.insert(out.clone(), t);
        }
    }

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

    /// The tensor value `name`, where it is one.
    fn tensor(&self, name: &str) -> Option<&Value<'g>> {
        match self.values.get(name) {
            Some(Item::Tensor(v)) => Some(v),
            _ => None,
        }
    }

    /// Binds node `n`'s outputs to `outputs`.
    fn bind(
        &mut self,
        n: &NodeProto,
        outputs: Vec<Item<'g>>,
        fail: &dyn Fn(ConvertError) -> Error,
    ) -> Result<()> {
        if outputs.len() < n.output.iter().filter(|o| !o.is_empty()).count() {
            return Err(fail(
                format!(
                    "gave {} outputs, the node has {}",
                    outputs.len(),
                    n.output.len()
                )
                .into(),
            ));
        }
        for (name, item) in n.output.iter().zip(outputs) {
            if name.is_empty() {
                continue;
            }
            self.deps.insert(name.clone(), n.input.clone());
            // Name a node this conversion made after its ONNX output (where
            // the name is free); one standing for another value keeps its name.
            match &item {
                Item::Tensor(v) => {
                    if self.owned.insert(v.t.id()) {
                        let _ = v.t.named(&kiln_name(name));
                    }
                }
                Item::Sequence(vs) => {
                    for (i, v) in vs.iter().enumerate() {
                        if self.owned.insert(v.t.id()) {
                            let _ = v.t.named(&format!("{}/{i}", kiln_name(name)));
                        }
                    }
                }
                Item::Optional(_) => {
                    for v in item.tensors() {
                        self.owned.insert(v.t.id());
                    }
                }
            }
            self.values.insert(name.clone(), item);
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
fn subgraph<'a>(n: &'a NodeProto, name: &str) -> ops::R<&'a GraphProto> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| ConvertError::Invalid(format!("no '{name}' subgraph")))
}

/// Runs `sub` in a scope of its own on builder `b`: the `outer` values it
/// reads (already on `b`), its inputs bound to `inputs`; returns its
/// outputs.
fn run_subgraph<'s>(
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
            .constant(a.clone())
            .map_err(|e| Error::Invalid(format!("initializer '{}': {e}", init.name)))?;
        scope.values.insert(
            init.name.clone(),
            Item::Tensor(Value {
                t,
                constant: Some(Rc::new(a)),
            }),
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
fn captures<'g>(scope: &Scope<'g>, names: &[String]) -> ops::R<Vec<(String, Item<'g>)>> {
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
fn runtime_params<'g>(outer: &[(String, Item<'g>)]) -> Vec<Tensor<'g>> {
    outer
        .iter()
        .flat_map(|(_, item)| item.tensors())
        .filter(|v| v.constant.is_none())
        .map(|v| v.t)
        .collect()
}

/// `outer` inside a kiln function on builder `b`: constants re-made, the
/// rest its parameters `params` (in [`runtime_params`] order).
fn remake<'s>(
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
struct FirstError(std::cell::RefCell<Option<Error>>);

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
fn control_if<'g>(
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

/// Trip counts up to which a `Loop` is unrolled.
const MAX_UNROLL: i64 = 4096;

/// `Loop`. A loop with scan outputs (per-iteration values stacked) or
/// loop-carried sequences or optionals is unrolled: its trip count and
/// condition must be known at import time (`Error::NeedsValue` otherwise),
/// and the condition the body computes too; each iteration runs the body
/// with a constant iteration number, and stops where the condition turns
/// false. A loop of tensors only with a small constant trip count (at most
/// 16) is unrolled as well; otherwise kiln's `while_loop` carries
/// (iteration, condition, values).
fn control_loop<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let body = subgraph(n, "body").map_err(fail)?;
    let input = |i: usize| -> Option<&Item<'g>> {
        n.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|s| scope.values.get(s))
    };
    let tensor_input = |i: usize, what: &str| -> Result<Option<&Value<'g>>> {
        match input(i) {
            None => Ok(None),
            Some(Item::Tensor(v)) => Ok(Some(v)),
            Some(other) => Err(fail(format!("its {what} is {}", other.kind()).into())),
        }
    };
    let trip = tensor_input(0, "trip count")?;
    let cond = tensor_input(1, "condition")?;
    let vars: Vec<Item<'g>> = (2..n.input.len())
        .map(|i| {
            input(i)
                .cloned()
                .ok_or_else(|| fail(format!("input {i} is missing").into()))
        })
        .collect::<Result<_>>()?;
    let nv = vars.len();
    let scans = body
        .output
        .len()
        .checked_sub(1 + nv)
        .ok_or_else(|| fail("the body gives fewer outputs than loop values".into()))?;
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    let first_value = |v: &Value<'g>| {
        v.constant
            .as_ref()
            .and_then(|a| a.to_f64_vec().first().copied())
    };
    // Must the loop be unrolled (values kiln's while_loop cannot carry)?
    let structured = scans > 0 || vars.iter().any(|v| !matches!(v, Item::Tensor(_)));
    let trip_const = trip.map(first_value);
    let cond_const = cond.map(first_value);
    if structured {
        if let Some(None) = trip_const {
            return Err(needs_value(n, opset, &n.input[0]));
        }
        if let Some(None) = cond_const {
            return Err(needs_value(n, opset, &n.input[1]));
        }
        if trip.is_none() && cond.is_none() {
            return Err(fail(
                "a loop without a trip count or condition never ends".into(),
            ));
        }
    }
    let known = !matches!(trip_const, Some(None)) && !matches!(cond_const, Some(None));
    let max = trip_const.flatten().map(|m| m as i64);
    if known && (structured || max.is_some_and(|m| m <= 16)) {
        if max.is_some_and(|m| m > MAX_UNROLL) {
            return Err(fail(
                format!(
                    "a trip count of {} (more than {MAX_UNROLL}) in a loop that must be unrolled",
                    max.unwrap_or_default()
                )
                .into(),
            ));
        }
        let scalar = |v: f64, dtype| -> Result<Item<'g>> {
            let a = Array::new(Vec::new(), kiln_graph::Data::filled(dtype, 1, v))
                .ok_or_else(|| fail("a scalar".into()))?;
            let t = g.constant(a.clone()).map_err(|e| fail(e.into()))?;
            Ok(Item::Tensor(Value {
                t,
                constant: Some(Rc::new(a)),
            }))
        };
        let mut cur = vars.clone();
        let mut stacked: Vec<Vec<Value<'g>>> = vec![Vec::new(); scans];
        let mut go = cond_const.flatten().is_none_or(|c| c != 0.0);
        let mut i = 0i64;
        let mut unrolled = true;
        while go && max.is_none_or(|m| i < m) {
            if i == MAX_UNROLL {
                return Err(fail(
                    format!("the loop runs more than {MAX_UNROLL} iterations (unrolled)").into(),
                ));
            }
            let mut ins = vec![
                scalar(i as f64, kiln_graph::DType::I64)?,
                scalar(1.0, kiln_graph::DType::Bool)?,
            ];
            ins.extend(cur.iter().cloned());
            let outs = run_subgraph(g, body, opset, &outer, &ins)?;
            match &outs[0] {
                Item::Tensor(c) => match first_value(c) {
                    Some(c) => go = c != 0.0,
                    None if structured => {
                        return Err(fail(
                            "the body's condition is computed at run time in a loop that must \
                             be unrolled"
                                .into(),
                        ))
                    }
                    None => {
                        // Carried by kiln's while_loop instead (what was
                        // built is left unused).
                        unrolled = false;
                        break;
                    }
                },
                other => {
                    return Err(fail(
                        format!("the body's condition is {}", other.kind()).into(),
                    ))
                }
            }
            cur = outs[1..1 + nv].to_vec();
            for (k, s) in outs[1 + nv..].iter().enumerate() {
                let Item::Tensor(s) = s else {
                    return Err(fail(format!("scan output {k} is {}", s.kind()).into()));
                };
                stacked[k].push(s.clone());
            }
            i += 1;
        }
        if unrolled {
            let mut out = cur;
            for s in stacked {
                if s.is_empty() {
                    return Err(fail("scan outputs of a loop that runs no iteration".into()));
                }
                let t = build_or_fold(g, &s, &|b, ts| {
                    let parts = ts
                        .iter()
                        .map(|t| t.unsqueeze(0))
                        .collect::<kiln_graph::Result<Vec<_>>>()?;
                    Ok(vec![b.concat(&parts, 0)?])
                })
                .map_err(fail)?;
                out.extend(t.into_iter().map(Item::Tensor));
            }
            return Ok(out);
        }
    }
    // while (i < M && cond) { (cond, vars) = body(i, cond, vars); i += 1 }
    let vars: Vec<Tensor<'g>> = vars
        .iter()
        .map(|v| match v {
            Item::Tensor(v) => Ok(v.t),
            other => Err(fail(format!("a loop value is {}", other.kind()).into())),
        })
        .collect::<Result<_>>()?;
    let i0 = g
        .scalar(0.0, kiln_graph::DType::I64)
        .map_err(|e| fail(e.into()))?;
    let c0 = match cond {
        Some(c) => {
            c.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.into()))?
        }
        None => g
            .scalar(1.0, kiln_graph::DType::Bool)
            .map_err(|e| fail(e.into()))?,
    };
    let mut state = vec![i0, c0];
    state.extend(vars);
    let params = runtime_params(&outer);
    let mut captured_t = params.clone();
    let has_trip = trip.is_some();
    if let Some(m) = trip {
        captured_t.push(
            m.t.reshape(kiln_graph::Shape(Vec::new()))
                .map_err(|e| fail(e.into()))?,
        );
    }
    let first = FirstError::new();
    let ns = state.len();
    let ncap = params.len();
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
            let ins: Vec<Item<'_>> = p[..ns]
                .iter()
                .map(|&t| Item::Tensor(Value::runtime(t)))
                .collect();
            let outer = first.keep(remake(b, &outer, &p[ns..ns + ncap]))?;
            let outs = first.keep(run_subgraph(b, body, opset, &outer, &ins))?;
            let mut next = vec![p[0].add(1.0)?];
            for (k, o) in outs.iter().take(ns - 1).enumerate() {
                let Item::Tensor(v) = o else {
                    return first.keep(Err(fail(
                        format!("the body's output {k} is {}", o.kind()).into(),
                    )));
                };
                next.push(if k == 0 {
                    v.t.reshape(kiln_graph::Shape(Vec::new()))?
                } else {
                    v.t
                });
            }
            Ok(next)
        },
    );
    match (r, first.0.into_inner()) {
        (Ok(ts), _) => Ok(ts[2..]
            .iter()
            .map(|&t| Item::Tensor(Value::runtime(t)))
            .collect()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(fail(format!("its body: {e}").into())),
    }
}

/// `Scan` (opset 9 and later): the body unrolled over the scan axis (a
/// fixed size), states carried from step to step, scan outputs stacked.
fn control_scan<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    if opset < 9 {
        return control_scan8(g, n, opset, scope);
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
    let ins = tensor_inputs(scope, &n.input, &fail)?;
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
    let err = |e: kiln_graph::Error| fail(e.into());
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
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    let mut states: Vec<Item<'g>> = ins[..nstate].iter().cloned().map(Item::Tensor).collect();
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
            step.push(Item::Tensor(Value::runtime(s)));
        }
        let outs = run_subgraph(g, body, opset, &outer, &step)?;
        states = outs[..nstate].to_vec();
        for (k, o) in outs[nstate..].iter().enumerate() {
            let Item::Tensor(o) = o else {
                return Err(fail(format!("scan output {k} is {}", o.kind()).into()));
            };
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
        out.push(Item::Tensor(Value::runtime(t)));
    }
    Ok(out)
}

/// `Scan` of opset 8: batched (every input's dim 0 is the batch, the scan
/// axis of scan inputs is dim 1), with optional `sequence_lens` (known at
/// import time) and per-input `directions`. Each batch entry is unrolled
/// over its own length; its scan outputs are padded with zeros to the
/// longest.
fn control_scan8<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &Scope<'g>,
) -> Result<Vec<Item<'g>>> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    let err = |e: kiln_graph::Error| fail(e.into());
    let body = subgraph(n, "body").map_err(fail)?;
    let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
    let m = attr("num_scan_inputs")
        .map(|a| a.i as usize)
        .ok_or_else(|| fail("no num_scan_inputs".into()))?;
    let dirs = attr("directions")
        .map(|a| a.ints.clone())
        .unwrap_or_default();
    let ins = tensor_inputs(scope, &n.input[1.min(n.input.len())..], &fail)?;
    let nstate = ins
        .len()
        .checked_sub(m)
        .filter(|_| m > 0)
        .ok_or_else(|| fail("no scan inputs, or more than inputs".into()))?;
    let nscan_out = body
        .output
        .len()
        .checked_sub(nstate)
        .ok_or_else(|| fail("the body gives fewer outputs than states".into()))?;
    let fixed = |v: &Value<'g>, d: usize| {
        v.t.shape()
            .0
            .get(d)
            .and_then(|d| d.fixed())
            .ok_or_else(|| fail("the batch and scan dims must be fixed sizes".into()))
    };
    let batch = fixed(&ins[0], 0)?;
    let max_len = fixed(&ins[nstate], 1)?;
    for v in &ins[nstate..] {
        if fixed(v, 0)? != batch || fixed(v, 1)? != max_len {
            return Err(fail("scan inputs of different batch or lengths".into()));
        }
    }
    let lens: Vec<usize> = match n.input.first().filter(|s| !s.is_empty()) {
        None => vec![max_len; batch],
        Some(name) => {
            let v = scope
                .tensor(name)
                .ok_or_else(|| fail("sequence_lens is not a tensor".into()))?;
            let a = v
                .constant
                .as_ref()
                .ok_or_else(|| needs_value(n, opset, name))?;
            let lens = ops::ints_of(a).map_err(fail)?;
            if lens.len() != batch || lens.iter().any(|&l| l < 0 || l as usize > max_len) {
                return Err(fail(
                    format!("sequence_lens {lens:?} for a batch of {batch} of length {max_len}")
                        .into(),
                ));
            }
            lens.into_iter().map(|l| l as usize).collect()
        }
    };
    let outer = captures(scope, &free_names(body)).map_err(fail)?;
    let entry = |v: &Value<'g>, b: usize| -> Result<Tensor<'g>> {
        v.t.slice_axis(0, b as i64, b as i64 + 1, 1)
            .and_then(|t| t.squeeze(0))
            .map_err(err)
    };
    let mut state_out: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nstate];
    let mut scan_out: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
    for (b, &len) in lens.iter().enumerate() {
        let mut states: Vec<Item<'g>> = ins[..nstate]
            .iter()
            .map(|v| Ok(Item::Tensor(Value::runtime(entry(v, b)?))))
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor<'g>> = ins[nstate..]
            .iter()
            .map(|v| entry(v, b))
            .collect::<Result<_>>()?;
        let mut stacked: Vec<Vec<Tensor<'g>>> = vec![Vec::new(); nscan_out];
        for t in 0..len {
            let mut step = states.clone();
            for (j, x) in xs.iter().enumerate() {
                let reverse = dirs.get(j).copied().unwrap_or(0) != 0;
                let i = if reverse { len - 1 - t } else { t } as i64;
                let s = x.slice_axis(0, i, i + 1, 1).and_then(|s| s.squeeze(0));
                step.push(Item::Tensor(Value::runtime(s.map_err(err)?)));
            }
            let outs = run_subgraph(g, body, opset, &outer, &step)?;
            states = outs[..nstate].to_vec();
            for (k, o) in outs[nstate..].iter().enumerate() {
                let Item::Tensor(o) = o else {
                    return Err(fail(format!("scan output {k} is {}", o.kind()).into()));
                };
                stacked[k].push(o.t.unsqueeze(0).map_err(err)?);
            }
        }
        for (k, s) in states.iter().enumerate() {
            let Item::Tensor(s) = s else {
                return Err(fail(format!("state {k} is {}", s.kind()).into()));
            };
            state_out[k].push(s.t.unsqueeze(0).map_err(err)?);
        }
        for (k, steps) in stacked.into_iter().enumerate() {
            if steps.is_empty() {
                return Err(fail("a sequence of length 0 in the batch".into()));
            }
            let mut t = g.concat(&steps, 0).map_err(err)?;
            if len < max_len {
                let before = vec![0; t.rank()];
                let mut after = before.clone();
                after[0] = max_len - len;
                t = t.pad(&before, &after, 0.0).map_err(err)?;
            }
            scan_out[k].push(t.unsqueeze(0).map_err(err)?);
        }
    }
    state_out
        .into_iter()
        .chain(scan_out)
        .map(|parts| {
            let t = g.concat(&parts, 0).map_err(err)?;
            Ok(Item::Tensor(Value::runtime(t)))
        })
        .collect()
}

/// The tensors named `names` (each must be a tensor of an earlier node).
fn tensor_inputs<'g>(
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

/// `ai.onnx.preview.training.Gradient`: the gradients of the value named by
/// its `y` attribute (of its sum, where not a scalar) with respect to the
/// values named by `xs`, by kiln's symbolic differentiation. It reads
/// values by name, so the importer converts it itself.
const GRADIENT: &str = "ai.onnx.preview.training.Gradient";

fn gradient<'g>(g: &'g GraphBuilder, n: &NodeProto, scope: &Scope<'g>) -> ops::R<Vec<Item<'g>>> {
    let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
    let value = |name: &str| {
        scope.tensor(name).map(|v| v.t).ok_or_else(|| {
            ConvertError::Invalid(format!("'{name}' is not a tensor computed before the node"))
        })
    };
    let y = attr("y")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .ok_or("the 'y' attribute is required")?;
    let xs = attr("xs")
        .map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .ok_or("the 'xs' attribute is required")?;
    let y = value(&y)?;
    let xs = xs.iter().map(|x| value(x)).collect::<ops::R<Vec<_>>>()?;
    let grads = g.gradients(y, &xs)?;
    Ok(grads
        .into_iter()
        .map(|t| Item::Tensor(Value::runtime(t)))
        .collect())
}

fn convert_node_in<'g>(
    g: &'g GraphBuilder,
    n: &NodeProto,
    opset: i64,
    scope: &mut Scope<'g>,
) -> Result<()> {
    let fail = |e: ConvertError| node_error(n, opset, e);
    if op_label(n) == GRADIENT {
        let outputs = gradient(g, n, scope).map_err(fail)?;
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
    let folded: Option<Vec<Value<'g>>> = if foldable {
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
            .map_err(|e| fail(e.into()))?;
        let mut node = Node::new(&scratch, n, opset, ins);
        node.declared = scope.declared_inputs(n);
        let outs = convert_tensor_node(&node).map_err(fail)?;
        evaluate(&scratch, &outs)
            .map_err(fail)?
            .map(|arrays| {
                arrays
                    .into_iter()
                    .map(|a| {
                        let t = g.constant(a.clone()).map_err(|e| fail(e.into()))?;
                        Ok(Value {
                            t,
                            constant: Some(Rc::new(a)),
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
    } else {
        None
    };
    let outputs: Vec<Value<'g>> = match folded {
        Some(outputs) => outputs,
        None => {
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
            // An output that is a constant node (`Shape` of fixed dims, say)
            // is known at import time too.
            convert_tensor_node(&node)
                .map_err(fail)?
                .into_iter()
                .map(|t| Value {
                    t,
                    constant: t.constant_value().map(|a| Rc::new((*a).clone())),
                })
                .collect()
        }
    };
    scope.note_sub_byte_output(n);
    scope.bind(n, outputs.into_iter().map(Item::Tensor).collect(), &fail)
}

/// Runs the converter of a node of tensors.
fn convert_tensor_node<'g>(node: &Node<'_, 'g>) -> ops::R<Vec<Tensor<'g>>> {
    let convert = ops::find(&op_label(node.proto)).ok_or_else(|| "no conversion".to_string())?;
    convert(node)
}

thread_local! {
    /// The fold limit of the import running on this thread
    /// ([`ImportOptions::fold_limit_bytes`]): read where nodes are
    /// evaluated, deep in the walk and in converters, where threading it
    /// through every call would not pay.
    static FOLD_LIMIT: std::cell::Cell<usize> =
        const { std::cell::Cell::new(crate::DEFAULT_FOLD_LIMIT_BYTES) };
}

/// The most bytes one node may compute at import time (see
/// [`ImportOptions::fold_limit_bytes`]); a converter computing a constant
/// of its own (`Range`, `EyeLike`) builds a run-time op above it.
pub(crate) fn fold_limit() -> usize {
    FOLD_LIMIT.with(|l| l.get())
}

/// Sets the fold limit of this thread's import until dropped.
struct FoldLimit(usize);

impl FoldLimit {
    fn set(bytes: usize) -> FoldLimit {
        FoldLimit(FOLD_LIMIT.with(|l| l.replace(bytes)))
    }
}

impl Drop for FoldLimit {
    fn drop(&mut self) {
        FOLD_LIMIT.with(|l| l.set(self.0));
    }
}

/// The bytes a value of type `ty` holds (`None`: not a fixed shape, or
/// more than a `usize` counts).
pub(crate) fn value_bytes(ty: &kiln_graph::TensorType) -> Option<usize> {
    ty.shape
        .as_fixed()?
        .iter()
        .try_fold(ty.dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
}

/// Evaluates `outs` of the scratch builder `scratch` (whose inputs are all
/// constants); `None` where the values it would compute (every node but
/// the constants) hold more than [`fold_limit`] bytes: the node then stays
/// a graph op, computed at run time.
fn evaluate(scratch: &GraphBuilder, outs: &[Tensor<'_>]) -> ops::R<Option<Vec<Array>>> {
    let ids: Vec<_> = outs.iter().map(|t| t.id()).collect();
    let graph = scratch.graph();
    let limit = fold_limit();
    let mut total = 0usize;
    for id in graph.ancestors(&ids) {
        let node = graph.node(id);
        if matches!(node.op, kiln_graph::Op::Constant { .. }) {
            continue;
        }
        total = match value_bytes(&node.ty).and_then(|b| total.checked_add(b)) {
            Some(t) if t <= limit => t,
            _ => return Ok(None),
        };
    }
    let run = kiln_graph::interp::run(
        &graph,
        &kiln_graph::interp::RunInputs {
            feeds: &HashMap::new(),
            variables: &HashMap::new(),
            bindings: &kiln_graph::Bindings::new(),
        },
        &ids,
    )
    .map_err(|e| format!("evaluating its constant inputs: {e}"))?;
    Ok(Some(run.fetched))
}

/// A computation on tensors, on any builder (`build_or_fold`).
pub(crate) type Build<'f> =
    &'f dyn for<'b> Fn(&'b GraphBuilder, &[Tensor<'b>]) -> ops::R<Vec<Tensor<'b>>>;

/// `f` built on `g` over `inputs`, or evaluated at import time when every
/// input is known then (its results are then constants).
pub(crate) fn build_or_fold<'g>(
    g: &'g GraphBuilder,
    inputs: &[Value<'g>],
    f: Build<'_>,
) -> ops::R<Vec<Value<'g>>> {
    let constants: Option<Vec<&Rc<Array>>> = inputs.iter().map(|v| v.constant.as_ref()).collect();
    match constants {
        Some(arrays) if !arrays.is_empty() => {
            let scratch = GraphBuilder::new();
            let ts = arrays
                .iter()
                .map(|a| scratch.constant((***a).clone()))
                .collect::<kiln_graph::Result<Vec<_>>>()?;
            let outs = f(&scratch, &ts)?;
            if let Some(arrays) = evaluate(&scratch, &outs)? {
                return arrays
                    .into_iter()
                    .map(|a| {
                        let t = g.constant(a.clone())?;
                        Ok(Value {
                            t,
                            constant: Some(Rc::new(a)),
                        })
                    })
                    .collect();
            }
            // Too large to evaluate now: built like the rest.
            let ts: Vec<Tensor<'g>> = inputs.iter().map(|v| v.t).collect();
            Ok(f(g, &ts)?
                .into_iter()
                .map(|t| Value {
                    t,
                    constant: t.constant_value().map(|a| Rc::new((*a).clone())),
                })
                .collect())
        }
        _ => {
            let ts: Vec<Tensor<'g>> = inputs.iter().map(|v| v.t).collect();
            Ok(f(g, &ts)?
                .into_iter()
                .map(|t| Value {
                    t,
                    constant: t.constant_value().map(|a| Rc::new((*a).clone())),
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::attribute_proto::AttributeType;
    use crate::proto::tensor_proto::DataType;
    use crate::proto::{
        tensor_shape_proto, AttributeProto, OperatorSetIdProto, TensorShapeProto, ValueInfoProto,
    };

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
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 18,
            }],
            graph: Some(graph),
            ..ModelProto::default()
        };
        let mut options = ImportOptions::default();
        let e = import_model(&model, &options).err().unwrap().to_string();
        assert!(e.contains("sequence_inputs"), "{e}");
        options
            .sequence_inputs
            .insert("xs".into(), vec![Shape::fixed(&[2]); 3]);
        options.absent_inputs.insert("o".into());
        let g = import_model(&model, &options).unwrap().graph;
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

//! The values of an ONNX graph while it is imported, shared by the walk
//! (`import.rs`), control flow (`control/`) and the converters (`ops/`):
//! [`Value`] (a tensor and its import-time value), [`Item`] (a tensor, a
//! sequence or an optional), [`Scope`] (the values of one graph by name),
//! and how nodes are named in kiln and in messages ([`node_error`]).
//!
//! Sequences and optionals exist at import time only: kiln has no such
//! types, so a sequence is a list of tensors whose length is known while
//! importing, and an optional is known to hold a value or none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_graph::{Array, NodeId, Tensor};

use crate::error::{Error, Result};
use crate::ops::ConvertError;
use crate::proto::{type_proto, GraphProto, NodeProto};
use crate::tensor;

/// A value of the ONNX graph: its tensor, and its value where it is known
/// at import time.
#[derive(Clone)]
pub(crate) struct Value<'g> {
    pub t: Tensor<'g>,
    pub constant: Option<Arc<Array>>,
}

impl<'g> Value<'g> {
    /// A value computed at run time.
    pub(crate) fn runtime(t: Tensor<'g>) -> Value<'g> {
        Value { t, constant: None }
    }

    /// `t`, known at import time where it is a constant node: the graph's
    /// own array, shared, not a copy.
    pub(crate) fn of(t: Tensor<'g>) -> Value<'g> {
        Value {
            t,
            constant: t.constant_value(),
        }
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
pub(crate) enum Form {
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
    pub(crate) fn tensors(&self) -> Vec<&Value<'g>> {
        match self {
            Item::Tensor(v) => vec![v],
            Item::Sequence(vs) => vs.iter().collect(),
            Item::Optional(o) => o.as_deref().map_or_else(Vec::new, Item::tensors),
        }
    }

    pub(crate) fn form(&self) -> Form {
        match self {
            Item::Tensor(_) => Form::Tensor,
            Item::Sequence(vs) => Form::Sequence(vs.len()),
            Item::Optional(o) => Form::Optional(o.as_deref().map(|i| Box::new(i.form()))),
        }
    }

    /// The same structure with each tensor mapped by `f`.
    pub(crate) fn map<'b>(
        &self,
        f: &mut dyn FnMut(&Value<'g>) -> Result<Value<'b>>,
    ) -> Result<Item<'b>> {
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
    pub(crate) fn build<'g>(&self, ts: &mut dyn Iterator<Item = Tensor<'g>>) -> Option<Item<'g>> {
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
pub(crate) fn needs_value(n: &NodeProto, opset: i64, value: &str) -> Error {
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
pub(crate) fn op_label(n: &NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}.{}", n.domain, n.op_type)
    }
}

/// The values of one graph (the main graph, or a subgraph with the values
/// of its enclosing scopes it uses), and the nodes that stand for them.
#[derive(Default)]
pub(crate) struct Scope<'g> {
    pub(crate) values: HashMap<String, Item<'g>>,
    /// Nodes that already stand for an ONNX value (and carry its name).
    pub(crate) owned: HashSet<NodeId>,
    /// The inputs of the node computing each value.
    pub(crate) deps: HashMap<String, Vec<String>>,
    /// The graph's inputs fed at run time.
    pub(crate) fed: HashSet<String>,
    /// ONNX element types of values, where declared or made by a cast (see
    /// `Node::declared`).
    pub(crate) declared: HashMap<String, i32>,
}

impl<'g> Scope<'g> {
    /// Records the element types `graph` declares: inputs, outputs,
    /// `value_info` and initializers.
    pub(crate) fn declare(&mut self, graph: &GraphProto) {
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
    pub(crate) fn declared_inputs(&self, n: &NodeProto) -> Vec<Option<i32>> {
        n.input
            .iter()
            .map(|name| self.declared.get(name).copied())
            .collect()
    }

    /// Records the sub-byte element type of `n`'s output where `n` makes
    /// one (a cast to it, or quantization with such a zero point or
    /// `output_dtype`), so later nodes tell it from a byte type.
    pub(crate) fn note_sub_byte_output(&mut self, n: &NodeProto) {
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
    pub(crate) fn inputs_of(&self, value: &str) -> Vec<String> {
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
    pub(crate) fn tensor(&self, name: &str) -> Option<&Value<'g>> {
        match self.values.get(name) {
            Some(Item::Tensor(v)) => Some(v),
            _ => None,
        }
    }

    /// Binds node `n`'s outputs to `outputs`.
    pub(crate) fn bind(
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

//! Checks of a model and of the import options before anything is built:
//! the opset, values written twice, and options that name inputs or dims
//! the model does not have. Each error says what is wrong and what the
//! model has instead.
//!
//! Deliberately not checked here: types and shapes (the converters check
//! those as they build), or names read before they are written (the walk
//! reports those at the reading node).

use std::collections::{BTreeSet, HashMap};

use crate::error::{unnamed, Error, Result};
use crate::import::OPSETS;
use crate::proto::{tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TypeProto};
use crate::ImportOptions;

/// Ops whose meaning has not changed since opset 1 (elementwise unary ops
/// and logic): a model of these only is read at an older opset.
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

/// The default domain's opset of `model` and the warnings it calls for.
/// An opset older than [`OPSETS`] is an error (unless every op has kept its
/// meaning since: then a warning); a newer one is read with the meaning of
/// the newest kiln knows, and says so.
pub(crate) fn opset(model: &ModelProto) -> Result<(i64, Vec<String>)> {
    let (first, last) = (*OPSETS.start(), *OPSETS.end());
    let default: Vec<i64> = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .collect();
    let Some(&opset) = default.first() else {
        // A model of other domains' ops only: their nodes are checked
        // against kiln's ops (the default domain's opset does not matter).
        return Ok((last, Vec::new()));
    };
    if default.iter().any(|&v| v != opset) {
        return Err(Error::Invalid(format!(
            "the model imports the default domain at opsets {default:?}: one opset is needed"
        )));
    }
    if opset < 1 {
        return Err(Error::Invalid(format!(
            "opset {opset} is not an ONNX opset (they start at 1)"
        )));
    }
    let graph = model.graph.as_ref();
    if opset < first {
        let ops: BTreeSet<&str> = graph
            .map(|g| g.node.iter().map(|n| n.op_type.as_str()).collect())
            .unwrap_or_default();
        if let Some(op) = ops.iter().find(|op| !SAME_SINCE_1.contains(op)) {
            return Err(Error::Invalid(format!(
                "opset {opset}: kiln imports opsets {first} to {last} ({op} changed meaning \
                 since opset {opset}; upgrade the model with onnx.version_converter)"
            )));
        }
        let ops: Vec<&str> = ops.into_iter().collect();
        return Ok((
            opset,
            vec![format!(
                "opset {opset} is older than kiln reads ({first} to {last}): read as opset \
                 {first}, where its ops ({}) mean the same",
                ops.join(", ")
            )],
        ));
    }
    let mut warnings = Vec::new();
    if opset > last {
        warnings.push(format!(
            "opset {opset} is newer than kiln reads ({first} to {last}): read as opset {last} \
             (ops that changed meaning after it, or are unknown to it, are errors)"
        ));
    }
    Ok((opset, warnings))
}

/// A node's label for messages: its op type and its name, or its index and
/// first output where it has no name.
fn describe(n: &NodeProto, index: usize) -> String {
    if n.name.is_empty() {
        let out = n.output.first().map_or("", String::as_str);
        format!("{} node {}", n.op_type, unnamed(index, out))
    } else {
        format!("{} node '{}'", n.op_type, n.name)
    }
}

/// Every value of `graph` (and of its subgraphs, each in its own scope) is
/// written once: by a node, or as a graph input or initializer (an input
/// may also be an initializer, its default value).
pub(crate) fn single_writers(graph: &GraphProto) -> Result<()> {
    let mut writer: HashMap<&str, String> = HashMap::new();
    for i in &graph.input {
        writer.insert(&i.name, format!("graph input '{}'", i.name));
    }
    for i in &graph.initializer {
        writer
            .entry(&i.name)
            .or_insert_with(|| format!("initializer '{}'", i.name));
    }
    let scope = if graph.name.is_empty() {
        String::new()
    } else {
        format!(" (graph '{}')", graph.name)
    };
    for (index, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            let this = describe(n, index);
            if let Some(first) = writer.insert(o, this.clone()) {
                return Err(Error::Invalid(format!(
                    "value '{o}' is written twice{scope}: by {first} and by {this} \
                     (ONNX values are written once)"
                )));
            }
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                single_writers(sub)?;
            }
        }
    }
    Ok(())
}

/// The graph inputs of `graph` that are not initializers, with their types.
fn inputs(graph: &GraphProto) -> Vec<(&str, Option<&TypeProto>)> {
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| (i.name.as_str(), i.r#type.as_ref()))
        .collect()
}

/// The tensor type of a declared type, looking through optionals and
/// sequences.
fn tensor_of(ty: Option<&TypeProto>) -> Option<&type_proto::Tensor> {
    match ty?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
        type_proto::Value::SequenceType(s) => tensor_of(s.elem_type.as_deref()),
        type_proto::Value::OptionalType(o) => tensor_of(o.elem_type.as_deref()),
        _ => None,
    }
}

/// Whether a declared type is (or an optional holding) a sequence.
fn is_sequence(ty: Option<&TypeProto>) -> bool {
    match ty.and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::SequenceType(_)) => true,
        Some(type_proto::Value::OptionalType(o)) => is_sequence(o.elem_type.as_deref()),
        _ => false,
    }
}

/// The names of the symbolic dims of the graph's inputs: `dim_param`s, and
/// the names kiln gives unnamed unknown dims (`INPUT_AXIS`).
pub(crate) fn dim_names(graph: &GraphProto) -> BTreeSet<String> {
    use tensor_shape_proto::dimension::Value as D;
    let mut names = BTreeSet::new();
    for (name, ty) in inputs(graph) {
        let Some(shape) = tensor_of(ty).and_then(|t| t.shape.as_ref()) else {
            continue;
        };
        for (axis, d) in shape.dim.iter().enumerate() {
            match &d.value {
                Some(D::DimValue(_)) => {}
                Some(D::DimParam(p)) if !p.is_empty() => {
                    names.insert(p.clone());
                }
                _ => {
                    names.insert(crate::scope::kiln_name(&format!("{name}_{axis}")));
                }
            }
        }
    }
    names
}

/// Every name `options` gives is an input (or dim) of `graph` of the kind
/// the option is for; otherwise an error naming the option and listing
/// what the model has.
pub(crate) fn options(graph: &GraphProto, options: &ImportOptions) -> Result<()> {
    let ins = inputs(graph);
    let listing = || -> String {
        if ins.is_empty() {
            return "the model has no inputs".into();
        }
        let all: Vec<String> = ins
            .iter()
            .map(|(name, ty)| format!("'{name}' ({})", kind(*ty)))
            .collect();
        format!("the model's inputs: {}", all.join(", "))
    };
    let find = |name: &str| ins.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    for name in sorted(options.constant_inputs.keys().collect()) {
        if find(name).is_none() {
            return Err(Error::Options(format!(
                "--constant {name}: the model has no input '{name}'; {}",
                listing()
            )));
        }
    }
    for name in sorted(options.input_shapes.keys().collect()) {
        match find(name) {
            None => {
                return Err(Error::Options(format!(
                    "--input-shape {name}: the model has no input '{name}'; {}",
                    listing()
                )))
            }
            Some(ty) if !matches!(kind(ty), "tensor") => {
                return Err(Error::Options(format!(
                    "--input-shape {name}: input '{name}' is {}, not a tensor; {}",
                    kind(ty),
                    listing()
                )))
            }
            Some(_) => {}
        }
    }
    for name in sorted(options.sequence_inputs.keys().collect()) {
        match find(name) {
            None => {
                return Err(Error::Options(format!(
                    "--sequence {name}: the model has no input '{name}'; {}",
                    listing()
                )))
            }
            Some(ty) if !is_sequence(ty) => {
                return Err(Error::Options(format!(
                    "--sequence {name}: input '{name}' is {}, not a sequence; {}",
                    kind(ty),
                    listing()
                )))
            }
            Some(_) => {}
        }
    }
    for name in sorted(options.absent_inputs.iter().collect()) {
        match find(name) {
            None => {
                return Err(Error::Options(format!(
                    "--absent {name}: the model has no input '{name}'; {}",
                    listing()
                )))
            }
            Some(ty) if kind(ty) != "optional" => {
                return Err(Error::Options(format!(
                    "--absent {name}: input '{name}' is {}, not an optional (only an optional \
                     input can hold nothing); {}",
                    kind(ty),
                    listing()
                )))
            }
            Some(_) => {}
        }
    }
    let dims = dim_names(graph);
    for name in sorted(options.dims.keys().collect()) {
        if !dims.contains(name) {
            let have = if dims.is_empty() {
                "the model's inputs have no symbolic dims".to_string()
            } else {
                let v: Vec<&str> = dims.iter().map(String::as_str).collect();
                format!("the symbolic dims of its inputs: {}", v.join(", "))
            };
            return Err(Error::Options(format!(
                "--dim {name}: the model has no symbolic dim '{name}'; {have}"
            )));
        }
    }
    Ok(())
}

/// `names` in order (messages name the first mistake, the same each run).
fn sorted(mut names: Vec<&String>) -> Vec<&String> {
    names.sort();
    names
}

/// What kind of value a declared type is, for messages.
fn kind(ty: Option<&TypeProto>) -> &'static str {
    match ty.and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(_)) => "tensor",
        Some(type_proto::Value::SequenceType(_)) => "sequence",
        Some(type_proto::Value::OptionalType(_)) => "optional",
        Some(type_proto::Value::MapType(_)) => "map",
        Some(type_proto::Value::SparseTensorType(_)) => "sparse tensor",
        Some(type_proto::Value::OpaqueType(_)) => "opaque",
        None => "untyped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        tensor_shape_proto::{dimension::Value as D, Dimension},
        AttributeProto, TensorShapeProto, ValueInfoProto,
    };

    fn node(op: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            ..NodeProto::default()
        }
    }

    /// A value written twice inside a subgraph is found, and named with
    /// the subgraph; the same name in two sibling subgraphs is not a
    /// second write.
    #[test]
    fn values_written_twice_in_subgraphs() {
        let branch = |nodes: Vec<NodeProto>| GraphProto {
            name: "then".into(),
            node: nodes,
            ..GraphProto::default()
        };
        let if_node = |then: GraphProto, other: GraphProto| {
            let mut n = node("If", &["c"], &["y"]);
            for (name, g) in [("then_branch", then), ("else_branch", other)] {
                n.attribute.push(AttributeProto {
                    name: name.into(),
                    g: Some(g),
                    ..AttributeProto::default()
                });
            }
            n
        };
        let ok = GraphProto {
            node: vec![if_node(
                branch(vec![node("Neg", &["x"], &["b"])]),
                branch(vec![node("Abs", &["x"], &["b"])]),
            )],
            ..GraphProto::default()
        };
        single_writers(&ok).unwrap();
        let twice = GraphProto {
            node: vec![if_node(
                branch(vec![
                    node("Neg", &["x"], &["b"]),
                    node("Abs", &["x"], &["b"]),
                ]),
                branch(vec![]),
            )],
            ..GraphProto::default()
        };
        let e = single_writers(&twice).unwrap_err().to_string();
        for part in ["'b'", "graph 'then'", "Neg node #0", "Abs node #1"] {
            assert!(e.contains(part), "{part}: {e}");
        }
    }

    /// The dims `ImportOptions::dims` can fix: `dim_param`s, and the names
    /// kiln gives unknown dims, of inputs that are not initializers.
    #[test]
    fn symbolic_dims_of_the_inputs() {
        let dim = |v: Option<D>| Dimension {
            value: v,
            ..Dimension::default()
        };
        let ty = TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(Some(D::DimParam("batch".into()))),
                        dim(None),
                        dim(Some(D::DimValue(3))),
                    ],
                }),
            })),
            ..TypeProto::default()
        };
        let g = GraphProto {
            input: vec![ValueInfoProto {
                name: "x".into(),
                r#type: Some(ty),
                ..ValueInfoProto::default()
            }],
            ..GraphProto::default()
        };
        let names: Vec<String> = dim_names(&g).into_iter().collect();
        assert_eq!(names, ["batch", "x_1"]);
    }
}

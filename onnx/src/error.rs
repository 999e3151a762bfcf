//! Import errors: each names the file, node, op type and opset involved.

use std::fmt;

/// A node the importer cannot convert.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedNode {
    /// The node's op type (with its domain when not the default).
    pub op: String,
    /// The node's name (or its first output's when it has none).
    pub node: String,
    /// The node's index in its graph, where it has no name.
    pub index: Option<usize>,
    /// The opset of the node's domain.
    pub opset: i64,
    /// What is missing.
    pub reason: String,
}

impl fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = match self.index {
            Some(i) => unnamed(i, &self.node),
            None => self.node.clone(),
        };
        write!(
            f,
            "{} node {} (opset {}): {}",
            self.op,
            quoted(&node),
            self.opset,
            self.reason
        )
    }
}

/// The label of node `index` of a graph, which has no name: its index and
/// its first output (`#3 writing 'y'`).
pub(crate) fn unnamed(index: usize, first_output: &str) -> String {
    format!("#{index} writing '{first_output}'")
}

/// How a value computed at run time from graph `inputs` becomes known at
/// import time.
fn how_to_know(inputs: &[String]) -> String {
    if inputs.is_empty() {
        // From no graph input: from initializers imported as variables, or
        // from constants through a node too large to evaluate at import.
        return "it is computed from no graph input: from initializers imported as variables \
                (import them as constants), or through a node whose result is larger than \
                the fold limit (ImportOptions::fold_limit_bytes, kiln import --fold-limit)"
            .into();
    }
    format!(
        "bind the graph input(s) it comes from ({}) to values \
         (ImportOptions::constant_inputs, kiln import --constant NAME=FILE.npy)",
        inputs.join(", ")
    )
}

/// A node label for messages: a name quoted, an unnamed node's label
/// ([`unnamed`]) as it is.
pub(crate) fn quoted(node: &str) -> String {
    if node.starts_with('#') {
        node.to_string()
    } else {
        format!("'{node}'")
    }
}

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model (protobuf decoding failed: {0})")]
    Decode(String),
    /// The model is malformed (a missing graph, an undefined value, ...).
    #[error("invalid ONNX model: {0}")]
    Invalid(String),
    /// Ops, attributes or types kiln does not support: every such node.
    #[error("{} unsupported node(s):\n  {}", .0.len(), .0.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("\n  "))]
    Unsupported(Vec<UnsupportedNode>),
    /// A node needs the value of one of its inputs at import time (a shape,
    /// sizes, axes, pads ...) and the value is computed at run time.
    #[error(
        "{op} node {} (opset {opset}): input '{value}' must be known at import time \
         (a constant, or computed from shapes only; it is computed from tensor data): {}",
        quoted(node),
        how_to_know(inputs)
    )]
    NeedsValue {
        op: String,
        node: String,
        opset: i64,
        value: String,
        /// The graph inputs the value is computed from (binding them makes
        /// it known).
        inputs: Vec<String>,
    },
    /// A node could not be converted.
    #[error("{op} node {} (opset {opset}): {reason}", quoted(node))]
    Node {
        op: String,
        node: String,
        opset: i64,
        reason: String,
    },
    /// [`ImportOptions`](crate::ImportOptions) that do not fit the model (an
    /// input or dim it does not have, ...): says which, and what it has.
    #[error("{0}")]
    Options(String),
    /// An error in a file (wraps the others).
    #[error("{path}: {inner}")]
    File { path: String, inner: Box<Error> },
}

impl Error {
    /// This error, said of the file at `path`.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Error {
        match self {
            e @ (Error::Io { .. } | Error::File { .. }) => e,
            e => Error::File {
                path: path.display().to_string(),
                inner: Box::new(e),
            },
        }
    }

    /// This error, with the label of node `n` (number `index` of its
    /// graph) made its index where the node has no name and the error is
    /// said of it.
    pub(crate) fn of_unnamed(self, n: &crate::proto::NodeProto, index: usize) -> Error {
        let first = n.output.first().map_or("", String::as_str);
        let label = |node: String| {
            if n.name.is_empty() && node == first {
                unnamed(index, first)
            } else {
                node
            }
        };
        match self {
            Error::Node {
                op,
                node,
                opset,
                reason,
            } => Error::Node {
                op,
                node: label(node),
                opset,
                reason,
            },
            Error::NeedsValue {
                op,
                node,
                opset,
                value,
                inputs,
            } => Error::NeedsValue {
                op,
                node: label(node),
                opset,
                value,
                inputs,
            },
            e => e,
        }
    }

    /// The graph inputs whose values a node needs at import time, where
    /// that is the error.
    pub fn needed_inputs(&self) -> Option<&[String]> {
        match self {
            Error::NeedsValue { inputs, .. } => Some(inputs),
            Error::File { inner, .. } => inner.needed_inputs(),
            _ => None,
        }
    }

    /// The unsupported nodes, where that is the error.
    pub fn unsupported(&self) -> Option<&[UnsupportedNode]> {
        match self {
            Error::Unsupported(v) => Some(v),
            Error::File { inner, .. } => inner.unsupported(),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Why a converter cannot convert a node: [`ConvertError`], typed so that
//! the importer can tell a value needed at import time from an unsupported
//! feature, a malformed node or kiln's own refusal, and so that converters
//! use a plain `?` on kiln results.
//!
//! A converter's error says nothing of the node it is about: the importer
//! (`import::node_error`) adds the node's name, op type and opset when it
//! makes it the crate's public [`Error`](crate::Error).

use std::fmt;

/// Why a converter cannot convert a node.
#[derive(Debug)]
pub(crate) enum ConvertError {
    /// The node needs the import-time value of the named ONNX value (an
    /// input it reads as a shape, axes, pads ...), which is computed at
    /// run time.
    NeedsValue(String),
    /// An op, attribute value, element type or feature kiln does not
    /// support (what it is).
    Unsupported(String),
    /// kiln refused an op the conversion built. Its location is the ONNX
    /// node being converted (see `SourceLoc::set_origin`), which the
    /// importer names anyway, so the message leaves it out.
    Kiln(kiln_graph::Error),
    /// The node is malformed: a bad attribute, a missing or ill-typed
    /// input, a shape that does not fit ...
    Invalid(String),
}

/// A converter's result: its value, or why it cannot convert the node.
pub(crate) type R<T> = std::result::Result<T, ConvertError>;

impl ConvertError {
    /// This error with `what` (the input or attribute at fault) said first;
    /// a needed value stays one, since its name already says which.
    pub(crate) fn context(self, what: impl fmt::Display) -> ConvertError {
        match self {
            e @ ConvertError::NeedsValue(_) => e,
            ConvertError::Unsupported(s) => ConvertError::Unsupported(format!("{what}: {s}")),
            e => ConvertError::Invalid(format!("{what}: {e}")),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::NeedsValue(v) => write!(f, "needs the value of '{v}' at import time"),
            ConvertError::Unsupported(what) => write!(f, "unsupported: {what}"),
            ConvertError::Kiln(e) => f.write_str(&kiln_reason(e)),
            ConvertError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ConvertError {}

/// A kiln error without its location (see [`ConvertError::Kiln`]).
fn kiln_reason(e: &kiln_graph::Error) -> String {
    match e {
        kiln_graph::Error::Type {
            op,
            reason,
            operands,
            ..
        } if operands.is_empty() => format!("kiln's {op}: {reason}"),
        kiln_graph::Error::Type {
            op,
            reason,
            operands,
            ..
        } => format!("kiln's {op}: {reason} (operands: {operands})"),
        kiln_graph::Error::Name { name, reason, .. } => format!("node name '{name}' {reason}"),
        e => e.to_string(),
    }
}

impl From<kiln_graph::Error> for ConvertError {
    fn from(e: kiln_graph::Error) -> ConvertError {
        ConvertError::Kiln(e)
    }
}

impl From<String> for ConvertError {
    fn from(reason: String) -> ConvertError {
        ConvertError::Invalid(reason)
    }
}

impl From<&str> for ConvertError {
    fn from(reason: &str) -> ConvertError {
        ConvertError::Invalid(reason.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiln_errors_leave_out_their_location() {
        let g = kiln_graph::GraphBuilder::new();
        let a = g.scalar(1.0, kiln_graph::DType::F32).unwrap();
        let b = g.full(1.0, kiln_graph::DType::F32, &[2, 3]).unwrap();
        let e = ConvertError::from(a.matmul(b).unwrap_err());
        let msg = e.to_string();
        assert!(msg.starts_with("kiln's matmul: "), "{msg}");
        assert!(!msg.contains(".rs:"), "{msg}");
    }

    #[test]
    fn context_keeps_a_needed_value() {
        let e = ConvertError::NeedsValue("shape".into()).context("input 1");
        assert!(matches!(e, ConvertError::NeedsValue(v) if v == "shape"));
        let e = ConvertError::Unsupported("mode 'x'".into()).context("attribute 'mode'");
        assert_eq!(e.to_string(), "unsupported: attribute 'mode': mode 'x'");
        let e = ConvertError::from("bad").context("input 2");
        assert_eq!(e.to_string(), "input 2: bad");
    }
}

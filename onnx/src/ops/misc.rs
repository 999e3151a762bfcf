//! ONNX ops of the misc family.

use super::Converter;

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[];

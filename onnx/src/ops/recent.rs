//! ONNX ops of the newest opsets (24 and later).

use super::Converter;

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[];

//! ONNX ops of the rnn family.

use super::Converter;

/// The ops of this family.
pub(crate) const OPS: &[(&str, Converter)] = &[];

//! ONNX import: an ONNX model (opsets 7 to 22) as a kiln [`Graph`] of
//! primitives. ONNX is wider than kiln's primitive set, so each ONNX op is
//! expressed as a composition of primitives (`ops/`); nothing here adds an
//! op to the graph IR.
//!
//! - Graph inputs that are not initializers become placeholders; `dim_param`
//!   dims become symbolic dims of that name (an unnamed unknown dim gets a
//!   name of its own).
//! - Initializers become constants, or variables with
//!   [`ImportOptions::initializers_as_variables`] (to train or fine-tune).
//! - A node whose inputs are all constants is evaluated at import time (so
//!   shape arithmetic — `Shape`, `Gather`, `Concat` feeding a `Reshape` —
//!   becomes the static shapes kiln's ops take).
//! - Graph outputs are kiln outputs named after the ONNX outputs.
//! - Sequences and optionals are import-time structures (kiln has no such
//!   types): a sequence is a list of tensors of a length known while
//!   importing, an optional holds a value or none, known while importing.
//!   A sequence input `x` becomes one placeholder per element, `x/0`,
//!   `x/1`, ... (element shapes from [`ImportOptions::sequence_inputs`]);
//!   an optional input is its value's placeholder(s), or none when listed
//!   in [`ImportOptions::absent_inputs`]. A sequence output `y` becomes
//!   one output per element, `y/0`, `y/1`, ...; an optional output its
//!   value's output(s), or no output when it holds none.
//! - Every node whose op (or domain, or opset) is not supported is listed
//!   in one [`Error::Unsupported`] before anything is built.
//!
//! The protobuf messages (`proto`) are hand-written prost messages: no
//! `protoc` is needed to build kiln.

pub mod error;
mod import;
mod ops;
pub mod proto;
pub mod tensor;

use std::path::Path;

use kiln_graph::Graph;

pub use error::{Error, Result, UnsupportedNode};

/// How a model is imported.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Initializers become variables (trainable, saved in checkpoints)
    /// instead of constants.
    pub initializers_as_variables: bool,
    /// Graph inputs bound to values at import time (they become constants,
    /// not placeholders): inputs that decide shapes (a `Reshape`'s shape, a
    /// `Resize`'s sizes), which kiln's static shapes need known.
    /// [`Error::NeedsValue`] names the value a node needed.
    pub constant_inputs: std::collections::HashMap<String, kiln_graph::Array>,
    /// Sequence-typed graph inputs (and optional inputs holding a
    /// sequence): the shape of each element, by input name (so the
    /// sequence's length). Element `i` of input `x` becomes a placeholder
    /// named `x/i` of the declared element type. A shape must agree with
    /// the declared element shape where that has fixed dims; a dim named
    /// (`dim_param`) like a dim of a tensor input stays that symbol where
    /// every element is given the same size (so that the two agree).
    pub sequence_inputs: std::collections::HashMap<String, Vec<kiln_graph::Shape>>,
    /// Optional-typed graph inputs that hold no value (the others hold
    /// one: a placeholder, or a sequence's placeholders).
    pub absent_inputs: std::collections::HashSet<String>,
}

/// Imports the ONNX model at `path`.
pub fn import(path: impl AsRef<Path>) -> Result<Graph> {
    import_with(path, &ImportOptions::default())
}

/// Imports the ONNX model at `path` with `options`.
pub fn import_with(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Graph> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    import_bytes(&bytes, options).map_err(|e| e.in_file(path))
}

/// Imports a serialized ONNX `ModelProto`.
pub fn import_bytes(bytes: &[u8], options: &ImportOptions) -> Result<Graph> {
    use prost::Message;
    let model = proto::ModelProto::decode(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    import::import_model(&model, options)
}

/// The ONNX op types this importer converts (default domain), sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ops::TABLE.iter().map(|(n, _)| *n).collect();
    v.sort_unstable();
    v
}

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
//!   A tensor stored as external data (in another file, as PyTorch exports
//!   models over 2 GB) is read, memory-mapped, from its file relative to
//!   the model file's folder ([`import`]); the file must lie inside that
//!   folder (no absolute paths, no `..` or symbolic link leading out). A
//!   model imported from bytes ([`import_bytes`]) has no folder: its
//!   external tensors are errors.
//! - A node whose inputs are all constants is evaluated at import time (so
//!   shape arithmetic — `Shape`, `Gather`, `Concat` feeding a `Reshape` —
//!   becomes the static shapes kiln's ops take), unless it would compute
//!   more than [`ImportOptions::fold_limit_bytes`]: then it stays a graph op.
//!   Constants no remaining node reads are not kept.
//! - The model is checked first: its opset (6 to 22; a newer one is read
//!   as 22 with a warning, [`Imported::warnings`]), values written once, and
//!   options naming inputs and dims it has. Errors of a node name the ONNX
//!   node, and the kiln nodes it became carry it as their location.
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

mod check;
mod control;
pub mod error;
mod external;
mod fold;
mod import;
mod ops;
pub mod proto;
mod scope;
pub mod tensor;

use std::path::Path;

use kiln_graph::Graph;

pub use error::{Error, Result, UnsupportedNode};

/// Import-time evaluation's default bound ([`ImportOptions::fold_limit_bytes`]):
/// 64 MiB computed by one node.
pub const DEFAULT_FOLD_LIMIT_BYTES: usize = 64 << 20;

/// The largest model file read: protobuf's own limit on a message, 2 GiB
/// (external data files, mapped rather than read, have no such limit).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// How a model is imported.
#[derive(Clone, Debug)]
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
    /// Symbolic dims (an input's `dim_param`, or the name kiln gives an
    /// unnamed unknown dim, `INPUT_AXIS`) fixed to a size at import time
    /// (`kiln import --dim NAME=N`).
    pub dims: std::collections::HashMap<String, usize>,
    /// Tensor inputs whose declared shape is replaced (`kiln import
    /// --input-shape NAME=2x3x224x224`); dims may be symbols.
    pub input_shapes: std::collections::HashMap<String, kiln_graph::Shape>,
    /// The most bytes one node evaluated at import time may compute (its
    /// results and the intermediates of its conversion): a node whose inputs
    /// are known at import time but whose results are larger stays a graph
    /// op, computed at run time. Default [`DEFAULT_FOLD_LIMIT_BYTES`].
    pub fold_limit_bytes: usize,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            initializers_as_variables: false,
            constant_inputs: Default::default(),
            sequence_inputs: Default::default(),
            absent_inputs: Default::default(),
            dims: Default::default(),
            input_shapes: Default::default(),
            fold_limit_bytes: DEFAULT_FOLD_LIMIT_BYTES,
        }
    }
}

/// An imported model and what the importer has to say about it.
#[derive(Debug)]
pub struct Imported {
    /// The kiln graph.
    pub graph: Graph,
    /// Warnings for a person (a newer opset read as an older one, ...).
    pub warnings: Vec<String>,
}

/// Imports the ONNX model at `path`.
pub fn import(path: impl AsRef<Path>) -> Result<Graph> {
    import_with(path, &ImportOptions::default())
}

/// Imports the ONNX model at `path` with `options` (warnings dropped; see
/// [`import_report`]).
pub fn import_with(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Graph> {
    Ok(import_report(path, options)?.graph)
}

/// Imports the ONNX model at `path` with `options`, with its warnings.
/// Tensors stored as external data are read from files relative to the
/// model's folder.
pub fn import_report(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Imported> {
    let path = path.as_ref();
    // The file's bytes go once decoded: a model's weights are then held
    // once by the protobuf, once by the graph.
    let model = decode(&read_model(path)?).map_err(|e| e.in_file(path))?;
    import_decoded(model, options, path.parent()).map_err(|e| e.in_file(path))
}

/// The bytes of the model file at `path`: a regular file (not a device, a
/// pipe or a directory) of at most [`MAX_MODEL_BYTES`], read no further than
/// the size it had when opened.
fn read_model(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |reason: String| Error::Io {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| io(e.to_string()))?;
    let meta = file.metadata().map_err(|e| io(e.to_string()))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(io(format!("{what}: an ONNX model must be a regular file")));
    }
    let len = meta.len();
    if len > MAX_MODEL_BYTES {
        return Err(io(format!(
            "{len} bytes, more than an ONNX model can hold ({MAX_MODEL_BYTES}, protobuf's limit)"
        )));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|e| io(format!("cannot allocate {len} bytes to read it: {e}")))?;
    file.take(len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(e.to_string()))?;
    if bytes.len() as u64 > len {
        return Err(io(format!(
            "grew past its size of {len} bytes while being read"
        )));
    }
    Ok(bytes)
}

/// Imports a serialized ONNX `ModelProto` (warnings dropped). A tensor
/// stored as external data is an error (no folder to find its file in: see
/// [`import`]).
pub fn import_bytes(bytes: &[u8], options: &ImportOptions) -> Result<Graph> {
    Ok(import_bytes_report(bytes, options)?.graph)
}

/// Imports a serialized ONNX `ModelProto`, with its warnings.
pub fn import_bytes_report(bytes: &[u8], options: &ImportOptions) -> Result<Imported> {
    import_in(bytes, options, None)
}

/// Imports a serialized ONNX `ModelProto`, its external data relative to
/// `folder` (`None`: external data is an error).
fn import_in(bytes: &[u8], options: &ImportOptions, folder: Option<&Path>) -> Result<Imported> {
    import_decoded(decode(bytes)?, options, folder)
}

fn decode(bytes: &[u8]) -> Result<proto::ModelProto> {
    use prost::Message;
    proto::ModelProto::decode(bytes).map_err(|e| Error::Decode(e.to_string()))
}

/// Imports a decoded model, its external data relative to `folder`.
fn import_decoded(
    mut model: proto::ModelProto,
    options: &ImportOptions,
    folder: Option<&Path>,
) -> Result<Imported> {
    let _external = external::Scope::enter(folder);
    import::import_model(&mut model, options)
}

/// The ONNX op types this importer converts (default domain), sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ops::TABLE.iter().map(|(n, _)| *n).collect();
    v.sort_unstable();
    v
}

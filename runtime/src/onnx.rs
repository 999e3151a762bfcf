//! ONNX models as kiln graphs (`kiln-onnx`): `Graph::from_onnx(path)`
//! through the [`FromOnnx`] trait (in the prelude), and `kiln import`.
//!
//! ```no_run
//! use kiln::prelude::*;
//!
//! let graph = Graph::from_onnx("model.onnx")?;
//! graph.save("model.kiln")?;
//! # Ok::<(), kiln::Error>(())
//! ```

use std::path::Path;

use kiln_graph::Graph;
pub use kiln_onnx::{ImportOptions, Imported, UnsupportedNode, DEFAULT_FOLD_LIMIT_BYTES};

use crate::error::Result;

/// Graphs from ONNX files.
pub trait FromOnnx: Sized {
    /// The ONNX model at `path` (initializers as constants).
    fn from_onnx(path: impl AsRef<Path>) -> Result<Self>;
    /// The ONNX model at `path`, imported with `options`.
    fn from_onnx_with(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Self>;
}

impl FromOnnx for Graph {
    fn from_onnx(path: impl AsRef<Path>) -> Result<Graph> {
        Ok(kiln_onnx::import(path)?)
    }

    fn from_onnx_with(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Graph> {
        Ok(kiln_onnx::import_with(path, options)?)
    }
}

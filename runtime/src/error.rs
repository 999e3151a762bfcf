//! The error type of the `kiln` crate: graph errors plus session, feed and
//! file errors, each naming the culprit.

/// Errors of sessions, feeds, fetches and array files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the graph layer (type errors, evaluation, graph files).
    #[error(transparent)]
    Graph(#[from] kiln_graph::Error),
    /// A feed does not match its placeholder, or is unknown or repeated.
    #[error("feed '{name}': {reason}")]
    Feed {
        /// The feed's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A fetch names no node of the graph.
    #[error("fetch '{name}': {reason}")]
    Fetch {
        /// The fetch's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A variable access names no variable or has the wrong type.
    #[error("variable '{name}': {reason}")]
    Variable {
        /// The variable's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An `.npy` file is malformed or unsupported.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint does not match the session's variables.
    #[error("{path}: checkpoint does not match this graph: {}", problems.join("; "))]
    Checkpoint {
        /// The checkpoint file.
        path: String,
        /// Every difference found.
        problems: Vec<String>,
    },
    /// A dataset file is malformed.
    #[error("{path}: {reason}")]
    Dataset {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on a file: `reading x.npy: No such file or directory`.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done: `reading`, `writing`.
        action: &'static str,
        /// The file.
        path: String,
        /// The underlying error. Its message is part of this one, so it is
        /// deliberately not also a `source()` (chains would print it twice).
        error: std::io::Error,
    },
    /// The optimizer could not compile the graph.
    #[error(transparent)]
    Optimizer(#[from] kiln_optimizer::Error),
    /// A backend could not compile or run the program.
    #[error(transparent)]
    Backend(#[from] kiln_codegen::Error),
    /// The requested device is not available here.
    #[error("device {device}: {reason}")]
    Device {
        /// The device.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A program needs more of a resource than the session allows.
    #[error(
        "the compiled program's {what} needs {needed} bytes, over the session's limit of {limit} \
         (SessionOptions::max_arena_bytes / KILN_MAX_ARENA_BYTES)"
    )]
    Resource {
        /// What is limited (`arena`).
        what: String,
        /// Bytes the program needs.
        needed: usize,
        /// The limit.
        limit: usize,
    },
    /// An ONNX model could not be imported.
    #[error(transparent)]
    Onnx(#[from] kiln_onnx::Error),
    /// A model could not be compiled ahead of time.
    #[error("{model}: {reason}")]
    Aot {
        /// The model file.
        model: String,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] while `action` (`reading`, `writing`) `path`.
    pub fn io(action: &'static str, path: &std::path::Path, error: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.display().to_string(),
            error,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

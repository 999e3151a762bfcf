//! The error type of `kiln-graph`: build-time type errors, evaluation errors and
//! file errors, each naming what went wrong and where.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A place in the user's source code, captured with `#[track_caller]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct SourceLoc {
    /// Source file path as the compiler saw it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

thread_local! {
    /// The origin set by [`SourceLoc::set_origin`] on this thread.
    static ORIGIN: std::cell::RefCell<Option<SourceLoc>> = const { std::cell::RefCell::new(None) };
}

impl SourceLoc {
    /// The location of the caller of the `#[track_caller]` function that
    /// calls this, or the origin a front end set on this thread
    /// ([`SourceLoc::set_origin`]).
    #[track_caller]
    pub fn caller() -> SourceLoc {
        if let Some(o) = ORIGIN.with(|o| o.borrow().clone()) {
            return o;
        }
        let l = std::panic::Location::caller();
        SourceLoc {
            file: l.file().to_string(),
            line: l.line(),
            column: l.column(),
        }
    }

    /// A place outside Rust source, as text (line and column 0): a node of
    /// an imported model, `ONNX node 'Reshape_12' (Reshape)`.
    pub fn origin(text: impl Into<String>) -> SourceLoc {
        SourceLoc {
            file: text.into(),
            line: 0,
            column: 0,
        }
    }

    /// Until the guard drops, every location captured on this thread (the
    /// nodes added, the errors raised) is `origin`: a front end (the ONNX
    /// importer) converting a model's node into kiln ops reports that node
    /// instead of its own source lines. Guards nest; dropping one restores
    /// the origin before it.
    pub fn set_origin(origin: SourceLoc) -> OriginGuard {
        OriginGuard(ORIGIN.with(|o| o.borrow_mut().replace(origin)))
    }
}

/// Restores the previous origin when dropped; see [`SourceLoc::set_origin`].
pub struct OriginGuard(Option<SourceLoc>);

impl Drop for OriginGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        ORIGIN.with(|o| *o.borrow_mut() = previous);
    }
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.is_empty() {
            f.write_str("<unknown location>")
        } else if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// What is wrong with a graph file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileErrorKind {
    /// The file ends before the data it declares.
    Truncated,
    /// The file is not a kiln graph file (or not safetensors at all).
    BadMagic,
    /// The file was written by a newer kiln with a format this one cannot read.
    UnsupportedVersion,
    /// The file is structurally valid but its contents are inconsistent.
    Corrupt,
}

impl fmt::Display for FileErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileErrorKind::Truncated => "truncated file",
            FileErrorKind::BadMagic => "not a kiln graph file",
            FileErrorKind::UnsupportedVersion => "unsupported format version",
            FileErrorKind::Corrupt => "corrupt file",
        })
    }
}

/// Errors of graph construction, evaluation and serialization.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was given operands of the wrong dtype or shape, or bad attributes.
    #[error("{op} at {location}: {reason} (operands: {operands})")]
    Type {
        /// The op's name (`matmul`, `add`, ...).
        op: String,
        /// The user's source line that added the op.
        location: SourceLoc,
        /// What is wrong.
        reason: String,
        /// The operand types, e.g. `f32[2,3], f32[4,5]` (`none` for sources).
        operands: String,
    },
    /// A node name is already taken or is invalid.
    #[error("at {location}: node name '{name}' {reason}")]
    Name {
        /// The offending name.
        name: String,
        /// The user's source line.
        location: SourceLoc,
        /// What is wrong with it.
        reason: String,
    },
    /// A name or id does not refer to a node of this graph.
    #[error("no node named '{name}' in the graph")]
    UnknownNode {
        /// The name looked up.
        name: String,
    },
    /// An op failed while being evaluated (e.g. a gather index out of range).
    #[error("evaluating node '{node}' ({op}): {reason}")]
    Eval {
        /// The node's name.
        node: String,
        /// The op's name.
        op: String,
        /// What went wrong.
        reason: String,
    },
    /// A graph file could not be read.
    #[error("{path}: {kind}: {detail}")]
    File {
        /// The file (or `<memory>`).
        path: String,
        /// The kind of problem.
        kind: FileErrorKind,
        /// Details for a person.
        detail: String,
    },
    /// An I/O error on a file: `reading model.kiln: No such file or directory`.
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
    /// The graph violates an invariant (e.g. an edge to a missing node).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
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

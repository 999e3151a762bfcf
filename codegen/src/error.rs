//! The error type of `kiln-codegen`.

/// Errors of compiling and running kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Cranelift could not build or compile a function.
    #[error("code generation for kernel {kernel}: {reason}")]
    Codegen {
        /// The kernel's index (or `usize::MAX` for setup).
        kernel: usize,
        /// What went wrong.
        reason: String,
    },
    /// The host is not supported by the backend.
    #[error("unsupported host: {0}")]
    Host(String),
    /// A CUDA library or device is missing or failed.
    #[error("{0}")]
    Cuda(String),
    /// A run was given inputs that do not match the program.
    #[error("{0}")]
    Input(String),
    /// The engine does not run an op of the program (see
    /// `kiln_codegen::engine`).
    #[error("the {engine} engine does not run kernel {kernel}, {op} of node(s) {nodes}: {reason}")]
    Unsupported {
        /// The engine's name.
        engine: &'static str,
        /// The kernel's index.
        kernel: usize,
        /// The op and its result type.
        op: String,
        /// The graph nodes the kernel computes.
        nodes: String,
        /// Why.
        reason: &'static str,
    },
    /// A kernel failed at run time.
    #[error("kernel {kernel}: {reason}")]
    Run {
        /// The kernel's index.
        kernel: usize,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

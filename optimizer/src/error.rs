//! The error type of `kiln-optimizer`.

/// Errors of passes, lowering and the kernel-program executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pass failed; wraps the cause with the pass's name.
    #[error("pass {pass}: {error}")]
    Pass {
        /// The pass's name.
        pass: String,
        /// What went wrong. Its message is part of this one, so it is
        /// deliberately not also a `source()` (chains would print it twice).
        error: Box<Error>,
    },
    /// A lowering step (`lower`, `reshape_loops`, `schedule`,
    /// `plan_memory`, `widen_half`) failed, or the program broke an
    /// invariant after it; wraps the cause with the step's name.
    #[error("step {step}: {error}")]
    Step {
        /// The step's name.
        step: String,
        /// What went wrong (part of this message, so not a `source()`).
        error: Box<Error>,
    },
    /// A step was named (to dump after it) that the compilation lacks.
    #[error("there is no step named '{name}'; the steps are: {}", steps.join(", "))]
    UnknownStep {
        /// The name given.
        name: String,
        /// The steps, in order.
        steps: Vec<String>,
    },
    /// A pass was named (to disable it or run only it) that the pipeline lacks.
    #[error("there is no pass named '{name}'; the passes are: {}", passes.join(", "))]
    UnknownPass {
        /// The name given.
        name: String,
        /// The pipeline's passes, in order.
        passes: Vec<String>,
    },
    /// A node the optimizer cannot handle.
    #[error("node '{node}' ({op}): {reason}")]
    Unsupported {
        /// The node's name.
        node: String,
        /// The op's name.
        op: String,
        /// Why.
        reason: String,
    },
    /// The graph breaks an invariant after a pass (a bug in that pass).
    #[error("verification failed: {0}")]
    Verify(String),
    /// An error from the graph layer.
    #[error(transparent)]
    Graph(#[from] kiln_graph::Error),
    /// The kernel program could not be executed.
    #[error("kernel {kernel}: {reason}")]
    Exec {
        /// The kernel's index.
        kernel: usize,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

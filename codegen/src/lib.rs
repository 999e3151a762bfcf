//! kiln-codegen: backends that turn the optimizer's kernel program into
//! code, each compiling a [`KernelProgram`] once to run it many times: the
//! Cranelift JIT for the CPU (`cpu`, behind the `Backend`/`Executable`
//! traits), Cranelift object files for ahead-of-time binaries
//! (`cpu::aot`), and CUDA C through NVRTC with cuBLAS and CUDA graphs
//! (`cuda`, its own `DeviceExecutable`).
//!
//! Architecture invariant: backends know nothing of sessions, feeds or files.
#![warn(missing_docs)]

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod error;

pub use error::{Error, Result};
pub use kiln_optimizer as optimizer;

use std::collections::HashMap;

use kiln_graph::Array;
use kiln_optimizer::KernelProgram;

/// A backend: compiles a kernel program into something that runs it.
pub trait Backend {
    /// The compiled program.
    type Executable: Executable;
    /// Compiles `program`.
    fn compile(&self, program: &KernelProgram) -> Result<Self::Executable>;
}

/// What one run of an [`Executable`] produces.
#[derive(Debug)]
pub struct RunOutput {
    /// The fetched values, in the program's output order.
    pub fetched: Vec<Array>,
    /// The new value of each variable the program assigns, by name, for
    /// the caller to commit.
    pub updates: Vec<(String, Array)>,
}

/// A compiled kernel program: immutable once compiled, and run by any
/// number of threads at once.
pub trait Executable: Send + Sync {
    /// The program it runs.
    fn program(&self) -> &KernelProgram;
    /// Runs with placeholder values and variable states by name; returns
    /// the fetched values and the variables' new values (committing them
    /// is the caller's: one that assigns orders its runs, so that each
    /// sees the last one's updates).
    fn run(
        &self,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<String, Array>,
    ) -> Result<RunOutput>;
}

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

/// A compiled kernel program.
pub trait Executable {
    /// Runs with placeholder values and variable states by name; returns the
    /// fetched values and commits assignments to `variables`.
    fn run(
        &mut self,
        inputs: &HashMap<&str, &Array>,
        variables: &mut HashMap<String, Array>,
    ) -> Result<Vec<Array>>;
}

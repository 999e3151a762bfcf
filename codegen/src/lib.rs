//! kiln-codegen: backends that turn the optimizer's kernel program into
//! code — today the Cranelift JIT for the CPU (`cpu`); Cranelift object
//! files for ahead-of-time binaries and CUDA C through NVRTC follow the
//! same shape: compile a [`KernelProgram`] once, then run it many times.
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

/// The error for a program with f16 or bf16 buffers, which the compiled
/// backends do not run yet (the reference does: they compute in f32).
pub(crate) fn half_refused(
    program: &kiln_optimizer::kernel::KernelProgram,
    backend: &str,
) -> Result<()> {
    match program.buffers.iter().find(|b| b.dtype.is_half()) {
        Some(b) => Err(Error::Codegen {
            kernel: usize::MAX,
            reason: format!(
                "{backend} does not run {} tensors yet (a buffer of {:?}); \
                 run the graph on Device::Reference, or cast to f32",
                b.dtype, b.shape
            ),
        }),
        None => Ok(()),
    }
}

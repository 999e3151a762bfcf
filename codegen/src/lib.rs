//! kiln-codegen: engines that turn the optimizer's kernel program into
//! code, each compiling a [`KernelProgram`] once to run it many times: the
//! Cranelift JIT for the CPU (`cpu`, behind the [`Engine`]/[`Executable`]
//! traits, like the plain-loop `reference` engine), Cranelift object files
//! for ahead-of-time binaries (`cpu::aot`), and CUDA C through NVRTC with
//! cuBLAS and CUDA graphs (`cuda`, its own `DeviceExecutable`).
//!
//! Architecture invariant: backends know nothing of sessions, feeds or files.
#![warn(missing_docs)]

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod reference;

pub use error::{Error, Result};
pub use kiln_optimizer as optimizer;

use std::collections::HashMap;

use kiln_graph::Array;
use kiln_optimizer::KernelProgram;

/// An engine: compiles a kernel program into an [`Executable`] that runs
/// it, and says which ops it runs natively, hands to the host or refuses
/// ([`engine::Placement::supports`], the table in ARCHITECTURE.md).
/// Implemented by the CPU JIT ([`cpu::CpuBackend`]) and the plain-loop
/// executor ([`reference::ReferenceEngine`]); ahead-of-time objects
/// ([`cpu::aot`]) are the CPU engine's code written to a file, and CUDA
/// runs through `cuda::exec::DeviceExecutable`, whose variables and
/// results stay in device memory.
pub trait Engine: Send + Sync {
    /// The compiled program.
    type Executable: Executable;
    /// Which engine this is.
    fn placement(&self) -> engine::Placement;
    /// Compiles `program`.
    fn compile(&self, program: &KernelProgram) -> Result<Self::Executable>;
    /// The engine's name.
    fn name(&self) -> &'static str {
        self.placement().name()
    }
    /// [`Error::Unsupported`] for the first kernel of `program` whose op
    /// this engine refuses.
    fn check(&self, program: &KernelProgram) -> Result<()> {
        self.placement().check(program)
    }
}

/// An error unless `a` has buffer `b`'s type: what a run is given for an
/// input or variable (`what`, `name`) must match the program.
pub(crate) fn check_operand(
    a: &Array,
    b: &kiln_optimizer::kernel::Buffer,
    what: &str,
    name: &str,
) -> Result<()> {
    if a.dtype() != b.dtype || a.shape() != b.shape.as_slice() {
        return Err(Error::Input(format!(
            "{what} '{name}' is {}{:?}, the program expects {}{:?}",
            a.dtype(),
            a.shape(),
            b.dtype,
            b.shape
        )));
    }
    Ok(())
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

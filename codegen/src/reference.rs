//! The plain-loop engine: a kernel program run by
//! `kiln_optimizer::exec` (every kernel as loops over a real byte arena,
//! each op's meaning borrowed from kiln-graph), behind the same
//! [`Engine`] interface as the JIT. It compiles nothing, so it is the
//! check of fusion, lowering and memory planning on their own.

use std::collections::HashMap;

use kiln_graph::Array;
use kiln_optimizer::KernelProgram;

use crate::engine::Placement;
use crate::error::{Error, Result};
use crate::{Engine, Executable, RunOutput};

/// The plain-loop engine.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceEngine;

/// A kernel program held for the plain-loop executor.
pub struct ReferenceExecutable {
    program: KernelProgram,
}

impl Engine for ReferenceEngine {
    type Executable = ReferenceExecutable;

    fn placement(&self) -> Placement {
        Placement::Reference
    }

    fn compile(&self, program: &KernelProgram) -> Result<ReferenceExecutable> {
        self.check(program)?;
        Ok(ReferenceExecutable {
            program: program.clone(),
        })
    }
}

impl Executable for ReferenceExecutable {
    fn program(&self) -> &KernelProgram {
        &self.program
    }

    fn run(
        &self,
        inputs: &HashMap<&str, &Array>,
        variables: &HashMap<String, Array>,
    ) -> Result<RunOutput> {
        let inputs: HashMap<String, Array> = inputs
            .iter()
            .map(|(n, a)| (n.to_string(), (*a).clone()))
            .collect();
        // The executor commits assignments to the map it is given: run on
        // a copy and hand back what changed.
        let mut state = variables.clone();
        let fetched = kiln_optimizer::exec::execute(&self.program, &inputs, &mut state).map_err(
            |e| match e {
                kiln_optimizer::Error::Exec { kernel, reason } => Error::Run { kernel, reason },
                other => Error::Run {
                    kernel: usize::MAX,
                    reason: other.to_string(),
                },
            },
        )?;
        let updates = self
            .program
            .updates
            .iter()
            .filter_map(|&(var, _)| match &self.program.buffer(var).storage {
                kiln_optimizer::kernel::Storage::Variable { name } => {
                    state.remove(name).map(|v| (name.clone(), v))
                }
                _ => None,
            })
            .collect();
        Ok(RunOutput { fetched, updates })
    }
}

//! Compiled control-flow bodies: the functions a program's `cond` and
//! `while` kernels call, each compiled on first use (for the program's
//! bindings) into a `CpuExecutable` of its own, through the same passes,
//! fusion, memory plan and JIT as a whole graph. Functions nested in a
//! function get their own runner the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_graph::graph::Function;
use kiln_graph::ops::control::FunctionRunner;
use kiln_graph::{Array, Bindings};
use kiln_optimizer::CompileOptions;

use super::{CpuBackend, CpuExecutable};
use crate::{Engine, Executable};

type Compiled = Arc<CpuExecutable>;

/// Runs functions as compiled CPU code, compiling each once per bindings.
pub struct CompiledFunctions {
    backend: CpuBackend,
    compiled: Mutex<HashMap<(usize, Bindings), Compiled>>,
}

impl CompiledFunctions {
    /// A runner compiling its functions with `backend`'s settings.
    pub fn new(backend: CpuBackend) -> CompiledFunctions {
        CompiledFunctions {
            backend,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    fn executable(
        &self,
        index: usize,
        f: &Function,
        bindings: &Bindings,
    ) -> Result<Compiled, String> {
        let key = (index, bindings.clone());
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exe) = map.get(&key) {
            return Ok(exe.clone());
        }
        let compiled =
            kiln_optimizer::compile(&f.graph, &f.results, bindings, &CompileOptions::default())
                .map_err(|e| format!("compiling it: {e}"))?;
        let exe = self
            .backend
            .compile(&compiled.program)
            .map_err(|e| format!("compiling it: {e}"))?;
        let exe = Arc::new(exe);
        map.insert(key, exe.clone());
        Ok(exe)
    }
}

impl std::fmt::Debug for CompiledFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.compiled.lock().map(|m| m.len()).unwrap_or(0);
        write!(
            f,
            "CompiledFunctions({n} compiled, {} threads)",
            self.backend.threads
        )
    }
}

impl FunctionRunner for CompiledFunctions {
    fn call(
        &self,
        index: usize,
        f: &Function,
        args: &[&Array],
        bindings: &Bindings,
    ) -> kiln_graph::Result<Vec<Array>> {
        let err = |reason: String| kiln_graph::Error::Eval {
            node: format!("function {index}"),
            op: "call".into(),
            reason,
        };
        let exe = self.executable(index, f, bindings).map_err(err)?;
        let feeds: HashMap<&str, &Array> = f
            .params
            .iter()
            .zip(args)
            .map(|(&p, a)| (f.graph.node(p).name.as_str(), *a))
            .collect();
        exe.run(&feeds, &HashMap::new())
            .map(|out| out.fetched)
            .map_err(|e| err(e.to_string()))
    }
}

//! The optimizer's entry point: graph -> simplified graph -> kernel program
//! (fused, scheduled, memory-planned) for given fetches and dim sizes.

use kiln_graph::{Bindings, Graph, NodeId};

use crate::error::Result;
use crate::kernel::KernelProgram;
use crate::pass::PassReport;
use crate::passes::default_pipeline;
use crate::{loops, lower, plan, widen};

/// Options of [`compile`].
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Turn variables nothing assigns into constants (inference only).
    pub freeze_variables: bool,
    /// Passes to skip, by name.
    pub disabled_passes: Vec<String>,
    /// Skip the simplification passes entirely.
    pub no_simplify: bool,
}

/// The result of [`compile`]: the simplified graph, the program and the pass reports.
pub struct Compiled {
    /// The graph after the passes.
    pub graph: Graph,
    /// The kernel program.
    pub program: KernelProgram,
    /// What each pass changed.
    pub reports: Vec<PassReport>,
}

/// Compiles the values `fetches` of `graph` for the dim sizes `bindings`.
pub fn compile(
    graph: &Graph,
    fetches: &[NodeId],
    bindings: &Bindings,
    opts: &CompileOptions,
) -> Result<Compiled> {
    // The bound sizes become constants of the program: symbolic dims,
    // shape values and the ops that take them are fixed from here on.
    let mut g = graph.specialize(bindings)?;
    g.set_outputs(fetches.to_vec())?;
    // Half types compute in f32: explicit before anything else sees them.
    let g = widen::widen_half(&g)?;
    let (g, reports) = if opts.no_simplify {
        (g, Vec::new())
    } else {
        let mut pipeline = default_pipeline(opts.freeze_variables);
        for p in &opts.disabled_passes {
            pipeline.disable(p)?;
        }
        pipeline.run(&g)?
    };
    let (mut program, _) = lower::lower(&g, bindings)?;
    loops::reshape_loops(&mut program);
    plan::schedule(&mut program);
    plan::plan_memory(&mut program);
    Ok(Compiled {
        graph: g,
        program,
        reports,
    })
}

//! The optimizer's entry point: graph -> simplified graph -> kernel program
//! (fused, scheduled, memory-planned) for given fetches and dim sizes. The
//! steps and their names are in `lowering.rs`; [`compile_observed`] shows
//! the graph or program after each.

use kiln_graph::{Bindings, Graph, NodeId};

use crate::error::Result;
use crate::kernel::KernelProgram;
use crate::lowering::{in_step, Lowering, Stage};
use crate::pass::PassReport;
use crate::passes::default_pipeline;
use crate::widen;

/// Options of [`compile`].
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Turn variables nothing assigns into constants (inference only).
    pub freeze_variables: bool,
    /// Passes to skip, by name.
    pub disabled_passes: Vec<String>,
    /// Skip the simplification passes entirely.
    pub no_simplify: bool,
    /// Run the `channels_last` pass after simplification (the CPU
    /// compiler, whose NHWC kernels it targets), then simplify again.
    pub channels_last: bool,
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
    compile_observed(graph, fetches, bindings, opts, |_, _| {})
}

/// Like [`compile`], calling `observe(step, stage)` after every step of
/// [`crate::lowering::step_names`] with the graph or program it produced
/// (for `kiln show --dump-after STEP` and tests).
pub fn compile_observed(
    graph: &Graph,
    fetches: &[NodeId],
    bindings: &Bindings,
    opts: &CompileOptions,
    mut observe: impl FnMut(&str, Stage<'_>),
) -> Result<Compiled> {
    // The bound sizes become constants of the program: symbolic dims,
    // shape values and the ops that take them are fixed from here on.
    let mut g = graph.specialize(bindings)?;
    g.set_outputs(fetches.to_vec())?;
    observe("specialize", Stage::Graph(&g));
    // Half types compute in f32: explicit before anything else sees them.
    let g = widen::widen_half(&g).map_err(in_step("widen_half"))?;
    observe("widen_half", Stage::Graph(&g));
    let (g, reports) = if opts.no_simplify {
        (g, Vec::new())
    } else {
        let mut pipeline = default_pipeline(opts.freeze_variables);
        for p in &opts.disabled_passes {
            pipeline.disable(p)?;
        }
        let (g, mut reports) = pipeline.run(&g)?;
        if opts.channels_last {
            use crate::pass::Pass;
            let (moved, report) = crate::passes::ChannelsLast.run(&g)?;
            let changed = report.changed();
            reports.push(report);
            if changed {
                let (again, more) = pipeline.run(&moved)?;
                reports.extend(more);
                (again, reports)
            } else {
                (g, reports)
            }
        } else {
            (g, reports)
        }
    };
    observe("simplify", Stage::Graph(&g));
    let program = Lowering::new().run(&g, bindings, |step, p| {
        observe(step, Stage::Program(p));
    })?;
    Ok(Compiled {
        graph: g,
        program,
        reports,
    })
}

/// An owned copy of what a step produced (see [`compile_until`]).
#[derive(Clone)]
pub enum Snapshot {
    /// The graph after a graph step.
    Graph(Graph),
    /// The kernel program after `lower` or a kernel step.
    Program(KernelProgram),
}

/// Compiles as [`compile`] does and returns the graph or program right
/// after the step named `step` (one of [`crate::lowering::step_names`]);
/// an unknown name is an error listing the steps.
pub fn compile_until(
    graph: &Graph,
    fetches: &[NodeId],
    bindings: &Bindings,
    opts: &CompileOptions,
    step: &str,
) -> Result<Snapshot> {
    let steps = crate::lowering::step_names();
    let unknown = || crate::Error::UnknownStep {
        name: step.into(),
        steps: steps.iter().map(|s| s.to_string()).collect(),
    };
    if !steps.contains(&step) {
        return Err(unknown());
    }
    let mut snapshot = None;
    compile_observed(graph, fetches, bindings, opts, |name, stage| {
        if name == step && snapshot.is_none() {
            snapshot = Some(match stage {
                Stage::Graph(g) => Snapshot::Graph(g.clone()),
                Stage::Program(p) => Snapshot::Program(p.clone()),
            });
        }
    })?;
    snapshot.ok_or_else(unknown)
}

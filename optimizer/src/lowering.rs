//! The steps from a simplified graph to a planned kernel program, as a list
//! that [`crate::compile`] runs and tools can watch.
//!
//! `lower` is the one step with a different input (graph in, kernel program
//! out); the others are [`KernelStep`]s, each a name and a rewrite of the
//! program in place: `reshape_loops`, `schedule`, `plan_memory`. The step
//! logic lives in `lower.rs`, `loops.rs` and `plan.rs`; this file only
//! names the steps, runs them in order, verifies the program between them
//! ([`crate::verify`], in debug and test builds or when asked) and wraps
//! every error with the step's name.
//!
//! The graph steps before lowering (`specialize`, `widen_half`, then the
//! simplification pipeline `simplify`) are named here too, so that
//! `kiln show --dump-after STEP` and [`crate::compile::compile_observed`]
//! can name every step of a compilation.

use kiln_graph::{Bindings, Graph};

use crate::error::{Error, Result};
use crate::kernel::KernelProgram;
use crate::{loops, lower, plan, verify};

/// A rewrite of a kernel program in place.
pub trait KernelStep {
    /// The step's name (`reshape_loops`).
    fn name(&self) -> &'static str;
    /// Rewrites `program`.
    fn run(&self, program: &mut KernelProgram) -> Result<()>;
    /// True when the program has its memory plan after this step (from
    /// here on the arena invariants are checked too).
    fn plans_memory(&self) -> bool {
        false
    }
}

/// Changes the loop shapes of kernels, never what they compute (`loops.rs`).
pub struct ReshapeLoops;

impl KernelStep for ReshapeLoops {
    fn name(&self) -> &'static str {
        "reshape_loops"
    }
    fn run(&self, program: &mut KernelProgram) -> Result<()> {
        loops::reshape_loops(program);
        Ok(())
    }
}

/// Orders the kernels to keep peak live memory low (`plan.rs`).
pub struct Schedule;

impl KernelStep for Schedule {
    fn name(&self) -> &'static str {
        "schedule"
    }
    fn run(&self, program: &mut KernelProgram) -> Result<()> {
        plan::schedule(program);
        Ok(())
    }
}

/// Places every temporary in the arena (`plan.rs`).
pub struct PlanMemory;

impl KernelStep for PlanMemory {
    fn name(&self) -> &'static str {
        "plan_memory"
    }
    fn run(&self, program: &mut KernelProgram) -> Result<()> {
        plan::plan_memory(program);
        Ok(())
    }
    fn plans_memory(&self) -> bool {
        true
    }
}

/// The name of the graph-to-program step.
pub const LOWER: &str = "lower";

/// The graph steps before lowering, in order: binding the symbolic dims,
/// widening half types to f32, and the simplification pipeline.
pub const GRAPH_STEPS: [&str; 3] = ["specialize", "widen_half", "simplify"];

/// The kernel-program steps after lowering, in the order they run.
pub fn kernel_steps() -> Vec<Box<dyn KernelStep>> {
    vec![
        Box::new(ReshapeLoops),
        Box::new(Schedule),
        Box::new(PlanMemory),
    ]
}

/// Every step of a compilation by name, in order: the graph steps, `lower`,
/// then the kernel steps.
pub fn step_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = GRAPH_STEPS.to_vec();
    v.push(LOWER);
    v.extend(kernel_steps().iter().map(|s| s.name()));
    v
}

/// What a step produced: a graph (the steps up to `simplify`) or a kernel
/// program (`lower` and after).
#[derive(Clone, Copy)]
pub enum Stage<'a> {
    /// The graph after a graph step.
    Graph(&'a Graph),
    /// The kernel program after a kernel step.
    Program(&'a KernelProgram),
}

/// Wraps `error` with the name of the step that raised it.
pub(crate) fn in_step(step: &str) -> impl Fn(Error) -> Error + '_ {
    move |error| Error::Step {
        step: step.into(),
        error: Box::new(error),
    }
}

/// The lowering: `lower` then the kernel steps, verified between steps.
pub struct Lowering {
    steps: Vec<Box<dyn KernelStep>>,
    verify: bool,
}

impl Default for Lowering {
    fn default() -> Self {
        Lowering::new()
    }
}

impl Lowering {
    /// The default steps, verifying in debug and test builds.
    pub fn new() -> Lowering {
        Lowering {
            steps: kernel_steps(),
            verify: cfg!(debug_assertions),
        }
    }

    /// Verifies after every step even in release builds.
    pub fn verify_always(mut self) -> Self {
        self.verify = true;
        self
    }

    /// The names of the steps, `lower` first.
    pub fn step_names(&self) -> Vec<&'static str> {
        std::iter::once(LOWER)
            .chain(self.steps.iter().map(|s| s.name()))
            .collect()
    }

    /// Lowers `graph` (its outputs, sizes from `bindings`) and runs the
    /// kernel steps; `observe(step, program)` sees the program after each.
    pub fn run(
        &self,
        graph: &Graph,
        bindings: &Bindings,
        mut observe: impl FnMut(&str, &KernelProgram),
    ) -> Result<KernelProgram> {
        let (mut program, _) = lower::lower(graph, bindings).map_err(in_step(LOWER))?;
        self.check(LOWER, &program, false)?;
        observe(LOWER, &program);
        let mut planned = false;
        for step in &self.steps {
            step.run(&mut program).map_err(in_step(step.name()))?;
            planned |= step.plans_memory();
            self.check(step.name(), &program, planned)?;
            observe(step.name(), &program);
        }
        Ok(program)
    }

    /// Runs only the kernel steps on an already lowered `program`, verifying
    /// it first (for tests that build or break programs by hand).
    pub fn run_steps(&self, program: &mut KernelProgram) -> Result<()> {
        self.check("input", program, false)?;
        let mut planned = false;
        for step in &self.steps {
            step.run(program).map_err(in_step(step.name()))?;
            planned |= step.plans_memory();
            self.check(step.name(), program, planned)?;
        }
        Ok(())
    }

    fn check(&self, step: &str, program: &KernelProgram, planned: bool) -> Result<()> {
        if !self.verify {
            return Ok(());
        }
        verify::verify(program).map_err(in_step(step))?;
        if planned {
            verify::verify_memory(program).map_err(in_step(step))?;
        }
        Ok(())
    }
}

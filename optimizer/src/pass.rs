//! The pass interface, reports, verification and the pipeline.
//!
//! A pass takes a graph and gives back a new graph plus a report of what it
//! changed (XLA's `HloPassInterface`). A [`Pipeline`] is a list of passes run
//! to a fixpoint with an iteration bound; between passes it verifies the
//! graph (in debug and test builds, or when asked) and wraps every error
//! with the pass's name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kiln_graph::{Graph, TensorType};

use crate::error::{Error, Result};

/// What a pass changed: named counts (`folded: 3`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The pass's name.
    pub pass: String,
    /// Counts of each kind of change.
    pub changes: BTreeMap<String, usize>,
    /// How long the pass took (set by the pipeline).
    pub elapsed: std::time::Duration,
}

impl PassReport {
    /// An empty report for `pass`.
    pub fn new(pass: &str) -> PassReport {
        PassReport {
            pass: pass.into(),
            changes: BTreeMap::new(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    /// Counts one change of kind `what`.
    pub fn count(&mut self, what: &str) {
        *self.changes.entry(what.into()).or_default() += 1;
    }

    /// True when anything changed.
    pub fn changed(&self) -> bool {
        self.changes.values().any(|&n| n > 0)
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.pass)?;
        if !self.changed() {
            f.write_str(" no change")?;
        }
        let changes: Vec<String> = self
            .changes
            .iter()
            .filter(|(_, &v)| v > 0)
            .map(|(k, v)| format!(" {k} {v}"))
            .collect();
        f.write_str(&changes.join(","))?;
        write!(f, " ({:.3} ms)", self.elapsed.as_secs_f64() * 1e3)
    }
}

/// A graph-to-graph rewrite.
pub trait Pass {
    /// The pass's name, named for its effect (`fold_constants`).
    fn name(&self) -> &'static str;
    /// Rewrites `graph` into a new graph; never mutates its input.
    fn run(&self, graph: &Graph) -> Result<(Graph, PassReport)>;
}

/// Checks the graph's invariants: every node's stored type is what its op
/// infers from its inputs, and every output is a node.
pub fn verify(graph: &Graph) -> Result<()> {
    for id in graph.topo_order() {
        let n = graph.node(id);
        let ins = graph.inputs(id);
        let types: Vec<&TensorType> = ins.iter().map(|&i| &graph.node(i).ty).collect();
        match n.op.infer(&types) {
            Ok(t) if t == n.ty => {}
            Ok(t) => {
                return Err(Error::Verify(format!(
                    "node '{}' stores type {} but infers {t}",
                    n.name, n.ty
                )))
            }
            Err(e) => {
                return Err(Error::Verify(format!(
                    "node '{}' ({}): {e}",
                    n.name,
                    n.op.name()
                )))
            }
        }
    }
    if graph.topo_order().len() != graph.len() {
        return Err(Error::Verify("the graph has a cycle".into()));
    }
    Ok(())
}

/// An ordered list of passes, run to a fixpoint.
pub struct Pipeline {
    /// Passes run once, in order, before the fixpoint loop.
    prelude: Vec<Box<dyn Pass>>,
    passes: Vec<Box<dyn Pass>>,
    disabled: BTreeSet<String>,
    max_iterations: usize,
    verify: bool,
}

impl Pipeline {
    /// A pipeline of `passes`, verifying in debug builds, at most 8 rounds.
    pub fn new(passes: Vec<Box<dyn Pass>>) -> Pipeline {
        Pipeline {
            prelude: Vec::new(),
            passes,
            disabled: BTreeSet::new(),
            max_iterations: 8,
            verify: cfg!(debug_assertions),
        }
    }

    /// Runs `passes` once before the fixpoint loop. Passes whose decision
    /// depends on nodes later passes remove (freezing variables that nothing
    /// assigns, before dead-code elimination drops the assignments) go here.
    pub fn with_prelude(mut self, passes: Vec<Box<dyn Pass>>) -> Self {
        self.prelude = passes;
        self
    }

    /// The names of the passes, in order (prelude first).
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.prelude
            .iter()
            .chain(&self.passes)
            .map(|p| p.name())
            .collect()
    }

    /// The error for a pass name this pipeline lacks, listing its passes.
    fn unknown_pass(&self, name: &str) -> Error {
        Error::UnknownPass {
            name: name.into(),
            passes: self.pass_names().iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Skips the pass `name` (a debug knob); unknown names are an error.
    pub fn disable(&mut self, name: &str) -> Result<()> {
        if !self.pass_names().contains(&name) {
            return Err(self.unknown_pass(name));
        }
        self.disabled.insert(name.into());
        Ok(())
    }

    /// Runs only the pass `name` (every other pass disabled).
    pub fn only(&mut self, name: &str) -> Result<()> {
        for p in self.pass_names() {
            if p != name {
                self.disabled.insert(p.into());
            }
        }
        self.disabled.remove(name);
        if !self.pass_names().contains(&name) {
            return Err(self.unknown_pass(name));
        }
        Ok(())
    }

    /// Verifies the graph after every pass even in release builds.
    pub fn verify_always(mut self) -> Self {
        self.verify = true;
        self
    }

    /// Sets the bound on fixpoint rounds.
    pub fn max_iterations(mut self, n: usize) -> Self {
        self.max_iterations = n.max(1);
        self
    }

    /// Runs the passes to a fixpoint; returns the graph and every report.
    pub fn run(&self, graph: &Graph) -> Result<(Graph, Vec<PassReport>)> {
        self.run_observed(graph, |_, _| {})
    }

    /// Like [`Pipeline::run`], calling `observe(report, graph)` after each pass
    /// (for dumps such as `kiln show --after PASS`).
    pub fn run_observed(
        &self,
        graph: &Graph,
        mut observe: impl FnMut(&PassReport, &Graph),
    ) -> Result<(Graph, Vec<PassReport>)> {
        let mut g = graph.clone();
        let mut reports = Vec::new();
        for p in &self.prelude {
            self.step(p.as_ref(), &mut g, &mut reports, &mut observe)?;
        }
        for _ in 0..self.max_iterations {
            let mut changed = false;
            for p in &self.passes {
                changed |= self.step(p.as_ref(), &mut g, &mut reports, &mut observe)?;
            }
            if !changed {
                break;
            }
        }
        Ok((g, reports))
    }

    /// Runs one pass (unless disabled), verifying and reporting; true if it changed the graph.
    fn step(
        &self,
        p: &dyn Pass,
        g: &mut Graph,
        reports: &mut Vec<PassReport>,
        observe: &mut impl FnMut(&PassReport, &Graph),
    ) -> Result<bool> {
        if self.disabled.contains(p.name()) {
            return Ok(false);
        }
        let wrap = |e: Error| Error::Pass {
            pass: p.name().into(),
            error: Box::new(e),
        };
        let start = std::time::Instant::now();
        let (next, mut report) = p.run(g).map_err(wrap)?;
        report.elapsed = start.elapsed();
        if self.verify {
            verify(&next).map_err(wrap)?;
        }
        let changed = report.changed();
        observe(&report, &next);
        reports.push(report);
        *g = next;
        Ok(changed)
    }
}

//! `kiln optimize`: run the graph passes and report what they changed.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::common::{load, CompileArgs};

/// Arguments of `kiln optimize`.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  kiln optimize examples/mlp.kiln --explain
  kiln optimize examples/mlp.kiln --freeze -o mlp-frozen.kiln
  kiln optimize examples/mlp.kiln --explain --disable-pass fold_constants")]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// Report, pass by pass, what changed, with counts.
    #[arg(long)]
    pub explain: bool,
    /// Write the optimized graph here. It may be the model itself: the
    /// model is read whole first and the file replaced atomically.
    #[arg(short, long, value_name = "OUT.kiln")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub compile: CompileArgs,
}

/// Runs `kiln optimize`.
pub fn main(a: Args) -> Result<()> {
    optimize(&a.model, a.explain, a.output.as_deref(), &a.compile)
}

fn optimize(model: &Path, explain: bool, output: Option<&Path>, args: &CompileArgs) -> Result<()> {
    let graph = load(model)?;
    let c = args.compile(&graph)?;
    if explain {
        let passes = kiln_optimizer::passes::default_pipeline(args.freeze)
            .pass_names()
            .len()
            .max(1);
        for (i, r) in c.reports.iter().enumerate() {
            println!("round {} {r}", i / passes + 1);
        }
    }
    println!(
        "{}: {} nodes -> {} nodes -> {} kernels",
        model.display(),
        graph.len(),
        c.graph.len(),
        c.program.kernels.len()
    );
    let m = c.program.memory;
    println!(
        "arena {} B (liveness lower bound {} B, no planning {} B)",
        m.arena, m.lower_bound, m.unplanned
    );
    if let Some(out) = output {
        c.graph.save(out)?;
        let replaced = std::fs::canonicalize(model).ok() == std::fs::canonicalize(out).ok();
        println!(
            "{} {}",
            if replaced { "replaced" } else { "wrote" },
            out.display()
        );
    }
    Ok(())
}

//! `kiln plan`: the memory plan of the optimized program.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::common::{load, refuse_overwriting, write_text, CompileArgs};

/// Arguments of `kiln plan`.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  kiln plan examples/mlp.kiln
  kiln plan examples/mlp.kiln --dim batch=32 --svg mlp-plan.svg")]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// Also draw the plan as an SVG timeline in FILE ('-' for standard
    /// output): one labelled bar per buffer, kernel step on x, arena offset
    /// on y. Without it nothing is written.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub compile: CompileArgs,
}

/// Runs `kiln plan`.
pub fn main(a: Args) -> Result<()> {
    if let Some(svg) = &a.svg {
        refuse_overwriting(&a.model, svg, "--svg")?;
    }
    plan(&a.model, a.svg.as_deref(), &a.compile)
}

fn plan(model: &Path, svg: Option<&Path>, args: &CompileArgs) -> Result<()> {
    let graph = load(model)?;
    let c = args.compile(&graph)?;
    let p = &c.program;
    if svg == Some(Path::new("-")) {
        // The picture alone on standard output, so that it can be piped.
        print!("{}", kiln_optimizer::svg::plan_svg(p, &title(model)));
        return Ok(());
    }
    println!("{}: {} kernels", model.display(), p.kernels.len());
    println!(
        "  {:>5}  {:>10}  {:>10}  {:>9}  node",
        "buf", "offset", "bytes", "steps"
    );
    for (b, off, size, (s0, s1)) in kiln_optimizer::svg::arena_buffers(p) {
        println!(
            "  {:>5}  {:>10}  {:>10}  {:>4}..{:<3}  {}",
            b.to_string(),
            off,
            size,
            s0,
            s1,
            p.buffer(b).node
        );
    }
    let m = p.memory;
    let ratio = if m.lower_bound > 0 {
        m.arena as f64 / m.lower_bound as f64
    } else {
        1.0
    };
    println!(
        "arena (planned):        {:>10} B  ({ratio:.3}x the lower bound)",
        m.arena
    );
    println!("liveness lower bound:   {:>10} B", m.lower_bound);
    println!("no planning (sum):      {:>10} B", m.unplanned);
    println!("results (kept apart):   {:>10} B", m.results);
    let Some(svg) = svg else {
        return Ok(());
    };
    write_text(svg, &kiln_optimizer::svg::plan_svg(p, &title(model)))
}

/// The picture's title: the model's file name.
fn title(model: &Path) -> String {
    model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

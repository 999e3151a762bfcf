//! `kiln show`, `kiln plan` and `kiln optimize`: look inside a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln::graph::Op;

use super::common::{
    default_fetches, human_bytes, load, refuse_overwriting, write_text, CompileArgs,
};

/// Arguments of `kiln show`.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  kiln show examples/mlp.kiln
  kiln show examples/mlp.kiln --dot mlp.dot && dot -Tsvg mlp.dot -o mlp-graph.svg
  kiln show examples/mlp.kiln --optimized --dim batch=8
  kiln show examples/mlp.kiln --after fold_constants
  kiln show examples/mlp.kiln --dump-after schedule --dim batch=8")]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// Write Graphviz DOT to FILE ('-' for standard output) instead
    /// (with --optimized: the ops of each kernel in one cluster); never
    /// the model file itself.
    #[arg(long, value_name = "FILE")]
    pub dot: Option<PathBuf>,
    /// Print the optimized kernel program instead.
    #[arg(long)]
    pub optimized: bool,
    /// Print the graph after the named pass instead.
    #[arg(long, value_name = "PASS", conflicts_with = "dump_after")]
    pub after: Option<String>,
    /// Print the graph or kernel program right after the named compilation
    /// step instead. The steps, in order: specialize, widen_half, simplify
    /// (graphs), lower, reshape_loops, schedule, plan_memory (kernel programs).
    #[arg(long, value_name = "STEP")]
    pub dump_after: Option<String>,
    /// With --optimized: print the kernel program as JSON.
    #[arg(long, requires = "optimized")]
    pub json: bool,
    #[command(flatten)]
    pub compile: CompileArgs,
}

/// Runs `kiln show`.
pub fn main(a: Args) -> Result<()> {
    if let Some(dot) = &a.dot {
        refuse_overwriting(&a.model, dot, "--dot")?;
    }
    if let Some(pass) = a.after {
        show_after(&a.model, &pass, &a.compile)
    } else if let Some(step) = a.dump_after {
        dump_after(&a.model, &step, &a.compile)
    } else if a.optimized {
        show_optimized(&a.model, a.dot.as_deref(), a.json, &a.compile)
    } else {
        show(&a.model, a.dot.as_deref())
    }
}

fn show(model: &Path, dot: Option<&Path>) -> Result<()> {
    let graph = load(model)?;
    if let Some(dot_path) = dot {
        let text = graph.to_dot();
        return write_text(dot_path, &text);
    }
    println!("{}: {} nodes", model.display(), graph.len());
    println!();
    for id in graph.topo_order() {
        println!("  {}", graph.node_line(id));
    }
    print!("{}", graph.functions_listing());
    println!();
    let names = |ids: &[kiln::graph::NodeId]| -> String {
        ids.iter()
            .map(|&i| format!("{} {}", graph.node(i).name, graph.node(i).ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("inputs:  {}", names(&graph.placeholders()));
    println!("outputs: {}", names(graph.outputs()));
    let (params, bytes) = graph.parameter_count();
    println!(
        "parameters: {params} in {} variables ({})",
        graph.variables().len(),
        human_bytes(bytes)
    );
    println!("constants: {}", human_bytes(graph.constant_bytes()));
    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    for id in graph.topo_order() {
        let op = &graph.node(id).op;
        if !matches!(
            op,
            Op::Placeholder { .. } | Op::Variable { .. } | Op::Constant { .. }
        ) {
            *hist.entry(op.name()).or_default() += 1;
        }
    }
    let ops: Vec<String> = hist.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!("ops: {}", ops.join(", "));
    Ok(())
}

fn show_optimized(model: &Path, dot: Option<&Path>, json: bool, args: &CompileArgs) -> Result<()> {
    let graph = load(model)?;
    let c = args.compile(&graph)?;
    if let Some(dot_path) = dot {
        return write_text(
            dot_path,
            &kiln_optimizer::text::dot_with_kernels(&c.graph, &c.program),
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&c.program)?);
        return Ok(());
    }
    println!(
        "{}: {} nodes -> {} kernels",
        model.display(),
        graph.len(),
        c.program.kernels.len()
    );
    print!("{}", c.program);
    Ok(())
}

fn show_after(model: &Path, pass: &str, args: &CompileArgs) -> Result<()> {
    let mut graph = load(model)?;
    graph.set_outputs(default_fetches(&graph)?)?;
    let mut pipeline = kiln_optimizer::passes::default_pipeline(args.freeze);
    for p in &args.disable {
        pipeline.disable(p)?;
    }
    if !pipeline.pass_names().contains(&pass) {
        bail!(
            "there is no pass named '{pass}'; the passes are: {}",
            pipeline.pass_names().join(", ")
        );
    }
    let mut snapshot = None;
    pipeline.run_observed(&graph, |report, g| {
        if report.pass == pass && snapshot.is_none() {
            snapshot = Some((report.to_string(), g.clone()));
        }
    })?;
    let (report, g) = snapshot.expect("the pass ran");
    println!("after {report}");
    println!("{} nodes", g.len());
    for id in g.topo_order() {
        println!("  {}", g.node_line(id));
    }
    print!("{}", g.functions_listing());
    Ok(())
}

fn dump_after(model: &Path, step: &str, args: &CompileArgs) -> Result<()> {
    let graph = load(model)?;
    let fetches = default_fetches(&graph)?;
    let snapshot = kiln_optimizer::compile::compile_until(
        &graph,
        &fetches,
        &args.bindings(&graph)?,
        &args.options(),
        step,
    )?;
    match snapshot {
        kiln_optimizer::compile::Snapshot::Graph(g) => {
            println!("after {step}: {} nodes", g.len());
            for id in g.topo_order() {
                println!("  {}", g.node_line(id));
            }
            print!("{}", g.functions_listing());
        }
        kiln_optimizer::compile::Snapshot::Program(p) => {
            println!("after {step}: {} kernels", p.kernels.len());
            print!("{p}");
        }
    }
    Ok(())
}

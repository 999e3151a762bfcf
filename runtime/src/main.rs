//! The `kiln` command line: run, inspect and convert model files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln::graph::{Array, Graph, Op};
use kiln::{npy, Device, Session};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "kiln: a static-graph compiler and runtime for deep learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on .npy inputs and print (and optionally save) its outputs.
    Run {
        /// The .kiln model file.
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Write each fetched tensor to DIR/NAME.npy.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Fetch these nodes instead of the model's declared outputs (repeatable).
        #[arg(short, long = "fetch", value_name = "NAME")]
        fetches: Vec<String>,
        /// Device to run on.
        #[arg(long, default_value = "reference")]
        device: String,
    },
    /// Print a model's nodes, inputs, outputs and parameter count.
    Show {
        /// The .kiln model file.
        model: PathBuf,
        /// Write Graphviz DOT to FILE ('-' for standard output) instead.
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            model,
            inputs,
            output,
            fetches,
            device,
        } => run(&model, &inputs, output.as_deref(), &fetches, &device),
        Command::Show { model, dot } => show(&model, dot.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}

fn load(model: &Path) -> Result<Graph> {
    Ok(Graph::load(model)?)
}

fn run(
    model: &Path,
    inputs: &[String],
    output: Option<&Path>,
    fetches: &[String],
    device: &str,
) -> Result<()> {
    let device: Device = device.parse()?;
    let graph = load(model)?;
    let mut feeds: Vec<(String, Array)> = Vec::new();
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input '{spec}' is not NAME=FILE.npy"))?;
        let a = npy::read(file)?;
        feeds.push((name.to_string(), a));
    }
    let fetch_names: Vec<String> = if fetches.is_empty() {
        if graph.outputs().is_empty() {
            bail!(
                "{} declares no outputs; name the nodes to fetch with --fetch",
                model.display()
            );
        }
        graph
            .outputs()
            .iter()
            .map(|&o| graph.node(o).name.clone())
            .collect()
    } else {
        fetches.to_vec()
    };
    let t0 = Instant::now();
    let mut sess = Session::new(&graph, device)?;
    let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let fetch_refs: Vec<&str> = fetch_names.iter().map(String::as_str).collect();
    let values = sess.run(&feed_refs, &fetch_refs)?;
    let elapsed = t0.elapsed();
    if let Some(dir) = output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    println!(
        "{} on {device}: {} nodes, {:.3} ms",
        model.display(),
        graph.len(),
        elapsed.as_secs_f64() * 1e3
    );
    for (name, v) in fetch_names.iter().zip(&values) {
        println!("  {name}: {}{:?} {}", v.dtype(), v.shape(), summary(v));
        if let Some(dir) = output {
            let file = dir.join(format!("{}.npy", name.replace('/', "__")));
            npy::write(&file, v)?;
            println!("    -> {}", file.display());
        }
    }
    Ok(())
}

/// A one-line look at an array: its first values and, for several, min/mean/max.
fn summary(a: &Array) -> String {
    let v = a.to_f64_vec();
    let head: Vec<String> = v
        .iter()
        .take(6)
        .map(|x| {
            format!("{x:.6}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .collect();
    let mut s = format!(
        "[{}{}]",
        head.join(", "),
        if v.len() > 6 { ", ..." } else { "" }
    );
    if v.len() > 1 {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        s.push_str(&format!(" min {min:.4} mean {mean:.4} max {max:.4}"));
    }
    s
}

fn show(model: &Path, dot: Option<&Path>) -> Result<()> {
    let graph = load(model)?;
    if let Some(dot_path) = dot {
        let text = graph.to_dot();
        if dot_path == Path::new("-") {
            print!("{text}");
        } else {
            std::fs::write(dot_path, text)
                .with_context(|| format!("writing {}", dot_path.display()))?;
            println!("wrote {}", dot_path.display());
        }
        return Ok(());
    }
    println!("{}: {} nodes", model.display(), graph.len());
    println!();
    for id in graph.topo_order() {
        println!("  {}", graph.node_line(id));
    }
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

fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

//! `kiln run`: run a model on .npy inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln::graph::Array;
use kiln::{npy, Device, Session};

use super::common::load;

/// Arguments of `kiln run`.
#[derive(clap::Args)]
pub struct Args {
    /// The .kiln model file.
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeatable).
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Write each fetched tensor to DIR/NAME.npy.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Fetch these nodes instead of the model's declared outputs (repeatable).
    #[arg(short, long = "fetch", value_name = "NAME")]
    pub fetches: Vec<String>,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads for the CPU backend (default: KILN_NUM_THREADS or every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// After a warm-up run, time one more run and print each kernel's time.
    #[arg(long)]
    pub profile: bool,
    /// Like --profile, and write the kernel timeline as Chrome trace JSON
    /// (open it in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

/// Runs `kiln run`.
pub fn main(a: Args) -> Result<()> {
    run(
        &a.model,
        &a.inputs,
        a.output.as_deref(),
        &a.fetches,
        &a.device,
        RunExtras {
            threads: a.threads,
            profile: a.profile,
            trace: a.trace,
        },
    )
}

/// The optional parts of `kiln run`.
struct RunExtras {
    threads: Option<usize>,
    profile: bool,
    trace: Option<PathBuf>,
}

fn run(
    model: &Path,
    inputs: &[String],
    output: Option<&Path>,
    fetches: &[String],
    device: &str,
    extras: RunExtras,
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
    let mut sess = Session::with_options(
        &graph,
        device,
        kiln::SessionOptions {
            threads: extras.threads,
            ..Default::default()
        },
    )?;
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
    if extras.profile || extras.trace.is_some() {
        profile_run(&mut sess, &feed_refs, &fetch_refs, extras.trace.as_deref())?;
    }
    Ok(())
}

/// Times one more (warm) run kernel by kernel; prints the table and writes a trace.
fn profile_run(
    sess: &mut Session,
    feeds: &[(&str, &Array)],
    fetches: &[&str],
    trace: Option<&Path>,
) -> Result<()> {
    if sess.device() == Device::Reference {
        bail!("--profile and --trace need a compiling device (--device cpu)");
    }
    sess.set_profiling(true);
    let t = Instant::now();
    sess.run(feeds, fetches)?;
    let wall = t.elapsed().as_secs_f64() * 1e6;
    let events = sess.take_profile();
    let total: f64 = events.iter().map(|e| e.duration_us).sum();
    println!(
        "profile of one warm run: {:.1} us in {} kernels ({:.1} us wall)",
        total,
        events.len(),
        wall
    );
    println!(
        "  {:>4}  {:<16} {:>10} {:>6}  nodes",
        "k", "kernel", "us", "%"
    );
    for e in &events {
        let mut nodes = e.nodes.join(", ");
        if nodes.len() > 60 {
            nodes.truncate(57);
            nodes.push_str("...");
        }
        println!(
            "  {:>4}  {:<16} {:>10.1} {:>5.1}%  {nodes}",
            e.kernel,
            e.label,
            e.duration_us,
            100.0 * e.duration_us / total.max(1e-9)
        );
    }
    if let Some(path) = trace {
        let t0 = events.first().map(|e| e.start_us).unwrap_or(0.0);
        let trace_events: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": format!("k{} {}", e.kernel, e.label),
                    "cat": "kernel",
                    "ph": "X",
                    "ts": e.start_us - t0,
                    "dur": e.duration_us,
                    "pid": 1,
                    "tid": 1,
                    "args": {"nodes": e.nodes},
                })
            })
            .collect();
        let doc = serde_json::json!({"traceEvents": trace_events, "displayTimeUnit": "ms"});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
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

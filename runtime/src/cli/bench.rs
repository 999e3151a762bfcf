//! `kiln bench`: latency, compile time, time to first result and peak
//! memory of a model, and each kernel's mean time over many runs. Also the
//! profile aggregation `kiln run --profile` shares.
//!
//! Like ONNX Runtime's `onnxruntime_perf_test` and tract's `bench`: a
//! warm-up, then many timed runs summarized by order statistics (one run
//! can be ten times its neighbours: page faults, frequency changes, other
//! processes), and the kernel profile from a separate pass so that timing
//! each kernel does not slow the runs that measure latency.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kiln::graph::Array;
use kiln::{Device, ProfileEvent, Session};

use super::common::{complete_inputs, load, read_input, Exec, GENERATED_INPUTS};

/// The most timed runs (and profiled runs): their times are kept.
pub const MAX_RUNS: usize = 1_000_000;

/// Arguments of `kiln bench`.
#[derive(clap::Args)]
#[command(after_help = format!(
    "Inputs not given with --input are generated from --seed: {GENERATED_INPUTS}.\n\
     Symbolic dims are 1 unless --dim or a given input binds them.\n\n\
     Example:\n  \
     kiln bench examples/mlp.kiln --dim batch=32 --runs 200 --profile\n  \
     kiln bench model.onnx --input pixels=cat.npy --time 5 --json"
))]
pub struct Args {
    /// The model: a .kiln file, or an .onnx file (imported in memory).
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeatable); inputs not given are generated.
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// The size of a symbolic dim of the generated inputs, as NAME=N
    /// (repeatable; default 1, or what a given input binds).
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    #[command(flatten)]
    pub exec: Exec,
    /// Timed runs (default 100; at most 1000000).
    #[arg(long, value_name = "N", conflicts_with = "time")]
    pub runs: Option<usize>,
    /// Run for this many seconds instead of a number of runs (at least one
    /// run, at most 1000000).
    #[arg(long, value_name = "S")]
    pub time: Option<f64>,
    /// Untimed runs after the first, before timing (at most 1000000).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=MAX_RUNS as u64))]
    pub warmup: u64,
    /// Seed of the generated inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time each kernel over as many runs again (a separate pass) and
    /// print each one's mean and total time, most total time first.
    #[arg(long)]
    pub profile: bool,
    /// Print the results as one JSON object (times in milliseconds, kernel
    /// times in microseconds).
    #[arg(long)]
    pub json: bool,
}

/// How long to measure: a number of runs, or a time.
#[derive(Clone, Copy)]
enum Budget {
    Runs(usize),
    Time(Duration),
}

impl Budget {
    fn from_args(runs: Option<usize>, time: Option<f64>) -> Result<Budget> {
        match (runs, time) {
            (_, Some(s)) if !(s.is_finite() && s > 0.0 && s <= 86_400.0) => {
                bail!("--time {s}: give a number of seconds above 0 and at most 86400")
            }
            (_, Some(s)) => Ok(Budget::Time(Duration::from_secs_f64(s))),
            (Some(n), None) if n == 0 || n > MAX_RUNS => {
                bail!("--runs {n}: give a number of runs from 1 to {MAX_RUNS}")
            }
            (Some(n), None) => Ok(Budget::Runs(n)),
            (None, None) => Ok(Budget::Runs(100)),
        }
    }

    /// Whether to stop after `done` runs begun at `start`.
    fn done(self, done: usize, start: Instant) -> bool {
        match self {
            Budget::Runs(n) => done >= n,
            Budget::Time(t) => done >= MAX_RUNS || (done > 0 && start.elapsed() >= t),
        }
    }
}

/// Runs `kiln bench`.
pub fn main(a: Args) -> Result<()> {
    let device: Device = a.exec.device.parse()?;
    let budget = Budget::from_args(a.runs, a.time)?;
    if a.profile && device == Device::Reference {
        bail!("--profile needs a compiling device (--device cpu)");
    }
    let t_load = Instant::now();
    let graph = load(&a.model)?;
    let load_time = t_load.elapsed();
    let given = a
        .inputs
        .iter()
        .map(|s| read_input(s))
        .collect::<Result<Vec<_>>>()?;
    let given_names: Vec<String> = given.iter().map(|(n, _)| n.clone()).collect();
    let (feeds, generated) = complete_inputs(&graph, given, &a.dims, a.seed)?;
    let fetch_names = super::run::fetch_names(&graph, &a.model, &a.exec.fetches)?;
    let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let fetch_refs: Vec<&str> = fetch_names.iter().map(String::as_str).collect();

    let t_session = Instant::now();
    let mut sess = Session::with_options(
        &graph,
        device,
        kiln::SessionOptions {
            threads: a.exec.threads,
            ..Default::default()
        },
    )?;
    let session_time = t_session.elapsed();
    let t_first = Instant::now();
    sess.run(&feed_refs, &fetch_refs)?;
    let first_run = t_first.elapsed();
    let first_result = load_time + session_time + first_run;
    for _ in 0..a.warmup {
        sess.run(&feed_refs, &fetch_refs)?;
    }
    let mut times: Vec<f64> = Vec::new();
    let start = Instant::now();
    while !budget.done(times.len(), start) {
        let t = Instant::now();
        sess.run(&feed_refs, &fetch_refs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = start.elapsed().as_secs_f64();
    let stats = Latency::of(&mut times);
    // The first run compiles, then runs as a warm run does.
    let compile_ms = ((session_time + first_run).as_secs_f64() * 1e3 - stats.median).max(0.0);

    let profile = if a.profile {
        sess.set_profiling(true);
        let mut table = ProfileTable::default();
        let start = Instant::now();
        while !budget.done(table.runs, start) {
            sess.run(&feed_refs, &fetch_refs)?;
            table.add_run(&sess.take_profile());
        }
        sess.set_profiling(false);
        Some(table)
    } else {
        None
    };

    let threads = match device {
        Device::Cpu => Some(match a.exec.threads {
            Some(t) => t,
            None => kiln_codegen::cpu::env_threads()
                .map_err(anyhow::Error::msg)?
                .unwrap_or_else(kiln_codegen::cpu::core_threads),
        }),
        _ => None,
    };
    let report = Report {
        model: a.model.display().to_string(),
        device: device.to_string(),
        threads,
        nodes: graph.len(),
        inputs: feeds
            .iter()
            .map(|(n, v)| (n.clone(), v, given_names.contains(n)))
            .collect(),
        generated,
        load_ms: load_time.as_secs_f64() * 1e3,
        compile_ms,
        first_result_ms: first_result.as_secs_f64() * 1e3,
        warmup: a.warmup as usize,
        latency: stats,
        runs_per_s: times.len() as f64 / wall.max(1e-12),
        peak_rss: peak_rss_bytes(),
        profile,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    Ok(())
}

/// A time in milliseconds for people: in us below a millisecond.
fn time(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.1} us", ms * 1e3)
    } else {
        format!("{ms:.3} ms")
    }
}

/// Order statistics of run times, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// How many runs.
    pub runs: usize,
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The fastest.
    pub min: f64,
    /// The slowest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
}

impl Latency {
    /// The statistics of `times` (sorted in place; at least one).
    pub fn of(times: &mut [f64]) -> Latency {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        Latency {
            runs: n,
            median: quantile(times, 0.5),
            p90: quantile(times, 0.9),
            min: times.first().copied().unwrap_or(0.0),
            max: times.last().copied().unwrap_or(0.0),
            mean: times.iter().sum::<f64>() / n.max(1) as f64,
        }
    }
}

/// The `q` quantile of sorted `v`, interpolating between neighbours.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The process's peak resident memory in bytes (`getrusage`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let max = u64::try_from(usage.ru_maxrss).ok()?;
        // Linux counts kibibytes, macOS bytes.
        if cfg!(target_os = "macos") {
            Some(max)
        } else {
            Some(max * 1024)
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// One kernel's times over many runs.
#[derive(Clone, Debug)]
pub struct KernelStats {
    /// The kernel's index in its program.
    pub kernel: usize,
    /// What it is (`matmul`, `elementwise`, ...).
    pub label: String,
    /// The graph nodes it computes.
    pub nodes: Vec<String>,
    /// How many times it ran.
    pub calls: usize,
    /// Its total time, microseconds.
    pub total_us: f64,
    /// Its fastest run, microseconds.
    pub min_us: f64,
}

impl KernelStats {
    /// Its mean time per call, microseconds.
    pub fn mean_us(&self) -> f64 {
        self.total_us / self.calls.max(1) as f64
    }
}

/// Kernel times summed over profiled runs, one entry per kernel (of each
/// program run), in the memory of one run's worth of kernels.
#[derive(Default)]
pub struct ProfileTable {
    /// Runs added.
    pub runs: usize,
    kernels: Vec<KernelStats>,
    index: HashMap<(usize, String, Vec<String>), usize>,
}

impl ProfileTable {
    /// Adds one run's events (from [`Session::take_profile`]).
    pub fn add_run(&mut self, events: &[ProfileEvent]) {
        self.runs += 1;
        for e in events {
            let key = (e.kernel, e.label.clone(), e.nodes.clone());
            let i = *self.index.entry(key).or_insert_with(|| {
                self.kernels.push(KernelStats {
                    kernel: e.kernel,
                    label: e.label.clone(),
                    nodes: e.nodes.clone(),
                    calls: 0,
                    total_us: 0.0,
                    min_us: f64::INFINITY,
                });
                self.kernels.len() - 1
            });
            let k = &mut self.kernels[i];
            k.calls += 1;
            k.total_us += e.duration_us;
            k.min_us = k.min_us.min(e.duration_us);
        }
    }

    /// The kernels, most total time first.
    pub fn kernels(&self) -> Vec<&KernelStats> {
        let mut v: Vec<&KernelStats> = self.kernels.iter().collect();
        v.sort_by(|a, b| {
            b.total_us
                .total_cmp(&a.total_us)
                .then(a.kernel.cmp(&b.kernel))
        });
        v
    }

    /// The kernels' time over all runs, microseconds.
    pub fn total_us(&self) -> f64 {
        self.kernels.iter().map(|k| k.total_us).sum()
    }

    /// Prints the table: each kernel's mean, min and total time and share.
    pub fn print(&self) {
        let total = self.total_us();
        println!(
            "profile over {} runs: {:.1} us of kernels per run, {} kernels",
            self.runs,
            total / self.runs.max(1) as f64,
            self.kernels.len()
        );
        println!(
            "  {:>4}  {:<16} {:>10} {:>10} {:>12} {:>6}  nodes",
            "k", "kernel", "mean us", "min us", "total us", "%"
        );
        for k in self.kernels() {
            let mut nodes = k.nodes.join(", ");
            if nodes.chars().count() > 60 {
                nodes = nodes.chars().take(57).collect::<String>() + "...";
            }
            println!(
                "  {:>4}  {:<16} {:>10.1} {:>10.1} {:>12.1} {:>5.1}%  {nodes}",
                k.kernel,
                k.label,
                k.mean_us(),
                k.min_us,
                k.total_us,
                100.0 * k.total_us / total.max(1e-9)
            );
        }
    }

    /// The table as JSON.
    pub fn json(&self) -> serde_json::Value {
        let total = self.total_us();
        serde_json::json!({
            "runs": self.runs,
            "kernels": self.kernels().iter().map(|k| serde_json::json!({
                "kernel": k.kernel,
                "label": k.label,
                "nodes": k.nodes,
                "calls": k.calls,
                "mean_us": k.mean_us(),
                "min_us": k.min_us,
                "total_us": k.total_us,
                "share": k.total_us / total.max(1e-9),
            })).collect::<Vec<_>>(),
        })
    }
}

/// What `kiln bench` measured.
struct Report<'a> {
    model: String,
    device: String,
    threads: Option<usize>,
    nodes: usize,
    /// Each input, and whether it was given (else generated).
    inputs: Vec<(String, &'a Array, bool)>,
    generated: Vec<String>,
    load_ms: f64,
    compile_ms: f64,
    first_result_ms: f64,
    warmup: usize,
    latency: Latency,
    runs_per_s: f64,
    peak_rss: Option<u64>,
    profile: Option<ProfileTable>,
}

impl Report<'_> {
    fn print(&self) {
        let threads = self
            .threads
            .map_or(String::new(), |t| format!(", {t} threads"));
        println!(
            "{} on {}{threads}: {} nodes",
            self.model, self.device, self.nodes
        );
        for (name, v, given) in &self.inputs {
            if *given {
                println!("  input {name} {}{:?}: given", v.dtype(), v.shape());
            }
        }
        for line in &self.generated {
            println!("  input {line}");
        }
        let l = &self.latency;
        println!("load:          {:>12}", time(self.load_ms));
        println!(
            "compile:       {:>12}  (session and first run, less a warm run)",
            time(self.compile_ms)
        );
        println!(
            "first result:  {:>12}  (load, session and first run)",
            time(self.first_result_ms)
        );
        println!(
            "latency over {} runs (after {} warm-up runs):",
            l.runs, self.warmup
        );
        println!(
            "  median {}  p90 {}  min {}  mean {}  max {}",
            time(l.median),
            time(l.p90),
            time(l.min),
            time(l.mean),
            time(l.max)
        );
        println!("throughput:    {:>12.1} runs/s", self.runs_per_s);
        match self.peak_rss {
            Some(b) => println!(
                "peak RSS:      {:>12}",
                super::common::human_bytes(b as usize)
            ),
            None => println!("peak RSS:      unknown on this system"),
        }
        if let Some(p) = &self.profile {
            p.print();
        }
    }

    fn json(&self) -> serde_json::Value {
        let l = &self.latency;
        serde_json::json!({
            "model": self.model,
            "device": self.device,
            "threads": self.threads,
            "nodes": self.nodes,
            "inputs": self.inputs.iter().map(|(n, v, given)| serde_json::json!({
                "name": n,
                "dtype": v.dtype().to_string(),
                "shape": v.shape(),
                "generated": !given,
            })).collect::<Vec<_>>(),
            "load_ms": self.load_ms,
            "compile_ms": self.compile_ms,
            "first_result_ms": self.first_result_ms,
            "warmup_runs": self.warmup,
            "runs": l.runs,
            "latency_ms": {
                "median": l.median,
                "p90": l.p90,
                "min": l.min,
                "mean": l.mean,
                "max": l.max,
            },
            "runs_per_s": self.runs_per_s,
            "peak_rss_bytes": self.peak_rss,
            "profile": self.profile.as_ref().map(ProfileTable::json),
        })
    }
}

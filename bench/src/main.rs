//! `cargo run --release -p kiln-bench [-- --peers] [--aot] [--only NAME] [--runs N] [--profile]`:
//! times kiln on each workload (median and p90 latency, compile time, time
//! to first result, process peak RSS) and, with `--peers`, ONNX Runtime and
//! PyTorch on the same models and inputs in the same run, with ratios; with
//! `--aot`, each inference workload compiled ahead of time too (`aot.rs`),
//! against the JIT session in the same run; with `--zoo`, the model zoo
//! (`zoo.rs`, `bench/zoo/`): exported PyTorch models, kiln against ONNX
//! Runtime and tract.

mod aot;
mod zoo;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use kiln::prelude::*;

#[derive(Parser)]
struct Args {
    /// Also time ONNX Runtime and PyTorch (needs bench/.venv or $KILN_BENCH_PYTHON).
    #[arg(long)]
    peers: bool,
    /// Only this workload (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Timed runs per workload.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Where to write the models, inputs and outputs for the peers.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Run kiln on this device: `cpu` (default) or `cuda` (the GPU mode:
    /// its own workloads, and with `--peers` PyTorch on the same GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// GPU mode: how f32 matrix products run (`highest`, the default strict
    /// FP32, or `tf32`, `bf16`, `f16` on tensor cores with f32 accumulation).
    #[arg(long, default_value = "highest")]
    matmul_precision: kiln::MatmulPrecision,
    /// Also compile each inference workload ahead of time, link it into a C
    /// harness with libkiln_rt.a, and time it against the JIT session
    /// (alternating rounds; binary sizes). With `--zoo`: each zoo model as
    /// `kiln compile --exe` builds it, timed by its `--time` option.
    #[arg(long)]
    aot: bool,
    /// Print each workload's kernels by mean time (profiled runs, after timing).
    #[arg(long)]
    profile: bool,
    /// Only build, compile and run this workload `--runs` times, then print
    /// the process's peak RSS in KiB (what `bench/peers.py` compares with
    /// ONNX Runtime, each in a process of its own).
    #[arg(long, value_name = "WORKLOAD", hide = true)]
    rss_probe: Option<String>,
    /// The model zoo instead of the workloads: runs bench/zoo/setup.sh
    /// (a venv in target/zoo-venv, the models exported to target/zoo), then
    /// kiln, ONNX Runtime and tract on each model, each in a process of its
    /// own; `--only` picks models.
    #[arg(long)]
    zoo: bool,
    /// Zoo: the thread counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// Zoo: the batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    batch: Vec<usize>,
    /// Zoo: seconds of timed runs per engine, model and thread count.
    #[arg(long, default_value_t = 2.0)]
    time: f64,
    /// Zoo: time kiln alone on this exported model directory with the first
    /// of `--threads` and print JSON (what `--zoo` runs in a process of its own).
    #[arg(long, value_name = "DIR", hide = true)]
    zoo_probe: Option<PathBuf>,
    /// Zoo: build the standalone ahead-of-time program of this exported
    /// model directory into DIR/aot and print JSON (what `--zoo --aot` runs
    /// in a process of its own).
    #[arg(long, value_name = "DIR", hide = true)]
    zoo_aot_build: Option<PathBuf>,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Timing {
    median_ms: f64,
    p90_ms: f64,
    compile_ms: f64,
    first_ms: f64,
    /// GPU mode: the median of host-array runs (feed and fetch crossing
    /// the bus), beside `median_ms` of device-resident runs.
    host_median_ms: Option<f64>,
}

/// Mean time per kernel over `runs` profiled runs, slowest first.
fn profile_kiln(
    w: &kiln_bench::Workload,
    runs: usize,
    device: Device,
    opts: &SessionOptions,
) -> Result<()> {
    let feeds = [(w.input.0.as_str(), &w.input.1)];
    let fetch = [w.output.as_str()];
    let mut s = Session::with_options(&w.graph, device, opts.clone())?;
    s.run(&feeds, &fetch)?;
    s.set_profiling(true);
    for _ in 0..runs {
        s.run(&feeds, &fetch)?;
    }
    let mut total: std::collections::BTreeMap<usize, (String, String, f64)> = Default::default();
    for e in s.take_profile() {
        let t = total.entry(e.kernel).or_insert_with(|| {
            let nodes = e.nodes.join(" ");
            (e.label.clone(), nodes.chars().take(70).collect(), 0.0)
        });
        t.2 += e.duration_us / runs as f64;
    }
    let mut rows: Vec<_> = total.into_iter().collect();
    rows.sort_by(|a, b| b.1 .2.total_cmp(&a.1 .2));
    let sum: f64 = rows.iter().map(|r| r.1 .2).sum();
    println!("  {} kernels, {sum:.1} us in kernels per run:", rows.len());
    for (k, (label, nodes, us)) in rows.iter().take(12) {
        println!("  {us:9.1} us  #{k:<3} {label:<22} {nodes}");
    }
    Ok(())
}

fn time_kiln(
    w: &kiln_bench::Workload,
    runs: usize,
    device: Device,
    opts: &SessionOptions,
) -> Result<(Timing, Array)> {
    let feeds = [(w.input.0.as_str(), &w.input.1)];
    let fetch = [w.output.as_str()];
    let t0 = Instant::now();
    let mut s = Session::with_options(&w.graph, device, opts.clone())?;
    let first = s.run(&feeds, &fetch)?.remove(0);
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    // A second run isolates compile time: first result minus a warm run.
    let t1 = Instant::now();
    s.run(&feeds, &fetch)?;
    let warm_ms = t1.elapsed().as_secs_f64() * 1e3;
    // On a GPU the host-array runs are the secondary figure: fewer of them
    // (64M-element transfers take a while).
    let host_runs = if matches!(device, Device::Cuda(_)) {
        runs.min(20)
    } else {
        runs
    };
    let mut times = Vec::with_capacity(host_runs);
    for _ in 0..host_runs {
        let t = Instant::now();
        s.run(&feeds, &fetch)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut timing = Timing {
        median_ms: percentile(&times, 0.5),
        p90_ms: percentile(&times, 0.9),
        compile_ms: (first_ms - warm_ms).max(0.0),
        first_ms,
        host_median_ms: None,
    };
    if matches!(device, Device::Cuda(_)) {
        // The GPU figure: the input already on the device and the result
        // left there (as PyTorch's are), each run waited for.
        let x = s.to_device(&w.input.1)?;
        let dfeeds = [(w.input.0.as_str(), &x)];
        let got = s.run_on_device(&dfeeds, &fetch)?[0].to_host()?;
        anyhow::ensure!(
            got.same_bits(&first),
            "{}: the device-resident run differs from the host run",
            w.name
        );
        let mut dtimes = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            s.run_on_device(&dfeeds, &fetch)?;
            dtimes.push(t.elapsed().as_secs_f64() * 1e3);
        }
        dtimes.sort_by(|a, b| a.partial_cmp(b).unwrap());
        timing.host_median_ms = Some(timing.median_ms);
        timing.median_ms = percentile(&dtimes, 0.5);
        timing.p90_ms = percentile(&dtimes, 0.9);
    }
    Ok((timing, first))
}

/// Rounds of JIT and ahead-of-time timing, alternated so that drift on a
/// shared machine touches both.
const AOT_ROUNDS: usize = 3;

/// `--aot`: each inference workload's JIT session against its
/// ahead-of-time harness, in alternating rounds of `--runs` runs; prints the
/// best round's median of each, their ratio, and the sizes.
fn compare_aot(args: &Args) -> Result<Vec<serde_json::Value>> {
    println!(
        "\nahead of time (C harness + libkiln_rt.a) against the JIT session, best of {AOT_ROUNDS} alternating rounds:"
    );
    println!(
        "{:<10} {:>11} {:>11} {:>9} {:>11} {:>12} {:>12}",
        "workload", "JIT ms", "AOT ms", "AOT/JIT", "AOT first", "object B", "binary B"
    );
    let mut rows = Vec::new();
    for &name in &kiln_bench::NAMES {
        if name == "mlp_train" || (!args.only.is_empty() && !args.only.iter().any(|o| o == name)) {
            continue;
        }
        let w = kiln_bench::by_name(name).expect("a listed workload");
        let dir = args.dir.join("aot").join(name);
        let (mut jit, mut best) = (f64::INFINITY, None::<aot::AotTiming>);
        let mut jit_out = None;
        for _ in 0..AOT_ROUNDS {
            let (t, out) = time_kiln(&w, args.runs, Device::Cpu, &SessionOptions::default())?;
            jit = jit.min(t.median_ms);
            jit_out = Some(out);
            let a = aot::time_aot(&w, args.runs, &dir)?;
            if best
                .as_ref()
                .is_none_or(|b| percentile(&a.times, 0.5) < percentile(&b.times, 0.5))
            {
                best = Some(a);
            }
        }
        let a = best.expect("rounds ran");
        let jit_out = jit_out.expect("rounds ran");
        let (rtol, atol) = (1e-4, 1e-5);
        let (want, got) = (jit_out.to_f64_vec(), a.output.to_f64_vec());
        anyhow::ensure!(
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| (w - g).abs() <= atol + rtol * w.abs()),
            "{name}: the ahead-of-time output differs from the JIT's"
        );
        let median = percentile(&a.times, 0.5);
        println!(
            "{:<10} {:>11.4} {:>11.4} {:>9.3} {:>11.2} {:>12} {:>12}",
            name,
            jit,
            median,
            median / jit,
            a.first_ms,
            a.object_bytes,
            a.exe_bytes
        );
        rows.push(serde_json::json!({"name": name, "jit_median_ms": jit, "aot_median_ms": median, "aot_p90_ms": percentile(&a.times, 0.9), "aot_first_ms": a.first_ms, "object_bytes": a.object_bytes, "exe_bytes": a.exe_bytes}));
    }
    Ok(rows)
}

/// The machine's peak f32 GEMM rate (GFLOP/s, 1024^3 with the `gemm` crate
/// on every core) and copy bandwidth (GB/s, 64 MiB read plus written).
fn floor_rates() -> (f64, f64) {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: three dense n x n row-major matrices.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (n * n * n) as f64 / best / 1e9;
    let src = vec![1u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (gflops, 2.0 * src.len() as f64 / best / 1e9)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.zoo_probe {
        return zoo::probe(dir, args.threads[0], args.time);
    }
    if let Some(dir) = &args.zoo_aot_build {
        return zoo::aot_build(dir);
    }
    if args.zoo {
        return zoo::run(&zoo::Options {
            only: &args.only,
            threads: &args.threads,
            batch: &args.batch,
            seconds: args.time,
            aot: args.aot,
        });
    }
    if let Some(name) = &args.rss_probe {
        let w = kiln_bench::by_name(name).with_context(|| format!("no workload '{name}'"))?;
        let feeds = [(w.input.0.as_str(), &w.input.1)];
        let s = Session::new(&w.graph, Device::Cpu)?;
        for _ in 0..args.runs.max(1) {
            s.run(&feeds, &[w.output.as_str()])?;
        }
        println!("{}", peak_rss_kib());
        return Ok(());
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let device: Device = args.device.parse()?;
    let gpu = matches!(device, Device::Cuda(_));
    let opts = SessionOptions {
        matmul_precision: Some(args.matmul_precision),
        ..Default::default()
    };
    let names: &[&str] = if gpu {
        &kiln_bench::GPU_NAMES
    } else {
        &kiln_bench::NAMES
    };
    let mut rows = Vec::new();
    println!(
        "{:<10} {:>10} {:>10} {:>11} {:>11} {:>10} {:>9}",
        "workload", "median ms", "p90 ms", "compile ms", "first ms", "GFLOP/s", "GB/s"
    );
    for &name in names {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let w = kiln_bench::by_name(name).expect("a listed workload");
        let (t, out) = time_kiln(&w, args.runs, device, &opts)?;
        println!(
            "{:<10} {:>10.4} {:>10.4} {:>11.2} {:>11.2} {:>10.1} {:>9.1}",
            w.name,
            t.median_ms,
            t.p90_ms,
            t.compile_ms,
            t.first_ms,
            w.flops / t.median_ms / 1e6,
            w.bytes / t.median_ms / 1e6
        );
        if let Some(h) = t.host_median_ms {
            println!("  (with the input and result crossing the bus: {h:.4} ms)");
        }
        if args.profile {
            profile_kiln(&w, args.runs.min(50), device, &opts)?;
        }
        if args.peers {
            let d = args.dir.join(w.name);
            std::fs::create_dir_all(&d)?;
            w.graph.save(d.join("model.kiln"))?;
            kiln::npy::write(d.join("input.npy"), &w.input.1)?;
            kiln::npy::write(d.join("kiln_output.npy"), &out)?;
        }
        rows.push(serde_json::json!({"name": w.name, "median_ms": t.median_ms, "p90_ms": t.p90_ms, "compile_ms": t.compile_ms, "first_ms": t.first_ms, "host_median_ms": t.host_median_ms, "flops": w.flops, "bytes": w.bytes}));
    }
    println!(
        "kiln process peak RSS: {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
    // The CPU's floor; the GPU mode's floor comes from torch on the GPU.
    let (gflops, gbps) = if gpu { (0.0, 0.0) } else { floor_rates() };
    if !gpu {
        println!(
            "floor (measured here): peak GEMM {gflops:.0} GFLOP/s, copy bandwidth {gbps:.1} GB/s"
        );
    }
    let mut aot_rows = Vec::new();
    if args.aot && !gpu {
        aot_rows = compare_aot(&args)?;
    }
    let doc = serde_json::json!({"workloads": rows, "peak_gflops": gflops, "copy_gbps": gbps, "aot": aot_rows});
    std::fs::write(
        args.dir.join("kiln.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    if args.peers {
        let python =
            std::env::var("KILN_BENCH_PYTHON").unwrap_or_else(|_| "bench/.venv/bin/python".into());
        let status = std::process::Command::new(&python)
            .env("KILN_BENCH_EXE", std::env::current_exe()?)
            .arg("bench/peers.py")
            .arg(&args.dir)
            .arg(args.runs.to_string())
            .args(gpu.then_some("gpu"))
            .status()
            .with_context(|| {
                format!("running {python} bench/peers.py (run bench/setup.sh first)")
            })?;
        anyhow::ensure!(status.success(), "bench/peers.py failed");
    }
    Ok(())
}

//! Serving one model from several threads: how much the process grows and
//! how many requests a second it answers, with one shared session
//! (`Session::run(&self)`: one copy of the compiled code and packed
//! weights, a scratch arena per concurrent run) against a session per
//! thread (each compiling and packing its own copy).
//!
//! ```text
//! cargo run --release -p kiln --example serve_threads            # ResNet-18, batch 1
//! cargo run --release -p kiln --example serve_threads -- MODEL.onnx
//! ```
//!
//! Each configuration (mode x threads 1, 2, 4, 8) runs in a child process
//! of its own, so the resident-memory figure (VmRSS after the warm-up
//! minus VmRSS before the first session) is that configuration's alone.
//! The built-in model is ResNet-18 (torchvision's layer shapes: 11.7M
//! parameters, random weights) made with kiln's builder; an ONNX file with
//! one float input runs at its declared shape (symbolic dims at 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::prelude::*;

/// A torchvision-shaped ResNet-18 over `[1, 3, 224, 224]`.
fn resnet18() -> Result<Graph> {
    let g = GraphBuilder::with_seed(18);
    let x = g.placeholder("image", DType::F32, [1, 3, 224, 224])?;
    let conv = |name: &str, x, out, k, stride, pad, act| {
        let c = g.conv2d_layer(
            name,
            x,
            out,
            k,
            Conv2dOptions::default().stride(stride).padding(pad),
            Activation::Identity,
        )?;
        let b = g.batch_norm(&format!("{name}/bn"), c, 1e-5)?;
        b.activation(act)
    };
    let mut h = conv("stem", x, 64, 7, 2, 3, Activation::Relu)?;
    h = g.max_pool2d(h, 3, 2, 1)?;
    let mut channels = 64;
    for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let name = format!("layer{}/{block}", stage + 1);
            let a = conv(
                &format!("{name}/conv1"),
                h,
                width,
                3,
                stride,
                1,
                Activation::Relu,
            )?;
            let b = conv(
                &format!("{name}/conv2"),
                a,
                width,
                3,
                1,
                1,
                Activation::Identity,
            )?;
            let skip = if stride != 1 || channels != width {
                conv(
                    &format!("{name}/down"),
                    h,
                    width,
                    1,
                    stride,
                    0,
                    Activation::Identity,
                )?
            } else {
                h
            };
            h = b.add(skip)?.relu()?;
            channels = width;
        }
    }
    let pooled = h.mean(&[2, 3], false)?;
    let logits = g.dense("fc", pooled, 1000, Activation::Identity)?;
    g.output(logits.named("logits")?)?;
    Ok(g.into_graph())
}

/// The process's resident memory in MiB (Linux).
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A feed for every placeholder: a fixed ramp, symbolic dims at 1.
fn feeds(graph: &Graph) -> Vec<(String, Array)> {
    graph
        .placeholders()
        .into_iter()
        .map(|p| {
            let n = graph.node(p);
            let dims: Vec<usize> =
                n.ty.shape
                    .dims()
                    .iter()
                    .map(|d| d.fixed().unwrap_or(1))
                    .collect();
            let count = dims.iter().product::<usize>();
            let data: Vec<f32> = (0..count).map(|i| (i % 255) as f32 / 255.0).collect();
            (n.name.clone(), Array::from_vec(dims, data).expect("shape"))
        })
        .collect()
}

/// One configuration, in this process: prints `threads mode growth_mib rps`.
fn child(model: Option<&str>, shared: bool, threads: usize) -> Result<()> {
    let graph = match model {
        Some(path) => Graph::from_onnx(path)?,
        None => resnet18()?,
    };
    let feeds = Arc::new(feeds(&graph));
    let before = resident_mib();
    let one = || -> Result<Arc<Session>> { Ok(Arc::new(Session::new(&graph, Device::Cpu)?)) };
    let sessions: Vec<Arc<Session>> = if shared {
        vec![one()?; threads]
    } else {
        (0..threads).map(|_| one()).collect::<Result<_>>()?
    };
    let run = |s: &Session| -> Result<()> {
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        s.run_outputs(&refs).map(|_| ())
    };
    // Warm up: every thread compiles or runs once, at the same time.
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = sessions.iter().map(|s| scope.spawn(|| run(s))).collect();
        for h in handles {
            h.join().expect("a warm-up thread panicked")?;
        }
        Ok(())
    })?;
    let grown = resident_mib() - before;
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let done: usize = std::thread::scope(|scope| -> Result<usize> {
        let handles: Vec<_> = sessions
            .iter()
            .map(|s| {
                scope.spawn(move || -> Result<usize> {
                    let mut n = 0;
                    while start.elapsed() < window {
                        run(s)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a thread panicked"))
            .sum()
    })?;
    let rps = done as f64 / start.elapsed().as_secs_f64();
    let mode = if shared { "shared" } else { "per-thread" };
    println!("{threads} {mode} {grown:.0} {rps:.1}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let shared = args[1] == "shared";
        let threads: usize = args[2].parse()?;
        child(args.get(3).map(String::as_str), shared, threads)?;
        return Ok(());
    }
    let model = args.first().cloned();
    println!(
        "model: {}; {} cores",
        model.as_deref().unwrap_or("ResNet-18 (builder), batch 1"),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| threads | one shared session: growth MiB | req/s | a session per thread: growth MiB | req/s |");
    println!("|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for threads in [1, 2, 4, 8] {
        let mut cells = Vec::new();
        for mode in ["shared", "per-thread"] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["--child", mode, &threads.to_string()]);
            cmd.args(model.iter());
            let out = cmd.output()?;
            anyhow::ensure!(
                out.status.success(),
                "{mode} x{threads}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8(out.stdout)?;
            let f: Vec<&str> = line.split_whitespace().collect();
            cells.push(format!("{} | {}", f[2], f[3]));
        }
        println!("| {threads} | {} | {} |", cells[0], cells[1]);
    }
    Ok(())
}

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
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Threads for the CPU backend (default: KILN_NUM_THREADS or every core).
        #[arg(long)]
        threads: Option<usize>,
        /// After a warm-up run, time one more run and print each kernel's time.
        #[arg(long)]
        profile: bool,
        /// Like --profile, and write the kernel timeline as Chrome trace JSON
        /// (open it in Perfetto or chrome://tracing).
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// Print a model's nodes, inputs, outputs and parameter count.
    Show {
        /// The .kiln model file.
        model: PathBuf,
        /// Write Graphviz DOT to FILE ('-' for standard output) instead
        /// (with --optimized: the ops of each kernel in one cluster).
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
        /// Print the optimized kernel program instead.
        #[arg(long)]
        optimized: bool,
        /// Print the graph after the named pass instead.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// With --optimized: print the kernel program as JSON.
        #[arg(long, requires = "optimized")]
        json: bool,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Print the memory plan of the optimized program and draw it as SVG.
    Plan {
        /// The .kiln model file.
        model: PathBuf,
        /// Write the timeline (one bar per buffer: step on x, offset on y) here.
        #[arg(long, value_name = "FILE", default_value = "plan.svg")]
        svg: PathBuf,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Run the graph passes and report what they changed.
    Optimize {
        /// The .kiln model file.
        model: PathBuf,
        /// Report, pass by pass, what changed, with counts.
        #[arg(long)]
        explain: bool,
        /// Write the optimized graph here.
        #[arg(short, long, value_name = "OUT.kiln")]
        output: Option<PathBuf>,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Compile a model ahead of time into an object file, a C header and
    /// kiln's run-time library (`NAME.o`, `NAME.h`, `libkiln_rt.a` in DIR)
    /// that run it without kiln: link with `cc main.c NAME.o libkiln_rt.a
    /// -lm -lpthread -ldl` and call `NAME_run(inputs, outputs)`. Variables
    /// are frozen; every symbolic dim must be given with --dim.
    Compile {
        /// The .kiln model file.
        model: PathBuf,
        /// Where to write NAME.o and NAME.h.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// The C name prefix (default: the model file's stem).
        #[arg(long)]
        name: Option<String>,
        /// The CPU to compile for: native (this machine), x86-64-v3 or x86-64-v4.
        #[arg(long, default_value = "native")]
        target: String,
        /// The size of a symbolic dim, as NAME=N (repeatable; every one is needed).
        #[arg(long = "dim", value_name = "NAME=N")]
        dims: Vec<String>,
        /// Also build DIR/NAME, a standalone program (with `cc`) that runs
        /// the model on NAME=FILE.npy inputs and writes its outputs as .npy
        /// files (`-o OUTDIR`).
        #[arg(long)]
        exe: bool,
    },
    /// Import an ONNX model (opsets 7 to 22) as a .kiln file: ONNX ops as
    /// kiln primitives, initializers as constants (or variables with
    /// --trainable), dim_param dims as symbolic dims. Every unsupported
    /// node is listed in one error.
    Import {
        /// The .onnx model file.
        model: PathBuf,
        /// The .kiln file to write.
        #[arg(short, long, value_name = "OUT.kiln")]
        output: PathBuf,
        /// Import initializers as variables (to train or fine-tune).
        #[arg(long)]
        trainable: bool,
        /// Bind a graph input to a value at import time, as NAME=FILE.npy
        /// (repeatable): inputs that decide shapes (a Reshape's shape, a
        /// Resize's sizes), which kiln needs known.
        #[arg(long = "constant", value_name = "NAME=FILE.npy")]
        constants: Vec<String>,
        /// The element shapes of a sequence-typed graph input, as
        /// NAME=SHAPE,SHAPE,... with each SHAPE as dims joined by 'x'
        /// (2x3; `scalar` for a rank-0 element): element i becomes the
        /// placeholder NAME/i (repeatable).
        #[arg(long = "sequence", value_name = "NAME=SHAPE,...")]
        sequences: Vec<String>,
        /// An optional-typed graph input that holds no value (repeatable).
        #[arg(long = "absent", value_name = "NAME")]
        absent: Vec<String>,
    },
}

/// How to compile a model for `show --optimized`, `plan` and `optimize`.
#[derive(clap::Args, Clone)]
struct CompileArgs {
    /// The size of a symbolic dim, as NAME=N (repeatable; unnamed dims are 1).
    #[arg(long = "dim", value_name = "NAME=N")]
    dims: Vec<String>,
    /// Treat variables nothing assigns as constants (inference), so batch
    /// norm and other constant work fold away.
    #[arg(long)]
    freeze: bool,
    /// Skip a pass by name (repeatable).
    #[arg(long = "disable-pass", value_name = "PASS")]
    disable: Vec<String>,
}

impl CompileArgs {
    fn bindings(&self, graph: &Graph) -> Result<kiln::graph::Bindings> {
        let mut symbols: Vec<String> = Vec::new();
        for p in graph.placeholders() {
            for s in graph.node(p).ty.shape.symbols() {
                if !symbols.iter().any(|x| x == s) {
                    symbols.push(s.to_string());
                }
            }
        }
        let mut b: kiln::graph::Bindings = symbols.iter().map(|s| (s.clone(), 1)).collect();
        for spec in &self.dims {
            let (name, n) = spec
                .split_once('=')
                .with_context(|| format!("--dim '{spec}' is not NAME=N"))?;
            let n: usize = n
                .parse()
                .with_context(|| format!("--dim '{spec}': '{n}' is not a size"))?;
            if !symbols.iter().any(|s| s == name) {
                bail!(
                    "--dim {name}: the model has no symbolic dim '{name}' (it has: {})",
                    if symbols.is_empty() {
                        "none".into()
                    } else {
                        symbols.join(", ")
                    }
                );
            }
            b.insert(name.to_string(), n);
        }
        Ok(b)
    }

    fn options(&self) -> kiln_optimizer::CompileOptions {
        kiln_optimizer::CompileOptions {
            freeze_variables: self.freeze,
            disabled_passes: self.disable.clone(),
            no_simplify: false,
        }
    }

    fn compile(&self, graph: &Graph) -> Result<kiln_optimizer::Compiled> {
        let fetches = default_fetches(graph)?;
        Ok(kiln_optimizer::compile(
            graph,
            &fetches,
            &self.bindings(graph)?,
            &self.options(),
        )?)
    }
}

fn default_fetches(graph: &Graph) -> Result<Vec<kiln::graph::NodeId>> {
    if graph.outputs().is_empty() {
        bail!("the model declares no outputs");
    }
    Ok(graph.outputs().to_vec())
}

fn main() {
    // Output piped into `head` and closed early ends the process quietly,
    // like other command-line tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at startup,
    // before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            model,
            inputs,
            output,
            fetches,
            device,
            threads,
            profile,
            trace,
        } => run(
            &model,
            &inputs,
            output.as_deref(),
            &fetches,
            &device,
            RunExtras {
                threads,
                profile,
                trace,
            },
        ),
        Command::Show {
            model,
            dot,
            optimized,
            after,
            json,
            compile,
        } => {
            if let Some(pass) = after {
                show_after(&model, &pass, &compile)
            } else if optimized {
                show_optimized(&model, dot.as_deref(), json, &compile)
            } else {
                show(&model, dot.as_deref())
            }
        }
        Command::Plan {
            model,
            svg,
            compile,
        } => plan(&model, &svg, &compile),
        Command::Optimize {
            model,
            explain,
            output,
            compile,
        } => optimize(&model, explain, output.as_deref(), &compile),
        Command::Compile {
            model,
            output,
            name,
            target,
            dims,
            exe,
        } => compile_aot(&model, &output, name, &target, dims, exe),
        Command::Import {
            model,
            output,
            trainable,
            constants,
            sequences,
            absent,
        } => import_onnx(&model, &output, trainable, &constants, &sequences, &absent),
    };
    if let Err(e) = result {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}

/// The element shapes of `--sequence NAME=SHAPE,...`.
fn sequence_spec(spec: &str) -> Result<(String, Vec<kiln::graph::Shape>)> {
    let (name, shapes) = spec
        .split_once('=')
        .with_context(|| format!("--sequence '{spec}' is not NAME=SHAPE,..."))?;
    let shapes = shapes
        .split(',')
        .map(|s| {
            let s = s.trim();
            if s == "scalar" {
                return Ok(kiln::graph::Shape::scalar());
            }
            let dims = s
                .split('x')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<usize>, _>>()
                .with_context(|| {
                    format!(
                        "--sequence '{spec}': element shape '{s}' is not dims joined by 'x' \
                         (such as 2x3) or `scalar`"
                    )
                })?;
            Ok(kiln::graph::Shape::from(dims))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), shapes))
}

fn import_onnx(
    model: &Path,
    output: &Path,
    trainable: bool,
    constants: &[String],
    sequences: &[String],
    absent: &[String],
) -> Result<()> {
    let mut options = kiln::onnx::ImportOptions {
        initializers_as_variables: trainable,
        absent_inputs: absent.iter().cloned().collect(),
        ..Default::default()
    };
    for spec in sequences {
        let (name, shapes) = sequence_spec(spec)?;
        options.sequence_inputs.insert(name, shapes);
    }
    for spec in constants {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--constant '{spec}' is not NAME=FILE.npy"))?;
        options
            .constant_inputs
            .insert(name.to_string(), npy::read(file)?);
    }
    let graph = kiln_onnx::import_with(model, &options)?;
    graph
        .save(output)
        .with_context(|| format!("writing {}", output.display()))?;
    let inputs: Vec<String> = graph
        .placeholders()
        .iter()
        .map(|&p| format!("{}: {}", graph.node(p).name, graph.node(p).ty))
        .collect();
    let outputs: Vec<String> = graph
        .outputs()
        .iter()
        .map(|&o| format!("{}: {}", graph.node(o).name, graph.node(o).ty))
        .collect();
    println!(
        "{} -> {}: {} nodes; inputs {}; outputs {}",
        model.display(),
        output.display(),
        graph.len(),
        inputs.join(", "),
        outputs.join(", ")
    );
    Ok(())
}

fn load(model: &Path) -> Result<Graph> {
    Ok(Graph::load(model)?)
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

fn write_text(path: &Path, text: &str) -> Result<()> {
    if path == Path::new("-") {
        print!("{text}");
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn compile_aot(
    model: &Path,
    dir: &Path,
    name: Option<String>,
    target: &str,
    dims: Vec<String>,
    exe: bool,
) -> Result<()> {
    let target: kiln_codegen::cpu::Target = target.parse()?;
    let graph = load(model)?;
    let name = name.unwrap_or_else(|| {
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut n: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
            n.insert_str(0, "model_");
        }
        n
    });
    let args = CompileArgs {
        dims,
        freeze: true,
        disable: Vec::new(),
    };
    let bindings = args.bindings(&graph)?;
    for s in bindings.keys() {
        if !args
            .dims
            .iter()
            .any(|d| d.split_once('=').is_some_and(|(n, _)| n == s))
        {
            bail!("symbolic dim '{s}' must be bound: add --dim {s}=N");
        }
    }
    let c = args.compile(&graph)?;
    // Output names as file names ('/' in a scoped name becomes '_').
    let names: Vec<String> = default_fetches(&graph)?
        .iter()
        .map(|&o| graph.node(o).name.replace(['/', '\\'], "_"))
        .collect();
    let m = kiln::aot::compile_c(&c.program, &name, target, &names, dir)?;
    let (obj, lib) = (&m.object, &m.library);
    println!(
        "{}: {} step(s), {} function(s), {} bytes of object code and weights -> {}, {}, {}",
        model.display(),
        m.code.steps,
        m.code.functions.len(),
        m.code.bytes.len(),
        obj.display(),
        m.header.display(),
        lib.display()
    );
    if exe {
        let main_c = dir.join(format!("{name}_main.c"));
        let bin = dir.join(&name);
        std::fs::write(
            &main_c,
            kiln_codegen::cpu::aot::standalone_main(&c.program, &name, &names),
        )
        .with_context(|| format!("writing {}", main_c.display()))?;
        let out = std::process::Command::new("cc")
            .arg("-O2")
            .arg("-o")
            .arg(&bin)
            .arg(&main_c)
            .arg(obj)
            .arg(lib)
            .args(kiln::aot::SYSTEM_LIBS)
            .output()
            .context("--exe needs a C compiler: 'cc' did not run")?;
        if !out.status.success() {
            bail!(
                "cc could not build {}:\n{}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        println!("standalone program: {} ({size} bytes)", bin.display());
    }
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
            "no pass named '{pass}' in the pipeline; passes: {}",
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

fn plan(model: &Path, svg: &Path, args: &CompileArgs) -> Result<()> {
    let graph = load(model)?;
    let c = args.compile(&graph)?;
    let p = &c.program;
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
    let title = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_text(svg, &kiln_optimizer::svg::plan_svg(p, &title))
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
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

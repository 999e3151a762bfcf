//! `kiln run`: run a model on .npy inputs and print its outputs: a summary
//! of each (NaN and infinities counted apart), the predicted class of an
//! output that is a probability distribution, whole tensors (`--full`) or
//! JSON (`--json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use kiln::graph::{Array, DType, Graph, Scalar};
use kiln::{npy, Device, Session};

use super::bench::ProfileTable;
use super::common::{load, read_input, refuse_overwriting, Exec};

/// The most runs `--profile` may time.
const MAX_PROFILE_RUNS: usize = 100_000;

/// The most kernel executions `--trace` writes (later runs are left out).
const MAX_TRACE_EVENTS: usize = 1_000_000;

/// Rows of a batch the probability read-out prints.
const READOUT_ROWS: usize = 5;

/// Arguments of `kiln run`.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  \
    kiln run examples/mlp.kiln --input x=examples/digit.npy\n  \
    kiln run model.onnx -i pixels=cat.npy --top 5 -o out/\n  \
    kiln run examples/mlp.kiln -i x=examples/digit.npy --profile --runs 50")]
pub struct Args {
    /// The model: a .kiln file, or an .onnx file (imported in memory).
    pub model: PathBuf,
    /// An input as NAME=FILE.npy (repeatable).
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Write each fetched tensor to DIR/NAME.npy (DIR is created if needed).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub exec: Exec,
    /// Print every value of each output, row by row.
    #[arg(long, conflicts_with = "json")]
    pub full: bool,
    /// Print only JSON: each output's name, dtype, shape and values (nested
    /// by shape; NaN and infinities as the strings "nan", "inf", "-inf").
    #[arg(long)]
    pub json: bool,
    /// For an output that is a probability distribution over its last axis,
    /// list the K most likely classes of each row (default: the predicted
    /// class and the next).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub top: Option<u64>,
    /// Time each kernel over --runs warm runs and print its mean time.
    #[arg(long, conflicts_with = "json")]
    pub profile: bool,
    /// Runs for --profile and --trace (after one warm-up run).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PROFILE_RUNS as u64))]
    pub runs: u64,
    /// Like --profile, and write the kernel timeline of those runs as
    /// Chrome trace JSON (open it in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    pub trace: Option<PathBuf>,
}

/// The names to fetch: `fetches`, else the model's declared outputs.
pub fn fetch_names(graph: &Graph, model: &Path, fetches: &[String]) -> Result<Vec<String>> {
    if !fetches.is_empty() {
        return Ok(fetches.to_vec());
    }
    if graph.outputs().is_empty() {
        bail!(
            "{} declares no outputs; name the nodes to fetch with --fetch",
            model.display()
        );
    }
    Ok(graph
        .outputs()
        .iter()
        .map(|&o| graph.node(o).name.clone())
        .collect())
}

/// Runs `kiln run`.
pub fn main(a: Args) -> Result<()> {
    let device: Device = a.exec.device.parse()?;
    if let Some(dir) = &a.output {
        refuse_overwriting(&a.model, dir, "--output")?;
        if dir.exists() && !dir.is_dir() {
            bail!(
                "--output {}: that path is a file, not a directory (the outputs are \
                 written as DIR/NAME.npy)",
                dir.display()
            );
        }
    }
    if let Some(trace) = &a.trace {
        refuse_overwriting(&a.model, trace, "--trace")?;
        if trace.is_dir() {
            bail!(
                "--trace {}: that path is a directory, not a file",
                trace.display()
            );
        }
    }
    if (a.profile || a.trace.is_some()) && device == Device::Reference {
        bail!("--profile and --trace need a compiling device (--device cpu)");
    }
    let graph = load(&a.model)?;
    let feeds = a
        .inputs
        .iter()
        .map(|s| read_input(s))
        .collect::<Result<Vec<_>>>()?;
    let fetch_names = fetch_names(&graph, &a.model, &a.exec.fetches)?;
    let t0 = Instant::now();
    let mut sess = Session::with_options(
        &graph,
        device,
        kiln::SessionOptions {
            threads: a.exec.threads,
            ..Default::default()
        },
    )?;
    let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let fetch_refs: Vec<&str> = fetch_names.iter().map(String::as_str).collect();
    let values = sess.run(&feed_refs, &fetch_refs)?;
    let elapsed = t0.elapsed();
    let mut files = Vec::new();
    if let Some(dir) = &a.output {
        std::fs::create_dir_all(dir).map_err(|e| kiln::Error::io("creating", dir, e))?;
        for (name, v) in fetch_names.iter().zip(&values) {
            let file = dir.join(format!("{}.npy", name.replace('/', "__")));
            npy::write(&file, v)?;
            files.push(file);
        }
    }
    if a.json {
        let outputs: Vec<serde_json::Value> = fetch_names
            .iter()
            .zip(&values)
            .enumerate()
            .map(|(i, (name, v))| {
                let mut o = serde_json::json!({
                    "name": name,
                    "dtype": v.dtype().to_string(),
                    "shape": v.shape(),
                    "values": json_values(v),
                });
                if let Some(f) = files.get(i) {
                    o["file"] = f.display().to_string().into();
                }
                o
            })
            .collect();
        let doc = serde_json::json!({
            "model": a.model.display().to_string(),
            "device": device.to_string(),
            "time_ms": elapsed.as_secs_f64() * 1e3,
            "outputs": outputs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{} on {device}: {} nodes, {:.3} ms",
        a.model.display(),
        graph.len(),
        elapsed.as_secs_f64() * 1e3
    );
    for (i, (name, v)) in fetch_names.iter().zip(&values).enumerate() {
        println!("  {name}: {}{:?} {}", v.dtype(), v.shape(), summary(v));
        for line in probability_readout(v, a.top.map(|k| k as usize)) {
            println!("    {line}");
        }
        if a.full {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            write_full(&mut out, v, "    ")?;
            out.flush()?;
        }
        if let Some(f) = files.get(i) {
            println!("    -> {}", f.display());
        }
    }
    if a.profile || a.trace.is_some() {
        profile_runs(
            &mut sess,
            &feed_refs,
            &fetch_refs,
            a.runs as usize,
            a.trace.as_deref(),
        )?;
    }
    Ok(())
}

/// Times `runs` more (warm) runs kernel by kernel; prints each kernel's
/// mean and writes the timeline as a Chrome trace.
fn profile_runs(
    sess: &mut Session,
    feeds: &[(&str, &Array)],
    fetches: &[&str],
    runs: usize,
    trace: Option<&Path>,
) -> Result<()> {
    sess.set_profiling(true);
    let mut table = ProfileTable::default();
    let mut timeline = Vec::new();
    let mut traced_runs = 0;
    let t = Instant::now();
    for _ in 0..runs {
        sess.run(feeds, fetches)?;
        let events = sess.take_profile();
        table.add_run(&events);
        if trace.is_some() && timeline.len() + events.len() <= MAX_TRACE_EVENTS {
            timeline.extend(events);
            traced_runs += 1;
        }
    }
    sess.set_profiling(false);
    let wall = t.elapsed().as_secs_f64() * 1e6 / runs.max(1) as f64;
    println!("mean wall time of a profiled run: {wall:.1} us");
    table.print();
    if let Some(path) = trace {
        let t0 = timeline.first().map(|e| e.start_us).unwrap_or(0.0);
        let trace_events: Vec<serde_json::Value> = timeline
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
            .map_err(|e| kiln::Error::io("writing", path, e))?;
        if traced_runs < runs {
            println!(
                "wrote {} (the first {traced_runs} runs: a trace holds at most \
                 {MAX_TRACE_EVENTS} kernel executions)",
                path.display()
            );
        } else {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// A number for people: integers as they are, other values with up to six
/// decimals, very large or small ones in exponent form; `nan`, `inf`, `-inf`.
fn number(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    if x.abs() >= 1e6 || x.abs() < 1e-4 {
        return format!("{x:.4e}");
    }
    format!("{x:.6}")
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// One element as text: integers exactly, floats by [`number`], bools as
/// `true`/`false`.
fn element(s: Scalar) -> String {
    match s {
        Scalar::I64(v) => v.to_string(),
        Scalar::U64(v) => v.to_string(),
        Scalar::Bool(v) => v.to_string(),
        s => number(s.to_f64()),
    }
}

/// A one-line look at an array: its first values and, for several, the
/// min, mean and max of its finite values and how many are NaN or infinite.
fn summary(a: &Array) -> String {
    let head: Vec<String> = (0..a.len().min(6)).map(|i| element(a.get(i))).collect();
    let mut s = format!(
        "[{}{}]",
        head.join(", "),
        if a.len() > 6 { ", ..." } else { "" }
    );
    if a.len() <= 1 || a.dtype() == DType::Bool {
        return s;
    }
    let v = a.to_f64_vec();
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if !finite.is_empty() {
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        s.push_str(&format!(" min {min:.4} mean {mean:.4} max {max:.4}"));
    }
    let nan = v.iter().filter(|x| x.is_nan()).count();
    let pos = v.iter().filter(|&&x| x == f64::INFINITY).count();
    let neg = v.iter().filter(|&&x| x == f64::NEG_INFINITY).count();
    if nan + pos + neg > 0 {
        let mut parts = Vec::new();
        if finite.is_empty() {
            parts.push("no finite values".to_string());
        } else if finite.len() < v.len() {
            s.push_str(" (of the finite values)");
        }
        for (n, what) in [(nan, "NaN"), (pos, "+inf"), (neg, "-inf")] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        s.push_str(&format!("; {}", parts.join(", ")));
    }
    s
}

/// Whether `a` is a probability distribution over its last axis: floats,
/// a last dim of at least 2, every value finite and non-negative, and each
/// row summing to 1 (within 1e-3, or 1e-2 for the 16-bit floats).
fn is_distribution(a: &Array) -> bool {
    let Some(&classes) = a.shape().last() else {
        return false;
    };
    if !a.dtype().is_float() || classes < 2 || a.is_empty() {
        return false;
    }
    let tolerance = if a.dtype().is_half() { 1e-2 } else { 1e-3 };
    let v = a.to_f64_vec();
    v.iter().all(|x| x.is_finite() && *x >= 0.0)
        && v.chunks(classes)
            .all(|row| (row.iter().sum::<f64>() - 1.0).abs() <= tolerance)
}

/// A probability for people: at most three decimals, tiny ones in exponent form.
fn probability(p: f64) -> String {
    if p > 0.0 && p < 1e-3 {
        return format!("{p:.1e}");
    }
    if (0.9995..1.0).contains(&p) {
        return ">0.999".into();
    }
    let s = format!("{p:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.into()
    }
}

/// For an output that is a probability distribution over its last axis,
/// a line per row (the first few of a batch): the predicted class with its
/// probability and the runner-up, or with `top`, the K most likely.
fn probability_readout(a: &Array, top: Option<usize>) -> Vec<String> {
    if !is_distribution(a) {
        return Vec::new();
    }
    let shape = a.shape();
    let classes = shape[shape.len() - 1];
    let lead = &shape[..shape.len() - 1];
    let v = a.to_f64_vec();
    let rows = v.len() / classes;
    let mut lines = Vec::new();
    for (r, row) in v.chunks(classes).enumerate().take(READOUT_ROWS) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
        let text = match top {
            None => format!(
                "predicted class {} with probability {} (next: {} at {})",
                order[0],
                probability(row[order[0]]),
                order[1],
                probability(row[order[1]])
            ),
            Some(1) => format!(
                "predicted class {} with probability {}",
                order[0],
                probability(row[order[0]])
            ),
            Some(k) => {
                let items: Vec<String> = order
                    .iter()
                    .take(k)
                    .map(|&c| format!("class {c} at {}", probability(row[c])))
                    .collect();
                format!("top {}: {}", k.min(classes), items.join(", "))
            }
        };
        lines.push(if rows == 1 {
            text
        } else {
            format!("row {}: {text}", row_index(lead, r))
        });
    }
    if rows > READOUT_ROWS {
        lines.push(format!("... and {} more rows", rows - READOUT_ROWS));
    }
    lines
}

/// Row `r` of leading dims `lead` as an index: `3`, or `[0, 3]`.
fn row_index(lead: &[usize], mut r: usize) -> String {
    if lead.len() == 1 {
        return r.to_string();
    }
    let mut idx = vec![0; lead.len()];
    for (i, &d) in lead.iter().enumerate().rev() {
        idx[i] = r % d.max(1);
        r /= d.max(1);
    }
    format!("{idx:?}")
}

/// Writes every value of `a` numpy-style, each line after `indent`:
/// nested brackets, one innermost row a line, columns aligned. Streams, so
/// a large tensor takes no more memory than a line.
fn write_full(out: &mut impl Write, a: &Array, indent: &str) -> std::io::Result<()> {
    let width = (0..a.len())
        .map(|i| element(a.get(i)).chars().count())
        .max()
        .unwrap_or(0);
    let full = Full { a, width, indent };
    out.write_all(indent.as_bytes())?;
    full.nest(out, a.shape(), 0, 0)?;
    out.write_all(b"\n")
}

/// An array being written by [`write_full`].
struct Full<'a> {
    a: &'a Array,
    width: usize,
    indent: &'a str,
}

impl Full<'_> {
    /// Writes the block of `shape` at element `offset`, `depth` levels in.
    fn nest(
        &self,
        out: &mut impl Write,
        shape: &[usize],
        offset: usize,
        depth: usize,
    ) -> std::io::Result<()> {
        let width = self.width;
        match shape {
            [] => write!(out, "{}", element(self.a.get(offset))),
            [n] => {
                out.write_all(b"[")?;
                for i in 0..*n {
                    let sep = if i > 0 { ", " } else { "" };
                    write!(out, "{sep}{:>width$}", element(self.a.get(offset + i)))?;
                }
                out.write_all(b"]")
            }
            [n, rest @ ..] => {
                let chunk: usize = rest.iter().product();
                out.write_all(b"[")?;
                for i in 0..*n {
                    if i > 0 {
                        out.write_all(b",")?;
                        // numpy's blank lines between blocks of rank 2 and up.
                        out.write_all("\n".repeat(rest.len()).as_bytes())?;
                        write!(out, "{}{:2$}", self.indent, "", depth + 1)?;
                    }
                    self.nest(out, rest, offset + i * chunk, depth + 1)?;
                }
                out.write_all(b"]")
            }
        }
    }
}

/// One element as JSON: integers exactly, floats as numbers (NaN and
/// infinities as the strings `nan`, `inf`, `-inf`), bools as booleans.
fn json_element(s: Scalar) -> serde_json::Value {
    use serde_json::Value;
    let float = |x: f64, text: String| -> Value {
        if x.is_nan() {
            "nan".into()
        } else if x.is_infinite() {
            if x > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            // The shortest text that reads back as the same value of its
            // own type (0.1f32 as 0.1, not 0.10000000149011612).
            text.parse::<f64>().map_or(Value::Null, Value::from)
        }
    };
    match s {
        Scalar::F32(v) => float(v as f64, v.to_string()),
        Scalar::F64(v) => float(v, v.to_string()),
        Scalar::F16(v) => float(v.to_f64(), v.to_f32().to_string()),
        Scalar::BF16(v) => float(v.to_f64(), v.to_f32().to_string()),
        Scalar::I64(v) => v.into(),
        Scalar::U64(v) => v.into(),
        Scalar::Bool(v) => v.into(),
        s => (s.to_f64() as i64).into(),
    }
}

/// `a`'s values as JSON arrays nested by its shape (a rank-0 array is its value).
fn json_values(a: &Array) -> serde_json::Value {
    fn go(a: &Array, shape: &[usize], offset: usize) -> serde_json::Value {
        match shape {
            [] => json_element(a.get(offset)),
            [n, rest @ ..] => {
                let chunk: usize = rest.iter().product();
                (0..*n)
                    .map(|i| go(a, rest, offset + i * chunk))
                    .collect::<Vec<_>>()
                    .into()
            }
        }
    }
    go(a, a.shape(), 0)
}

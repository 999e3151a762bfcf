//! `kiln-bench --zoo`: the model zoo (issue 20). `bench/zoo/setup.sh`
//! exports PyTorch, torchvision and transformers models with fixed seeds
//! and random weights to ONNX under `target/zoo/` (cached); then for each
//! model, batch and thread count kiln (this executable, `--zoo-probe`), ONNX
//! Runtime and tract (`bench/zoo/peer.py`) each run it in a process of their
//! own, one after the other, and the table compares their latency (median,
//! p90), outputs (max abs diff against ONNX Runtime), compile time plus
//! first run and peak RSS, with geometric means of the ratios. With
//! `--aot`, each model is also built ahead of time (`--zoo-aot-build`, the
//! standalone program of `kiln compile --exe`) and timed by that program's
//! own `--time` against kiln's JIT. The results go to
//! `target/zoo/results.json` and `target/zoo/results.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kiln::prelude::{Array, Device, FromOnnx, Graph, Session, SessionOptions};
use serde_json::{json, Value};

use crate::{peak_rss_kib, percentile};

/// Untimed runs after the first.
const WARMUP: usize = 3;
/// The fewest timed runs, however long they take.
const MIN_RUNS: usize = 10;
/// The most timed runs.
const MAX_RUNS: usize = 100_000;
/// A kiln output further than this from ONNX Runtime's, relative to the
/// largest magnitude of ONNX Runtime's output, is wrong.
const MAX_REL_DIFF: f64 = 1e-3;

/// What `--zoo` was asked for.
pub struct Options<'a> {
    pub only: &'a [String],
    pub threads: &'a [usize],
    pub batch: &'a [usize],
    pub seconds: f64,
    /// Also each model compiled ahead of time (`--aot`).
    pub aot: bool,
}

/// The repository: where `bench/zoo` and `target/zoo` are.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is in the repository")
        .to_path_buf()
}

fn venv(root: &Path) -> PathBuf {
    std::env::var_os("KILN_ZOO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/zoo-venv"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- the probe: kiln on one model, in a process of its own -------------

/// `--zoo-probe DIR`: imports DIR/model.onnx, runs it on DIR's inputs
/// with `threads` threads (compile + first run, warm-ups, then timed runs
/// for `seconds`), writes the outputs as DIR/kiln_out_<k>.npy and prints
/// one line of JSON (an error too, then exits 1).
pub fn probe(dir: &Path, threads: usize, seconds: f64) -> Result<()> {
    let mut j = probe_model(dir, threads, seconds)
        .unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")}));
    j["engine"] = "kiln".into();
    j["threads"] = threads.into();
    j["peak_rss_kib"] = peak_rss_kib().into();
    println!("{j}");
    if j["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}

fn probe_model(dir: &Path, threads: usize, seconds: f64) -> Result<Value> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let mut inputs: Vec<(String, Array)> = Vec::new();
    for i in meta["inputs"].as_array().context("meta.json: no inputs")? {
        let name = i["name"]
            .as_str()
            .context("meta.json: an input without a name")?;
        let file = dir.join(
            i["file"]
                .as_str()
                .context("meta.json: an input without a file")?,
        );
        inputs.push((name.to_string(), kiln::npy::read(&file)?));
    }
    let t0 = Instant::now();
    let graph = Graph::from_onnx(dir.join("model.onnx")).context("import")?;
    let t_import = t0.elapsed();
    let fetch: Vec<String> = graph
        .outputs()
        .iter()
        .map(|&o| graph.node(o).name.clone())
        .collect();
    let opts = SessionOptions {
        threads: Some(threads),
        ..Default::default()
    };
    let s = Session::with_options(&graph, Device::Cpu, opts).context("compile")?;
    let t_session = t0.elapsed();
    let feeds: Vec<(&str, &Array)> = inputs.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let fetch_refs: Vec<&str> = fetch.iter().map(String::as_str).collect();
    let outs = s.run(&feeds, &fetch_refs).context("first run")?;
    let t_first = t0.elapsed();
    for (k, o) in outs.iter().enumerate() {
        kiln::npy::write(dir.join(format!("kiln_out_{k}.npy")), o)?;
    }
    for _ in 0..WARMUP {
        s.run(&feeds, &fetch_refs)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < MAX_RUNS
        && (times.len() < MIN_RUNS || start.elapsed().as_secs_f64() < seconds)
    {
        let t = Instant::now();
        s.run(&feeds, &fetch_refs)?;
        times.push(ms(t.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "ok": true,
        "median_ms": percentile(&times, 0.5),
        "p90_ms": percentile(&times, 0.9),
        "runs": times.len(),
        "import_ms": ms(t_import),
        "session_ms": ms(t_session - t_import),
        "compile_first_ms": ms(t_first),
        "first_run_ms": ms(t_first - t_session),
        "outputs": outs.len(),
        "output_names": fetch,
        "nodes": graph.len(),
    }))
}

/// `--zoo-aot-build DIR`: imports DIR/model.onnx, compiles it ahead of
/// time with its standalone program (`kiln compile --exe`'s) into DIR/aot
/// and prints one line of JSON: the build's time and the output files in
/// the order of the JIT's outputs (an error too, then exits 1).
pub fn aot_build(dir: &Path) -> Result<()> {
    let j =
        aot_build_model(dir).unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")}));
    println!("{j}");
    if j["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}

fn aot_build_model(dir: &Path) -> Result<Value> {
    let cc = kiln::aot::CCompiler::find(None)?;
    let t0 = Instant::now();
    let graph = Graph::from_onnx(dir.join("model.onnx")).context("import")?;
    let fetch = graph.outputs();
    let names: Vec<String> = fetch.iter().map(|&o| graph.node(o).name.clone()).collect();
    let opts = kiln_optimizer::CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let bindings = kiln::graph::Bindings::new();
    let program = kiln_optimizer::compile(&graph, fetch, &bindings, &opts)
        .context("compile")?
        .program;
    let out = dir.join("aot");
    let target = kiln_codegen::cpu::Target::Host;
    kiln::aot::compile_standalone(&program, "model", target, &names, &out, &cc)
        .context("compile ahead of time")?;
    Ok(json!({
        "ok": true,
        "build_ms": ms(t0.elapsed()),
        "files": kiln_codegen::cpu::aot::output_files(&names),
    }))
}

/// The ahead-of-time program of `dir` (built by `aot_build`) on the
/// model's inputs with `threads` threads, timed by its `--time`: its JSON,
/// and the max abs difference of its outputs from the JIT's
/// (DIR/kiln_out_<k>.npy).
fn run_aot(
    dir: &Path,
    meta: &Value,
    files: &[Value],
    threads: usize,
    secs: &str,
    limit: Duration,
) -> Value {
    let out = dir.join("aot/out");
    let _ = std::fs::remove_dir_all(&out);
    let mut c = Command::new(dir.join("aot/model"));
    for i in meta["inputs"].as_array().into_iter().flatten() {
        let (Some(name), Some(file)) = (i["name"].as_str(), i["file"].as_str()) else {
            continue;
        };
        c.arg(format!("{name}={}", dir.join(file).display()));
    }
    c.arg("-o")
        .arg(&out)
        .args(["--time", secs])
        .env("KILN_NUM_THREADS", threads.to_string());
    let mut j = run_engine(
        c,
        &dir.join(format!("aot-t{threads}.out")),
        &dir.join(format!("aot-t{threads}.log")),
        None,
        limit,
    );
    if ok(&j) {
        let mut worst = 0.0f64;
        for (k, f) in files.iter().enumerate() {
            let pair = (|| -> Result<f64> {
                let a = kiln::npy::read(out.join(f.as_str().context("a file name")?))?;
                let b = kiln::npy::read(dir.join(format!("kiln_out_{k}.npy")))?;
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                ensure!(
                    a.len() == b.len(),
                    "output {k}: {} values, the JIT's {}",
                    a.len(),
                    b.len()
                );
                Ok(a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max))
            })();
            match pair {
                Ok(d) => worst = worst.max(d),
                Err(e) => {
                    j["ok"] = false.into();
                    j["error"] = format!("outputs: {e:#}").into();
                    return j;
                }
            }
        }
        j["max_abs_diff_jit"] = worst.into();
    }
    j
}

// ---- the driver ----------------------------------------------------------

/// Runs `cmd` with stdout and stderr in files, killing it after `limit`;
/// the JSON it printed last (on stdout, or in `json_file` if given), or an
/// error with the end of its stderr.
fn run_engine(
    mut cmd: Command,
    out: &Path,
    log: &Path,
    json_file: Option<&Path>,
    limit: Duration,
) -> Value {
    let spawn = |cmd: &mut Command| -> Result<std::process::Child> {
        cmd.stdout(Stdio::from(std::fs::File::create(out)?))
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .stdin(Stdio::null());
        Ok(cmd.spawn()?)
    };
    let mut child = match spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return json!({"ok": false, "error": format!("starting {cmd:?}: {e:#}")}),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let text = std::fs::read_to_string(json_file.unwrap_or(out)).unwrap_or_default();
    if let Some(j) = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
    {
        return j;
    }
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let why = match status {
        None => format!("killed after {} s", limit.as_secs()),
        Some(s) => format!("exited with {s}"),
    };
    json!({"ok": false, "error": format!("{why}: {}", tail.join(" | "))})
}

/// How kiln's outputs compare with ONNX Runtime's (DIR/kiln_out_<k>.npy
/// against DIR/ort_out_<k>.npy): the max abs difference over all outputs,
/// and that relative to the largest magnitude of ONNX Runtime's outputs.
fn diff(dir: &Path, n: usize) -> Result<(f64, f64)> {
    let (mut max_diff, mut max_ref) = (0.0f64, 0.0f64);
    for k in 0..n {
        let kiln = kiln::npy::read(dir.join(format!("kiln_out_{k}.npy")))?;
        let ort = kiln::npy::read(dir.join(format!("ort_out_{k}.npy")))?;
        ensure!(
            kiln.shape() == ort.shape(),
            "output {k}: kiln's shape {:?}, ONNX Runtime's {:?}",
            kiln.shape(),
            ort.shape()
        );
        for (a, b) in kiln.to_f64_vec().iter().zip(ort.to_f64_vec()) {
            // Equal (infinities too) or both NaN: no difference; NaN on
            // one side only: an infinite one.
            let d = if *a == b || (a.is_nan() && b.is_nan()) {
                0.0
            } else {
                (a - b).abs()
            };
            max_diff = if d.is_nan() {
                f64::INFINITY
            } else {
                max_diff.max(d)
            };
            if b.is_finite() {
                max_ref = max_ref.max(b.abs());
            }
        }
    }
    Ok((max_diff, max_diff / max_ref.max(1e-30)))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn ok(v: &Value) -> bool {
    v.get("ok") == Some(&Value::Bool(true))
}

fn geomean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

/// `--zoo`: sets up and exports the zoo, runs every engine on every model,
/// prints the table and writes target/zoo/results.{json,md}.
pub fn run(o: &Options) -> Result<()> {
    let t_all = Instant::now();
    ensure!(
        o.seconds.is_finite() && o.seconds > 0.0,
        "--time {}: give a number of seconds above 0",
        o.seconds
    );
    ensure!(
        !o.threads.is_empty() && o.threads.iter().all(|&t| t > 0),
        "--threads: give thread counts above 0"
    );
    ensure!(
        !o.batch.is_empty() && o.batch.iter().all(|&b| b > 0),
        "--batch: give batch sizes above 0"
    );
    let root = root();
    let zoo = root.join("target/zoo");
    let csv = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut setup = Command::new("bash");
    setup.arg(root.join("bench/zoo/setup.sh"));
    for n in o.only {
        setup.args(["--only", n]);
    }
    setup
        .args(["--batch", &csv(o.batch)])
        .arg("--out")
        .arg(&zoo);
    let t_setup = Instant::now();
    let status = setup
        .status()
        .context("running bench/zoo/setup.sh (needs bash and python3 with venv)")?;
    ensure!(status.success(), "bench/zoo/setup.sh failed ({status})");
    let setup_s = t_setup.elapsed().as_secs_f64();
    let python = venv(&root).join("bin/python");
    let peer = root.join("bench/zoo/peer.py");
    let has_tract = Command::new(&python)
        .args(["-c", "import tract"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let models: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("models.json"))?)?;
    let exe = std::env::current_exe()?;
    let limit = Duration::from_secs_f64((40.0 * o.seconds).max(300.0));
    let secs = o.seconds.to_string();
    eprintln!(
        "zoo: {} exports (model, batch) x threads {} x {} s per engine; tract {}",
        models.len(),
        csv(o.threads),
        o.seconds,
        if has_tract {
            "at 1 thread (its Python bindings have no thread setting)"
        } else {
            "absent (no `tract` in the venv)"
        }
    );
    let mut rows = Vec::new();
    for m in &models {
        let name = m["model"].as_str().unwrap_or("?");
        let batch = m["batch"].as_u64().unwrap_or(0);
        let dir = PathBuf::from(m["dir"].as_str().context("models.json: no dir")?);
        if let Some(e) = m.get("error") {
            rows.push(json!({"model": name, "batch": batch, "threads": Value::Null, "error": e}));
            continue;
        }
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
        let build = if o.aot {
            let mut c = Command::new(&exe);
            c.arg("--zoo-aot-build").arg(&dir);
            run_engine(
                c,
                &dir.join("aot-build.json"),
                &dir.join("aot-build.log"),
                None,
                limit,
            )
        } else {
            Value::Null
        };
        for &t in o.threads {
            for f in std::fs::read_dir(&dir)? {
                let p = f?.path();
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if ["kiln_out_", "ort_out_", "tract_out_"]
                    .iter()
                    .any(|s| n.starts_with(s))
                {
                    std::fs::remove_file(&p)?;
                }
            }
            let load_before = loadavg();
            let mut kcmd = Command::new(&exe);
            kcmd.arg("--zoo-probe")
                .arg(&dir)
                .args(["--threads", &t.to_string(), "--time", &secs]);
            let kiln = run_engine(
                kcmd,
                &dir.join(format!("kiln-t{t}.json")),
                &dir.join(format!("kiln-t{t}.log")),
                None,
                limit,
            );
            let peer_run = |engine: &str| {
                let json_file = dir.join(format!("{engine}-t{t}.json"));
                let mut c = Command::new(&python);
                c.arg(&peer)
                    .arg(engine)
                    .arg(&dir)
                    .args([&t.to_string(), &secs])
                    .arg(&json_file);
                run_engine(
                    c,
                    &dir.join(format!("{engine}-t{t}.out")),
                    &dir.join(format!("{engine}-t{t}.log")),
                    Some(&json_file),
                    limit,
                )
            };
            let ort = peer_run("ort");
            let tract = if has_tract && t == 1 {
                peer_run("tract")
            } else {
                Value::Null
            };
            // After kiln's JIT probe, whose outputs it is compared with.
            let aot = match (&build, ok(&kiln)) {
                (Value::Null, _) => Value::Null,
                (b, true) if ok(b) => {
                    let files = b["files"].as_array().cloned().unwrap_or_default();
                    let mut a = run_aot(&dir, &meta, &files, t, &secs, limit);
                    a["build_ms"] = b["build_ms"].clone();
                    a
                }
                (b, true) => b.clone(),
                (_, false) => json!({"ok": false, "error": "kiln's JIT run failed"}),
            };
            let mut row = json!({
                "model": name, "batch": batch, "threads": t,
                "exporter": meta["exporter"], "opset": meta["opset"],
                "kiln": kiln, "ort": ort, "tract": tract, "aot": aot,
                "loadavg": [load_before, loadavg()],
            });
            if ok(&kiln) && ok(&ort) {
                let n = kiln["outputs"].as_u64().unwrap_or(0) as usize;
                let res = if Some(n as u64) != ort["outputs"].as_u64() {
                    Err(anyhow::anyhow!(
                        "kiln gives {n} outputs, ONNX Runtime {}",
                        ort["outputs"]
                    ))
                } else {
                    diff(&dir, n)
                };
                match res {
                    Ok((d, rel)) => {
                        row["max_abs_diff"] = d.into();
                        row["rel_diff"] = if rel.is_finite() {
                            rel.into()
                        } else {
                            "inf".into()
                        };
                        row["wrong"] = (rel > MAX_REL_DIFF).into();
                    }
                    Err(e) => {
                        row["diff_error"] = format!("{e:#}").into();
                        row["wrong"] = true.into();
                    }
                }
            }
            let show = |v: &Value| match num(v, "median_ms") {
                Some(x) => format!("{x:.3} ms"),
                None if v.is_null() => "-".into(),
                None => "error".into(),
            };
            eprintln!(
                "  {name}-b{batch} t{t}: kiln {}, ORT {}, tract {}, AOT {}{}",
                show(&row["kiln"]),
                show(&row["ort"]),
                show(&row["tract"]),
                show(&row["aot"]),
                if row["wrong"] == true {
                    " (kiln's output differs)"
                } else {
                    ""
                }
            );
            rows.push(row);
        }
    }
    let report = render(&rows, o, has_tract);
    println!("\n{report}");
    let wall_s = t_all.elapsed().as_secs_f64();
    println!(
        "zoo: {:.0} s in all (setup and export {setup_s:.0} s)",
        wall_s
    );
    let doc = json!({
        "threads": o.threads, "batch": o.batch, "seconds": o.seconds,
        "has_tract": has_tract, "cpu": cpu_name(),
        "rows": rows, "geomeans": geomeans(&rows, o.threads),
        "wall_s": wall_s, "setup_s": setup_s,
    });
    std::fs::write(
        zoo.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(zoo.join("results.md"), &report)?;
    eprintln!(
        "zoo: wrote {} and {}",
        zoo.join("results.json").display(),
        zoo.join("results.md").display()
    );
    Ok(())
}

/// The machine's 1-minute load average (other processes slow the engines
/// down on a shared machine; it goes to results.json and under the table).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default()
}

/// The ratio peer median / kiln median of a row where both ran and kiln's
/// output is right.
/// The ahead-of-time program's median over the JIT's (the goal: at most
/// 1.1), where its outputs match the JIT's.
fn aot_over_jit(row: &Value) -> Option<f64> {
    if num(&row["aot"], "max_abs_diff_jit")? > 1e-4 {
        return None;
    }
    Some(num(&row["aot"], "median_ms")? / num(&row["kiln"], "median_ms")?)
}

fn ratio(row: &Value, peer: &str) -> Option<f64> {
    if row["wrong"] != false {
        return None;
    }
    Some(num(&row[peer], "median_ms")? / num(&row["kiln"], "median_ms")?)
}

/// Geometric means of ORT/kiln and tract/kiln, per thread count and over all.
fn geomeans(rows: &[Value], threads: &[usize]) -> Value {
    let mut out = serde_json::Map::new();
    let mut groups: Vec<(String, Option<usize>)> = threads
        .iter()
        .map(|&t| {
            (
                format!("{t} thread{}", if t == 1 { "" } else { "s" }),
                Some(t),
            )
        })
        .collect();
    groups.push(("all".into(), None));
    for (label, t) in groups {
        let pick = |peer: &str| -> Vec<f64> {
            rows.iter()
                .filter(|r| t.is_none_or(|t| r["threads"].as_u64() == Some(t as u64)))
                .filter_map(|r| ratio(r, peer))
                .collect()
        };
        let (o, tr) = (pick("ort"), pick("tract"));
        let aot: Vec<f64> = rows
            .iter()
            .filter(|r| t.is_none_or(|t| r["threads"].as_u64() == Some(t as u64)))
            .filter_map(aot_over_jit)
            .collect();
        out.insert(
            label,
            json!({"ort_over_kiln": geomean(&o), "n_ort": o.len(), "tract_over_kiln": geomean(&tr), "n_tract": tr.len(), "aot_over_jit": geomean(&aot), "n_aot": aot.len()}),
        );
    }
    Value::Object(out)
}

/// The results as markdown: the table, the errors under it, the geomeans.
fn render(rows: &[Value], o: &Options, has_tract: bool) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    let mut notes: Vec<String> = Vec::new();
    let mut note = |s: String| {
        notes.push(s);
        format!("[{}]", notes.len())
    };
    let mut head = vec![
        "model",
        "batch",
        "thr",
        "kiln med / p90 ms",
        "ORT med / p90 ms",
        "tract med ms",
        "ORT/kiln",
        "tract/kiln",
        "max abs diff",
        "compile+1st ms kiln / ORT",
        "peak RSS MiB kiln / ORT",
    ];
    if o.aot {
        head.push("AOT med ms (AOT/JIT)");
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let name = r["model"].as_str().unwrap_or("?").to_string();
        let batch = r["batch"].to_string();
        if let Some(e) = r.get("error") {
            let n = note(format!("{name}-b{batch}: {}", e.as_str().unwrap_or("")));
            let mut cells = vec![name, batch, "-".into(), format!("export failed {n}")];
            cells.resize(head.len(), "-".into());
            table.push(cells);
            continue;
        }
        let t = r["threads"].to_string();
        let mut engine = |e: &str, label: &str, p90: bool| {
            let v = &r[e];
            if v.is_null() {
                "-".to_string()
            } else if !ok(v) {
                let n = note(format!(
                    "{name}-b{batch} t{t} {label}: {}",
                    v["error"].as_str().unwrap_or("")
                ));
                format!("error {n}")
            } else if p90 {
                format!("{} / {}", f(num(v, "median_ms"), 3), f(num(v, "p90_ms"), 3))
            } else {
                f(num(v, "median_ms"), 3)
            }
        };
        let kiln = engine("kiln", "kiln", true);
        let ort = engine("ort", "ONNX Runtime", true);
        let tract = engine("tract", "tract", false);
        let mut d = match num(r, "max_abs_diff") {
            Some(x) => format!("{x:.2e}"),
            None => "-".into(),
        };
        if let Some(e) = r.get("diff_error") {
            let n = note(format!(
                "{name}-b{batch} t{t}: outputs: {}",
                e.as_str().unwrap_or("")
            ));
            d = format!("differ {n}");
        } else if r["wrong"] == true {
            d = format!(
                "{d} {}",
                note(format!(
                    "{name}-b{batch} t{t}: kiln's output is off ONNX Runtime's by {} relative to its largest magnitude (over {MAX_REL_DIFF:e}): wrong; left out of the means",
                    r["rel_diff"]
                ))
            );
        }
        let both = |key: &str, scale: f64, p: usize| {
            format!(
                "{} / {}",
                f(num(&r["kiln"], key).map(|x| x * scale), p),
                f(num(&r["ort"], key).map(|x| x * scale), p)
            )
        };
        let aot = if !o.aot {
            None
        } else if r["aot"].is_null() {
            Some("-".into())
        } else if ok(&r["aot"]) {
            let ratio = match aot_over_jit(r) {
                Some(x) => f(Some(x), 2),
                None => note(format!(
                    "{name}-b{batch} t{t}: the ahead-of-time program's outputs are off the JIT's by {} (over 1e-4): left out of the means",
                    r["aot"]["max_abs_diff_jit"]
                )),
            };
            Some(format!("{} ({ratio})", f(num(&r["aot"], "median_ms"), 3)))
        } else {
            let n = note(format!(
                "{name}-b{batch} t{t} ahead of time: {}",
                r["aot"]["error"].as_str().unwrap_or("")
            ));
            Some(format!("error {n}"))
        };
        table.push(
            [
                name,
                batch,
                t,
                kiln,
                ort,
                tract,
                f(ratio(r, "ort"), 2),
                f(ratio(r, "tract"), 2),
                d,
                both("compile_first_ms", 1.0, 0),
                both("peak_rss_kib", 1.0 / 1024.0, 0),
            ]
            .into_iter()
            .chain(aot)
            .collect(),
        );
    }
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(s, "| {} |", padded.join(" | "));
    };
    line(
        &mut s,
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    line(
        &mut s,
        &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>(),
    );
    for row in &table {
        line(&mut s, row);
    }
    let _ = writeln!(
        s,
        "\nms per run: median / p90 over {} s of runs (at least {MIN_RUNS}) after {WARMUP} warm-ups; \
         ratios > 1: kiln faster; max abs diff: kiln against ONNX Runtime over all outputs; \
         compile+1st: import or session creation plus the first run; each engine, model and \
         thread count in a process of its own.{}",
        o.seconds,
        if has_tract {
            " tract runs on one thread (its Python bindings have no thread setting), so only in the 1-thread rows."
        } else {
            " tract: not installed."
        }
    );
    let loads: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["loadavg"].as_array())
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    if let (Some(lo), Some(hi)) = (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            s,
            "\n{}: {} cores; 1-minute load average {lo:.2} to {hi:.2} during the run (the engine timed accounts for up to its thread count; the rest is other processes).",
            cpu_name(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(s);
        for (i, n) in notes.iter().enumerate() {
            // The first 400 characters, up to a backtrace (the whole
            // message is in results.json).
            let n = n.split("Stack backtrace").next().unwrap_or(n).trim();
            let short: String = n.chars().take(400).collect();
            let more = if short.len() < n.len() { " ..." } else { "" };
            let _ = writeln!(s, "[{}] {}{more}", i + 1, short.replace('\n', " "));
        }
    }
    let g = geomeans(rows, o.threads);
    let _ = writeln!(s, "\ngeometric means (rows where kiln's output is right):");
    if let Value::Object(m) = &g {
        for (label, v) in m {
            let _ = writeln!(
                s,
                "- {label}: ORT/kiln {} (n={}), tract/kiln {} (n={}){}",
                f(num(v, "ort_over_kiln"), 3),
                v["n_ort"],
                f(num(v, "tract_over_kiln"), 3),
                v["n_tract"],
                if o.aot {
                    format!(
                        ", AOT/JIT {} (n={})",
                        f(num(v, "aot_over_jit"), 3),
                        v["n_aot"]
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, shape: &[usize], v: Vec<f32>) {
        let a = Array::from_vec(shape.to_vec(), v).expect("shape matches");
        kiln::npy::write(dir.join(file), &a).unwrap();
    }

    #[test]
    fn diff_is_relative_to_onnx_runtimes_largest_magnitude() {
        let dir = std::env::temp_dir().join(format!("kiln-zoo-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, "kiln_out_0.npy", &[2], vec![1.0, -4.0]);
        write(&dir, "ort_out_0.npy", &[2], vec![1.0, -4.5]);
        write(&dir, "kiln_out_1.npy", &[1], vec![f32::NAN]);
        write(&dir, "ort_out_1.npy", &[1], vec![f32::NAN]);
        assert_eq!(diff(&dir, 2).unwrap(), (0.5, 0.5 / 4.5));
        // NaN on one side only: infinitely wrong.
        write(&dir, "ort_out_1.npy", &[1], vec![2.0]);
        let (d, rel) = diff(&dir, 2).unwrap();
        assert!(d.is_infinite() && rel > MAX_REL_DIFF);
        write(&dir, "ort_out_1.npy", &[1, 1], vec![f32::NAN]);
        assert!(diff(&dir, 2).is_err(), "shapes differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_rows_and_failures_stay_out_of_the_means() {
        let run = |ms: f64| json!({"ok": true, "median_ms": ms, "p90_ms": ms});
        let rows = vec![
            json!({"model": "a", "batch": 1, "threads": 1, "kiln": run(2.0), "ort": run(4.0), "tract": run(1.0), "wrong": false,
                   "aot": {"ok": true, "median_ms": 2.2, "max_abs_diff_jit": 0.0}}),
            json!({"model": "b", "batch": 1, "threads": 1, "kiln": run(2.0), "ort": run(1.0), "tract": Value::Null, "wrong": false,
                   "aot": {"ok": true, "median_ms": 1.0, "max_abs_diff_jit": 1.0}}),
            json!({"model": "c", "batch": 1, "threads": 1, "kiln": run(1.0), "ort": run(9.0), "tract": Value::Null, "wrong": true, "rel_diff": 0.5, "max_abs_diff": 1.0}),
            json!({"model": "d", "batch": 1, "threads": 1, "kiln": {"ok": false, "error": "import: no op Foo"}, "ort": run(1.0), "tract": Value::Null}),
        ];
        let g = geomeans(&rows, &[1]);
        assert_eq!(g["1 thread"]["ort_over_kiln"], 1.0);
        assert_eq!(g["1 thread"]["n_ort"], 2);
        assert_eq!(g["all"]["tract_over_kiln"], 0.5);
        // An ahead-of-time program whose outputs are off the JIT's is out.
        assert!((num(&g["1 thread"], "aot_over_jit").unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(g["1 thread"]["n_aot"], 1);
        let o = Options {
            only: &[],
            threads: &[1],
            batch: &[1],
            seconds: 1.0,
            aot: true,
        };
        let md = render(&rows, &o, true);
        assert!(md.contains("2.200 (1.10)"), "{md}");
        assert!(
            md.contains("1.000 ([1])") && md.contains("[1] b-b1 t1: the ahead-of-time"),
            "{md}"
        );
        assert!(md.contains("[2] c-b1 t1: kiln's output is off"), "{md}");
        assert!(
            md.contains("error [3]") && md.contains("[3] d-b1 t1 kiln: import: no op Foo"),
            "{md}"
        );
    }
}

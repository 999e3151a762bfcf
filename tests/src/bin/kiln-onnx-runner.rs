//! `kiln-onnx-runner`: the batch runner of the model-level ONNX fuzzer
//! (issue 17), so that the fuzzer starts no process per mutant.
//!
//! Serve mode (no arguments): reads requests from standard input, one JSON
//! object a line, and answers each with exactly one JSON line on standard
//! output, flushed, in order:
//!
//! ```text
//! {"id": "m1", "model": "/abs/m.onnx", "inputs": {"x": "/abs/x.npy"}, "out_dir": "/abs/out/m1", "device": "cpu"}
//! {"id": "m1", "status": "ok", "outputs": {"y": "/abs/out/m1/output_0.npy"}, "import_ms": 1.2, "run_ms": 3.4}
//! ```
//!
//! `status` is `ok`, `import_error` (kiln refused the model), `run_error`
//! (compiling or running failed), `panic` (a Rust panic, caught; the
//! process goes on serving) or `bad_request` (an unreadable request, model
//! or input file, or an unwritable `out_dir`), the last four with `error`.
//! The model is imported as `kiln import` does with default options (plus
//! `--input-shape` from the fed arrays for inputs with symbolic dims) and
//! run as `kiln run` does (see [`kiln_tests::fuzz_case::run_model`]);
//! `device` is `cpu` (the default) or `reference`. Each output is written
//! to `out_dir/output_<i>.npy`, keyed by its ONNX name, in graph-output order. Standard output carries only answers: anything else
//! the process prints goes to standard error.
//!
//! Replay mode: `kiln-onnx-runner --replay DIR... [--device cpu|reference|both]`
//! replays saved cases (a DIR holding case directories stands for all of
//! them, sorted), one `PASS`/`FAIL` line per case with the worst
//! difference, and exits with status 1 if any fails.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use kiln::graph::Array;
use kiln::Device;
use kiln_tests::fuzz_case::{self, Outcome};
use serde_json::Value;

const USAGE: &str = "\
usage: kiln-onnx-runner                      serve requests: JSON lines on stdin, answers on stdout
       kiln-onnx-runner --replay DIR... [--device cpu|reference|both]
                                             replay saved cases (default device: both)

A request: {\"id\": \"m1\", \"model\": \"/abs/model.onnx\", \"inputs\": {\"x\": \"/abs/x.npy\"},
            \"out_dir\": \"/abs/out/m1\", \"device\": \"cpu\"}   (device: cpu or reference; default cpu)
An answer: {\"id\": \"m1\", \"status\": \"ok\", \"outputs\": {\"y\": \"/abs/out/m1/output_0.npy\"},
            \"import_ms\": 1.2, \"run_ms\": 3.4}
           or status import_error, run_error, panic or bad_request, with \"error\".";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    if args.is_empty() {
        std::process::exit(serve());
    }
    match replay_args(&args) {
        Ok((dirs, devices)) => std::process::exit(replay(&dirs, &devices)),
        Err(e) => {
            eprintln!("kiln-onnx-runner: {e}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// Parses `--replay DIR... [--device D]` (in either order).
fn replay_args(args: &[String]) -> Result<(Vec<PathBuf>, Vec<Device>), String> {
    let mut dirs = Vec::new();
    let mut device = "both".to_string();
    let mut replay = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--replay" => replay = true,
            "--device" => {
                device = it
                    .next()
                    .ok_or("--device needs a value: cpu, reference or both")?
                    .clone();
            }
            s if s.starts_with("--device=") => device = s["--device=".len()..].to_string(),
            s if s.starts_with('-') => return Err(format!("unknown option '{s}'")),
            s if replay => dirs.push(PathBuf::from(s)),
            s => return Err(format!("unexpected argument '{s}' (serve mode takes none)")),
        }
    }
    if !replay {
        return Err("--device is for --replay".into());
    }
    if dirs.is_empty() {
        return Err("--replay needs at least one case directory".into());
    }
    let devices = match device.as_str() {
        "both" => vec![Device::Cpu, Device::Reference],
        "cpu" => vec![Device::Cpu],
        "reference" | "ref" => vec![Device::Reference],
        other => return Err(format!("--device {other}: use cpu, reference or both")),
    };
    Ok((dirs, devices))
}

/// Replays the cases under `dirs` on `devices`; the exit status.
fn replay(dirs: &[PathBuf], devices: &[Device]) -> i32 {
    let cases = match fuzz_case::case_dirs(dirs) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln-onnx-runner: {e}");
            return 2;
        }
    };
    let mut failed = 0;
    let stdout = std::io::stdout();
    for dir in &cases {
        let (pass, line) = fuzz_case::replay_dir(dir, devices);
        failed += usize::from(!pass);
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    eprintln!(
        "{} case(s): {} passed, {failed} failed",
        cases.len(),
        cases.len() - failed
    );
    i32::from(failed > 0)
}

/// The answers' channel: the original standard output. File descriptor 1
/// is pointed at standard error, so that nothing but answers (a `println!`
/// deep in a library, say) can reach the reader.
fn answer_channel() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor calls at startup, before any other thread
    // exists; the duplicate is a fresh descriptor owned by the File alone.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            eprintln!("kiln-onnx-runner: cannot duplicate standard output");
            std::process::exit(2);
        }
        libc::dup2(2, 1);
        std::fs::File::from_raw_fd(fd)
    }
}

/// Serve mode: answers requests until standard input ends; the exit status.
fn serve() -> i32 {
    let mut answers = answer_channel();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("kiln-onnx-runner: reading standard input: {e}");
                return 2;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match std::str::from_utf8(&line) {
            Ok(text) => answer(text),
            Err(e) => failure(&Value::Null, "bad_request", &format!("not UTF-8: {e}")),
        };
        let written = answers
            .write_all(reply.as_bytes())
            .and_then(|_| answers.write_all(b"\n"))
            .and_then(|_| answers.flush());
        if let Err(e) = written {
            // The reader has gone: nothing more to serve.
            eprintln!("kiln-onnx-runner: writing an answer: {e}");
            return 1;
        }
    }
}

/// A failed answer's JSON line (keys in the documented order).
fn failure(id: &Value, status: &str, error: &str) -> String {
    format!(
        "{{\"id\":{id},\"status\":{},\"error\":{}}}",
        Value::from(status),
        Value::from(error)
    )
}

/// The answer to one request line.
fn answer(text: &str) -> String {
    let request: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return failure(&Value::Null, "bad_request", &format!("not JSON: {e}")),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    // A panic outside import and run (reading inputs, writing outputs) is
    // caught too.
    match fuzz_case::guarded(|| serve_request(&request)) {
        Ok(Ok(reply)) => reply,
        Ok(Err((status, error))) => failure(&id, status, &error),
        Err(panic) => failure(&id, "panic", &panic),
    }
}

/// A string field of the request.
fn string_field<'a>(request: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("'{key}' must be a string, not {other}")),
    }
}

/// Serves a parsed request: the `ok` answer line, or a status and error.
fn serve_request(request: &Value) -> Result<String, (&'static str, String)> {
    let bad = |e: String| ("bad_request", e);
    let object = request
        .as_object()
        .ok_or_else(|| bad("a request is a JSON object".into()))?;
    const KEYS: [&str; 5] = ["id", "model", "inputs", "out_dir", "device"];
    if let Some(k) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown key '{k}' (a request has: {})",
            KEYS.join(", ")
        )));
    }
    let id = match object.get("id") {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => return Err(bad("'id' (a string) is missing".into())),
    };
    let model = string_field(request, "model")
        .map_err(bad)?
        .ok_or_else(|| bad("'model' (the .onnx file) is missing".into()))?;
    let model = PathBuf::from(model);
    if !model.is_file() {
        return Err(bad(format!(
            "model {}: {}",
            model.display(),
            if model.exists() {
                "not a regular file"
            } else {
                "no such file"
            }
        )));
    }
    let out_dir = string_field(request, "out_dir")
        .map_err(bad)?
        .ok_or_else(|| bad("'out_dir' is missing".into()))?;
    let out_dir = PathBuf::from(out_dir);
    let device: Device = string_field(request, "device")
        .map_err(bad)?
        .unwrap_or("cpu")
        .parse()
        .map_err(|e: kiln::Error| bad(e.to_string()))?;
    let mut inputs: Vec<(String, Array)> = Vec::new();
    match object.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("input '{name}': the file must be a string")))?;
                let a = kiln::npy::read(file).map_err(|e| bad(format!("input '{name}': {e}")))?;
                inputs.push((name.clone(), a));
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "'inputs' must be an object of NAME: FILE.npy, not {other}"
            )))
        }
    }
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| bad(format!("out_dir {}: {e}", out_dir.display())))?;
    let (outputs, import_ms, run_ms) = match fuzz_case::run_model(&model, &inputs, device) {
        Outcome::Ok {
            outputs,
            import_ms,
            run_ms,
        } => (outputs, import_ms, run_ms),
        Outcome::ImportError(e) => return Err(("import_error", e)),
        Outcome::RunError(e) => return Err(("run_error", e)),
        Outcome::Panic(e) => return Err(("panic", e)),
    };
    // Built by hand: the outputs in graph-output order (serde_json's map
    // would sort them by name).
    let mut files = Vec::with_capacity(outputs.len());
    for (i, (name, value)) in outputs.iter().enumerate() {
        let file = out_dir.join(format!("output_{i}.npy"));
        kiln::npy::write(&file, value).map_err(|e| bad(format!("output '{name}': {e}")))?;
        files.push(format!(
            "{}:{}",
            Value::from(name.as_str()),
            Value::from(file.display().to_string())
        ));
    }
    Ok(format!(
        "{{\"id\":{id},\"status\":\"ok\",\"outputs\":{{{}}},\"import_ms\":{},\"run_ms\":{}}}",
        files.join(","),
        Value::from(import_ms),
        Value::from(run_ms)
    ))
}

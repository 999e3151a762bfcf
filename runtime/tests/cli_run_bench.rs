//! Tests of `kiln run` and `kiln bench`: ONNX models taken directly,
//! generated inputs, the kernel profile over many runs, NaN and infinity
//! counts, whole tensors and JSON, the probability read-out, bounded and
//! checked thread counts, and clear messages for wrong inputs and paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln::prelude::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kiln_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .current_dir(repo())
        .env_remove("KILN_NUM_THREADS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("kiln runs")
}

fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run succeeded; its standard output.
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "kiln failed: {}", stderr(o));
    stdout(o)
}

/// The run failed (without a panic); its standard error.
fn fails(o: &Output) -> String {
    let e = stderr(o);
    assert!(!o.status.success(), "kiln succeeded: {}", stdout(o));
    assert!(!e.contains("panicked"), "{e}");
    e
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-runbench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A model with a float input `x` f32[batch,4] and an index input `idx`
/// i64[3] (valid only in [0, 4)): outputs `y` = x * 2 and `rows`, the
/// gathered rows of a 4x2 table.
fn two_input_model(dir: &Path) -> PathBuf {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, kiln::graph::shape!["batch", 4])
        .unwrap();
    let idx = g
        .placeholder("idx", DType::I64, kiln::graph::shape![3])
        .unwrap();
    let table = g
        .constant(Array::from_vec(vec![4, 2], (0..8).map(|i| i as f32).collect()).unwrap())
        .unwrap();
    let y = x.mul(2.0).unwrap().named("y").unwrap();
    let rows = table.gather(idx, 0).unwrap().named("rows").unwrap();
    g.output(y).unwrap();
    g.output(rows).unwrap();
    let path = dir.join("two.kiln");
    g.into_graph().save(&path).unwrap();
    path
}

/// A model `y = x + 0` over f32 of `shape`: what is fed comes back.
fn identity_model(dir: &Path, shape: &[usize]) -> PathBuf {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, kiln::graph::Shape::fixed(shape))
        .unwrap();
    let y = x.add(0.0).unwrap().named("y").unwrap();
    g.output(y).unwrap();
    let path = dir.join(format!("id{shape:?}.kiln"));
    g.into_graph().save(&path).unwrap();
    path
}

/// Protobuf wire format, enough to write a small ONNX model by hand.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    pub fn int(out: &mut Vec<u8>, field: u32, v: i64) {
        varint(out, u64::from(field) << 3);
        varint(out, v as u64);
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        varint(out, (u64::from(field) << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    pub fn msg(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = Vec::new();
        f(&mut inner);
        bytes(out, field, &inner);
    }
}

/// An ONNX model (opset 13): `probs = Softmax(MatMul(x, W))` with `x`
/// float[batch,4] and `W` a 4x3 initializer.
fn onnx_model(dir: &Path) -> PathBuf {
    use pb::*;
    // A float tensor type with dims given as a size or a name.
    let tensor_type = |out: &mut Vec<u8>, dims: &[&str]| {
        msg(out, 1, |t| {
            int(t, 1, 1); // elem_type FLOAT
            msg(t, 2, |shape| {
                for d in dims {
                    msg(shape, 1, |dim| match d.parse::<i64>() {
                        Ok(n) => int(dim, 1, n),
                        Err(_) => bytes(dim, 2, d.as_bytes()),
                    });
                }
            });
        });
    };
    let value_info = |out: &mut Vec<u8>, field: u32, name: &str, dims: &[&str]| {
        msg(out, field, |v| {
            bytes(v, 1, name.as_bytes());
            msg(v, 2, |t| tensor_type(t, dims));
        });
    };
    let node = |out: &mut Vec<u8>, op: &str, inputs: &[&str], output: &str| {
        msg(out, 1, |n| {
            for i in inputs {
                bytes(n, 1, i.as_bytes());
            }
            bytes(n, 2, output.as_bytes());
            bytes(n, 3, format!("{op}_node").as_bytes());
            bytes(n, 4, op.as_bytes());
        });
    };
    let mut model = Vec::new();
    int(&mut model, 1, 8); // ir_version
    msg(&mut model, 8, |o| int(o, 2, 13)); // opset_import: ai.onnx 13
    msg(&mut model, 7, |g| {
        node(g, "MatMul", &["x", "W"], "logits");
        node(g, "Softmax", &["logits"], "probs");
        bytes(g, 2, b"tiny");
        msg(g, 5, |t| {
            int(t, 1, 4);
            int(t, 1, 3);
            int(t, 2, 1);
            bytes(t, 8, b"W");
            let w: Vec<u8> = (0..12)
                .flat_map(|i| ((i as f32 - 5.0) * 0.5).to_le_bytes())
                .collect();
            bytes(t, 9, &w);
        });
        value_info(g, 11, "x", &["batch", "4"]);
        value_info(g, 12, "probs", &["batch", "3"]);
    });
    let path = dir.join("tiny.onnx");
    std::fs::write(&path, model).unwrap();
    path
}

fn json(o: &Output) -> serde_json::Value {
    let text = ok(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn bench_reports_latency_and_generates_the_inputs_it_is_not_given() {
    let dir = temp_dir("bench");
    let model = two_input_model(&dir);
    let o = kiln(&[
        "bench",
        s(&model),
        "--runs",
        "7",
        "--dim",
        "batch=3",
        "--seed",
        "5",
        "--json",
    ]);
    let r = json(&o);
    assert_eq!(r["runs"], 7, "{r}");
    let l = &r["latency_ms"];
    let (min, median, p90, max) = (
        l["min"].as_f64().unwrap(),
        l["median"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["max"].as_f64().unwrap(),
    );
    assert!(
        0.0 < min && min <= median && median <= p90 && p90 <= max,
        "{r}"
    );
    assert!(r["compile_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["first_result_ms"].as_f64().unwrap() >= r["compile_ms"].as_f64().unwrap());
    assert!(r["runs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    let inputs = r["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2, "{r}");
    assert_eq!(inputs[0]["name"], "x");
    assert_eq!(
        inputs[0]["shape"],
        serde_json::json!([3, 4]),
        "--dim binds batch"
    );
    assert_eq!(inputs[1]["dtype"], "i64");
    assert!(inputs.iter().all(|i| i["generated"] == true), "{r}");

    // In words: what was generated, and the numbers. The gather runs, so
    // the generated indices are in range.
    let text = ok(&kiln(&["bench", s(&model), "--runs", "3"]));
    assert!(
        text.contains("x f32[1, 4]: generated, uniform in [-1, 1)"),
        "{text}"
    );
    assert!(
        text.contains("idx i64[3]: generated, integers in [0, 4)"),
        "{text}"
    );
    for what in [
        "compile:",
        "first result:",
        "median",
        "p90",
        "min",
        "peak RSS:",
    ] {
        assert!(text.contains(what), "no '{what}' in {text}");
    }

    // A given input is used, and binds the dims of the generated ones.
    let x = dir.join("x.npy");
    kiln::npy::write(&x, &Array::zeros(DType::F32, &[5, 4])).unwrap();
    let r = json(&kiln(&[
        "bench",
        s(&model),
        "-i",
        &format!("x={}", s(&x)),
        "--time",
        "0.05",
        "--json",
    ]));
    assert_eq!(r["inputs"][0]["generated"], false, "{r}");
    assert_eq!(r["inputs"][0]["shape"], serde_json::json!([5, 4]), "{r}");
    assert!(r["runs"].as_u64().unwrap() >= 1, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_profile_is_the_mean_over_all_runs() {
    let dir = temp_dir("profile");
    let model = two_input_model(&dir);
    let r = json(&kiln(&[
        "bench",
        s(&model),
        "--runs",
        "9",
        "--profile",
        "--json",
    ]));
    let p = &r["profile"];
    assert_eq!(p["runs"], 9, "{r}");
    let kernels = p["kernels"].as_array().unwrap();
    assert!(!kernels.is_empty(), "{r}");
    let mut last_total = f64::INFINITY;
    for k in kernels {
        assert_eq!(k["calls"], 9, "each kernel runs once a run: {k}");
        let (mean, total) = (
            k["mean_us"].as_f64().unwrap(),
            k["total_us"].as_f64().unwrap(),
        );
        assert!((mean * 9.0 - total).abs() <= 1e-6 * total.max(1.0), "{k}");
        assert!(total <= last_total, "sorted by total time: {r}");
        last_total = total;
    }
    let text = ok(&kiln(&["bench", s(&model), "--runs", "4", "--profile"]));
    assert!(text.contains("profile over 4 runs"), "{text}");
    assert!(text.contains("mean us"), "{text}");

    // `run --profile` shares it.
    let text = ok(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "--profile",
        "--runs",
        "6",
    ]));
    assert!(text.contains("profile over 6 runs"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn onnx_models_run_and_bench_directly() {
    let dir = temp_dir("onnx");
    let model = onnx_model(&dir);
    let r = json(&kiln(&[
        "bench",
        s(&model),
        "--runs",
        "3",
        "--dim",
        "batch=2",
        "--json",
    ]));
    assert_eq!(r["runs"], 3, "{r}");
    assert_eq!(r["inputs"][0]["shape"], serde_json::json!([2, 4]), "{r}");

    let x = dir.join("x.npy");
    let xs = Array::from_vec(vec![1, 4], vec![1.0f32, 0.0, 0.0, 0.0]).unwrap();
    kiln::npy::write(&x, &xs).unwrap();
    let text = ok(&kiln(&["run", s(&model), "-i", &format!("x={}", s(&x))]));
    assert!(text.contains("probs: f32[1, 3]"), "{text}");
    // Row 0 of W is -2.5, -2, -1.5: class 2 is the most likely.
    assert!(
        text.contains("predicted class 2 with probability"),
        "{text}"
    );
    let text = ok(&kiln(&["show", s(&model)]));
    assert!(text.contains("probs"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_counts_nan_and_infinities_apart() {
    let dir = temp_dir("nan");
    let model = identity_model(&dir, &[6]);
    let x = dir.join("x.npy");
    let v = vec![
        1.0f32,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.0,
    ];
    kiln::npy::write(&x, &Array::from_vec(vec![6], v).unwrap()).unwrap();
    let text = ok(&kiln(&["run", s(&model), "-i", &format!("x={}", s(&x))]));
    assert!(text.contains("min 1.0000 mean 2.0000 max 3.0000"), "{text}");
    assert!(text.contains("2 NaN, 1 +inf, 1 -inf"), "{text}");
    assert!(!text.contains("mean NaN"), "{text}");

    let all_nan = dir.join("nan.npy");
    kiln::npy::write(
        &all_nan,
        &Array::from_vec(vec![6], vec![f32::NAN; 6]).unwrap(),
    )
    .unwrap();
    let text = ok(&kiln(&[
        "run",
        s(&model),
        "-i",
        &format!("x={}", s(&all_nan)),
    ]));
    assert!(text.contains("no finite values, 6 NaN"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_prints_whole_tensors_and_json() {
    let dir = temp_dir("full");
    let model = two_input_model(&dir);
    let x = dir.join("x.npy");
    let xs = Array::from_vec(vec![2, 4], (0..8).map(|i| i as f32 * 5.0).collect()).unwrap();
    kiln::npy::write(&x, &xs).unwrap();
    let idx = dir.join("idx.npy");
    kiln::npy::write(&idx, &Array::from_vec(vec![3], vec![3i64, 0, 1]).unwrap()).unwrap();
    let x_in = format!("x={}", s(&x));
    let idx_in = format!("idx={}", s(&idx));
    let text = ok(&kiln(&[
        "run",
        s(&model),
        "-i",
        &x_in,
        "-i",
        &idx_in,
        "--full",
    ]));
    assert!(
        text.contains("    [[ 0, 10, 20, 30],\n     [40, 50, 60, 70]]"),
        "{text}"
    );
    assert!(
        text.contains("    [[6, 7],\n     [0, 1],\n     [2, 3]]"),
        "{text}"
    );

    let r = json(&kiln(&[
        "run",
        s(&model),
        "-i",
        &x_in,
        "-i",
        &idx_in,
        "--json",
    ]));
    let outs = r["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["name"], "y");
    assert_eq!(outs[0]["dtype"], "f32");
    assert_eq!(outs[0]["shape"], serde_json::json!([2, 4]));
    assert_eq!(
        outs[0]["values"],
        serde_json::json!([[0.0, 10.0, 20.0, 30.0], [40.0, 50.0, 60.0, 70.0]])
    );
    assert_eq!(
        outs[1]["values"],
        serde_json::json!([[6.0, 7.0], [0.0, 1.0], [2.0, 3.0]])
    );

    // Rank 3: a blank line between the blocks, as numpy prints it.
    let model = identity_model(&dir, &[2, 2, 2]);
    let cube = dir.join("cube.npy");
    let a = Array::from_vec(vec![2, 2, 2], (0..8).map(|i| i as f32).collect()).unwrap();
    kiln::npy::write(&cube, &a).unwrap();
    let text = ok(&kiln(&[
        "run",
        s(&model),
        "-i",
        &format!("x={}", s(&cube)),
        "--full",
    ]));
    assert!(
        text.contains("    [[[0, 1],\n      [2, 3]],\n\n     [[4, 5],\n      [6, 7]]]\n"),
        "{text}"
    );

    // NaN and infinities as strings.
    let model = identity_model(&dir, &[3]);
    let v = dir.join("v.npy");
    let a = Array::from_vec(vec![3], vec![0.1f32, f32::NAN, f32::NEG_INFINITY]).unwrap();
    kiln::npy::write(&v, &a).unwrap();
    let r = json(&kiln(&[
        "run",
        s(&model),
        "-i",
        &format!("x={}", s(&v)),
        "--json",
    ]));
    assert_eq!(
        r["outputs"][0]["values"],
        serde_json::json!([0.1, "nan", "-inf"]),
        "{r}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_reads_out_the_predicted_class() {
    let o = kiln(&[
        "run",
        "examples/mlp.kiln",
        "--input",
        "x=examples/digit.npy",
    ]);
    let text = ok(&o);
    let line = text
        .lines()
        .find(|l| l.contains("predicted class"))
        .unwrap_or_else(|| panic!("no read-out in {text}"));
    assert!(
        line.trim_start()
            .starts_with("predicted class 0 with probability "),
        "{line}"
    );
    assert!(line.contains("(next: "), "{line}");
    // Only the distribution is read out, not the class indices.
    assert_eq!(text.matches("predicted class").count(), 1, "{text}");

    let text = ok(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "--top",
        "3",
    ]));
    assert!(text.contains("top 3: class 0 at "), "{text}");
    assert_eq!(text.matches(", class ").count(), 2, "{text}");

    // A batch: the first rows, and how many more.
    let dir = temp_dir("batch");
    let batch = dir.join("batch.npy");
    let digit = kiln::npy::read(repo().join("examples/digit.npy")).unwrap();
    let v: Vec<f32> = digit.as_slice::<f32>().unwrap().repeat(7);
    kiln::npy::write(&batch, &Array::from_vec(vec![7, 64], v).unwrap()).unwrap();
    let text = ok(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        &format!("x={}", s(&batch)),
    ]));
    assert!(text.contains("row 0: predicted class 0"), "{text}");
    assert!(text.contains("row 4: predicted class 0"), "{text}");
    assert!(!text.contains("row 5:"), "{text}");
    assert!(text.contains("... and 2 more rows"), "{text}");

    // Values that are not a distribution get no read-out.
    let model = identity_model(&dir, &[4]);
    let x = dir.join("x.npy");
    let not = Array::from_vec(vec![4], vec![0.5f32, 0.5, 0.5, 0.5]).unwrap();
    kiln::npy::write(&x, &not).unwrap();
    let text = ok(&kiln(&["run", s(&model), "-i", &format!("x={}", s(&x))]));
    assert!(!text.contains("predicted"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs kiln, failing the test if it takes longer than a minute.
fn kiln_within_a_minute(args: &[&str], env: &[(&str, &str)]) -> Output {
    let start = Instant::now();
    let o = kiln_env(args, env);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "kiln {args:?} took {:?}",
        start.elapsed()
    );
    o
}

#[test]
fn thread_counts_are_bounded_and_checked() {
    let run = ["run", "examples/mlp.kiln", "-i", "x=examples/digit.npy"];
    let e = fails(&kiln_within_a_minute(
        &[&run[..], &["--threads", "100000"]].concat(),
        &[],
    ));
    assert!(
        e.contains("100000 threads is over the limit of 1024"),
        "{e}"
    );
    let e = fails(&kiln_within_a_minute(
        &[&run[..], &["--threads", "0"]].concat(),
        &[],
    ));
    assert!(e.contains("at least 1"), "{e}");
    for bad in ["abc", "100000", "0"] {
        let e = fails(&kiln_within_a_minute(&run, &[("KILN_NUM_THREADS", bad)]));
        assert!(e.contains(&format!("KILN_NUM_THREADS={bad}")), "{e}");
        let e = fails(&kiln_within_a_minute(
            &["bench", "examples/mlp.kiln", "--runs", "1"],
            &[("KILN_NUM_THREADS", bad)],
        ));
        assert!(e.contains(&format!("KILN_NUM_THREADS={bad}")), "{e}");
    }
    ok(&kiln_env(&run, &[("KILN_NUM_THREADS", "2")]));

    // The library checks too, at once.
    let graph = Graph::load(repo().join("examples/mlp.kiln")).unwrap();
    let start = Instant::now();
    let opts = SessionOptions {
        threads: Some(100_000),
        ..Default::default()
    };
    let err = Session::with_options(&graph, Device::Cpu, opts)
        .err()
        .expect("100000 threads is refused")
        .to_string();
    assert!(err.contains("over the limit of 1024"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn input_mistakes_are_named() {
    let e = fails(&kiln(&["run", "examples/mlp.kiln", "-i", "x="]));
    assert!(e.contains("--input 'x=': no file given"), "{e}");
    let e = fails(&kiln(&["run", "examples/mlp.kiln", "-i", "x=no/such.npy"]));
    assert!(e.contains("reading no/such.npy: No such file"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "{e}");

    // A name the model has no input for lists the inputs.
    let e = fails(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "pixels=examples/digit.npy",
    ]));
    assert!(e.contains("feed 'pixels'"), "{e}");
    assert!(e.contains("the model's inputs are: x f32[batch,64]"), "{e}");

    // Feeding a node that is not an input.
    let e = fails(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "logits=examples/digit.npy",
    ]));
    assert!(
        e.contains(
            "'logits': it is an add node, not an input; the model's inputs are: x f32[batch,64]"
        ),
        "{e}"
    );

    // A fetch name that is not a node lists the outputs and near names.
    let e = fails(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "--fetch",
        "prob",
    ]));
    assert!(
        e.contains("the model's outputs are: probs f32[batch,10]"),
        "{e}"
    );
    assert!(e.contains("similar names: probs"), "{e}");
}

#[test]
fn output_paths_are_checked_before_running() {
    let dir = temp_dir("paths");
    let file = dir.join("somefile");
    std::fs::write(&file, "keep").unwrap();
    let e = fails(&kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "-o",
        s(&file),
    ]));
    assert!(e.contains("is a file, not a directory"), "{e}");
    assert!(!e.contains("File exists"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

    // --trace onto the model itself is refused; the model is intact.
    let model = dir.join("m.kiln");
    std::fs::copy(repo().join("examples/mlp.kiln"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let e = fails(&kiln(&[
        "run",
        s(&model),
        "-i",
        "x=examples/digit.npy",
        "--trace",
        s(&model),
    ]));
    assert!(e.contains("would overwrite the model"), "{e}");
    assert_eq!(std::fs::read(&model).unwrap(), before);

    // A trace elsewhere is written.
    let trace = dir.join("t.json");
    ok(&kiln(&[
        "run",
        s(&model),
        "-i",
        "x=examples/digit.npy",
        "--trace",
        s(&trace),
        "--runs",
        "2",
    ]));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert!(!doc["traceEvents"].as_array().unwrap().is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_ends_with_examples() {
    for args in [&["--help"][..], &["run", "--help"], &["bench", "--help"]] {
        let text = ok(&kiln(args));
        let tail = text.trim_end();
        let at = tail
            .rfind("Example:")
            .unwrap_or_else(|| panic!("{args:?}: {text}"));
        assert!(tail[at..].lines().count() >= 2, "{args:?}: {text}");
        assert!(tail[at..].contains("kiln "), "{args:?}: {text}");
    }
}

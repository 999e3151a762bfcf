//! Tests of the `kiln` binary: the README's main command on the shipped
//! example, `show`, and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("kiln runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_shipped_example_and_write_outputs() {
    let out_dir = temp_dir("run");
    let o = kiln(&[
        "run",
        "examples/mlp.kiln",
        "--input",
        "x=examples/digit.npy",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("probs: f32[1, 10]"), "{text}");
    assert!(text.contains("class: i64[1]"), "{text}");
    let probs = kiln::npy::read(out_dir.join("probs.npy")).unwrap();
    let p = probs.as_slice::<f32>().unwrap();
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    let class = kiln::npy::read(out_dir.join("class.npy")).unwrap();
    let argmax = p
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > p[best] { i } else { best });
    assert_eq!(class.as_slice::<i64>().unwrap(), &[argmax as i64]);
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn run_matches_the_library_on_each_device() {
    let graph = kiln::graph::Graph::load(repo().join("examples/mlp.kiln")).unwrap();
    let x = kiln::npy::read(repo().join("examples/digit.npy")).unwrap();
    for device in [kiln::Device::Cpu, kiln::Device::Reference] {
        let s = kiln::Session::new(&graph, device).unwrap();
        let want = s.run(&[("x", &x)], &["probs"]).unwrap().remove(0);
        let out_dir = temp_dir(&format!("lib-{device}"));
        let dev = device.to_string();
        let o = kiln(&[
            "run",
            "examples/mlp.kiln",
            "-i",
            "x=examples/digit.npy",
            "-o",
            out_dir.to_str().unwrap(),
            "--fetch",
            "probs",
            "--device",
            &dev,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("on {device}")),
            "{}",
            stdout(&o)
        );
        assert_eq!(
            kiln::npy::read(out_dir.join("probs.npy")).unwrap(),
            want,
            "{device}"
        );
        assert!(
            !out_dir.join("class.npy").exists(),
            "only the fetched node is written"
        );
        std::fs::remove_dir_all(&out_dir).ok();
    }
}

#[test]
fn show_lists_nodes_parameters_and_dot() {
    let o = kiln(&["show", "examples/mlp.kiln"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("fc1/matmul_0 = matmul(mul_0, fc1/weight) : f32[batch,128]"),
        "{text}"
    );
    assert!(
        text.contains("parameters: 9610 in 4 variables (37.5 KiB)"),
        "{text}"
    );
    assert!(text.contains("inputs:  x f32[batch,64]"), "{text}");
    let o = kiln(&["show", "examples/mlp.kiln", "--dot", "-"]);
    let dot = stdout(&o);
    assert!(
        dot.starts_with("digraph kiln {") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    assert!(dot.contains("->"));
}

#[test]
fn bad_inputs_give_clear_errors_and_exit_1() {
    let dir = temp_dir("bad");
    let wrong = dir.join("wrong.npy");
    let a = kiln::graph::Array::from_vec(vec![1, 63], vec![0f32; 63]).unwrap();
    kiln::npy::write(&wrong, &a).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "-i".into(),
                format!("x={}", wrong.display()),
            ],
            "feed 'x': dim 1 must be 64",
        ),
        (
            vec!["run".into(), "examples/mlp.kiln".into()],
            "placeholder (f32[batch,64]) is needed by fetch 'probs' but was not fed",
        ),
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "-i".into(),
                "x".into(),
            ],
            "is not NAME=FILE.npy",
        ),
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "-i".into(),
                "y=examples/digit.npy".into(),
            ],
            "feed 'y': no node",
        ),
        (
            vec!["run".into(), "examples/missing.kiln".into()],
            "examples/missing.kiln",
        ),
        (
            vec!["run".into(), "examples/digit.npy".into()],
            "not a kiln graph file",
        ),
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "-i".into(),
                "x=examples/mlp.kiln".into(),
            ],
            "not an .npy file",
        ),
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "--device".into(),
                "tpu".into(),
            ],
            "device tpu: unknown device; available: cpu, reference",
        ),
        (
            vec![
                "run".into(),
                "examples/mlp.kiln".into(),
                "-i".into(),
                "x=examples/digit.npy".into(),
                "--fetch".into(),
                "nope".into(),
            ],
            "fetch 'nope'",
        ),
    ];
    for (args, want) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = kiln(&refs);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with("kiln: error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn optimizer_commands() {
    let o = kiln(&["optimize", "examples/mlp.kiln", "--explain"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("round 1 fold_constants:"), "{text}");
    assert!(text.contains("19 nodes -> 19 nodes -> 6 kernels"), "{text}");

    let o = kiln(&[
        "show",
        "examples/mlp.kiln",
        "--optimized",
        "--dim",
        "batch=4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("k1 matmul -> ") && text.contains("(fc1/matmul_0, fc1/add_0, fc1/maximum_0)"),
        "{text}"
    );
    assert!(text.contains(" input f32[4, 64] 'x'"), "{text}");

    let o = kiln(&["show", "examples/mlp.kiln", "--optimized", "--dot", "-"]);
    assert!(stdout(&o).contains("subgraph cluster_k1"), "{}", stdout(&o));

    let o = kiln(&[
        "show",
        "examples/mlp.kiln",
        "--after",
        "eliminate_dead_code",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("after eliminate_dead_code: no change"),
        "{}",
        stdout(&o)
    );

    let dir = temp_dir("plan");
    let svg = dir.join("plan.svg");
    let o = kiln(&[
        "plan",
        "examples/mlp.kiln",
        "--dim",
        "batch=16",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("liveness lower bound:") && text.contains("no planning (sum):"),
        "{text}"
    );
    let pic = std::fs::read_to_string(&svg).unwrap();
    assert!(pic.starts_with("<svg") && pic.contains("<rect") && pic.trim_end().ends_with("</svg>"));
    std::fs::remove_dir_all(&dir).ok();

    for (args, want) in [
        (
            vec!["plan", "examples/mlp.kiln", "--dim", "seq=3"],
            "no symbolic dim 'seq' (it has: batch)",
        ),
        (
            vec!["plan", "examples/mlp.kiln", "--dim", "batch"],
            "is not NAME=N",
        ),
        (
            vec!["show", "examples/mlp.kiln", "--after", "nope"],
            "no pass named 'nope'",
        ),
        (
            vec!["optimize", "examples/mlp.kiln", "--disable-pass", "nope"],
            "no pass named 'nope'",
        ),
    ] {
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn profile_and_trace() {
    let dir = temp_dir("trace");
    let trace = dir.join("trace.json");
    let o = kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "--profile",
        "--trace",
        trace.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("profile over 10 runs:") && text.contains("6 kernels"),
        "{text}"
    );
    assert!(
        text.contains("matmul") && text.contains("reduce_sum+map"),
        "{text}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    assert_eq!(events.len(), 6 * 10, "six kernels, ten runs");
    assert!(events
        .iter()
        .all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0));
    let o = kiln(&[
        "run",
        "examples/mlp.kiln",
        "-i",
        "x=examples/digit.npy",
        "--profile",
        "--device",
        "reference",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("need a compiling device"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn compile_writes_an_object_and_a_header() {
    let dir = temp_dir("aot");
    // A model of elementwise ops and a reduction, with a symbolic batch.
    let g = kiln::graph::GraphBuilder::new();
    let x = g
        .placeholder("x", kiln::graph::DType::F32, kiln::shape!["batch", 6])
        .unwrap();
    let y = x
        .mul(2.0)
        .unwrap()
        .relu()
        .unwrap()
        .sum(&[1], false)
        .unwrap()
        .named("y")
        .unwrap();
    g.output(y).unwrap();
    let model = dir.join("tiny.kiln");
    g.into_graph().save(&model).unwrap();
    let m = model.to_str().unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let r = kiln(&["compile", m, "-o", o]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("--dim batch=N"), "{}", stderr(&r));
    let r = kiln(&["compile", m, "-o", o, "--dim", "batch=4"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("tiny.o"), "{}", stdout(&r));
    let h = std::fs::read_to_string(out.join("tiny.h")).unwrap();
    assert!(
        h.contains("int tiny_run(const void *const *inputs, void *const *outputs);")
            && h.contains("#define TINY_INPUT_X_ELEMENTS 24")
            && h.contains("#define TINY_OUTPUT_0_ELEMENTS 4"),
        "{h}"
    );
    assert!(std::fs::metadata(out.join("tiny.o")).unwrap().len() > 0);
    assert!(std::fs::metadata(out.join("libkiln_rt.a")).unwrap().len() > 0);
    // An op the run-time library has no code for: refused, with the reason.
    let g = kiln::graph::GraphBuilder::new();
    let t = g.placeholder("t", kiln::graph::DType::F32, [5, 3]).unwrap();
    let i = g.placeholder("i", kiln::graph::DType::I64, [2]).unwrap();
    let u = g.placeholder("u", kiln::graph::DType::F32, [2, 3]).unwrap();
    g.output(t.scatter_add(i, u, 0).unwrap().named("rows").unwrap())
        .unwrap();
    let gathers = dir.join("scatter.kiln");
    g.into_graph().save(&gathers).unwrap();
    let r = kiln(&["compile", gathers.to_str().unwrap(), "-o", o]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("a scatter_add op (f32) has no code in kiln's runtime library"),
        "{}",
        stderr(&r)
    );
    let r = kiln(&["compile", m, "-o", o, "--dim", "batch=4", "--target", "arm"]);
    assert!(
        stderr(&r).contains("unknown target CPU 'arm'"),
        "{}",
        stderr(&r)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_exe_runs_the_model_on_npy_files() {
    assert!(
        Command::new("cc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "`kiln compile --exe` links with a C compiler and `cc --version` does not run: \
         install one (Debian/Ubuntu: `apt-get install build-essential`) and put `cc` on PATH"
    );
    let dir = temp_dir("exe");
    let g = kiln::graph::GraphBuilder::new();
    let x = g
        .placeholder("x", kiln::graph::DType::F32, kiln::shape!["batch", 5])
        .unwrap();
    let m = x.max(&[1], true).unwrap();
    let y = x
        .sub(m)
        .unwrap()
        .mul(0.5)
        .unwrap()
        .named("scores/y")
        .unwrap();
    g.output(y).unwrap();
    g.output(x.gt(0.0).unwrap().named("positive").unwrap())
        .unwrap();
    let graph = g.into_graph();
    let model = dir.join("tiny.kiln");
    graph.save(&model).unwrap();
    let out = dir.join("build");
    let r = kiln(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dim",
        "batch=3",
        "--exe",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("standalone program"), "{}", stdout(&r));
    let xs = kiln::graph::Array::from_vec(
        vec![3, 5],
        (0..15).map(|i| (i as f32 * 0.7).sin()).collect::<Vec<_>>(),
    )
    .unwrap();
    let input = dir.join("x.npy");
    kiln::npy::write(&input, &xs).unwrap();
    let res = dir.join("res");
    std::fs::create_dir_all(&res).unwrap();
    let exe = out.join("tiny");
    let run = Command::new(&exe)
        .arg(format!("x={}", input.display()))
        .arg("-o")
        .arg(&res)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let want = kiln::Session::new(&graph, kiln::Device::Cpu)
        .unwrap()
        .run(&[("x", &xs)], &["scores/y", "positive"])
        .unwrap();
    let y = kiln::npy::read(res.join("scores_y.npy")).unwrap();
    let p = kiln::npy::read(res.join("positive.npy")).unwrap();
    assert!(y.same_bits(&want[0]), "{y:?} vs {:?}", want[0]);
    assert!(p.same_bits(&want[1]), "{p:?} vs {:?}", want[1]);
    // The shipped MLP (matrix products through the run-time library) as a
    // standalone program gives the JIT session's probabilities.
    let r = kiln(&[
        "compile",
        repo().join("examples/mlp.kiln").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dim",
        "batch=1",
        "--exe",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let digit = repo().join("examples/digit.npy");
    let run = Command::new(out.join("mlp"))
        .arg(format!("x={}", digit.display()))
        .arg("-o")
        .arg(&res)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let graph = kiln::graph::Graph::load(repo().join("examples/mlp.kiln")).unwrap();
    let x = kiln::npy::read(&digit).unwrap();
    let want = kiln::Session::new(&graph, kiln::Device::Cpu)
        .unwrap()
        .run_outputs(&[("x", &x)])
        .unwrap();
    for (name, w) in &want {
        let got = kiln::npy::read(res.join(format!("{}.npy", name.replace('/', "_")))).unwrap();
        assert!(got.same_bits(w), "{name}: {got:?} vs {w:?}");
    }
    // A wrong shape, a wrong dtype and a missing input: clear errors.
    let bad = kiln::graph::Array::from_vec(vec![2, 5], vec![0f32; 10]).unwrap();
    kiln::npy::write(&input, &bad).unwrap();
    let r = Command::new(&exe)
        .arg(format!("x={}", input.display()))
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("has shape (2, 5), the model takes (3, 5)"),
        "{}",
        stderr(&r)
    );
    let bad = kiln::graph::Array::from_vec(vec![3, 5], vec![0f64; 15]).unwrap();
    kiln::npy::write(&input, &bad).unwrap();
    let r = Command::new(&exe)
        .arg(format!("x={}", input.display()))
        .output()
        .unwrap();
    assert!(
        stderr(&r).contains("holds '<f8' elements, the model takes '<f4'"),
        "{}",
        stderr(&r)
    );
    let r = Command::new(&exe).output().unwrap();
    assert!(
        stderr(&r).contains("input 'x' was not given"),
        "{}",
        stderr(&r)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tests' own set-up (shared with `kiln-tests`, which this crate
/// cannot depend on): the ONNX backend test data, fetched where missing.
#[path = "../../tests/src/setup.rs"]
mod setup;

#[test]
fn import_converts_onnx_models_and_they_run() {
    let node = setup::onnx_test_data().join("node");
    let dir = temp_dir("import");
    let read = |p: PathBuf| kiln_onnx::tensor::read_tensor_file(&p).unwrap().1;

    // A uint8 model: imported, run on .npy feeds, equal to ONNX's output.
    let case = node.join("test_add_uint8");
    let model = dir.join("add_u8.kiln");
    let o = kiln(&[
        "import",
        case.join("model.onnx").to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("x: u8[3,4,5]"), "{}", stdout(&o));
    let data = case.join("test_data_set_0");
    for (i, name) in ["x", "y"].iter().enumerate() {
        kiln::npy::write(
            dir.join(format!("{name}.npy")),
            &read(data.join(format!("input_{i}.pb"))),
        )
        .unwrap();
    }
    let out = dir.join("out");
    let o = kiln(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &format!("x={}", dir.join("x.npy").display()),
        "--input",
        &format!("y={}", dir.join("y.npy").display()),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = kiln::npy::read(out.join("sum.npy")).unwrap();
    assert!(got.same_bits(&read(data.join("output_0.pb"))), "{got:?}");

    // A sequence input needs its element shapes; an absent optional, its name.
    let seq = node.join("test_sequence_map_identity_1_sequence/model.onnx");
    let o = kiln(&[
        "import",
        seq.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("sequence"), "{}", stderr(&o));
    let o = kiln(&[
        "import",
        seq.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--sequence",
        "x=3,5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("x/0: f32[3]") && text.contains("x/1: f32[5]"),
        "{text}"
    );
    let o = kiln(&[
        "import",
        seq.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--sequence",
        "x=3,5y",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("element shape '5y'"), "{}", stderr(&o));
    let opt = node.join("test_optional_has_element_empty_optional_input/model.onnx");
    let o = kiln(&[
        "import",
        opt.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
        "--absent",
        "optional_input",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("output: bool[]"), "{}", stdout(&o));
    std::fs::remove_dir_all(&dir).ok();
}

//! The model-level ONNX fuzzer's regression cases (issue 17): every case
//! saved under `tests/onnx/fuzz-cases/` replayed in-process on the
//! reference interpreter and the CPU engine, plus checks of the pieces
//! that replay rests on: the comparison rule, panics caught as answers,
//! the case reader, and the `kiln-onnx-runner` binary's serve and replay
//! modes end to end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln::graph::{Array, DType};
use kiln::Device;
use kiln_onnx::proto::{
    self, tensor_proto::DataType, tensor_shape_proto::dimension::Value as OnnxDim,
};
use kiln_tests::fuzz_case::{self, compare, Tolerance};
use prost::Message;
use serde_json::Value;

/// The repository's regression cases.
fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/fuzz-cases")
}

/// A fresh, empty directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-onnx-fuzz-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies the case directory `from` into `to_parent`.
fn copy_case(from: &Path, to_parent: &Path) -> PathBuf {
    let to = to_parent.join(from.file_name().unwrap());
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to
}

fn f32s(shape: &[usize], v: &[f32]) -> Array {
    Array::from_vec(shape.to_vec(), v.to_vec()).unwrap()
}

const TOL: Tolerance = Tolerance {
    rtol: 1e-4,
    atol: 1e-5,
};

// ------------------------------------------------------ the saved cases

/// Every saved case passes on the reference interpreter and the CPU
/// engine; there must be cases to replay.
#[test]
fn saved_cases_pass_on_reference_and_cpu() {
    let dirs = fuzz_case::case_dirs(&[cases_root()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !dirs.is_empty(),
        "no cases under {}",
        cases_root().display()
    );
    let failures: Vec<String> = dirs
        .iter()
        .map(|d| fuzz_case::replay_dir(d, &[Device::Reference, Device::Cpu]))
        .filter(|(pass, _)| !pass)
        .map(|(_, line)| line)
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} saved ONNX fuzz cases fail:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

/// A case whose expected output is off by more than its tolerance fails,
/// naming the output, the element, both values and the tolerance.
#[test]
fn a_case_with_a_wrong_expectation_fails() {
    let dir = scratch("wrong-expectation");
    let case = copy_case(&cases_root().join("example_relu"), &dir);
    let want = case.join("output_0.npy");
    let a = kiln::npy::read(&want).unwrap();
    let mut v: Vec<f32> = a.to_f64_vec().iter().map(|&x| x as f32).collect();
    v[9] += 0.5; // element [2, 1]
    kiln::npy::write(&want, &f32s(a.shape(), &v)).unwrap();
    let (pass, line) = fuzz_case::replay_dir(&case, &[Device::Reference, Device::Cpu]);
    assert!(!pass, "{line}");
    for part in [
        "FAIL example_relu",
        "[reference]",
        "[cpu]",
        "output 0 'y'",
        "element [2, 1]",
        "1 of 12 elements differ",
        "atol 1e-5",
        "rtol 1e-4",
    ] {
        assert!(line.contains(part), "no '{part}' in: {line}");
    }
}

/// A case missing a file, or with an input the model does not have, is
/// reported, not passed.
#[test]
fn an_incomplete_case_fails() {
    let dir = scratch("incomplete");
    let case = copy_case(&cases_root().join("example_add"), &dir);
    std::fs::remove_file(case.join("output_0.npy")).unwrap();
    let (pass, line) = fuzz_case::replay_dir(&case, &[Device::Reference]);
    assert!(!pass && line.contains("output_0.npy"), "{line}");

    let case = copy_case(&cases_root().join("example_relu"), &dir.join("extra"));
    std::fs::copy(case.join("input_0.npy"), case.join("input_1.npy")).unwrap();
    let (pass, line) = fuzz_case::replay_dir(&case, &[Device::Reference]);
    assert!(!pass && line.contains("input_1.npy"), "{line}");

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fuzz_case::case_dirs(&[empty]).unwrap_err();
    assert!(e.contains("no case"), "{e}");
}

// ------------------------------------------------- the comparison rule

#[test]
fn floats_compare_within_atol_plus_rtol_times_want() {
    let want = f32s(&[2, 2], &[1.0, 100.0, 0.0, -3.0]);
    // 100 * 1e-4 + 1e-5 = 0.01001 allowed at [0, 1].
    let got = f32s(&[2, 2], &[1.0, 100.01, 0.0, -3.0]);
    let c = compare(&want, &got, TOL);
    assert!(c.ok, "{c:?}");
    let worst = c.worst.unwrap();
    assert_eq!(worst.index, vec![0, 1]);
    assert!((worst.diff - 0.01).abs() < 1e-5, "{worst:?}");

    let got = f32s(&[2, 2], &[1.0, 100.0, 2e-5, -3.0]);
    let c = compare(&want, &got, TOL);
    assert!(!c.ok);
    assert_eq!(c.mismatches, 1);
    let worst = c.worst.unwrap();
    assert_eq!((worst.index, worst.want.as_str()), (vec![1, 0], "0"));
}

#[test]
fn the_worst_element_is_the_one_furthest_over_its_tolerance() {
    // [0] is 0.5 off a large value (within), [1] 0.001 off zero (not).
    let want = f32s(&[2], &[10_000.0, 0.0]);
    let got = f32s(&[2], &[10_000.5, 0.001]);
    let c = compare(&want, &got, TOL);
    assert!(!c.ok);
    assert_eq!(c.worst.unwrap().index, vec![1]);
    let line = fuzz_case::describe(
        3,
        "out",
        &compare(&want, &got, TOL),
        &want,
        Tolerance {
            rtol: 1e-4,
            atol: 1e-5,
        },
    );
    for part in [
        "output 3 'out'",
        "element [1]",
        "got 0.001",
        "want 0",
        "atol 1e-5",
    ] {
        assert!(line.contains(part), "no '{part}' in: {line}");
    }
}

#[test]
fn nan_only_where_nan_is_expected_and_the_same_infinities() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let want = f32s(&[4], &[nan, inf, -inf, 1.0]);
    assert!(compare(&want, &f32s(&[4], &[nan, inf, -inf, 1.0]), TOL).ok);
    for got in [
        [1.0, inf, -inf, 1.0], // a number where NaN is expected
        [nan, nan, -inf, 1.0], // NaN where +inf is expected
        [nan, -inf, -inf, 1.0],
        [nan, inf, -1e38, 1.0],
        [nan, inf, -inf, nan], // NaN where a number is expected
        [nan, inf, -inf, inf],
    ] {
        let c = compare(&want, &f32s(&[4], &got), TOL);
        assert!(!c.ok, "{got:?} passed");
        assert_eq!(c.mismatches, 1, "{got:?}");
        assert!(c.worst.unwrap().diff.is_infinite(), "{got:?}");
    }
}

#[test]
fn integers_and_bools_compare_exactly_and_types_must_agree() {
    let big = |v: &[i64]| Array::from_vec(vec![v.len()], v.to_vec()).unwrap();
    let loose = Tolerance {
        rtol: 0.5,
        atol: 10.0,
    };
    assert!(compare(&big(&[i64::MAX, -4]), &big(&[i64::MAX, -4]), loose).ok);
    let c = compare(&big(&[i64::MAX, -4]), &big(&[i64::MAX - 1, -4]), loose);
    assert!(!c.ok);
    let w = c.worst.unwrap();
    assert_eq!(
        (w.got, w.want),
        ((i64::MAX - 1).to_string(), i64::MAX.to_string())
    );

    let bools = |v: &[bool]| Array::from_vec(vec![v.len()], v.to_vec()).unwrap();
    assert!(!compare(&bools(&[true, false]), &bools(&[true, true]), loose).ok);

    // dtype and shape.
    let c = compare(&f32s(&[2], &[1.0, 2.0]), &f32s(&[1, 2], &[1.0, 2.0]), loose);
    assert!(!c.ok && c.type_mismatch.is_some(), "{c:?}");
    let as_f64 = kiln::graph::ops::elementwise::eval_cast(&f32s(&[2], &[1.0, 2.0]), DType::F64);
    let c = compare(&f32s(&[2], &[1.0, 2.0]), &as_f64, loose);
    assert!(!c.ok && c.type_mismatch.unwrap().contains("f64"));
}

// ------------------------------------------------------------- panics

#[test]
fn a_panic_becomes_an_error_with_its_place_and_the_next_call_works() {
    let e = fuzz_case::guarded(|| -> u32 { panic!("boom {}", 7) }).unwrap_err();
    assert!(e.contains("boom 7"), "{e}");
    assert!(e.contains("onnx_fuzz_cases.rs"), "no place in: {e}");
    let nested = fuzz_case::guarded(|| fuzz_case::guarded(|| -> u32 { panic!("inner") }));
    assert!(
        matches!(&nested, Ok(Err(e)) if e.contains("inner")),
        "{nested:?}"
    );
    assert_eq!(fuzz_case::guarded(|| 5), Ok(5));
}

// ------------------------------------------------ the runner binary

const RUNNER: &str = env!("CARGO_BIN_EXE_kiln-onnx-runner");

/// A one-node model `y = op(x)` over `x: f32[2]`.
fn one_node_model(op: &str) -> Vec<u8> {
    model_over(op, &[OnnxDim::DimValue(2)])
}

/// A one-node model `y = op(x)` over `x: f32` of dims `dims` (`y` untyped).
fn model_over(op: &str, dims: &[OnnxDim]) -> Vec<u8> {
    let x = proto::ValueInfoProto {
        name: "x".into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(proto::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| proto::tensor_shape_proto::Dimension {
                                value: Some(d.clone()),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(proto::GraphProto {
            name: op.into(),
            node: vec![proto::NodeProto {
                op_type: op.into(),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            input: vec![x],
            output: vec![proto::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// An input with a symbolic dim is imported with the shape of the array
/// fed for it, so shape arithmetic on it is known at import time (as it is
/// to ONNX Runtime): `Shape(x)` of `x: f32[n, 3]` fed a `[5, 3]` array.
/// An array that does not fit the declared shape is left to kiln to refuse.
#[test]
fn symbolic_input_dims_take_the_fed_shape_at_import() {
    let dir = scratch("symbolic");
    let model = dir.join("shape.onnx");
    std::fs::write(
        &model,
        model_over(
            "Shape",
            &[OnnxDim::DimParam("n".into()), OnnxDim::DimValue(3)],
        ),
    )
    .unwrap();
    let x = vec![("x".to_string(), f32s(&[5, 3], &[0.5; 15]))];
    for device in [Device::Reference, Device::Cpu] {
        match fuzz_case::run_model(&model, &x, device) {
            fuzz_case::Outcome::Ok { outputs, .. } => {
                assert_eq!(outputs.len(), 1);
                assert_eq!(outputs[0].0, "y");
                let want = Array::from_vec(vec![2], vec![5i64, 3]).unwrap();
                assert!(compare(&want, &outputs[0].1, TOL).ok, "{outputs:?}");
            }
            other => panic!("{device}: {other:?}"),
        }
    }
    let interface = fuzz_case::onnx_interface(&model).unwrap();
    assert_eq!(interface.inputs, ["x"]);
    let options = fuzz_case::import_options(&interface, &x);
    assert_eq!(options.input_shapes["x"].to_string(), "[5,3]");
    // A fixed dim that disagrees, or another rank: no shape is given.
    for bad in [f32s(&[5, 4], &[0.0; 20]), f32s(&[15], &[0.0; 15])] {
        let feeds = vec![("x".to_string(), bad)];
        let options = fuzz_case::import_options(&interface, &feeds);
        assert!(options.input_shapes.is_empty(), "{options:?}");
        let out = fuzz_case::run_model(&model, &feeds, Device::Reference);
        assert!(
            matches!(
                out,
                fuzz_case::Outcome::ImportError(_) | fuzz_case::Outcome::RunError(_)
            ),
            "{out:?}"
        );
    }
}

/// Sends `requests` (one a line) to a serving runner; its answers, parsed.
fn serve(requests: &[String]) -> Vec<Value> {
    let mut child = Command::new(RUNNER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        writeln!(stdin, "{r}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(answers.len(), requests.len(), "{text}");
    answers
}

#[test]
fn the_runner_answers_each_request_with_one_line() {
    let dir = scratch("serve");
    let add = cases_root().join("example_add");
    let path = |p: &Path| Value::from(p.display().to_string());
    let request = |id: &str, model: &Path, inputs: Value, device: &str| {
        serde_json::json!({
            "id": id, "model": path(model), "inputs": inputs,
            "out_dir": path(&dir.join(id)), "device": device,
        })
        .to_string()
    };
    let add_inputs = serde_json::json!({
        "x": path(&add.join("input_0.npy")),
        "y": path(&add.join("input_1.npy")),
    });
    std::fs::write(dir.join("foo.onnx"), one_node_model("NoSuchOp")).unwrap();
    std::fs::write(dir.join("relu.onnx"), one_node_model("Relu")).unwrap();
    kiln::npy::write(dir.join("x3.npy"), &f32s(&[3], &[1.0, -2.0, 3.0])).unwrap();
    let requests = vec![
        request("cpu", &add.join("model.onnx"), add_inputs.clone(), "cpu"),
        request("ref", &add.join("model.onnx"), add_inputs, "reference"),
        request(
            "import",
            &dir.join("foo.onnx"),
            serde_json::json!({"x": path(&dir.join("x3.npy"))}),
            "cpu",
        ),
        request(
            "run",
            &dir.join("relu.onnx"),
            serde_json::json!({"x": path(&dir.join("x3.npy"))}),
            "cpu",
        ),
        request(
            "missing",
            &dir.join("relu.onnx"),
            serde_json::json!({"x": path(&dir.join("nope.npy"))}),
            "cpu",
        ),
        request(
            "nomodel",
            &dir.join("nope.onnx"),
            serde_json::json!({}),
            "cpu",
        ),
        "{not json".to_string(),
        request(
            "device",
            &dir.join("relu.onnx"),
            serde_json::json!({}),
            "abacus",
        ),
    ];
    let answers = serve(&requests);
    let status: Vec<(&str, &str)> = answers
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or("-"),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("cpu", "ok"),
            ("ref", "ok"),
            ("import", "import_error"),
            ("run", "run_error"),
            ("missing", "bad_request"),
            ("nomodel", "bad_request"),
            ("-", "bad_request"),
            ("device", "bad_request"),
        ],
        "{answers:#?}"
    );
    assert!(answers[2]["error"].as_str().unwrap().contains("NoSuchOp"));
    let want = kiln::npy::read(add.join("output_0.npy")).unwrap();
    for a in &answers[..2] {
        let file = a["outputs"]["z"].as_str().unwrap();
        assert!(file.ends_with("output_0.npy"), "{a}");
        let got = kiln::npy::read(file).unwrap();
        assert!(compare(&want, &got, TOL).ok, "{a}");
        assert!(a["import_ms"].as_f64().unwrap() >= 0.0);
        assert!(a["run_ms"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn the_runner_replays_cases_and_fails_on_a_wrong_one() {
    // A directory of cases stands for each of them, sorted by name.
    let dir = scratch("replay");
    let good = dir.join("good");
    for name in ["example_relu", "example_add"] {
        copy_case(&cases_root().join(name), &good);
    }
    let out = Command::new(RUNNER)
        .args(["--replay".as_ref(), good.as_os_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("PASS example_add: [cpu] "), "{text}");
    assert!(lines[1].starts_with("PASS example_relu: [cpu] "), "{text}");
    assert!(lines[1].contains("| [reference] "), "{text}");

    let bad = dir.join("bad");
    let case = copy_case(&cases_root().join("example_add"), &bad);
    let want = case.join("output_0.npy");
    let a = kiln::npy::read(&want).unwrap();
    let v: Vec<f32> = a.to_f64_vec().iter().map(|&x| x as f32 + 1.0).collect();
    kiln::npy::write(&want, &f32s(a.shape(), &v)).unwrap();
    let out = Command::new(RUNNER)
        .args([
            "--replay".as_ref(),
            bad.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("FAIL example_add: [cpu] output 0 'z': element ["),
        "{text}"
    );
}

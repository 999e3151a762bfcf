//! Tests of `kiln import` (issue 16): its help ends with an example, it
//! refuses to write over the model it reads and files that are not models,
//! names the mistake in `--constant` and lists the inputs, prints a newer
//! opset's warning, and fixes dims with `--dim` and `--input-shape`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-import-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

// A few protobuf fields, enough to write a small ONNX model (the runtime
// crate has no protobuf encoder of its own).

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field `tag` holding an integer.
fn int(tag: u64, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3, &mut out);
    varint(v as u64, &mut out);
    out
}

/// Field `tag` holding bytes (a string or a nested message).
fn bytes(tag: u64, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((tag << 3) | 2, &mut out);
    varint(b.len() as u64, &mut out);
    out.extend_from_slice(b);
    out
}

/// An `f32` tensor input (`ValueInfoProto`) of dims given as sizes or
/// `dim_param` names.
fn input(name: &str, dims: &[&str]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let dim = match d.parse::<i64>() {
            Ok(n) => int(1, n),
            Err(_) => bytes(2, d.as_bytes()),
        };
        shape.extend(bytes(1, &dim));
    }
    let tensor = [int(1, 1), bytes(2, &shape)].concat();
    let ty = bytes(1, &tensor);
    [bytes(1, name.as_bytes()), bytes(2, &ty)].concat()
}

/// `y = relu(x)` with `x: f32[dims]`, at `opset`.
fn relu_model(dims: &[&str], opset: i64) -> Vec<u8> {
    let node = [
        bytes(1, b"x"),
        bytes(2, b"y"),
        bytes(3, b"relu"),
        bytes(4, b"Relu"),
    ]
    .concat();
    let graph = [
        bytes(1, &node),
        bytes(2, b"relu"),
        bytes(11, &input("x", dims)),
        bytes(12, &bytes(1, b"y")),
    ]
    .concat();
    let opset = [bytes(1, b""), int(2, opset)].concat();
    [int(1, 8), bytes(8, &opset), bytes(7, &graph)].concat()
}

fn write_model(dir: &Path, dims: &[&str], opset: i64) -> PathBuf {
    let path = dir.join("relu.onnx");
    std::fs::write(&path, relu_model(dims, opset)).unwrap();
    path
}

#[test]
fn help_ends_with_an_example() {
    let o = kiln(&["import", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let tail = text.trim_end().rsplit_once("Example").map(|(_, t)| t);
    let tail = tail.unwrap_or_else(|| panic!("no example in: {text}"));
    assert!(tail.contains("kiln import "), "{text}");
    assert!(!tail.contains("--help"), "the example is not last: {text}");
}

#[test]
fn output_onto_the_model_itself_is_refused() {
    let dir = temp_dir("self");
    let model = write_model(&dir, &["2"], 13);
    let before = std::fs::read(&model).unwrap();
    let other_name = dir.join(".").join("relu.onnx");
    for out in [&model, &other_name] {
        let o = kiln(&["import", arg(&model), "-o", arg(out)]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("the model being imported"), "{e}");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before, "the model changed");
    // Elsewhere, it imports.
    let out = dir.join("relu.kiln");
    let o = kiln(&["import", arg(&model), "-o", arg(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn endless_and_device_files_are_refused_at_once() {
    let dir = temp_dir("devices");
    let out = dir.join("out.kiln");
    for path in ["/dev/urandom", "/dev/zero"] {
        if !Path::new(path).exists() {
            continue;
        }
        let start = Instant::now();
        let o = kiln(&["import", path, "-o", arg(&out)]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path}: took too long"
        );
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(path) && e.contains("regular file"), "{e}");
    }
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn constant_for_an_input_the_model_lacks_lists_its_inputs() {
    let dir = temp_dir("constant");
    let model = write_model(&dir, &["2"], 13);
    let npy = dir.join("v.npy");
    kiln::npy::write(
        &npy,
        &kiln::graph::Array::from_vec(vec![2], vec![1f32, 2.0]).unwrap(),
    )
    .unwrap();
    let out = dir.join("out.kiln");
    let spec = format!("nosuch={}", npy.display());
    let o = kiln(&["import", arg(&model), "-o", arg(&out), "--constant", &spec]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--constant nosuch") && e.contains("inputs: 'x' (tensor)"),
        "{e}"
    );
    let o = kiln(&["import", arg(&model), "-o", arg(&out), "--sequence", "x=2"]);
    let e = stderr(&o);
    assert!(
        e.contains("--sequence x") && e.contains("not a sequence"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn newer_opset_is_imported_with_a_warning() {
    let dir = temp_dir("opset");
    let model = write_model(&dir, &["2"], 99);
    let out = dir.join("out.kiln");
    let o = kiln(&["import", arg(&model), "-o", arg(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning") && e.contains("opset 99") && e.contains("read as opset 22"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dim_and_input_shape_fix_the_inputs() {
    let dir = temp_dir("dims");
    let model = write_model(&dir, &["batch", "4"], 13);
    let out = dir.join("out.kiln");
    let placeholder = |out: &Path| {
        let g = kiln::graph::Graph::load(out).unwrap();
        let ty = g.node(g.placeholders()[0]).ty.to_string();
        ty
    };
    let o = kiln(&["import", arg(&model), "-o", arg(&out), "--dim", "batch=3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(placeholder(&out), "f32[3,4]");
    let o = kiln(&[
        "import",
        arg(&model),
        "-o",
        arg(&out),
        "--input-shape",
        "x=nx4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(placeholder(&out), "f32[n,4]");
    let o = kiln(&["import", arg(&model), "-o", arg(&out), "--dim", "seq=3"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--dim seq") && e.contains("batch"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

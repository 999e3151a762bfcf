//! A catalog of bad inputs, one test per case: each calls the public API
//! with a mistake a user (or a damaged file) can make and checks that the
//! result is an `Err` of the right kind whose message names the culprit —
//! the feed, fetch, node, variable, file, op or dim — and never a panic.
//! Cases whose inputs are odd but legal (NaN, Inf, empty tensors, integer
//! division by zero) check the values instead.

use kiln::graph::{Error as GraphError, FileErrorKind};
use kiln::prelude::*;
use kiln::Error;
use kiln_onnx::proto::{
    self, tensor_proto::DataType, tensor_shape_proto::dimension::Value as OnnxDim,
};
use prost::Message;
use serde_json::json;
use std::path::PathBuf;

// ---------------------------------------------------------------- helpers

/// Evaluates a failing builder call and the line it is on.
macro_rules! fails {
    ($e:expr) => {
        ($e.unwrap_err(), line!())
    };
}

fn arr(shape: &[usize], v: Vec<f32>) -> Array {
    Array::from_vec(shape.to_vec(), v).unwrap()
}

/// Asserts that `msg` contains every string of `parts`.
#[track_caller]
fn mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks '{p}': {msg}");
    }
}

/// A fresh directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bad-inputs-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `y = relu(x @ w + b)` over `x: f32[batch, 4]`, with a variable `w`.
fn small_model() -> Graph {
    let g = GraphBuilder::with_seed(1);
    let x = g.placeholder("x", DType::F32, shape!["batch", 4]).unwrap();
    let w = g
        .variable("w", Array::filled(DType::F32, &[4, 3], 0.5))
        .unwrap();
    let b = g
        .variable("b", Array::filled(DType::F32, &[3], 0.1))
        .unwrap();
    let y = x
        .matmul(w)
        .unwrap()
        .add(b)
        .unwrap()
        .relu()
        .unwrap()
        .named("y")
        .unwrap();
    g.output(y).unwrap();
    g.into_graph()
}

/// `z = a * b` over two feeds sharing the symbolic dim `n`.
fn two_feed_model() -> Graph {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["n", 2]).unwrap();
    let b = g.placeholder("b", DType::F32, shape!["n", 2]).unwrap();
    g.output(a.mul(b).unwrap().named("z").unwrap()).unwrap();
    g.into_graph()
}

/// The feed error of a run, as (name, full message).
#[track_caller]
fn feed_error(r: kiln::Result<Vec<Array>>) -> (String, String) {
    match r {
        Err(e @ Error::Feed { .. }) => {
            let msg = e.to_string();
            let Error::Feed { name, .. } = e else {
                unreachable!()
            };
            (name, msg)
        }
        Err(other) => panic!("expected a feed error, got {other:?}"),
        Ok(_) => panic!("expected a feed error, the run succeeded"),
    }
}

/// Both compiled and interpreted sessions of `graph`.
fn sessions(graph: &Graph) -> Vec<Session> {
    [Device::Cpu, Device::Reference]
        .into_iter()
        .map(|d| Session::new(graph, d).unwrap())
        .collect()
}

// ------------------------------------------------ .kiln files, byte by byte

/// One tensor of a hand-written safetensors file.
struct RawTensor {
    name: &'static str,
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl RawTensor {
    fn f32(name: &'static str, shape: &[u64], v: &[f32]) -> RawTensor {
        RawTensor {
            name,
            dtype: "F32",
            shape: shape.to_vec(),
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A safetensors file written by hand: the 8-byte header length, the JSON
/// header (`__metadata__` first, holding `meta`, then each tensor's entry
/// with consecutive `data_offsets`) and the tensors' bytes.
fn safetensors_file(meta: Option<(&str, &str)>, tensors: &[RawTensor]) -> Vec<u8> {
    let mut entries = Vec::new();
    if let Some((k, v)) = meta {
        entries.push(format!(
            "\"__metadata__\":{{{}:{}}}",
            serde_json::to_string(k).unwrap(),
            serde_json::to_string(v).unwrap()
        ));
    }
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{offset},{end}]}}",
            serde_json::to_string(t.name).unwrap(),
            t.dtype,
            t.shape
        ));
        offset = end;
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// A `.kiln` file: the graph JSON `graph` in the metadata, and `tensors`.
fn kiln_file(graph: &serde_json::Value, tensors: &[RawTensor]) -> Vec<u8> {
    safetensors_file(Some(("kiln", &graph.to_string())), tensors)
}

fn loc() -> serde_json::Value {
    json!({"file": "crafted.rs", "line": 1, "column": 1})
}

fn f32_type(shape: &[u64]) -> serde_json::Value {
    json!({"dtype": "f32", "shape": shape})
}

/// The graph JSON of `y = neg(exp(x))` over `x: f32[3]`, with the inputs
/// of `exp` and `neg` given, so that tests can wire them wrongly.
fn chain_json(exp_inputs: &[usize], neg_inputs: &[usize]) -> serde_json::Value {
    json!({
        "format": "kiln-graph",
        "version": 1,
        "producer": "a test",
        "nodes": [
            {"name": "x", "op": "placeholder", "dtype": "f32", "shape": [3],
             "inputs": [], "type": f32_type(&[3]), "location": loc()},
            {"name": "e", "op": "unary", "f": "exp",
             "inputs": exp_inputs, "type": f32_type(&[3]), "location": loc()},
            {"name": "y", "op": "unary", "f": "neg",
             "inputs": neg_inputs, "type": f32_type(&[3]), "location": loc()},
        ],
        "outputs": [2],
    })
}

/// The graph JSON of one constant node `c` of type `ty` (its value is the
/// tensor `c` of the file).
fn constant_json(ty: serde_json::Value) -> serde_json::Value {
    json!({
        "format": "kiln-graph",
        "version": 1,
        "producer": "a test",
        "nodes": [
            {"name": "c", "op": "constant", "inputs": [], "type": ty, "location": loc()},
        ],
        "outputs": [0],
    })
}

/// Loads `bytes` as a file named `origin`; returns the file error's kind and
/// message (asserting that the message names `origin`).
#[track_caller]
fn file_error(bytes: &[u8], origin: &str) -> (FileErrorKind, String) {
    match Graph::from_bytes(bytes, origin) {
        Err(e @ GraphError::File { .. }) => {
            let msg = e.to_string();
            let GraphError::File { kind, path, .. } = e else {
                unreachable!()
            };
            assert_eq!(path, origin);
            mentions(&msg, &[origin]);
            (kind, msg)
        }
        Err(other) => panic!("expected a file error, got {other:?}"),
        Ok(_) => panic!("the file loaded"),
    }
}

// ---------------------------------------------------------------- feeds

#[test]
fn feed_with_a_wrong_fixed_dim() {
    let s = Session::new(&small_model(), Device::Reference).unwrap();
    let x = arr(&[2, 5], vec![0.0; 10]);
    let (name, msg) = feed_error(s.run(&[("x", &x)], &["y"]));
    assert_eq!(name, "x");
    mentions(&msg, &["feed 'x'", "dim 1 must be 4", "[2, 5]"]);
}

#[test]
fn feed_with_a_wrong_rank() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = arr(&[8], vec![0.0; 8]);
    let (name, msg) = feed_error(s.run(&[("x", &x)], &["y"]));
    assert_eq!(name, "x");
    mentions(&msg, &["expected rank 2", "f32[batch,4]", "[8]"]);
}

#[test]
fn feed_with_a_wrong_dtype() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = Array::from_vec(vec![2, 4], vec![1i32; 8]).unwrap();
    let (name, msg) = feed_error(s.run(&[("x", &x)], &["y"]));
    assert_eq!(name, "x");
    mentions(&msg, &["expected f32[batch,4]", "got i32[2, 4]"]);
}

#[test]
fn missing_feed() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let (name, msg) = feed_error(s.run(&[], &["y"]));
    assert_eq!(name, "x");
    mentions(&msg, &["feed 'x'", "needed by fetch 'y'", "not fed"]);
}

#[test]
fn fetching_a_placeholder_without_feeding_it() {
    let s = Session::new(&small_model(), Device::Reference).unwrap();
    let (name, msg) = feed_error(s.run(&[], &["x"]));
    assert_eq!(name, "x");
    mentions(&msg, &["needed by fetch 'x'"]);
}

#[test]
fn unknown_feed() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let (name, msg) = feed_error(s.run(&[("x", &x), ("extra_input", &x)], &["y"]));
    assert_eq!(name, "extra_input");
    mentions(&msg, &["feed 'extra_input'", "no node has this name"]);
}

#[test]
fn feeding_a_variable_instead_of_a_placeholder() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let w = arr(&[4, 3], vec![0.0; 12]);
    let (name, msg) = feed_error(s.run(&[("x", &x), ("w", &w)], &["y"]));
    assert_eq!(name, "w");
    mentions(&msg, &["feed 'w'", "a variable node, not an input"]);
}

#[test]
fn the_same_feed_twice() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let (name, msg) = feed_error(s.run(&[("x", &x), ("x", &x)], &["y"]));
    assert_eq!(name, "x");
    mentions(&msg, &["feed 'x'", "fed more than once"]);
}

#[test]
fn a_symbolic_dim_bound_inconsistently_by_two_feeds() {
    for s in sessions(&two_feed_model()) {
        let a = arr(&[3, 2], vec![1.0; 6]);
        let b = arr(&[5, 2], vec![1.0; 10]);
        let (name, msg) = feed_error(s.run(&[("a", &a), ("b", &b)], &["z"]));
        assert_eq!(name, "b");
        mentions(
            &msg,
            &["feed 'b'", "binds 'n' to 5", "feed 'a' bound it to 3"],
        );
    }
}

// ---------------------------------------------------------------- fetches

#[test]
fn unknown_fetch() {
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let e = s.run(&[("x", &x)], &["y", "logits"]).unwrap_err();
    assert!(
        matches!(&e, Error::Fetch { name, .. } if name == "logits"),
        "{e:?}"
    );
    mentions(&e.to_string(), &["fetch 'logits'", "no node has this name"]);
}

#[test]
fn fetch_of_a_tensorflow_style_placeholder_name() {
    // "x:0" is TensorFlow's name for the placeholder x's output; kiln's is "x".
    let s = Session::new(&small_model(), Device::Reference).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let e = s.run(&[("x", &x)], &["x:0"]).unwrap_err();
    assert!(
        matches!(&e, Error::Fetch { name, .. } if name == "x:0"),
        "{e:?}"
    );
    mentions(&e.to_string(), &["fetch 'x:0'"]);
}

#[test]
fn an_unknown_fetch_is_reported_before_feed_problems() {
    // The fetch is checked first: a bad fetch name is not hidden behind a
    // complaint about the feeds it would have needed.
    let s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.run(&[], &["nope"]).unwrap_err();
    assert!(
        matches!(&e, Error::Fetch { name, .. } if name == "nope"),
        "{e:?}"
    );
}

#[test]
fn empty_fetch_list_runs_nothing() {
    // Not an error: nothing is asked for, nothing is computed, and the
    // feeds are still checked.
    for s in sessions(&small_model()) {
        let x = arr(&[1, 4], vec![0.0; 4]);
        let out = s.run(&[("x", &x)], &[]).unwrap();
        assert!(out.is_empty());
        let bad = arr(&[1, 5], vec![0.0; 5]);
        let (name, _) = feed_error(s.run(&[("x", &bad)], &[]));
        assert_eq!(name, "x");
    }
}

// ---------------------------------------------------------------- .kiln files

#[test]
fn kiln_file_with_a_cycle() {
    // exp reads neg and neg reads exp.
    let bytes = kiln_file(&chain_json(&[2], &[1]), &[]);
    let (kind, msg) = file_error(&bytes, "cycle.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(
        &msg,
        &["node 1 'e'", "uses node 2", "a cycle or a dangling edge"],
    );
}

#[test]
fn kiln_file_with_a_self_loop() {
    let bytes = kiln_file(&chain_json(&[1], &[1]), &[]);
    let (kind, msg) = file_error(&bytes, "self.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 1 'e'", "uses node 1"]);
}

#[test]
fn kiln_file_with_a_dangling_edge() {
    let bytes = kiln_file(&chain_json(&[0], &[99]), &[]);
    let (kind, msg) = file_error(&bytes, "dangling.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 2 'y'", "uses node 99"]);
}

#[test]
fn kiln_file_crafted_correctly_loads() {
    // The control case of the crafted files above: wired right, it loads
    // and runs.
    let bytes = kiln_file(&chain_json(&[0], &[1]), &[]);
    let g = Graph::from_bytes(&bytes, "good.kiln").unwrap();
    let s = Session::new(&g, Device::Reference).unwrap();
    let out = s.run(&[("x", &arr(&[3], vec![0.0; 3]))], &["y"]).unwrap();
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[-1.0, -1.0, -1.0]);
}

#[test]
fn kiln_file_with_an_unknown_op() {
    let mut j = chain_json(&[0], &[1]);
    j["nodes"][1]["op"] = json!("frobnicate");
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "unknown-op.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 1 'e'", "unknown op 'frobnicate'"]);
}

#[test]
fn kiln_file_with_an_unknown_unary_function() {
    let mut j = chain_json(&[0], &[1]);
    j["nodes"][1]["f"] = json!("expm1");
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "unknown-fn.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 1 'e'", "expm1"]);
}

#[test]
fn kiln_file_with_a_wrong_arity() {
    // neg given two inputs.
    let bytes = kiln_file(&chain_json(&[0], &[0, 1]), &[]);
    let (kind, msg) = file_error(&bytes, "arity.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 2 'y'", "neg"]);
}

#[test]
fn kiln_file_with_a_duplicate_node_name() {
    let mut j = chain_json(&[0], &[1]);
    j["nodes"][2]["name"] = json!("e");
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "dup.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 2 'e'", "already used"]);
}

#[test]
fn kiln_file_with_an_output_that_is_not_a_node() {
    let mut j = chain_json(&[0], &[1]);
    j["outputs"] = json!([7]);
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "outputs.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["output 7 is not a node"]);
}

#[test]
fn kiln_file_of_a_newer_format_version() {
    let mut j = chain_json(&[0], &[1]);
    j["version"] = json!(3);
    j["producer"] = json!("kiln 9.0.0");
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "new.kiln");
    assert_eq!(kind, FileErrorKind::UnsupportedVersion);
    mentions(
        &msg,
        &["format version 3", "kiln 9.0.0", "reads versions 1 to 2"],
    );
}

#[test]
fn kiln_file_truncated_at_several_points() {
    let g = small_model();
    let bytes = g.to_bytes().unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [
        0,
        5,              // inside the header length
        8,              // right after it
        40,             // inside the JSON
        header_end - 1, // one byte short of the JSON's end
        header_end,     // no data at all
        header_end + 9, // inside the first tensor
        bytes.len() - 1,
    ] {
        let (kind, msg) = file_error(&bytes[..cut], "cut.kiln");
        assert_eq!(kind, FileErrorKind::Truncated, "cut at {cut}: {msg}");
    }
}

#[test]
fn kiln_file_truncated_on_disk_names_the_path() {
    let dir = scratch("truncated-on-disk");
    let path = dir.join("model.kiln");
    let bytes = small_model().to_bytes().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = Graph::load(&path).unwrap_err();
    assert!(
        matches!(
            e,
            GraphError::File {
                kind: FileErrorKind::Truncated,
                ..
            }
        ),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &[&path.display().to_string(), "truncated file"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kiln_file_with_trailing_garbage_is_not_called_truncated() {
    let mut bytes = small_model().to_bytes().unwrap();
    bytes.extend_from_slice(b"garbage after the data");
    let (kind, msg) = file_error(&bytes, "long.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt, "{msg}");
    mentions(&msg, &["22 bytes"]);
}

#[test]
fn not_a_safetensors_file() {
    let (kind, msg) = file_error(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR....", "image.png");
    assert_eq!(kind, FileErrorKind::BadMagic);
    mentions(&msg, &["not a safetensors file"]);
}

#[test]
fn an_onnx_file_loaded_as_a_kiln_graph() {
    let bytes = add_model().encode_to_vec();
    let (kind, msg) = file_error(&bytes, "model.onnx");
    assert_eq!(kind, FileErrorKind::BadMagic);
    mentions(&msg, &["not a kiln graph file"]);
}

#[test]
fn safetensors_file_without_kiln_metadata() {
    let plain = safetensors_file(None, &[RawTensor::f32("w", &[2], &[1.0, 2.0])]);
    let (kind, msg) = file_error(&plain, "weights.safetensors");
    assert_eq!(kind, FileErrorKind::BadMagic);
    mentions(&msg, &["without a kiln graph"]);
    // Metadata, but not kiln's.
    let other = safetensors_file(
        Some(("format", "pt")),
        &[RawTensor::f32("w", &[2], &[1.0, 2.0])],
    );
    let (kind, msg) = file_error(&other, "torch.safetensors");
    assert_eq!(kind, FileErrorKind::BadMagic);
    mentions(&msg, &["without a kiln graph"]);
}

#[test]
fn kiln_metadata_that_is_not_a_kiln_graph() {
    let j = json!({"format": "something-else", "version": 1});
    let (kind, msg) = file_error(&kiln_file(&j, &[]), "other.kiln");
    assert_eq!(kind, FileErrorKind::BadMagic);
    mentions(&msg, &["kiln-graph"]);
}

#[test]
fn kiln_file_whose_tensor_data_disagrees_with_its_declared_shape() {
    // The safetensors entry says f32[3] (12 bytes) but holds 8 bytes.
    let t = RawTensor {
        name: "c",
        dtype: "F32",
        shape: vec![3],
        data: vec![0; 8],
    };
    let (kind, msg) = file_error(
        &kiln_file(&constant_json(f32_type(&[3])), &[t]),
        "size.kiln",
    );
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["'c'", "[3]", "12", "8"]);
}

#[test]
fn kiln_file_whose_weight_disagrees_with_its_node_type() {
    // The tensor is f32[2] but the node declares f32[3].
    let t = RawTensor::f32("c", &[2], &[1.0, 2.0]);
    let (kind, msg) = file_error(
        &kiln_file(&constant_json(f32_type(&[3])), &[t]),
        "type.kiln",
    );
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 0 'c'", "f32[3]", "f32[2]"]);
}

#[test]
fn kiln_file_with_a_constant_but_no_weight_tensor() {
    let (kind, msg) = file_error(
        &kiln_file(&constant_json(f32_type(&[3])), &[]),
        "noweight.kiln",
    );
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 0 'c'", "no weight tensor"]);
}

#[test]
fn kiln_file_with_a_tensor_that_belongs_to_no_node() {
    let stray = RawTensor::f32("stray", &[1], &[1.0]);
    let (kind, msg) = file_error(&kiln_file(&chain_json(&[0], &[1]), &[stray]), "stray.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["tensor 'stray' belongs to no node"]);
}

#[test]
fn kiln_file_with_an_unsupported_tensor_dtype() {
    let t = RawTensor {
        name: "c",
        dtype: "C64",
        shape: vec![1],
        data: vec![0; 8],
    };
    let (kind, msg) = file_error(&kiln_file(&constant_json(f32_type(&[1])), &[t]), "c64.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 0 'c'", "unsupported tensor dtype"]);
}

#[test]
fn kiln_file_with_invalid_bool_bytes() {
    let t = RawTensor {
        name: "c",
        dtype: "BOOL",
        shape: vec![2],
        data: vec![1, 7],
    };
    let j = constant_json(json!({"dtype": "bool", "shape": [2]}));
    let (kind, msg) = file_error(&kiln_file(&j, &[t]), "bool.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 0 'c'", "bool"]);
}

#[test]
fn kiln_file_with_a_huge_declared_tensor() {
    // 2^40 x 2^40 f32 elements declared over 4 bytes of data: refused
    // without allocating anything.
    let t = RawTensor {
        name: "c",
        dtype: "F32",
        shape: vec![1 << 40, 1 << 40],
        data: vec![0; 4],
    };
    let j = constant_json(f32_type(&[1 << 40, 1 << 40]));
    let (kind, msg) = file_error(&kiln_file(&j, &[t]), "huge.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["'c'"]);
}

/// A file whose one node is `iota` of a declared shape `shape`.
fn iota_file(shape: &[u64]) -> Vec<u8> {
    let j = json!({
        "format": "kiln-graph",
        "version": 1,
        "producer": "a test",
        "nodes": [
            {"name": "big", "op": "iota", "dtype": "f32", "shape": shape, "axis": 0,
             "inputs": [], "type": f32_type(shape), "location": loc()},
        ],
        "outputs": [0],
    });
    kiln_file(&j, &[])
}

#[test]
fn kiln_file_with_a_huge_computed_shape() {
    // An iota of 2^40 x 2^40 f32 (2^82 bytes): nothing could ever hold it,
    // so loading refuses the node (loading executes and allocates nothing).
    let (kind, msg) = file_error(&iota_file(&[1 << 40, 1 << 40]), "iota.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(
        &msg,
        &[
            "node 0 'big'",
            "f32[1099511627776,1099511627776]",
            "more bytes than fit in memory",
        ],
    );
}

#[test]
fn kiln_file_with_a_shape_whose_element_count_overflows() {
    // 2^62 * 2^62 elements: the count itself overflows usize.
    let (kind, msg) = file_error(&iota_file(&[1 << 62, 1 << 62]), "iota.kiln");
    assert_eq!(kind, FileErrorKind::Corrupt);
    mentions(&msg, &["node 0 'big'", "more bytes than fit in memory"]);
}

#[test]
fn building_a_value_too_large_to_allocate() {
    let g = GraphBuilder::new();
    let (e, line) = fails!(g.placeholder("x", DType::F64, [1 << 31, 1 << 31, 1 << 31]));
    type_error(e, "placeholder", line, &["more bytes than fit in memory"]);
}

#[test]
fn missing_kiln_file() {
    let e = Graph::load("/nonexistent/dir/model.kiln").unwrap_err();
    assert!(matches!(e, GraphError::Io { .. }), "{e:?}");
    mentions(&e.to_string(), &["/nonexistent/dir/model.kiln"]);
}

// ---------------------------------------------------------------- values

#[test]
fn nan_and_inf_inputs_propagate_without_errors() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [6]).unwrap();
    let y = x
        .mul(2.0)
        .unwrap()
        .add(1.0)
        .unwrap()
        .named("affine")
        .unwrap();
    let r = x.relu().unwrap().named("relu").unwrap();
    let m = x.maximum(0.5).unwrap().named("max").unwrap();
    let s = x.sum_all().unwrap().named("sum").unwrap();
    let sm = x.softmax(-1).unwrap().named("softmax").unwrap();
    for t in [y, r, m, s, sm] {
        g.output(t).unwrap();
    }
    let graph = g.into_graph();
    let inf = f32::INFINITY;
    let x = arr(&[6], vec![f32::NAN, inf, -inf, 0.0, -1.0, 2.0]);
    let mut results = Vec::new();
    for sess in sessions(&graph) {
        let out: Vec<Array> = sess
            .run_outputs(&[("x", &x)])
            .unwrap()
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        let affine = out[0].as_slice::<f32>().unwrap();
        assert!(affine[0].is_nan());
        assert_eq!(&affine[1..], &[inf, -inf, 1.0, -1.0, 5.0]);
        let relu = out[1].as_slice::<f32>().unwrap();
        assert!(relu[0].is_nan(), "relu propagates NaN");
        assert_eq!(&relu[1..], &[inf, 0.0, 0.0, 0.0, 2.0]);
        let max = out[2].as_slice::<f32>().unwrap();
        assert!(max[0].is_nan(), "maximum propagates NaN");
        assert_eq!(&max[1..], &[inf, 0.5, 0.5, 0.5, 2.0]);
        assert!(out[3].as_slice::<f32>().unwrap()[0].is_nan());
        assert!(out[4].as_slice::<f32>().unwrap().iter().all(|v| v.is_nan()));
        results.push(out);
    }
    // Both devices agree (NaN where the other has NaN, equal elsewhere).
    for (a, b) in results[0].iter().zip(&results[1]) {
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        assert!(
            a.iter()
                .zip(b)
                .all(|(x, y)| x == y || (x.is_nan() && y.is_nan())),
            "{a:?} vs {b:?}"
        );
    }
}

#[test]
fn zero_sized_tensors_give_empty_results() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["n", 4]).unwrap();
    let w = g.constant(Array::filled(DType::F32, &[4, 3], 1.0)).unwrap();
    let h = x.matmul(w).unwrap().relu().unwrap().named("h").unwrap();
    let s = x
        .add(1.0)
        .unwrap()
        .sum(&[1], false)
        .unwrap()
        .named("rowsum")
        .unwrap();
    let t = x.sum(&[0], false).unwrap().named("colsum").unwrap();
    let m = x
        .exp()
        .unwrap()
        .mean(&[1], false)
        .unwrap()
        .named("mean")
        .unwrap();
    for o in [h, s, t, m] {
        g.output(o).unwrap();
    }
    let graph = g.into_graph();
    let x = Array::zeros(DType::F32, &[0, 4]);
    for sess in sessions(&graph) {
        let dev = sess.device();
        let out = sess.run_outputs(&[("x", &x)]).unwrap();
        assert_eq!(out[0].1.shape(), &[0, 3], "{dev}");
        assert_eq!(out[1].1.shape(), &[0], "{dev}");
        // Summing over an empty axis gives zeros.
        assert_eq!(out[2].1.as_slice::<f32>().unwrap(), &[0.0; 4], "{dev}");
        assert_eq!(out[3].1.shape(), &[0], "{dev}");
    }
}

#[test]
fn matmul_with_an_empty_inner_dim_gives_zeros() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape![2, "k"]).unwrap();
    let b = g.placeholder("b", DType::F32, shape!["k", 3]).unwrap();
    g.output(a.matmul(b).unwrap().named("c").unwrap()).unwrap();
    let graph = g.into_graph();
    let a = Array::zeros(DType::F32, &[2, 0]);
    let b = Array::zeros(DType::F32, &[0, 3]);
    for sess in sessions(&graph) {
        let out = sess.run(&[("a", &a), ("b", &b)], &["c"]).unwrap();
        assert_eq!(out[0].shape(), &[2, 3]);
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[0.0; 6]);
    }
}

#[test]
fn integer_division_by_zero_is_zero() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::I32, [4]).unwrap();
    let b = g.placeholder("b", DType::I32, [4]).unwrap();
    g.output(a.div(b).unwrap().named("q").unwrap()).unwrap();
    let a64 = g.placeholder("a64", DType::I64, [2]).unwrap();
    let b64 = g.placeholder("b64", DType::I64, [2]).unwrap();
    g.output(a64.div(b64).unwrap().named("q64").unwrap())
        .unwrap();
    let graph = g.into_graph();
    let a = Array::from_vec(vec![4], vec![7i32, -7, i32::MIN, 0]).unwrap();
    let b = Array::from_vec(vec![4], vec![0i32, 2, -1, 0]).unwrap();
    let a64 = Array::from_vec(vec![2], vec![5i64, i64::MIN]).unwrap();
    let b64 = Array::from_vec(vec![2], vec![0i64, -1]).unwrap();
    for s in sessions(&graph) {
        let dev = s.device();
        let out = s
            .run(
                &[("a", &a), ("b", &b), ("a64", &a64), ("b64", &b64)],
                &["q", "q64"],
            )
            .unwrap();
        // x / 0 is 0; division truncates; MIN / -1 wraps to MIN.
        assert_eq!(
            out[0].as_slice::<i32>().unwrap(),
            &[0, -3, i32::MIN, 0],
            "{dev}"
        );
        assert_eq!(out[1].as_slice::<i64>().unwrap(), &[0, i64::MIN], "{dev}");
    }
}

fn gather_model() -> Graph {
    let g = GraphBuilder::new();
    let table = g.placeholder("table", DType::F32, [3, 2]).unwrap();
    let idx = g.placeholder("idx", DType::I32, [2]).unwrap();
    let rows = table.gather(idx, 0).unwrap().named("rows").unwrap();
    g.output(rows.mul(2.0).unwrap().named("out").unwrap())
        .unwrap();
    g.into_graph()
}

/// Runs `gather_model` on `device` with an index out of range; checks that
/// the session still works afterwards and returns the error.
fn gather_out_of_range(device: Device, bad_index: i32) -> Error {
    let s = Session::new(&gather_model(), device).unwrap();
    let table = arr(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let bad = Array::from_vec(vec![2], vec![0i32, bad_index]).unwrap();
    let e = s
        .run(&[("table", &table), ("idx", &bad)], &["out"])
        .unwrap_err();
    // The session is still usable.
    let good = Array::from_vec(vec![2], vec![2i32, -3]).unwrap();
    let out = s
        .run(&[("table", &table), ("idx", &good)], &["out"])
        .unwrap();
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[10.0, 12.0, 2.0, 4.0]);
    e
}

#[test]
fn gather_index_out_of_range_at_run_time_on_the_reference() {
    for bad_index in [3i32, -4, i32::MAX] {
        let e = gather_out_of_range(Device::Reference, bad_index);
        assert!(
            matches!(&e, Error::Graph(GraphError::Eval { node, op, .. }) if node == "rows" && op == "gather"),
            "{e:?}"
        );
        mentions(
            &e.to_string(),
            &[
                "node 'rows' (gather)",
                &format!("index {bad_index} is out of range for an axis of size 3"),
            ],
        );
    }
}

#[test]
fn gather_index_out_of_range_at_run_time_on_the_cpu() {
    for bad_index in [3i32, -4, i32::MAX] {
        let e = gather_out_of_range(Device::Cpu, bad_index);
        assert!(
            matches!(&e, Error::Backend(kiln_codegen::Error::Run { .. })),
            "{e:?}"
        );
        mentions(
            &e.to_string(),
            &[&format!(
                "index {bad_index} is out of range for an axis of size 3"
            )],
        );
    }
}

#[test]
fn gather_index_out_of_range_on_the_cpu_names_the_node() {
    let e = gather_out_of_range(Device::Cpu, 3);
    mentions(&e.to_string(), &["rows", "gather"]);
}

#[test]
fn a_symbolic_dim_bound_by_no_feed() {
    let g = GraphBuilder::new();
    let r = g
        .iota(DType::F32, shape!["m", 2], 0)
        .unwrap()
        .named("r")
        .unwrap();
    g.output(r).unwrap();
    for s in sessions(&g.into_graph()) {
        let dev = s.device();
        let e = s.run(&[], &["r"]).unwrap_err();
        mentions(&e.to_string(), &["'r'", "iota", "symbolic dim 'm'"]);
        match dev {
            Device::Reference => assert!(
                matches!(&e, Error::Graph(GraphError::Eval { node, .. }) if node == "r"),
                "{e:?}"
            ),
            _ => assert!(matches!(&e, Error::Optimizer(_)), "{dev}: {e:?}"),
        }
    }
}

/// `x: f32[n]` broadcast to `[n, n, n, n]`.
fn broadcast_model() -> Graph {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    let b = x
        .broadcast_to(shape!["n", "n", "n", "n"])
        .unwrap()
        .named("big")
        .unwrap();
    g.output(b).unwrap();
    g.into_graph()
}

#[test]
fn a_run_time_shape_too_large_to_allocate_on_the_reference() {
    // 65536^4 = 2^64 elements: the count overflows.
    let x = Array::zeros(DType::F32, &[65536]);
    let s = Session::new(&broadcast_model(), Device::Reference).unwrap();
    let e = s.run(&[("x", &x)], &["big"]).unwrap_err();
    assert!(
        matches!(&e, Error::Graph(GraphError::Eval { node, .. }) if node == "big"),
        "{e:?}"
    );
    mentions(&e.to_string(), &["'big'", "too large to allocate"]);
}

#[test]
fn a_run_time_shape_too_large_to_allocate_on_the_cpu() {
    let x = Array::zeros(DType::F32, &[65536]);
    let s = Session::new(&broadcast_model(), Device::Cpu).unwrap();
    let e = s.run(&[("x", &x)], &["big"]).unwrap_err();
    mentions(&e.to_string(), &["big"]);
}

// ---------------------------------------------------------------- variables

#[test]
fn set_variable_with_the_wrong_shape() {
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s
        .set_variable("w", arr(&[3, 4], vec![0.0; 12]))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Variable { name, .. } if name == "w"),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &["variable 'w'", "expected f32[4,3]", "[3, 4]"],
    );
    // The old value stays.
    assert_eq!(s.variable("w").unwrap().shape(), &[4, 3]);
}

#[test]
fn set_variable_with_the_wrong_dtype() {
    let mut s = Session::new(&small_model(), Device::Reference).unwrap();
    let e = s
        .set_variable("b", Array::from_vec(vec![3], vec![1f64; 3]).unwrap())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Variable { name, .. } if name == "b"),
        "{e:?}"
    );
    mentions(&e.to_string(), &["variable 'b'", "expected f32[3]", "f64"]);
}

#[test]
fn set_an_unknown_variable() {
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.set_variable("bias", arr(&[3], vec![0.0; 3])).unwrap_err();
    assert!(
        matches!(&e, Error::Variable { name, .. } if name == "bias"),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &["variable 'bias'", "no node has this name"],
    );
    let e = s.variable("bias").unwrap_err();
    assert!(
        matches!(&e, Error::Variable { name, .. } if name == "bias"),
        "{e:?}"
    );
}

#[test]
fn set_variable_on_a_placeholder() {
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.set_variable("x", arr(&[1, 4], vec![0.0; 4])).unwrap_err();
    assert!(
        matches!(&e, Error::Variable { name, .. } if name == "x"),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &["variable 'x'", "placeholder", "not a variable"],
    );
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn checkpoint_of_another_graph() {
    let dir = scratch("checkpoint-other");
    let path = dir.join("other.ckpt");
    // Another graph: `w` of another shape, no `b`, and a `scale`.
    let other = {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", DType::F32, [2]).unwrap();
        let w = g
            .variable("w", Array::filled(DType::F32, &[2, 2], 1.0))
            .unwrap();
        let s = g
            .variable("scale", Array::filled(DType::F32, &[1], 1.0))
            .unwrap();
        g.output(x.matmul(w).unwrap().mul(s).unwrap()).unwrap();
        g.into_graph()
    };
    Session::new(&other, Device::Reference)
        .unwrap()
        .save_checkpoint(&path)
        .unwrap();
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let before = s.variable("w").unwrap().clone();
    let e = s.restore_checkpoint(&path).unwrap_err();
    let msg = e.to_string();
    let Error::Checkpoint { problems, .. } = &e else {
        panic!("expected a checkpoint error, got {e:?}")
    };
    assert_eq!(problems.len(), 3, "{msg}");
    mentions(
        &msg,
        &[
            &path.display().to_string(),
            "variable 'w' is f32[2, 2] in the checkpoint but f32[4, 3] in the graph",
            "variable 'b' (f32[3]) is missing",
            "'scale' (f32[1]) is not a variable of this graph",
        ],
    );
    // Nothing changed.
    assert!(s.variable("w").unwrap().same_bits(&before));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoint_truncated() {
    let dir = scratch("checkpoint-truncated");
    let path = dir.join("model.ckpt");
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    s.save_checkpoint(&path).unwrap();
    let full = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for cut in [4, 20, header_end, full.len() - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = s.restore_checkpoint(&path).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Graph(GraphError::File {
                    kind: FileErrorKind::Truncated,
                    ..
                })
            ),
            "cut at {cut}: {e:?}"
        );
        mentions(&e.to_string(), &[&path.display().to_string(), "truncated"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checkpoint_whose_tensor_data_disagrees_with_its_shape() {
    let dir = scratch("checkpoint-size");
    let path = dir.join("model.ckpt");
    // `w` declared f32[4, 3] (48 bytes) over 40 bytes of data.
    let w = RawTensor {
        name: "w",
        dtype: "F32",
        shape: vec![4, 3],
        data: vec![0; 40],
    };
    let b = RawTensor::f32("b", &[3], &[0.0; 3]);
    std::fs::write(
        &path,
        safetensors_file(Some(("kiln.checkpoint", "1")), &[b, w]),
    )
    .unwrap();
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.restore_checkpoint(&path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Graph(GraphError::File {
                kind: FileErrorKind::Corrupt,
                ..
            })
        ),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &[
            &path.display().to_string(),
            "tensor 'w'",
            "needs 48 bytes",
            "hold 40",
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_graph_file_restored_as_a_checkpoint() {
    let dir = scratch("checkpoint-graph");
    let path = dir.join("model.kiln");
    small_model().save(&path).unwrap();
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.restore_checkpoint(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    mentions(
        &e.to_string(),
        &[&path.display().to_string(), "not a kiln checkpoint"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_checkpoint_file() {
    let mut s = Session::new(&small_model(), Device::Cpu).unwrap();
    let e = s.restore_checkpoint("/nonexistent/model.ckpt").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    mentions(&e.to_string(), &["/nonexistent/model.ckpt"]);
}

// ---------------------------------------------------------------- .npy

fn npy_with_header(version: u8, header: &str, body: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY".to_vec();
    b.extend_from_slice(&[version, 0]);
    if version == 1 {
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(body);
    b
}

#[track_caller]
fn npy_error(bytes: &[u8]) -> String {
    match kiln::npy::from_bytes(bytes, "input.npy") {
        Err(e @ Error::Npy { .. }) => {
            let msg = e.to_string();
            mentions(&msg, &["input.npy"]);
            msg
        }
        Err(other) => panic!("expected an npy error, got {other:?}"),
        Ok(a) => panic!("decoded {a:?}"),
    }
}

#[test]
fn npy_with_bad_magic() {
    mentions(
        &npy_error(b"PK\x03\x04 a zip file, perhaps an .npz"),
        &["bad magic"],
    );
}

#[test]
fn npy_with_a_truncated_header() {
    let good = kiln::npy::to_bytes(&arr(&[2], vec![1.0, 2.0]));
    for cut in [7, 9, 30] {
        let msg = npy_error(&good[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("bad magic"),
            "cut at {cut}: {msg}"
        );
    }
    mentions(&npy_error(&good[..30]), &["truncated header"]);
}

#[test]
fn npy_with_truncated_data() {
    let good = kiln::npy::to_bytes(&arr(&[2, 3], vec![1.0; 6]));
    let msg = npy_error(&good[..good.len() - 5]);
    mentions(&msg, &["[2, 3]", "needs 24 data bytes, the file has 19"]);
}

#[test]
fn npy_of_an_unsupported_dtype() {
    let h = "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }\n";
    mentions(
        &npy_error(&npy_with_header(1, h, &[0; 16])),
        &["unsupported dtype 'c8'"],
    );
    let h = "{'descr': '<U5', 'fortran_order': False, 'shape': (1,), }\n";
    mentions(&npy_error(&npy_with_header(1, h, &[0; 20])), &["'U5'"]);
}

#[test]
fn npy_in_fortran_order() {
    let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n";
    mentions(&npy_error(&npy_with_header(1, h, &[0; 16])), &["Fortran"]);
}

#[test]
fn npy_header_without_a_shape() {
    let h = "{'descr': '<f4', 'fortran_order': False, }\n";
    mentions(&npy_error(&npy_with_header(1, h, &[0; 4])), &["no 'shape'"]);
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, two), }\n";
    mentions(
        &npy_error(&npy_with_header(1, h, &[0; 8])),
        &["invalid shape"],
    );
}

#[test]
fn npy_header_that_is_not_text() {
    let mut b = npy_with_header(1, "abcd", &[]);
    b[10] = 0xff;
    mentions(&npy_error(&b), &["header is not text"]);
}

#[test]
fn npy_of_a_huge_declared_shape() {
    let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }\n";
    mentions(
        &npy_error(&npy_with_header(2, h, &[0; 8])),
        &["shape overflows"],
    );
}

#[test]
fn npy_of_an_unknown_version() {
    let good = kiln::npy::to_bytes(&arr(&[1], vec![1.0]));
    let mut b = good.clone();
    b[6] = 9;
    mentions(&npy_error(&b), &["unsupported .npy version 9.0"]);
}

#[test]
fn missing_npy_file() {
    let e = kiln::npy::read("/nonexistent/input.npy").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    mentions(&e.to_string(), &["/nonexistent/input.npy"]);
}

// ---------------------------------------------------------------- ONNX

fn onnx_input(name: &str, elem: DataType, dims: &[OnnxDim]) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: elem as i32,
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
    }
}

fn onnx_output(name: &str) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

fn onnx_node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> proto::NodeProto {
    proto::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn onnx_model(graph: proto::GraphProto, opset: i64) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "bad_inputs".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// `y = x + x` over `x: f32[2]` (a model that imports).
fn add_model() -> proto::ModelProto {
    onnx_model(
        proto::GraphProto {
            name: "add".into(),
            node: vec![onnx_node("Add", "add", &["x", "x"], &["y"])],
            input: vec![onnx_input("x", DataType::Float, &[OnnxDim::DimValue(2)])],
            output: vec![onnx_output("y")],
            ..Default::default()
        },
        13,
    )
}

#[track_caller]
fn onnx_import_error(model: &proto::ModelProto) -> kiln_onnx::Error {
    kiln_onnx::import_bytes(&model.encode_to_vec(), &Default::default()).unwrap_err()
}

#[test]
fn onnx_control_model_imports() {
    let g = kiln_onnx::import_bytes(&add_model().encode_to_vec(), &Default::default()).unwrap();
    let s = Session::new(&g, Device::Reference).unwrap();
    let out = s.run(&[("x", &arr(&[2], vec![1.0, 2.0]))], &["y"]).unwrap();
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[2.0, 4.0]);
}

#[test]
fn onnx_file_that_is_not_protobuf() {
    let dir = scratch("onnx-not-protobuf");
    let path = dir.join("model.onnx");
    std::fs::write(&path, b"\xff\xff\xff\xff this is not a protobuf message").unwrap();
    let e = Graph::from_onnx(&path).unwrap_err();
    let Error::Onnx(kiln_onnx::Error::File { inner, .. }) = &e else {
        panic!("expected an ONNX file error, got {e:?}")
    };
    assert!(matches!(**inner, kiln_onnx::Error::Decode(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &[&path.display().to_string(), "not an ONNX model"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn onnx_model_without_a_graph() {
    let mut m = add_model();
    m.graph = None;
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(&e.to_string(), &["no graph"]);
}

#[test]
fn missing_onnx_file() {
    let e = Graph::from_onnx("/nonexistent/model.onnx").unwrap_err();
    assert!(
        matches!(e, Error::Onnx(kiln_onnx::Error::Io { .. })),
        "{e:?}"
    );
    mentions(&e.to_string(), &["/nonexistent/model.onnx"]);
}

#[test]
fn onnx_model_with_unsupported_ops_lists_every_one() {
    let mut m = add_model();
    let g = m.graph.as_mut().unwrap();
    g.node
        .push(onnx_node("FrobnicateV2", "frob", &["y"], &["z"]));
    let mut custom = onnx_node("FusedGelu", "", &["z"], &["w"]);
    custom.domain = "com.microsoft".into();
    g.node.push(custom);
    g.output = vec![onnx_output("w")];
    let e = onnx_import_error(&m);
    let nodes = e.unsupported().expect("an unsupported-ops error").to_vec();
    assert_eq!(nodes.len(), 2, "{e}");
    assert_eq!(nodes[0].node, "frob");
    assert_eq!(nodes[0].opset, 13);
    assert!(nodes[0].op.contains("FrobnicateV2"));
    // A node without a name is named after its first output.
    assert_eq!(nodes[1].node, "w");
    assert!(nodes[1].op.contains("FusedGelu"));
    mentions(
        &e.to_string(),
        &[
            "2 unsupported node(s)",
            "FrobnicateV2 node 'frob' (opset 13)",
            "FusedGelu",
            "com.microsoft",
        ],
    );
}

#[test]
fn onnx_reshape_whose_shape_is_a_run_time_input() {
    let m = onnx_model(
        proto::GraphProto {
            name: "reshape".into(),
            node: vec![
                onnx_node("Mul", "double_shape", &["target", "two"], &["shape"]),
                onnx_node("Reshape", "reshape1", &["data", "shape"], &["out"]),
            ],
            input: vec![
                onnx_input(
                    "data",
                    DataType::Float,
                    &[OnnxDim::DimValue(2), OnnxDim::DimValue(4)],
                ),
                onnx_input("target", DataType::Int64, &[OnnxDim::DimValue(2)]),
            ],
            initializer: vec![proto::TensorProto {
                name: "two".into(),
                data_type: DataType::Int64 as i32,
                dims: vec![],
                int64_data: vec![2],
                ..Default::default()
            }],
            output: vec![onnx_output("out")],
            ..Default::default()
        },
        13,
    );
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::NeedsValue { .. }), "{e:?}");
    assert_eq!(e.needed_inputs(), Some(&["target".to_string()][..]));
    mentions(
        &e.to_string(),
        &[
            "Reshape node 'reshape1'",
            "input 'shape'",
            "target",
            "constant",
        ],
    );
}

/// From bytes, external data has no folder to be found in (from a file it
/// is read: `bad_onnx.rs`).
#[test]
fn onnx_initializer_with_external_data() {
    let mut m = add_model();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(proto::TensorProto {
        name: "weights".into(),
        data_type: DataType::Float as i32,
        dims: vec![1000],
        data_location: proto::tensor_proto::DataLocation::External as i32,
        external_data: vec![proto::StringStringEntryProto {
            key: "location".into(),
            value: "weights.bin".into(),
        }],
        ..Default::default()
    });
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &[
            "initializer 'weights'",
            "external file",
            "weights.bin",
            "import the model from its file path",
        ],
    );
}

#[test]
fn onnx_initializer_with_more_data_than_its_dims() {
    let mut m = add_model();
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(proto::TensorProto {
        name: "bias".into(),
        data_type: DataType::Float as i32,
        dims: vec![2, 2],
        float_data: vec![1.0; 5],
        ..Default::default()
    });
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &[
            "initializer 'bias'",
            "[2, 2] need 4 elements",
            "float_data has 5",
        ],
    );
    // The same in raw bytes.
    let mut m = add_model();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(proto::TensorProto {
            name: "bias".into(),
            data_type: DataType::Float as i32,
            dims: vec![2],
            raw_data: vec![0; 12],
            ..Default::default()
        });
    let e = onnx_import_error(&m);
    mentions(
        &e.to_string(),
        &["initializer 'bias'", "raw_data has 12 bytes"],
    );
}

#[test]
fn onnx_initializer_of_huge_dims() {
    let mut m = add_model();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(proto::TensorProto {
            name: "huge".into(),
            data_type: DataType::Float as i32,
            dims: vec![1 << 40, 1 << 40],
            float_data: vec![1.0],
            ..Default::default()
        });
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(&e.to_string(), &["initializer 'huge'"]);
}

#[test]
fn onnx_model_of_an_unsupported_opset() {
    let mut m = add_model();
    m.opset_import[0].version = 3;
    let e = onnx_import_error(&m);
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(&e.to_string(), &["opset 3"]);
}

// ---------------------------------------------------------------- devices

#[test]
fn cuda_session_without_a_gpu() {
    match Session::new(&small_model(), Device::Cuda(0)) {
        Ok(_) => eprintln!("a CUDA device is present: nothing to check"),
        Err(e) => {
            assert!(
                matches!(&e, Error::Device { device, .. } if device == "cuda:0"),
                "{e:?}"
            );
            let msg = e.to_string();
            mentions(&msg, &["device cuda:0"]);
            assert!(
                msg.contains("no CUDA driver") || msg.contains("CUDA device(s)"),
                "says what is missing: {msg}"
            );
        }
    }
}

#[test]
fn cuda_device_that_does_not_exist() {
    let e = Session::new(&small_model(), Device::Cuda(4096))
        .err()
        .unwrap();
    assert!(
        matches!(&e, Error::Device { device, .. } if device == "cuda:4096"),
        "{e:?}"
    );
    mentions(&e.to_string(), &["cuda:4096"]);
}

#[test]
fn unknown_device_name() {
    let e = "tpu:0".parse::<Device>().unwrap_err();
    assert!(
        matches!(&e, Error::Device { device, .. } if device == "tpu:0"),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &["tpu:0", "available: cpu, reference, cuda"],
    );
}

// ---------------------------------------------------------------- building

/// Asserts a type error of `op` at this file's `line` mentioning `parts`.
#[track_caller]
fn type_error(e: GraphError, op: &str, line: u32, parts: &[&str]) {
    kiln_tests::assert_type_error(e, op, file!(), line, parts);
}

#[test]
fn matmul_of_mismatched_dims_names_the_source_line() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["batch", 3]).unwrap();
    let b = g.placeholder("b", DType::F32, [4, 5]).unwrap();
    let (e, line) = fails!(a.matmul(b));
    type_error(e, "matmul", line, &["f32[batch,3]", "f32[4,5]", "3 vs 4"]);
}

#[test]
fn binary_op_of_mismatched_dtypes() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [3]).unwrap();
    let b = g.placeholder("b", DType::I32, [3]).unwrap();
    let (e, line) = fails!(a.add(b));
    type_error(e, "add", line, &["f32[3]", "i32[3]"]);
}

#[test]
fn broadcast_of_incompatible_shapes() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2, 3]).unwrap();
    let b = g.placeholder("b", DType::F32, [4]).unwrap();
    let (e, line) = fails!(a.mul(b));
    type_error(e, "mul", line, &["f32[2,3]", "f32[4]"]);
}

#[test]
fn duplicate_node_name() {
    let g = GraphBuilder::new();
    g.placeholder("x", DType::F32, [3]).unwrap();
    let (e, line) = fails!(g.placeholder("x", DType::F32, [4]));
    assert!(
        matches!(&e, GraphError::Name { name, location, .. } if name == "x" && location.line == line),
        "{e:?}"
    );
    mentions(
        &e.to_string(),
        &[
            "node name 'x'",
            "already used",
            &format!("{}:{line}", file!()),
        ],
    );
}

#[test]
fn renaming_onto_an_existing_name() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    let y = x.neg().unwrap();
    let (e, line) = fails!(y.named("x"));
    assert!(
        matches!(&e, GraphError::Name { name, location, .. } if name == "x" && location.line == line),
        "{e:?}"
    );
}

#[test]
fn invalid_node_names() {
    let g = GraphBuilder::new();
    for (bad, why) in [
        ("", "is empty"),
        ("my input", "whitespace"),
        ("say\"hi\"", "quote"),
        ("__fn0/x", "reserved"),
    ] {
        let e = g.placeholder(bad, DType::F32, [1]).unwrap_err();
        assert!(
            matches!(&e, GraphError::Name { name, .. } if name == bad),
            "{e:?}"
        );
        mentions(&e.to_string(), &[&format!("'{bad}'"), why]);
    }
    let long = "n".repeat(600);
    let e = g.placeholder(&long, DType::F32, [1]).unwrap_err();
    mentions(&e.to_string(), &["longer than 512 bytes"]);
}

#[test]
fn reshape_to_a_wrong_element_count() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2, 3]).unwrap();
    let (e, line) = fails!(x.reshape([4, 2]));
    type_error(e, "reshape", line, &["f32[2,3]", "[4,2]"]);
}

#[test]
fn reduction_over_a_bad_axis() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2, 3]).unwrap();
    let (e, line) = fails!(x.sum(&[2], false));
    type_error(e, "reduce_sum", line, &["axis 2", "f32[2,3]"]);
    let (e, line) = fails!(x.softmax(-3));
    assert!(matches!(e, GraphError::Type { .. }), "{e:?}");
    mentions(&e.to_string(), &[&format!("{}:{line}:", file!()), "-3"]);
}

#[test]
fn permute_with_a_bad_permutation() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2, 3, 4]).unwrap();
    let (e, line) = fails!(x.permute(&[0, 0, 1]));
    type_error(e, "permute", line, &["[0, 0, 1]"]);
}

#[test]
fn conv_with_mismatched_channels() {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("img", DType::F32, shape!["n", 3, 8, 8])
        .unwrap();
    let w = g
        .constant(Array::filled(DType::F32, &[16, 4, 3, 3], 0.1))
        .unwrap();
    let (e, line) = fails!(x.conv2d(w, Conv2dOptions::default()));
    type_error(
        e,
        "conv2d",
        line,
        &["f32[n,3,8,8]", "f32[16,4,3,3]", "channel"],
    );
}

#[test]
fn gather_with_float_indices() {
    let g = GraphBuilder::new();
    let t = g.placeholder("t", DType::F32, [5, 2]).unwrap();
    let i = g.placeholder("i", DType::F32, [3]).unwrap();
    let (e, line) = fails!(t.gather(i, 0));
    type_error(e, "gather", line, &["indices must be i32 or i64, got f32"]);
}

#[test]
fn assign_of_the_wrong_shape() {
    let g = GraphBuilder::new();
    let v = g
        .variable("v", Array::filled(DType::F32, &[3], 0.0))
        .unwrap();
    let u = g.constant(Array::filled(DType::F32, &[4], 1.0)).unwrap();
    let (e, line) = fails!(v.assign(u));
    type_error(e, "assign", line, &["f32[3]", "f32[4]"]);
}

#[test]
fn assign_to_something_that_is_not_a_variable() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    let u = g.constant(Array::filled(DType::F32, &[3], 1.0)).unwrap();
    let (e, line) = fails!(x.assign(u));
    type_error(e, "assign", line, &["must be a variable"]);
}

#[test]
fn while_loop_whose_body_changes_a_variables_shape() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    let (e, line) = fails!(g.while_loop(
        &[x],
        &[],
        |_, v| v[0].sum_all()?.lt(10.0),
        |_, v| Ok(vec![v[0].pad(&[0], &[1], 0.0)?])
    ));
    type_error(e, "while", line, &["f32[2]", "f32[3]"]);
}

#[test]
fn cond_whose_branches_return_different_types() {
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::Bool, Shape::scalar()).unwrap();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    let (e, line) = fails!(g.cond(
        p,
        &[x],
        |_, v| Ok(vec![v[0]]),
        |_, v| Ok(vec![v[0].sum_all()?])
    ));
    type_error(e, "cond", line, &["branches' results differ", "f32[2]"]);
}

#[test]
fn cond_with_a_non_scalar_predicate() {
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::Bool, [2]).unwrap();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    let (e, line) = fails!(g.cond(p, &[x], |_, v| Ok(vec![v[0]]), |_, v| Ok(vec![v[0]])));
    type_error(e, "cond", line, &["predicate must be a bool scalar"]);
}

#[test]
fn operand_from_another_builder() {
    let g1 = GraphBuilder::new();
    let g2 = GraphBuilder::new();
    let a = g1.placeholder("a", DType::F32, [2]).unwrap();
    let b = g2.placeholder("b", DType::F32, [2]).unwrap();
    let (e, line) = fails!(a.add(b));
    type_error(e, "add", line, &["'b'", "different graph builder"]);
}

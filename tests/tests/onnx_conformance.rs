//! The ONNX conformance runner: every case of the ONNX backend test data
//! (`scripts/onnx-test-data.sh` fetches it from the pinned onnx==1.22.0
//! wheel; `KILN_ONNX_DATA` names the directory) imported with
//! `kiln_onnx::import`, fed each `test_data_set_*/input_*.pb` (inputs that
//! decide shapes bound at import time, as the importer asks: see
//! `run_case`), run on the reference interpreter and on `Device::Cpu`, and
//! compared with `output_*.pb` at ONNX's tolerances (rtol 1e-3, atol 1e-7);
//! cases with random ops (`RANDOM_OPS`, and `Dropout` in training mode
//! with a nonzero ratio) compare output shapes and types only. Values of sequence and optional types (stored as `SequenceProto` /
//! `OptionalProto`, read as the model declares them) are fed and compared
//! element by element, as the importer makes them placeholders and outputs
//! (`x/0`, `x/1`, ...).
//!
//! Prints pass / fail / unsupported counts per op and overall, and checks
//! `tests/onnx/expected-pass.txt`: every case listed there must pass (no
//! regression). Every "core" case must pass too: a node case of a single
//! op among `CORE_OPS` (the ops the issue names as common in CNN, MLP and
//! transformer models) whose inputs and outputs are float32, int64 or bool. `KILN_ONNX_WRITE_EXPECTED=1` rewrites the list from this
//! run; `KILN_ONNX_ONLY=substring[,substring...]` runs only matching cases;
//! `KILN_ONNX_VERBOSE=1` prints each failure's reason.
//!
//! Without `KILN_ONNX_DATA` the test fetches the data itself into
//! `target/onnx-test-data` (`kiln_tests::setup::onnx_test_data`, once), and
//! fails, saying what to run, where it cannot. Its one-line summary goes to
//! the terminal even when the runner captures output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln::graph::{Array, Graph};
use kiln::prelude::*;
use kiln_onnx::tensor::DataValue;

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Pass,
    /// Imported, but a device failed or gave other values.
    Fail(String),
    /// The importer refused it (op, attribute or type).
    Unsupported(String),
}

/// Every case directory (one with `model.onnx`), as `kind/name`.
fn cases(data: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for kind in ["node", "pytorch-converted", "pytorch-operator", "simple"] {
        let Ok(rd) = std::fs::read_dir(data.join(kind)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.join("model.onnx").is_file() {
                v.push((format!("{kind}/{}", e.file_name().to_string_lossy()), p));
            }
        }
    }
    // The light models: model-zoo networks with generated weights, run on
    // an all-zero input (how their expected outputs were made: checked
    // against ONNX Runtime, which matches them exactly).
    if let Ok(rd) = std::fs::read_dir(data.join("light")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "onnx") {
                let stem = p
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                v.push((format!("light/{stem}"), p));
            }
        }
    }
    v.sort();
    v
}

/// A light model on an all-zero input against its `_output_0.pb`, on the
/// CPU (the reference interpreter, plain loops in f64, would take minutes
/// on these ImageNet networks).
fn run_light(model: &Path) -> Outcome {
    let graph = match kiln_onnx::import(model) {
        Ok(g) => g,
        Err(e) => return Outcome::Unsupported(e.to_string()),
    };
    let want_path = model.with_file_name(format!(
        "{}_output_0.pb",
        model.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let want = match kiln_onnx::tensor::read_tensor_file(&want_path) {
        Ok((_, a)) => a,
        Err(e) => return Outcome::Fail(e),
    };
    let mut zeros = Vec::new();
    for p in graph.placeholders() {
        let n = graph.node(p);
        let dims: Option<Vec<usize>> = n.ty.shape.0.iter().map(|d| d.fixed()).collect();
        let Some(dims) = dims else {
            return Outcome::Fail(format!("input '{}' has symbolic dims", n.name));
        };
        zeros.push((n.name.clone(), Array::zeros(n.ty.dtype, &dims)));
    }
    let feeds: Vec<(&str, &Array)> = zeros.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let out = graph.outputs()[0];
    let name = graph.node(out).name.clone();
    let got = Session::new(&graph, Device::Cpu).and_then(|s| s.run(&feeds, &[name.as_str()]));
    match got {
        Ok(g) => match close(&want, &g[0]) {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!("Cpu, output '{name}': {e}")),
        },
        Err(e) => Outcome::Fail(format!("Cpu: {e}")),
    }
}

/// The ONNX op types of a model's main graph (for the per-op table).
/// The op types of a model's main graph (sorted, once each), and whether
/// every graph input and output is a float32, int64 or bool tensor.
fn model_info(model: &Path) -> (Vec<String>, bool) {
    use kiln_onnx::proto::{tensor_proto::DataType, type_proto};
    use prost::Message;
    let Ok(bytes) = std::fs::read(model) else {
        return (Vec::new(), false);
    };
    let Ok(m) = kiln_onnx::proto::ModelProto::decode(bytes.as_slice()) else {
        return (Vec::new(), false);
    };
    let Some(g) = m.graph else {
        return (Vec::new(), false);
    };
    let core_types = g.input.iter().chain(&g.output).all(|v| {
        match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => [
                DataType::Float as i32,
                DataType::Int64 as i32,
                DataType::Bool as i32,
            ]
            .contains(&t.elem_type),
            _ => false,
        }
    });
    let mut ops: Vec<String> = g.node.into_iter().map(|n| n.op_type).collect();
    ops.sort();
    ops.dedup();
    (ops, core_types)
}

/// The ops the issue names as common in CNN, MLP and transformer models:
/// every float32/int64/bool node case of one of them must pass.
const CORE_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Einsum",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Softmax",
    "LogSoftmax",
    "Erf",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Max",
    "Min",
    "Clip",
    "Where",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "Cast",
    "LayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Reshape",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "ScatterND",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Expand",
    "Shape",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Pad",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ArgMax",
    "TopK",
    "CumSum",
    "Trilu",
    "Dropout",
    "Identity",
    "If",
    "Loop",
];

/// Ops whose outputs are random samples: kiln's generator is not numpy's,
/// so cases using them compare shapes and types only.
const RANDOM_OPS: [&str; 5] = [
    "Bernoulli",
    "RandomUniform",
    "RandomUniformLike",
    "RandomNormal",
    "RandomNormalLike",
];

/// Whether a model has a `Dropout` that draws a random mask: its
/// `training_mode` is true (or unknown) and its ratio not a known 0. The
/// values come from the data set's `inputs` (of the `declared` graph
/// inputs) or the initializers.
fn training_dropout(model: &Path, declared: &Declared, inputs: &[DataValue]) -> bool {
    use prost::Message;
    let Some(g) = std::fs::read(model)
        .ok()
        .and_then(|b| kiln_onnx::proto::ModelProto::decode(b.as_slice()).ok())
        .and_then(|m| m.graph)
    else {
        return false;
    };
    let first = |name: &str| -> Option<f64> {
        if let Some(i) = declared.iter().position(|(n, _)| n == name) {
            return match &inputs[i] {
                DataValue::Tensor(a) => a.to_f64_vec().first().copied(),
                _ => None,
            };
        }
        let t = g.initializer.iter().find(|t| t.name == name)?;
        kiln_onnx::tensor::to_array(t)
            .ok()?
            .to_f64_vec()
            .first()
            .copied()
    };
    g.node.iter().any(|n| {
        let on = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
        n.op_type == "Dropout"
            && on(2).is_some_and(|t| first(t) != Some(0.0))
            && on(1).is_none_or(|r| first(r) != Some(0.0))
    })
}

fn close(want: &Array, got: &Array) -> Result<(), String> {
    if want.shape() != got.shape() {
        return Err(format!("shape {:?}, want {:?}", got.shape(), want.shape()));
    }
    if want.dtype() != got.dtype() {
        return Err(format!("dtype {}, want {}", got.dtype(), want.dtype()));
    }
    for (i, (w, g)) in want.to_f64_vec().iter().zip(got.to_f64_vec()).enumerate() {
        let ok = (w.is_nan() && g.is_nan()) || *w == g || (w - g).abs() <= ATOL + RTOL * w.abs();
        if !ok {
            return Err(format!("element {i}: {g}, want {w}"));
        }
    }
    Ok(())
}

/// A model's graph inputs that are not initializers (the order of the
/// test data's `input_N.pb`) and its graph outputs (that of
/// `output_N.pb`): names and declared types.
type Declared = Vec<(String, kiln_onnx::proto::TypeProto)>;

fn declared_values(model: &Path) -> Result<(Declared, Declared), String> {
    use prost::Message;
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let m = kiln_onnx::proto::ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let g = m.graph.ok_or("no graph")?;
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let typed = |v: &kiln_onnx::proto::ValueInfoProto| {
        (v.name.clone(), v.r#type.clone().unwrap_or_default())
    };
    let inputs = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(typed)
        .collect();
    let outputs = g.output.iter().map(typed).collect();
    Ok((inputs, outputs))
}

/// The tensors of a value as the importer makes them graph inputs or
/// outputs: a tensor itself, a sequence's elements (`name/i`), an
/// optional's value (nothing when it holds none).
fn flatten(name: &str, v: &DataValue, out: &mut Vec<(String, Array)>) -> Result<(), String> {
    match v {
        DataValue::Tensor(a) => out.push((name.to_string(), a.clone())),
        DataValue::Sequence(vs) => {
            for (i, e) in vs.iter().enumerate() {
                match e {
                    DataValue::Tensor(a) => out.push((format!("{name}/{i}"), a.clone())),
                    _ => return Err(format!("'{name}': sequences of non-tensors")),
                }
            }
        }
        DataValue::Optional(None) => {}
        DataValue::Optional(Some(v)) => flatten(name, v, out)?,
    }
    Ok(())
}

/// Runs one case on both devices. Graph inputs a node needs at import time
/// (a Reshape's shape, a Resize's sizes: node tests feed them as inputs)
/// are bound to the data set's values (`ImportOptions::constant_inputs`,
/// what `kiln import --constant` does), one by one as the importer asks.
/// Sequence inputs pass their element shapes
/// (`ImportOptions::sequence_inputs`) and feed each element; optional
/// inputs that hold none are listed in `ImportOptions::absent_inputs`.
fn run_case(dir: &Path) -> Outcome {
    if dir.extension().is_some_and(|x| x == "onnx") {
        return run_light(dir);
    }
    let model = dir.join("model.onnx");
    let (declared_in, declared_out) = match declared_values(&model) {
        Ok(d) => d,
        Err(e) => return Outcome::Unsupported(e),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Fail("no test_data_set".into());
    }
    for set in sets {
        let label = set
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let inputs = match read_numbered(&set, "input", &declared_in) {
            Ok(i) => i,
            Err(e) => return Outcome::Unsupported(format!("{label}: {e}")),
        };
        let mut options = kiln_onnx::ImportOptions::default();
        for ((name, _), v) in declared_in.iter().zip(&inputs) {
            let v = match v {
                DataValue::Optional(None) => {
                    options.absent_inputs.insert(name.clone());
                    continue;
                }
                DataValue::Optional(Some(v)) => v,
                v => v,
            };
            if let DataValue::Sequence(elems) = v {
                let shapes = elems
                    .iter()
                    .map(|e| match e {
                        DataValue::Tensor(a) => Ok(kiln::graph::Shape::from(a.shape())),
                        _ => Err("a sequence of non-tensors".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>();
                match shapes {
                    Ok(s) => options.sequence_inputs.insert(name.clone(), s),
                    Err(e) => return Outcome::Unsupported(format!("{label}: '{name}': {e}")),
                };
            }
        }
        let graph = loop {
            match kiln_onnx::import_with(&model, &options) {
                Ok(g) => break g,
                Err(e) => {
                    // Bind the (tensor) graph inputs the needed value comes from.
                    let wanted: Vec<(String, Array)> = e
                        .needed_inputs()
                        .unwrap_or_default()
                        .iter()
                        .filter(|v| !options.constant_inputs.contains_key(*v))
                        .filter_map(|v| {
                            let i = declared_in.iter().position(|(n, _)| n == v)?;
                            match &inputs[i] {
                                DataValue::Tensor(a) => Some((v.clone(), a.clone())),
                                DataValue::Optional(Some(t)) => match &**t {
                                    DataValue::Tensor(a) => Some((v.clone(), a.clone())),
                                    _ => None,
                                },
                                _ => None,
                            }
                        })
                        .collect();
                    if wanted.is_empty() {
                        return Outcome::Unsupported(e.to_string());
                    }
                    options.constant_inputs.extend(wanted);
                }
            }
        };
        let mut feeds = Vec::new();
        for ((name, _), v) in declared_in.iter().zip(&inputs) {
            if options.constant_inputs.contains_key(name) {
                continue;
            }
            if let Err(e) = flatten(name, v, &mut feeds) {
                return Outcome::Unsupported(format!("{label}: {e}"));
            }
        }
        let outputs = match read_numbered(&set, "output", &declared_out) {
            Ok(o) => o,
            Err(e) => return Outcome::Unsupported(format!("{label}: {e}")),
        };
        let mut want = Vec::new();
        for ((name, _), v) in declared_out.iter().zip(&outputs) {
            if let Err(e) = flatten(name, v, &mut want) {
                return Outcome::Unsupported(format!("{label}: {e}"));
            }
        }
        let random = model_info(&model)
            .0
            .iter()
            .any(|o| RANDOM_OPS.contains(&o.as_str()))
            || training_dropout(&model, &declared_in, &inputs);
        if let Err(e) = run_set(&graph, &feeds, &want, random) {
            return Outcome::Fail(format!("{label}: {e}"));
        }
    }
    Outcome::Pass
}

/// The set's `{prefix}_N.pb` files, read as the `declared` types say (a
/// tensor, a sequence or an optional); there must be one per declared
/// value.
fn read_numbered(
    set: &Path,
    prefix: &str,
    declared: &[(String, kiln_onnx::proto::TypeProto)],
) -> Result<Vec<DataValue>, String> {
    let mut v = Vec::new();
    for (i, (name, ty)) in declared.iter().enumerate() {
        let p = set.join(format!("{prefix}_{i}.pb"));
        if !p.is_file() {
            return Err(format!(
                "no {prefix}_{i}.pb ('{name}'): {i} {prefix}s in the data, {} in the model",
                declared.len()
            ));
        }
        v.push(kiln_onnx::tensor::read_value_file(&p, ty)?.1);
    }
    if set
        .join(format!("{prefix}_{}.pb", declared.len()))
        .is_file()
    {
        return Err(format!(
            "more {prefix}s in the data than the model's {}",
            declared.len()
        ));
    }
    Ok(v)
}

/// Feeds `feeds` to `graph` on both devices and compares with `want`
/// (ONNX names, sequence elements as `name/i`: the graph's placeholders and
/// outputs in order).
fn run_set(
    graph: &Graph,
    feeds: &[(String, Array)],
    want: &[(String, Array)],
    random: bool,
) -> Result<(), String> {
    let placeholders = graph.placeholders();
    if placeholders.len() != feeds.len() {
        return Err(format!(
            "{} inputs to feed, {} placeholders",
            feeds.len(),
            placeholders.len()
        ));
    }
    // Placeholders carry the ONNX input names (made fit for kiln).
    let feeds: Vec<(String, &Array)> = placeholders
        .iter()
        .zip(feeds)
        .map(|(&p, (_, a))| (graph.node(p).name.clone(), a))
        .collect();
    let feeds: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let fetch_names: Vec<String> = graph
        .outputs()
        .iter()
        .map(|&o| graph.node(o).name.clone())
        .collect();
    if fetch_names.len() != want.len() {
        return Err(format!(
            "{} outputs in the data, {} in the graph",
            want.len(),
            fetch_names.len()
        ));
    }
    let fetches: Vec<&str> = fetch_names.iter().map(|s| s.as_str()).collect();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(graph, device).map_err(|e| format!("{device:?}: {e}"))?;
        let got = s
            .run(&feeds, &fetches)
            .map_err(|e| format!("{device:?}: {e}"))?;
        for ((name, want), g) in want.iter().zip(&got) {
            if random {
                if want.shape() != g.shape() || want.dtype() != g.dtype() {
                    return Err(format!(
                        "{device:?}, output '{name}': {}{:?}, want {}{:?}",
                        g.dtype(),
                        g.shape(),
                        want.dtype(),
                        want.shape()
                    ));
                }
                continue;
            }
            close(want, g).map_err(|e| format!("{device:?}, output '{name}': {e}"))?;
        }
    }
    Ok(())
}

fn expected_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/expected-pass.txt")
}

#[test]
fn onnx_backend_conformance() {
    let data = kiln_tests::setup::onnx_test_data();
    let only = std::env::var("KILN_ONNX_ONLY").ok();
    let verbose = std::env::var_os("KILN_ONNX_VERBOSE").is_some();
    let all = cases(&data);
    let chosen: Vec<&(String, PathBuf)> = all
        .iter()
        .filter(|(n, _)| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|o| n.contains(o)))
        })
        .collect();
    assert!(
        !chosen.is_empty(),
        "no ONNX cases under {} (KILN_ONNX_ONLY={only:?})",
        data.display()
    );
    // Two workers: compiling dominates, and cases are independent.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, dir)) = chosen.get(i) else {
                    break;
                };
                let outcome = std::panic::catch_unwind(|| run_case(dir))
                    .unwrap_or_else(|_| Outcome::Fail("panicked".into()));
                let model = if dir.is_file() {
                    dir.clone()
                } else {
                    dir.join("model.onnx")
                };
                let (ops, core_types) = model_info(&model);
                let core = name.starts_with("node/")
                    && core_types
                    && ops.len() == 1
                    && CORE_OPS.contains(&ops[0].as_str());
                results
                    .lock()
                    .unwrap()
                    .push((name.clone(), ops, outcome, core));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    // Per op: cases whose model uses exactly that one op type.
    let mut per_op: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut total = [0usize; 3];
    let mut per_kind: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut core = [0usize; 3];
    let mut core_missed = Vec::new();
    for (name, ops, outcome, is_core) in &results {
        let k = match outcome {
            Outcome::Pass => 0,
            Outcome::Fail(_) => 1,
            Outcome::Unsupported(_) => 2,
        };
        total[k] += 1;
        per_kind
            .entry(name.split('/').next().unwrap_or("").to_string())
            .or_default()[k] += 1;
        let key = if ops.len() == 1 {
            ops[0].clone()
        } else {
            "(several ops)".to_string()
        };
        per_op.entry(key).or_default()[k] += 1;
        if *is_core {
            core[k] += 1;
            if k != 0 {
                core_missed.push(format!("{name}: {outcome:?}"));
            }
        }
        if verbose {
            match outcome {
                Outcome::Pass => {}
                Outcome::Fail(why) => println!("FAIL {name}: {why}"),
                Outcome::Unsupported(why) => {
                    println!(
                        "UNSUPPORTED {name}: {}",
                        why.lines().take(3).collect::<Vec<_>>().join(" | ")
                    )
                }
            }
        }
    }
    println!(
        "{:<28} {:>6} {:>6} {:>12}",
        "op", "pass", "fail", "unsupported"
    );
    for (op, [p, f, u]) in &per_op {
        println!("{op:<28} {p:>6} {f:>6} {u:>12}");
    }
    for (kind, [p, f, u]) in &per_kind {
        println!("{kind:<28} {p:>6} {f:>6} {u:>12}");
    }
    println!(
        "core (single-op node cases of the goal ops, float32/int64/bool): {} pass, {} fail, {} unsupported",
        core[0], core[1], core[2]
    );
    let n = results.len().max(1);
    let overall = format!(
        "{} pass, {} fail, {} unsupported of {} cases ({:.1}% pass)",
        total[0],
        total[1],
        total[2],
        results.len(),
        100.0 * total[0] as f64 / n as f64
    );
    println!("overall: {overall}");
    // Past the runner's capture (which takes only print! and eprint!), so
    // that `cargo test` shows how much of the suite ran and passed.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "ONNX backend conformance: {overall}");
    let passed: BTreeSet<&str> = results
        .iter()
        .filter(|r| r.2 == Outcome::Pass)
        .map(|r| r.0.as_str())
        .collect();
    if std::env::var_os("KILN_ONNX_WRITE_EXPECTED").is_some() && only.is_none() {
        let text: String = passed.iter().map(|n| format!("{n}\n")).collect();
        std::fs::create_dir_all(expected_path().parent().unwrap()).unwrap();
        std::fs::write(expected_path(), text).unwrap();
        println!(
            "wrote {} cases to {}",
            passed.len(),
            expected_path().display()
        );
        return;
    }
    let expected = std::fs::read_to_string(expected_path()).unwrap_or_default();
    let ran: BTreeSet<&str> = results.iter().map(|r| r.0.as_str()).collect();
    let mut regressed = Vec::new();
    for case in expected.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if ran.contains(case) && !passed.contains(case) {
            let why = results
                .iter()
                .find(|r| r.0 == case)
                .map(|r| format!("{:?}", r.2))
                .unwrap_or_default();
            regressed.push(format!("{case}: {why}"));
        }
    }
    let new: Vec<&&str> = passed
        .iter()
        .filter(|c| !expected.lines().any(|l| l.trim() == **c))
        .collect();
    if !new.is_empty() {
        println!(
            "{} passing case(s) not in the expected list (KILN_ONNX_WRITE_EXPECTED=1 adds them)",
            new.len()
        );
    }
    assert!(
        regressed.is_empty(),
        "{} expected-pass case(s) no longer pass:\n{}",
        regressed.len(),
        regressed.join("\n")
    );
    assert!(
        core_missed.is_empty(),
        "{} float32/int64/bool case(s) of the goal ops do not pass:\n{}",
        core_missed.len(),
        core_missed.join("\n")
    );
}

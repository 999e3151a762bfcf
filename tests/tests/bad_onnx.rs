//! Bad ONNX input, one test per case (issue 16): models whose import-time
//! evaluation would need unbounded memory, files that are not models,
//! values written twice, opsets kiln does not read, import options naming
//! what the model does not have, errors that must name the ONNX node, and
//! external data (issue 18) that leaves the model's folder, is missing, or
//! does not fit its file or its tensor (beside a model whose external data
//! imports and runs). Each checks the error's kind and that its message names the culprit, or
//! that the import finishes quickly in bounded memory.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln::prelude::*;
use kiln::Error;
use kiln_onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as OnnxDim,
};
use kiln_onnx::ImportOptions;
use prost::Message;

// ---------------------------------------------------------------- helpers

/// Asserts that `msg` contains every string of `parts`.
#[track_caller]
fn mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks '{p}': {msg}");
    }
}

/// A fresh directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-bad-onnx-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `f` on another thread and fails the test if it takes longer than
/// `secs` (a read that never ends, a computation far too large).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not finish within {secs} s"))
}

fn dims(d: &[i64]) -> Vec<OnnxDim> {
    d.iter().map(|&n| OnnxDim::DimValue(n)).collect()
}

fn input(name: &str, elem: DataType, dims: &[OnnxDim]) -> proto::ValueInfoProto {
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

fn output(name: &str) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> proto::NodeProto {
    proto::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Int64 as i32,
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn model(graph: proto::GraphProto, opset: i64) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "bad_onnx".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// `y = relu(x)` over `x: f32[2]`, at `opset`.
fn relu_model(opset: i64) -> proto::ModelProto {
    model(
        proto::GraphProto {
            name: "relu".into(),
            node: vec![node("Relu", "relu", &["x"], &["y"])],
            input: vec![input("x", DataType::Float, &dims(&[2]))],
            output: vec![output("y")],
            ..Default::default()
        },
        opset,
    )
}

/// `y = ReduceSum(ConstantOfShape(shape))`: the sum of a tensor of ones of
/// `shape`, every input known at import time (214 bytes of ONNX).
fn sum_of_ones(shape: &[i64]) -> proto::ModelProto {
    let mut fill = node("ConstantOfShape", "fill", &["shape"], &["ones"]);
    fill.attribute.push(proto::AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(proto::TensorProto {
            data_type: DataType::Float as i32,
            dims: vec![1],
            float_data: vec![1.0],
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut sum = node("ReduceSum", "sum", &["ones"], &["y"]);
    sum.attribute.push(int_attr("keepdims", 0));
    model(
        proto::GraphProto {
            name: "sum_of_ones".into(),
            node: vec![fill, sum],
            initializer: vec![ints("shape", shape)],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    )
}

/// The value of node `id` where it is a constant.
fn constant(g: &Graph, id: NodeId) -> Option<Vec<f64>> {
    match &g.node(id).op {
        kiln::graph::Op::Constant { value } => Some(value.0.to_f64_vec()),
        _ => None,
    }
}

#[track_caller]
fn import(m: &proto::ModelProto, options: &ImportOptions) -> kiln_onnx::Result<Graph> {
    kiln_onnx::import_bytes(&m.encode_to_vec(), options)
}

#[track_caller]
fn import_error(m: &proto::ModelProto, options: &ImportOptions) -> kiln_onnx::Error {
    import(m, options).unwrap_err()
}

// ------------------------------------------------- import-time evaluation

/// `ConstantOfShape [100000,100000,10] -> ReduceSum` (400 GB of ones)
/// imports in bounded time and memory: the fill stays a graph op, the file
/// is small, and a CPU session says the program is too large instead of
/// aborting.
#[test]
fn huge_constant_of_shape_is_not_evaluated_at_import() {
    let m = sum_of_ones(&[100_000, 100_000, 10]);
    let g = within(20, move || import(&m, &ImportOptions::default())).unwrap();
    assert!(
        g.constant_bytes() < 1024,
        "{} constant bytes",
        g.constant_bytes()
    );
    let dir = scratch("huge-fill");
    let path = dir.join("sum.kiln");
    g.save(&path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 64 * 1024, "the .kiln file has {size} bytes");
    // At run time: a program within the arena limit (the compiler sums the
    // fill as it makes it), or an error naming the memory it needs; never
    // an abort. (Running it adds 10^11 ones: not done here.)
    let opts = SessionOptions {
        max_arena_bytes: Some(1 << 30),
        ..Default::default()
    };
    if let Err(e) = Session::with_options(&g, Device::Cpu, opts) {
        assert!(matches!(e, Error::Resource { .. }), "{e:?}");
    }
    // The reference interpreter asks for the fill's 400 GB fallibly: an
    // error naming the node (where the kernel refuses what it cannot back;
    // with `overcommit_memory` 1 it would promise it).
    let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory");
    if overcommit.is_ok_and(|m| m.trim() != "1") {
        let s = Session::new(&g, Device::Reference).unwrap();
        let e = s.run(&[], &["y"]).unwrap_err();
        mentions(&e.to_string(), &["'ones'", "400000000000 bytes"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The 2.4 GB fill of the report (`[1000,1000,600]`) is not computed at
/// import time either; a small one is (a constant result).
#[test]
fn import_time_evaluation_is_bounded_by_the_fold_limit() {
    let m = sum_of_ones(&[1000, 1000, 600]);
    let start = Instant::now();
    let g = within(20, move || import(&m, &ImportOptions::default())).unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        g.constant_bytes() < 1024,
        "{} constant bytes",
        g.constant_bytes()
    );
    // Within the limit, folded to the constant sum.
    let g = import(&sum_of_ones(&[10, 10]), &ImportOptions::default()).unwrap();
    let y = g.node(g.outputs()[0]);
    assert_eq!(
        constant(&g, g.outputs()[0]),
        Some(vec![100.0]),
        "{}",
        y.op.name()
    );
    // Over a limit set lower: computed at run time (and still right).
    let options = ImportOptions {
        fold_limit_bytes: 100,
        ..Default::default()
    };
    let g = import(&sum_of_ones(&[10, 10]), &options).unwrap();
    assert_eq!(constant(&g, g.outputs()[0]), None);
    let s = Session::new(&g, Device::Reference).unwrap();
    assert_eq!(s.run(&[], &["y"]).unwrap()[0].to_f64_vec(), [100.0]);
}

/// A `Range` of 10^12 values is an iota computed at run time, not a vector
/// allocated while importing.
#[test]
fn huge_range_is_not_computed_at_import() {
    let scalar = |name: &str, v: i64| proto::TensorProto {
        name: name.into(),
        data_type: DataType::Int64 as i32,
        dims: vec![],
        int64_data: vec![v],
        ..Default::default()
    };
    let m = model(
        proto::GraphProto {
            name: "range".into(),
            node: vec![node("Range", "range", &["s", "l", "d"], &["y"])],
            initializer: vec![scalar("s", 0), scalar("l", 1 << 40), scalar("d", 1)],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let g = within(20, move || import(&m, &ImportOptions::default())).unwrap();
    assert!(
        g.constant_bytes() < 1024,
        "{} constant bytes",
        g.constant_bytes()
    );
    assert_eq!(g.node(g.outputs()[0]).ty.to_string(), "i64[1099511627776]");
}

/// Constants folded at import time that no remaining node reads (a fill
/// whose only use was its `Shape`) are not in the graph, so not written.
#[test]
fn dead_folded_constants_are_not_written() {
    let mut fill = node("ConstantOfShape", "fill", &["dims"], &["big"]);
    fill.attribute.push(proto::AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(proto::TensorProto {
            data_type: DataType::Float as i32,
            dims: vec![1],
            float_data: vec![2.0],
            ..Default::default()
        }),
        ..Default::default()
    });
    let m = model(
        proto::GraphProto {
            name: "dead".into(),
            node: vec![
                fill,
                node("Shape", "shape_of_big", &["big"], &["target"]),
                node("Reshape", "reshape", &["x", "target"], &["y"]),
            ],
            input: vec![input("x", DataType::Float, &dims(&[65536]))],
            initializer: vec![ints("dims", &[256, 256])],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let g = import(&m, &ImportOptions::default()).unwrap();
    assert!(
        g.constant_bytes() < 1024,
        "{} constant bytes written",
        g.constant_bytes()
    );
    assert!(!g.has_name("big"), "the dead fill is in the graph");
    assert_eq!(g.node(g.outputs()[0]).ty.to_string(), "f32[256,256]");
}

// ---------------------------------------------------------------- reading

/// A device, a pipe's endless source or a directory is refused at once,
/// before anything is read.
#[test]
fn model_paths_that_are_not_regular_files_are_refused() {
    let dir = scratch("not-regular");
    let d = dir.clone();
    for path in ["/dev/urandom", "/dev/zero"]
        .into_iter()
        .map(PathBuf::from)
        .chain([d])
    {
        if !path.exists() {
            continue;
        }
        let p = path.clone();
        let e = within(10, move || Graph::from_onnx(&p).map(|_| ())).unwrap_err();
        assert!(
            matches!(e, Error::Onnx(kiln_onnx::Error::Io { .. })),
            "{path:?}: {e:?}"
        );
        mentions(
            &e.to_string(),
            &[&path.display().to_string(), "regular file"],
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ----------------------------------------------------- malformed graphs

/// Two nodes writing one value: both are named.
#[test]
fn value_written_by_two_nodes() {
    let m = model(
        proto::GraphProto {
            name: "twice".into(),
            node: vec![
                node("Relu", "first", &["x"], &["y"]),
                node("Neg", "", &["x"], &["y"]),
            ],
            input: vec![input("x", DataType::Float, &dims(&[2]))],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let e = import_error(&m, &ImportOptions::default());
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &["'y'", "written twice", "Relu node 'first'", "Neg node #1"],
    );
}

/// A node writing a graph input's name.
#[test]
fn node_output_shadowing_a_graph_input() {
    let m = model(
        proto::GraphProto {
            name: "shadow".into(),
            node: vec![node("Relu", "relu", &["x"], &["x"])],
            input: vec![input("x", DataType::Float, &dims(&[2]))],
            output: vec![output("x")],
            ..Default::default()
        },
        13,
    );
    let e = import_error(&m, &ImportOptions::default());
    mentions(
        &e.to_string(),
        &[
            "'x'",
            "written twice",
            "graph input 'x'",
            "Relu node 'relu'",
        ],
    );
}

// ---------------------------------------------------------------- opsets

/// An opset below what kiln reads is an error where an op changed meaning
/// since (opset 1's `Add`), a warning naming the opset it is read as where
/// none did; 0 is no opset.
#[test]
fn opset_older_than_kiln_reads() {
    let mut m = relu_model(1);
    m.graph.as_mut().unwrap().node[0] = node("Add", "add", &["x", "x"], &["y"]);
    let e = import_error(&m, &ImportOptions::default());
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(&e.to_string(), &["opset 1", "Add", "6 to 22"]);
    let r = kiln_onnx::import_bytes_report(&relu_model(1).encode_to_vec(), &Default::default())
        .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    mentions(&r.warnings[0], &["opset 1", "read as opset 6"]);
    let e = import_error(&relu_model(0), &ImportOptions::default());
    mentions(&e.to_string(), &["opset 0"]);
}

/// A newer opset is read as the newest kiln knows, with a warning saying so;
/// a supported one has no warning.
#[test]
fn opset_newer_than_kiln_reads_is_a_warning() {
    let r = kiln_onnx::import_bytes_report(&relu_model(99).encode_to_vec(), &Default::default())
        .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    mentions(&r.warnings[0], &["opset 99", "read as opset 22"]);
    let r = kiln_onnx::import_bytes_report(&relu_model(13).encode_to_vec(), &Default::default())
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

// ------------------------------------------------------- import options

/// `constant_inputs`, `absent_inputs`, `sequence_inputs`, `input_shapes`
/// and `dims` naming what the model does not have: the mistake, and the
/// model's inputs (or dims).
#[test]
fn options_naming_what_the_model_lacks() {
    let m = relu_model(13);
    let mut o = ImportOptions::default();
    o.constant_inputs.insert(
        "nosuch".into(),
        Array::from_vec(vec![2], vec![1f32, 2.0]).unwrap(),
    );
    let e = import_error(&m, &o);
    assert!(matches!(e, kiln_onnx::Error::Options(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &["--constant nosuch", "no input 'nosuch'", "'x' (tensor)"],
    );

    let mut o = ImportOptions::default();
    o.absent_inputs.insert("nosuch".into());
    mentions(
        &import_error(&m, &o).to_string(),
        &["--absent nosuch", "'x'"],
    );
    let mut o = ImportOptions::default();
    o.absent_inputs.insert("x".into());
    mentions(
        &import_error(&m, &o).to_string(),
        &["--absent x", "is tensor, not an optional"],
    );

    let mut o = ImportOptions::default();
    o.sequence_inputs
        .insert("x".into(), vec![Shape::fixed(&[2])]);
    mentions(
        &import_error(&m, &o).to_string(),
        &["--sequence x", "not a sequence", "'x' (tensor)"],
    );

    let mut o = ImportOptions::default();
    o.input_shapes.insert("nosuch".into(), Shape::fixed(&[2]));
    mentions(
        &import_error(&m, &o).to_string(),
        &["--input-shape nosuch", "'x'"],
    );

    let mut o = ImportOptions::default();
    o.dims.insert("batch".into(), 4);
    mentions(
        &import_error(&m, &o).to_string(),
        &["--dim batch", "no symbolic dims"],
    );
}

/// `dims` fixes a `dim_param` at import time; `input_shapes` replaces a
/// declared shape (its dims sizes or symbols).
#[test]
fn dims_and_input_shapes_fix_what_the_model_leaves_open() {
    let m = model(
        proto::GraphProto {
            name: "batched".into(),
            node: vec![node("Relu", "relu", &["x"], &["y"])],
            input: vec![input(
                "x",
                DataType::Float,
                &[OnnxDim::DimParam("batch".into()), OnnxDim::DimValue(4)],
            )],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let placeholder = |g: &Graph| g.node(g.placeholders()[0]).ty.to_string();
    let g = import(&m, &ImportOptions::default()).unwrap();
    assert_eq!(placeholder(&g), "f32[batch,4]");
    let mut o = ImportOptions::default();
    o.dims.insert("batch".into(), 3);
    let g = import(&m, &o).unwrap();
    assert_eq!(placeholder(&g), "f32[3,4]");
    assert_eq!(g.node(g.outputs()[0]).ty.to_string(), "f32[3,4]");
    let mut o = ImportOptions::default();
    o.input_shapes.insert("x".into(), Shape::fixed(&[5, 4]));
    assert_eq!(placeholder(&import(&m, &o).unwrap()), "f32[5,4]");
    o.input_shapes
        .insert("x".into(), Shape(vec![Dim::sym("n"), Dim::Fixed(4)]));
    assert_eq!(placeholder(&import(&m, &o).unwrap()), "f32[n,4]");
    o.dims.insert("batch".into(), 2);
    o.dims.insert("n".into(), 7);
    // `n` is not a dim of the declared inputs: named as a mistake.
    mentions(&import_error(&m, &o).to_string(), &["--dim n", "batch"]);
}

// ------------------------------------------------ errors name the node

/// A node that kiln's builder refuses is named by its ONNX name and op
/// type, never by a kiln source file; an unnamed one by its index.
#[test]
fn conversion_errors_name_the_onnx_node_not_kiln_source() {
    let m = model(
        proto::GraphProto {
            name: "bad_reshape".into(),
            node: vec![
                node("Relu", "relu", &["x"], &["r"]),
                node("Reshape", "Reshape_12", &["r", "target"], &["y"]),
            ],
            input: vec![input("x", DataType::Float, &dims(&[2, 4]))],
            initializer: vec![ints("target", &[3, 3])],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let e = import_error(&m, &ImportOptions::default()).to_string();
    mentions(&e, &["Reshape node 'Reshape_12'"]);
    assert!(!e.contains(".rs:"), "{e}");
    let mut m = m;
    m.graph.as_mut().unwrap().node[1].name.clear();
    let e = import_error(&m, &ImportOptions::default()).to_string();
    mentions(&e, &["Reshape node #1 writing 'y'"]);
    assert!(!e.contains(".rs:"), "{e}");
}

/// The nodes an ONNX node became carry it as their location.
#[test]
fn imported_nodes_are_located_at_their_onnx_node() {
    let g = import(&relu_model(13), &ImportOptions::default()).unwrap();
    let y = g.node(g.outputs()[0]);
    assert_eq!(y.location.to_string(), "ONNX node 'relu' (Relu)");
    let x = g.node(g.placeholders()[0]);
    assert_eq!(x.location.to_string(), "ONNX graph input 'x'");
}

/// A table a converter computes for itself (here a DFT matrix, sized by the
/// declared signal length) beyond kiln's limit is the node's error, not an
/// allocation of 320 GB.
#[test]
fn huge_conversion_table_is_an_error_naming_the_node() {
    let m = model(
        proto::GraphProto {
            name: "dft".into(),
            node: vec![node("DFT", "spectrum", &["x"], &["y"])],
            input: vec![input("x", DataType::Float, &dims(&[1, 100_000, 1]))],
            output: vec![output("y")],
            ..Default::default()
        },
        17,
    );
    let e = within(20, move || {
        import(&m, &ImportOptions::default()).map(|_| ())
    })
    .unwrap_err();
    assert!(matches!(e, kiln_onnx::Error::Node { .. }), "{e:?}");
    mentions(
        &e.to_string(),
        &["DFT node 'spectrum'", "DFT matrix", "limit"],
    );
}

/// A shape computed from constants through a node over the fold limit is
/// not known at import time: the error says so (there is no graph input to
/// bind).
#[test]
fn value_needed_from_a_node_over_the_fold_limit() {
    let m = model(
        proto::GraphProto {
            name: "folded_shape".into(),
            node: vec![
                node("Add", "twice", &["half", "half"], &["target"]),
                node("Reshape", "reshape", &["x", "target"], &["y"]),
            ],
            input: vec![input("x", DataType::Float, &dims(&[2, 4]))],
            initializer: vec![ints("half", &[2, 1])],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let g = import(&m, &ImportOptions::default()).unwrap();
    assert_eq!(g.node(g.outputs()[0]).ty.to_string(), "f32[4,2]");
    let options = ImportOptions {
        fold_limit_bytes: 0,
        ..Default::default()
    };
    let e = import_error(&m, &options);
    assert!(matches!(e, kiln_onnx::Error::NeedsValue { .. }), "{e:?}");
    mentions(
        &e.to_string(),
        &["Reshape node 'reshape'", "'target'", "fold limit"],
    );
}

/// With `--trainable`, a BatchNormalization's running mean and variance
/// are imported as variables no optimizer updates; its scale and bias (and
/// other initializers) train.
#[test]
fn batch_norm_statistics_import_as_non_trainable_variables() {
    let vector = |name: &str, v: f32| proto::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: vec![3],
        float_data: vec![v; 3],
        ..Default::default()
    };
    let m = model(
        proto::GraphProto {
            name: "bn".into(),
            node: vec![node(
                "BatchNormalization",
                "bn",
                &["x", "gamma", "beta", "mean", "var"],
                &["y"],
            )],
            initializer: vec![
                vector("gamma", 1.0),
                vector("beta", 0.0),
                vector("mean", 0.5),
                vector("var", 2.0),
            ],
            input: vec![input("x", DataType::Float, &dims(&[2, 3, 4, 4]))],
            output: vec![output("y")],
            ..Default::default()
        },
        15,
    );
    let options = ImportOptions {
        initializers_as_variables: true,
        ..Default::default()
    };
    let g = import(&m, &options).unwrap();
    let trainable = |name: &str| match &g.node(g.find(name).unwrap()).op {
        kiln::graph::Op::Variable { trainable, .. } => *trainable,
        other => panic!("'{name}' is a {} node, not a variable", other.name()),
    };
    assert!(trainable("gamma") && trainable("beta"));
    assert!(!trainable("mean") && !trainable("var"));
}

// ---------------------------------------------------------- external data

/// An f32 tensor `name` of `dims` whose data is in the external file
/// `location` (with `offset` and `length` entries where given).
fn external_f32(
    name: &str,
    dims: &[i64],
    location: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> proto::TensorProto {
    let entry = |key: &str, value: String| proto::StringStringEntryProto {
        key: key.into(),
        value,
    };
    let mut external_data = vec![entry("location", location.into())];
    external_data.extend(offset.map(|v| entry("offset", v.to_string())));
    external_data.extend(length.map(|v| entry("length", v.to_string())));
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: dims.to_vec(),
        data_location: proto::tensor_proto::DataLocation::External as i32,
        external_data,
        ..Default::default()
    }
}

/// `y = (x + w) * c` over `x: f32[4]`: `w` an initializer and `c` a
/// `Constant` node's value, both given (as tensors that may be external).
fn add_mul_model(w: proto::TensorProto, c: proto::TensorProto) -> proto::ModelProto {
    let mut constant = node("Constant", "c", &[], &["c"]);
    constant.attribute.push(proto::AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(c),
        ..Default::default()
    });
    model(
        proto::GraphProto {
            name: "external".into(),
            node: vec![
                constant,
                node("Add", "add", &["x", "w"], &["s"]),
                node("Mul", "mul", &["s", "c"], &["y"]),
            ],
            initializer: vec![w],
            input: vec![input("x", DataType::Float, &dims(&[4]))],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    )
}

/// Little-endian bytes of `v`.
fn le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `m` as `dir/model.onnx` and imports it from there.
fn import_file(dir: &std::path::Path, m: &proto::ModelProto) -> kiln_onnx::Result<Graph> {
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    kiln_onnx::import(&path)
}

/// `(x + w) * c` of the model above on both devices.
#[track_caller]
fn run_add_mul(g: &Graph, x: [f32; 4]) -> Vec<f64> {
    let x = Array::from_vec(vec![4], x.to_vec()).unwrap();
    let mut results = Vec::new();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(g, device).unwrap_or_else(|e| panic!("{device}: {e}"));
        let y = s
            .run(&[("x", &x)], &["y"])
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        results.push(y[0].to_f64_vec());
    }
    assert_eq!(results[0], results[1], "reference and CPU differ");
    results.pop().unwrap()
}

/// A model whose initializer and `Constant` value are external data (one
/// file in a subfolder, at offsets, as `onnx.save(...,
/// save_as_external_data=True)` writes them) imports from its file and
/// runs; the same model from bytes is an error saying why.
#[test]
fn external_data_initializer_imports_and_runs() {
    let dir = scratch("external-ok");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut file = vec![0xee; 4]; // 4 bytes of padding: w at offset 4
    file.extend(le(&[1.0, 2.0, 3.0, 4.0]));
    file.extend(le(&[0.5, -1.0, 2.0, 10.0])); // c at offset 20, to the end
    std::fs::write(dir.join("data/weights.bin"), &file).unwrap();
    let m = add_mul_model(
        external_f32("w", &[4], "data/weights.bin", Some(4), Some(16)),
        external_f32("c", &[4], "data/weights.bin", Some(20), None),
    );
    let g = import_file(&dir, &m).unwrap_or_else(|e| panic!("import: {e}"));
    assert_eq!(
        run_add_mul(&g, [1.0, 1.0, -3.0, 0.0]),
        [1.0, -3.0, 0.0, 40.0]
    );
    // As trainable variables too.
    let path = dir.join("model.onnx");
    let options = ImportOptions {
        initializers_as_variables: true,
        ..Default::default()
    };
    let g = kiln_onnx::import_with(&path, &options).unwrap();
    assert!(matches!(
        g.node(g.find("w").unwrap()).op,
        kiln::graph::Op::Variable { .. }
    ));
    assert_eq!(run_add_mul(&g, [0.0; 4]), [0.5, -2.0, 6.0, 40.0]);
    // From bytes there is no folder to find the file in.
    let e = import_error(&m, &ImportOptions::default());
    assert!(matches!(e, kiln_onnx::Error::Invalid(_)), "{e:?}");
    mentions(
        &e.to_string(),
        &[
            "'w'",
            "\"data/weights.bin\"",
            "import the model from its file path",
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// External data in a file over 2 GiB (the limit of the .onnx file itself)
/// is mapped, not read: a sparse 3 GiB file with the weights near its end.
#[test]
fn external_data_file_over_2_gib_is_mapped() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = scratch("external-big");
    let offset = (5u64 << 30) / 2; // 2.5 GiB
    let mut f = std::fs::File::create(dir.join("big.bin")).unwrap();
    f.set_len(3 << 30).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&le(&[1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0]))
        .unwrap();
    drop(f);
    let m = add_mul_model(
        external_f32("w", &[4], "big.bin", Some(offset), Some(16)),
        external_f32("c", &[4], "big.bin", Some(offset + 16), Some(16)),
    );
    let g = within(60, move || {
        let g = import_file(&dir, &m);
        std::fs::remove_dir_all(&dir).ok();
        g
    })
    .unwrap();
    assert_eq!(run_add_mul(&g, [1.0; 4]), [4.0, 6.0, 8.0, 10.0]);
}

/// External data files that are out of the model's folder, missing, too
/// short, or of the wrong size: errors naming the tensor, the file and the
/// numbers, never a panic or a large allocation.
#[test]
fn bad_external_data_is_an_error_naming_the_tensor_and_file() {
    let dir = scratch("external-bad");
    let folder = dir.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(dir.join("secret.bin"), le(&[9.0; 4])).unwrap();
    std::fs::write(folder.join("w.bin"), le(&[1.0; 4])).unwrap();
    let constant = proto::TensorProto {
        name: "c".into(),
        data_type: DataType::Float as i32,
        dims: vec![4],
        float_data: vec![1.0; 4],
        ..Default::default()
    };
    let import_w = |location: &str, offset: Option<u64>, length: Option<u64>| {
        let w = external_f32("w", &[4], location, offset, length);
        import_file(&folder, &add_mul_model(w, constant.clone()))
    };
    let error = |location: &str, offset: Option<u64>, length: Option<u64>| {
        let e = import_w(location, offset, length).unwrap_err();
        assert!(matches!(e, kiln_onnx::Error::File { .. }), "{e:?}");
        let msg = e.to_string();
        mentions(&msg, &["model.onnx", "initializer 'w'", "tensor \"w\""]);
        msg
    };
    // Out of the folder: `..`, an absolute path, a symbolic link.
    let abs = dir.join("secret.bin").display().to_string();
    for location in ["../secret.bin", "sub/../../secret.bin", abs.as_str()] {
        let msg = error(location, None, None);
        mentions(
            &msg,
            &[&format!("{location:?}"), "escapes the model's folder"],
        );
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("secret.bin"), folder.join("link.bin")).unwrap();
        mentions(
            &error("link.bin", None, None),
            &["\"link.bin\"", "escapes the model's folder", "secret.bin"],
        );
    }
    // Missing; a directory.
    mentions(
        &error("missing.bin", None, None),
        &["\"missing.bin\"", "no such file"],
    );
    std::fs::create_dir_all(folder.join("dir.bin")).unwrap();
    mentions(
        &error("dir.bin", None, None),
        &["\"dir.bin\"", "a directory"],
    );
    // Past the end of the 16-byte file.
    mentions(
        &error("w.bin", Some(32), Some(16)),
        &["\"w.bin\"", "offset 32 is beyond the end", "16 bytes"],
    );
    mentions(
        &error("w.bin", Some(4), Some(16)),
        &[
            "\"w.bin\"",
            "offset 4 of length 16 runs past the end",
            "16 bytes",
        ],
    );
    mentions(
        &error("w.bin", Some(4), Some(u64::MAX)),
        &["runs past the end"],
    );
    // A length that is not what f32[4] takes.
    mentions(
        &error("w.bin", Some(0), Some(12)),
        &["\"w.bin\"", "has 12 bytes", "dims [4] of float need 16"],
    );
    mentions(
        &error("w.bin", Some(8), None),
        &["has 8 bytes (the rest of the file)", "need 16"],
    );
    // A huge declared shape is a size mismatch, not an allocation.
    let w = proto::TensorProto {
        dims: vec![1 << 20, 1 << 20, 1 << 10],
        ..external_f32("w", &[], "w.bin", None, None)
    };
    let e = import_file(&folder, &add_mul_model(w, constant.clone())).unwrap_err();
    mentions(&e.to_string(), &["\"w.bin\"", "need 4503599627370496"]);
    // The good file imports.
    assert!(import_w("w.bin", None, None).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

/// A shape computed from the input's *data* (not its shape) cannot be known
/// while importing, symbolic dims or not: the error names the value.
#[test]
fn shape_computed_from_tensor_data_is_named() {
    let sym = |s: &str| OnnxDim::DimParam(s.into());
    let m = model(
        proto::GraphProto {
            name: "data_shape".into(),
            node: vec![
                // `n` from the shape (known), `k` from the data (not).
                node("Shape", "shape", &["x"], &["s"]),
                node("Cast", "as_int", &["x"], &["xi"]),
                node("ReduceMax", "biggest", &["xi"], &["k"]),
                node("Concat", "target", &["s", "k"], &["t"]),
                node("Reshape", "reshape", &["x", "t"], &["y"]),
            ],
            input: vec![input("x", DataType::Float, &[sym("n")])],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    let mut m = m;
    m.graph.as_mut().unwrap().node[1]
        .attribute
        .push(int_attr("to", DataType::Int64 as i64));
    m.graph.as_mut().unwrap().node[2]
        .attribute
        .push(int_attr("keepdims", 1));
    m.graph.as_mut().unwrap().node[3]
        .attribute
        .push(int_attr("axis", 0));
    let e = import_error(&m, &ImportOptions::default());
    assert!(matches!(e, kiln_onnx::Error::NeedsValue { .. }), "{e:?}");
    mentions(
        &e.to_string(),
        &["Reshape node 'reshape'", "'t'", "tensor data", "(x)"],
    );
}

/// The same chain over the input's shape only imports once and runs at
/// every size; a feed contradicting the dims is named.
#[test]
fn shape_computed_from_a_symbolic_shape_runs_at_any_size() {
    let sym = |s: &str| OnnxDim::DimParam(s.into());
    let mut m = model(
        proto::GraphProto {
            name: "sym_shape".into(),
            node: vec![
                // [batch, seq, 4] -> [batch*seq, 4] -> [batch, seq*4]
                node("Shape", "shape", &["x"], &["s"]),
                node("Gather", "batch", &["s", "zero"], &["b"]),
                node("Gather", "seq", &["s", "one"], &["q"]),
                node("Mul", "rows", &["b", "q"], &["bq"]),
                node("Concat", "flat", &["bq", "four"], &["t1"]),
                node("Reshape", "to_rows", &["x", "t1"], &["r"]),
                node("Concat", "wide", &["b", "minus"], &["t2"]),
                node("Reshape", "to_wide", &["r", "t2"], &["y"]),
            ],
            input: vec![input(
                "x",
                DataType::Float,
                &[sym("batch"), sym("seq"), OnnxDim::DimValue(4)],
            )],
            initializer: vec![
                ints("zero", &[0]),
                ints("one", &[1]),
                ints("four", &[4]),
                ints("minus", &[-1]),
            ],
            output: vec![output("y")],
            ..Default::default()
        },
        13,
    );
    for i in [4, 6] {
        m.graph.as_mut().unwrap().node[i]
            .attribute
            .push(int_attr("axis", 0));
    }
    let g = import(&m, &ImportOptions::default()).unwrap();
    assert_eq!(g.node(g.outputs()[0]).ty.to_string(), "f32[batch,4*seq]");
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&g, device).unwrap();
        for (b, q) in [(1, 1), (2, 3), (3, 5)] {
            let x = Array::from_vec(
                vec![b, q, 4],
                (0..b * q * 4).map(|i| i as f32).collect::<Vec<_>>(),
            )
            .unwrap();
            let y = s.run(&[("x", &x)], &["y"]).unwrap();
            assert_eq!(y[0].shape(), &[b, q * 4]);
            assert_eq!(
                y[0].as_slice::<f32>().unwrap(),
                x.as_slice::<f32>().unwrap()
            );
        }
        let bad = Array::from_vec(vec![2, 3, 5], vec![0f32; 30]).unwrap();
        let e = s.run(&[("x", &bad)], &["y"]).unwrap_err().to_string();
        mentions(&e, &["'x'", "dim 2 must be 4"]);
    }
}

/// A pad computed from the shape (rounding `seq` up to a multiple of 8):
/// constant mode joins blocks of the value of expression sizes.
#[test]
fn pad_by_amounts_computed_from_a_symbolic_shape() {
    let sym = |s: &str| OnnxDim::DimParam(s.into());
    let mut m = model(
        proto::GraphProto {
            name: "sym_pad".into(),
            node: vec![
                node("Shape", "shape", &["x"], &["s"]),
                node("Gather", "seq", &["s", "zero"], &["q"]),
                node("Mod", "rem", &["q", "eight"], &["m"]),
                node("Sub", "gap", &["eight", "m"], &["d"]),
                node("Mod", "round", &["d", "eight"], &["p"]),
                node("Concat", "pads", &["zero", "zero", "p", "zero"], &["pads"]),
                node("Pad", "pad", &["x", "pads", "fill"], &["y"]),
            ],
            input: vec![input(
                "x",
                DataType::Float,
                &[sym("seq"), OnnxDim::DimValue(2)],
            )],
            initializer: vec![ints("zero", &[0]), ints("eight", &[8]), {
                let mut t = ints("fill", &[0]);
                t.data_type = DataType::Float as i32;
                t.int64_data.clear();
                t.float_data = vec![-1.0];
                t.dims = vec![];
                t
            }],
            output: vec![output("y")],
            ..Default::default()
        },
        18,
    );
    m.graph.as_mut().unwrap().node[5]
        .attribute
        .push(int_attr("axis", 0));
    let g = import(&m, &ImportOptions::default()).unwrap();
    let y = g.node(g.outputs()[0]);
    assert!(y.ty.shape.is_symbolic(), "{}", y.ty);
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&g, device).unwrap();
        for (q, want) in [(3, 8), (8, 8), (9, 16)] {
            let x = Array::from_vec(vec![q, 2], vec![1f32; q * 2]).unwrap();
            let out = s.run(&[("x", &x)], &["y"]).unwrap();
            assert_eq!(out[0].shape(), &[want, 2], "seq {q}");
            let v = out[0].as_slice::<f32>().unwrap();
            assert!(v[..q * 2].iter().all(|&e| e == 1.0));
            assert!(v[q * 2..].iter().all(|&e| e == -1.0));
        }
    }
}

/// `CumSum` along a symbolic axis (RoBERTa's position ids: the cumulative
/// sum of the attention mask), in all four directions.
#[test]
fn cum_sum_along_a_symbolic_axis() {
    let sym = |s: &str| OnnxDim::DimParam(s.into());
    for (exclusive, reverse) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let mut m = model(
            proto::GraphProto {
                name: "cumsum".into(),
                node: vec![node("CumSum", "positions", &["mask", "one"], &["y"])],
                input: vec![input("mask", DataType::Int64, &[sym("batch"), sym("seq")])],
                initializer: vec![ints("one", &[1])],
                output: vec![output("y")],
                ..Default::default()
            },
            14,
        );
        let n = &mut m.graph.as_mut().unwrap().node[0];
        n.attribute.push(int_attr("exclusive", exclusive));
        n.attribute.push(int_attr("reverse", reverse));
        let g = import(&m, &ImportOptions::default()).unwrap();
        for device in [Device::Reference, Device::Cpu] {
            let s = Session::new(&g, device).unwrap();
            for (b, q) in [(1, 1), (2, 5)] {
                let v: Vec<i64> = (0..b * q).map(|i| ((i * 3) % 4 != 0) as i64).collect();
                let x = Array::from_vec(vec![b, q], v.clone()).unwrap();
                let y = s.run(&[("mask", &x)], &["y"]).unwrap();
                let mut want = vec![0i64; b * q];
                for row in 0..b {
                    for j in 0..q {
                        want[row * q + j] = (0..q)
                            .filter(|&i| match (exclusive, reverse) {
                                (0, 0) => i <= j,
                                (1, 0) => i < j,
                                (0, _) => i >= j,
                                _ => i > j,
                            })
                            .map(|i| v[row * q + i])
                            .sum();
                    }
                }
                assert_eq!(
                    y[0].as_slice::<i64>().unwrap(),
                    want.as_slice(),
                    "{device} exclusive {exclusive} reverse {reverse} [{b},{q}]"
                );
            }
        }
    }
}

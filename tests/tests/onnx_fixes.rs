//! Regression tests for wrong answers and wrong refusals of kiln's ONNX
//! import found by differential fuzzing against ONNX Runtime (issue 17):
//! `Slice` bounds clamped as the ONNX spec says (not as numpy does),
//! `MaxPool` / `AveragePool` / `LpPool` in `ceil_mode` where the window
//! runs past (or is larger than) the padded input, `MaxPool`'s `Indices`
//! output in 1-D and 3-D, and `Hardmax` over an empty axis.
//!
//! Each model is built here as a `ModelProto`, imported, and run on the
//! reference interpreter and the CPU backend; the expected values are
//! literals, each with a comment naming where it came from (ONNX Runtime
//! 1.23.2, the ONNX spec text, or a hand computation). Where ONNX Runtime
//! is off the spec the test says so and follows the spec.

use kiln::prelude::*;
use kiln_onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as OnnxDim,
};
use kiln_onnx::ImportOptions;
use prost::Message;

// ---------------------------------------------------------------- helpers

fn value_info(name: &str, elem: DataType, dims: Option<&[i64]>) -> proto::ValueInfoProto {
    let shape = dims.map(|d| proto::TensorShapeProto {
        dim: d
            .iter()
            .map(|&n| proto::tensor_shape_proto::Dimension {
                value: Some(OnnxDim::DimValue(n)),
                ..Default::default()
            })
            .collect(),
    });
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape,
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<proto::AttributeProto>,
) -> proto::NodeProto {
    proto::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, v: &[i64]) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Int64 as i32,
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// A model of `nodes` over the f32 input `x` of shape `x_dims`, with
/// `initializers` and the graph outputs `outputs`.
fn model(
    opset: i64,
    x_dims: &[i64],
    nodes: Vec<proto::NodeProto>,
    initializers: Vec<proto::TensorProto>,
    outputs: &[&str],
) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "onnx_fixes".into(),
        graph: Some(proto::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: initializers,
            input: vec![value_info("x", DataType::Float, Some(x_dims))],
            output: outputs
                .iter()
                .map(|o| value_info(o, DataType::Float, None))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn import(m: &proto::ModelProto) -> kiln_onnx::Result<Graph> {
    kiln_onnx::import_bytes(&m.encode_to_vec(), &ImportOptions::default())
}

/// Runs `m` on `x` on the reference interpreter and the CPU backend and
/// returns the outputs `fetch` (as shape and values) of each; checks the
/// two devices agree exactly.
#[track_caller]
fn run(m: &proto::ModelProto, x: &Array, fetch: &[&str]) -> Vec<(Vec<usize>, Vec<f64>)> {
    let g = import(m).unwrap_or_else(|e| panic!("import: {e}"));
    let mut results = Vec::new();
    for device in [Device::Reference, Device::Cpu] {
        let mut s = Session::new(&g, device).unwrap_or_else(|e| panic!("{device}: {e}"));
        let outs = s
            .run(&[("x", x)], fetch)
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        let outs: Vec<(Vec<usize>, Vec<f64>)> = outs
            .iter()
            .map(|a| (a.shape().to_vec(), a.to_f64_vec()))
            .collect();
        results.push(outs);
    }
    let (reference, cpu) = (&results[0], &results[1]);
    for (i, (r, c)) in reference.iter().zip(cpu).enumerate() {
        assert_eq!(r.0, c.0, "output {i}: shapes differ between devices");
        for (a, b) in r.1.iter().zip(&c.1) {
            assert!(
                a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "output {i}: reference {:?} vs cpu {:?}",
                r.1,
                c.1
            );
        }
    }
    results.swap_remove(0)
}

/// `x` of `shape` holding `1, 2, 3, ...`.
fn iota(shape: &[usize]) -> Array {
    let n: usize = shape.iter().product();
    Array::from_vec(shape.to_vec(), (1..=n).map(|v| v as f32).collect()).unwrap()
}

fn array(shape: &[usize], v: &[f32]) -> Array {
    Array::from_vec(shape.to_vec(), v.to_vec()).unwrap()
}

#[track_caller]
fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "got {got:?}, want {want:?}"
        );
    }
}

// ------------------------------------------------------------------ Slice

/// One `Slice` (opset 13) of the 1-D `x` per `(start, end, step)`, outputs
/// `y0, y1, ...`.
fn slices(d: usize, cases: &[(i64, i64, i64)]) -> Vec<Vec<f64>> {
    let mut nodes = Vec::new();
    let mut inits = vec![i64_tensor("axis", &[0])];
    let mut outs = Vec::new();
    for (j, &(s, e, t)) in cases.iter().enumerate() {
        let (sn, en, tn, yn) = (
            format!("s{j}"),
            format!("e{j}"),
            format!("t{j}"),
            format!("y{j}"),
        );
        inits.push(i64_tensor(&sn, &[s]));
        inits.push(i64_tensor(&en, &[e]));
        inits.push(i64_tensor(&tn, &[t]));
        nodes.push(node("Slice", &["x", &sn, &en, "axis", &tn], &[&yn], vec![]));
        outs.push(yn);
    }
    let out_refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
    let m = model(13, &[d as i64], nodes, inits, &out_refs);
    run(&m, &iota(&[d]), &out_refs)
        .into_iter()
        .map(|(shape, v)| {
            assert_eq!(shape, [v.len()]);
            v
        })
        .collect()
}

/// The case: `x = [1, 2, 3]`, start -4, end -5, step -1. The spec
/// adds 3 (start -1, end -2) and clamps a negative step's start to
/// `[0, 2]` and end to `[-1, 2]`: start 0, end -1, so `[1]` (ONNX Runtime
/// agrees; numpy's clamping gives `[]`).
#[test]
fn slice_negative_step_start_before_the_first_element() {
    assert_eq!(slices(3, &[(-4, -5, -1)]), [vec![1.0]]);
}

/// The same as the case in opset 9 (bounds as attributes, no steps:
/// a start before the first element is clamped to 0 there too).
#[test]
fn slice_attributes_clamp_as_the_spec_says() {
    let m = model(
        9,
        &[3],
        vec![node(
            "Slice",
            &["x"],
            &["y"],
            vec![ints("starts", &[-7]), ints("ends", &[-1])],
        )],
        vec![],
        &["y"],
    );
    // start -7 + 3 = -4, clamped to 0; end -1 + 3 = 2: [1, 2] (hand, spec).
    assert_eq!(run(&m, &iota(&[3]), &["y"])[0].1, [1.0, 2.0]);
}

/// Every sign combination and the extremes, on `x = [1, 2, 3]`; expected
/// values from ONNX Runtime 1.23.2, which agrees with the spec text on
/// all of these.
#[test]
fn slice_bounds_every_sign_and_extreme() {
    let (max, min) = (i64::MAX, i64::MIN);
    let i32max = i32::MAX as i64;
    let cases = [
        ((-4, -5, -1), vec![1.0]),
        ((10, -10, -1), vec![3.0, 2.0, 1.0]),
        ((-1, min, -2), vec![3.0, 1.0]),
        ((-1, min, -1), vec![3.0, 2.0, 1.0]),
        ((2, -4, -1), vec![3.0, 2.0, 1.0]),
        ((2, -3, -1), vec![3.0, 2.0]),
        ((0, -1, 1), vec![1.0, 2.0]),
        ((-100, 100, 2), vec![1.0, 3.0]),
        ((1, max, 1), vec![2.0, 3.0]),
        ((-2, i32max, 1), vec![2.0, 3.0]),
        ((min, 1, 1), vec![1.0]),
        ((3, 0, 1), vec![]),
        ((2, 0, -5), vec![3.0]),
        ((-5, -7, -1), vec![1.0]),
        ((0, 3, max), vec![1.0]),
        ((2, -4, min + 1), vec![3.0]),
        ((1, 1, -1), vec![]),
        ((5, 2, -1), vec![]),
        ((0, 0, -1), vec![]),
    ];
    let bounds: Vec<(i64, i64, i64)> = cases.iter().map(|c| c.0).collect();
    let got = slices(3, &bounds);
    for ((b, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "start {}, end {}, step {}", b.0, b.1, b.2);
    }
}

/// An end of `INT_MAX` with a negative step is clamped to `dims - 1` by the
/// spec text, so nothing is taken. ONNX Runtime 1.23.2 reads it as "to the
/// beginning" (`[2, 1]` for start 1), off the spec; kiln follows the spec
/// (as numpy and ONNX's reference evaluator do).
#[test]
fn slice_int_max_end_with_a_negative_step_takes_nothing() {
    let got = slices(3, &[(1, i64::MAX, -1), (2, i32::MAX as i64, -2)]);
    let none: Vec<f64> = vec![];
    assert_eq!(got, [none.clone(), none]);
}

/// Slices of an empty dim are empty whatever their bounds (a negative step's
/// clamp range `[0, -1]` is empty).
#[test]
fn slice_of_an_empty_dim() {
    let got = slices(
        0,
        &[(0, -1, -1), (-1, i64::MIN, -1), (0, 5, 1), (5, -5, -2)],
    );
    assert!(
        got.len() == 4 && got.iter().all(|v| v.is_empty()),
        "{got:?}"
    );
}

/// Slice with axes and steps on a 2-D input: a negative axis, a reversed
/// axis starting before the first element (spec: clamped to 0).
#[test]
fn slice_two_axes() {
    let m = model(
        13,
        &[3, 4],
        vec![node("Slice", &["x", "s", "e", "a", "t"], &["y"], vec![])],
        vec![
            i64_tensor("s", &[-9, 3]),
            i64_tensor("e", &[i64::MIN, 0]),
            i64_tensor("a", &[-1, 0]),
            i64_tensor("t", &[-1, -2]),
        ],
        &["y"],
    );
    // Axis 1 (size 4): start -9 + 4 = -5 -> 0, end -> -1: column 0 only.
    // Axis 0 (size 3): start 3 -> 2, end 0, step -2: row 2 only.
    // x[2, 0] = 9 (hand, spec; ONNX Runtime 1.23.2 agrees).
    let out = run(&m, &iota(&[3, 4]), &["y"]);
    assert_eq!(out[0], (vec![1, 1], vec![9.0]));
}

// ---------------------------------------------------------------- pooling

fn pool(op: &str, x_dims: &[i64], attrs: Vec<proto::AttributeProto>) -> proto::ModelProto {
    model(
        19,
        x_dims,
        vec![node(op, &["x"], &["y"], attrs)],
        vec![],
        &["y"],
    )
}

fn pool_out(op: &str, x: &Array, attrs: Vec<proto::AttributeProto>) -> (Vec<usize>, Vec<f64>) {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    run(&pool(op, &dims, attrs), x, &["y"]).swap_remove(0)
}

/// A window of 4 over `[1, 2]` padded by 1 at the end (3 positions): with
/// `ceil_mode` the spec's output size is `ceil((2 + 1 - 4) / 2 + 1) = 1`.
/// kiln refused this ("does not fit the padded input"). Values from ONNX
/// Runtime 1.23.2 (max 2, mean of the input taps 1.5, sqrt(1 + 4)); with
/// `count_include_pad` the divisor counts the taps inside the padded input
/// (3: two values and one pad), as ONNX Runtime and ONNX's reference do.
#[test]
fn ceil_mode_window_larger_than_the_padded_input_1d() {
    let x = iota(&[1, 1, 2]);
    let win = || {
        vec![
            ints("kernel_shape", &[4]),
            ints("strides", &[2]),
            ints("pads", &[0, 1]),
            int("ceil_mode", 1),
        ]
    };
    assert_eq!(pool_out("MaxPool", &x, win()), (vec![1, 1, 1], vec![2.0]));
    let mut a = win();
    a.push(int("count_include_pad", 0));
    assert_eq!(pool_out("AveragePool", &x, a), (vec![1, 1, 1], vec![1.5]));
    let mut a = win();
    a.push(int("count_include_pad", 1));
    assert_eq!(pool_out("AveragePool", &x, a), (vec![1, 1, 1], vec![1.0]));
    let mut a = win();
    a.push(int("p", 2));
    let (shape, v) = pool_out("LpPool", &x, a);
    assert_eq!(shape, [1, 1, 1]);
    close(&v, &[5f64.sqrt()]);
}

/// A 3x3 window over a 2x2 input, stride 2, ceil mode: one output (ONNX
/// Runtime 1.23.2: max 4, mean 2.5 with and without `count_include_pad`,
/// as no padding is declared).
#[test]
fn ceil_mode_window_larger_than_the_input_2d() {
    let x = iota(&[1, 1, 2, 2]);
    let win = || {
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("strides", &[2, 2]),
            int("ceil_mode", 1),
        ]
    };
    assert_eq!(
        pool_out("MaxPool", &x, win()),
        (vec![1, 1, 1, 1], vec![4.0])
    );
    for include in [0, 1] {
        let mut a = win();
        a.push(int("count_include_pad", include));
        assert_eq!(
            pool_out("AveragePool", &x, a),
            (vec![1, 1, 1, 1], vec![2.5])
        );
    }
}

/// 3-D pools (a 3x3x3 window over 2x2x2, stride 2, ceil mode): ONNX
/// Runtime 1.23.2 gives max 8, mean 4.5, L1 sum 36. (ONNX's reference
/// evaluator gives 121.5 for the L1 pool: it pads the input asymmetrically
/// and sums the wrong taps.)
#[test]
fn ceil_mode_window_larger_than_the_input_3d() {
    let x = iota(&[1, 1, 2, 2, 2]);
    let win = || {
        vec![
            ints("kernel_shape", &[3, 3, 3]),
            ints("strides", &[2, 2, 2]),
            int("ceil_mode", 1),
        ]
    };
    assert_eq!(
        pool_out("MaxPool", &x, win()),
        (vec![1, 1, 1, 1, 1], vec![8.0])
    );
    assert_eq!(
        pool_out("AveragePool", &x, win()),
        (vec![1, 1, 1, 1, 1], vec![4.5])
    );
    let mut a = win();
    a.push(int("p", 1));
    assert_eq!(pool_out("LpPool", &x, a), (vec![1, 1, 1, 1, 1], vec![36.0]));
}

/// Dilations with ceil mode: taps 0 and 3, then 2 and 5 (past the input)
/// over `[1, 2, 3, 4, 5]`. ONNX Runtime 1.23.2: max `[4, 3]`, mean
/// `[2.5, 3]`; with one pad at the end and `count_include_pad`, the second
/// window has one tap in the input and one in the padding: `[2.5, 1.5]`.
#[test]
fn ceil_mode_with_dilations() {
    let x = iota(&[1, 1, 5]);
    let win = || {
        vec![
            ints("kernel_shape", &[2]),
            ints("strides", &[2]),
            ints("dilations", &[3]),
            int("ceil_mode", 1),
        ]
    };
    assert_eq!(
        pool_out("MaxPool", &x, win()),
        (vec![1, 1, 2], vec![4.0, 3.0])
    );
    assert_eq!(
        pool_out("AveragePool", &x, win()),
        (vec![1, 1, 2], vec![2.5, 3.0])
    );
    let mut a = win();
    a.extend([ints("pads", &[0, 1]), int("count_include_pad", 1)]);
    assert_eq!(
        pool_out("AveragePool", &x, a),
        (vec![1, 1, 2], vec![2.5, 1.5])
    );
}

/// A 3x2 window, strides 2 and 3, pads (1, 0, 1, 1), ceil mode over a 4x5
/// input: the last row of windows covers input row 3, padding row 4 and
/// row 5 past the padding. Without `count_include_pad` the means are
/// ONNX Runtime 1.23.2's. With it the divisor counts the 4 taps inside the
/// padded input, as ONNX's reference evaluator does (`[.., 8.25, 9.75]`);
/// ONNX Runtime's unpadded-window path divides by 2 there (16.5, 19.5).
#[test]
fn ceil_mode_average_divisors() {
    let x = iota(&[1, 1, 4, 5]);
    let win = |include| {
        vec![
            ints("kernel_shape", &[3, 2]),
            ints("strides", &[2, 3]),
            ints("pads", &[1, 0, 1, 1]),
            int("ceil_mode", 1),
            int("count_include_pad", include),
        ]
    };
    let (shape, v) = pool_out("AveragePool", &x, win(0));
    assert_eq!(shape, [1, 1, 3, 2]);
    close(&v, &[4.0, 7.0, 11.5, 14.5, 16.5, 19.5]);
    let (shape, v) = pool_out("AveragePool", &x, win(1));
    assert_eq!(shape, [1, 1, 3, 2]);
    close(&v, &[8.0 / 3.0, 14.0 / 3.0, 11.5, 14.5, 8.25, 9.75]);
}

/// Without ceil mode the spec's size is `floor((1 - 2) / 2 + 1) = 0`: an
/// empty output (ONNX's reference agrees; ONNX Runtime 1.23.2 truncates
/// toward zero and gives one window). A window that cannot fit even once
/// (a negative size) is an error naming the window.
#[test]
fn floor_mode_sizes_zero_and_negative() {
    let x = iota(&[1, 1, 1]);
    let a = vec![ints("kernel_shape", &[2]), ints("strides", &[2])];
    assert_eq!(pool_out("MaxPool", &x, a), (vec![1, 1, 0], vec![]));
    let m = pool("MaxPool", &[1, 1, 1], vec![ints("kernel_shape", &[4])]);
    let e = import(&m).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
}

// ---------------------------------------------------- MaxPool's Indices

fn max_pool_indices(
    x: &Array,
    attrs: Vec<proto::AttributeProto>,
) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let mut m = model(
        19,
        &dims,
        vec![node("MaxPool", &["x"], &["y", "i"], attrs)],
        vec![],
        &["y", "i"],
    );
    // The indices are i64.
    let g = m.graph.as_mut().unwrap();
    g.output[1] = value_info("i", DataType::Int64, None);
    let mut out = run(&m, x, &["y", "i"]);
    let (ishape, i) = out.pop().unwrap();
    let (yshape, y) = out.pop().unwrap();
    assert_eq!(yshape, ishape);
    (y, i, yshape)
}

/// `x`: a permutation of `0..24` as `[1, 2, 2, 2, 3]` (numpy's
/// `default_rng(3).permutation(24)`).
fn perm24() -> Array {
    array(
        &[1, 2, 2, 2, 3],
        &[
            13., 12., 15., 23., 0., 17., 3., 22., 8., 9., 18., 6., //
            1., 10., 2., 11., 20., 16., 14., 4., 7., 5., 21., 19.,
        ],
    )
}

/// 3-D `MaxPool` with `Indices` (N, C, D, H, W), row-major and with
/// `storage_order` 1: values and indices from ONNX Runtime 1.23.2 (ONNX's
/// reference evaluator gives other indices, `[6, 13, 19, 19]`, which do
/// not point at the maxima).
#[test]
fn max_pool_indices_3d() {
    let k = || vec![ints("kernel_shape", &[2, 2, 2])];
    let (y, i, shape) = max_pool_indices(&perm24(), k());
    assert_eq!(shape, [1, 2, 1, 1, 2]);
    assert_eq!(y, [23.0, 22.0, 21.0, 21.0]);
    assert_eq!(i, [3.0, 7.0, 22.0, 22.0]);
    let mut a = k();
    a.push(int("storage_order", 1));
    let (y, i, _) = max_pool_indices(&perm24(), a);
    assert_eq!(y, [23.0, 22.0, 21.0, 21.0]);
    assert_eq!(i, [2.0, 5.0, 19.0, 19.0]);
}

/// 3-D, ceil mode, padding at the start of dim 0 and the end of dim 1,
/// windows past the padding: ONNX Runtime 1.23.2's values and indices.
#[test]
fn max_pool_indices_3d_ceil_mode() {
    // numpy's `default_rng(4).permutation(27)`.
    let x = array(
        &[1, 1, 3, 3, 3],
        &[
            11., 18., 0., 8., 7., 1., 23., 24., 15., //
            10., 9., 20., 13., 5., 25., 16., 17., 22., //
            2., 6., 19., 26., 4., 3., 12., 21., 14.,
        ],
    );
    let a = vec![
        ints("kernel_shape", &[2, 2, 2]),
        ints("strides", &[2, 2, 2]),
        ints("pads", &[1, 0, 0, 0, 1, 0]),
        int("ceil_mode", 1),
    ];
    let (y, i, shape) = max_pool_indices(&x, a);
    assert_eq!(shape, [1, 1, 2, 2, 2]);
    assert_eq!(y, [18.0, 1.0, 24.0, 15.0, 26.0, 25.0, 21.0, 22.0]);
    assert_eq!(i, [1.0, 5.0, 7.0, 8.0, 21.0, 14.0, 25.0, 17.0]);
}

/// 1-D (N, C, L) with `Indices`, two batches, ceil mode: indices over
/// `N * C * L` (ONNX Runtime 1.23.2).
#[test]
fn max_pool_indices_1d() {
    let x = array(&[2, 1, 5], &[3., 1., 4., 1., 5., 9., 2., 6., 5., 3.]);
    let a = vec![
        ints("kernel_shape", &[3]),
        ints("strides", &[2]),
        int("ceil_mode", 1),
    ];
    let (y, i, shape) = max_pool_indices(&x, a);
    assert_eq!(shape, [2, 1, 2]);
    assert_eq!(y, [4.0, 5.0, 9.0, 6.0]);
    assert_eq!(i, [2.0, 4.0, 5.0, 7.0]);
}

/// An input of -inf padded by one on top and left: the max is -inf and its
/// index the first tap inside the input (hand computation: padding is never
/// chosen). ONNX Runtime 1.23.2 gives -FLT_MAX and index -4 here (its max
/// starts from the lowest float, which -inf never exceeds).
#[test]
fn max_pool_indices_never_point_into_the_padding() {
    let x = array(&[1, 1, 2, 3], &[f32::NEG_INFINITY; 6]);
    let a = vec![ints("kernel_shape", &[2, 2]), ints("pads", &[1, 1, 0, 0])];
    let (y, i, shape) = max_pool_indices(&x, a);
    assert_eq!(shape, [1, 1, 2, 3]);
    assert!(y.iter().all(|v| *v == f64::NEG_INFINITY), "{y:?}");
    assert_eq!(i, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
}

// ---------------------------------------------------------------- Hardmax

fn hardmax(opset: i64, x: &Array, axis: i64) -> (Vec<usize>, Vec<f64>) {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let m = model(
        opset,
        &dims,
        vec![node("Hardmax", &["x"], &["y"], vec![int("axis", axis)])],
        vec![],
        &["y"],
    );
    run(&m, x, &["y"]).swap_remove(0)
}

/// Hardmax over an axis of size 0 (and of inputs with another empty dim)
/// is an empty tensor of the input's shape (ONNX Runtime 1.23.2 agrees);
/// kiln refused it.
#[test]
fn hardmax_over_an_empty_axis() {
    let empty = |shape: &[usize]| Array::zeros(DType::F32, shape);
    assert_eq!(hardmax(13, &empty(&[2, 0]), 1), (vec![2, 0], vec![]));
    assert_eq!(hardmax(13, &empty(&[2, 0]), -1), (vec![2, 0], vec![]));
    assert_eq!(hardmax(13, &empty(&[0, 3]), 1), (vec![0, 3], vec![]));
    assert_eq!(hardmax(13, &empty(&[2, 0, 3]), 1), (vec![2, 0, 3], vec![]));
    // Before opset 13: the dims from `axis` on as one.
    assert_eq!(hardmax(11, &empty(&[2, 3, 0]), 1), (vec![2, 3, 0], vec![]));
    // A non-empty input still gives the one-hot of the first maximum.
    let x = array(&[2, 3], &[1., 3., 3., 0., -1., -2.]);
    assert_eq!(
        hardmax(13, &x, 1),
        (vec![2, 3], vec![0., 1., 0., 1., 0., 0.])
    );
}

/// A NaN in a window makes kiln's max NaN (kiln's max propagates NaN), and
/// the index then points at the window's first NaN (hand computation).
/// ONNX Runtime 1.23.2 skips NaN instead (values `[1, 3, 3]`, indices
/// `[0, 2, 2]`): NaN in Max is ground the spec leaves open.
#[test]
fn max_pool_indices_of_a_nan_max_point_at_the_nan() {
    let x = array(&[1, 1, 4], &[1., f32::NAN, 3., 2.]);
    let (y, i, shape) = max_pool_indices(&x, vec![ints("kernel_shape", &[2])]);
    assert_eq!(shape, [1, 1, 3]);
    assert!(y[0].is_nan() && y[1].is_nan() && y[2] == 3.0, "{y:?}");
    assert_eq!(i, [1.0, 1.0, 2.0]);
}

/// LpPool in ceil mode where no window fits along one dim (spec size
/// `ceil((2 + 1 - 7) / 3 + 1) = 0`): an empty output, as MaxPool and
/// AveragePool give (kiln refused it: its LpPool is a sum over a padded
/// input in floor mode, where that size is negative).
#[test]
fn lp_pool_ceil_mode_with_no_window() {
    let x = iota(&[1, 1, 2]);
    let a = || {
        vec![
            ints("kernel_shape", &[4]),
            ints("strides", &[3]),
            ints("dilations", &[2]),
            ints("pads", &[1, 0]),
            int("ceil_mode", 1),
        ]
    };
    assert_eq!(pool_out("MaxPool", &x, a()), (vec![1, 1, 0], vec![]));
    let mut lp = a();
    lp.push(int("p", 2));
    assert_eq!(pool_out("LpPool", &x, lp), (vec![1, 1, 0], vec![]));
}

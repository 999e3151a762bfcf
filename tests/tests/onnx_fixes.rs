//! Regression tests for wrong answers and wrong refusals of kiln's ONNX
//! import found by differential fuzzing against ONNX Runtime (issue 17):
//! `Slice` bounds clamped as the ONNX spec says (not as numpy does),
//! `MaxPool` / `AveragePool` / `LpPool` in `ceil_mode` where the window
//! runs past (or is larger than) the padded input, `MaxPool`'s `Indices`
//! output in 1-D and 3-D, `Hardmax` over an empty axis, `Pad` cropping an
//! axis to nothing (and crops that eat the other end's padding),
//! `ConvTranspose` with SAME padding of a negative total and with NaN or
//! infinite weights, and `MeanVarianceNormalization` of constant slices.
//!
//! Each model is built here as a `ModelProto`, imported, and run on the
//! reference interpreter and the CPU backend; the expected values are
//! literals, each with a comment naming where it came from (ONNX Runtime
//! 1.23.2, the ONNX spec text, or a hand computation). Where ONNX Runtime
//! is off the spec the test says so and follows the spec.

use kiln::prelude::*;
use kiln_onnx::proto::{self, attribute_proto::AttributeType, tensor_proto::DataType};
use kiln_onnx::ImportOptions;
use kiln_tests::onnx_proto::{
    attr_int as int, attr_ints as ints, node, tensor_i64 as i64_tensor, value_info,
};
use prost::Message;

// ---------------------------------------------------------------- helpers

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
        let s = Session::new(&g, device).unwrap_or_else(|e| panic!("{device}: {e}"));
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

// ------------------------------------------------ Pad cropping to nothing

/// `Pad` (opset 18) of the f32 `x` by the constant `pads` in `mode`.
fn pad(x: &Array, pads: &[i64], mode: &str) -> (Vec<usize>, Vec<f64>) {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let mode = proto::AttributeProto {
        name: "mode".into(),
        r#type: AttributeType::String as i32,
        s: mode.as_bytes().to_vec(),
        ..Default::default()
    };
    let m = model(
        18,
        &dims,
        vec![node("Pad", &["x", "pads"], &["y"], vec![mode])],
        vec![i64_tensor("pads", pads)],
        &["y"],
    );
    run(&m, x, &["y"]).swap_remove(0)
}

/// Negative pads that crop an axis to size 0 give an empty tensor in
/// every mode (ONNX Runtime 1.23.2 agrees); kiln refused `edge`, `reflect`
/// and `wrap` ("kiln's concat: axis 0 is out of range for rank 0"), the
/// fuzzer's cases s1-m806 (`[1]` by `[-1, 0]`) and s1-m3902 (`[2, 1, 3]` by
/// `[0, 0, 1, 1, -1, 1]`).
#[test]
fn pad_cropping_an_axis_to_nothing_is_empty() {
    for mode in ["constant", "edge", "reflect", "wrap"] {
        assert_eq!(
            pad(&array(&[1], &[7.]), &[-1, 0], mode),
            (vec![0], vec![]),
            "{mode}"
        );
        let x = iota(&[2, 1, 3]);
        let (shape, v) = pad(&x, &[0, 0, 1, 1, -1, 1], mode);
        assert_eq!((shape, v.len()), (vec![3, 0, 5], 0), "{mode}");
        // Padded on one axis; on the other, a crop past the axis eats the
        // padding at its other end (pad, then crop: 2 - 3 + 1 = 0 long).
        let (shape, v) = pad(&iota(&[1, 2]), &[2, -3, 0, 1], mode);
        assert_eq!((shape, v.len()), (vec![3, 0], 0), "{mode}");
    }
}

/// Crops to part of an axis next to padding on its other end: positive
/// pads first, then the crop (numpy's pad, then a slice). `constant` and
/// `edge` from ONNX Runtime 1.23.2; `reflect` and `wrap` by hand (ONNX
/// Runtime crops first, then pads the cropped axis: `[2, 3, 2, 3]` for
/// wrap, and reflect reads past the input, `[2, 3, 2, nan]`).
#[test]
fn pad_crops_part_of_an_axis_and_pads_the_other_end() {
    let x = iota(&[3]);
    assert_eq!(pad(&x, &[-1, 2], "constant").1, [2., 3., 0., 0.]);
    assert_eq!(pad(&x, &[-1, 2], "edge").1, [2., 3., 3., 3.]);
    // [1, 2, 3] reflected by 2 at the end is [1, 2, 3, 2, 1]; less the first.
    assert_eq!(pad(&x, &[-1, 2], "reflect").1, [2., 3., 2., 1.]);
    // Wrapped: [1, 2, 3, 1, 2]; less the first.
    assert_eq!(pad(&x, &[-1, 2], "wrap").1, [2., 3., 1., 2.]);
    // A crop past the axis eats into the other end's padding: [1, 2, 0, 0]
    // less 3 at the start (hand; kiln gave [0, 0]; ONNX Runtime refuses
    // crops longer than the axis).
    assert_eq!(pad(&iota(&[2]), &[-3, 2], "constant"), (vec![1], vec![0.]));
    assert_eq!(pad(&iota(&[2]), &[-3, 2], "edge"), (vec![1], vec![2.]));
    // Rank 0: no pads, the input itself (hand; ONNX Runtime refuses it).
    for mode in ["constant", "edge", "reflect", "wrap"] {
        assert_eq!(pad(&array(&[], &[5.]), &[], mode), (vec![], vec![5.]));
    }
}

// ---------------------------------------------------------- ConvTranspose

/// Runs `m` with `feeds` on the reference interpreter and the CPU backend;
/// returns each device's outputs `fetch`, which must agree (NaN with NaN).
#[track_caller]
fn run_feeds(
    m: &proto::ModelProto,
    feeds: &[(&str, &Array)],
    fetch: &[&str],
) -> Vec<(Vec<usize>, Vec<f64>)> {
    let g = import(m).unwrap_or_else(|e| panic!("import: {e}"));
    let mut results = Vec::new();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&g, device).unwrap_or_else(|e| panic!("{device}: {e}"));
        let outs = s
            .run(feeds, fetch)
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        results.push(
            outs.iter()
                .map(|a| (a.shape().to_vec(), a.to_f64_vec()))
                .collect::<Vec<_>>(),
        );
    }
    for (r, c) in results[0].iter().zip(&results[1]) {
        assert_eq!(r.0, c.0, "shapes differ between devices");
        for (a, b) in r.1.iter().zip(&c.1) {
            assert!(
                a.to_bits() == b.to_bits()
                    || (a.is_nan() && b.is_nan())
                    || (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "reference {:?} vs cpu {:?}",
                r.1,
                c.1
            );
        }
    }
    results.swap_remove(0)
}

fn f32_tensor(name: &str, a: &Array) -> proto::TensorProto {
    proto::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: a.shape().iter().map(|&d| d as i64).collect(),
        float_data: a.to_f64_vec().iter().map(|&v| v as f32).collect(),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> proto::AttributeProto {
    proto::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// `ConvTranspose` (opset 17) of `x` by `w` with `attrs`: `w` a constant
/// (`const_w`) or a second graph input. Returns the output's shape and
/// values.
fn conv_transpose(
    x: &Array,
    w: &Array,
    const_w: bool,
    attrs: Vec<proto::AttributeProto>,
) -> (Vec<usize>, Vec<f64>) {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let inits = if const_w {
        vec![f32_tensor("w", w)]
    } else {
        vec![]
    };
    let mut m = model(
        17,
        &dims,
        vec![node("ConvTranspose", &["x", "w"], &["y"], attrs)],
        inits,
        &["y"],
    );
    let mut feeds = vec![("x", x)];
    if !const_w {
        let wd: Vec<i64> = w.shape().iter().map(|&d| d as i64).collect();
        let g = m.graph.as_mut().unwrap();
        g.input
            .push(value_info("w", DataType::Float, Some(wd.as_slice())));
        feeds.push(("w", w));
    }
    run_feeds(&m, &feeds, &["y"]).swap_remove(0)
}

/// NaN-aware equality of `got` and `want` within 1e-5 (relative).
#[track_caller]
fn same(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 1e-5 * w.abs().max(1.0)
        };
        assert!(ok, "got {got:?}, want {want:?}");
    }
}

/// SAME_UPPER / SAME_LOWER with a stride larger than the dilated kernel:
/// the total padding `stride * (in - 1) + kernel - in * stride` is
/// negative and the output (`in * stride` long, as the spec says) extends
/// at both ends, split as ONNX's reference evaluator splits it (floor
/// halves: -3 is -2 at the start and -1 at the end for SAME_UPPER). kiln
/// put all the extension at the end. ONNX Runtime 1.23.2 clamps the total
/// to 0 and gives the 5 natural outputs `[3, 0, 0, 0, 6]`, off the spec.
/// Expected values: ONNX's reference evaluator (onnx 1.22), which agrees
/// with a hand scatter. Both of kiln's forms (constant weight: a conv;
/// weight given at run time: a scatter-add) are checked.
#[test]
fn conv_transpose_same_with_a_negative_total_padding() {
    let x = array(&[1, 1, 2], &[1., 2.]);
    let w = array(&[1, 1, 1], &[3.]);
    for const_w in [true, false] {
        let upper = conv_transpose(
            &x,
            &w,
            const_w,
            vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[4])],
        );
        assert_eq!(upper.0, [1, 1, 8]);
        same(&upper.1, &[0., 0., 3., 0., 0., 0., 6., 0.]);
        let lower = conv_transpose(
            &x,
            &w,
            const_w,
            vec![string("auto_pad", "SAME_LOWER"), ints("strides", &[4])],
        );
        assert_eq!(lower.0, [1, 1, 8]);
        same(&lower.1, &[0., 3., 0., 0., 0., 6., 0., 0.]);
    }
    // The fuzzer's s1-m1981: x [2, 2, 2], w [2, 1, 1], stride 3,
    // SAME_LOWER: total -2, one zero at each end (ONNX's reference
    // evaluator; ONNX Runtime gives 4 outputs per row).
    let x = array(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let w = array(&[2, 1, 1], &[2., -1.]);
    let (shape, y) = conv_transpose(
        &x,
        &w,
        true,
        vec![string("auto_pad", "SAME_LOWER"), ints("strides", &[3])],
    );
    assert_eq!(shape, [2, 1, 6]);
    // 2 * x[c0] - x[c1] at 1 and 4: (2 - 3, 4 - 4), (10 - 7, 12 - 8).
    same(&y, &[0., -1., 0., 0., 0., 0., 0., 3., 0., 0., 4., 0.]);
}

/// An explicit `output_shape` larger than the natural output, without
/// auto_pad: the spec generates the pads from the total padding (here
/// `3 * 1 + 1 - 6 = -2`) with its "Else" split (start `total - total/2`,
/// end `total/2`), so the output extends by one at each end (hand, from
/// the spec text). kiln extended the end only; ONNX Runtime 1.23.2
/// extends the end only too (`[3, 0, 0, 6, 0, 0]`), and ONNX's reference
/// evaluator refuses the model. An odd total (-3, output_shape 7) splits
/// with floor halves as for SAME: start -1, end -2.
#[test]
fn conv_transpose_output_shape_larger_than_natural_extends_both_ends() {
    let x = array(&[1, 1, 2], &[1., 2.]);
    let w = array(&[1, 1, 1], &[3.]);
    for const_w in [true, false] {
        let a = vec![ints("strides", &[3]), ints("output_shape", &[6])];
        let (shape, y) = conv_transpose(&x, &w, const_w, a);
        assert_eq!(shape, [1, 1, 6]);
        same(&y, &[0., 3., 0., 0., 6., 0.]);
        let a = vec![ints("strides", &[3]), ints("output_shape", &[7])];
        same(
            &conv_transpose(&x, &w, const_w, a).1,
            &[0., 3., 0., 0., 6., 0., 0.],
        );
    }
}

/// A NaN or infinite weight reaches only the outputs its input elements
/// reach: the inserted zeros of a stride and the padding are no input,
/// so `0 * inf` must not appear there. Expected values from ONNX Runtime
/// 1.23.2 (a hand scatter agrees); kiln gave NaN at every output a
/// zero-inserted or padded position met the weight (the fuzzer's s1-m2161,
/// s1-m3781, s1-m8713, s1-m12385).
#[test]
fn conv_transpose_non_finite_weights_reach_only_their_outputs() {
    let x = array(&[1, 1, 2], &[1., 2.]);
    let inf = f64::INFINITY;
    let w_inf = array(&[1, 1, 2], &[1., f32::INFINITY]);
    let w_nan = array(&[1, 1, 2], &[f32::NAN, 1.]);
    for const_w in [false, true] {
        let s2 = || vec![ints("strides", &[2])];
        same(
            &conv_transpose(&x, &w_inf, const_w, s2()).1,
            &[1., inf, 2., inf],
        );
        same(
            &conv_transpose(&x, &w_nan, const_w, s2()).1,
            &[f64::NAN, 1., f64::NAN, 2.],
        );
        // Stride 3 and output_padding 1: positions 2 and 5 see no input.
        let a = vec![ints("strides", &[3]), ints("output_padding", &[1])];
        same(
            &conv_transpose(&x, &w_inf, const_w, a).1,
            &[1., inf, 0., 2., inf, 0.],
        );
        // Stride 1 with a pad at the start (a conv pads the other side).
        let a = vec![ints("pads", &[1, 0])];
        same(&conv_transpose(&x, &w_nan, const_w, a).1, &[f64::NAN, 2.]);
    }
    // An infinite input times a zero weight is NaN (IEEE, as ONNX Runtime
    // gives), and reaches only its own outputs.
    let x = array(&[1, 1, 2], &[f32::INFINITY, 1.]);
    let w = array(&[1, 1, 2], &[1., 0.]);
    for const_w in [false, true] {
        let y = conv_transpose(&x, &w, const_w, vec![ints("strides", &[2])]).1;
        same(&y, &[inf, f64::NAN, 1., 0.]);
    }
}

/// The fuzzer's s1-m2161: a 3-D ConvTranspose (stride 2 and
/// output_padding 1 on the depth) whose run-time weight holds one NaN:
/// 8 of the 60 outputs are NaN, not 52 (ONNX Runtime 1.23.2 and ONNX's
/// reference evaluator agree, values and NaN positions).
#[test]
fn conv_transpose_3d_nan_weight() {
    let x = array(
        &[1, 1, 4, 2, 1],
        &[
            0.0,
            -0.2385848,
            -0.17615922,
            1.4952697,
            -1.5114266,
            1.8995475,
            -2.4042091,
            -2.9802709,
        ],
    );
    let w = array(
        &[1, 1, 3, 2, 2],
        &[
            -0.07791927,
            -2.4228182,
            2.5706391,
            -1.6341423,
            0.0,
            1.9858783,
            2.006391,
            -0.47017708,
            1e-40, // a subnormal (the case has 9.99995e-41)
            1.6278901,
            f32::NAN,
            -1.7299434,
        ],
    );
    let a = vec![
        ints("strides", &[2, 1, 1]),
        ints("output_padding", &[1, 0, 0]),
    ];
    let (shape, y) = conv_transpose(&x, &w, false, a);
    assert_eq!(shape, [1, 1, 10, 3, 2]);
    // The NaN tap (depth 2, row 1, column 0) of input (d, r, 0) lands at
    // (2d + 2, r + 1, 0): 4 depths times 2 rows (ONNX Runtime's NaNs).
    let nan_at: Vec<usize> = (0..y.len()).filter(|&i| y[i].is_nan()).collect();
    assert_eq!(nan_at, [14, 16, 26, 28, 38, 40, 50, 52]);
    // The first two depths (ONNX Runtime 1.23.2).
    same(
        &y[..12],
        &[
            0.0,
            0.0,
            0.018590353,
            0.5780476,
            -0.6133154,
            0.38988152,
            0.0,
            0.0,
            0.0,
            -0.4738004,
            -0.4786944,
            0.1121771,
        ],
    );
}

// ------------------------------------------- MeanVarianceNormalization

fn mvn(x: &Array) -> Vec<f64> {
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let m = model(
        13,
        &dims,
        vec![node("MeanVarianceNormalization", &["x"], &["y"], vec![])],
        vec![],
        &["y"],
    );
    run(&m, x, &["y"]).swap_remove(0).1
}

/// A constant slice normalizes to 0: its variance is 0, and `0 / (0 +
/// 1e-9)` is 0 (the spec's function, in exact arithmetic; ONNX's reference
/// evaluator gives 0 for s1-m1136's 1.5). kiln gave -0.99 (its mean was an
/// ulp off, and 1e-9 did not hide the ulp-sized std); ONNX Runtime 1.23.2
/// gives NaN (its `E[x^2] - E[x]^2` goes negative), off the spec.
#[test]
fn mvn_of_a_constant_slice_is_zero() {
    for v in [1.5f32, 0.1, -3.7, 1e-3, 12345.678, 7e-30] {
        let y = mvn(&array(&[3, 1, 1, 5], &[v; 15]));
        assert!(y.iter().all(|&y| y == 0.0), "{v}: {y:?}");
        // Two channels, each constant (the default axes keep dim 1).
        let mut two = vec![v; 8];
        two[4..].fill(-2.0 * v);
        let y = mvn(&array(&[1, 2, 2, 2], &two));
        assert!(y.iter().all(|&y| y == 0.0), "{v}: {y:?}");
    }
    // A varying slice as before: (x - 2.5) / (sqrt(1.25) + 1e-9) (ONNX
    // Runtime 1.23.2 agrees).
    close(
        &mvn(&array(&[1, 1, 1, 4], &[1., 2., 3., 4.])),
        &[-1.3416407, -0.4472136, 0.4472136, 1.3416407],
    );
}

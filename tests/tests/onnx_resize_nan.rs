//! ONNX `Resize` with NaN and infinities in the input (issue 17, bug 4):
//! each output reads only its own taps (2 per axis for linear, 4 for
//! cubic, the stretched kernel's window when antialiasing, one for
//! nearest), so a NaN or an infinity reaches only the outputs whose taps
//! read it — taps of weight zero included, as ONNX Runtime reads them
//! (`0 * inf` is NaN there too). Each test builds a one-node model, imports
//! it, runs it on the reference interpreter and on the CPU backend, and
//! checks the exact NaN positions, the infinities and the values against
//! ONNX Runtime 1.23.2's output (written here as literals), and the import
//! bound on the tap tables.

use kiln::prelude::*;
use kiln_onnx::proto::{self, tensor_proto::DataType};
use kiln_onnx::ImportOptions;
use kiln_tests::onnx_proto::{
    attr_float, attr_int, attr_str, tensor_f32 as floats, tensor_i64 as ints, value_info,
};
use prost::Message;

const NAN: f32 = f32::NAN;
const INF: f32 = f32::INFINITY;

// ---------------------------------------------------------------- helpers

/// An attribute of `Resize`.
enum Attr {
    Str(&'static str, &'static str),
    Int(&'static str, i64),
    Float(&'static str, f32),
}

fn attribute(a: &Attr) -> proto::AttributeProto {
    match *a {
        Attr::Str(name, v) => attr_str(name, v),
        Attr::Int(name, v) => attr_int(name, v),
        Attr::Float(name, v) => attr_float(name, v),
    }
}

/// How the output size is given.
enum Target<'a> {
    Scales(&'a [f32]),
    Sizes(&'a [i64]),
}

/// `y = Resize(x, roi, scales | sizes)` over `x: f32[shape]`, opset 19.
fn resize_model(shape: &[i64], attrs: &[Attr], target: Target, roi: &[f32]) -> proto::ModelProto {
    let mut init = vec![floats("roi", roi)];
    let inputs: Vec<String> = match target {
        Target::Scales(s) => {
            init.push(floats("scales", s));
            vec!["x".into(), "roi".into(), "scales".into()]
        }
        Target::Sizes(s) => {
            init.push(ints("sizes", s));
            vec!["x".into(), "roi".into(), String::new(), "sizes".into()]
        }
    };
    let node = proto::NodeProto {
        op_type: "Resize".into(),
        name: "resize".into(),
        input: inputs,
        output: vec!["y".into()],
        attribute: attrs.iter().map(attribute).collect(),
        ..Default::default()
    };
    let x = value_info("x", DataType::Float, Some(shape));
    proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: 19,
        }],
        producer_name: "onnx_resize_nan".into(),
        graph: Some(proto::GraphProto {
            name: "resize".into(),
            node: vec![node],
            initializer: init,
            input: vec![x],
            output: vec![proto::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The input the expected values were computed from: `0.5 * i + 1` at flat
/// index `i`, with `specials` (flat index, value) written over it.
fn input(shape: &[i64], specials: &[(usize, f32)]) -> Array {
    let n: i64 = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 + 1.0).collect();
    for &(i, s) in specials {
        v[i] = s;
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Array::from_vec(dims, v).unwrap()
}

/// Imports `m`, runs it on `x` on the reference interpreter and the CPU
/// backend, and checks each output against `expected` (shape `out`): NaN
/// exactly where expected is NaN, the same infinities, other values within
/// 1e-5 relative.
#[track_caller]
fn check(m: &proto::ModelProto, x: &Array, out: &[usize], expected: &[f32]) {
    let g = kiln_onnx::import_bytes(&m.encode_to_vec(), &ImportOptions::default()).unwrap();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&g, device).unwrap();
        let y = s.run(&[("x", x)], &["y"]).unwrap().remove(0);
        assert_eq!(y.shape().to_vec(), out.to_vec(), "{device:?}");
        let got = y.to_f64_vec();
        assert_eq!(got.len(), expected.len());
        for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
            let e = e as f64;
            let ok = if e.is_nan() {
                g.is_nan()
            } else if e.is_infinite() {
                g == e
            } else {
                (g - e).abs() <= 1e-5 * e.abs().max(1e-3)
            };
            assert!(ok, "{device:?}: output {i} is {g}, ONNX Runtime gives {e}");
        }
    }
}

// ------------------------------------------------------------------ cases

/// The case: one NaN in a 3x4 image upsampled 2x, linear,
/// half_pixel. ONNX Runtime gives 25 NaN of 48 for a NaN at (1, 1) (kiln
/// gave 48): the NaN reaches the outputs whose two taps per axis read row 1
/// and column 1, and (a weight of zero, still read) row 0 and column 0's
/// edge outputs, which clamp to the input and read the next sample too.
#[test]
fn linear_upsample_spreads_a_nan_only_over_its_taps() {
    let m = resize_model(
        &[1, 1, 3, 4],
        &[Attr::Str("mode", "linear")],
        Target::Scales(&[1.0, 1.0, 2.0, 2.0]),
        &[],
    );
    let x = input(&[1, 1, 3, 4], &[(5, NAN)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    #[rustfmt::skip]
    let expected = [
        NAN, NAN, NAN, NAN, NAN, 2.125, 2.375, 2.5,
        NAN, NAN, NAN, NAN, NAN, 2.625, 2.875, 3.0,
        NAN, NAN, NAN, NAN, NAN, 3.625, 3.875, 4.0,
        NAN, NAN, NAN, NAN, NAN, 4.625, 4.875, 5.0,
        NAN, NAN, NAN, NAN, NAN, 5.625, 5.875, 6.0,
        5.0, 5.125, 5.375, 5.625, 5.875, 6.125, 6.375, 6.5,
    ];
    assert_eq!(expected.iter().filter(|v| v.is_nan()).count(), 25);
    check(&m, &x, &[1, 1, 6, 8], &expected);
}

/// Cubic (a = -0.75, half_pixel) along the last axis of a 2x4 image: an
/// infinity meets weights of both signs and weights of zero, so the outputs
/// whose four taps read it are NaN; the untouched axis of scale 1 is
/// interpolated too (ONNX Runtime's bicubic reads four rows with weights
/// 0, 1, 0, 0), so the other row's outputs that read column 2 are NaN as
/// well, and only the first column, whose taps stop at column 1, survives.
#[test]
fn cubic_infinity_reaches_only_its_taps() {
    let m = resize_model(
        &[1, 1, 2, 4],
        &[Attr::Str("mode", "cubic")],
        Target::Scales(&[1.0, 1.0, 1.0, 2.0]),
        &[],
    );
    let x = input(&[1, 1, 2, 4], &[(2, INF)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    #[rustfmt::skip]
    let expected = [
        0.947_265_6, NAN, NAN, NAN, NAN, NAN, NAN, NAN,
        2.947_265_6, NAN, NAN, NAN, NAN, NAN, NAN, NAN,
    ];
    check(&m, &x, &[1, 1, 2, 8], &expected);
}

/// Cubic with exclude_outside (asymmetric, 4 -> 6): the taps outside the
/// input weigh zero but are still read at the clamped edge, so an infinity
/// at the edge makes the first three outputs NaN, and the rest are
/// renormalized over the taps inside.
#[test]
fn cubic_exclude_outside_reads_the_clamped_edge() {
    let m = resize_model(
        &[1, 1, 1, 4],
        &[
            Attr::Str("mode", "cubic"),
            Attr::Int("exclude_outside", 1),
            Attr::Str("coordinate_transformation_mode", "asymmetric"),
        ],
        Target::Sizes(&[1, 1, 1, 6]),
        &[],
    );
    let x = input(&[1, 1, 1, 4], &[(0, INF)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    let expected = [NAN, NAN, NAN, 2.0, 2.383_333, 2.581_081];
    check(&m, &x, &[1, 1, 1, 6], &expected);
}

/// tf_crop_and_resize (linear, extrapolation -1): the columns outside the
/// crop are the extrapolation value even where every tap row is NaN; the
/// inside ones read the NaN at (1, 1).
#[test]
fn crop_extrapolates_past_a_nan() {
    let m = resize_model(
        &[1, 1, 3, 3],
        &[
            Attr::Str("mode", "linear"),
            Attr::Str("coordinate_transformation_mode", "tf_crop_and_resize"),
            Attr::Float("extrapolation_value", -1.0),
        ],
        Target::Sizes(&[1, 1, 4, 4]),
        &[0.0, 0.0, 0.2, -0.2, 1.0, 1.0, 0.9, 1.3],
    );
    let x = input(&[1, 1, 3, 3], &[(4, NAN)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    #[rustfmt::skip]
    let expected = [
        -1.0, NAN, NAN, -1.0,
        -1.0, NAN, NAN, -1.0,
        -1.0, NAN, NAN, -1.0,
        -1.0, NAN, NAN, -1.0,
    ];
    check(&m, &x, &[1, 1, 4, 4], &expected);
}

/// Nearest copies: a NaN lands only in its 2x2 block.
#[test]
fn nearest_copies_a_nan_into_its_block_only() {
    let m = resize_model(
        &[1, 1, 2, 3],
        &[Attr::Str("mode", "nearest")],
        Target::Scales(&[1.0, 1.0, 2.0, 2.0]),
        &[],
    );
    let x = input(&[1, 1, 2, 3], &[(1, NAN)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    #[rustfmt::skip]
    let expected = [
        1.0, 1.0, NAN, NAN, 2.0, 2.0,
        1.0, 1.0, NAN, NAN, 2.0, 2.0,
        2.5, 2.5, 3.0, 3.0, 3.5, 3.5,
        2.5, 2.5, 3.0, 3.0, 3.5, 3.5,
    ];
    check(&m, &x, &[1, 1, 4, 6], &expected);
}

/// Linear align_corners downsampling 4x5 -> 3x3: a -inf at (1, 2) lands at
/// the one output that reads it with a nonzero weight (-inf) and at the one
/// that reads it with weight zero (NaN); the rest are finite.
#[test]
fn align_corners_downsample_keeps_infinity_local() {
    let m = resize_model(
        &[1, 1, 4, 5],
        &[
            Attr::Str("mode", "linear"),
            Attr::Str("coordinate_transformation_mode", "align_corners"),
        ],
        Target::Sizes(&[1, 1, 3, 3]),
        &[],
    );
    let x = input(&[1, 1, 4, 5], &[(7, -INF)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    let expected = [1.0, NAN, 3.0, 4.75, -INF, 6.75, 8.5, 9.5, 10.5];
    check(&m, &x, &[1, 1, 3, 3], &expected);
}

/// Antialiased linear downsampling 8 -> 3: each output reads the stretched
/// kernel's window (about 5 samples), so a NaN at 2 reaches the two
/// outputs whose windows hold it and not the third.
#[test]
fn antialias_linear_nan_stays_in_its_windows() {
    let m = resize_model(
        &[1, 1, 1, 8],
        &[Attr::Str("mode", "linear"), Attr::Int("antialias", 1)],
        Target::Sizes(&[1, 1, 1, 3]),
        &[],
    );
    let x = input(&[1, 1, 1, 8], &[(2, NAN)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    let expected = [NAN, NAN, 4.011_627_7];
    check(&m, &x, &[1, 1, 1, 3], &expected);
}

/// Antialiased cubic downsampling 8 -> 3 with +inf at the last sample: the
/// middle output's window reaches it through the kernel's negative lobe
/// (-inf), the last one through its positive centre (+inf), and the first
/// window stops short of it.
#[test]
fn antialias_cubic_infinity_keeps_the_kernel_sign() {
    let m = resize_model(
        &[1, 1, 1, 8],
        &[Attr::Str("mode", "cubic"), Attr::Int("antialias", 1)],
        Target::Sizes(&[1, 1, 1, 3]),
        &[],
    );
    let x = input(&[1, 1, 1, 8], &[(7, INF)]);
    // ONNX Runtime 1.23.2's output for this model and input.
    let expected = [1.394_029_1, -INF, INF];
    check(&m, &x, &[1, 1, 1, 3], &expected);
}

/// The tap tables stay bounded at import: an output of 5,000,000 positions
/// along one axis is refused with an error naming the tables and the node.
#[test]
fn huge_resize_is_refused_at_import() {
    let m = resize_model(
        &[1, 1, 1, 2],
        &[Attr::Str("mode", "linear")],
        Target::Sizes(&[1, 1, 1, 5_000_000]),
        &[],
    );
    let e = kiln_onnx::import_bytes(&m.encode_to_vec(), &ImportOptions::default()).unwrap_err();
    let msg = e.to_string();
    for part in ["Resize node 'resize'", "the resize taps of [5000000, 16]"] {
        assert!(msg.contains(part), "message lacks '{part}': {msg}");
    }
}

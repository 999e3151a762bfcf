//! Build-time type errors: every mistake is an `Err` from the call that made
//! it, naming the op, the operand types and the caller's file:line.

use kiln::graph::{Error, SliceAxis};
use kiln::prelude::*;

/// Evaluates a failing builder call and the line it is on (one line, so
/// rustfmt cannot separate them).
macro_rules! fails {
    ($e:expr) => {
        ($e.unwrap_err(), line!())
    };
}

/// `kiln_tests::assert_type_error` at this file.
#[track_caller]
fn assert_type_error(err: kiln::graph::Error, op: &str, line: u32, mentions: &[&str]) {
    kiln_tests::assert_type_error(err, op, file!(), line, mentions);
}

#[test]
fn matmul_inner_dims() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2, 3]).unwrap();
    let b = g.placeholder("b", DType::F32, [4, 5]).unwrap();
    let (e, line) = fails!(a.matmul(b));
    assert_type_error(
        e,
        "matmul",
        line,
        &["f32[2,3]", "f32[4,5]", "inner dimensions differ: 3 vs 4"],
    );
}

#[test]
fn matmul_vector_keeps_user_shapes_in_message() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [3]).unwrap();
    let b = g.placeholder("b", DType::F32, [4, 5]).unwrap();
    let (e, line) = fails!(a.matmul(b));
    assert_type_error(e, "matmul", line, &["f32[3], f32[4,5]"]);
}

#[test]
fn mixed_dtypes() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2]).unwrap();
    let b = g.placeholder("b", DType::I64, [2]).unwrap();
    let (e, line) = fails!(a.add(b));
    assert_type_error(
        e,
        "add",
        line,
        &["f32[2]", "i64[2]", "dtypes differ: f32 vs i64"],
    );
}

#[test]
fn broadcast_mismatch() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["batch", 3]).unwrap();
    let b = g.placeholder("b", DType::F32, [4]).unwrap();
    let (e, line) = fails!(a.mul(b));
    assert_type_error(
        e,
        "mul",
        line,
        &["f32[batch,3]", "f32[4]", "do not broadcast"],
    );
}

#[test]
fn different_symbols_are_checked_when_bound() {
    // `n` and `m` may be equal (or `m` 1): the build cannot tell, so the
    // first run that binds them checks, with this type error.
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["n"]).unwrap();
    let b = g.placeholder("b", DType::F32, shape!["m"]).unwrap();
    // A symbolic size against a fixed one is a mistake found at once.
    let four = g.placeholder("four", DType::F32, [4]).unwrap();
    let (e, line) = fails!(a.sub(four));
    assert_type_error(e, "sub", line, &["f32[n]", "f32[4]"]);
    let line = line!() + 1;
    let c = a.sub(b).unwrap();
    assert_eq!(c.shape(), shape!["n"]);
    let name = c.name();
    let graph = g.into_graph();
    let s = kiln::Session::new(&graph, kiln::Device::Reference).unwrap();
    let x = |n: usize| Array::from_vec(vec![n], vec![0f32; n]).unwrap();
    let e = s
        .run(&[("a", &x(2)), ("b", &x(3))], &[name.as_str()])
        .unwrap_err();
    let kiln::Error::Graph(e) = e else {
        panic!("{e:?}")
    };
    assert_type_error(e, "sub", line, &["f32[n]", "f32[m]", "n=2", "m=3"]);
}

#[test]
fn reshape_element_count() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2, 3]).unwrap();
    let (e, line) = fails!(a.reshape([4, 2]));
    assert_type_error(
        e,
        "reshape",
        line,
        &["f32[2,3]", "cannot reshape [2,3] to [4,2]"],
    );
    let s = g
        .placeholder("s", DType::F32, shape!["batch", 28, 28])
        .unwrap();
    let (e, line) = fails!(s.reshape([784]));
    assert_type_error(e, "reshape", line, &["[batch,28,28]"]);
    assert_eq!(
        s.reshape_to(&[0, -1]).unwrap().shape(),
        shape!["batch", 784]
    );
    assert_eq!(
        s.reshape_to(&[-1, 784]).unwrap().shape(),
        shape!["batch", 784]
    );
    // -1 is inferred as an expression where the symbols stay.
    assert_eq!(
        s.reshape_to(&[-1, 28]).unwrap().shape().to_string(),
        "[28*batch,28]"
    );
    let (e, line) = fails!(s.reshape_to(&[-1, 5]));
    assert_type_error(
        e,
        "reshape",
        line,
        &["cannot infer -1 in [-1, 5] from [batch,28,28]"],
    );
}

#[test]
fn axis_out_of_range() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2, 3]).unwrap();
    let (e, line) = fails!(a.sum(&[2], false));
    assert_type_error(
        e,
        "reduce_sum",
        line,
        &["f32[2,3]", "axis 2 is out of range for rank 2"],
    );
    let (e, line) = fails!(a.softmax(-3));
    assert_type_error(e, "reduce_max", line, &["axis -3"]);
    let (e, line) = fails!(a.sum(&[0, -2], true));
    assert_type_error(e, "reduce_sum", line, &["repeat"]);
}

#[test]
fn movement_errors() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["n", 3]).unwrap();
    let (e, line) = fails!(a.permute(&[0, 0]));
    assert_type_error(e, "permute", line, &["not a permutation"]);
    let (e, line) = fails!(a.broadcast_to([5, 3]));
    assert_type_error(e, "broadcast", line, &["cannot broadcast"]);
    let (e, line) = fails!(a.slice_axis(1, 0, 3, 0));
    assert_type_error(e, "slice", line, &["step of dim 1 is 0"]);
    // Symbolic dims are sliced, padded and joined into expressions.
    let part = a
        .slice(&[
            SliceAxis {
                start: 1,
                end: i64::MAX,
                step: 1,
            },
            SliceAxis::FULL,
        ])
        .unwrap();
    assert_eq!(part.shape().to_string(), "[max(0,n-1),3]");
    assert_eq!(
        a.pad(&[1, 0], &[2, 0], 0.0).unwrap().shape().to_string(),
        "[n+3,3]"
    );
    let b = g.placeholder("b", DType::F32, shape!["n", 4]).unwrap();
    let (e, line) = fails!(g.concat(&[a, b], 0));
    assert_type_error(
        e,
        "concat",
        line,
        &["differs from input 0 in dim 1 (4 vs 3)"],
    );
    assert_eq!(g.concat(&[a, b], 1).unwrap().shape(), shape!["n", 7]);
    assert_eq!(g.concat(&[a, a], 0).unwrap().shape().to_string(), "[2*n,3]");
    // `m` against `n`: equal or not by binding, checked when bound.
    let c = g.placeholder("c", DType::F32, shape!["m", 5]).unwrap();
    assert_eq!(g.concat(&[a, c], -1).unwrap().shape(), shape!["n", 8]);
    let (e, line) = fails!(g.concat(&[a, b.reshape(shape!["n", 2, 2]).unwrap()], -1));
    assert_type_error(e, "concat", line, &["rank 3"]);
    let (e, line) = fails!(a.squeeze(1));
    assert_type_error(e, "reshape", line, &["cannot squeeze dim 1 of size 3"]);
}

#[test]
fn float_only_and_bool_only_ops() {
    let g = GraphBuilder::new();
    let i = g.placeholder("i", DType::I32, [3]).unwrap();
    let (e, line) = fails!(i.exp());
    assert_type_error(e, "exp", line, &["i32[3]", "needs f32 or f64"]);
    // Not, and, or, xor are logical on bools and bitwise on integers.
    assert_eq!(i.not().unwrap().dtype(), DType::I32);
    assert_eq!(i.and(i).unwrap().dtype(), DType::I32);
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    let (e, line) = fails!(x.not());
    assert_type_error(e, "not", line, &["needs bool or an integer dtype"]);
    let (e, line) = fails!(x.and(x));
    assert_type_error(e, "and", line, &["bool or integer operands"]);
    let b = g.placeholder("b", DType::Bool, [3]).unwrap();
    let (e, line) = fails!(b.add(b));
    assert_type_error(e, "add", line, &["numeric"]);
    let (e, line) = fails!(b.mul(2.0));
    assert_type_error(e, "constant", line, &["bool"]);
    let f = g.placeholder("f", DType::F32, [3]).unwrap();
    let (e, line) = fails!(g.select(f, f, f));
    assert_type_error(e, "select", line, &["condition must be bool"]);
}

#[test]
fn conv_and_pool_errors() {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, shape!["n", 3, 8, 8])
        .unwrap();
    let w = g.placeholder("w", DType::F32, [4, 2, 3, 3]).unwrap();
    let (e, line) = fails!(x.conv2d(w, Conv2dOptions::default()));
    assert_type_error(
        e,
        "conv2d",
        line,
        &[
            "f32[n,3,8,8]",
            "f32[4,2,3,3]",
            "weight expects 2 channels per group, input has 3",
        ],
    );
    let big = g.placeholder("big", DType::F32, [4, 3, 9, 9]).unwrap();
    let (e, line) = fails!(x.conv2d(big, Conv2dOptions::default()));
    assert_type_error(e, "conv2d", line, &["does not fit"]);
    let (e, line) = fails!(x.max_pool2d(Window2d::square(3, 0, 0)));
    assert_type_error(e, "max_pool2d", line, &["does not fit"]);
    let (e, line) = fails!(x.avg_pool2d(Window2d::square(2, 2, 2), false));
    assert_type_error(e, "avg_pool2d", line, &["padding"]);
}

#[test]
fn gather_scatter_assign_errors() {
    let g = GraphBuilder::new();
    let d = g.placeholder("d", DType::F32, [5, 2]).unwrap();
    let fi = g.placeholder("fi", DType::F32, [3]).unwrap();
    let (e, line) = fails!(d.gather(fi, 0));
    assert_type_error(e, "gather", line, &["indices must be i32 or i64, got f32"]);
    let idx = g.placeholder("idx", DType::I64, [3]).unwrap();
    let upd = g.placeholder("upd", DType::F32, [3, 3]).unwrap();
    let (e, line) = fails!(d.scatter_add(idx, upd, 0));
    assert_type_error(e, "scatter_add", line, &["updates must have shape [3,2]"]);
    let (e, line) = fails!(d.assign(d));
    assert_type_error(e, "assign", line, &["must be a variable"]);
    let v = g.variable("v", Array::zeros(DType::F32, &[5, 2])).unwrap();
    let (e, line) = fails!(v.assign(upd));
    assert_type_error(e, "assign", line, &["does not match"]);
}

#[test]
fn layer_errors_point_at_the_user_line() {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", "features"])
        .unwrap();
    let (e, line) = fails!(g.dense("fc", x, 8, Activation::Relu));
    assert_type_error(e, "dense", line, &["fixed size"]);
    let i = g.placeholder("i", DType::I64, [2, 4]).unwrap();
    let (e, line) = fails!(g.dense("fc_int", i, 8, Activation::Relu));
    assert_type_error(e, "variable", line, &["float dtype"]);
    let b = g.placeholder("b", DType::Bool, [2, 4]).unwrap();
    let (e, line) = fails!(b.softmax(-1));
    assert_type_error(e, "reduce_max", line, &["bool"]);
    let s = g.placeholder("s", DType::F32, [2, 5, 6]).unwrap();
    let (e, line) = fails!(g.multi_head_attention("attn", s, 4, false));
    assert_type_error(e, "attention", line, &["not divisible by 4 heads"]);
    let (e, line) = fails!(s.mean(&[0], false).and_then(|m| m.mean(&[5], false)));
    assert_type_error(e, "mean", line, &["axis 5"]);
}

#[test]
fn names_are_checked() {
    let g = GraphBuilder::new();
    g.placeholder("x", DType::F32, [1]).unwrap();
    let (e, line) = fails!(g.placeholder("x", DType::F32, [1]));
    match e {
        Error::Name {
            name,
            location,
            reason,
        } => {
            assert_eq!(name, "x");
            assert_eq!(location.line, line);
            assert!(reason.contains("already used"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        g.placeholder("has space", DType::F32, [1]),
        Err(Error::Name { .. })
    ));
    assert!(matches!(
        g.placeholder("", DType::F32, [1]),
        Err(Error::Name { .. })
    ));
    assert!(matches!(
        g.placeholder("__metadata__", DType::F32, [1]),
        Err(Error::Name { .. })
    ));
    let y = g.placeholder("y", DType::F32, [1]).unwrap();
    assert!(matches!(y.named("x"), Err(Error::Name { .. })));
    assert_eq!(y.named("y2").unwrap().name(), "y2");
    let _s = g.scope("block");
    assert_eq!(y.exp().unwrap().name(), "block/exp_0");
}

#[test]
fn tensors_of_another_builder_are_rejected() {
    let g1 = GraphBuilder::new();
    let g2 = GraphBuilder::new();
    let a = g1.placeholder("a", DType::F32, [2]).unwrap();
    let b = g2.placeholder("b", DType::F32, [2]).unwrap();
    let (e, line) = fails!(a.add(b));
    assert_type_error(e, "add", line, &["different graph builder"]);
}

#[test]
fn a_failed_call_leaves_the_graph_unchanged() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2, 3]).unwrap();
    let before = g.graph().len();
    assert!(a.matmul(a).is_err());
    assert!(a.reshape([7]).is_err());
    assert_eq!(g.graph().len(), before);
}

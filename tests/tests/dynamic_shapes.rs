//! Dim expressions and shape values (issue 18): a graph built once with the
//! Rust API runs at several sizes; shapes computed from other tensors'
//! shapes; checks the build could not decide fail at the first run with
//! those sizes, naming the op and the user's line; `.kiln` files keep the
//! expressions; gradients through symbolic reshapes and slices.

use kiln::prelude::*;
use kiln::Error;

fn arr(shape: &[usize], f: impl Fn(usize) -> f32) -> Array {
    let n: usize = shape.iter().product();
    Array::from_vec(shape.to_vec(), (0..n).map(f).collect()).unwrap()
}

fn close(a: &Array, b: &Array, tol: f32) {
    assert_eq!(a.shape(), b.shape());
    for (x, y) in a
        .as_slice::<f32>()
        .unwrap()
        .iter()
        .zip(b.as_slice::<f32>().unwrap())
    {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

/// `[batch, seq, 8] -> [batch*seq, 8] @ w[8, 12] -> [batch, seq, 3, 4]`,
/// the last shape computed from the input's shape value, then
/// `[batch, seq, 12]` again: an attention-style split into heads and back.
fn heads_model() -> Graph {
    let g = GraphBuilder::with_seed(7);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", "seq", 8])
        .unwrap();
    let (b, s) = (x.dim(0), x.dim(1));
    let rows = x.reshape(shape![&b * &s, 8]).unwrap();
    assert_eq!(rows.shape().to_string(), "[batch*seq,8]");
    let w = g
        .constant(arr(&[8, 12], |i| ((i * 7) % 11) as f32 * 0.1 - 0.5))
        .unwrap();
    let y = rows.matmul(w).unwrap();
    // The heads' shape from the input's shape: [batch, seq] ++ [3, 4].
    let lead = g.shape_of(x).unwrap().slice_axis(0, 0, 2, 1).unwrap();
    let tail = g
        .constant(Array::from_vec(vec![2], vec![3i64, 4]).unwrap())
        .unwrap();
    let heads_shape = g.concat(&[lead, tail], 0).unwrap();
    let heads = y.reshape_by(heads_shape).unwrap();
    assert_eq!(heads.shape(), shape!["batch", "seq", 3, 4]);
    // And back, by a computed -1: [batch, seq, -1].
    let back = heads
        .reshape_dims(&[x.dim(0).expr(), x.dim(1).expr(), DimExpr::val(-1)])
        .unwrap()
        .named("y")
        .unwrap();
    assert_eq!(back.shape(), shape!["batch", "seq", 12]);
    g.output(back).unwrap();
    g.into_graph()
}

fn heads_expected(x: &Array) -> Array {
    let (b, s) = (x.shape()[0], x.shape()[1]);
    let xs = x.as_slice::<f32>().unwrap();
    let w: Vec<f32> = (0..96).map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5).collect();
    let mut out = vec![0f32; b * s * 12];
    for r in 0..b * s {
        for j in 0..12 {
            out[r * 12 + j] = (0..8).map(|k| xs[r * 8 + k] * w[k * 12 + j]).sum();
        }
    }
    Array::from_vec(vec![b, s, 12], out).unwrap()
}

#[test]
fn one_graph_runs_at_several_sizes() {
    let graph = heads_model();
    for device in [Device::Reference, Device::Cpu] {
        let sess = Session::new(&graph, device).unwrap();
        let sizes = [(1, 1), (2, 7), (3, 16), (2, 7)];
        for (b, s) in sizes {
            let x = arr(&[b, s, 8], |i| (i % 13) as f32 * 0.25 - 1.0);
            let y = sess.run(&[("x", &x)], &["y"]).unwrap();
            close(&y[0], &heads_expected(&x), 1e-5);
        }
        if device == Device::Cpu {
            // One program per distinct binding; the repeat reuses one.
            assert_eq!(sess.compiled_programs(), 3);
        }
    }
}

#[test]
fn dim_expressions_compare_equal_across_paths() {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", "seq", 6])
        .unwrap();
    let a = x
        .reshape(Shape(vec![x.dim(0) * x.dim(1), Dim::Fixed(6)]))
        .unwrap();
    let b = x.reshape_to(&[-1, 6]).unwrap();
    // `batch*seq` from a product and from a -1 are the same dim: they add.
    let c = a.add(b).unwrap();
    assert_eq!(c.shape().to_string(), "[batch*seq,6]");
    let halves = x
        .reshape_to(&[0, 0, 2, 3])
        .unwrap()
        .reshape_to(&[0, -1])
        .unwrap();
    assert_eq!(halves.shape().to_string(), "[batch,6*seq]");
    let bad = x.reshape(Shape(vec![x.dim(0) * x.dim(1), Dim::Fixed(5)]));
    let msg = bad.unwrap_err().to_string();
    assert!(msg.contains("element counts differ"), "{msg}");
}

#[test]
fn undecidable_checks_fail_at_the_first_run_with_the_users_line() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["n"]).unwrap();
    let b = g.placeholder("b", DType::F32, shape!["m"]).unwrap();
    let line = line!() + 1;
    let c = a.add(b).unwrap().named("c").unwrap();
    g.output(c).unwrap();
    let graph = g.into_graph();
    for device in [Device::Reference, Device::Cpu] {
        let sess = Session::new(&graph, device).unwrap();
        let ok = sess
            .run(
                &[("a", &arr(&[3], |i| i as f32)), ("b", &arr(&[3], |_| 1.0))],
                &["c"],
            )
            .unwrap();
        assert_eq!(ok[0].as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0]);
        // m = 1 broadcasts, as numpy does.
        let one = sess
            .run(
                &[("a", &arr(&[3], |i| i as f32)), ("b", &arr(&[1], |_| 1.0))],
                &["c"],
            )
            .unwrap();
        assert_eq!(one[0].shape(), &[3]);
        let err = sess
            .run(
                &[("a", &arr(&[3], |_| 0.0)), ("b", &arr(&[4], |_| 0.0))],
                &["c"],
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Graph(_)), "{err:?}");
        assert!(msg.contains("add"), "{msg}");
        assert!(msg.contains("n=3") && msg.contains("m=4"), "{msg}");
        assert!(
            msg.contains(&format!("dynamic_shapes.rs:{line}")),
            "names the user's line: {msg}"
        );
    }
}

#[test]
fn a_feed_contradicting_an_expression_is_named() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["seq"]).unwrap();
    let two_seq = Dim::sym("seq") * 2;
    let y = g
        .placeholder("y", DType::F32, Shape(vec![two_seq]))
        .unwrap();
    let z = x
        .reshape(Shape(vec![Dim::sym("seq"), Dim::Fixed(1)]))
        .unwrap()
        .broadcast_to(Shape(vec![Dim::sym("seq"), Dim::Fixed(2)]))
        .unwrap()
        .reshape(Shape(vec![Dim::sym("seq") * 2]))
        .unwrap()
        .add(y)
        .unwrap()
        .named("z")
        .unwrap();
    g.output(z).unwrap();
    let sess = Session::new(&g.into_graph(), Device::Cpu).unwrap();
    let ok = sess
        .run(
            &[("x", &arr(&[2], |i| i as f32)), ("y", &arr(&[4], |_| 1.0))],
            &["z"],
        )
        .unwrap();
    assert_eq!(ok[0].as_slice::<f32>().unwrap(), &[1.0, 1.0, 2.0, 2.0]);
    match sess.run(
        &[("x", &arr(&[2], |_| 0.0)), ("y", &arr(&[5], |_| 0.0))],
        &["z"],
    ) {
        Err(Error::Feed { name, reason }) => {
            assert_eq!(name, "y");
            assert!(reason.contains("2*seq = 4"), "{reason}");
        }
        other => panic!("expected a feed error, got {other:?}"),
    }
}

#[test]
fn a_shape_from_tensor_data_is_an_error_naming_it() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["n", 4]).unwrap();
    let s = g.placeholder("wanted", DType::I64, shape![2]).unwrap();
    let err = x.reshape_by(s).unwrap_err().to_string();
    assert!(
        err.contains("'wanted'") && err.contains("tensor data"),
        "{err}"
    );
}

#[test]
fn expressions_and_shape_values_survive_a_kiln_file() {
    let graph = heads_model();
    let bytes = graph.to_bytes().unwrap();
    let loaded = Graph::from_bytes(&bytes, "heads.kiln").unwrap();
    let header = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).to_string();
    assert!(
        header.contains(r#"\"version\":2"#),
        "expressions need version 2"
    );
    let y = loaded.find("y").unwrap();
    assert_eq!(loaded.node(y).ty.shape, shape!["batch", "seq", 12]);
    let x = arr(&[2, 5, 8], |i| (i % 7) as f32 * 0.5);
    let sess = Session::new(&loaded, Device::Cpu).unwrap();
    close(
        &sess.run(&[("x", &x)], &["y"]).unwrap()[0],
        &heads_expected(&x),
        1e-5,
    );
    // A graph without expressions is still written as version 1.
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::F32, shape!["batch", 3]).unwrap();
    g.output(p.relu().unwrap()).unwrap();
    let plain = g.into_graph().to_bytes().unwrap();
    let text = String::from_utf8_lossy(&plain[..plain.len().min(4096)]).to_string();
    assert!(text.contains(r#"\"version\":1"#), "{text}");
}

#[test]
fn gradients_through_symbolic_reshapes_and_slices() {
    let g = GraphBuilder::with_seed(1);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", "seq", 4])
        .unwrap();
    let w = g
        .variable("w", arr(&[4, 2], |i| i as f32 * 0.1 - 0.3))
        .unwrap();
    let rows = x.reshape_to(&[-1, 4]).unwrap();
    let y = rows.matmul(w).unwrap();
    // Drop the first position of every sequence: x[:, 1:] of [batch, seq, 2].
    let y3 = y
        .reshape_dims(&[x.dim(0).expr(), x.dim(1).expr(), DimExpr::val(2)])
        .unwrap();
    let tail = y3.slice_axis(1, 1, i64::MAX, 1).unwrap();
    assert_eq!(tail.shape().to_string(), "[batch,max(0,seq-1),2]");
    let loss = tail
        .mul(tail)
        .unwrap()
        .sum_all()
        .unwrap()
        .named("loss")
        .unwrap();
    let gx = g.gradients(loss, &[x, w]).unwrap();
    gx[0].named("gx").unwrap();
    gx[1].named("gw").unwrap();
    g.output(loss).unwrap();
    let graph = g.into_graph();
    let wv: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
    for (b, s) in [(1, 1), (2, 3), (3, 5)] {
        let xv = arr(&[b, s, 4], |i| ((i * 5) % 9) as f32 * 0.2 - 0.8);
        // By hand: dL/dy = 2y on positions 1.., 0 on position 0.
        let xs = xv.as_slice::<f32>().unwrap();
        let mut gw_want = vec![0f32; 8];
        let mut gx_want = vec![0f32; b * s * 4];
        for r in 0..b * s {
            if r % s == 0 {
                continue;
            }
            for j in 0..2 {
                let yv: f32 = (0..4).map(|k| xs[r * 4 + k] * wv[k * 2 + j]).sum();
                for k in 0..4 {
                    gw_want[k * 2 + j] += 2.0 * yv * xs[r * 4 + k];
                    gx_want[r * 4 + k] += 2.0 * yv * wv[k * 2 + j];
                }
            }
        }
        for device in [Device::Reference, Device::Cpu] {
            let sess = Session::new(&graph, device).unwrap();
            let out = sess.run(&[("x", &xv)], &["gx", "gw"]).unwrap();
            close(
                &out[0],
                &Array::from_vec(vec![b, s, 4], gx_want.clone()).unwrap(),
                1e-5,
            );
            close(
                &out[1],
                &Array::from_vec(vec![4, 2], gw_want.clone()).unwrap(),
                1e-5,
            );
        }
    }
}

#[test]
fn symbolic_slice_bounds_gather_the_right_rows() {
    // x[:, :seq] of a fixed table, as BERT slices its position ids.
    let g = GraphBuilder::new();
    let ids = g
        .placeholder("ids", DType::I64, shape!["batch", "seq"])
        .unwrap();
    let table = g.constant(arr(&[1, 10], |i| i as f32)).unwrap();
    let pos = table
        .slice_dyn(1, &DimExpr::val(0), &ids.dim(1).expr(), 1)
        .unwrap()
        .named("pos")
        .unwrap();
    assert_eq!(pos.shape().to_string(), "[1,min(10,seq)]");
    // And the last `seq` of them, from a start that is an expression.
    let end = DimExpr::val(10);
    let start = end.sub(&ids.dim(1).expr()).unwrap();
    let last = table
        .slice_dyn(1, &start, &end, 1)
        .unwrap()
        .named("last")
        .unwrap();
    g.output(pos).unwrap();
    g.output(last).unwrap();
    let graph = g.into_graph();
    for device in [Device::Reference, Device::Cpu] {
        let sess = Session::new(&graph, device).unwrap();
        let ids = Array::from_vec(vec![2, 3], vec![0i64; 6]).unwrap();
        let out = sess.run(&[("ids", &ids)], &["pos", "last"]).unwrap();
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[0.0, 1.0, 2.0]);
        assert_eq!(out[1].as_slice::<f32>().unwrap(), &[7.0, 8.0, 9.0]);
    }
}

#[test]
fn control_flow_over_expression_dims() {
    // A loop whose state is [batch*seq, 2], and a cond on it, at two sizes.
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", "seq", 2])
        .unwrap();
    let rows = x.reshape_to(&[-1, 2]).unwrap();
    assert_eq!(rows.shape().to_string(), "[batch*seq,2]");
    let zero = g.scalar(0.0, DType::I64).unwrap();
    let out = g
        .while_loop(
            &[zero, rows],
            &[],
            |g, v| v[0].lt(g.scalar(3.0, DType::I64)?),
            |g, v| Ok(vec![v[0].add(g.scalar(1.0, DType::I64)?)?, v[1].add(v[1])?]),
        )
        .unwrap();
    let doubled = out[1];
    let pred = g.placeholder("flip", DType::Bool, Shape::scalar()).unwrap();
    let r = g
        .cond(
            pred,
            &[doubled],
            |_, v| Ok(vec![v[0].neg()?]),
            |_, v| Ok(vec![v[0]]),
        )
        .unwrap()[0]
        .named("r")
        .unwrap();
    assert_eq!(r.shape().to_string(), "[batch*seq,2]");
    g.output(r).unwrap();
    let graph = g.into_graph();
    for device in [Device::Reference, Device::Cpu] {
        let sess = Session::new(&graph, device).unwrap();
        for (b, s) in [(1, 2), (3, 5)] {
            let xv = arr(&[b, s, 2], |i| i as f32);
            let flip = Array::from_vec(vec![], vec![true]).unwrap();
            let y = sess.run(&[("x", &xv), ("flip", &flip)], &["r"]).unwrap();
            let want = arr(&[b * s, 2], |i| -8.0 * i as f32);
            close(&y[0], &want, 0.0);
        }
    }
}

#[test]
fn a_binding_beyond_the_symbol_bound_is_refused() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    g.output(x.relu().unwrap()).unwrap();
    let graph = g.into_graph();
    let mut b = kiln::graph::Bindings::new();
    b.insert("n".into(), (1usize << 40) + 1);
    let fetch = graph.outputs().to_vec();
    let e = kiln_optimizer::compile(&graph, &fetch, &b, &Default::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("too large") && e.contains("'n'"), "{e}");
}

#[test]
fn an_imported_dynamic_transformer_survives_a_kiln_file() {
    // Shape values and expression dims of a real export (BERT, TorchScript
    // exporter) through `.kiln` bytes: the loaded graph computes the same.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/onnx/transformers/bert-torchscript.onnx"
    );
    let graph = Graph::from_onnx(path).unwrap();
    let bytes = graph.to_bytes().unwrap();
    let loaded = Graph::from_bytes(&bytes, "bert.kiln").unwrap();
    assert_eq!(
        loaded.to_bytes().unwrap(),
        bytes,
        "save, load, save is stable"
    );
    for (b, s) in [(1, 1), (2, 9)] {
        let ids = Array::from_vec(
            vec![b, s],
            (0..b * s).map(|i| (i * 7 % 60) as i64).collect::<Vec<_>>(),
        )
        .unwrap();
        let mask = Array::from_vec(vec![b, s], vec![1i64; b * s]).unwrap();
        let feeds = [("input_ids", &ids), ("attention_mask", &mask)];
        let want = Session::new(&graph, Device::Cpu)
            .unwrap()
            .run_outputs(&feeds)
            .unwrap();
        let got = Session::new(&loaded, Device::Cpu)
            .unwrap()
            .run_outputs(&feeds)
            .unwrap();
        assert_eq!(want, got);
    }
}

#[test]
fn a_session_keeps_a_bounded_number_of_programs() {
    // Served at many sequence lengths, a session keeps the most recently
    // run programs only (`SessionOptions::max_programs`).
    let graph = heads_model();
    let options = SessionOptions {
        max_programs: Some(2),
        ..Default::default()
    };
    let sess = Session::with_options(&graph, Device::Cpu, options).unwrap();
    for s in [1, 2, 3, 4, 2, 1] {
        let x = arr(&[1, s, 8], |i| i as f32 * 0.01);
        let y = sess.run(&[("x", &x)], &["y"]).unwrap();
        close(&y[0], &heads_expected(&x), 1e-5);
        assert!(sess.compiled_programs() <= 2);
    }
    assert_eq!(sess.compiled_programs(), 2);
}

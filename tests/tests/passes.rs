//! Graph passes never change a result: the pipeline, and each pass alone,
//! against the reference interpreter on the unoptimized graph.

use kiln::graph::Op;
use kiln_optimizer::passes::{all_pass_names, default_pipeline};
use kiln_tests::{compare, example_models, feeds_for, run_reference};

#[test]
fn pipeline_preserves_results_on_example_models() {
    for freeze in [false, true] {
        for (name, graph) in example_models() {
            let feeds = feeds_for(&graph, 3, 1);
            let want = run_reference(&graph, &feeds);
            let (opt, reports) = default_pipeline(freeze)
                .verify_always()
                .run(&graph)
                .unwrap();
            let got = run_reference(&opt, &feeds);
            for (w, g) in want.iter().zip(&got) {
                compare(w, g)
                    .unwrap_or_else(|e| panic!("{name} (freeze {freeze}): {e}\n{reports:?}"));
            }
        }
    }
}

#[test]
fn each_pass_alone_preserves_results() {
    for pass in all_pass_names() {
        for (name, graph) in example_models() {
            let feeds = feeds_for(&graph, 2, 9);
            let want = run_reference(&graph, &feeds);
            let mut p = default_pipeline(true);
            p.only(pass).unwrap();
            let (opt, _) = p.verify_always().run(&graph).unwrap();
            for (w, g) in want.iter().zip(&run_reference(&opt, &feeds)) {
                compare(w, g).unwrap_or_else(|e| panic!("{pass} on {name}: {e}"));
            }
        }
    }
}

#[test]
fn batch_norm_folds_into_the_conv_when_frozen() {
    let graph = kiln_tests::cnn_block();
    let (opt, reports) = default_pipeline(true).run(&graph).unwrap();
    let count = |g: &kiln::graph::Graph, pred: &dyn Fn(&Op) -> bool| {
        g.topo_order()
            .into_iter()
            .filter(|&i| pred(&g.node(i).op))
            .count()
    };
    let is_rsqrt = |op: &Op| {
        matches!(
            op,
            Op::Unary {
                f: kiln::graph::UnaryOp::Rsqrt
            }
        )
    };
    assert_eq!(count(&graph, &is_rsqrt), 1);
    assert_eq!(count(&opt, &is_rsqrt), 0, "{opt}");
    assert!(
        reports
            .iter()
            .any(|r| r.pass == "fold_scale_into_contraction" && r.changed()),
        "{reports:?}"
    );
    // What remains after the stem conv: a bias add (zero biases vanish) and the ReLU.
    let image = opt.find("image").unwrap();
    let stem = opt.users(image)[0];
    assert!(matches!(opt.node(stem).op, Op::Conv2d { .. }), "{opt}");
    let users = opt.users(stem);
    assert_eq!(users.len(), 1);
    use kiln::graph::BinaryOp::{Add, Max};
    assert!(
        matches!(opt.node(users[0]).op, Op::Binary { f: Add | Max }),
        "{opt}"
    );
}

#[test]
fn a_zero_scale_is_not_folded_into_the_weights() {
    // (x @ w) * 0 is NaN where x @ w overflows; x @ (w * 0) would be 0.
    use kiln::prelude::*;
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [1, 2]).unwrap();
    let w = g
        .constant(Array::from_vec(vec![2, 2], vec![1e30f32, 1.0, 1e30, 1.0]).unwrap())
        .unwrap();
    let k = g
        .constant(Array::from_vec(vec![2], vec![0.0f32, 2.0]).unwrap())
        .unwrap();
    g.output(x.matmul(w).unwrap().mul(k).unwrap()).unwrap();
    let graph = g.into_graph();
    let feed = Array::from_vec(vec![1, 2], vec![1e10f32, 1e10]).unwrap();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&graph, device).unwrap();
        let y = s.run_outputs(&[("x", &feed)]).unwrap().remove(0).1;
        let y = y.to_f64_vec();
        assert!(y[0].is_nan() && y[1] == 4e10, "{device:?}: {y:?}");
    }
}

#[test]
fn constants_that_would_overflow_together_are_not_reassociated() {
    // (x * 3e38) * 1e10 is finite for a small x, but folding the two
    // constants first would give x * inf (and 0 * inf = NaN); a batch norm
    // with a huge scale, (x - mean) * rsqrt(var + eps) * scale, is the
    // case the ONNX fuzzer found.
    use kiln::prelude::*;
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    let y = x.mul(3e38).unwrap().mul(1e10).unwrap();
    let z = x.mul(1e-10).unwrap().mul(3e38).unwrap().mul(3e38).unwrap();
    g.output(y).unwrap();
    g.output(z).unwrap();
    let graph = g.into_graph();
    let feed = Array::from_vec(vec![2], vec![1e-20f32, 0.0]).unwrap();
    let mut want = None;
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&graph, device).unwrap();
        let outs: Vec<Vec<f64>> = s
            .run_outputs(&[("x", &feed)])
            .unwrap()
            .into_iter()
            .map(|(_, a)| a.to_f64_vec())
            .collect();
        // 1e-20 * 3e38 * 1e10 = 3e28; 1e-20 * 1e-10 * 3e38 * 3e38 = 9e46
        // overflows only at the last step; 0 stays 0 (not 0 * inf = NaN).
        assert!(
            (outs[0][0] / 3e28 - 1.0).abs() < 1e-6,
            "{device:?}: {outs:?}"
        );
        assert_eq!(outs[0][1], 0.0, "{device:?}: {outs:?}");
        assert_eq!(outs[1][1], 0.0, "{device:?}: {outs:?}");
        match &want {
            None => want = Some(outs),
            Some(w) => assert_eq!(&outs, w, "{device:?} differs from the reference"),
        }
    }
}

/// Constant folding grows constants only for costly functions: a rotary
/// table (`cos` of positions times frequencies) is computed once, while a
/// broadcast that nothing costly reads stays a view.
#[test]
fn a_costly_function_of_grown_constants_is_folded() {
    use kiln::prelude::*;
    use kiln_optimizer::passes::FoldConstants;
    use kiln_optimizer::Pass;
    let g = GraphBuilder::new();
    let pos = Array::from_vec(
        vec![1, 48, 1],
        (0..48).map(|i| i as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    let freq = Array::from_vec(
        vec![8],
        (0..8).map(|i| 1.0 / (i + 1) as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    let angles = g
        .constant(pos)
        .unwrap()
        .mul(g.constant(freq).unwrap())
        .unwrap();
    let table = g
        .concat(&[angles, angles], 2)
        .unwrap()
        .cos()
        .unwrap()
        .named("table")
        .unwrap();
    let wide = g
        .scalar(2.0, DType::F32)
        .unwrap()
        .broadcast_to([64, 64])
        .unwrap()
        .named("wide")
        .unwrap();
    g.output(table).unwrap();
    g.output(wide).unwrap();
    let graph = g.into_graph();
    let (folded, _) = FoldConstants::default().run(&graph).unwrap();
    let t = folded.find("table").unwrap();
    assert!(
        matches!(folded.node(t).op, Op::Constant { .. }),
        "{}",
        folded.node(t).op.name()
    );
    let w = folded.find("wide").unwrap();
    assert!(
        matches!(folded.node(w).op, Op::Broadcast { .. }),
        "{}",
        folded.node(w).op.name()
    );
    // Same values as the reference computes.
    let want = run_reference(&graph, &[]);
    let got = run_reference(&folded, &[]);
    for (w, g) in want.iter().zip(&got) {
        compare(w, g).unwrap();
    }
}

/// `x ^ 2` and `x ^ 3` become products (GELU's tanh form cubes its input;
/// pow has no vector code): no pow is left in the kernel program, and the
/// results keep pow's meaning at signed zeros, infinities and NaN, and
/// within two ulps elsewhere.
#[test]
fn small_integer_powers_become_products() {
    use kiln::prelude::*;
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [8]).unwrap();
    let two = g.scalar(2.0, DType::F32).unwrap();
    let three = g.scalar(3.0, DType::F32).unwrap();
    g.output(x.pow(two).unwrap()).unwrap();
    g.output(x.pow(three).unwrap()).unwrap();
    let graph = g.into_graph();
    let compiled = kiln_optimizer::compile::compile(
        &graph,
        graph.outputs(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    let text = format!("{}", compiled.program);
    assert!(!text.contains("= pow "), "{text}");
    let xs = [
        -0.0f32,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.7,
        -2.3e12,
        3e-15,
    ];
    let feed = Array::from_vec(vec![8], xs.to_vec()).unwrap();
    let s = Session::new(&graph, Device::Cpu).unwrap();
    let outs = s.run_outputs(&[("x", &feed)]).unwrap();
    for ((_, got), p) in outs.iter().zip([2, 3]) {
        for (&v, &x) in got.as_slice::<f32>().unwrap().iter().zip(&xs) {
            let want = x.powi(p);
            let same = v.to_bits() == want.to_bits()
                || (v.is_nan() && want.is_nan())
                || (v - want).abs() <= 2.0 * f32::EPSILON * want.abs();
            assert!(same, "{x} ^ {p}: {v}, pow gives {want}");
        }
    }
}

/// A squeeze-and-excitation gate: the sigmoid of one value per channel,
/// scaling a whole image, is computed once per channel (in its own
/// kernel), not once per pixel of the product it feeds; a layer norm's
/// reciprocal square root, computed from its reduction, stays in the
/// reduction's row map. Both still match the reference.
#[test]
fn costly_values_are_not_recomputed_per_broadcast_element() {
    use kiln::prelude::*;
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [1, 8, 10, 10]).unwrap();
    let s = g.placeholder("s", DType::F32, [1, 8, 1, 1]).unwrap();
    let gate = s.sigmoid().unwrap();
    g.output(x.mul(gate).unwrap()).unwrap();
    let h = g.placeholder("h", DType::F32, [6, 32]).unwrap();
    let mean = h.mean(&[1], true).unwrap();
    let centered = h.sub(mean).unwrap();
    let var = centered.mul(centered).unwrap().mean(&[1], true).unwrap();
    let eps = g.scalar(1e-5, DType::F32).unwrap();
    let inv = var.add(eps).unwrap().rsqrt().unwrap();
    g.output(centered.mul(inv).unwrap()).unwrap();
    let graph = g.into_graph();
    let compiled = kiln_optimizer::compile::compile(
        &graph,
        graph.outputs(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    let text = format!("{}", compiled.program);
    // The kernel over the image reads the gate and multiplies: no sigmoid.
    let image = text
        .split("\n  k")
        .find(|k| k.contains("loop [8, 100]") || k.contains("loop [800]"))
        .unwrap_or_else(|| panic!("no kernel over the image:\n{text}"));
    assert!(!image.contains("sigmoid"), "{text}");
    assert!(text.contains("sigmoid"), "{text}");
    // The layer norm's rsqrt is in a row map (a reduction's kernel).
    let rsqrt = text
        .split("\n  k")
        .find(|k| k.contains("rsqrt"))
        .unwrap_or_else(|| panic!("no rsqrt:\n{text}"));
    assert!(rsqrt.contains("map:"), "{text}");
    let feeds = kiln_tests::feeds_for(&graph, 1, 7);
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let run = |d| Session::new(&graph, d).unwrap().run_outputs(&refs).unwrap();
    for ((_, w), (_, g)) in run(Device::Reference).iter().zip(&run(Device::Cpu)) {
        kiln_tests::compare(w, g).unwrap();
    }
}

/// Large constants merge when their data is the same and stay apart when
/// it differs anywhere, also between the bytes the pass's key samples.
#[test]
fn common_subexpressions_compare_whole_constants() {
    use kiln::prelude::*;
    use kiln_optimizer::pass::Pass;
    use kiln_optimizer::passes::EliminateCommonSubexpressions;
    let n = 10_007;
    let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut other = data.clone();
    // An element no sample reads: not in the first or last KiB, and off
    // the stride of the spread sample (bytes / 2048 apart).
    let step = n * 4 / 2048;
    let e = (0..n)
        .find(|&e| e * 4 > 1024 && (e * 4..e * 4 + 4).all(|b| b % step != 0))
        .unwrap();
    other[e] += 1.0;
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [n]).unwrap();
    let a = g
        .constant(Array::from_vec(vec![n], data.clone()).unwrap())
        .unwrap();
    let b = g.constant(Array::from_vec(vec![n], data).unwrap()).unwrap();
    let c = g
        .constant(Array::from_vec(vec![n], other).unwrap())
        .unwrap();
    let y = x.add(a).unwrap().add(b).unwrap().add(c).unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let (out, report) = EliminateCommonSubexpressions.run(&graph).unwrap();
    let constants = out
        .topo_order()
        .into_iter()
        .filter(|&id| matches!(out.node(id).op, Op::Constant { .. }))
        .count();
    assert_eq!(constants, 2, "a and b merged, c kept: {report:?}");
}

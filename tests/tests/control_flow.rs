//! Control flow in the graph: `cond` runs only the chosen branch, `while_loop`
//! iterates a body over loop variables; both are checked when built, run on
//! every device and survive the file format.

use kiln::prelude::*;

fn f32s(shape: &[usize], v: Vec<f32>) -> Array {
    Array::from_vec(shape.to_vec(), v).unwrap()
}

fn run(graph: &Graph, device: Device, feeds: &[(&str, &Array)], fetch: &[&str]) -> Vec<Array> {
    let s = Session::new(graph, device).unwrap();
    s.run(feeds, fetch)
        .unwrap_or_else(|e| panic!("{device}: {e}"))
}

/// `p ? x * 2 + y : gather(x, [5]) - y`: the else branch fails if it runs.
fn cond_graph() -> Graph {
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::Bool, shape![]).unwrap();
    let x = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    let y = g.placeholder("y", DType::F32, shape!["n"]).unwrap();
    let out = g
        .cond(
            p,
            &[x, y],
            |_, a| Ok(vec![a[0].mul(2.0)?.add(a[1])?]),
            |b, a| {
                let idx = b.constant(Array::from_vec(vec![1], vec![5i64]).unwrap())?;
                Ok(vec![a[0]
                    .gather(idx, 0)?
                    .broadcast_to(a[1].shape())?
                    .sub(a[1])?])
            },
        )
        .unwrap();
    out[0].named("out").unwrap();
    g.into_graph()
}

#[test]
fn cond_runs_only_the_chosen_branch() {
    let graph = cond_graph();
    let x = f32s(&[3], vec![1.0, 2.0, 3.0]);
    let y = f32s(&[3], vec![10.0, 20.0, 30.0]);
    for device in [Device::Reference, Device::Cpu] {
        let t = Array::scalar(true);
        let out = run(&graph, device, &[("p", &t), ("x", &x), ("y", &y)], &["out"]);
        assert_eq!(
            out[0].as_slice::<f32>().unwrap(),
            &[12.0, 24.0, 36.0],
            "{device}"
        );
        let f = Array::scalar(false);
        let s = Session::new(&graph, device).unwrap();
        let e = s
            .run(&[("p", &f), ("x", &x), ("y", &y)], &["out"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 5 is out of range"), "{device}: {e}");
    }
}

/// Sum of 1..=n with a counter and an accumulator, and an RNN over a sequence.
#[test]
fn while_loop_iterates() {
    let g = GraphBuilder::new();
    let n = g.placeholder("n", DType::I64, shape![]).unwrap();
    let zero = g.scalar(0.0, DType::I64).unwrap();
    let r = g
        .while_loop(
            &[zero, zero],
            &[n],
            |_, v| v[0].lt(v[2]),
            |_, v| Ok(vec![v[0].add(1i64)?, v[1].add(v[0].add(1i64)?)?]),
        )
        .unwrap();
    r[1].named("sum").unwrap();
    // h_{t+1} = tanh(h_t @ w + x_t) over the rows of a [T, batch, d] sequence.
    let xs = g
        .placeholder("xs", DType::F32, shape![4, "batch", 3])
        .unwrap();
    let w = g
        .variable(
            "w",
            f32s(
                &[3, 3],
                vec![0.5, -0.2, 0.1, 0.3, 0.4, -0.5, -0.1, 0.2, 0.6],
            ),
        )
        .unwrap();
    let h0 = g
        .scalar(0.0, DType::F32)
        .unwrap()
        .broadcast_to(shape!["batch", 3])
        .unwrap();
    let t0 = g.scalar(0.0, DType::I64).unwrap();
    let rnn = g
        .while_loop(
            &[t0, h0],
            &[xs, w],
            |_, v| v[0].lt(4i64),
            |_, v| {
                let xt = v[2].gather(v[0].reshape([1])?, 0)?.squeeze(0)?;
                Ok(vec![v[0].add(1i64)?, v[1].matmul(v[3])?.add(xt)?.tanh()?])
            },
        )
        .unwrap();
    rnn[1].named("h").unwrap();
    // The same recurrence unrolled.
    let mut h = h0;
    for t in 0..4 {
        h = h
            .matmul(w)
            .unwrap()
            .add(xs.slice_axis(0, t, t + 1, 1).unwrap().squeeze(0).unwrap())
            .unwrap()
            .tanh()
            .unwrap();
    }
    h.named("h_unrolled").unwrap();
    let graph = g.into_graph();
    let seq = f32s(
        &[4, 2, 3],
        (0..24).map(|i| (i as f32 * 0.3).sin()).collect(),
    );
    let nv = Array::scalar(10i64);
    for device in [Device::Reference, Device::Cpu] {
        let out = run(
            &graph,
            device,
            &[("n", &nv), ("xs", &seq)],
            &["sum", "h", "h_unrolled"],
        );
        assert_eq!(out[0].as_slice::<i64>().unwrap(), &[55], "{device}");
        kiln_tests::compare(&out[2], &out[1]).unwrap_or_else(|e| panic!("{device}: {e}"));
    }
    // A loop that never runs returns its initial values.
    let zero_n = Array::scalar(0i64);
    assert_eq!(
        run(&graph, Device::Cpu, &[("n", &zero_n)], &["sum"])[0]
            .as_slice::<i64>()
            .unwrap(),
        &[0]
    );
}

#[test]
fn signatures_are_checked_when_built() {
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::Bool, shape![]).unwrap();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    // The error points at the `.cond(` call two lines below.
    let line = line!() + 2;
    let e = g
        .cond(
            p,
            &[x],
            |_, a| Ok(vec![a[0]]),
            |_, a| Ok(vec![a[0].reshape([1, 2])?]),
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("cond")
            && msg.contains("branches' results differ")
            && msg.contains(&format!("{}:{line}", file!())),
        "{msg}"
    );
    let e = g
        .while_loop(
            &[x],
            &[],
            |_, v| v[0].sum_all()?.gt(0.0),
            |_, v| Ok(vec![v[0].cast(DType::F64)?]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("must keep their types"), "{e}");
    let e = g
        .while_loop(&[x], &[], |_, v| v[0].sum_all(), |_, v| Ok(vec![v[0]]))
        .unwrap_err();
    assert!(e.to_string().contains("one bool scalar"), "{e}");
    // Returning an outer tensor from a branch does not compile: each branch
    // builds its own graph from the arguments it is given.
    let e = g
        .cond(
            x.sum_all().unwrap(),
            &[x],
            |_, a| Ok(vec![a[0]]),
            |_, a| Ok(vec![a[0]]),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("predicate must be a bool scalar"),
        "{e}"
    );
}

#[test]
fn control_flow_survives_the_file_format() {
    let graph = cond_graph();
    let bytes = graph.to_bytes().unwrap();
    let loaded = Graph::from_bytes(&bytes, "cf.kiln").unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
    // The listing (`kiln show`) includes both branches.
    let text = loaded.to_string();
    assert!(
        text.contains("function 0(arg0: f32[n], arg1: f32[n]) -> (add_0):")
            && text.contains("function 1(arg0: f32[n], arg1: f32[n]) -> (sub_0):"),
        "{text}"
    );
    let x = f32s(&[2], vec![1.0, 2.0]);
    let t = Array::scalar(true);
    let out = run(
        &loaded,
        Device::Cpu,
        &[("p", &t), ("x", &x), ("y", &x)],
        &["out"],
    );
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[3.0, 6.0]);
}

/// A trained RNN (a while loop, its gradient loop and the nested functions
/// they call) saves and loads with its weights, and predicts the same.
#[test]
fn trained_rnn_survives_the_file_format() {
    let g = GraphBuilder::with_seed(3);
    let xs = g
        .placeholder("xs", DType::F32, shape![5, "batch", 3])
        .unwrap();
    let h = g.simple_rnn("rnn", xs, 4, Activation::Tanh).unwrap();
    let loss = h.mul(h).unwrap().sum_all().unwrap().named("loss").unwrap();
    h.named("h").unwrap();
    g.minimize(loss, kiln::graph::Optimizer::sgd(0.1))
        .unwrap()
        .named("train")
        .unwrap();
    let seq = f32s(
        &[5, 2, 3],
        (0..30).map(|i| (i as f32 * 0.7).cos()).collect(),
    );
    let s = Session::new(&g.into_graph(), Device::Cpu).unwrap();
    let before = s.run(&[("xs", &seq)], &["loss"]).unwrap()[0].clone();
    for _ in 0..3 {
        s.run(&[("xs", &seq)], &["train"]).unwrap();
    }
    let want = s.run(&[("xs", &seq)], &["h", "loss"]).unwrap();
    assert!(
        want[1].as_slice::<f32>().unwrap()[0] < before.as_slice::<f32>().unwrap()[0],
        "training lowers the loss"
    );
    let bytes = s.export_graph().unwrap().to_bytes().unwrap();
    let loaded = Graph::from_bytes(&bytes, "rnn.kiln").unwrap();
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
    for device in [Device::Reference, Device::Cpu] {
        let got = run(&loaded, device, &[("xs", &seq)], &["h", "loss"]);
        for (w, o) in want.iter().zip(&got) {
            kiln_tests::compare(w, o).unwrap_or_else(|e| panic!("{device}: {e}"));
        }
    }
}

/// Functions may return their parameters, the same value twice, or
/// constants; the CPU backend compiles them like whole graphs.
#[test]
fn functions_return_parameters_duplicates_and_constants() {
    let g = GraphBuilder::new();
    let p = g.placeholder("p", DType::Bool, shape![]).unwrap();
    let x = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    let y = g.placeholder("y", DType::F32, shape!["n"]).unwrap();
    let r = g
        .cond(
            p,
            &[x, y],
            |_, a| Ok(vec![a[0], a[0], a[1].neg()?]),
            |b, a| {
                let c = b.scalar(7.0, DType::F32)?.broadcast_to(a[0].shape())?;
                Ok(vec![a[1], c, a[0]])
            },
        )
        .unwrap();
    for (i, t) in r.iter().enumerate() {
        t.named(&format!("r{i}")).unwrap();
    }
    let graph = g.into_graph();
    let x = f32s(&[2], vec![1.0, 2.0]);
    let y = f32s(&[2], vec![3.0, 4.0]);
    for device in [Device::Reference, Device::Cpu] {
        for (pv, want) in [
            (true, [[1.0, 2.0], [1.0, 2.0], [-3.0, -4.0]]),
            (false, [[3.0, 4.0], [7.0, 7.0], [1.0, 2.0]]),
        ] {
            let pa = Array::scalar(pv);
            let out = run(
                &graph,
                device,
                &[("p", &pa), ("x", &x), ("y", &y)],
                &["r0", "r1", "r2"],
            );
            for (o, w) in out.iter().zip(want) {
                assert_eq!(o.as_slice::<f32>().unwrap(), &w, "{device} p={pv}");
            }
        }
    }
}

/// `while_loop_at_most` stops at its bound or at its condition, whichever
/// comes first, on both devices and after a trip through the file format.
#[test]
fn bounded_loops_stop_at_the_bound_or_the_condition() {
    let g = GraphBuilder::new();
    let limit = g.placeholder("limit", DType::I64, shape![]).unwrap();
    let zero = g.scalar(0.0, DType::I64).unwrap();
    let forever = g
        .while_loop_at_most(
            5,
            &[zero],
            &[],
            |b, _| b.constant(Array::scalar(true)),
            |_, v| Ok(vec![v[0].add(1i64)?]),
        )
        .unwrap();
    forever[0].named("forever").unwrap();
    let early = g
        .while_loop_at_most(
            100,
            &[zero],
            &[limit],
            |_, v| v[0].lt(v[1]),
            |_, v| Ok(vec![v[0].add(1i64)?]),
        )
        .unwrap();
    early[0].named("early").unwrap();
    let graph = g.into_graph();
    let loaded = Graph::from_bytes(&graph.to_bytes().unwrap(), "bounded.kiln").unwrap();
    assert!(loaded.to_string().contains("max_iterations=5"), "{loaded}");
    for device in [Device::Reference, Device::Cpu] {
        for (lim, want_early) in [(3i64, 3i64), (1000, 100)] {
            let l = Array::scalar(lim);
            let out = run(&loaded, device, &[("limit", &l)], &["forever", "early"]);
            assert_eq!(out[0].as_slice::<i64>().unwrap(), &[5], "{device}");
            assert_eq!(out[1].as_slice::<i64>().unwrap(), &[want_early], "{device}");
        }
    }
}

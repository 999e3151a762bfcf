//! Session behaviour: feed validation, symbolic dims, fetch-driven
//! execution, variables and assignment.

use kiln::prelude::*;
use kiln::Error;

fn arr(shape: &[usize], v: Vec<f32>) -> Array {
    Array::from_vec(shape.to_vec(), v).unwrap()
}

fn mlp() -> Graph {
    let g = GraphBuilder::with_seed(3);
    let x = g.placeholder("x", DType::F32, shape!["batch", 4]).unwrap();
    let h = g.dense("fc1", x, 5, Activation::Relu).unwrap();
    let y = g
        .linear("fc2", h, 3)
        .unwrap()
        .softmax(-1)
        .unwrap()
        .named("probs")
        .unwrap();
    g.output(y).unwrap();
    g.into_graph()
}

fn feed_error(r: kiln::Result<Vec<Array>>) -> (String, String) {
    match r {
        Err(Error::Feed { name, reason }) => (name, reason),
        other => panic!("expected a feed error, got {other:?}"),
    }
}

#[test]
fn symbolic_batch_binds_per_run() {
    let s = Session::new(&mlp(), Device::Reference).unwrap();
    for batch in [1, 3, 8] {
        let x = arr(
            &[batch, 4],
            (0..batch * 4).map(|i| i as f32 * 0.1).collect(),
        );
        let out = s.run(&[("x", &x)], &["probs"]).unwrap();
        assert_eq!(out[0].shape(), &[batch, 3]);
        for row in out[0].as_slice::<f32>().unwrap().chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
    let zero = arr(&[0, 4], vec![]);
    assert_eq!(
        s.run(&[("x", &zero)], &["probs"]).unwrap()[0].shape(),
        &[0, 3]
    );
}

#[test]
fn wrong_dtype_rank_and_dims_are_named() {
    let s = Session::new(&mlp(), Device::Reference).unwrap();
    let xi = Array::from_vec(vec![2, 4], vec![1i64; 8]).unwrap();
    let (name, reason) = feed_error(s.run(&[("x", &xi)], &["probs"]));
    assert_eq!(name, "x");
    assert!(
        reason.contains("expected f32[batch,4], got i64[2, 4]"),
        "{reason}"
    );
    let (_, reason) = feed_error(s.run(&[("x", &arr(&[8], vec![0.0; 8]))], &["probs"]));
    assert!(reason.contains("expected rank 2"), "{reason}");
    let (_, reason) = feed_error(s.run(&[("x", &arr(&[2, 5], vec![0.0; 10]))], &["probs"]));
    assert!(reason.contains("dim 1 must be 4"), "{reason}");
}

#[test]
fn symbolic_dims_must_agree_across_feeds() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, shape!["n", 2]).unwrap();
    let b = g.placeholder("b", DType::F32, shape!["n", 2]).unwrap();
    a.add(b).unwrap().named("sum").unwrap();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let a3 = arr(&[3, 2], vec![1.0; 6]);
    let b2 = arr(&[2, 2], vec![1.0; 4]);
    let (name, reason) = feed_error(s.run(&[("a", &a3), ("b", &b2)], &["sum"]));
    assert_eq!(name, "b");
    assert!(
        reason.contains("binds 'n' to 2, but feed 'a' bound it to 3"),
        "{reason}"
    );
    let b3 = arr(&[3, 2], vec![2.0; 6]);
    let out = s.run(&[("a", &a3), ("b", &b3)], &["sum"]).unwrap();
    assert_eq!(out[0].as_slice::<f32>().unwrap(), &[3.0; 6]);
}

#[test]
fn missing_unknown_duplicate_and_non_placeholder_feeds() {
    let s = Session::new(&mlp(), Device::Reference).unwrap();
    let x = arr(&[1, 4], vec![0.0; 4]);
    let (name, reason) = feed_error(s.run(&[], &["probs"]));
    assert_eq!(name, "x");
    assert!(
        reason.contains("needed by fetch 'probs' but was not fed"),
        "{reason}"
    );
    let (name, reason) = feed_error(s.run(&[("x", &x), ("y", &x)], &["probs"]));
    assert_eq!(name, "y");
    assert!(reason.contains("no node"), "{reason}");
    let (_, reason) = feed_error(s.run(&[("x", &x), ("x", &x)], &["probs"]));
    assert!(reason.contains("more than once"), "{reason}");
    let (name, reason) = feed_error(s.run(&[("fc1/weight", &x)], &["probs"]));
    assert_eq!(name, "fc1/weight");
    assert!(reason.contains("variable node, not an input"), "{reason}");
    match s.run(&[("x", &x)], &["nope"]) {
        Err(Error::Fetch { name, .. }) => assert_eq!(name, "nope"),
        other => panic!("{other:?}"),
    }
    assert!(s.run(&[("x", &x)], &[]).unwrap().is_empty());
}

#[test]
fn only_what_the_fetches_need_runs() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::F32, [2]).unwrap();
    let other = g.placeholder("other", DType::F32, [2]).unwrap();
    a.mul(2.0).unwrap().named("double").unwrap();
    // A branch that would fail if evaluated: an out-of-range gather.
    let idx = g
        .constant(Array::from_vec(vec![1], vec![7i64]).unwrap())
        .unwrap();
    other.gather(idx, 0).unwrap().named("bad").unwrap();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let av = arr(&[2], vec![1.0, 2.0]);
    assert_eq!(
        s.run(&[("a", &av)], &["double"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[2.0, 4.0]
    );
    match s.run(&[("other", &av)], &["bad"]) {
        Err(Error::Graph(kiln::graph::Error::Eval { node, reason, .. })) => {
            assert_eq!(node, "bad");
            assert!(reason.contains("index 7 is out of range"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn variables_persist_and_assign_commits_at_end_of_run() {
    let g = GraphBuilder::new();
    let v = g.variable("counter", Array::scalar(0.0f32)).unwrap();
    let next = v.add(1.0).unwrap();
    v.assign(next).unwrap().named("step").unwrap();
    // Reads in the same run see the value at the start of the run.
    v.mul(10.0).unwrap().named("read_times_10").unwrap();
    let graph = g.into_graph();
    let s = Session::new(&graph, Device::Reference).unwrap();
    assert_eq!(
        s.variable("counter").unwrap().as_slice::<f32>().unwrap(),
        &[0.0]
    );
    for i in 1..=3 {
        let out = s.run(&[], &["step", "read_times_10"]).unwrap();
        assert_eq!(out[0].as_slice::<f32>().unwrap(), &[i as f32]);
        assert_eq!(out[1].as_slice::<f32>().unwrap(), &[(i - 1) as f32 * 10.0]);
    }
    assert_eq!(
        s.variable("counter").unwrap().as_slice::<f32>().unwrap(),
        &[3.0]
    );
    // Not fetching the assign does not run it.
    s.run(&[], &["read_times_10"]).unwrap();
    assert_eq!(
        s.variable("counter").unwrap().as_slice::<f32>().unwrap(),
        &[3.0]
    );
    // A fresh session starts from the initializer again.
    let fresh = Session::new(&graph, Device::Reference).unwrap();
    assert_eq!(
        fresh.run(&[], &["step"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[1.0]
    );
    // The exported graph carries the trained value.
    let exported = s.export_graph().unwrap();
    let again = Session::new(&exported, Device::Reference).unwrap();
    assert_eq!(
        again
            .variable("counter")
            .unwrap()
            .as_slice::<f32>()
            .unwrap(),
        &[3.0]
    );
    assert_eq!(
        again.run(&[], &["step"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[4.0]
    );
}

#[test]
fn two_assignments_to_one_variable_in_a_run_are_an_error() {
    let g = GraphBuilder::new();
    let v = g.variable("v", Array::scalar(1.0f32)).unwrap();
    v.assign(v.add(1.0).unwrap()).unwrap().named("a1").unwrap();
    v.assign(v.add(2.0).unwrap()).unwrap().named("a2").unwrap();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let e = s.run(&[], &["a1", "a2"]).unwrap_err().to_string();
    assert!(e.contains("'v' is assigned more than once"), "{e}");
    assert_eq!(
        s.variable("v").unwrap().as_slice::<f32>().unwrap(),
        &[1.0],
        "a failed run changes nothing"
    );
}

#[test]
fn set_variable_checks_its_type() {
    let mut s = Session::new(&mlp(), Device::Reference).unwrap();
    let e = s
        .set_variable("fc1/weight", arr(&[3, 3], vec![0.0; 9]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected f32[4,5]"), "{e}");
    assert!(s
        .set_variable("probs", arr(&[1], vec![0.0]))
        .unwrap_err()
        .to_string()
        .contains("not a variable"));
    s.set_variable("fc1/weight", arr(&[4, 5], vec![0.0; 20]))
        .unwrap();
    // With zero first-layer weights and zero biases, every class is equally likely.
    let out = s
        .run(&[("x", &arr(&[1, 4], vec![1.0; 4]))], &["probs"])
        .unwrap();
    for p in out[0].as_slice::<f32>().unwrap() {
        assert!((p - 1.0 / 3.0).abs() < 1e-6);
    }
}

#[test]
fn a_session_is_isolated_from_later_builder_changes() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    x.exp().unwrap().named("y").unwrap();
    let s = Session::new(&g.graph(), Device::Reference).unwrap();
    x.neg().unwrap().named("z").unwrap();
    let xv = arr(&[2], vec![0.0, 1.0]);
    assert!(s.run(&[("x", &xv)], &["y"]).is_ok());
    assert!(matches!(
        s.run(&[("x", &xv)], &["z"]),
        Err(Error::Fetch { .. })
    ));
}

#[test]
fn unbound_symbolic_dims_are_reported() {
    let g = GraphBuilder::new();
    g.iota(DType::I64, shape!["n"], 0)
        .unwrap()
        .named("ramp")
        .unwrap();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let e = s.run(&[], &["ramp"]).unwrap_err().to_string();
    assert!(
        e.contains("ramp") && e.contains("'n'") && e.contains("not bound"),
        "{e}"
    );
}

#[test]
fn run_outputs_uses_declared_outputs() {
    let s = Session::new(&mlp(), Device::Reference).unwrap();
    let out = s
        .run_outputs(&[("x", &arr(&[2, 4], vec![0.5; 8]))])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "probs");
    assert_eq!(out[0].1.shape(), &[2, 3]);
}

#[test]
fn nan_and_inf_inputs_propagate_without_errors() {
    let s = Session::new(&mlp(), Device::Reference).unwrap();
    let x = arr(
        &[2, 4],
        vec![f32::NAN, 0.0, 0.0, 0.0, f32::INFINITY, 0.0, 0.0, 0.0],
    );
    let out = s.run(&[("x", &x)], &["probs"]).unwrap();
    assert!(out[0].as_slice::<f32>().unwrap()[..3]
        .iter()
        .all(|p| p.is_nan()));
}

#[test]
fn argmax_over_an_axis_bound_to_zero_is_an_error_on_every_device() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![2, "n"]).unwrap();
    x.argmax(1, false).unwrap().named("best").unwrap();
    let graph = g.into_graph();
    let empty = Array::from_vec(vec![2, 0], Vec::<f32>::new()).unwrap();
    for device in [Device::Reference, Device::Cpu] {
        let s = Session::new(&graph, device).unwrap();
        let e = s.run(&[("x", &empty)], &["best"]).unwrap_err().to_string();
        assert!(e.contains("best") && e.contains("empty"), "{device}: {e}");
    }
}

#[test]
fn device_tensors_need_a_cuda_session() {
    let s = Session::new(&mlp(), Device::Cpu).unwrap();
    let err = s.to_device(&arr(&[1, 4], vec![0.0; 4])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("to_device needs a CUDA session") && msg.contains("cpu"),
        "{msg}"
    );
}

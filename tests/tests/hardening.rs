//! Resource limits and determinism.
//!
//! - `SessionOptions::max_arena_bytes`: a program whose planned arena is
//!   over the limit is an `Error::Resource` naming both sizes — at session
//!   creation for a graph of static shapes, at the first run of a shape
//!   otherwise — and a limit it fits runs normally.
//! - The same inputs give bit-identical outputs run after run, and in a
//!   fresh session, for each device and thread count (the split tuner
//!   changes how kernels are split between runs, never what they compute).

use kiln::prelude::*;

fn big_temporaries(batch: kiln::graph::Dim) -> Graph {
    let g = GraphBuilder::with_seed(2);
    let x = g
        .placeholder("x", DType::F32, kiln::graph::Shape(vec![batch, 256.into()]))
        .unwrap();
    // Two 256 KiB temporaries per row of the batch, live at once.
    let a = x
        .exp()
        .unwrap()
        .matmul(g.full(0.5, DType::F32, &[256, 256]).unwrap())
        .unwrap();
    let b = x
        .tanh()
        .unwrap()
        .matmul(g.full(0.25, DType::F32, &[256, 256]).unwrap())
        .unwrap();
    g.output(
        a.mul(b)
            .unwrap()
            .sum(&[1], false)
            .unwrap()
            .named("y")
            .unwrap(),
    )
    .unwrap();
    g.into_graph()
}

#[test]
fn an_arena_over_the_limit_is_refused_at_session_creation() {
    let graph = big_temporaries(64.into());
    let opts = SessionOptions {
        max_arena_bytes: Some(1024),
        ..Default::default()
    };
    let err = Session::with_options(&graph, Device::Cpu, opts)
        .err()
        .expect("over the limit");
    assert!(
        matches!(err, kiln::Error::Resource { limit: 1024, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("arena") && msg.contains("1024"), "{msg}");
    // A limit the program fits: runs.
    let opts = SessionOptions {
        max_arena_bytes: Some(64 << 20),
        ..Default::default()
    };
    let s = Session::with_options(&graph, Device::Cpu, opts).unwrap();
    let x = Array::from_vec(vec![64, 256], vec![0.01f32; 64 * 256]).unwrap();
    assert_eq!(s.run(&[("x", &x)], &["y"]).unwrap()[0].shape(), &[64]);
}

#[test]
fn an_arena_over_the_limit_with_symbolic_dims_is_refused_at_the_first_run() {
    let graph = big_temporaries("batch".into());
    let opts = SessionOptions {
        max_arena_bytes: Some(200 << 10),
        ..Default::default()
    };
    let s = Session::with_options(&graph, Device::Cpu, opts).unwrap();
    // Batch 1 fits; batch 512 needs megabytes.
    let small = Array::from_vec(vec![1, 256], vec![0.01f32; 256]).unwrap();
    s.run(&[("x", &small)], &["y"]).unwrap();
    let big = Array::from_vec(vec![512, 256], vec![0.01f32; 512 * 256]).unwrap();
    let err = s.run(&[("x", &big)], &["y"]).unwrap_err();
    assert!(matches!(err, kiln::Error::Resource { .. }), "{err}");
    // The session still runs what fits.
    s.run(&[("x", &small)], &["y"]).unwrap();
}

fn bits(a: &[Array]) -> Vec<Vec<u8>> {
    a.iter().map(|x| x.as_bytes().to_vec()).collect()
}

#[test]
fn outputs_are_bit_identical_run_to_run_and_session_to_session() {
    for (name, graph) in kiln_tests::example_models() {
        let feeds = kiln_tests::feeds_for(&graph, 7, 21);
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        for (device, threads) in [
            (Device::Reference, None),
            (Device::Cpu, Some(1)),
            (Device::Cpu, Some(2)),
        ] {
            let opts = SessionOptions {
                threads,
                ..Default::default()
            };
            let s = Session::with_options(&graph, device, opts.clone()).unwrap();
            let first = bits(
                &s.run_outputs(&refs)
                    .unwrap()
                    .into_iter()
                    .map(|o| o.1)
                    .collect::<Vec<_>>(),
            );
            // Enough runs to pass through the tuner's split and unsplit blocks.
            for run in 0..24 {
                let again = bits(
                    &s.run_outputs(&refs)
                        .unwrap()
                        .into_iter()
                        .map(|o| o.1)
                        .collect::<Vec<_>>(),
                );
                assert!(
                    again == first,
                    "{name} on {device:?} ({threads:?} threads): run {run} differs"
                );
            }
            let fresh = Session::with_options(&graph, device, opts).unwrap();
            let other = bits(
                &fresh
                    .run_outputs(&refs)
                    .unwrap()
                    .into_iter()
                    .map(|o| o.1)
                    .collect::<Vec<_>>(),
            );
            assert!(
                other == first,
                "{name} on {device:?}: a fresh session differs"
            );
        }
    }
}

/// The example models and random graphs with every load and store of the
/// compiled code bounds-checked agree with the reference.
#[test]
fn bounds_checked_code_agrees_with_the_reference() {
    let opts = SessionOptions {
        bounds_checks: Some(true),
        ..Default::default()
    };
    for (name, graph) in kiln_tests::example_models() {
        let feeds = kiln_tests::feeds_for(&graph, 3, 5);
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let want = kiln_tests::run_reference(&graph, &feeds);
        let got = Session::with_options(&graph, Device::Cpu, opts.clone())
            .unwrap()
            .run_outputs(&refs)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (w, (out, g)) in want.iter().zip(&got) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}, {out}: {e}"));
        }
    }
    for seed in 0..60 {
        let rg = kiln_tests::random_graph::generate(seed);
        let (graph, feeds) = (&rg.graph, kiln_tests::feeds_for(&rg.graph, rg.sym, seed));
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let Ok(want) = std::panic::catch_unwind(|| kiln_tests::run_reference(graph, &feeds)) else {
            continue; // the reference refuses these feeds (checked elsewhere)
        };
        let got = Session::with_options(graph, Device::Cpu, opts.clone())
            .unwrap()
            .run_outputs(&refs)
            .unwrap_or_else(|e| panic!("random graph {seed}: {e}"));
        for (w, (out, g)) in want.iter().zip(&got) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("random graph {seed}, {out}: {e}"));
        }
    }
}

/// A kernel program whose index leaves its buffer: with bounds checks,
/// running it is an error naming the access; nothing outside is touched.
#[test]
fn an_out_of_bounds_access_is_an_error_with_bounds_checks() {
    use kiln_codegen::{Engine, Executable};
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [8]).unwrap();
    g.output(x.mul(2.0).unwrap().named("y").unwrap()).unwrap();
    let graph = g.into_graph();
    let mut program = kiln_optimizer::compile(
        &graph,
        graph.outputs(),
        &kiln::graph::Bindings::new(),
        &Default::default(),
    )
    .unwrap()
    .program;
    // Read x[i + 5] instead of x[i].
    let mut bent = false;
    for k in &mut program.kernels {
        if let kiln_optimizer::kernel::Kernel::Elementwise { inputs, .. } = k {
            for a in inputs.iter_mut() {
                a.offset.constant += 5;
                bent = true;
            }
        }
    }
    assert!(bent, "an elementwise kernel reads x");
    let backend = kiln_codegen::cpu::CpuBackend {
        bounds_checks: true,
        threads: 1,
        ..Default::default()
    };
    let exe = backend.compile(&program).unwrap();
    let xs = Array::from_vec(vec![8], vec![1f32; 8]).unwrap();
    let inputs = std::collections::HashMap::from([("x", &xs)]);
    let err = exe
        .run(&inputs, &std::collections::HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out-of-bounds access: element 8 of buffer"),
        "{err}"
    );
    assert!(err.contains("(8 elements)"), "{err}");
}

//! Matrix products against constant weights, which the CPU backend packs at
//! compile time (AVX-512 hosts), against the reference interpreter: row
//! counts around the 12-row tile, column counts around the 32-column panel,
//! depths around the 256-deep block, transposed weights, epilogues, and one
//! and two threads.

use kiln::prelude::*;
use kiln_tests::compare;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn agree(m: usize, k: usize, n: usize, transposed: bool) {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![m, k]).unwrap();
    let w = if transposed {
        let wt = Array::from_vec(vec![n, k], values(n * k, 2)).unwrap();
        g.constant(wt).unwrap().transpose().unwrap()
    } else {
        g.constant(Array::from_vec(vec![k, n], values(k * n, 2)).unwrap())
            .unwrap()
    };
    let bias = g
        .constant(Array::from_vec(vec![n], values(n, 3)).unwrap())
        .unwrap();
    let y = x.matmul(w).unwrap();
    y.named("y").unwrap();
    y.add(bias).unwrap().relu().unwrap().named("z").unwrap();
    let graph = g.into_graph();
    let xa = Array::from_vec(vec![m, k], values(m * k, 1)).unwrap();
    let run = |device: Device, threads: usize| {
        let opts = SessionOptions {
            threads: Some(threads),
            ..Default::default()
        };
        let s = Session::with_options(&graph, device, opts).unwrap();
        s.run(&[("x", &xa)], &["y", "z"]).unwrap()
    };
    let want = run(Device::Reference, 1);
    for threads in [1, 2] {
        let got = run(Device::Cpu, threads);
        for (w, g) in want.iter().zip(&got) {
            compare(w, g).unwrap_or_else(|e| {
                panic!("[{m}, {k}] @ [{k}, {n}] transposed {transposed}, {threads} threads: {e}")
            });
        }
    }
}

#[test]
fn products_with_packed_weights_match_the_reference() {
    for m in [2, 11, 12, 13, 25] {
        for (k, n) in [
            (1, 1),
            (7, 15),
            (16, 16),
            (33, 17),
            (256, 32),
            (300, 33),
            (520, 70),
        ] {
            agree(m, k, n, false);
        }
    }
    for (m, k, n) in [(5, 40, 20), (24, 300, 64), (3, 1, 9)] {
        agree(m, k, n, true);
    }
}

#[test]
fn large_products_split_across_threads_match_the_reference() {
    // Big enough to run on two threads: split by rows, then by panels.
    for (m, k, n) in [(130, 300, 230), (14, 1000, 700)] {
        agree(m, k, n, false);
    }
}

/// Products of two computed operands (packed at run time): batched, with a
/// right-hand side broadcast over a batch dim, and transposed.
#[test]
fn products_of_computed_operands_match_the_reference() {
    for (m, k, n) in [(4, 1, 5), (13, 17, 33), (30, 300, 64), (12, 64, 128)] {
        for transposed in [false, true] {
            let g = GraphBuilder::new();
            let x = g.placeholder("x", DType::F32, shape![2, 3, m, k]).unwrap();
            let y = if transposed {
                g.placeholder("y", DType::F32, shape![1, 3, n, k])
                    .unwrap()
                    .permute(&[0, 1, 3, 2])
                    .unwrap()
            } else {
                g.placeholder("y", DType::F32, shape![1, 3, k, n]).unwrap()
            };
            x.matmul(y).unwrap().mul(0.5).unwrap().named("z").unwrap();
            let graph = g.into_graph();
            let xa = Array::from_vec(vec![2, 3, m, k], values(6 * m * k, 4)).unwrap();
            let yshape = if transposed {
                vec![1, 3, n, k]
            } else {
                vec![1, 3, k, n]
            };
            let ya = Array::from_vec(yshape, values(3 * k * n, 5)).unwrap();
            let feeds = [("x", &xa), ("y", &ya)];
            let want = Session::new(&graph, Device::Reference)
                .unwrap()
                .run(&feeds, &["z"])
                .unwrap()
                .remove(0);
            for threads in [1, 2] {
                let opts = SessionOptions {
                    threads: Some(threads),
                    ..Default::default()
                };
                let s = Session::with_options(&graph, Device::Cpu, opts).unwrap();
                for run in 0..3 {
                    let got = s.run(&feeds, &["z"]).unwrap().remove(0);
                    compare(&want, &got).unwrap_or_else(|e| {
                        panic!("[{m}, {k}] @ [{k}, {n}] transposed {transposed}, {threads} threads, run {run}: {e}")
                    });
                }
            }
        }
    }
}

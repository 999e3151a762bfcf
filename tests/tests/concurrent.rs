//! One session, many threads: `Session::run` takes `&self`, so a service
//! shares one compiled model (one copy of its code, constants and packed
//! weights) across the threads that answer requests. Each test runs a
//! session from 8 threads at once and checks every result against the
//! same session's serial answer, and that training steps taken from many
//! threads lose no update.

use std::sync::Arc;

use kiln::graph::{Array, DType, Graph};
use kiln::prelude::*;

const THREADS: usize = 8;
const ROUNDS: usize = 12;
/// Training steps per thread: enough that unordered updates would collide.
const STEPS: usize = 250;

/// Feed sets, one per thread, with the batch size varying between them
/// (so threads also run different programs of the same session at once).
fn feed_sets(graph: &Graph) -> Vec<Vec<(String, Array)>> {
    (0..THREADS)
        .map(|t| kiln_tests::feeds_for(graph, 1 + t % 3, 100 + t as u64))
        .collect()
}

fn run(s: &Session, feeds: &[(String, Array)]) -> Vec<Array> {
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    s.run_outputs(&refs)
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

/// Runs `graph` on `device` from [`THREADS`] threads, [`ROUNDS`] times each,
/// and compares every result with the serial one of the same feeds.
fn shared_session_matches_serial(name: &str, graph: &Graph, device: Device) {
    let session = Arc::new(Session::new(graph, device).unwrap());
    let sets = Arc::new(feed_sets(graph));
    let serial: Vec<Vec<Array>> = sets.iter().map(|f| run(&session, f)).collect();
    let serial = Arc::new(serial);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (session, sets, serial) = (session.clone(), sets.clone(), serial.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    // Each thread walks all feed sets, from its own start.
                    let k = (t + round) % THREADS;
                    let got = run(&session, &sets[k]);
                    for (i, (w, g)) in serial[k].iter().zip(&got).enumerate() {
                        if let Err(e) = kiln_tests::compare(w, g) {
                            return Err(format!(
                                "thread {t}, round {round}, feeds {k}, output {i}: {e}"
                            ));
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        if let Err(e) = w.join().expect("a worker panicked") {
            panic!("{name} on {device}: {e}");
        }
    }
}

#[test]
fn example_models_run_from_many_threads_on_one_cpu_session() {
    for (name, graph) in kiln_tests::example_models() {
        shared_session_matches_serial(name, &graph, Device::Cpu);
    }
}

#[test]
fn host_steps_and_single_threaded_kernels_run_concurrently() {
    // A gather (run by the interpreter between compiled steps) feeding a
    // matrix product whose right-hand side is computed (packed at run time
    // into per-run scratch), and a pooling step.
    let g = GraphBuilder::with_seed(3);
    let table = g
        .variable_init("table", DType::F32, &[50, 24], Init::GlorotUniform)
        .unwrap();
    let ids = g
        .placeholder("ids", DType::I64, shape!["batch", 6])
        .unwrap();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 6, 24])
        .unwrap();
    let e = table.gather(ids.abs().unwrap(), 0).unwrap();
    let scores = e.matmul(x.permute(&[0, 2, 1]).unwrap()).unwrap();
    let img = scores.unsqueeze(1).unwrap();
    let pooled = g.max_pool2d(img, 2, 2, 0).unwrap();
    g.output(pooled.named("pooled").unwrap()).unwrap();
    g.output(scores.softmax(-1).unwrap().named("attn").unwrap())
        .unwrap();
    let graph = g.into_graph();
    shared_session_matches_serial("gather_matmul_pool", &graph, Device::Cpu);
    shared_session_matches_serial("gather_matmul_pool", &graph, Device::Reference);
}

#[test]
fn training_steps_from_many_threads_lose_no_update() {
    // Each run adds 1 to a counter and returns its new value: runs that
    // assign take the variables in turn, so the values seen are exactly
    // 1..=THREADS*STEPS, each once.
    for device in [Device::Cpu, Device::Reference] {
        let g = GraphBuilder::new();
        let c = g.variable("counter", Array::scalar(0.0f64)).unwrap();
        let x = g.placeholder("x", DType::F64, [3]).unwrap();
        let next = c.add(1.0).unwrap();
        let step = c.assign(next).unwrap();
        g.output(step.named("step").unwrap()).unwrap();
        g.output(x.mul(next).unwrap().named("scaled").unwrap())
            .unwrap();
        // Work that makes each step long enough for steps to overlap.
        let m = g.placeholder("m", DType::F64, [96, 96]).unwrap();
        let work = m.matmul(m).unwrap().mul(next).unwrap();
        g.output(work.named("work").unwrap()).unwrap();
        let graph = g.into_graph();
        let session = Arc::new(Session::new(&graph, device).unwrap());
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let session = session.clone();
                std::thread::spawn(move || {
                    let x = Array::from_vec(vec![3], vec![1.0f64, 2.0, 3.0]).unwrap();
                    let m = Array::from_vec(vec![96, 96], vec![0.01f64; 96 * 96]).unwrap();
                    (0..STEPS)
                        .map(|_| {
                            let out = session
                                .run(&[("x", &x), ("m", &m)], &["step", "scaled", "work"])
                                .unwrap();
                            let seen = out[0].as_slice::<f64>().unwrap()[0];
                            // The same run's other output saw the same state.
                            assert_eq!(
                                out[1].as_slice::<f64>().unwrap(),
                                &[seen, 2.0 * seen, 3.0 * seen]
                            );
                            seen as usize
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen: Vec<usize> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker panicked"))
            .collect();
        seen.sort_unstable();
        let want: Vec<usize> = (1..=THREADS * STEPS).collect();
        assert_eq!(seen, want, "{device}: the counter's values over all runs");
        let last = session.variable("counter").unwrap();
        assert_eq!(
            last.as_slice::<f64>().unwrap(),
            &[(THREADS * STEPS) as f64],
            "{device}"
        );
    }
}

#[test]
fn sessions_and_compiled_programs_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Session>();
    shared::<kiln_codegen::cpu::CpuExecutable>();
}

//! Memory that must come back: a dropped session frees its JIT code.
//! Alone in its test binary, so no other test's allocations move the
//! resident-memory figure it reads.

use kiln::prelude::*;

/// The process's resident memory in KiB (Linux), if it can be read.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn dropped_sessions_free_their_compiled_code() {
    // Each CPU session JIT-compiles its kernels; a service that creates a
    // session per request must get that memory back. Leaking it cost about
    // 4 KiB per session (20 MiB over the 5000 below).
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [4, 8]).unwrap();
    g.output(x.exp().unwrap().add(1.0).unwrap().relu().unwrap())
        .unwrap();
    let graph = g.into_graph();
    let x = Array::from_vec(vec![4, 8], vec![0.5f32; 32]).unwrap();
    let run = || {
        let s = Session::new(&graph, Device::Cpu).unwrap();
        s.run_outputs(&[("x", &x)]).unwrap();
    };
    for _ in 0..200 {
        run();
    }
    let Some(before) = resident_kib() else {
        panic!("cannot read VmRSS from /proc/self/status");
    };
    for _ in 0..5000 {
        run();
    }
    let after = resident_kib().unwrap();
    assert!(
        after < before + 8 * 1024,
        "5000 sessions grew the process from {before} KiB to {after} KiB"
    );
}

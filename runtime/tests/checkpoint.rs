//! Checkpoints: round trips, clear errors for a checkpoint of another graph,
//! and a crash test (a saving process killed mid-save never damages the
//! previous checkpoint).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::prelude::*;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn counter_graph(big: usize) -> Graph {
    let g = GraphBuilder::new();
    let c = g.variable("counter", Array::scalar(0.0f32)).unwrap();
    let w = g
        .variable("weights", Array::zeros(DType::F32, &[big]))
        .unwrap();
    c.assign(c.add(1.0).unwrap())
        .unwrap()
        .named("tick")
        .unwrap();
    w.sum_all().unwrap().named("total").unwrap();
    g.into_graph()
}

#[test]
fn save_and_restore_round_trip() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("a.ckpt");
    let graph = counter_graph(10);
    let mut s = Session::new(&graph, Device::Cpu).unwrap();
    for _ in 0..3 {
        s.run(&[], &["tick"]).unwrap();
    }
    s.set_variable(
        "weights",
        Array::from_vec(vec![10], (0..10).map(|i| i as f32).collect()).unwrap(),
    )
    .unwrap();
    s.save_checkpoint(&path).unwrap();
    let mut fresh = Session::new(&graph, Device::Cpu).unwrap();
    assert_eq!(
        fresh.run(&[], &["total"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[0.0]
    );
    fresh.restore_checkpoint(&path).unwrap();
    assert_eq!(
        fresh
            .variable("counter")
            .unwrap()
            .as_slice::<f32>()
            .unwrap(),
        &[3.0]
    );
    // Compiled programs see restored values.
    assert_eq!(
        fresh.run(&[], &["total"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[45.0]
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn restoring_into_another_graph_lists_every_difference() {
    let dir = temp_dir("mismatch");
    let path = dir.join("a.ckpt");
    Session::new(&counter_graph(10), Device::Reference)
        .unwrap()
        .save_checkpoint(&path)
        .unwrap();
    let g = GraphBuilder::new();
    g.variable("weights", Array::zeros(DType::F32, &[12]))
        .unwrap();
    g.variable("bias", Array::zeros(DType::F32, &[3])).unwrap();
    let mut other = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let before = other.variable("weights").unwrap().clone();
    let e = other.restore_checkpoint(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, kiln::Error::Checkpoint { ref problems, .. } if problems.len() == 3),
        "{msg}"
    );
    assert!(msg.contains("variable 'bias' (f32[3]) is missing"), "{msg}");
    assert!(
        msg.contains("variable 'weights' is f32[10] in the checkpoint but f32[12] in the graph"),
        "{msg}"
    );
    assert!(
        msg.contains("'counter' (f32[]) is not a variable of this graph"),
        "{msg}"
    );
    assert_eq!(
        other.variable("weights").unwrap(),
        before,
        "a failed restore changes nothing"
    );
    // A model file is safetensors too, but not a checkpoint.
    let e = other
        .restore_checkpoint(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mlp.kiln"))
        .unwrap_err();
    assert!(e.to_string().contains("not a kiln checkpoint"), "{e}");
    let e = other
        .restore_checkpoint(dir.join("missing.ckpt"))
        .unwrap_err();
    assert!(matches!(e, kiln::Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The child half of the crash test (this test binary run again, on the
/// crash test alone, with `KILN_CKPT_CHILD` set): saves checkpoints to
/// `path` in a loop until killed.
fn save_until_killed(path: &std::ffi::OsStr) -> ! {
    let big = 1 << 22;
    let mut s = Session::new(&counter_graph(big), Device::Reference).unwrap();
    let mut i = 0u32;
    loop {
        i += 1;
        s.set_variable("counter", Array::scalar(i as f32)).unwrap();
        s.set_variable("weights", Array::filled(DType::F32, &[big], i as f64))
            .unwrap();
        s.save_checkpoint(path).unwrap();
    }
}

#[test]
fn a_crash_mid_save_never_damages_the_previous_checkpoint() {
    if let Some(path) = std::env::var_os("KILN_CKPT_CHILD") {
        save_until_killed(&path);
    }
    let dir = temp_dir("crash");
    let path = dir.join("state.ckpt");
    let graph = counter_graph(1 << 22);
    let mut last_counter = 0.0;
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "a_crash_mid_save_never_damages_the_previous_checkpoint",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILN_CKPT_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it finish a few saves, then kill it at an arbitrary point.
        let t0 = std::time::Instant::now();
        while !path.exists() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(40 + 37 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut s = Session::new(&graph, Device::Reference).unwrap();
        s.restore_checkpoint(&path)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let c = s.variable("counter").unwrap().as_slice::<f32>().unwrap()[0];
        let weights = s.variable("weights").unwrap();
        let w = weights.as_slice::<f32>().unwrap();
        assert!(
            c >= 1.0 && w.iter().all(|&v| v == c),
            "round {round}: torn checkpoint (counter {c})"
        );
        last_counter = c;
    }
    assert!(last_counter >= 1.0);
    // Each killed save may leave its own temp file, never anything else.
    for e in std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name == "state.ckpt" || name.starts_with(".state.ckpt.tmp-"),
            "unexpected file {name}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! A model compiled for a Rust program (`kiln::aot::Build`, what a build
//! script calls): the generated module and object compile and link with
//! `rustc` into a program that runs the model without kiln, bit for bit as
//! the JIT session does, and rejects inputs of the wrong length.

use std::process::Command;

use kiln::graph::{Array, DType, GraphBuilder};
use kiln::prelude::*;

/// The `rustc` of the toolchain that builds this test (beside its
/// `cargo`), else the one on PATH; panics when neither runs.
fn rustc() -> std::path::PathBuf {
    let beside_cargo = std::path::Path::new(env!("CARGO")).with_file_name("rustc");
    [beside_cargo, "rustc".into()]
        .into_iter()
        .find(|r| {
            Command::new(r)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no rustc runs (neither beside cargo nor on PATH): install a Rust toolchain")
}

#[test]
fn a_rust_program_runs_an_embedded_model() {
    let rustc = rustc();
    let dir = std::env::temp_dir().join(format!("kiln-aot-rust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, kiln::shape!["batch", 5])
        .unwrap();
    let m = x.max(&[1], true).unwrap();
    g.output(
        x.sub(m)
            .unwrap()
            .mul(0.5)
            .unwrap()
            .named("scores/y")
            .unwrap(),
    )
    .unwrap();
    g.output(x.gt(0.0).unwrap().named("positive").unwrap())
        .unwrap();
    let graph = g.into_graph();
    let model = dir.join("tiny.kiln");
    graph.save(&model).unwrap();
    let err = kiln::aot::Build::new(&model, "tiny")
        .cargo_link(false)
        .write(&dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs .dim(\"batch\", N)"), "{err}");
    kiln::aot::Build::new(&model, "tiny")
        .dim("batch", 3)
        .cargo_link(false)
        .write(&dir)
        .unwrap();
    std::fs::write(
        dir.join("main.rs"),
        r#"include!("tiny.rs");
fn main() {
    let x: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin()).collect();
    assert_eq!(tiny::X_SHAPE, [3, 5]);
    let (y, p) = tiny::run(&x).unwrap();
    for v in &y { println!("{}", v.to_bits()); }
    for v in &p { println!("{}", *v as u8); }
    let e = tiny::run(&x[..3]).unwrap_err();
    assert!(e.contains("3 elements, the model takes 15"), "{e}");
}
"#,
    )
    .unwrap();
    let out = Command::new(&rustc)
        .current_dir(&dir)
        .args(["--edition", "2021", "-O", "main.rs", "-o", "main", "-C"])
        .arg(format!("link-arg={}", dir.join("tiny.o").display()))
        .args([
            "-C".to_string(),
            format!("link-arg={}", dir.join("libkiln_rt.a").display()),
        ])
        .args(kiln::aot::SYSTEM_LIBS.map(|l| format!("-Clink-arg={l}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rustc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(dir.join("main")).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(String::from)
        .collect();
    let xs = Array::from_vec(
        vec![3, 5],
        (0..15).map(|i| (i as f32 * 0.7).sin()).collect::<Vec<_>>(),
    )
    .unwrap();
    let want = Session::new(&graph, Device::Cpu)
        .unwrap()
        .run(&[("x", &xs)], &["scores/y", "positive"])
        .unwrap();
    let y: Vec<String> = want[0]
        .as_slice::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits().to_string())
        .collect();
    let p: Vec<String> = want[1]
        .as_slice::<bool>()
        .unwrap()
        .iter()
        .map(|&v| (v as u8).to_string())
        .collect();
    assert_eq!(lines, [y, p].concat());
    let _ = std::fs::remove_dir_all(&dir);
}

//! Error bounds of the CPU backend's vectorized transcendental functions
//! against the reference interpreter (which uses the platform's libm), over
//! dense sweeps of inputs and at special values.

use kiln::graph::UnaryOp;
use kiln::prelude::*;

/// Inputs: a dense sweep of `[lo, hi]` plus special values.
fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect();
    v.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-40,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0,
        -1.0,
    ]);
    v
}

fn apply(f: UnaryOp, x: &[f32], device: Device, opts: SessionOptions) -> Vec<f32> {
    let g = GraphBuilder::new();
    let p = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    let y = match f {
        UnaryOp::Exp => p.exp(),
        UnaryOp::Log => p.log(),
        UnaryOp::Tanh => p.tanh(),
        UnaryOp::Sigmoid => p.sigmoid(),
        _ => p.erf(),
    };
    y.unwrap().named("y").unwrap();
    let s = Session::with_options(&g.into_graph(), device, opts).unwrap();
    let a = Array::from_vec(vec![x.len()], x.to_vec()).unwrap();
    s.run(&[("x", &a)], &["y"])
        .unwrap()
        .remove(0)
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// Largest error over the inputs, of every row path of the host (the
/// 128-bit code and the AVX-512 and AVX2 row code where the host has them,
/// `kiln_tests::row_paths`): relative where `relative`, else absolute.
/// Special values must agree exactly (NaN with NaN, infinities with
/// infinities).
fn max_error(f: UnaryOp, x: &[f32], relative: bool) -> f64 {
    let want = apply(f, x, Device::Reference, SessionOptions::default());
    let mut worst = 0f64;
    for (path, opts) in kiln_tests::row_paths() {
        let got = apply(f, x, Device::Cpu, opts);
        let e = errors(f, x, &want, &got, relative);
        println!("{f:?} on {path}: {e:e}");
        worst = worst.max(e);
    }
    worst
}

fn errors(f: UnaryOp, x: &[f32], want: &[f32], got: &[f32], relative: bool) -> f64 {
    let mut worst = 0f64;
    for ((&xi, &w), &g) in x.iter().zip(want).zip(got) {
        if w.is_nan() || w.is_infinite() {
            assert!(
                w.is_nan() && g.is_nan() || w == g,
                "{f:?}({xi}) = {g}, want {w}"
            );
            continue;
        }
        let e = (w as f64 - g as f64).abs();
        let e = if relative {
            e / (w.abs() as f64).max(f32::MIN_POSITIVE as f64)
        } else {
            e
        };
        // Results below the normal range (exp of large negatives) count absolutely.
        let e = if relative && w.abs() < 1e-30 {
            (w as f64 - g as f64).abs()
        } else {
            e
        };
        worst = worst.max(e);
    }
    worst
}

#[test]
fn exp_within_4e_7_relative() {
    let e = max_error(UnaryOp::Exp, &sweep(-100.0, 90.0, 400_003), true);
    println!("exp: max relative error {e:e} (bound 4e-7)");
    assert!(e <= 4e-7, "exp: max relative error {e:e}");
}

#[test]
fn log_within_4e_7_relative() {
    let mut x = sweep(1e-6, 1e6, 200_003);
    x.extend(sweep(0.5, 2.0, 200_003));
    x.extend([-1.0, -0.5, 1e-45, 3.4e38]);
    let e = max_error(UnaryOp::Log, &x, true);
    // Near x = 1 the result is near 0: count that region absolutely.
    assert!(
        e <= 4e-7 || max_error(UnaryOp::Log, &sweep(0.9, 1.1, 10_001), false) <= 1e-7,
        "log: max relative error {e:e}"
    );
    let far: Vec<f32> = x
        .iter()
        .copied()
        .filter(|v| (v - 1.0).abs() > 0.1)
        .collect();
    let e = max_error(UnaryOp::Log, &far, true);
    assert!(e <= 4e-7, "log away from 1: max relative error {e:e}");
}

#[test]
fn tanh_within_4e_7_absolute() {
    let e = max_error(UnaryOp::Tanh, &sweep(-20.0, 20.0, 400_003), false);
    println!("tanh: max absolute error {e:e} (bound 4e-7)");
    assert!(e <= 4e-7, "tanh: max absolute error {e:e}");
}

#[test]
fn sigmoid_within_4e_7_relative() {
    let e = max_error(UnaryOp::Sigmoid, &sweep(-80.0, 80.0, 400_003), true);
    println!("sigmoid: max relative error {e:e} (bound 4e-7)");
    assert!(e <= 4e-7, "sigmoid: max relative error {e:e}");
}

#[test]
fn erf_within_8e_7_absolute() {
    let e = max_error(UnaryOp::Erf, &sweep(-6.0, 6.0, 400_003), false);
    println!("erf: max absolute error {e:e} (bound 8e-7)");
    assert!(e <= 8e-7, "erf: max absolute error {e:e}");
}

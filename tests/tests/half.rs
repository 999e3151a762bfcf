//! Half-precision storage types (`f16`, `bf16`) on the reference: every op
//! computes in f32 and rounds its result once; sums and products accumulate
//! wide; files and `.npy` keep them; the CPU backend computes the same.

use half::{bf16, f16};
use kiln::graph::Graph;
use kiln::prelude::*;

fn h(v: &[f32]) -> Array {
    Array::from_vec(
        vec![v.len()],
        v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
    )
    .unwrap()
}

fn b(v: &[f32]) -> Array {
    Array::from_vec(
        vec![v.len()],
        v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
    )
    .unwrap()
}

fn f32s(a: &Array) -> Vec<f32> {
    a.to_f64_vec().into_iter().map(|v| v as f32).collect()
}

/// Runs `graph`'s outputs on the reference with `feeds`.
fn reference(graph: &Graph, feeds: &[(&str, &Array)]) -> Vec<Array> {
    Session::new(graph, Device::Reference)
        .unwrap()
        .run_outputs(feeds)
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

#[test]
fn arithmetic_rounds_each_result_to_the_half_type() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F16, [3]).unwrap();
    let y = g.placeholder("y", DType::BF16, [3]).unwrap();
    g.output(x.add(1.0).unwrap().named("x1").unwrap()).unwrap();
    g.output(y.add(1.0).unwrap().named("y1").unwrap()).unwrap();
    g.output(x.mul(x).unwrap().named("xx").unwrap()).unwrap();
    g.output(x.exp().unwrap().named("ex").unwrap()).unwrap();
    let graph = g.into_graph();
    // f16 has 10 significand bits: 2048 + 1 is halfway to 2050 and rounds
    // to even (2048); bf16 has 7: 1 + 2^-9 rounds to 1.
    let xs = h(&[2048.0, 0.5, 300.0]);
    let ys = b(&[2.0f32.powi(-9), 255.0, -1.0]);
    let out = reference(&graph, &[("x", &xs), ("y", &ys)]);
    assert_eq!(out[0].dtype(), DType::F16);
    assert_eq!(f32s(&out[0]), vec![2048.0, 1.5, 301.0]);
    assert_eq!(out[1].dtype(), DType::BF16);
    assert_eq!(f32s(&out[1]), vec![1.0, 256.0, 0.0]);
    // 2048^2 and 300^2 overflow f16 (max 65504): inf, as their f32 results
    // round.
    assert_eq!(f32s(&out[2]), vec![f32::INFINITY, 0.25, f32::INFINITY]);
    // exp computed in f32, rounded once.
    let want: Vec<f32> = [2048.0f32, 0.5, 300.0]
        .iter()
        .map(|&v| f16::from_f32(v.exp()).to_f32())
        .collect();
    assert_eq!(f32s(&out[3]), want);
}

#[test]
fn sums_and_products_accumulate_wide() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F16, [4096]).unwrap();
    let a = g.placeholder("a", DType::F16, [2, 64]).unwrap();
    let w = g.placeholder("w", DType::F16, [64, 3]).unwrap();
    g.output(x.sum_all().unwrap().named("s").unwrap()).unwrap();
    g.output(a.matmul(w).unwrap().named("mm").unwrap()).unwrap();
    let graph = g.into_graph();
    let ones = h(&[1.0; 4096]);
    let av: Vec<f32> = (0..128).map(|i| (i % 7) as f32 * 0.125 - 0.25).collect();
    let wv: Vec<f32> = (0..192).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
    let a16 = h(&av).reshaped(vec![2, 64]).unwrap();
    let w16 = h(&wv).reshaped(vec![64, 3]).unwrap();
    let out = reference(&graph, &[("x", &ones), ("a", &a16), ("w", &w16)]);
    // Adding ones one at a time in f16 stalls at 2048; accumulated wide
    // the sum is exact.
    assert_eq!(f32s(&out[0]), vec![4096.0]);
    // The product as f32 (these values are exact in f16), then rounded.
    for i in 0..2 {
        for j in 0..3 {
            let s: f32 = (0..64).map(|k| av[i * 64 + k] * wv[k * 3 + j]).sum();
            assert_eq!(f32s(&out[1])[i * 3 + j], f16::from_f32(s).to_f32());
        }
    }
}

#[test]
fn casts_round_once_and_comparisons_are_exact() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [4]).unwrap();
    let c16 = x.cast(DType::F16).unwrap();
    let cb = x.cast(DType::BF16).unwrap();
    g.output(c16.named("c16").unwrap()).unwrap();
    g.output(cb.named("cb").unwrap()).unwrap();
    g.output(c16.cast(DType::I32).unwrap().named("i").unwrap())
        .unwrap();
    g.output(c16.gt(c16.mul(0.5).unwrap()).unwrap().named("gt").unwrap())
        .unwrap();
    g.output(c16.argmax(0, false).unwrap().named("am").unwrap())
        .unwrap();
    let graph = g.into_graph();
    let xs = Array::from_vec(vec![4], vec![1.0f32 / 3.0, 70000.0, -2.5, 1e-8]).unwrap();
    let out = reference(&graph, &[("x", &xs)]);
    let want16: Vec<f32> = [1.0f32 / 3.0, 70000.0, -2.5, 1e-8]
        .iter()
        .map(|&v| f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f32s(&out[0]), want16);
    assert_eq!(want16[1], f32::INFINITY, "70000 is beyond f16");
    let wantb: Vec<f32> = [1.0f32 / 3.0, 70000.0, -2.5, 1e-8]
        .iter()
        .map(|&v| bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f32s(&out[1]), wantb);
    assert_eq!(out[2].as_slice::<i32>().unwrap(), &[0, i32::MAX, -2, 0]);
    // 1e-8 is below half of f16's least subnormal (6e-8): 0, not > 0.
    assert_eq!(want16[3], 0.0);
    assert_eq!(
        out[3].as_slice::<bool>().unwrap(),
        &[true, false, false, false]
    );
    assert_eq!(out[4].as_slice::<i64>().unwrap(), &[1]);
}

#[test]
fn half_tensors_survive_files_and_npy() {
    let g = GraphBuilder::new();
    let c = g.constant(h(&[0.1, -65504.0, 6e-8])).unwrap();
    let d = g.constant(b(&[0.1, 3e38, -1e-30])).unwrap();
    g.output(c.named("c").unwrap()).unwrap();
    g.output(d.named("d").unwrap()).unwrap();
    let graph = g.into_graph();
    let dir = std::env::temp_dir().join(format!("kiln-half-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.kiln");
    graph.save(&path).unwrap();
    let back = Graph::load(&path).unwrap();
    let (a, z) = (reference(&graph, &[]), reference(&back, &[]));
    assert!(a[0].same_bits(&z[0]) && a[1].same_bits(&z[1]));
    // .npy: f16 as '<f2'; bf16 (which NumPy lacks) widened to f32, exactly.
    let p16 = dir.join("c.npy");
    kiln::npy::write(&p16, &a[0]).unwrap();
    assert!(kiln::npy::read(&p16).unwrap().same_bits(&a[0]));
    let pb = dir.join("d.npy");
    kiln::npy::write(&pb, &a[1]).unwrap();
    let wide = kiln::npy::read(&pb).unwrap();
    assert_eq!(wide.dtype(), DType::F32);
    assert_eq!(wide.to_f64_vec(), a[1].to_f64_vec());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gradients_flow_through_half_tensors() {
    // loss = sum((w x)^2) in f16; dloss/dw = 2 x (w x), computed in f32
    // per op and rounded.
    let g = GraphBuilder::new();
    let w = g
        .variable(
            "w",
            Array::from_vec(vec![2], vec![f16::from_f32(1.5), f16::from_f32(-0.5)]).unwrap(),
        )
        .unwrap();
    let x = g.constant(h(&[2.0, 4.0])).unwrap();
    let y = w.mul(x).unwrap();
    let loss = y.mul(y).unwrap().sum_all().unwrap().named("loss").unwrap();
    g.minimize(loss, kiln::graph::Optimizer::sgd(0.125))
        .unwrap()
        .named("train")
        .unwrap();
    let graph = g.into_graph();
    let s = Session::new(&graph, Device::Reference).unwrap();
    let l = s.run(&[], &["loss", "train"]).unwrap().remove(0);
    assert_eq!(l.dtype(), DType::F16);
    assert_eq!(f32s(&l), vec![9.0 + 4.0]);
    // w - 0.125 * 2 x (w x) = [1.5 - 0.25 * 2 * 3, -0.5 - 0.25 * 4 * -2]
    assert_eq!(f32s(&s.variable("w").unwrap()), vec![0.0, 1.5]);
}

/// A graph mixing both half types with f32: elementwise chains, casts
/// between all float types and integers, a reduction, softmax, a matrix
/// product and a convolution; fed deterministic values.
fn mixed_graph() -> (Graph, Vec<(String, Array)>) {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F16, [4, 8]).unwrap();
    let y = g.placeholder("y", DType::BF16, [4, 8]).unwrap();
    let w = g.placeholder("w", DType::F16, [8, 5]).unwrap();
    let img = g.placeholder("img", DType::BF16, [1, 2, 6, 6]).unwrap();
    let k = g.placeholder("k", DType::BF16, [3, 2, 3, 3]).unwrap();
    let e = x.mul(1.5).unwrap().add(0.25).unwrap().tanh().unwrap();
    g.output(e.named("chain").unwrap()).unwrap();
    let yx = y.cast(DType::F16).unwrap().add(x).unwrap();
    g.output(yx.named("mixed").unwrap()).unwrap();
    g.output(x.cast(DType::I32).unwrap().named("ints").unwrap())
        .unwrap();
    let back = x
        .cast(DType::I64)
        .unwrap()
        .cast(DType::BF16)
        .unwrap()
        .cast(DType::F64)
        .unwrap();
    g.output(back.named("back").unwrap()).unwrap();
    g.output(y.sum(&[1], false).unwrap().named("rowsum").unwrap())
        .unwrap();
    g.output(x.softmax(-1).unwrap().named("softmax").unwrap())
        .unwrap();
    g.output(x.matmul(w).unwrap().named("mm").unwrap()).unwrap();
    let opts = Conv2dOptions::default().padding(1);
    g.output(
        img.conv2d(k, opts)
            .unwrap()
            .relu()
            .unwrap()
            .named("conv")
            .unwrap(),
    )
    .unwrap();
    g.output(x.gt(0.5).unwrap().named("gt").unwrap()).unwrap();
    let graph = g.into_graph();
    let feeds = kiln_tests::feeds_for(&graph, 1, 17);
    (graph, feeds)
}

#[test]
fn the_cpu_backend_computes_what_the_reference_does() {
    let (graph, feeds) = mixed_graph();
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let want = reference(&graph, &refs);
    let got = Session::new(&graph, Device::Cpu)
        .unwrap()
        .run_outputs(&refs)
        .unwrap();
    for (w, (name, g)) in want.iter().zip(&got) {
        assert_eq!(w.dtype(), g.dtype(), "{name}");
        kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

//! The CPU backend (Cranelift JIT + gemm) against the reference interpreter
//! on the example models, through the public `Session` API.

use kiln::prelude::*;
use kiln_tests::{compare, example_models, feeds_for};

fn run(graph: &Graph, device: Device, feeds: &[(String, Array)]) -> Vec<Array> {
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let s = Session::new(graph, device).unwrap();
    s.run_outputs(&refs)
        .unwrap_or_else(|e| panic!("{device}: {e}"))
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

#[test]
fn example_models_match_the_reference() {
    for (name, graph) in example_models() {
        for batch in [1, 3] {
            let feeds = feeds_for(&graph, batch, 11);
            let want = run(&graph, Device::Reference, &feeds);
            let got = run(&graph, Device::Cpu, &feeds);
            for (w, g) in want.iter().zip(&got) {
                compare(w, g).unwrap_or_else(|e| panic!("{name} batch {batch}: {e}"));
            }
        }
    }
}

#[test]
fn programs_are_cached_per_shape_and_fetch_set() {
    let graph = kiln_tests::mlp(&[12, 16, 5]);
    let s = Session::new(&graph, Device::Cpu).unwrap();
    for batch in [2, 4, 2, 4, 2] {
        let x = Array::from_vec(vec![batch, 12], vec![0.25f32; batch * 12]).unwrap();
        assert_eq!(
            s.run(&[("x", &x)], &["logits"]).unwrap()[0].shape(),
            &[batch, 5]
        );
    }
    assert_eq!(s.compiled_programs(), 2);
}

#[test]
fn variables_update_on_the_cpu() {
    let g = GraphBuilder::new();
    let v = g
        .variable(
            "counter",
            Array::from_vec(vec![2], vec![0.0f32, 10.0]).unwrap(),
        )
        .unwrap();
    v.assign(v.add(1.0).unwrap())
        .unwrap()
        .named("step")
        .unwrap();
    v.mul(2.0).unwrap().named("twice").unwrap();
    let s = Session::new(&g.into_graph(), Device::Cpu).unwrap();
    for i in 1..=3 {
        let out = s.run(&[], &["step", "twice"]).unwrap();
        assert_eq!(
            out[0].as_slice::<f32>().unwrap(),
            &[i as f32, 10.0 + i as f32]
        );
        assert_eq!(
            out[1].as_slice::<f32>().unwrap(),
            &[2.0 * (i - 1) as f32, 2.0 * (10 + i - 1) as f32]
        );
    }
    assert_eq!(
        s.variable("counter").unwrap().as_slice::<f32>().unwrap(),
        &[3.0, 13.0]
    );
}

#[test]
fn set_variable_reaches_compiled_programs() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [2]).unwrap();
    let w = g
        .variable("w", Array::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap())
        .unwrap();
    x.mul(w).unwrap().named("y").unwrap();
    let mut s = Session::new(&g.into_graph(), Device::Cpu).unwrap();
    let xv = Array::from_vec(vec![2], vec![3.0f32, 4.0]).unwrap();
    assert_eq!(
        s.run(&[("x", &xv)], &["y"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[3.0, 8.0]
    );
    s.set_variable("w", Array::from_vec(vec![2], vec![-1.0f32, 0.5]).unwrap())
        .unwrap();
    assert_eq!(
        s.run(&[("x", &xv)], &["y"]).unwrap()[0]
            .as_slice::<f32>()
            .unwrap(),
        &[-3.0, 2.0]
    );
}

/// Elementwise kernels that select along an outer dim (a concatenation of
/// many slices, as a recurrent layer's output over its time steps; a
/// nested concatenation; a pad of outer rows) branch once per row and
/// compute one side, vectorized; the results match the reference, with
/// rows long enough for the vector code and too short for it.
#[test]
fn row_selects_match_the_reference() {
    for width in [5, 48] {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape![40, 2, width])
            .unwrap();
        let steps: Vec<_> = (0..40)
            .map(|t| {
                let s = x.slice_axis(0, t, t + 1, 1).unwrap();
                s.tanh().unwrap().mul(s).unwrap()
            })
            .collect();
        let time = g.concat(&steps, 0).unwrap();
        let halves = [
            time.slice_axis(1, 1, 2, 1).unwrap(),
            time.slice_axis(1, 0, 1, 1).unwrap().sigmoid().unwrap(),
        ];
        let nested = g.concat(&halves, 1).unwrap();
        nested
            .pad(&[2, 0, 0], &[1, 0, 0], 0.5)
            .unwrap()
            .named("y")
            .unwrap();
        let graph = g.into_graph();
        let feeds = feeds_for(&graph, 1, 3);
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let fetch = |device| {
            Session::new(&graph, device)
                .unwrap()
                .run(&refs, &["y"])
                .unwrap()
                .remove(0)
        };
        compare(&fetch(Device::Reference), &fetch(Device::Cpu))
            .unwrap_or_else(|e| panic!("width {width}: {e}"));
    }
}

/// f32 max pooling (the vectorized path) against the reference, bit for
/// bit: NaN wins wherever a window holds one, -inf inputs, padding never
/// wins, a window all in padding gives -inf, strides 1 to 3, dilation,
/// asymmetric padding, ceil mode.
#[test]
fn max_pooling_matches_the_reference_bit_for_bit() {
    let windows = [
        ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], false),
        ([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], true),
        ([3, 2], [1, 3], [2, 0, 1, 1], [1, 2], false),
        ([3, 3], [3, 3], [2, 2, 2, 2], [1, 1], true),
        ([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], false),
        ([3, 3], [2, 1], [0, 1, 0, 1], [1, 2], false),
    ];
    // Rows of 13 (shorter than a vector's worth of output columns) and 41
    // (whole vectors and a rest, column strides 1 and 2).
    for ((kernel, stride, padding, dilation, ceil_mode), wd) in
        windows.into_iter().flat_map(|w| [(w, 13), (w, 41)])
    {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape![2, 3, 11, wd])
            .unwrap();
        let window = kiln::graph::op::Window2d {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        };
        x.max_pool2d(window).unwrap().named("y").unwrap();
        let graph = g.into_graph();
        let mut v: Vec<f32> = (0..2 * 3 * 11 * wd)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for (i, special) in [
            (5, f32::NAN),
            (40, f32::NEG_INFINITY),
            (300, f32::NAN),
            (7, -0.0),
            (wd * 4 + 20, f32::NAN),
        ] {
            v[i] = special;
        }
        let xa = Array::from_vec(vec![2, 3, 11, wd], v).unwrap();
        let fetch = |device| {
            Session::new(&graph, device)
                .unwrap()
                .run(&[("x", &xa)], &["y"])
                .unwrap()
                .remove(0)
        };
        let (want, got) = (fetch(Device::Reference), fetch(Device::Cpu));
        let bits = |a: &Array| -> Vec<u32> {
            a.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                .collect()
        };
        assert_eq!(
            bits(&want),
            bits(&got),
            "{kernel:?} {stride:?} {padding:?} width {wd}"
        );
    }
}

/// Short rows with a scalar per row (a per-channel bias and SiLU over
/// small planes) run as one segmented row-code row over the two innermost
/// dims: rows of 16 to 613 elements (one vector, not a whole number of
/// vectors, several per block, blocks inside one row, rows of whole
/// blocks), a per-row scalar moving by 1 and by 2
/// elements per row, a leading dim looped outside the row, one and two
/// threads (the split range), against the reference.
#[test]
fn segmented_rows_match_the_reference() {
    for width in [16, 17, 31, 49, 100, 300, 512, 613] {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape![3, 37, width])
            .unwrap();
        let b = g.placeholder("b", DType::F32, shape![37, 1]).unwrap();
        let p = g.placeholder("p", DType::F32, shape![37, 2]).unwrap();
        let z = x.add(b).unwrap();
        let silu = z.sigmoid().unwrap().mul(z).unwrap();
        silu.named("y").unwrap();
        // The scalar of row c at p[c * 2 + 1].
        let second = p.slice_axis(1, 1, 2, 1).unwrap();
        let one = x
            .slice_axis(0, 1, 2, 1)
            .unwrap()
            .reshape(shape![37, width])
            .unwrap();
        one.mul(second).unwrap().tanh().unwrap().named("t").unwrap();
        let graph = g.into_graph();
        let feeds = feeds_for(&graph, 1, 5);
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let want = Session::new(&graph, Device::Reference)
            .unwrap()
            .run(&refs, &["y", "t"])
            .unwrap();
        for threads in [1, 2] {
            let options = SessionOptions {
                threads: Some(threads),
                ..SessionOptions::default()
            };
            let got = Session::with_options(&graph, Device::Cpu, options)
                .unwrap()
                .run(&refs, &["y", "t"])
                .unwrap();
            for (w, g) in want.iter().zip(&got) {
                compare(w, g).unwrap_or_else(|e| panic!("width {width}, {threads} threads: {e}"));
            }
        }
    }
}

/// An unrolled recurrence (each step reads the next row of one input and
/// the previous step's state) compiles its identical steps to shared
/// functions, over other buffers and other rows, with the reference's
/// results: a product's epilogue (called by the product's own code) and a
/// reduction with a map (a loop nest of its own).
#[test]
fn repeated_steps_share_compiled_code() {
    use kiln_codegen::Engine;
    let (steps, width) = (12usize, 40usize);
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [steps, width]).unwrap();
    let w = g
        .constant(
            Array::from_vec(
                vec![width, width],
                (0..width * width)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.02)
                    .collect(),
            )
            .unwrap(),
        )
        .unwrap();
    let mut h = x.slice_axis(0, 0, 1, 1).unwrap().tanh().unwrap();
    for t in 1..steps as i64 {
        let row = x.slice_axis(0, t, t + 1, 1).unwrap();
        let a = row.add(h.matmul(w).unwrap()).unwrap().tanh().unwrap();
        // Centred: a reduction over the row and a map using it.
        h = a.sub(a.mean(&[1], true).unwrap()).unwrap();
    }
    g.output(h).unwrap();
    let graph = g.into_graph();
    let program = kiln_optimizer::compile(
        &graph,
        graph.outputs(),
        &Default::default(),
        &kiln_optimizer::CompileOptions::default(),
    )
    .unwrap()
    .program;
    let exe = kiln_codegen::cpu::CpuBackend::default()
        .compile(&program)
        .unwrap();
    assert!(
        program.kernels.len() >= 2 * (steps - 1),
        "two kernels per step: {} kernels",
        program.kernels.len()
    );
    assert!(
        exe.compiled_functions() <= 6,
        "{} functions for {} kernels",
        exe.compiled_functions(),
        program.kernels.len()
    );
    let feeds = feeds_for(&graph, 1, 5);
    let want = run(&graph, Device::Reference, &feeds);
    let got = run(&graph, Device::Cpu, &feeds);
    compare(&want[0], &got[0]).unwrap();
}

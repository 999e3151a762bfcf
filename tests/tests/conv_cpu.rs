//! 2-D convolution on the CPU backend (direct AVX-512 kernel where the host
//! has it and it pays, im2col + GEMM otherwise; each forced on every shape
//! too) against the reference interpreter, over
//! strides, paddings, kernel sizes, dilations, groups, batch sizes and
//! channel counts and widths that are not multiples of 16, on one thread and
//! on several (large shapes split across threads).
//!
//! Tolerance: every output element must satisfy
//! `|cpu - reference| <= 1e-5 * M + 1e-6`, where `M` is the same convolution
//! of `|x|` and `|w|` (so `M` bounds the magnitude of every partial sum). An
//! f32 sum of `K` products reordered arbitrarily errs by at most about
//! `K * 2^-24 * M`; the shapes here have `K <= 500`, so real rounding errors
//! stay near `1.3e-6 * M` while a wrong tap or a missed channel is off by
//! about a whole product.

use kiln::graph::Op;
use kiln::prelude::*;

struct Case {
    n: usize,
    c: usize,
    o: usize,
    hw: [usize; 2],
    k: [usize; 2],
    stride: [usize; 2],
    /// top, left, bottom, right
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
}

#[allow(clippy::too_many_arguments)]
fn case(n: usize, c: usize, o: usize, hw: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case {
        n,
        c,
        o,
        hw: [hw, hw],
        k: [k, k],
        stride: [stride, stride],
        padding: [pad; 4],
        dilation: [1, 1],
        groups: 1,
    }
}

fn values(shape: &[usize], seed: u64, dtype: DType) -> Array {
    let count: usize = shape.iter().product();
    let v: Vec<f64> = (0..count as u64)
        .map(|i| kiln::graph::rng::uniform_f64(seed, i) * 2.0 - 1.0)
        .collect();
    match dtype {
        DType::F32 => Array::from_vec(
            shape.to_vec(),
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        )
        .unwrap(),
        _ => Array::from_vec(shape.to_vec(), v).unwrap(),
    }
}

fn abs(a: &Array) -> Array {
    let shape = a.shape().to_vec();
    match a.dtype() {
        DType::F32 => Array::from_vec(
            shape,
            a.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.abs())
                .collect::<Vec<_>>(),
        )
        .unwrap(),
        _ => Array::from_vec(
            shape,
            a.to_f64_vec().iter().map(|x| x.abs()).collect::<Vec<_>>(),
        )
        .unwrap(),
    }
}

fn conv_graph(c: &Case, dtype: DType) -> Graph {
    let g = GraphBuilder::with_seed(1);
    let x = g
        .placeholder("x", dtype, shape![c.n, c.c, c.hw[0], c.hw[1]])
        .unwrap();
    let w = g
        .placeholder("w", dtype, shape![c.o, c.c / c.groups, c.k[0], c.k[1]])
        .unwrap();
    let opts = Conv2dOptions {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
    };
    let y = x.conv2d(w, opts).unwrap().named("y").unwrap();
    g.output(y).unwrap();
    g.into_graph()
}

fn run(graph: &Graph, device: Device, threads: usize, x: &Array, w: &Array) -> Vec<f64> {
    let options = SessionOptions {
        threads: Some(threads),
        ..Default::default()
    };
    let s = Session::with_options(graph, device, options).unwrap();
    s.run(&[("x", x), ("w", w)], &["y"])
        .unwrap_or_else(|e| panic!("{device}: {e}"))
        .remove(0)
        .to_f64_vec()
}

fn check(c: &Case, dtype: DType, seed: u64) {
    let graph = conv_graph(c, dtype);
    let x = values(&[c.n, c.c, c.hw[0], c.hw[1]], seed, dtype);
    let w = values(&[c.o, c.c / c.groups, c.k[0], c.k[1]], seed + 1, dtype);
    let want = run(&graph, Device::Reference, 1, &x, &w);
    let bound = run(&graph, Device::Reference, 1, &abs(&x), &abs(&w));
    for threads in [1, 2, 3] {
        let got = run(&graph, Device::Cpu, threads, &x, &w);
        assert_eq!(got.len(), want.len());
        for (i, ((g, r), m)) in got.iter().zip(&want).zip(&bound).enumerate() {
            let tol = 1e-5 * m + 1e-6;
            assert!(
                (g - r).abs() <= tol,
                "n{} c{} o{} hw{:?} k{:?} s{:?} p{:?} d{:?} g{} {dtype} threads {threads}: \
                 element {i}: reference {r}, cpu {g}",
                c.n,
                c.c,
                c.o,
                c.hw,
                c.k,
                c.stride,
                c.padding,
                c.dilation,
                c.groups
            );
        }
    }
}

#[test]
fn conv_shapes_match_the_reference() {
    let mut cases = vec![
        // The benchmark CNN's shapes.
        case(2, 3, 16, 32, 3, 1, 1),
        case(2, 16, 16, 32, 3, 1, 1),
        case(2, 16, 32, 32, 3, 2, 1),
        case(2, 32, 32, 16, 3, 1, 1),
        case(2, 16, 32, 32, 1, 2, 0),
        // 1x1, 3x3, 5x5; strides 1 and 2; paddings 0..2.
        case(1, 5, 7, 9, 1, 1, 0),
        case(3, 17, 19, 13, 1, 1, 0),
        case(2, 9, 11, 20, 1, 2, 0),
        case(1, 4, 9, 17, 3, 1, 0),
        case(3, 7, 13, 15, 3, 1, 1),
        case(2, 6, 10, 33, 3, 2, 1),
        case(1, 3, 24, 31, 3, 2, 0),
        case(2, 5, 17, 18, 5, 1, 2),
        case(1, 8, 8, 21, 5, 2, 2),
        case(2, 20, 5, 11, 5, 1, 0),
        case(1, 1, 1, 1, 1, 1, 0),
        case(1, 2, 3, 3, 3, 1, 1),
        case(1, 3, 17, 47, 3, 1, 1),
        case(2, 4, 9, 40, 3, 3, 1),
        // Large enough to be split across threads: many images, and one.
        case(5, 16, 16, 32, 3, 1, 1),
        case(1, 32, 40, 32, 3, 1, 1),
        case(1, 24, 36, 64, 3, 2, 1),
    ];
    // Asymmetric padding and stride, rectangular images, dilation, groups.
    cases.push(Case {
        n: 2,
        c: 5,
        o: 9,
        hw: [12, 19],
        k: [3, 2],
        stride: [2, 1],
        padding: [0, 2, 1, 0],
        dilation: [1, 1],
        groups: 1,
    });
    cases.push(Case {
        n: 1,
        c: 4,
        o: 6,
        hw: [15, 18],
        k: [3, 3],
        stride: [1, 2],
        padding: [2, 1, 0, 3],
        dilation: [2, 2],
        groups: 1,
    });
    cases.push(Case {
        n: 2,
        c: 8,
        o: 12,
        hw: [10, 10],
        k: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
        dilation: [1, 1],
        groups: 4,
    });
    // Grouped and depthwise (MobileNet, EfficientNet, ResNeXt shapes): 3x3
    // and 5x5, strides 1 and 2, planes narrower and wider than a vector,
    // a channel multiplier, dilation, asymmetric padding, several
    // channels per group, one image and several, split or not.
    let grouped = |n, c, o, hw: usize, k: usize, stride: usize, groups| Case {
        n,
        c,
        o,
        hw: [hw, hw],
        k: [k, k],
        stride: [stride, stride],
        padding: [k / 2; 4],
        dilation: [1, 1],
        groups,
    };
    cases.extend([
        grouped(1, 16, 16, 7, 3, 1, 16),
        grouped(1, 24, 24, 14, 5, 1, 24),
        grouped(2, 8, 8, 15, 3, 2, 8),
        grouped(1, 8, 8, 17, 5, 2, 8),
        grouped(3, 6, 12, 9, 3, 1, 6),
        grouped(2, 16, 16, 11, 3, 1, 4),
        grouped(1, 64, 64, 56, 3, 1, 64),
        grouped(1, 96, 96, 28, 5, 2, 96),
        grouped(4, 32, 32, 14, 3, 1, 32),
        grouped(1, 2, 2, 1, 3, 1, 2),
    ]);
    cases.push(Case {
        n: 1,
        c: 6,
        o: 6,
        hw: [13, 10],
        k: [3, 5],
        stride: [2, 1],
        padding: [0, 2, 1, 3],
        dilation: [2, 1],
        groups: 6,
    });
    // Depthwise layers of the channel-vectorised kernel (16 channels a
    // vector, 8 with AVX2): small planes, channel counts that leave a
    // partial block, strides 2, asymmetric padding, dilation 2, a
    // rectangular kernel and image, one image and three, large planes
    // (their layout a ring of rows).
    let depthwise = |n, c, hw: [usize; 2], k: [usize; 2], stride, padding, dilation| Case {
        n,
        c,
        o: c,
        hw,
        k,
        stride,
        padding,
        dilation,
        groups: c,
    };
    cases.extend([
        depthwise(1, 40, [7, 7], [5, 5], [1, 1], [2; 4], [1, 1]),
        depthwise(3, 27, [14, 14], [3, 3], [2, 2], [1, 0, 0, 1], [1, 1]),
        depthwise(1, 33, [14, 14], [3, 3], [1, 1], [2; 4], [2, 2]),
        depthwise(1, 16, [7, 7], [3, 3], [2, 2], [0, 1, 2, 1], [1, 1]),
        depthwise(3, 40, [7, 9], [3, 5], [1, 2], [1, 2, 1, 2], [2, 1]),
        depthwise(2, 20, [14, 14], [5, 5], [1, 1], [2; 4], [1, 1]),
        depthwise(1, 48, [28, 28], [5, 5], [2, 2], [2; 4], [1, 1]),
        // Too few channel blocks to share: bands of rows per thread.
        depthwise(1, 24, [56, 56], [3, 3], [1, 1], [1; 4], [1, 1]),
        depthwise(1, 16, [56, 56], [5, 5], [1, 1], [2, 1, 2, 3], [1, 1]),
    ]);
    // 3x3 stride-1 layers for Winograd F(2x2, 3x3) (the rule takes it
    // from 16 channels on AVX2; forced, every 3x3 stride-1 shape above
    // too): odd and even planes (a last tile half outside), rows of tiles
    // that fill whole vectors and that do not, no padding, asymmetric
    // padding, a rectangular image, several blocks of tile rows, many
    // channels (smaller blocks), several images on several threads.
    cases.extend([
        case(1, 64, 64, 56, 3, 1, 1),
        case(1, 16, 24, 15, 3, 1, 1),
        case(2, 32, 16, 14, 3, 1, 0),
        case(1, 256, 32, 14, 3, 1, 1),
        case(3, 16, 16, 28, 3, 1, 1),
        // Small planes (tiles numbered across images, unpadded): 7x7 with
        // output channels for several 12-row parts, three 9x9 images
        // (more than one block of tiles), an odd rectangle with
        // asymmetric padding.
        case(1, 40, 36, 7, 3, 1, 1),
        case(3, 20, 30, 9, 3, 1, 1),
        Case {
            n: 2,
            c: 24,
            o: 26,
            hw: [5, 9],
            k: [3, 3],
            stride: [1, 1],
            padding: [0, 2, 1, 1],
            dilation: [1, 1],
            groups: 1,
        },
        Case {
            n: 1,
            c: 17,
            o: 33,
            hw: [21, 30],
            k: [3, 3],
            stride: [1, 1],
            padding: [2, 0, 1, 2],
            dilation: [1, 1],
            groups: 1,
        },
    ]);
    // The backend picks the direct kernel or im2col + GEMM per shape;
    // `KILN_CONV` (read when a convolution is compiled) forces each path on
    // every shape. This is the only test in this binary, so nothing else
    // reads the variable meanwhile.
    for mode in ["direct", "gemm", "winograd", ""] {
        if mode.is_empty() {
            std::env::remove_var("KILN_CONV");
        } else {
            std::env::set_var("KILN_CONV", mode);
        }
        for (i, c) in cases.iter().enumerate() {
            check(c, DType::F32, 10 + i as u64);
        }
    }
    for c in &cases[..8] {
        check(c, DType::F64, 3);
    }
    // The 8-lane (AVX2) copies of the grouped and direct kernels (and
    // the grouped kernel's plain one), forced where the host has AVX-512
    // by turning that off: the grouped shapes as the backend picks, then
    // every shape on the direct kernels.
    std::env::set_var("KILN_AVX512", "0");
    for (i, c) in cases.iter().enumerate().filter(|(_, c)| c.groups > 1) {
        check(c, DType::F32, 50 + i as u64);
    }
    std::env::set_var("KILN_CONV", "direct");
    for (i, c) in cases.iter().enumerate() {
        check(c, DType::F32, 90 + i as u64);
    }
    std::env::remove_var("KILN_CONV");
    std::env::remove_var("KILN_AVX512");
}

/// A convolution with the epilogue of a residual block (per-channel bias,
/// a residual input, ReLU, or SiLU as EfficientNet's depthwise layers
/// have), which the direct kernels apply per image and channel block as
/// they finish them: batch 1 and larger, channel counts with a partial
/// 8- or 16-channel block, one and two threads, each way of splitting
/// (the first runs of a session measure both).
#[test]
fn convolution_epilogues_match_the_reference() {
    // (n, c, o, hw, groups, k, silu): from the fifth depthwise
    // (MobileNet's epilogue: bias and activation after each depthwise
    // layer; the 7x7 and 14x14 ones on channel vectors).
    // Then pointwise (1x1) convolutions, products on the input itself,
    // whose output channels one image splits across the team.
    for (n, c, o, hw, groups, k, silu) in [
        (1, 16, 16, 32, 1, 3, false),
        (1, 8, 40, 20, 1, 3, false),
        (3, 16, 24, 16, 1, 3, false),
        (4, 3, 16, 12, 1, 3, false),
        (1, 64, 64, 40, 64, 3, false),
        (2, 32, 32, 14, 32, 3, false),
        (3, 48, 48, 30, 48, 3, false),
        (1, 40, 40, 7, 40, 5, true),
        (3, 40, 40, 14, 40, 3, true),
        (1, 27, 27, 14, 27, 3, false),
        (2, 24, 24, 7, 24, 5, true),
        (1, 24, 24, 56, 24, 3, true),
        (1, 96, 40, 56, 1, 1, false),
        (2, 40, 96, 28, 1, 1, false),
        // kiln's own GEMM against weights packed once: pixels in lanes
        // (planes of 1024 and more), output channels in lanes (7x7
        // planes: 3x3 through im2col, 1x1 on the input; a partial
        // 32-channel panel), one image and several.
        (2, 24, 48, 32, 1, 1, false),
        (1, 64, 64, 7, 1, 3, false),
        (3, 40, 96, 7, 1, 1, true),
        (1, 24, 120, 7, 1, 1, false),
    ] {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape![n, c, hw, hw])
            .unwrap();
        let w = g
            .constant(values(&[o, c / groups, k, k], 2, DType::F32))
            .unwrap();
        let bias = g.constant(values(&[1, o, 1, 1], 3, DType::F32)).unwrap();
        let res = g
            .placeholder("r", DType::F32, shape![n, o, hw, hw])
            .unwrap();
        let opts = Conv2dOptions::default().padding(k / 2).groups(groups);
        let t = x
            .conv2d(w, opts)
            .unwrap()
            .add(bias)
            .unwrap()
            .add(res)
            .unwrap();
        let y = if silu {
            t.mul(t.sigmoid().unwrap()).unwrap()
        } else {
            t.relu().unwrap()
        };
        y.named("y").unwrap();
        let graph = g.into_graph();
        let xa = values(&[n, c, hw, hw], 4, DType::F32);
        let ra = values(&[n, o, hw, hw], 5, DType::F32);
        let feeds = [("x", &xa), ("r", &ra)];
        let want = Session::new(&graph, Device::Reference)
            .unwrap()
            .run(&feeds, &["y"])
            .unwrap()
            .remove(0);
        for threads in [1, 2] {
            let options = SessionOptions {
                threads: Some(threads),
                ..Default::default()
            };
            let s = Session::with_options(&graph, Device::Cpu, options).unwrap();
            // Enough runs to go both ways (split, then not).
            for run in 0..20 {
                let got = s.run(&feeds, &["y"]).unwrap().remove(0);
                kiln_tests::compare(&want, &got).unwrap_or_else(|e| {
                    panic!(
                        "[{n}, {c}, {hw}, {hw}] -> {o} channels (silu {silu}), {threads} threads, run {run}: {e}"
                    )
                });
            }
        }
    }
}

/// A small depthwise network with every kind of node the `channels_last`
/// pass rebuilds NHWC or leaves behind: a 3x3 stride-2 stem (im2col GEMM)
/// with hard-swish, inverted residual blocks (pointwise expansion with
/// ReLU6, depthwise 3x3 and 5x5 at strides 1 and 2 with SiLU, a
/// squeeze-and-excite gate from a global average pool through two 1x1
/// convolutions, pointwise projection, residual sum), a max pool (NCHW, so
/// a transpose back), and a global pool, flatten and dense head. The
/// activations are those the kernels fuse as they store.
fn depthwise_network(n: usize, hw: usize) -> Graph {
    let g = GraphBuilder::new();
    let mut seed = 10;
    let mut constant = |shape: &[usize], scale: f64| {
        seed += 1;
        let v = values(shape, seed, DType::F64).to_f64_vec();
        g.constant(
            Array::from_vec(
                shape.to_vec(),
                v.iter().map(|x| (x * scale) as f32).collect::<Vec<_>>(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    let x = g
        .placeholder("x", DType::F32, shape![n, 3, hw, hw])
        .unwrap();
    fn conv<'g>(
        x: Tensor<'g>,
        w: Tensor<'g>,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Tensor<'g> {
        let opts = Conv2dOptions::default()
            .stride(stride)
            .padding(pad)
            .groups(groups);
        x.conv2d(w, opts).unwrap()
    }
    fn relu6(t: Tensor<'_>) -> Tensor<'_> {
        t.maximum(0.0).unwrap().minimum(6.0).unwrap()
    }
    fn silu(t: Tensor<'_>) -> Tensor<'_> {
        t.mul(t.sigmoid().unwrap()).unwrap()
    }
    /// As kiln's ONNX import writes HardSwish.
    fn hard_swish(t: Tensor<'_>) -> Tensor<'_> {
        let h = t.add(3.0).unwrap().div(6.0).unwrap();
        let h = h.maximum(0.0).unwrap().minimum(1.0).unwrap();
        t.maximum(-3.0).unwrap().mul(h).unwrap()
    }
    let c0 = 16;
    let mut t = conv(x, constant(&[c0, 3, 3, 3], 0.5), 2, 1, 1);
    t = hard_swish(t.add(constant(&[c0, 1, 1], 0.1)).unwrap());
    let mut c = c0;
    for (expand, k, stride, out) in [(4, 3, 1, 16), (6, 5, 2, 24), (6, 3, 1, 24)] {
        let e = c * expand;
        let h = relu6(
            conv(t, constant(&[e, c, 1, 1], 0.3), 1, 0, 1)
                .add(constant(&[1, e, 1, 1], 0.1))
                .unwrap(),
        );
        let d = silu(conv(h, constant(&[e, 1, k, k], 0.3), stride, k / 2, e));
        let s = d.mean(&[2, 3], true).unwrap();
        let s = conv(s, constant(&[4, e, 1, 1], 0.3), 1, 0, 1)
            .relu()
            .unwrap();
        let s = conv(s, constant(&[e, 4, 1, 1], 0.3), 1, 0, 1)
            .sigmoid()
            .unwrap();
        let d = d.mul(s).unwrap();
        let p = conv(d, constant(&[out, e, 1, 1], 0.3), 1, 0, 1);
        t = if stride == 1 && out == c {
            p.add(t).unwrap()
        } else {
            p
        };
        c = out;
        if c == 16 {
            t = t.max_pool2d(Window2d::square(2, 2, 0)).unwrap();
        }
    }
    let pooled = t.mean(&[2, 3], false).unwrap();
    let y = pooled
        .matmul(constant(&[c, 10], 0.3))
        .unwrap()
        .named("y")
        .unwrap();
    g.output(y).unwrap();
    g.into_graph()
}

#[test]
fn channels_last_networks_match_the_reference() {
    for (n, hw) in [(1, 32), (3, 21), (2, 9)] {
        let graph = depthwise_network(n, hw);
        let x = values(&[n, 3, hw, hw], 7, DType::F32);
        let want = Session::new(&graph, Device::Reference)
            .unwrap()
            .run(&[("x", &x)], &["y"])
            .unwrap()
            .remove(0);
        for (channels_last, threads) in [(false, 1), (true, 1), (true, 2)] {
            let options = SessionOptions {
                threads: Some(threads),
                channels_last: Some(channels_last),
                ..Default::default()
            };
            let s = Session::with_options(&graph, Device::Cpu, options).unwrap();
            for run in 0..12 {
                let got = s.run(&[("x", &x)], &["y"]).unwrap().remove(0);
                kiln_tests::compare(&want, &got).unwrap_or_else(|e| {
                    panic!("n {n}, {hw}x{hw}, channels last {channels_last}, {threads} threads, run {run}: {e}")
                });
            }
        }
    }
}

/// The pass moves the whole depthwise region: every convolution, with no
/// permute left between two of them (only the input's, the max pool's
/// way out and back, and the head's, whose reduction drops the dims).
#[test]
fn channels_last_moves_depthwise_regions_whole() {
    let graph = depthwise_network(1, 32);
    let opts = kiln_optimizer::CompileOptions {
        freeze_variables: true,
        channels_last: true,
        ..Default::default()
    };
    let out = graph.outputs().to_vec();
    let compiled = kiln_optimizer::compile(&graph, &out, &Default::default(), &opts).unwrap();
    let g = &compiled.graph;
    let mut convs = (0, 0);
    let mut permutes = 0;
    for id in g.topo_order() {
        match &g.node(id).op {
            Op::Conv2d { channels_last, .. } => {
                if *channels_last {
                    convs.0 += 1
                } else {
                    convs.1 += 1
                }
            }
            Op::Permute { .. } if g.node(id).ty.rank() == 4 => permutes += 1,
            _ => {}
        }
    }
    assert_eq!(convs, (1 + 3 * 5, 0), "{g}");
    assert!(permutes <= 4, "{permutes} permutes: {g}");
    // A ResNet-style region (no depthwise convolution) stays NCHW.
    let gb = GraphBuilder::new();
    let x = gb
        .placeholder("x", DType::F32, shape![1, 8, 10, 10])
        .unwrap();
    let w = gb.constant(values(&[8, 8, 1, 1], 1, DType::F32)).unwrap();
    let y = x
        .conv2d(w, Conv2dOptions::default())
        .unwrap()
        .relu()
        .unwrap();
    gb.output(y).unwrap();
    let graph = gb.into_graph();
    let out = graph.outputs().to_vec();
    let compiled = kiln_optimizer::compile(&graph, &out, &Default::default(), &opts).unwrap();
    assert!(compiled.graph.topo_order().iter().all(|&id| !matches!(
        compiled.graph.node(id).op,
        Op::Conv2d {
            channels_last: true,
            ..
        } | Op::Permute { .. }
    )));
}

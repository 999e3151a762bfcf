//! The benchmark workloads, built with kiln's builder. `bench/peers.py`
//! builds the same models for ONNX Runtime and PyTorch from the weights
//! kiln saves, so every engine computes the same function on the same input.

use kiln::prelude::*;

/// A benchmark workload: a graph, its input, and the name of its output.
pub struct Workload {
    /// Name (`mlp_b1`, ...).
    pub name: &'static str,
    /// The model.
    pub graph: Graph,
    /// Input placeholder name and value.
    pub input: (String, Array),
    /// The fetched output.
    pub output: String,
    /// Floating-point operations of one run (multiply-add = 2).
    pub flops: f64,
    /// Bytes one run must at least read and write (weights, input, output).
    pub bytes: f64,
}

fn input(shape: &[usize], seed: u64) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| kiln::graph::rng::normal_f64(seed, i) as f32)
        .collect();
    Array::from_vec(shape.to_vec(), v).expect("input shape")
}

fn params_bytes(g: &Graph) -> f64 {
    g.parameter_count().1 as f64
}

/// MLP 784-512-512-10 with ReLU.
pub fn mlp(batch: usize, name: &'static str) -> Workload {
    let g = GraphBuilder::with_seed(1);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 784])
        .unwrap();
    let h = g.dense("fc1", x, 512, Activation::Relu).unwrap();
    let h = g.dense("fc2", h, 512, Activation::Relu).unwrap();
    let y = g.linear("fc3", h, 10).unwrap().named("y").unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let flops = 2.0 * batch as f64 * (784.0 * 512.0 + 512.0 * 512.0 + 512.0 * 10.0);
    let bytes = params_bytes(&graph) + 4.0 * batch as f64 * (784.0 + 10.0);
    Workload {
        name,
        graph,
        input: ("x".into(), input(&[batch, 784], 2)),
        output: "y".into(),
        flops,
        bytes,
    }
}

fn conv_bn<'g>(
    g: &'g GraphBuilder,
    name: &str,
    x: Tensor<'g>,
    out: usize,
    k: usize,
    stride: usize,
    relu: bool,
) -> Tensor<'g> {
    let opts = Conv2dOptions::default().stride(stride).padding(k / 2);
    let c = g
        .conv2d_layer(
            &format!("{name}/conv"),
            x,
            out,
            k,
            opts,
            Activation::Identity,
        )
        .unwrap();
    let b = g.batch_norm(&format!("{name}/bn"), c, 1e-5).unwrap();
    if relu {
        b.relu().unwrap()
    } else {
        b
    }
}

/// conv3x3(3->16)+BN+ReLU, residual block 16->16, residual block 16->32
/// stride 2 with a 1x1 projection, global average pool, linear 32->10.
pub fn cnn(batch: usize, name: &'static str) -> Workload {
    let g = GraphBuilder::with_seed(3);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 3, 32, 32])
        .unwrap();
    let s = conv_bn(&g, "stem", x, 16, 3, 1, true);
    let r = conv_bn(&g, "b1/c1", s, 16, 3, 1, true);
    let r = conv_bn(&g, "b1/c2", r, 16, 3, 1, false);
    let s = r.add(s).unwrap().relu().unwrap();
    let r = conv_bn(&g, "b2/c1", s, 32, 3, 2, true);
    let r = conv_bn(&g, "b2/c2", r, 32, 3, 1, false);
    let p = conv_bn(&g, "b2/proj", s, 32, 1, 2, false);
    let s = r.add(p).unwrap().relu().unwrap();
    let pooled = s.global_avg_pool().unwrap().flatten().unwrap();
    let y = g.linear("fc", pooled, 10).unwrap().named("y").unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let b = batch as f64;
    let flops = 2.0
        * b
        * (32.0 * 32.0 * (16.0 * 27.0 + 2.0 * 16.0 * 144.0)
            + 16.0 * 16.0 * (32.0 * 144.0 + 32.0 * 288.0 + 32.0 * 16.0))
        + 2.0 * b * 320.0;
    let bytes = params_bytes(&graph) + 4.0 * b * (3.0 * 1024.0 + 10.0);
    Workload {
        name,
        graph,
        input: ("x".into(), input(&[batch, 3, 32, 32], 4)),
        output: "y".into(),
        flops,
        bytes,
    }
}

/// Pre-norm transformer encoder block: d_model 256, 4 heads, FFN 1024 with
/// exact GELU, sequence 128, batch 1.
pub fn xfmr(name: &'static str) -> Workload {
    let (t, d, f) = (128usize, 256usize, 1024usize);
    let g = GraphBuilder::with_seed(5);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", t, d])
        .unwrap();
    let a = g
        .multi_head_attention("attn", g.layer_norm("ln1", x, 1e-5).unwrap(), 4, false)
        .unwrap();
    let h = x.add(a).unwrap();
    let ff = g
        .dense(
            "ffn1",
            g.layer_norm("ln2", h, 1e-5).unwrap(),
            f,
            Activation::Gelu,
        )
        .unwrap();
    let y = h
        .add(g.linear("ffn2", ff, d).unwrap())
        .unwrap()
        .named("y")
        .unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let (t, d, f) = (t as f64, d as f64, f as f64);
    let flops = 2.0 * (4.0 * t * d * d + 2.0 * t * t * d + 2.0 * t * d * f);
    let bytes = params_bytes(&graph) + 8.0 * t * d;
    Workload {
        name,
        graph,
        input: ("x".into(), input(&[1, 128, 256], 6)),
        output: "y".into(),
        flops,
        bytes,
    }
}

/// `gelu(x * 1.7 + 0.3) * sigmoid(x) - tanh(x)` over 4M f32 (exact GELU).
pub fn ew_chain(name: &'static str) -> Workload {
    ew_chain_of(name, 4 << 20)
}

/// ew_chain over `n` floats.
pub fn ew_chain_of(name: &'static str, n: usize) -> Workload {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["n"]).unwrap();
    let y = x
        .mul(1.7)
        .unwrap()
        .add(0.3)
        .unwrap()
        .gelu()
        .unwrap()
        .mul(x.sigmoid().unwrap())
        .unwrap()
        .sub(x.tanh().unwrap())
        .unwrap();
    g.output(y.named("y").unwrap()).unwrap();
    let n = n as f64;
    Workload {
        name,
        graph: g.into_graph(),
        input: ("x".into(), input(&[n as usize], 8)),
        output: "y".into(),
        flops: 30.0 * n,
        bytes: 8.0 * n,
    }
}

/// One SGD step (forward, backward, update) of MLP 784-256-10 with ReLU and
/// mean softmax cross-entropy, batch 64. The input is the images; the labels
/// are a constant so the workload has one input like the others.
pub fn mlp_train(name: &'static str) -> Workload {
    let batch = 64;
    let g = GraphBuilder::with_seed(9);
    let x = g.placeholder("x", DType::F32, [batch, 784]).unwrap();
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 7) % 10).collect();
    let y = g
        .constant(Array::from_vec(vec![batch], labels).unwrap())
        .unwrap();
    let h = g.dense("fc1", x, 256, Activation::Relu).unwrap();
    let logits = g.linear("fc2", h, 10).unwrap();
    let loss = kiln::graph::sparse_softmax_cross_entropy(logits, y)
        .unwrap()
        .mean(&[0], false)
        .unwrap()
        .named("loss")
        .unwrap();
    let train = g.minimize(loss, kiln::graph::Optimizer::sgd(0.01)).unwrap();
    let y = loss
        .add(train.cast(DType::F32).unwrap().mul(0.0).unwrap())
        .unwrap()
        .named("y")
        .unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let b = batch as f64;
    let flops = 3.0 * 2.0 * b * (784.0 * 256.0 + 256.0 * 10.0);
    let bytes = 3.0 * params_bytes(&graph) + 4.0 * b * 784.0;
    Workload {
        name,
        graph,
        input: ("x".into(), input(&[batch, 784], 10)),
        output: "y".into(),
        flops,
        bytes,
    }
}

/// Every workload, in the order the benchmark prints them.
pub fn all() -> Vec<Workload> {
    NAMES.iter().filter_map(|n| by_name(n)).collect()
}

/// The GPU benchmark's workloads (issue: ew_chain at 64M elements).
pub const GPU_NAMES: [&str; 5] = ["mlp_b1", "mlp_b128", "xfmr_b1", "cnn_b32", "ew_chain_64m"];

/// The workloads' names, in benchmark order.
pub const NAMES: [&str; 7] = [
    "mlp_b1",
    "mlp_b128",
    "cnn_b1",
    "cnn_b32",
    "xfmr_b1",
    "ew_chain",
    "mlp_train",
];

/// One workload, built alone.
pub fn by_name(name: &str) -> Option<Workload> {
    Some(match name {
        "mlp_b1" => mlp(1, "mlp_b1"),
        "mlp_b128" => mlp(128, "mlp_b128"),
        "cnn_b1" => cnn(1, "cnn_b1"),
        "cnn_b32" => cnn(32, "cnn_b32"),
        "xfmr_b1" => xfmr("xfmr_b1"),
        "ew_chain" => ew_chain("ew_chain"),
        "ew_chain_64m" => ew_chain_of("ew_chain_64m", 64 << 20),
        "mlp_train" => mlp_train("mlp_train"),
        _ => return None,
    })
}

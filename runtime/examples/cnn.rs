//! Builds a small CNN (conv-bn-relu, a residual block, pooling, a linear
//! head) for 3x32x32 images, saves it as a .kiln file, reloads and runs it.
//!
//! `cargo run -p kiln --example cnn -- [MODEL.kiln]` (default: target/cnn.kiln)

use kiln::prelude::*;

fn build() -> Result<Graph> {
    let g = GraphBuilder::with_seed(1);
    let x = g.placeholder("image", DType::F32, shape!["batch", 3, 32, 32])?;
    let same = Conv2dOptions::default().padding(1);
    let stem = g.conv2d_layer("stem", x, 16, 3, same, Activation::Identity)?;
    let stem = g.batch_norm("stem_bn", stem, 1e-5)?.relu()?;
    // Residual block 16 -> 16.
    let r = g.conv2d_layer("block1/conv1", stem, 16, 3, same, Activation::Relu)?;
    let r = g.conv2d_layer("block1/conv2", r, 16, 3, same, Activation::Identity)?;
    let h = r.add(stem)?.relu()?;
    let h = g.max_pool2d(h, 2, 2, 0)?;
    let pooled = h.global_avg_pool()?.flatten()?;
    let logits = g.linear("head", pooled, 10)?.named("logits")?;
    g.output(logits)?;
    Ok(g.into_graph())
}

fn main() -> Result<()> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/cnn.kiln".into());
    build()?.save(&model)?;
    let graph = Graph::load(&model)?;
    let sess = Session::new(&graph, Device::default())?;
    let n = 2 * 3 * 32 * 32;
    let pixels: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let image = Array::from_vec(vec![2, 3, 32, 32], pixels).expect("image");
    let out = sess.run(&[("image", &image)], &["logits"])?;
    let (params, _) = graph.parameter_count();
    println!("saved {model}: {} nodes, {params} parameters", graph.len());
    println!("logits {:?}", out[0]);
    Ok(())
}

//! Builds a small MLP classifier for 8x8 digit images (64 -> 32 -> 10),
//! saves it as a .kiln file with a sample input, and runs it.
//!
//! `cargo run -p kiln --example mlp -- [MODEL.kiln] [INPUT.npy]`
//! (defaults: examples/mlp.kiln and examples/digit.npy; this is how the
//! shipped example model was made).

use kiln::prelude::*;

fn build() -> Result<Graph> {
    let g = GraphBuilder::with_seed(7);
    let x = g.placeholder("x", DType::F32, shape!["batch", 64])?;
    // Pixel values are 0..16 as in the UCI digits; scale to 0..1.
    let h = g.dense("fc1", x.mul(1.0 / 16.0)?, 32, Activation::Relu)?;
    let logits = g.linear("fc2", h, 10)?.named("logits")?;
    let probs = logits.softmax(-1)?.named("probs")?;
    let class = logits.argmax(-1, false)?.named("class")?;
    g.output(probs)?;
    g.output(class)?;
    Ok(g.into_graph())
}

/// A hand-drawn "0" in the style of the UCI digits (8x8, values 0..16).
fn digit_zero() -> Array {
    #[rustfmt::skip]
    let px: [f32; 64] = [
        0., 0., 5., 13., 9., 1., 0., 0.,
        0., 0., 13., 15., 10., 15., 5., 0.,
        0., 3., 15., 2., 0., 11., 8., 0.,
        0., 4., 12., 0., 0., 8., 8., 0.,
        0., 5., 8., 0., 0., 9., 8., 0.,
        0., 4., 11., 0., 1., 12., 7., 0.,
        0., 2., 14., 5., 10., 12., 0., 0.,
        0., 0., 6., 13., 10., 0., 0., 0.,
    ];
    Array::from_vec(vec![1, 64], px.to_vec()).expect("64 pixels")
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "examples/mlp.kiln".into());
    let input = args.next().unwrap_or_else(|| "examples/digit.npy".into());
    let graph = build()?;
    graph.save(&model)?;
    kiln::npy::write(&input, &digit_zero())?;
    let loaded = Graph::load(&model)?;
    let sess = Session::new(&loaded, Device::default())?;
    let out = sess.run(&[("x", &digit_zero())], &["probs", "class"])?;
    let (params, bytes) = loaded.parameter_count();
    println!(
        "saved {model} ({} nodes, {params} parameters, {bytes} bytes) and {input}",
        loaded.len()
    );
    println!("probs {:?}", out[0]);
    println!("class {:?}", out[1]);
    Ok(())
}

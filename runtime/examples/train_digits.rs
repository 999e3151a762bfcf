//! Trains an MLP (64-128-10, ReLU, Adam) on the UCI handwritten digits shipped
//! in `examples/data/digits`, with a progress bar showing loss and held-out
//! accuracy, then saves the trained model.
//!
//! `cargo run --release -p kiln --example train_digits -- [EPOCHS] [OUT.kiln]`

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use kiln::graph::{sparse_softmax_cross_entropy, Optimizer};
use kiln::prelude::*;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let epochs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let out = args
        .next()
        .unwrap_or_else(|| "target/digits_mlp.kiln".into());
    let (pixels, labels) = kiln::datasets::digits(Path::new("examples/data/digits/digits.csv.gz"))?;
    // A fixed shuffle; 80% to train, 20% held out.
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| kiln::graph::rng::bits(7, i as u64));
    let rows = |r: &[usize]| -> (Array, Array) {
        let x: Vec<f32> = r
            .iter()
            .flat_map(|&i| pixels[i * 64..(i + 1) * 64].to_vec())
            .collect();
        let y: Vec<i64> = r.iter().map(|&i| labels[i]).collect();
        (
            Array::from_vec(vec![r.len(), 64], x).expect("rows"),
            Array::from_vec(vec![r.len()], y).expect("labels"),
        )
    };
    let split = labels.len() * 4 / 5;
    let (train, test) = order.split_at(split);
    let (test_x, test_y) = rows(test);

    let g = GraphBuilder::with_seed(42);
    let x = g.placeholder("x", DType::F32, shape!["batch", 64])?;
    let y = g.placeholder("y", DType::I64, shape!["batch"])?;
    let h = g.dense("fc1", x.mul(1.0 / 16.0)?, 128, Activation::Relu)?;
    let logits = g.linear("fc2", h, 10)?.named("logits")?;
    let loss = sparse_softmax_cross_entropy(logits, y)?
        .mean(&[0], false)?
        .named("loss")?;
    let pred = logits.argmax(-1, false)?.named("pred")?;
    g.minimize(loss, Optimizer::adam(0.01))?.named("train")?;
    g.output(logits.softmax(-1)?.named("probs")?)?;
    g.output(pred)?;
    let mut sess = Session::new(&g.into_graph(), Device::Cpu)?;

    let bs = 50;
    let steps = train.len() / bs;
    let bar = ProgressBar::new((epochs * steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} epoch {prefix} {msg}")
            .expect("template"),
    );
    let mut acc = 0.0;
    for epoch in 0..epochs {
        bar.set_prefix(format!("{}", epoch + 1));
        let mut total = 0.0;
        for b in 0..steps {
            let (bx, by) = rows(&train[b * bs..(b + 1) * bs]);
            let out = sess.run(&[("x", &bx), ("y", &by)], &["loss", "train"])?;
            total += out[0].as_slice::<f32>().expect("f32 loss")[0];
            bar.inc(1);
        }
        let p = sess.run(&[("x", &test_x)], &["pred"])?.remove(0);
        let right = kiln::datasets::count_matches(&p, &test_y).expect("i64 labels");
        acc = right as f64 / test.len() as f64;
        bar.set_message(format!(
            "loss {:.4}  held-out accuracy {:.2}%",
            total / steps as f32,
            100.0 * acc
        ));
    }
    bar.finish();
    sess.export_graph()?.save(&out)?;
    println!(
        "held-out accuracy {:.2}% after {epochs} epochs; saved {out}",
        100.0 * acc
    );
    Ok(())
}

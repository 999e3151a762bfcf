//! Trains a recurrent classifier on the UCI handwritten digits read as
//! sequences: each 8x8 image is 8 time steps of one 8-pixel row, fed to a
//! `simple_rnn` layer whose recurrence is a `while_loop` in the graph, then
//! a linear layer to 10 classes (Adam). Gradients flow back through the loop.
//!
//! `cargo run --release -p kiln --example train_rnn -- [EPOCHS]`

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use kiln::graph::{sparse_softmax_cross_entropy, Optimizer};
use kiln::prelude::*;

fn main() -> Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let (pixels, labels) = kiln::datasets::digits(Path::new("examples/data/digits/digits.csv.gz"))?;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by_key(|&i| kiln::graph::rng::bits(7, i as u64));
    let (train, test) = order.split_at(labels.len() * 4 / 5);
    let targets = |r: &[usize]| {
        Array::from_vec(
            vec![r.len()],
            r.iter().map(|&i| labels[i]).collect::<Vec<i64>>(),
        )
    };
    let (test_x, test_y) = (
        kiln::datasets::digit_sequences(&pixels, test),
        targets(test).expect("labels"),
    );

    let g = GraphBuilder::with_seed(42);
    let xs = g.placeholder("xs", DType::F32, shape![8, "batch", 8])?;
    let y = g.placeholder("y", DType::I64, shape!["batch"])?;
    let h = g.simple_rnn("rnn", xs, 64, Activation::Tanh)?;
    let logits = g.linear("out", h, 10)?.named("logits")?;
    let loss = sparse_softmax_cross_entropy(logits, y)?
        .mean(&[0], false)?
        .named("loss")?;
    logits.argmax(-1, false)?.named("pred")?;
    g.minimize(loss, Optimizer::adam(0.01))?.named("train")?;
    let sess = Session::new(&g.into_graph(), Device::Cpu)?;

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
            let rows = &train[b * bs..(b + 1) * bs];
            let (bx, by) = (
                kiln::datasets::digit_sequences(&pixels, rows),
                targets(rows).expect("labels"),
            );
            let out = sess.run(&[("xs", &bx), ("y", &by)], &["loss", "train"])?;
            total += out[0].as_slice::<f32>().expect("f32 loss")[0];
            bar.inc(1);
        }
        let p = sess.run(&[("xs", &test_x)], &["pred"])?.remove(0);
        let right = kiln::datasets::count_matches(&p, &test_y).expect("i64 labels");
        acc = right as f64 / test.len() as f64;
        bar.set_message(format!(
            "loss {:.4}  held-out accuracy {:.2}%",
            total / steps as f32,
            100.0 * acc
        ));
    }
    bar.finish();
    let out = "target/digits_rnn.kiln";
    sess.export_graph()?.save(out)?;
    println!(
        "held-out accuracy {:.2}% after {epochs} epochs; saved {out}",
        100.0 * acc
    );
    Ok(())
}

//! Trains an MLP (64-128-10, ReLU, Adam) on the UCI handwritten digits shipped
//! in `examples/data/digits`, with a progress bar showing loss and held-out
//! accuracy, then saves the trained model as an inference graph: `x`
//! `f32[batch,64]` (pixels 0..16) in, `probs` (softmax) and `class` (argmax,
//! i64) out, the trained weights as its variables; no labels, loss or
//! optimizer state. `examples/mlp.kiln`, the quick start's model, is made by
//!
//! `cargo run --release -p kiln --example train_digits -- --out examples/mlp.kiln`
//!
//! Options: `--epochs N` (default 40), `--out PATH` (default
//! `target/digits_mlp.kiln`). Training is deterministic: a fixed seed, a
//! fixed split and order, and the reference interpreter (which sums in one
//! order on every machine), so the command rewrites the same file.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use kiln::graph::{sparse_softmax_cross_entropy, Optimizer};
use kiln::prelude::*;

/// The seed of the weights' initialization.
const SEED: u64 = 42;
/// Examples per training step.
const BATCH: usize = 50;

/// The model from the pixels `x` to its logits; the training graph and the
/// saved inference graph both build it, so their variables have the same
/// names and shapes.
fn logits<'g>(g: &'g GraphBuilder, x: Tensor<'g>) -> Result<Tensor<'g>> {
    let h = g.dense("fc1", x.mul(1.0 / 16.0)?, 128, Activation::Relu)?;
    Ok(g.linear("fc2", h, 10)?.named("logits")?)
}

/// `probs` and `class` of `logits`, the inference graph's outputs.
fn outputs(g: &GraphBuilder, logits: Tensor<'_>) -> Result<()> {
    g.output(logits.softmax(-1)?.named("probs")?)?;
    g.output(logits.argmax(-1, false)?.named("class")?)?;
    Ok(())
}

/// Parsed command-line options.
struct Options {
    epochs: usize,
    out: String,
}

fn options() -> std::result::Result<Options, String> {
    let mut o = Options {
        epochs: 40,
        out: "target/digits_mlp.kiln".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--epochs" => {
                let v = value()?;
                o.epochs = v.parse().map_err(|e| format!("--epochs {v}: {e}"))?;
            }
            "--out" => o.out = value()?,
            _ => {
                return Err(format!(
                    "unknown argument '{a}' (usage: train_digits [--epochs N] [--out PATH])"
                ))
            }
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let opts = options().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let (pixels, labels) = kiln::datasets::digits(Path::new("examples/data/digits/digits.csv.gz"))?;
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
    let (train, held_out) = kiln::datasets::digits_split(labels.len());
    let (test_x, test_y) = rows(&held_out);

    let g = GraphBuilder::with_seed(SEED);
    let x = g.placeholder("x", DType::F32, shape!["batch", 64])?;
    let y = g.placeholder("y", DType::I64, shape!["batch"])?;
    let logits_t = logits(&g, x)?;
    let loss = sparse_softmax_cross_entropy(logits_t, y)?
        .mean(&[0], false)?
        .named("loss")?;
    g.minimize(loss, Optimizer::adam(0.01))?.named("train")?;
    outputs(&g, logits_t)?;
    let sess = Session::new(&g.into_graph(), Device::Reference)?;

    let steps = train.len() / BATCH;
    let bar = ProgressBar::new((opts.epochs * steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} epoch {prefix} {msg}")
            .expect("template"),
    );
    let mut acc = 0.0;
    for epoch in 0..opts.epochs {
        bar.set_prefix(format!("{}", epoch + 1));
        let mut total = 0.0;
        for b in 0..steps {
            let (bx, by) = rows(&train[b * BATCH..(b + 1) * BATCH]);
            let out = sess.run(&[("x", &bx), ("y", &by)], &["loss", "train"])?;
            total += out[0].as_slice::<f32>().expect("f32 loss")[0];
            bar.inc(1);
        }
        let p = sess.run(&[("x", &test_x)], &["class"])?.remove(0);
        let right = kiln::datasets::count_matches(&p, &test_y).expect("i64 labels");
        acc = right as f64 / held_out.len() as f64;
        bar.set_message(format!(
            "loss {:.4}  held-out accuracy {:.2}%",
            total / steps as f32,
            100.0 * acc
        ));
    }
    bar.finish();

    // The inference graph: the same model, without the labels, loss and
    // train op (and so without Adam's moments), holding the trained weights.
    let g = GraphBuilder::with_seed(SEED);
    let x = g.placeholder("x", DType::F32, shape!["batch", 64])?;
    outputs(&g, logits(&g, x)?)?;
    let mut infer = Session::new(&g.into_graph(), Device::Reference)?;
    let names: Vec<String> = infer
        .variables_by_name()?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in names {
        infer.set_variable(&name, sess.variable(&name)?.clone())?;
    }
    // The saved model answers as the trained session does.
    let want = sess.run(&[("x", &test_x)], &["probs"])?.remove(0);
    let got = infer.run(&[("x", &test_x)], &["probs"])?.remove(0);
    assert!(
        got.same_bits(&want),
        "the inference graph's probabilities differ from the trained session's"
    );
    infer.export_graph()?.save(&opts.out)?;
    println!(
        "held-out accuracy {:.2}% ({} images) after {} epochs; saved {}",
        100.0 * acc,
        held_out.len(),
        opts.epochs,
        opts.out
    );
    Ok(())
}

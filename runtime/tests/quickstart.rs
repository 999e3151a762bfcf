//! The quick start's model (`examples/mlp.kiln`, made by
//! `cargo run --release -p kiln --example train_digits -- --out examples/mlp.kiln`):
//! an inference graph that needs only `x`, classifies the shipped hand-drawn
//! zero (`examples/digit.npy`) as 0 with high probability, and gets at least
//! 95% of the held-out digits right.

use std::path::{Path, PathBuf};

use kiln::prelude::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn model() -> Graph {
    Graph::load(repo("examples/mlp.kiln")).expect("examples/mlp.kiln loads")
}

#[test]
fn the_example_model_is_an_inference_graph() {
    let graph = model();
    let names = |ids: Vec<kiln::graph::NodeId>| -> Vec<String> {
        ids.into_iter()
            .map(|id| graph.node(id).name.clone())
            .collect()
    };
    assert_eq!(
        names(graph.placeholders()),
        ["x"],
        "only the pixels are fed"
    );
    assert_eq!(names(graph.outputs().to_vec()), ["probs", "class"]);
    let mut vars = names(graph.variables());
    vars.sort();
    // The trained weights and nothing else: no optimizer moments or step.
    assert_eq!(
        vars,
        ["fc1/bias", "fc1/weight", "fc2/bias", "fc2/weight"],
        "variables"
    );
    for what in ["train", "loss", "y"] {
        assert!(
            graph.find(what).is_err(),
            "the example model still holds the training node '{what}'"
        );
    }
}

#[test]
fn the_shipped_digit_is_a_confident_zero() {
    let digit = kiln::npy::read(repo("examples/digit.npy")).unwrap();
    let s = Session::new(&model(), Device::Cpu).unwrap();
    let out = s.run(&[("x", &digit)], &["class", "probs"]).unwrap();
    assert_eq!(out[0].as_slice::<i64>().unwrap(), &[0], "predicted class");
    let probs = out[1].as_slice::<f32>().unwrap();
    assert!(
        probs[0] > 0.9,
        "probability of 0 only {}: {probs:?}",
        probs[0]
    );
}

#[test]
fn the_example_model_gets_the_held_out_digits_right() {
    let (pixels, labels) =
        kiln::datasets::digits(&repo("examples/data/digits/digits.csv.gz")).unwrap();
    let (_, held_out) = kiln::datasets::digits_split(labels.len());
    let x: Vec<f32> = held_out
        .iter()
        .flat_map(|&i| pixels[i * 64..(i + 1) * 64].to_vec())
        .collect();
    let y: Vec<i64> = held_out.iter().map(|&i| labels[i]).collect();
    let x = Array::from_vec(vec![held_out.len(), 64], x).unwrap();
    let y = Array::from_vec(vec![held_out.len()], y).unwrap();
    let s = Session::new(&model(), Device::Cpu).unwrap();
    let class = s.run(&[("x", &x)], &["class"]).unwrap().remove(0);
    let right = kiln::datasets::count_matches(&class, &y).unwrap();
    let acc = right as f64 / held_out.len() as f64;
    println!(
        "held-out accuracy {:.2}% ({right} of {})",
        100.0 * acc,
        held_out.len()
    );
    assert!(acc >= 0.95, "held-out accuracy {:.2}%", 100.0 * acc);
}

//! Training modes: batch norm that normalizes with the batch's statistics
//! in training and the running ones in inference, dropout, and variables
//! that optimizers leave alone (statistics, counters).
//!
//! The main check is external: a small CNN with a train-mode batch norm
//! follows PyTorch's loss curve over 100 SGD steps
//! (`tests/fixtures/bn_cnn.json`, written by `scripts/gen-bn-fixture.py`
//! in float64), ends with PyTorch's running statistics and eval-mode
//! logits, and the same CNN trained the old way (inference-form batch norm
//! whose statistics `minimize` trained as weights) does not get there.

use kiln::graph::{
    sparse_softmax_cross_entropy, BatchNormOptions, Conv2dOptions, Op, Optimizer, Shape, Tensor,
};
use kiln::prelude::*;
use serde_json::Value;

/// The PyTorch run: inputs, initial weights and what came out.
struct Fixture(Value);

impl Fixture {
    fn load() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bn_cnn.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Fixture(serde_json::from_str(&text).unwrap())
    }

    fn floats(&self, key: &str) -> Vec<f64> {
        self.0[key]
            .as_array()
            .unwrap_or_else(|| panic!("fixture has no list '{key}'"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    }

    fn num(&self, key: &str) -> f64 {
        self.0[key].as_f64().unwrap()
    }

    fn usize(&self, key: &str) -> usize {
        self.0[key].as_u64().unwrap() as usize
    }

    /// The float list `key` as an array of `dtype` and `shape`.
    fn array(&self, key: &str, dtype: DType, shape: &[usize]) -> Array {
        floats(dtype, shape, &self.floats(key))
    }

    fn labels(&self) -> Array {
        let v: Vec<i64> = self.0["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        Array::from_vec(vec![v.len()], v).unwrap()
    }
}

fn floats(dtype: DType, shape: &[usize], v: &[f64]) -> Array {
    assert_eq!(v.len(), shape.iter().product::<usize>());
    match dtype {
        DType::F32 => Array::from_vec(shape, v.iter().map(|&x| x as f32).collect()).unwrap(),
        DType::F64 => Array::from_vec(shape, v.to_vec()).unwrap(),
        other => panic!("no float arrays of {other}"),
    }
}

fn values(a: &Array) -> Vec<f64> {
    a.to_f64_vec()
}

/// The reference, the CPU backend, and a GPU where one is lent.
fn devices() -> Vec<Device> {
    let mut d = vec![Device::Reference, Device::Cpu];
    if kiln_codegen::cuda::CudaDevice::open(0).is_ok() {
        d.push(Device::Cuda(0));
    } else {
        eprintln!("no CUDA GPU on this machine: checking the reference and the CPU only");
    }
    d
}

/// How the CNN normalizes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    /// `batch_norm_with_training`, mode fed through the `training` placeholder.
    Train,
    /// The bug this file guards against: the inference form, with the
    /// running mean and variance ordinary trainable variables, so
    /// `minimize` moves them by their gradients.
    StatisticsAsWeights,
}

/// The fixture's CNN in `dtype`: `logits`, mean cross-entropy `loss` and
/// the fixture's SGD as the train op `train`.
fn cnn(fx: &Fixture, dtype: DType, norm: Norm) -> Graph {
    let (c, size, classes) = (fx.usize("channels"), fx.usize("size"), fx.usize("classes"));
    let fc_in = c * (size / 2) * (size / 2);
    let g = GraphBuilder::new();
    // A fixed batch: the gradient of conv2d's weight needs one.
    let x = g
        .placeholder("x", dtype, [fx.usize("batch"), 1, size, size])
        .unwrap();
    let y = g.placeholder("y", DType::I64, [fx.usize("batch")]).unwrap();
    let w = g
        .variable("conv/weight", fx.array("conv_weight", dtype, &[c, 1, 3, 3]))
        .unwrap();
    let b = g
        .variable("conv/bias", fx.array("conv_bias", dtype, &[c, 1, 1]))
        .unwrap();
    let h = x
        .conv2d(w, Conv2dOptions::default().padding(1))
        .unwrap()
        .add(b)
        .unwrap();
    let eps = fx.num("eps");
    let h = match norm {
        Norm::Train => {
            let training = g
                .placeholder("training", DType::Bool, Shape::scalar())
                .unwrap();
            let opts = BatchNormOptions {
                eps,
                momentum: fx.num("bn_momentum"),
            };
            g.batch_norm_with_training("bn", h, training, opts).unwrap()
        }
        Norm::StatisticsAsWeights => {
            let v = |name: &str, fill: f64| {
                g.variable(name, Array::filled(dtype, &[c, 1, 1], fill))
                    .unwrap()
            };
            let (gamma, beta, mean, var) = (
                v("bn/gamma", 1.0),
                v("bn/beta", 0.0),
                v("bn/mean", 0.0),
                v("bn/var", 1.0),
            );
            let k = var.add(eps).unwrap().rsqrt().unwrap().mul(gamma).unwrap();
            h.sub(mean).unwrap().mul(k).unwrap().add(beta).unwrap()
        }
    };
    let h = g.max_pool2d(h.relu().unwrap(), 2, 2, 0).unwrap();
    // The fixture's linear weight is PyTorch's [out, in]; kiln's is [in, out].
    let out_in = fx.floats("fc_weight_out_in");
    let in_out: Vec<f64> = (0..fc_in * classes)
        .map(|i| out_in[(i % classes) * fc_in + i / classes])
        .collect();
    let fc_w = g
        .variable("fc/weight", floats(dtype, &[fc_in, classes], &in_out))
        .unwrap();
    let fc_b = g
        .variable("fc/bias", fx.array("fc_bias", dtype, &[classes]))
        .unwrap();
    let logits = h
        .flatten()
        .unwrap()
        .matmul(fc_w)
        .unwrap()
        .add(fc_b)
        .unwrap()
        .named("logits")
        .unwrap();
    let loss = sparse_softmax_cross_entropy(logits, y)
        .unwrap()
        .mean(&[0], false)
        .unwrap()
        .named("loss")
        .unwrap();
    let opt = match fx.num("momentum") {
        0.0 => Optimizer::sgd(fx.num("lr")),
        m => Optimizer::momentum(fx.num("lr"), m),
    };
    g.minimize(loss, opt).unwrap().named("train").unwrap();
    g.into_graph()
}

/// What a training run ends with.
struct Trained {
    losses: Vec<f64>,
    session: Session,
}

/// Trains `graph` for the fixture's steps on its batch, recording the loss
/// of each step (before its update, as PyTorch's curve).
fn train(fx: &Fixture, graph: &Graph, dtype: DType, device: Device) -> Trained {
    let (n, size) = (fx.usize("batch"), fx.usize("size"));
    let x = fx.array("x", dtype, &[n, 1, size, size]);
    let y = fx.labels();
    let on = Array::scalar(true);
    let mut feeds = vec![("x", &x), ("y", &y)];
    if graph.find("training").is_ok() {
        feeds.push(("training", &on));
    }
    let session = Session::new(graph, device).unwrap();
    if graph.find("training").is_ok() {
        // Compile the eval-mode program before training: it must read the
        // statistics the train op assigns, not freeze their first values.
        let off = Array::scalar(false);
        session
            .run(&[("x", &x), ("training", &off)], &["logits"])
            .unwrap();
    }
    let losses = (0..fx.usize("steps"))
        .map(|_| values(&session.run(&feeds, &["loss", "train"]).unwrap()[0])[0])
        .collect();
    Trained { losses, session }
}

/// Eval-mode logits of `x` (the fixture's list `key`, `rows` images).
fn eval_logits(fx: &Fixture, t: &mut Trained, dtype: DType, key: &str, rows: usize) -> Vec<f64> {
    let size = fx.usize("size");
    let x = fx.array(key, dtype, &[rows, 1, size, size]);
    let off = Array::scalar(false);
    values(
        &t.session
            .run(&[("x", &x), ("training", &off)], &["logits"])
            .unwrap()[0],
    )
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise (naming the
/// worst element if not) and prints the largest differences seen.
fn close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0, 0.0f64);
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        let ratio = if d.is_nan() {
            f64::INFINITY
        } else {
            d / (atol + rtol * w.abs())
        };
        if ratio > worst.1 {
            worst = (i, ratio);
        }
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / w.abs());
    }
    println!("  {what}: largest |diff| {max_abs:.2e}, largest relative {max_rel:.2e}");
    let i = worst.0;
    assert!(
        worst.1 <= 1.0,
        "{what}: element {i} is {} against {} (|diff| {:.3e}, allowed {:.3e})",
        got[i],
        want[i],
        (got[i] - want[i]).abs(),
        atol + rtol * want[i].abs()
    );
}

/// Tolerances of a run against PyTorch's float64 one.
struct Tolerance {
    /// Relative, on each of the first 10 losses (before rounding
    /// differences compound over the steps).
    first_steps: f64,
    /// Relative, on every loss of the curve (the final one included).
    curve: f64,
    /// Relative and absolute, on the running statistics and the eval-mode
    /// logits after the last step.
    state: f64,
}

/// Checks a trained CNN against PyTorch: losses step by step, running
/// statistics, eval-mode logits on the training batch and a held-out one.
fn check_against_pytorch(fx: &Fixture, t: &mut Trained, dtype: DType, tol: Tolerance) {
    println!("{dtype} against PyTorch (float64):");
    let want = fx.floats("losses");
    close(
        "losses, first 10 steps",
        &t.losses[..10],
        &want[..10],
        tol.first_steps,
        0.0,
    );
    close("losses", &t.losses, &want, tol.curve, 0.0);
    let c = fx.usize("channels");
    for key in ["mean", "var"] {
        let got = values(&t.session.variable(&format!("bn/{key}")).unwrap());
        assert_eq!(got.len(), c);
        let want = fx.floats(&format!("running_{key}"));
        close(&format!("running {key}"), &got, &want, tol.state, tol.state);
    }
    let (n, held) = (fx.usize("batch"), fx.usize("held_out"));
    let logits = eval_logits(fx, t, dtype, "x", n);
    let want = fx.floats("eval_logits");
    close("eval-mode logits", &logits, &want, tol.state, tol.state);
    let logits = eval_logits(fx, t, dtype, "x_held_out", held);
    let want = fx.floats("held_out_logits");
    close(
        "held-out eval-mode logits",
        &logits,
        &want,
        tol.state,
        tol.state,
    );
}

#[test]
fn cnn_with_train_mode_batch_norm_follows_pytorch() {
    let fx = Fixture::load();
    let graph = cnn(&fx, DType::F32, Norm::Train);
    let mut t = train(&fx, &graph, DType::F32, Device::Cpu);
    let want = fx.floats("losses");
    println!(
        "float32, CPU: loss {:.6} -> {:.6} (PyTorch, float64: {:.6} -> {:.6})",
        t.losses[0],
        t.losses.last().unwrap(),
        want[0],
        want.last().unwrap()
    );
    // Measured on an AVX-512 host: 3e-6 over the first steps, 2e-5 over
    // the curve; the tolerances leave room for other hosts' kernels.
    let tol = Tolerance {
        first_steps: 1e-4,
        curve: 1e-3,
        state: 1e-3,
    };
    check_against_pytorch(&fx, &mut t, DType::F32, tol);
}

#[test]
fn cnn_in_float64_matches_pytorch_to_rounding() {
    let fx = Fixture::load();
    let graph = cnn(&fx, DType::F64, Norm::Train);
    let mut t = train(&fx, &graph, DType::F64, Device::Cpu);
    // Measured: 1e-14 over the curve.
    let tol = Tolerance {
        first_steps: 1e-12,
        curve: 1e-10,
        state: 1e-10,
    };
    check_against_pytorch(&fx, &mut t, DType::F64, tol);
}

/// The reference interpreter and the compiled backends train the CNN
/// alike: float32 losses within 1e-4 relative at every step (measured:
/// 1.5e-5), and the trained variables within 1e-3 relative plus 1e-5.
#[test]
fn devices_train_the_cnn_alike() {
    let fx = Fixture::load();
    let graph = cnn(&fx, DType::F32, Norm::Train);
    let reference = train(&fx, &graph, DType::F32, Device::Reference);
    for device in devices().into_iter().skip(1) {
        println!("{device} against the reference:");
        let t = train(&fx, &graph, DType::F32, device);
        close("losses", &t.losses, &reference.losses, 1e-4, 0.0);
        for name in ["bn/mean", "bn/var", "bn/gamma", "conv/weight", "fc/weight"] {
            close(
                name,
                &values(&t.session.variable(name).unwrap()),
                &values(&reference.session.variable(name).unwrap()),
                1e-3,
                1e-5,
            );
        }
    }
}

#[test]
fn statistics_trained_as_weights_do_not_reach_pytorch() {
    let fx = Fixture::load();
    let graph = cnn(&fx, DType::F32, Norm::StatisticsAsWeights);
    let t = train(&fx, &graph, DType::F32, Device::Cpu);
    let want = *fx.floats("losses").last().unwrap();
    let got = *t.losses.last().unwrap();
    println!("statistics as weights: final loss {got} against PyTorch's {want}");
    assert!(
        got.is_nan() || got > 10.0 * want,
        "the old batch norm reached {got}, PyTorch {want}"
    );
}

#[test]
fn running_statistics_move_only_with_the_train_op_in_training_mode() {
    let fx = Fixture::load();
    let graph = cnn(&fx, DType::F32, Norm::Train);
    let (n, size) = (fx.usize("batch"), fx.usize("size"));
    let x = fx.array("x", DType::F32, &[n, 1, size, size]);
    let y = fx.labels();
    let (on, off) = (Array::scalar(true), Array::scalar(false));
    for device in devices() {
        let s = Session::new(&graph, device).unwrap();
        let stats = |s: &Session| {
            let mut v = values(&s.variable("bn/mean").unwrap());
            v.extend(values(&s.variable("bn/var").unwrap()));
            v
        };
        let start = stats(&s);
        assert_eq!(start, [vec![0.0; 8], vec![1.0; 8]].concat());
        // Fetching outputs, in either mode, leaves the statistics alone.
        s.run(&[("x", &x), ("y", &y), ("training", &on)], &["loss"])
            .unwrap();
        s.run(&[("x", &x), ("training", &off)], &["logits"])
            .unwrap();
        assert_eq!(stats(&s), start, "{device}");
        // A train step in inference mode updates weights, not statistics.
        s.run(&[("x", &x), ("y", &y), ("training", &off)], &["train"])
            .unwrap();
        assert_eq!(stats(&s), start, "{device}");
        assert_ne!(
            values(&s.variable("conv/weight").unwrap()),
            fx.floats("conv_weight")
                .iter()
                .map(|&v| v as f32 as f64)
                .collect::<Vec<_>>()
        );
        // A train step in training mode moves them by the momentum rule:
        // 0.9 * old + 0.1 * batch mean (biased var scaled by k/(k-1)).
        s.run(&[("x", &x), ("y", &y), ("training", &on)], &["train"])
            .unwrap();
        let moved = stats(&s);
        assert!(
            moved.iter().zip(&start).all(|(a, b)| a != b),
            "{device}: {moved:?}"
        );
    }
}

#[test]
fn batch_norm_statistics_follow_pytorch_formulas() {
    // One step on a known batch: the output uses the biased variance, the
    // running variance the unbiased one.
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F64, shape!["batch", 2]).unwrap();
    let training = g
        .placeholder("training", DType::Bool, Shape::scalar())
        .unwrap();
    let y = g
        .batch_norm_with_training("bn", x, training, BatchNormOptions::default())
        .unwrap()
        .named("y")
        .unwrap();
    let update = g.group(&g.updates_for(y)).unwrap().named("update").unwrap();
    assert_eq!(g.updates_for(y).len(), 2);
    let _ = update;
    let graph = g.into_graph();
    // Channel 0: 1, 2, 3, 6 (mean 3, biased var 3.5, unbiased 14/3);
    // channel 1: all 5 (var 0).
    let xs = Array::from_vec(vec![4, 2], vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 6.0, 5.0]).unwrap();
    let on = Array::scalar(true);
    for device in devices() {
        let s = Session::new(&graph, device).unwrap();
        let out = s
            .run(&[("x", &xs), ("training", &on)], &["y", "update"])
            .unwrap();
        let sd = (3.5f64 + 1e-5).sqrt();
        let want = [-2.0 / sd, 0.0, -1.0 / sd, 0.0, 0.0, 0.0, 3.0 / sd, 0.0];
        close(
            &format!("{device}: y"),
            &values(&out[0]),
            &want,
            1e-12,
            1e-12,
        );
        close(
            &format!("{device}: running mean"),
            &values(&s.variable("bn/mean").unwrap()),
            &[0.3, 0.5],
            1e-12,
            1e-12,
        );
        close(
            &format!("{device}: running var"),
            &values(&s.variable("bn/var").unwrap()),
            &[0.9 + 0.1 * 14.0 / 3.0, 0.9],
            1e-12,
            1e-12,
        );
        // Inference mode normalizes with the running statistics.
        let off = Array::scalar(false);
        let out = s.run(&[("x", &xs), ("training", &off)], &["y"]).unwrap();
        let (m, v) = ([0.3, 0.5], [0.9 + 0.1 * 14.0 / 3.0, 0.9]);
        let want: Vec<f64> = values(&xs)
            .iter()
            .enumerate()
            .map(|(i, x)| (x - m[i % 2]) / (v[i % 2] + 1e-5f64).sqrt())
            .collect();
        close(
            &format!("{device}: inference y"),
            &values(&out[0]),
            &want,
            1e-12,
            1e-12,
        );
    }
}

#[test]
fn a_constant_mode_builds_only_that_mode() {
    let build = |mode: bool| {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape!["batch", 3, 4, 4])
            .unwrap();
        let training = g.constant(Array::scalar(mode)).unwrap();
        let y = g
            .batch_norm_with_training("bn", x, training, BatchNormOptions::default())
            .unwrap();
        let y = g.dropout("drop", y, 0.5, training).unwrap();
        let updates = g.updates_for(y).len();
        let graph = g.into_graph();
        let selects = graph
            .topo_order()
            .into_iter()
            .filter(|&n| matches!(graph.node(n).op, Op::Select))
            .count();
        (updates, selects, graph.find("drop/step").is_ok())
    };
    // Inference: no updates, no dropout, nothing to choose between.
    assert_eq!(build(false), (0, 0, false));
    // Training: two statistics and the dropout step; one select, the mask.
    assert_eq!(build(true), (3, 1, true));
}

#[test]
fn minimize_skips_non_trainable_variables() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape!["batch", 3]).unwrap();
    let training = g
        .placeholder("training", DType::Bool, Shape::scalar())
        .unwrap();
    let h = g.dense("fc", x, 4, Activation::Identity).unwrap();
    let h = g
        .batch_norm_with_training("bn", h, training, BatchNormOptions::default())
        .unwrap();
    let scale = g
        .non_trainable_variable("scale", Array::scalar(2.0f32))
        .unwrap();
    let loss = h.mul(scale).unwrap().sum_all().unwrap();
    let names = |ts: Vec<Tensor<'_>>| ts.iter().map(|t| t.name()).collect::<Vec<_>>();
    assert_eq!(
        names(g.trainable_variables(loss).unwrap()),
        ["fc/weight", "fc/bias", "bn/gamma", "bn/beta"]
    );
    assert!(!scale.is_trainable() && !g.get("bn/mean").unwrap().is_trainable());
    assert!(g.get("bn/gamma").unwrap().is_trainable());
    // Gradients with an explicit list still reach statistics.
    let d = g.gradients(loss, &[scale]).unwrap()[0];
    assert_eq!(d.dtype(), DType::F32);
    let train = g.minimize(loss, Optimizer::adam(0.1)).unwrap();
    let graph = g.graph();
    // The train op assigns the four weights, Adam's state and step, and
    // the two statistics, and never `scale`.
    let assigned: Vec<String> = graph
        .ancestors(&[train.id()])
        .into_iter()
        .filter(|&n| matches!(graph.node(n).op, Op::Assign))
        .map(|n| graph.node(graph.inputs(n)[0]).name.clone())
        .collect();
    for v in [
        "fc/weight",
        "bn/beta",
        "bn/mean",
        "bn/var",
        "optimizer/step",
    ] {
        assert!(assigned.iter().any(|a| a == v), "{v} not in {assigned:?}");
    }
    assert!(!assigned.iter().any(|a| a == "scale"), "{assigned:?}");
    // Optimizer state is not trainable either.
    assert!(!g.get("optimizer/fc/weight/adam_m").unwrap().is_trainable());
    // A loss that depends only on statistics has nothing to train.
    let only_stats = scale.mul(3.0).unwrap();
    let e = g
        .minimize(only_stats, Optimizer::sgd(0.1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no float variable that is trainable"), "{e}");
}

#[test]
fn the_trainable_flag_round_trips_through_files() {
    let g = GraphBuilder::new();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 2, 3])
        .unwrap();
    let training = g
        .placeholder("training", DType::Bool, Shape::scalar())
        .unwrap();
    let y = g
        .batch_norm_with_training("bn", x, training, BatchNormOptions::default())
        .unwrap();
    g.output(y).unwrap();
    let graph = g.into_graph();
    let dir = std::env::temp_dir().join(format!("kiln-train-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bn.kiln");
    graph.save(&path).unwrap();
    let back = Graph::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    for (name, trainable) in [
        ("bn/gamma", true),
        ("bn/beta", true),
        ("bn/mean", false),
        ("bn/var", false),
    ] {
        let op = &back.node(back.find(name).unwrap()).op;
        assert!(
            matches!(op, Op::Variable { trainable: t, .. } if *t == trainable),
            "{name}: {op:?}"
        );
    }
    // The flag is written only when false, so a variable from a file
    // written before it existed reads as trainable.
    let old: Op = serde_json::from_value(serde_json::json!({"op": "variable"})).unwrap();
    assert!(matches!(
        old,
        Op::Variable {
            trainable: true,
            ..
        }
    ));
    let written = serde_json::to_value(&back.node(back.find("bn/mean").unwrap()).op).unwrap();
    assert_eq!(
        written,
        serde_json::json!({"op": "variable", "trainable": false})
    );
    let written = serde_json::to_value(&back.node(back.find("bn/gamma").unwrap()).op).unwrap();
    assert_eq!(written, serde_json::json!({"op": "variable"}));
}

/// A dropout graph over `[batch, 256]` with its update op grouped as `step`.
fn dropout_graph(rate: f64) -> Graph {
    let g = GraphBuilder::with_seed(3);
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 256])
        .unwrap();
    let training = g
        .placeholder("training", DType::Bool, Shape::scalar())
        .unwrap();
    let y = g
        .dropout("drop", x, rate, training)
        .unwrap()
        .named("y")
        .unwrap();
    g.group(&g.updates_for(y)).unwrap().named("step").unwrap();
    // d sum(y * c) / dx for a fixed c: the mask, scaled, times c.
    let c = g.random_uniform(DType::F32, [256], 9, 1.0, 2.0).unwrap();
    let loss = y.mul(c).unwrap().sum_all().unwrap();
    let dx = g.gradients(loss, &[x]).unwrap()[0].named("dx").unwrap();
    let _ = dx;
    c.named("c").unwrap();
    g.into_graph()
}

#[test]
fn dropout_masks_and_scales_in_training_and_is_identity_in_inference() {
    let rate = 0.3;
    let graph = dropout_graph(rate);
    let rows = 64;
    let xs: Vec<f32> = (0..rows * 256).map(|i| 1.0 + (i % 7) as f32).collect();
    let x = Array::from_vec(vec![rows, 256], xs.clone()).unwrap();
    let (on, off) = (Array::scalar(true), Array::scalar(false));
    let scale = (1.0 / (1.0 - rate)) as f32;
    let mut masks_by_device = Vec::new();
    for device in devices() {
        let s = Session::new(&graph, device).unwrap();
        // Inference: exactly the input, and a gradient of exactly c.
        let out = s
            .run(&[("x", &x), ("training", &off)], &["y", "dx", "c"])
            .unwrap();
        assert_eq!(out[0], x, "{device}");
        let c = out[2].as_slice::<f32>().unwrap().to_vec();
        let dx = out[1].as_slice::<f32>().unwrap();
        assert!(dx.iter().enumerate().all(|(i, &d)| d == c[i % 256]));
        let mut masks = Vec::new();
        for step in 0..4 {
            let out = s
                .run(&[("x", &x), ("training", &on)], &["y", "dx", "step"])
                .unwrap();
            let y = out[0].as_slice::<f32>().unwrap();
            let dx = out[1].as_slice::<f32>().unwrap();
            let mask: Vec<bool> = y.iter().map(|&v| v != 0.0).collect();
            // Kept elements are scaled by 1 / (1 - rate), dropped ones zero,
            // and the gradient flows through the kept ones alike.
            for i in 0..y.len() {
                let want = if mask[i] { xs[i] * scale } else { 0.0 };
                assert_eq!(y[i], want, "{device} step {step} element {i}");
                let want = if mask[i] { scale * c[i % 256] } else { 0.0 };
                assert_eq!(dx[i], want, "{device} step {step} element {i}");
            }
            let dropped = mask.iter().filter(|&&k| !k).count() as f64 / mask.len() as f64;
            // 16384 draws: the standard error of the rate is 0.0036.
            assert!(
                (dropped - rate).abs() < 0.015,
                "{device} step {step}: dropped {dropped}"
            );
            let mean: f64 = y.iter().map(|&v| v as f64).sum::<f64>()
                / xs.iter().map(|&v| v as f64).sum::<f64>();
            assert!((mean - 1.0).abs() < 0.03, "{device}: mean ratio {mean}");
            masks.push(mask);
        }
        // Each train step draws a new mask, independent of the last: two
        // masks agree where both keep or both drop, 0.7^2 + 0.3^2 = 0.58.
        for w in masks.windows(2) {
            let agree =
                w[0].iter().zip(&w[1]).filter(|(a, b)| a == b).count() as f64 / w[0].len() as f64;
            assert!(
                (agree - 0.58).abs() < 0.02,
                "{device}: masks agree on {agree}"
            );
        }
        // Neighbouring elements are independent too.
        let m = &masks[0];
        let agree = m.windows(2).filter(|p| p[0] == p[1]).count() as f64 / (m.len() - 1) as f64;
        assert!(
            (agree - 0.58).abs() < 0.02,
            "{device}: neighbours agree on {agree}"
        );
        // Without the update op, the mask stays.
        let a = s.run(&[("x", &x), ("training", &on)], &["y"]).unwrap();
        let b = s.run(&[("x", &x), ("training", &on)], &["y"]).unwrap();
        assert_eq!(a, b);
        masks_by_device.push(masks);
    }
    // Every device draws the same masks.
    for (device, masks) in devices().iter().zip(&masks_by_device).skip(1) {
        assert!(*masks == masks_by_device[0], "{device} draws other masks");
    }
}

#[test]
fn dropout_checks_its_arguments() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [4]).unwrap();
    let flag = g.placeholder("flag", DType::F32, Shape::scalar()).unwrap();
    let training = g
        .placeholder("training", DType::Bool, Shape::scalar())
        .unwrap();
    let e = g.dropout("d", x, 0.5, flag).unwrap_err().to_string();
    assert!(e.contains("bool scalar"), "{e}");
    let e = g.dropout("d", x, 1.0, training).unwrap_err().to_string();
    assert!(e.contains("rate in [0, 1)"), "{e}");
    let e = g
        .batch_norm_with_training("bn", x, flag, BatchNormOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[n, c, ...]"), "{e}");
}

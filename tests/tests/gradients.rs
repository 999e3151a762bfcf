//! Gradients of every primitive op and of the composite layers, checked
//! against central finite differences in f64 on the reference interpreter:
//! `|analytic - numeric| <= 1e-6 + 1e-5 |numeric|` with step 1e-6.

use kiln::graph::{SliceAxis, Tensor};
use kiln::prelude::*;

fn values(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n as u64)
        .map(|i| lo + (hi - lo) * kiln::graph::rng::uniform_f64(seed, i))
        .collect();
    Array::from_vec(shape.to_vec(), v).unwrap()
}

/// Checks the gradient of `sum(f(inputs) * w)` for a fixed random `w`.
fn check(
    name: &str,
    inputs: Vec<Array>,
    f: impl for<'g> Fn(&'g GraphBuilder, &[Tensor<'g>]) -> Tensor<'g>,
) {
    let g = GraphBuilder::new();
    let ps: Vec<Tensor<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            g.placeholder(&format!("p{i}"), DType::F64, a.shape().to_vec())
                .unwrap()
        })
        .collect();
    let y = f(&g, &ps);
    let ys: Vec<usize> = y.shape().as_fixed().unwrap();
    let w = g.constant(values(&ys, 99, -1.0, 1.0)).unwrap();
    let loss = y.mul(w).unwrap().sum_all().unwrap().named("loss").unwrap();
    let grads = g
        .gradients(loss, &ps)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let names: Vec<String> = grads
        .iter()
        .enumerate()
        .map(|(i, t)| t.named(&format!("grad{i}")).unwrap().name())
        .collect();
    let mut s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let run = |s: &mut Session, xs: &[Array], fetch: &[&str]| -> Vec<Array> {
        let feeds: Vec<(String, &Array)> = xs
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("p{i}"), a))
            .collect();
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        s.run(&refs, fetch)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let fetch: Vec<&str> = names.iter().map(String::as_str).collect();
    let analytic = run(&mut s, &inputs, &fetch);
    // The compiled CPU backend computes the same gradients.
    let mut cpu = Session::new(s.graph(), Device::Cpu).unwrap();
    for (want, got) in analytic.iter().zip(run(&mut cpu, &inputs, &fetch)) {
        kiln_tests::compare(want, &got).unwrap_or_else(|e| panic!("{name} on cpu: {e}"));
    }
    let eps = 1e-6;
    for (i, a) in inputs.iter().enumerate() {
        let base = a.as_slice::<f64>().unwrap().to_vec();
        let got = analytic[i].as_slice::<f64>().unwrap();
        for j in 0..base.len() {
            let mut at = |d: f64| {
                let mut v = base.clone();
                v[j] += d;
                let mut xs = inputs.clone();
                xs[i] = Array::from_vec(a.shape().to_vec(), v).unwrap();
                run(&mut s, &xs, &["loss"])[0].as_slice::<f64>().unwrap()[0]
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            let err = (got[j] - numeric).abs();
            assert!(
                err <= 1e-6 + 1e-5 * numeric.abs(),
                "{name}: d/d input {i}[{j}]: analytic {} vs numeric {numeric}",
                got[j]
            );
        }
    }
}

#[test]
fn unary_ops() {
    let x = || vec![values(&[2, 3], 1, 0.2, 1.5)];
    let xs = || vec![values(&[2, 3], 2, -1.5, 1.5)];
    check("neg", xs(), |_, p| p[0].neg().unwrap());
    check("abs", xs(), |_, p| p[0].abs().unwrap());
    check("exp", xs(), |_, p| p[0].exp().unwrap());
    check("log", x(), |_, p| p[0].log().unwrap());
    check("sqrt", x(), |_, p| p[0].sqrt().unwrap());
    check("rsqrt", x(), |_, p| p[0].rsqrt().unwrap());
    check("recip", x(), |_, p| p[0].recip().unwrap());
    check("sin", xs(), |_, p| p[0].sin().unwrap());
    check("cos", xs(), |_, p| p[0].cos().unwrap());
    check("tanh", xs(), |_, p| p[0].tanh().unwrap());
    check("sigmoid", xs(), |_, p| p[0].sigmoid().unwrap());
    check("erf", xs(), |_, p| p[0].erf().unwrap());
    // Piecewise-constant ops have zero gradient.
    check("floor+x", xs(), |_, p| {
        p[0].floor().unwrap().add(p[0]).unwrap()
    });
    check("round*sign", xs(), |_, p| {
        p[0].round()
            .unwrap()
            .mul(p[0].sign().unwrap())
            .unwrap()
            .add(p[0])
            .unwrap()
    });
}

#[test]
fn binary_ops_with_broadcasting() {
    let ab = || vec![values(&[3, 1], 3, 0.5, 2.0), values(&[1, 4], 4, 0.5, 2.0)];
    check("add", ab(), |_, p| p[0].add(p[1]).unwrap());
    check("sub", ab(), |_, p| p[0].sub(p[1]).unwrap());
    check("mul", ab(), |_, p| p[0].mul(p[1]).unwrap());
    check("div", ab(), |_, p| p[0].div(p[1]).unwrap());
    check("pow", ab(), |_, p| p[0].pow(p[1]).unwrap());
    check("maximum", ab(), |_, p| p[0].maximum(p[1]).unwrap());
    check("minimum", ab(), |_, p| p[0].minimum(p[1]).unwrap());
    check(
        "rank-extended",
        vec![values(&[2, 3, 4], 5, -1.0, 1.0), values(&[4], 6, -1.0, 1.0)],
        |_, p| p[0].mul(p[1]).unwrap(),
    );
    check(
        "scalar",
        vec![values(&[], 7, 0.5, 1.0), values(&[2, 2], 8, -1.0, 1.0)],
        |_, p| p[1].div(p[0]).unwrap(),
    );
    check(
        "select",
        vec![values(&[2, 3], 9, -1.0, 1.0), values(&[3], 10, -1.0, 1.0)],
        |g, p| {
            let c = p[0].gt(0.0).unwrap();
            g.select(c, p[0], p[1]).unwrap()
        },
    );
    check(
        "cast round trip",
        vec![values(&[4], 11, -1.0, 1.0)],
        |_, p| p[0].mul(p[0]).unwrap().cast(DType::F64).unwrap(),
    );
}

#[test]
fn reductions() {
    let x = || vec![values(&[2, 3, 4], 12, 0.5, 2.0)];
    check("sum", x(), |_, p| p[0].sum(&[1], false).unwrap());
    check("sum keepdims 2 axes", x(), |_, p| {
        p[0].sum(&[0, 2], true).unwrap()
    });
    check("sum all", x(), |_, p| p[0].sum_all().unwrap());
    check("mean", x(), |_, p| p[0].mean(&[-1], false).unwrap());
    check("prod", x(), |_, p| p[0].prod(&[2], false).unwrap());
    check("max", x(), |_, p| p[0].max(&[1], true).unwrap());
    check("min", x(), |_, p| p[0].min(&[0, 2], false).unwrap());
}

#[test]
fn movement_ops() {
    let x = || vec![values(&[2, 3, 4], 13, -1.0, 1.0)];
    check("reshape", x(), |_, p| {
        p[0].reshape([6, 4])
            .unwrap()
            .mul(p[0].reshape([6, 4]).unwrap())
            .unwrap()
    });
    check("permute", x(), |_, p| {
        p[0].permute(&[2, 0, 1]).unwrap().exp().unwrap()
    });
    check("broadcast", vec![values(&[3, 1], 14, -1.0, 1.0)], |_, p| {
        p[0].broadcast_to([2, 3, 4]).unwrap().sin().unwrap()
    });
    check("slice", x(), |_, p| {
        p[0].slice_axis(2, 1, 3, 1).unwrap().exp().unwrap()
    });
    check("slice steps", x(), |_, p| {
        p[0].slice(&[
            SliceAxis::FULL,
            SliceAxis {
                start: 0,
                end: 3,
                step: 2,
            },
            SliceAxis {
                start: -1,
                end: i64::MIN,
                step: -3,
            },
        ])
        .unwrap()
        .exp()
        .unwrap()
    });
    check("pad", x(), |_, p| {
        p[0].pad(&[1, 0, 2], &[0, 1, 1], 3.0)
            .unwrap()
            .sin()
            .unwrap()
    });
    check(
        "concat",
        vec![
            values(&[2, 3], 15, -1.0, 1.0),
            values(&[2, 2], 16, -1.0, 1.0),
        ],
        |g, p| g.concat(&[p[0], p[1], p[0]], 1).unwrap().exp().unwrap(),
    );
}

#[test]
fn matmul() {
    check(
        "2-D",
        vec![
            values(&[3, 4], 17, -1.0, 1.0),
            values(&[4, 2], 18, -1.0, 1.0),
        ],
        |_, p| p[0].matmul(p[1]).unwrap(),
    );
    check(
        "batched broadcast",
        vec![
            values(&[2, 1, 3, 4], 19, -1.0, 1.0),
            values(&[3, 4, 2], 20, -1.0, 1.0),
        ],
        |_, p| p[0].matmul(p[1]).unwrap(),
    );
    check(
        "vector",
        vec![values(&[4], 21, -1.0, 1.0), values(&[4, 3], 22, -1.0, 1.0)],
        |_, p| p[0].matmul(p[1]).unwrap(),
    );
}

#[test]
fn conv2d() {
    let cases: [(&str, [usize; 4], [usize; 4], Conv2dOptions); 4] = [
        (
            "plain",
            [2, 2, 5, 5],
            [3, 2, 3, 3],
            Conv2dOptions::default(),
        ),
        (
            "stride+pad",
            [1, 2, 6, 5],
            [2, 2, 3, 2],
            Conv2dOptions {
                stride: [2, 1],
                padding: [1, 0, 2, 1],
                ..Default::default()
            },
        ),
        (
            "dilation",
            [1, 1, 7, 7],
            [2, 1, 2, 3],
            Conv2dOptions::default().dilation(2).padding(1),
        ),
        (
            "groups",
            [1, 4, 5, 4],
            [6, 2, 3, 3],
            Conv2dOptions::default().groups(2).stride(2).padding(1),
        ),
    ];
    for (name, xs, ws, opts) in cases {
        check(
            name,
            vec![values(&xs, 23, -1.0, 1.0), values(&ws, 24, -1.0, 1.0)],
            move |_, p| p[0].conv2d(p[1], opts).unwrap(),
        );
    }
}

#[test]
fn pooling() {
    use kiln::graph::Window2d;
    let x = || vec![values(&[1, 2, 6, 5], 25, -1.0, 1.0)];
    check("max 2x2", x(), |_, p| {
        p[0].max_pool2d(Window2d::square(2, 2, 0)).unwrap()
    });
    check("max 3x3 pad", x(), |_, p| {
        p[0].max_pool2d(Window2d::square(3, 2, 1)).unwrap()
    });
    let ceil = Window2d {
        kernel: [3, 2],
        stride: [2, 2],
        padding: [1, 0, 1, 1],
        dilation: [1, 2],
        ceil_mode: true,
    };
    check("max ceil dilated", x(), move |_, p| {
        p[0].max_pool2d(ceil).unwrap()
    });
    check("avg", x(), |_, p| {
        p[0].avg_pool2d(Window2d::square(3, 2, 1), false).unwrap()
    });
    check("avg count pad", x(), |_, p| {
        p[0].avg_pool2d(Window2d::square(3, 2, 1), true).unwrap()
    });
    check("avg ceil", x(), move |_, p| {
        p[0].avg_pool2d(ceil, true).unwrap()
    });
}

#[test]
fn gather_and_scatter() {
    check("gather", vec![values(&[5, 3], 26, -1.0, 1.0)], |g, p| {
        let idx = g
            .constant(Array::from_vec(vec![2, 2], vec![4i64, 0, -1, 2]).unwrap())
            .unwrap();
        p[0].gather(idx, 0).unwrap()
    });
    check(
        "scatter_add",
        vec![
            values(&[4, 3], 27, -1.0, 1.0),
            values(&[4, 2], 28, -1.0, 1.0),
        ],
        |g, p| {
            let idx = g
                .constant(Array::from_vec(vec![2], vec![2i64, 2]).unwrap())
                .unwrap();
            p[0].scatter_add(idx, p[1], 1).unwrap().exp().unwrap()
        },
    );
}

#[test]
fn layers() {
    let x = || vec![values(&[3, 5], 29, -2.0, 2.0)];
    check("softmax", x(), |_, p| p[0].softmax(-1).unwrap());
    check("log_softmax", x(), |_, p| p[0].log_softmax(-1).unwrap());
    check("gelu", x(), |_, p| p[0].gelu().unwrap());
    check("gelu_tanh", x(), |_, p| p[0].gelu_tanh().unwrap());
    check(
        "normalize",
        vec![
            values(&[3, 5], 30, -2.0, 2.0),
            values(&[5], 31, 0.5, 1.5),
            values(&[5], 32, -1.0, 1.0),
        ],
        |_, p| p[0].normalize(&[-1], p[1], p[2], 1e-5).unwrap(),
    );
    check(
        "cross entropy",
        vec![values(&[4, 3], 33, -2.0, 2.0)],
        |g, p| {
            let classes = g
                .constant(Array::from_vec(vec![4], vec![0i64, 2, 1, 2]).unwrap())
                .unwrap();
            kiln::graph::sparse_softmax_cross_entropy(p[0], classes).unwrap()
        },
    );
    check(
        "attention",
        vec![values(&[1, 3, 4], 34, -1.0, 1.0)],
        |g, p| g.multi_head_attention("attn", p[0], 2, true).unwrap(),
    );
}

#[test]
fn gradients_reject_non_float_outputs_and_reach_nothing_cleanly() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    let other = g.placeholder("other", DType::F32, [2]).unwrap();
    let i = x.argmax(0, false).unwrap();
    let e = g.gradients(i, &[x]).unwrap_err().to_string();
    assert!(e.contains("cannot differentiate a i64 value"), "{e}");
    let y = x.exp().unwrap().sum_all().unwrap();
    let name = g.gradients(y, &[other]).unwrap()[0].name();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let o = Array::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap();
    let out = s.run(&[("other", &o)], &[&name]);
    assert_eq!(out.unwrap()[0].as_slice::<f32>().unwrap(), &[0.0, 0.0]);
}

#[test]
fn control_flow() {
    // Both branches of a cond, each using the arguments differently; the
    // predicate comes from the data, far from its switching point.
    for (name, lo, hi) in [("cond/then", 0.5, 1.5), ("cond/else", -1.5, -0.5)] {
        check(
            name,
            vec![values(&[2, 3], 21, lo, hi), values(&[3], 22, -1.0, 1.0)],
            |g, p| {
                let pred = p[0].sum_all().unwrap().gt(0.0).unwrap();
                let r = g
                    .cond(
                        pred,
                        &[p[0], p[1]],
                        |_, a| Ok(vec![a[0].mul(a[1])?.exp()?, a[1]]),
                        |_, a| Ok(vec![a[0].sub(a[1])?.tanh()?, a[1].mul(a[1])?]),
                    )
                    .unwrap();
                r[0].add(r[1]).unwrap()
            },
        );
    }
    // An RNN-like loop with an integer counter, two float loop variables
    // that feed each other, and captured weights and sequence; both final
    // float variables reach the loss.
    check(
        "while",
        vec![
            values(&[2, 3], 23, -1.0, 1.0),
            values(&[3, 3], 24, -0.7, 0.7),
            values(&[4, 2, 3], 25, -1.0, 1.0),
            values(&[2, 3], 26, -0.5, 0.5),
        ],
        |g, p| {
            let t0 = g.scalar(0.0, DType::I64).unwrap();
            let r = g
                .while_loop(
                    &[t0, p[0], p[3]],
                    &[p[1], p[2]],
                    |_, v| v[0].lt(4i64),
                    |_, v| {
                        let xt = v[4].gather(v[0].reshape([1])?, 0)?.squeeze(0)?;
                        let h = v[1].matmul(v[3])?.add(xt)?.add(v[2])?.tanh()?;
                        let c = v[2].mul(0.5)?.add(v[1].mul(v[1])?)?;
                        Ok(vec![v[0].add(1i64)?, h, c])
                    },
                )
                .unwrap();
            r[1].add(r[2].mul(0.3).unwrap()).unwrap()
        },
    );
    // Control flow nested in a loop body: a cond picks the update by the
    // counter's parity.
    check(
        "while/nested-cond",
        vec![values(&[3], 28, -1.0, 1.0), values(&[3], 29, 0.5, 1.5)],
        |g, p| {
            let t0 = g.scalar(0.0, DType::I64).unwrap();
            g.while_loop(
                &[t0, p[0]],
                &[p[1]],
                |_, v| v[0].lt(3i64),
                |b, v| {
                    let even = v[0].div(2i64)?.mul(2i64)?.eq(v[0])?;
                    let x = b.cond(
                        even,
                        &[v[1], v[2]],
                        |_, a| Ok(vec![a[0].mul(a[1])?.sin()?]),
                        |_, a| Ok(vec![a[0].add(a[1])?.tanh()?]),
                    )?;
                    Ok(vec![v[0].add(1i64)?, x[0]])
                },
            )
            .unwrap()[1]
        },
    );
    // A loop stopped by its bound, not its (always true) condition.
    check(
        "while/bounded",
        vec![values(&[3], 30, -1.0, 1.0)],
        |g, p| {
            g.while_loop_at_most(
                3,
                &[p[0]],
                &[],
                |_, v| v[0].sum_all()?.gt(-1e9),
                |_, v| Ok(vec![v[0].sin()?.mul(1.1)?.add(v[0].mul(v[0])?)?]),
            )
            .unwrap()[0]
        },
    );
    // A loop that never runs passes its gradient straight through.
    check(
        "while/zero-trip",
        vec![values(&[3], 27, -1.0, 1.0)],
        |g, p| {
            g.while_loop(
                &[p[0]],
                &[],
                |_, v| v[0].sum_all()?.gt(100.0),
                |_, v| Ok(vec![v[0].exp()?]),
            )
            .unwrap()[0]
        },
    );
}

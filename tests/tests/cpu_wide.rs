//! Long f32 rows, which the CPU backend evaluates in the row code's blocks
//! (AVX-512 on hosts that have it, else AVX2), against the reference
//! interpreter: every op with a block form, broadcast operands, masks and
//! selects, in-place epilogues, reduction row maps, and row lengths around
//! the vector and block sizes. Each graph runs on every row path of the
//! host (`kiln_tests::row_paths`: the widest row code, the AVX2 row code
//! with AVX-512 off, and the 128-bit path with the row code off).

use kiln::prelude::*;
use kiln_tests::compare;

fn values(n: usize, seed: u32) -> Vec<f32> {
    // Deterministic values in about [-4, 4], with some exact zeros and ties.
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97);
            let v = (h % 8001) as f32 / 1000.0 - 4.0;
            if i % 37 == 0 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Builds `f(x, y)` for x, y of shape `[rows, n]`, runs it on the reference
/// and on the CPU (on every row path), and compares.
fn agree<F>(name: &str, rows: usize, n: usize, f: F)
where
    F: for<'g> Fn(&'g GraphBuilder, Tensor<'g>, Tensor<'g>) -> kiln::graph::Result<Tensor<'g>>,
{
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![rows, n]).unwrap();
    let y = g.placeholder("y", DType::F32, shape![rows, n]).unwrap();
    f(&g, x, y).unwrap().named("out").unwrap();
    let graph = g.into_graph();
    let xa = Array::from_vec(vec![rows, n], values(rows * n, 1)).unwrap();
    let ya = Array::from_vec(vec![rows, n], values(rows * n, 2)).unwrap();
    let run = |device: Device, opts: SessionOptions| {
        let s = Session::with_options(&graph, device, opts).unwrap();
        s.run(&[("x", &xa), ("y", &ya)], &["out"])
            .unwrap()
            .remove(0)
    };
    let want = run(Device::Reference, SessionOptions::default());
    for (path, opts) in kiln_tests::row_paths() {
        let got = run(Device::Cpu, opts);
        compare(&want, &got).unwrap_or_else(|e| panic!("{name} [{rows}, {n}] {path}: {e}"));
    }
}

const SHAPES: [(usize, usize); 6] = [(1, 64), (1, 1000), (3, 200), (2, 129), (1, 4111), (5, 77)];

#[test]
fn unary_ops_over_long_rows() {
    for (rows, n) in SHAPES {
        agree("exp", rows, n, |_, x, _| x.exp());
        agree("log", rows, n, |_, x, _| x.abs()?.add(0.01)?.log());
        agree("tanh", rows, n, |_, x, _| x.tanh());
        agree("sigmoid", rows, n, |_, x, _| x.sigmoid());
        agree("erf", rows, n, |_, x, _| x.erf());
        agree("sqrt", rows, n, |_, x, _| x.abs()?.sqrt());
        agree("rsqrt", rows, n, |_, x, _| x.abs()?.add(0.5)?.rsqrt());
        agree("recip", rows, n, |_, x, _| x.add(10.0)?.recip());
        agree("rounding", rows, n, |_, x, y| {
            x.mul(2.5)?
                .floor()?
                .add(y.mul(2.5)?.ceil()?)?
                .sub(x.mul(3.5)?.round()?)
        });
        agree("neg abs", rows, n, |_, x, y| x.neg()?.mul(y.abs()?));
        // GELU in one step of the row code, in the forms models export.
        agree("gelu", rows, n, |_, x, _| x.mul(3.0)?.gelu());
        agree("gelu tanh", rows, n, |_, x, _| x.mul(3.0)?.gelu_tanh());
        agree("gelu as torch exports it", rows, n, |_, x, _| {
            let x = x.mul(3.0)?;
            let t = x.div(std::f64::consts::SQRT_2)?.erf()?.add(1.0)?;
            x.mul(t)?.mul(0.5)
        });
        // A near miss (0.6, not 0.5) stays a chain of steps, and right.
        agree("gelu near miss", rows, n, |_, x, _| {
            let t = x.div(std::f64::consts::SQRT_2)?.erf()?.add(1.0)?;
            x.mul(t)?.mul(0.6)
        });
    }
}

/// GELU's one-step forms hold over the whole f32 range: huge, tiny and
/// subnormal inputs, infinities and NaN, on every row path.
#[test]
fn gelu_steps_over_extreme_values() {
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1e30,
        -1e30,
        1e-30,
        -1e-30,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        -9.0,
        9.0,
        -5.5,
        5.5,
        -3.9,
        3.9,
    ];
    xs.extend((0..300).map(|i| (i as f32 - 150.0) * 0.07));
    let n = xs.len();
    for form in ["erf", "tanh", "erf, half last"] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", DType::F32, shape![1, n]).unwrap();
        let y = match form {
            "erf" => x.gelu(),
            "tanh" => x.gelu_tanh(),
            _ => (|| {
                let t = x.div(std::f64::consts::SQRT_2)?.erf()?.add(1.0)?;
                x.mul(t)?.mul(0.5)
            })(),
        };
        y.unwrap().named("out").unwrap();
        let graph = g.into_graph();
        let xa = Array::from_vec(vec![1, n], xs.clone()).unwrap();
        let run = |device: Device, opts: SessionOptions| {
            let s = Session::with_options(&graph, device, opts).unwrap();
            s.run(&[("x", &xa)], &["out"]).unwrap().remove(0)
        };
        let want = run(Device::Reference, SessionOptions::default());
        for (path, opts) in kiln_tests::row_paths() {
            let got = run(Device::Cpu, opts);
            compare(&want, &got).unwrap_or_else(|e| panic!("gelu ({form}) {path}: {e}"));
        }
    }
}

#[test]
fn binary_ops_masks_and_selects_over_long_rows() {
    for (rows, n) in SHAPES {
        agree("arith", rows, n, |_, x, y| {
            x.add(y)?.mul(x)?.sub(y.mul(0.5)?)?.div(y.abs()?.add(1.0)?)
        });
        agree("max min", rows, n, |_, x, y| {
            x.maximum(y)?.sub(x.minimum(y.mul(0.5)?)?)
        });
        for (k, cmp) in ["eq", "ne", "lt", "le", "gt", "ge"].iter().enumerate() {
            agree(cmp, rows, n, move |g, x, y| {
                let yr = y.round()?;
                let xr = x.round()?;
                let m = match k {
                    0 => xr.eq(yr),
                    1 => xr.ne(yr),
                    2 => x.lt(y),
                    3 => xr.le(yr),
                    4 => x.gt(y),
                    _ => xr.ge(yr),
                }?;
                g.select(m, x.exp()?, y)
            });
        }
        agree("relu grad", rows, n, |g, x, y| {
            g.select(x.gt(0.0)?, y, x.mul(0.0)?)
        });
    }
}

#[test]
fn broadcasts_epilogues_and_row_maps_over_long_rows() {
    for (rows, n) in SHAPES {
        // A row vector broadcast down the rows and a scalar.
        agree("bias", rows, n, |_, x, y| {
            let bias = y.slice_axis(0, 0, 1, 1)?;
            x.add(bias)?.mul(0.75)?.maximum(0.0)
        });
        // A column broadcast along each row: a scalar per row.
        agree("column", rows, n, |_, x, y| {
            let col = y.slice_axis(1, 0, 1, 1)?;
            x.mul(col)?.add(col.exp()?)
        });
        // A matmul epilogue (bias + GELU), applied in place.
        agree("matmul gelu", rows, n, |_, x, y| {
            let a = x.transpose()?.slice_axis(0, 0, 8, 1)?;
            let bias = y.slice_axis(0, 0, 1, 1)?;
            a.matmul(y)?.add(bias)?.gelu()
        });
        // Softmax: reductions whose row maps run over the row.
        agree("softmax", rows, n, |_, x, _| x.softmax(-1));
        // Maps that reuse the reduced values, over a temporary the map also
        // reads (which the memory plan may place where the map writes).
        agree("softmax of a temporary", rows, n, |_, x, _| {
            let t = x.mul(2.0)?;
            let e = t.sub(t.max(&[-1], true)?)?.exp()?;
            e.mul(t)?.div(e.sum(&[-1], true)?)
        });
        agree("log softmax", rows, n, |_, x, y| {
            let m = x.max(&[-1], true)?;
            let z = x.sub(m)?;
            let s = z.exp()?.sum(&[-1], true)?.log()?;
            z.sub(s)?.mul(y)
        });
    }
}

#[test]
fn reductions_over_long_rows() {
    for (rows, n) in SHAPES {
        agree("sum", rows, n, |_, x, y| x.mul(y)?.sum(&[-1], true)?.add(x));
        agree("max", rows, n, |_, x, y| x.add(y)?.max(&[-1], true)?.sub(y));
        agree("min", rows, n, |_, x, _| x.exp()?.min(&[-1], true)?.mul(x));
        agree("prod", rows, n, |_, x, _| {
            x.mul(0.001)?.add(1.0)?.prod(&[-1], true)?.add(x)
        });
        // A NaN in a row wins its max and min.
        agree("max nan", rows, n, |g, x, _| {
            let nan = x.mul(0.0)?.add(f64::NAN)?;
            let x = g.select(x.gt(3.9)?, nan, x)?;
            x.max(&[-1], true)?.add(x.min(&[-1], true)?)
        });
        agree("layer norm", rows, n, |_, x, _| {
            let m = x.mean(&[-1], true)?;
            let d = x.sub(m)?;
            let v = d.mul(d)?.mean(&[-1], true)?;
            d.mul(v.add(1e-5)?.rsqrt()?)
        });
    }
}

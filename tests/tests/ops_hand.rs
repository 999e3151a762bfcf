//! Hand-computed checks of edge semantics of the primitive ops, run through a
//! `Session` on `Device::Reference`. Every expected value here is written out
//! by hand from the op's documented meaning (graph/src/op.rs).

use kiln::graph::{
    ArgOp, Array, BinaryOp, DType, Elem, Error as GraphError, Graph, GraphBuilder, Op, ReduceOp,
    Shape, SliceAxis, SourceLoc, UnaryOp,
};
use kiln::{Device, Error, Session};

// ---------------------------------------------------------------- helpers

fn a<T: Elem>(shape: &[usize], v: Vec<T>) -> Array {
    Array::from_vec(shape.to_vec(), v).expect("shape matches data")
}

/// Runs a graph of placeholders `in0..` feeding one node `name` with `op`.
fn try_run_named(name: &str, op: Op, inputs: &[Array]) -> Result<Array, Error> {
    let mut g = Graph::new();
    let mut ids = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let ph = Op::Placeholder {
            dtype: x.dtype(),
            shape: Shape::fixed(x.shape()),
        };
        ids.push(g.add_node(&format!("in{i}"), ph, &[], SourceLoc::default())?);
    }
    g.add_node(name, op, &ids, SourceLoc::default())?;
    let sess = Session::new(&g, Device::Reference)?;
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
    let feeds: Vec<(&str, &Array)> = names.iter().map(String::as_str).zip(inputs).collect();
    Ok(sess.run(&feeds, &[name])?.remove(0))
}

fn run(op: Op, inputs: &[Array]) -> Array {
    try_run_named("out", op, inputs).unwrap_or_else(|e| panic!("run failed: {e}"))
}

fn vals<T: Elem>(x: &Array) -> Vec<T> {
    x.as_slice::<T>()
        .unwrap_or_else(|| panic!("expected {:?}, got {:?}", T::DTYPE, x))
        .to_vec()
}

fn binary(f: BinaryOp) -> Op {
    Op::Binary { f }
}

fn unary(f: UnaryOp) -> Op {
    Op::Unary { f }
}

/// Float equality that treats NaN as equal to NaN.
fn same_f32(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g.is_nan() && w.is_nan()) || g == w)
}

fn same_f64(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g.is_nan() && w.is_nan()) || g == w)
}

// ---------------------------------------------------------------- integer arithmetic

#[test]
fn integer_division_truncates_toward_zero_and_division_by_zero_gives_zero() {
    let num = vec![7, -7, 7, -7, 0, 5, -5, i32::MIN, 1, 9];
    let den = vec![2, 2, -2, -2, 3, 0, 0, -1, 0, 10];
    let out = run(binary(BinaryOp::Div), &[a(&[10], num), a(&[10], den)]);
    assert_eq!(
        vals::<i32>(&out),
        vec![3, -3, -3, 3, 0, 0, 0, i32::MIN, 0, 0]
    );

    let num: Vec<i64> = vec![-9, 9, i64::MIN, i64::MAX, -1];
    let den: Vec<i64> = vec![4, -4, -1, 0, 2];
    let out = run(binary(BinaryOp::Div), &[a(&[5], num), a(&[5], den)]);
    assert_eq!(vals::<i64>(&out), vec![-2, -2, i64::MIN, 0, 0]);

    // broadcast: [2, 1] / [3]
    let out = run(
        binary(BinaryOp::Div),
        &[a(&[2, 1], vec![10i32, -10]), a(&[3], vec![3i32, 0, -4])],
    );
    assert_eq!(out.shape(), &[2, 3]);
    assert_eq!(vals::<i32>(&out), vec![3, 0, -2, -3, 0, 2]);
}

#[test]
fn integer_pow_with_negative_exponent() {
    // 1^-n = 1, (-1)^-n = +-1 by parity, |base| >= 2 gives a fraction that truncates
    // to 0, and 0^-n gives 0 (no error, no panic).
    let base = vec![2, 1, -1, -1, 0, -3, 2, 5, -2, 3];
    let exp = vec![-1, -5, -3, -2, -1, -2, 10, 0, 3, 20];
    let out = run(
        binary(BinaryOp::Pow),
        &[a(&[10], base.clone()), a(&[10], exp.clone())],
    );
    assert_eq!(
        vals::<i32>(&out),
        vec![0, 1, -1, 1, 0, 0, 1024, 1, -8, 3486784401u32 as i32]
    );
    let base64: Vec<i64> = base.iter().map(|&b| b as i64).collect();
    let exp64: Vec<i64> = exp.iter().map(|&e| e as i64).collect();
    let out = run(binary(BinaryOp::Pow), &[a(&[10], base64), a(&[10], exp64)]);
    assert_eq!(
        vals::<i64>(&out),
        vec![0, 1, -1, 1, 0, 0, 1024, 1, -8, 3486784401]
    );
}

// ---------------------------------------------------------------- cast

#[test]
fn cast_float_to_int_truncates_saturates_and_maps_nan_to_zero() {
    let x = a(
        &[9],
        vec![
            1e10f32,
            -1e10,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            2.9,
            -2.9,
            0.5,
            -0.0,
        ],
    );
    let out = run(Op::Cast { to: DType::I32 }, std::slice::from_ref(&x));
    assert_eq!(
        vals::<i32>(&out),
        vec![i32::MAX, i32::MIN, 0, i32::MAX, i32::MIN, 2, -2, 0, 0]
    );
    let out = run(Op::Cast { to: DType::I64 }, std::slice::from_ref(&x));
    assert_eq!(
        vals::<i64>(&out),
        vec![
            10_000_000_000,
            -10_000_000_000,
            0,
            i64::MAX,
            i64::MIN,
            2,
            -2,
            0,
            0
        ]
    );
    let out = run(Op::Cast { to: DType::Bool }, &[x]);
    assert_eq!(
        vals::<bool>(&out),
        vec![true, true, true, true, true, true, true, true, false]
    );

    let y = a(&[4], vec![1e30f64, -1e30, f64::NAN, 9.5e18]);
    let out = run(Op::Cast { to: DType::I64 }, &[y]);
    assert_eq!(vals::<i64>(&out), vec![i64::MAX, i64::MIN, 0, i64::MAX]);

    // int narrowing wraps; int to bool is != 0
    let z = a(
        &[4],
        vec![1i64 << 31, (1i64 << 32) + 5, -(1i64 << 31) - 1, 0],
    );
    let out = run(Op::Cast { to: DType::I32 }, std::slice::from_ref(&z));
    assert_eq!(vals::<i32>(&out), vec![i32::MIN, 5, i32::MAX, 0]);
    let out = run(Op::Cast { to: DType::Bool }, &[z]);
    assert_eq!(vals::<bool>(&out), vec![true, true, true, false]);
}

// ---------------------------------------------------------------- rounding

#[test]
fn round_is_half_to_even() {
    let x = vec![
        0.5f32, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 2.4999998, -2.5000002, 4.0,
    ];
    let out = vals::<f32>(&run(unary(UnaryOp::Round), &[a(&[10], x)]));
    assert_eq!(
        out,
        vec![0.0, 2.0, 2.0, 4.0, -0.0, -2.0, -2.0, 2.0, -3.0, 4.0]
    );
    assert!(
        out[4].is_sign_negative(),
        "round(-0.5) is -0.0, got {}",
        out[4]
    );

    let x = vec![0.5f64, 1.5, 2.5, -2.5, 1e300, 0.49999999999999994];
    let out = vals::<f64>(&run(unary(UnaryOp::Round), &[a(&[6], x)]));
    assert_eq!(out, vec![0.0, 2.0, 2.0, -2.0, 1e300, 0.0]);
}

// ---------------------------------------------------------------- argmax / argmin

#[test]
fn argmax_argmin_take_the_first_occurrence_and_nan_wins() {
    let nan = f32::NAN;
    let x = a(
        &[4, 4],
        vec![
            1.0, 3.0, 3.0, 2.0, // ties: first
            nan, 1.0, nan, 5.0, // NaN first: index 0
            2.0, nan, 9.0, 9.0, // NaN beats everything after it
            4.0, 4.0, 4.0, 4.0, // all equal: 0
        ],
    );
    let argmax = Op::ArgReduce {
        f: ArgOp::ArgMax,
        axis: 1,
        keepdims: false,
    };
    let argmin = Op::ArgReduce {
        f: ArgOp::ArgMin,
        axis: 1,
        keepdims: false,
    };
    assert_eq!(
        vals::<i64>(&run(argmax, std::slice::from_ref(&x))),
        vec![1, 0, 1, 0]
    );
    assert_eq!(
        vals::<i64>(&run(argmin, std::slice::from_ref(&x))),
        vec![0, 0, 1, 0]
    );

    // along axis 0, keepdims
    let out = run(
        Op::ArgReduce {
            f: ArgOp::ArgMax,
            axis: 0,
            keepdims: true,
        },
        &[x],
    );
    assert_eq!(out.shape(), &[1, 4]);
    assert_eq!(vals::<i64>(&out), vec![1, 2, 1, 2]);

    let ints = a(&[5], vec![-3i32, 7, 7, -3, 0]);
    let out = run(
        Op::ArgReduce {
            f: ArgOp::ArgMin,
            axis: 0,
            keepdims: false,
        },
        &[ints],
    );
    assert_eq!(out.shape(), &[] as &[usize]);
    assert_eq!(vals::<i64>(&out), vec![0]);
}

// ---------------------------------------------------------------- NaN propagation

#[test]
fn maximum_minimum_propagate_nan() {
    let nan = f32::NAN;
    let x = a(&[5], vec![1.0f32, nan, 3.0, nan, f32::NEG_INFINITY]);
    let y = a(&[5], vec![nan, 2.0, 1.0, nan, -1.0]);
    let max = vals::<f32>(&run(binary(BinaryOp::Max), &[x.clone(), y.clone()]));
    assert!(same_f32(&max, &[nan, nan, 3.0, nan, -1.0]), "{max:?}");
    let min = vals::<f32>(&run(binary(BinaryOp::Min), &[x, y]));
    assert!(
        same_f32(&min, &[nan, nan, 1.0, nan, f32::NEG_INFINITY]),
        "{min:?}"
    );

    let x = a(&[3], vec![f64::NAN, 0.5, 2.0]);
    let y = a(&[1], vec![1.0f64]);
    let max = vals::<f64>(&run(binary(BinaryOp::Max), &[x.clone(), y.clone()]));
    assert!(same_f64(&max, &[f64::NAN, 1.0, 2.0]), "{max:?}");
    let min = vals::<f64>(&run(binary(BinaryOp::Min), &[y, x.clone()]));
    assert!(same_f64(&min, &[f64::NAN, 0.5, 1.0]), "{min:?}");

    // and in reductions
    for f in [ReduceOp::Max, ReduceOp::Min] {
        let out = vals::<f64>(&run(
            Op::Reduce {
                f,
                axes: vec![0],
                keepdims: false,
            },
            std::slice::from_ref(&x),
        ));
        assert!(out.len() == 1 && out[0].is_nan(), "{f:?}: {out:?}");
    }
}

// ---------------------------------------------------------------- slice

fn slice1(x: &Array, start: i64, end: i64, step: i64) -> Vec<i64> {
    let out = run(
        Op::Slice {
            axes: vec![SliceAxis { start, end, step }],
        },
        std::slice::from_ref(x),
    );
    assert_eq!(out.shape().len(), 1);
    vals::<i64>(&out)
}

#[test]
fn slice_negative_steps_and_clamped_bounds() {
    let x = a(&[6], (0..6i64).collect());
    assert_eq!(slice1(&x, -1, i64::MIN, -2), vec![5, 3, 1]);
    assert_eq!(slice1(&x, 100, -100, -1), vec![5, 4, 3, 2, 1, 0]);
    assert_eq!(slice1(&x, i64::MAX, i64::MIN, -4), vec![5, 1]);
    assert_eq!(slice1(&x, -2, -4, -1), vec![4, 3]);
    assert_eq!(slice1(&x, 3, -7, -1), vec![3, 2, 1, 0]);
    assert_eq!(slice1(&x, -100, 100, 2), vec![0, 2, 4]);
    assert_eq!(slice1(&x, 0, i64::MAX, 4), vec![0, 4]);
    assert_eq!(slice1(&x, 1, i64::MAX, 100), vec![1]);
    assert_eq!(slice1(&x, 4, 2, 1), Vec::<i64>::new());
    assert_eq!(slice1(&x, 2, 4, -1), Vec::<i64>::new());
    assert_eq!(slice1(&x, 6, 100, 1), Vec::<i64>::new());
    assert_eq!(slice1(&x, -7, -100, -1), Vec::<i64>::new());

    // 2-D: rows reversed, every other column from the end
    let m = a(&[2, 3], vec![0i64, 1, 2, 3, 4, 5]);
    let out = run(
        Op::Slice {
            axes: vec![
                SliceAxis {
                    start: -1,
                    end: i64::MIN,
                    step: -1,
                },
                SliceAxis {
                    start: 2,
                    end: -100,
                    step: -2,
                },
            ],
        },
        &[m],
    );
    assert_eq!(out.shape(), &[2, 2]);
    assert_eq!(vals::<i64>(&out), vec![5, 3, 2, 0]);
}

// ---------------------------------------------------------------- gather / scatter

#[test]
fn gather_with_negative_indices() {
    let data = a(&[3], vec![10i32, 20, 30]);
    let idx = a(&[4], vec![-1i64, 0, -3, 1]);
    let out = run(Op::Gather { axis: 0 }, &[data, idx]);
    assert_eq!(vals::<i32>(&out), vec![30, 10, 10, 20]);

    let data = a(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let idx = a(&[2, 2], vec![-1i32, 0, 1, -2]);
    let out = run(Op::Gather { axis: 1 }, &[data, idx]);
    assert_eq!(out.shape(), &[2, 2, 2]);
    assert_eq!(
        vals::<f32>(&out),
        vec![3.0, 1.0, 2.0, 2.0, 6.0, 4.0, 5.0, 5.0]
    );
}

#[test]
fn gather_out_of_range_is_an_error_naming_the_node() {
    for bad in [3i64, -4, i64::MAX, i64::MIN] {
        let data = a(&[3], vec![10i32, 20, 30]);
        let idx = a(&[2], vec![0i64, bad]);
        let err = try_run_named("my_gather", Op::Gather { axis: 0 }, &[data, idx])
            .expect_err("an out-of-range index must be an error");
        match &err {
            Error::Graph(GraphError::Eval { node, op, reason }) => {
                assert_eq!(node, "my_gather");
                assert_eq!(op, "gather");
                assert!(
                    reason.contains(&bad.to_string()),
                    "reason should name the index: {reason}"
                );
            }
            other => panic!("expected an evaluation error, got {other:?}"),
        }
        assert!(err.to_string().contains("my_gather"), "{err}");
    }
    // scatter_add checks its indices the same way
    let err = try_run_named(
        "my_scatter",
        Op::ScatterAdd { axis: 0 },
        &[
            a(&[2], vec![0.0f32, 0.0]),
            a(&[1], vec![2i32]),
            a(&[1], vec![1.0f32]),
        ],
    )
    .expect_err("an out-of-range index must be an error");
    assert!(err.to_string().contains("my_scatter"), "{err}");
}

#[test]
fn scatter_add_accumulates_repeated_indices() {
    let data = a(&[4], vec![1.0f32, 1.0, 1.0, 1.0]);
    let idx = a(&[4], vec![1i64, 1, 3, -3]);
    let upd = a(&[4], vec![1.0f32, 2.0, 3.0, 4.0]);
    let out = run(Op::ScatterAdd { axis: 0 }, &[data, idx, upd]);
    assert_eq!(vals::<f32>(&out), vec![1.0, 8.0, 1.0, 4.0]);

    // axis 1 of [2, 3] with indices [0, 0, 2]: updates [2, 3]
    let data = a(&[2, 3], vec![0i32; 6]);
    let idx = a(&[3], vec![0i32, 0, 2]);
    let upd = a(&[2, 3], vec![1i32, 10, 100, 2, 20, 200]);
    let out = run(Op::ScatterAdd { axis: 1 }, &[data, idx, upd]);
    assert_eq!(vals::<i32>(&out), vec![11, 0, 100, 22, 0, 200]);
}

// ---------------------------------------------------------------- reductions

fn reduce(f: ReduceOp, axes: Vec<usize>, x: &Array) -> Array {
    run(
        Op::Reduce {
            f,
            axes,
            keepdims: false,
        },
        std::slice::from_ref(x),
    )
}

#[test]
fn empty_reductions_give_the_identity() {
    let x = Array::zeros(DType::F32, &[0, 3]);
    assert_eq!(
        vals::<f32>(&reduce(ReduceOp::Sum, vec![0], &x)),
        vec![0.0; 3]
    );
    assert_eq!(
        vals::<f32>(&reduce(ReduceOp::Prod, vec![0], &x)),
        vec![1.0; 3]
    );
    assert_eq!(
        vals::<f32>(&reduce(ReduceOp::Max, vec![0], &x)),
        vec![f32::NEG_INFINITY; 3]
    );
    assert_eq!(
        vals::<f32>(&reduce(ReduceOp::Min, vec![0], &x)),
        vec![f32::INFINITY; 3]
    );
    // reducing the non-empty axis of an empty tensor gives an empty result
    let out = reduce(ReduceOp::Sum, vec![1], &x);
    assert_eq!(out.shape(), &[0]);

    let x = Array::zeros(DType::I32, &[2, 0]);
    assert_eq!(vals::<i32>(&reduce(ReduceOp::Sum, vec![1], &x)), vec![0, 0]);
    assert_eq!(
        vals::<i32>(&reduce(ReduceOp::Prod, vec![1], &x)),
        vec![1, 1]
    );
    assert_eq!(
        vals::<i32>(&reduce(ReduceOp::Max, vec![1], &x)),
        vec![i32::MIN; 2]
    );
    assert_eq!(
        vals::<i32>(&reduce(ReduceOp::Min, vec![1], &x)),
        vec![i32::MAX; 2]
    );

    let x = Array::zeros(DType::F64, &[0]);
    let out = reduce(ReduceOp::Sum, vec![0], &x);
    assert_eq!(out.shape(), &[] as &[usize]);
    assert_eq!(vals::<f64>(&out), vec![0.0]);
}

// ---------------------------------------------------------------- sources

#[test]
fn iota_counts_along_its_axis() {
    let iota = |dtype, shape: &[usize], axis| {
        run(
            Op::Iota {
                dtype,
                shape: Shape::fixed(shape),
                axis,
            },
            &[],
        )
    };
    assert_eq!(
        vals::<i64>(&iota(DType::I64, &[2, 3], 1)),
        vec![0, 1, 2, 0, 1, 2]
    );
    assert_eq!(
        vals::<i64>(&iota(DType::I64, &[2, 3], 0)),
        vec![0, 0, 0, 1, 1, 1]
    );
    assert_eq!(
        vals::<f32>(&iota(DType::F32, &[4], 0)),
        vec![0.0, 1.0, 2.0, 3.0]
    );
    assert_eq!(
        vals::<i32>(&iota(DType::I32, &[2, 2, 2], 1)),
        vec![0, 0, 1, 1, 0, 0, 1, 1]
    );
    assert_eq!(iota(DType::F64, &[3, 0], 0).shape(), &[3, 0]);
}

/// Builds a graph with named random sources and runs it (twice, to check
/// repeatability across runs).
fn random_values(dtype: DType, n: usize, specs: &[(&str, u64, bool, f64, f64)]) -> Vec<Vec<f64>> {
    let g = GraphBuilder::new();
    for &(name, seed, uniform, p, q) in specs {
        let t = if uniform {
            g.random_uniform(dtype, [n], seed, p, q)
        } else {
            g.random_normal(dtype, [n], seed, p, q)
        }
        .unwrap();
        t.named(name).unwrap();
    }
    let sess = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.0).collect();
    let first = sess.run(&[], &names).unwrap();
    let second = sess.run(&[], &names).unwrap();
    assert_eq!(
        first, second,
        "random sources must give the same values on every run"
    );
    first
        .iter()
        .map(|x| {
            assert_eq!(x.dtype(), dtype);
            assert_eq!(x.shape(), &[n]);
            x.to_f64_vec()
        })
        .collect()
}

#[test]
fn random_uniform_is_deterministic_and_in_range() {
    for dtype in [DType::F32, DType::F64] {
        let (low, high) = (-2.0, 3.0);
        let v = random_values(
            dtype,
            1000,
            &[
                ("a", 42, true, low, high),
                ("b", 42, true, low, high),
                ("c", 43, true, low, high),
            ],
        );
        assert_eq!(v[0], v[1], "{dtype}: same seed, same values");
        let differ = v[0].iter().zip(&v[2]).filter(|(x, y)| x != y).count();
        assert!(
            differ > 990,
            "{dtype}: different seeds should differ, only {differ} of 1000 do"
        );
        for x in v.iter().flatten() {
            assert!(
                (low..high).contains(x),
                "{dtype}: {x} is outside [{low}, {high})"
            );
        }
        let min = v[0].iter().copied().fold(f64::INFINITY, f64::min);
        let max = v[0].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            min < -1.9 && max > 2.9,
            "{dtype}: samples do not spread: [{min}, {max}]"
        );
        let mean = v[0].iter().sum::<f64>() / 1000.0;
        assert!(
            (mean - 0.5).abs() < 0.25,
            "{dtype}: mean {mean}, expected about 0.5"
        );
    }
    // a degenerate range gives the bound itself
    let v = random_values(DType::F64, 10, &[("d", 1, true, 1.5, 1.5)]);
    assert!(v[0].iter().all(|&x| x == 1.5), "{:?}", v[0]);
}

#[test]
fn random_normal_has_roughly_the_right_mean_and_std() {
    let n = 10_000;
    for (dtype, mean, std) in [
        (DType::F64, 2.0, 0.5),
        (DType::F32, 0.0, 1.0),
        (DType::F64, -3.0, 4.0),
    ] {
        let v = random_values(
            dtype,
            n,
            &[
                ("a", 7, false, mean, std),
                ("b", 7, false, mean, std),
                ("c", 8, false, mean, std),
            ],
        );
        assert_eq!(v[0], v[1], "same seed, same values");
        assert_ne!(v[0], v[2], "different seeds, different values");
        let m = v[0].iter().sum::<f64>() / n as f64;
        let s = (v[0].iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt();
        // standard errors: std / 100 for the mean, about std / 141 for the std
        assert!(
            (m - mean).abs() < 0.04 * std,
            "{dtype}: sample mean {m}, expected {mean}"
        );
        assert!(
            (s - std).abs() < 0.04 * std,
            "{dtype}: sample std {s}, expected {std}"
        );
        let within = v[0].iter().filter(|x| (*x - mean).abs() < std).count() as f64 / n as f64;
        assert!(
            (within - 0.6827).abs() < 0.03,
            "{dtype}: {within} of samples within one std"
        );
        assert!(v[0].iter().all(|x| x.is_finite()));
    }
}

/// `low + (high - low) * u` rounded to the dtype can reach `high` for `u`
/// close to 1, and `high - low` can overflow for very wide ranges: samples
/// must still lie in `[low, high)` and be finite.
#[test]
fn random_uniform_stays_below_high() {
    for dtype in [DType::F32, DType::F64] {
        let next_after_one = match dtype {
            DType::F32 => f32::from_bits(1.0f32.to_bits() + 1) as f64,
            _ => f64::from_bits(1.0f64.to_bits() + 1),
        };
        let v = random_values(dtype, 1000, &[("a", 5, true, 1.0, next_after_one)]);
        let at_high = v[0].iter().filter(|&&x| x >= next_after_one).count();
        assert_eq!(
            at_high, 0,
            "{dtype}: {at_high} of 1000 samples of [1, nextafter(1)) equal high"
        );
    }
    let v = random_values(DType::F32, 100, &[("b", 5, true, -3e38, 3e38)]);
    assert!(
        v[0].iter()
            .all(|x| x.is_finite() && (-3e38..3e38).contains(x)),
        "{:?}",
        &v[0][..4]
    );
}

// ---------------------------------------------------------------- state

#[test]
fn assign_updates_the_variable_when_the_run_ends() {
    let g = GraphBuilder::new();
    let v = g.variable("v", a(&[2], vec![1.0f32, 2.0])).unwrap();
    let next = v.add(1.0).unwrap();
    v.assign(next).unwrap().named("step").unwrap();
    v.mul(10.0).unwrap().named("read").unwrap();
    let sess = Session::new(&g.into_graph(), Device::Reference).unwrap();
    // the read in the same run sees the value at the start of the run
    let out = sess.run(&[], &["step", "read"]).unwrap();
    assert_eq!(vals::<f32>(&out[0]), vec![2.0, 3.0]);
    assert_eq!(vals::<f32>(&out[1]), vec![10.0, 20.0]);
    assert_eq!(vals::<f32>(&sess.variable("v").unwrap()), vec![2.0, 3.0]);
    let out = sess.run(&[], &["step", "read"]).unwrap();
    assert_eq!(vals::<f32>(&out[0]), vec![3.0, 4.0]);
    assert_eq!(vals::<f32>(&out[1]), vec![20.0, 30.0]);
}

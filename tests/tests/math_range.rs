//! Every float unary op and the remainder over the whole f32 range: a sweep
//! of every power of two from 2^-149 to 2^127 times a few mantissas, both
//! signs, ±0, ±inf, NaN, and dense samples around 0, ±1 and the overflow
//! thresholds, run on the reference interpreter and on the CPU backend in
//! short rows (scalar code), long rows with the row code off (four lanes),
//! long rows in the row code where the code generator hands them over
//! (sixteen lanes of AVX-512 where the host has it, else eight of AVX2,
//! which takes only the transcendentals) and, on AVX-512 hosts, long rows
//! with AVX-512 off (the AVX2 row code), each result checked against the
//! true value computed in f64 with Rust's std (erf, which std lacks, by a
//! series and a continued fraction in f64) within the error bound the
//! implementation states (`kiln_rt::rows`'s and kiln-codegen's `vector.rs`
//! doc tables). NaN and infinities must come out exactly. f64
//! graphs of the libm-called functions, integer remainders, and the issue's
//! examples (fmod, asinh, acosh, atan, asin, cosh, GELU) are checked too.

use kiln::graph::UnaryOp;
use kiln::prelude::*;

/// Every float unary op (the exhaustive match in [`apply`] keeps this
/// list honest: a new op fails to compile there until it is added).
const FLOAT_OPS: [UnaryOp; 25] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tan,
    UnaryOp::Asin,
    UnaryOp::Acos,
    UnaryOp::Atan,
    UnaryOp::Sinh,
    UnaryOp::Cosh,
    UnaryOp::Asinh,
    UnaryOp::Acosh,
    UnaryOp::Atanh,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Erf,
    UnaryOp::Floor,
    UnaryOp::Ceil,
    UnaryOp::Round,
];

/// The ops computed by a libm function (reference and CPU alike).
const LIBM_OPS: [UnaryOp; 11] = [
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Tan,
    UnaryOp::Asin,
    UnaryOp::Acos,
    UnaryOp::Atan,
    UnaryOp::Sinh,
    UnaryOp::Cosh,
    UnaryOp::Asinh,
    UnaryOp::Acosh,
    UnaryOp::Atanh,
];

fn apply(f: UnaryOp, x: Tensor<'_>) -> kiln::graph::Result<Tensor<'_>> {
    use UnaryOp::*;
    match f {
        Neg => x.neg(),
        Abs => x.abs(),
        Sign => x.sign(),
        Exp => x.exp(),
        Log => x.log(),
        Sqrt => x.sqrt(),
        Rsqrt => x.rsqrt(),
        Recip => x.recip(),
        Sin => x.sin(),
        Cos => x.cos(),
        Tan => x.tan(),
        Asin => x.asin(),
        Acos => x.acos(),
        Atan => x.atan(),
        Sinh => x.sinh(),
        Cosh => x.cosh(),
        Asinh => x.asinh(),
        Acosh => x.acosh(),
        Atanh => x.atanh(),
        Tanh => x.tanh(),
        Sigmoid => x.sigmoid(),
        Erf => x.erf(),
        Floor => x.floor(),
        Ceil => x.ceil(),
        Round => x.round(),
        Not => x.not(),
    }
}

/// The inputs: the whole f32 range, logarithmically, plus dense samples
/// where functions turn (0, ±1, erf's saturation, the exp/sinh/cosh
/// overflow thresholds, the exp underflow threshold) and special values.
fn sweep() -> Vec<f32> {
    let mut v = vec![0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    for e in -149..=127 {
        for m in [1.0, 1.1, 1.25, 1.5, 1.7, 1.999_999_9] {
            let x = (m * 2f64.powi(e)) as f32;
            if x.is_finite() && x != 0.0 {
                v.extend([x, -x]);
            }
        }
    }
    v.extend([f32::MAX, -f32::MAX, f32::MIN_POSITIVE, f32::EPSILON]);
    // 200,000 bit patterns spread evenly over all 2^32 (a fixed LCG):
    // every binade, sign and mantissa region, NaN payloads included.
    let mut h = 0x2545_f491u32;
    for _ in 0..200_000 {
        h = h.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.push(f32::from_bits(h));
    }
    v.extend((0..=24_000).map(|i| -120.0 + i as f32 * 0.01));
    v.extend((0..=8_000).map(|i| -4.0 + i as f32 * 0.001));
    v.extend((0..=2_000).map(|i| -1e-3 + i as f32 * 1e-6));
    // Next to ±1 (asin, acos, atanh, acosh end there) and to the
    // thresholds, ulp by ulp.
    for c in [
        1.0f32,
        3.919_206,
        88.722_84,
        89.415_985,
        -87.336_55,
        -103.972_08,
        -88.722_84,
    ] {
        for s in [c, -c] {
            for k in 0..64 {
                v.push(f32::from_bits(s.to_bits() + k));
                v.push(f32::from_bits(s.to_bits() - k));
            }
        }
    }
    v
}

/// erf in f64: the Maclaurin series below 3, the continued fraction of
/// erfc above (relative error far below f32's ulp either way).
fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 3.0 {
        // erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, x2) = (a, a, a * a);
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-19 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if a.is_infinite() {
        1.0
    } else {
        // erfc a = exp(-a^2) / sqrt(pi) * 1 / (a + (1/2) / (a + 1 / (a + (3/2) / (a + ...))))
        let mut f = a;
        for k in (1..80).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}

/// The true value of `f(x)`, in f64.
fn truth(f: UnaryOp, x: f64) -> f64 {
    use UnaryOp::*;
    match f {
        Neg => -x,
        Abs => x.abs(),
        Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
        Exp => x.exp(),
        Log => x.ln(),
        Sqrt => x.sqrt(),
        Rsqrt => 1.0 / x.sqrt(),
        Recip => 1.0 / x,
        Sin => x.sin(),
        Cos => x.cos(),
        Tan => x.tan(),
        Asin => x.asin(),
        Acos => x.acos(),
        Atan => x.atan(),
        Sinh => x.sinh(),
        Cosh => x.cosh(),
        Asinh => x.asinh(),
        // std's acosh loses digits just above 1 (the log of 1 + small):
        // log1p(t + sqrt(2t + t^2)) with t = x - 1 (exact there) instead.
        Acosh if (1.0..2.0).contains(&x) => {
            let t = x - 1.0;
            (t + (2.0 * t + t * t).sqrt()).ln_1p()
        }
        Acosh => x.acosh(),
        // std's atanh of negative x is ln_1p of a value near -1, which
        // magnifies its rounding: by symmetry from positive x instead.
        Atanh => x.abs().atanh().copysign(x),
        Tanh => x.tanh(),
        Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Erf => erf64(x),
        Floor => x.floor(),
        Ceil => x.ceil(),
        Round => x.round_ties_even(),
        Not => unreachable!("not a float op"),
    }
}

/// The f32 ulp at the magnitude of `t` (2^-149 in the subnormal range).
fn ulp32(t: f64) -> f64 {
    let a = t.abs();
    if a < f32::MIN_POSITIVE as f64 {
        return 2f64.powi(-149);
    }
    let e = a.log2().floor() as i32;
    // log2 may round up at an exact power of two's predecessor.
    let e = if 2f64.powi(e) > a { e - 1 } else { e };
    2f64.powi(e.min(127) - 23)
}

/// Where a CPU result comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Reference,
    /// Rows of 7 (under the 8 the vector loop needs): scalar code.
    Scalar,
    /// Rows of 2048, the row code off: the four-lane loop.
    Lanes4,
    /// Rows of 2048 in the row code where the code generator hands them
    /// over: AVX-512 where the host has it, else AVX2 where it has that
    /// (which takes only rows with a transcendental); else, and for the
    /// rest, the four-lane loop again.
    Wide,
    /// Rows of 2048 with AVX-512 off: the AVX2 row code, on hosts with
    /// AVX-512 (elsewhere `Wide` is that code, and `paths` leaves it out).
    Avx2,
}

impl Path {
    /// Its device and session options (each CPU setting that matters here
    /// given, so the environment does not change the path).
    fn options(self) -> (Device, SessionOptions) {
        let rows = |avx512: bool, wide_rows: bool| SessionOptions {
            avx512: Some(avx512),
            wide_rows: Some(wide_rows),
            ..Default::default()
        };
        match self {
            Path::Reference => (Device::Reference, SessionOptions::default()),
            Path::Scalar | Path::Wide => (Device::Cpu, rows(true, true)),
            Path::Lanes4 => (Device::Cpu, rows(true, false)),
            Path::Avx2 => (Device::Cpu, rows(false, true)),
        }
    }

    /// Rows and columns of `n` elements on this path.
    fn shape(self, n: usize) -> (usize, usize) {
        match self {
            Path::Reference => (1, n),
            Path::Scalar => (n.div_ceil(7), 7),
            Path::Lanes4 | Path::Wide | Path::Avx2 => (n.div_ceil(LONG), LONG),
        }
    }
}

/// Every path this host has: the AVX2 row code apart from `Wide` only
/// where `Wide` is AVX-512's.
fn paths() -> Vec<Path> {
    let mut v = vec![Path::Reference, Path::Scalar, Path::Lanes4, Path::Wide];
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        v.push(Path::Avx2);
    }
    v
}

const LONG: usize = 2048;

/// `build` of the inputs `xs` (of equal lengths) elementwise on `path`, in
/// `dtype` (f32 or f64, `T`'s); `one` is 1 as a `T`.
fn run_elementwise<T: Copy + Default + kiln::graph::Elem>(
    path: Path,
    xs: &[&[T]],
    dtype: DType,
    one: T,
    build: impl for<'g> Fn(&[Tensor<'g>]) -> kiln::graph::Result<Tensor<'g>>,
) -> Vec<T> {
    let n = xs[0].len();
    let g = GraphBuilder::new();
    let (device, opts) = path.options();
    let (rows, cols) = path.shape(n);
    let names: Vec<String> = (0..xs.len()).map(|i| format!("x{i}")).collect();
    let ps: Vec<Tensor<'_>> = names
        .iter()
        .map(|nm| g.placeholder(nm, dtype, shape![rows, cols]).unwrap())
        .collect();
    let mut y = build(&ps).unwrap();
    if path == Path::Scalar {
        // Times a per-row 1 (exact for every value, NaN and -0 included),
        // whose broadcast keeps the loop nest from merging the short rows
        // into one long vectorizable row.
        let ones = g.placeholder("ones", dtype, shape![rows, 1]).unwrap();
        y = y.mul(ones).unwrap();
    }
    y.named("y").unwrap();
    let graph = g.into_graph();
    let s = Session::with_options(&graph, device, opts).unwrap();
    let arrays: Vec<Array> = xs
        .iter()
        .map(|x| {
            let mut data = x.to_vec();
            data.resize(rows * cols, T::default());
            Array::from_vec(vec![rows, cols], data).unwrap()
        })
        .collect();
    let ones = Array::from_vec(vec![rows, 1], vec![one; rows]).unwrap();
    let mut feeds: Vec<(&str, &Array)> = names.iter().map(|s| s.as_str()).zip(&arrays).collect();
    if path == Path::Scalar {
        feeds.push(("ones", &ones));
    }
    let out = s.run(&feeds, &["y"]).unwrap().remove(0);
    out.as_slice::<T>().unwrap()[..n].to_vec()
}

fn run_op<T: Copy + Default + kiln::graph::Elem>(
    path: Path,
    x: &[T],
    dtype: DType,
    one: T,
    f: UnaryOp,
) -> Vec<T> {
    run_elementwise(path, &[x], dtype, one, |t| apply(f, t[0]))
}

/// A stated error bound: `ulps` of the f32 result where the true value is
/// normal; results in the subnormal range within `2^-126` absolutely where
/// `flush` (approximations may round them to 0).
#[derive(Clone, Copy, Debug)]
struct Bound {
    ulps: f64,
    flush: bool,
}

/// The bounds of the doc tables (`kiln_rt::rows`, kiln-codegen's
/// `vector.rs`), per op and path.
fn bound(f: UnaryOp, path: Path) -> Bound {
    use UnaryOp::*;
    let exact = Bound {
        ulps: 0.5,
        flush: false,
    };
    let libm = Bound {
        ulps: 2.0,
        flush: false,
    };
    let approx = |ulps: f64| Bound { ulps, flush: true };
    let vector = path != Path::Reference;
    match f {
        Neg | Abs | Sign | Floor | Ceil | Round | Sqrt | Recip => exact,
        // 1 / sqrt(x): two roundings.
        Rsqrt => Bound {
            ulps: 1.5,
            flush: false,
        },
        Sin | Cos | Tan | Asin | Acos | Atan | Sinh | Cosh | Asinh | Acosh | Atanh => libm,
        Exp if vector => approx(2.0),
        Log if vector => approx(2.0),
        Tanh if vector => approx(4.0),
        Sigmoid if vector => approx(4.0),
        Erf if vector => approx(8.0),
        // The reference: std's exp, ln, tanh; sigmoid as 1 / (1 + e^-x)
        // in f32 (rounding to 0 below -87.3); libm's erff.
        Exp | Log => libm,
        Sigmoid => approx(2.0),
        Tanh => libm,
        Erf => libm,
        Not => unreachable!("not a float op"),
    }
}

/// The largest error (in ulps) of `got` against the truth of `f` at `x`;
/// panics on a wrong special value or an error beyond `b`.
fn check32(f: UnaryOp, path: Path, x: &[f32], got: &[f32], b: Bound) -> f64 {
    let mut worst = 0f64;
    for (&xi, &gi) in x.iter().zip(got) {
        let t = truth(f, xi as f64);
        let t32 = t as f32;
        let what = || format!("{f:?}({xi:e}) on {path:?} = {gi:e}, true {t:e}");
        if t.is_nan() {
            assert!(gi.is_nan(), "{}", what());
            continue;
        }
        if t32.is_infinite() {
            assert_eq!(gi, t32, "{}", what());
            continue;
        }
        assert!(gi.is_finite(), "{}", what());
        let err = (gi as f64 - t).abs();
        if b.flush && t.abs() < f32::MIN_POSITIVE as f64 {
            assert!(err <= f32::MIN_POSITIVE as f64, "{}", what());
            continue;
        }
        let e = err / ulp32(t);
        assert!(e <= b.ulps, "{} ({e:.2} ulps, bound {})", what(), b.ulps);
        worst = worst.max(e);
    }
    worst
}

#[test]
fn every_float_unary_op_over_the_whole_f32_range() {
    let x = sweep();
    println!(
        "{} inputs; avx512f on this host: {}; avx2 and fma: {}",
        x.len(),
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    );
    for f in FLOAT_OPS {
        let mut line = format!("{f:?}:");
        for path in paths() {
            let got = run_op(path, &x, DType::F32, 1.0, f);
            let e = check32(f, path, &x, &got, bound(f, path));
            line += &format!(" {path:?} {e:.2} ulp");
        }
        println!("{line}");
    }
}

/// max and min against a constant (ReLU, ReLU6, hard-swish's clamp),
/// which the four-lane code emits as one `maxps` / `minps` where that has
/// the same meaning: the reference's values on every path (NaN for NaN),
/// over the sweep (NaN, both zeros, infinities, subnormals), constants
/// of either zero, normal, infinite and subnormal, on either side. The
/// sign of `max(-0, +0)` is not compared with the reference, which takes
/// Rust's `f32::max` and so leaves it open (it gives -0 there); the
/// compiled paths agree with the scalar code bit for bit (+0, as IEEE
/// 754's `maximum`).
/// `max(x, c)` or `min(x, c)`, the constant on the `left` or the right.
fn clamp<'g>(t: &[Tensor<'g>], c: f64, max: bool, left: bool) -> kiln::graph::Result<Tensor<'g>> {
    let k = t[0].builder().scalar(c, DType::F32)?;
    let (a, b) = if left { (k, t[0]) } else { (t[0], k) };
    if max {
        a.maximum(b)
    } else {
        a.minimum(b)
    }
}

#[test]
fn clamps_to_constants_agree_on_every_path() {
    let x = sweep();
    for c in [0.0f64, -0.0, 6.0, -3.0, f64::INFINITY, 1e-40] {
        for max in [true, false] {
            for left in [false, true] {
                let build = |path| {
                    run_elementwise(path, &[&x], DType::F32, 1.0, |t| clamp(t, c, max, left))
                };
                let want = build(Path::Reference);
                let scalar = build(Path::Scalar);
                let op = if max { "max" } else { "min" };
                for path in paths().into_iter().skip(1) {
                    let got = build(path);
                    for (((xi, w), g), s) in x.iter().zip(&want).zip(&got).zip(&scalar) {
                        assert!(
                            w == g || w.is_nan() && g.is_nan(),
                            "{op}({xi:e}, {c:e}) on {path:?} = {g:e}, reference {w:e}"
                        );
                        assert!(
                            s.to_bits() == g.to_bits() || s.is_nan() && g.is_nan(),
                            "{op}({xi:e}, {c:e}) on {path:?} = {g:e}, scalar code {s:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn libm_ops_agree_bit_for_bit_on_every_path() {
    // The reference, the JIT's scalar code and ahead-of-time code call the
    // same libm functions: the results are identical, not merely close.
    let x = sweep();
    for f in LIBM_OPS {
        let want = run_op(Path::Reference, &x, DType::F32, 1.0, f);
        for path in paths().into_iter().skip(1) {
            let got = run_op(path, &x, DType::F32, 1.0, f);
            for ((xi, w), g) in x.iter().zip(&want).zip(&got) {
                assert!(
                    w.to_bits() == g.to_bits() || w.is_nan() && g.is_nan(),
                    "{f:?}({xi:e}) on {path:?} = {g:e}, reference {w:e}"
                );
            }
        }
    }
}

#[test]
fn libm_ops_in_f64() {
    // f64 graphs: within 2 f64 ulps of std's function (both are libm-class
    // implementations) and bit-equal across paths.
    let x: Vec<f64> = sweep()
        .into_iter()
        .map(|v| v as f64)
        .chain([1e300, -1e300, 7e-310, 710.0, -710.0, 1.0 - 1e-15])
        .collect();
    for f in LIBM_OPS {
        let want = run_op(Path::Reference, &x, DType::F64, 1.0, f);
        let mut worst = 0f64;
        for ((&xi, &w), _) in x.iter().zip(&want).zip(0..) {
            let t = truth(f, xi);
            if t.is_nan() || t.is_infinite() {
                assert!(
                    w.is_nan() && t.is_nan() || w == t,
                    "{f:?}({xi:e}) = {w:e}, true {t:e}"
                );
                continue;
            }
            let ulp = if t.abs() < f64::MIN_POSITIVE {
                f64::from_bits(1)
            } else {
                f64::EPSILON * 2f64.powi(t.abs().log2().floor() as i32)
            };
            let e = (w - t).abs() / ulp;
            assert!(e <= 4.0, "{f:?}({xi:e}) = {w:e}, true {t:e} ({e} ulps)");
            worst = worst.max(e);
        }
        println!("{f:?} f64: {worst:.2} ulp against std");
        for path in [Path::Scalar, Path::Lanes4] {
            let got = run_op(path, &x, DType::F64, 1.0, f);
            for ((xi, w), g) in x.iter().zip(&want).zip(&got) {
                assert!(
                    w.to_bits() == g.to_bits() || w.is_nan() && g.is_nan(),
                    "{f:?}({xi:e}) f64 on {path:?} = {g:e}, reference {w:e}"
                );
            }
        }
    }
}

/// Pairs (a, b) over the range: a from a coarse sweep, b from powers of
/// two times mantissas, zeros, infinities and NaN.
fn rem_pairs() -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
    ];
    let mut b = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.3,
        -3.3,
        0.1,
    ];
    for e in (-149..=127).step_by(3) {
        for m in [1.0, 1.3, 1.999_999_9] {
            let x = (m * 2f64.powi(e)) as f32;
            if x.is_finite() && x != 0.0 {
                a.extend([x, -x]);
            }
        }
    }
    for e in (-149..=127).step_by(11) {
        let x = (1.7 * 2f64.powi(e)) as f32;
        if x.is_finite() && x != 0.0 {
            b.extend([x, -x]);
        }
    }
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for &p in &a {
        for &q in &b {
            xa.push(p);
            xb.push(q);
        }
    }
    (xa, xb)
}

#[test]
fn float_remainder_is_exact_over_the_range() {
    let (a, b) = rem_pairs();
    for path in paths() {
        let got = run_elementwise(path, &[&a, &b], DType::F32, 1.0, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            // f64's % is fmod, exact; the remainder of f32 values is an f32.
            let want = (a[i] as f64 % b[i] as f64) as f32;
            assert!(
                want.to_bits() == got[i].to_bits() || want.is_nan() && got[i].is_nan(),
                "rem({:e}, {:e}) on {path:?} = {:e}, want {want:e}",
                a[i],
                b[i],
                got[i]
            );
        }
        let a64: Vec<f64> = a.iter().map(|&v| v as f64 * 1.000_000_1).collect();
        let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        let got = run_elementwise(path, &[&a64, &b64], DType::F64, 1.0, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            let want = a64[i] % b64[i];
            assert!(
                want.to_bits() == got[i].to_bits() || want.is_nan() && got[i].is_nan(),
                "rem({:e}, {:e}) f64 on {path:?} = {:e}, want {want:e}",
                a64[i],
                b64[i],
                got[i]
            );
        }
    }
}

#[test]
fn integer_remainder_truncates_and_keeps_x_rem_0() {
    // a - trunc(a / b) * b with kiln's x / 0 = 0: x rem 0 = x; wrapping
    // MIN / -1 = MIN gives MIN rem -1 = 0.
    let vals = [
        0i64,
        1,
        -1,
        2,
        -2,
        3,
        -3,
        7,
        -7,
        100,
        -100,
        i32::MIN as i64,
        i32::MAX as i64,
    ];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &p in &vals {
        for &q in &vals {
            a.push(p);
            b.push(q);
        }
    }
    let want = |p: i64, q: i64| if q == 0 { p } else { p.wrapping_rem(q) };
    let a32: Vec<i32> = a.iter().map(|&v| v as i32).collect();
    let b32: Vec<i32> = b.iter().map(|&v| v as i32).collect();
    let a8: Vec<i8> = a.iter().map(|&v| v as i8).collect();
    let b8: Vec<i8> = b.iter().map(|&v| v as i8).collect();
    let au: Vec<u32> = a.iter().map(|&v| v as u32).collect();
    let bu: Vec<u32> = b.iter().map(|&v| v as u32).collect();
    let (amin, bmin) = (vec![i64::MIN, i64::MIN, 5], vec![-1i64, 0, i64::MIN]);
    for path in [Path::Reference, Path::Scalar, Path::Lanes4] {
        let got = run_elementwise(path, &[&a, &b], DType::I64, 1, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            assert_eq!(
                got[i],
                want(a[i], b[i]),
                "{} rem {} on {path:?}",
                a[i],
                b[i]
            );
        }
        let got = run_elementwise(path, &[&amin, &bmin], DType::I64, 1, |t| t[0].rem(t[1]));
        assert_eq!(got, vec![0, i64::MIN, 5], "i64 extremes on {path:?}");
        let got = run_elementwise(path, &[&a32, &b32], DType::I32, 1, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            let w = if b32[i] == 0 {
                a32[i]
            } else {
                a32[i].wrapping_rem(b32[i])
            };
            assert_eq!(got[i], w, "{} rem {} i32 on {path:?}", a32[i], b32[i]);
        }
        let got = run_elementwise(path, &[&a8, &b8], DType::I8, 1, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            let w = if b8[i] == 0 {
                a8[i]
            } else {
                a8[i].wrapping_rem(b8[i])
            };
            assert_eq!(got[i], w, "{} rem {} i8 on {path:?}", a8[i], b8[i]);
        }
        let got = run_elementwise(path, &[&au, &bu], DType::U32, 1, |t| t[0].rem(t[1]));
        for i in 0..a.len() {
            let w = if bu[i] == 0 { au[i] } else { au[i] % bu[i] };
            assert_eq!(got[i], w, "{} rem {} u32 on {path:?}", au[i], bu[i]);
        }
    }
}

/// `build` of the f32 values `x` on every path, checked by `ok` with a
/// message naming the input.
fn each_path(
    x: &[f32],
    build: impl for<'g> Fn(&[Tensor<'g>]) -> kiln::graph::Result<Tensor<'g>> + Copy,
    ok: impl Fn(f32, f32) -> bool,
) {
    for path in paths() {
        let got = run_elementwise(path, &[x], DType::F32, 1.0, build);
        for (&xi, &gi) in x.iter().zip(&got) {
            assert!(ok(xi, gi), "{xi:e} on {path:?} gave {gi:e}");
        }
    }
}

fn rel_close(got: f32, want: f64, rel: f64) -> bool {
    ((got as f64 - want) / want).abs() <= rel
}

#[test]
fn the_fuzzers_examples() {
    // fmod(1e4, 3.3) and fmod(1e7, 3.3) (3.3 as an f32), exactly.
    for path in paths() {
        let got = run_elementwise(
            path,
            &[&[1e4f32, 1e7, -1e7], &[3.3f32, 3.3, 3.3]],
            DType::F32,
            1.0,
            |t| t[0].rem(t[1]),
        );
        assert!(
            (got[0] - 1.000_144).abs() < 1e-5,
            "fmod(1e4, 3.3) = {} on {path:?}",
            got[0]
        );
        assert!(
            (got[1] - 0.2445).abs() < 1e-3,
            "fmod(1e7, 3.3) = {} on {path:?}",
            got[1]
        );
        assert_eq!(got[1], (1e7f64 % 3.3f32 as f64) as f32);
        assert_eq!(got[2], -got[1], "fmod takes the dividend's sign");
    }
    each_path(
        &[-1e4, -98.19, 1e20, -3e38],
        |t| t[0].asinh(),
        |x, y| rel_close(y, (x as f64).asinh(), 1.2e-7),
    );
    each_path(
        &[1e20, 1.5, 3e38],
        |t| t[0].acosh(),
        |x, y| rel_close(y, (x as f64).acosh(), 1.2e-7),
    );
    each_path(
        &[1e-3, -1e-3, 1e-20, 0.5],
        |t| t[0].atan(),
        |x, y| rel_close(y, (x as f64).atan(), 1.2e-7),
    );
    each_path(
        &[1e-3, -1e-3, 1e-20, 0.99],
        |t| t[0].asin(),
        |x, y| rel_close(y, (x as f64).asin(), 1.2e-7),
    );
    // cosh(89) = 2.24e38 < f32::MAX; sinh near 0 keeps its digits.
    each_path(
        &[89.0, -89.0, 89.4],
        |t| t[0].cosh(),
        |x, y| y.is_finite() && rel_close(y, (x as f64).cosh(), 1.2e-7),
    );
    each_path(
        &[89.0, 1e-5, -1e-7, 1e-30],
        |t| t[0].sinh(),
        |x, y| rel_close(y, (x as f64).sinh(), 1.2e-7),
    );
}

#[test]
fn gelu_of_large_negative_inputs_is_minus_zero_on_every_path() {
    // -1e4 .. -10 (erf(x / sqrt 2) rounds to -1 from about -5.54 on), in a
    // row long enough for the AVX-512 path.
    let x: Vec<f32> = (0..4096)
        .map(|i| -1e4 + i as f32 * (1e4 - 10.0) / 4095.0)
        .collect();
    each_path(&x, |t| t[0].gelu(), |_, y| y == 0.0 && y.is_sign_negative());
    // And erf itself is exactly ±1 from 3.92 on.
    let x: Vec<f32> = (0..4096).map(|i| 3.919_206 + i as f32 * 0.01).collect();
    each_path(&x, |t| t[0].erf(), |_, y| y == 1.0);
    each_path(&x, |t| t[0].neg()?.erf(), |_, y| y == -1.0);
}

// ------------------------------------------------- ONNX activations

mod onnx_activations {
    //! The activations kiln's ONNX importer composes from primitives
    //! (Softplus, Softsign, Elu, Selu, Celu, Mish, HardSwish,
    //! ThresholdedRelu, Gelu) over the same whole-range sweep, against
    //! their definitions in f64, on every path.

    use super::{paths, sweep, Path};
    use kiln::prelude::*;
    use kiln_onnx::proto::{self, tensor_proto::DataType};
    use kiln_onnx::ImportOptions;
    use prost::Message;

    fn value_info(name: &str, dims: &[i64]) -> proto::ValueInfoProto {
        use proto::tensor_shape_proto::{dimension::Value, Dimension};
        proto::ValueInfoProto {
            name: name.into(),
            r#type: Some(proto::TypeProto {
                value: Some(proto::type_proto::Value::TensorType(
                    proto::type_proto::Tensor {
                        elem_type: DataType::Float as i32,
                        shape: Some(proto::TensorShapeProto {
                            dim: dims
                                .iter()
                                .map(|&n| Dimension {
                                    value: Some(Value::DimValue(n)),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `op` (with its default attributes) of `x` on `path`.
    fn run(op: &str, x: &[f32], path: Path) -> Vec<f32> {
        let n = x.len();
        let (device, opts) = path.options();
        let (rows, cols) = path.shape(n);
        let scalar = path == Path::Scalar;
        let mut nodes = vec![proto::NodeProto {
            op_type: op.into(),
            input: vec!["x".into()],
            output: vec![if scalar { "t" } else { "y" }.into()],
            ..Default::default()
        }];
        let mut inputs = vec![value_info("x", &[rows as i64, cols as i64])];
        if scalar {
            // Times a per-row 1: keeps the rows of 7 from merging.
            nodes.push(proto::NodeProto {
                op_type: "Mul".into(),
                input: vec!["t".into(), "ones".into()],
                output: vec!["y".into()],
                ..Default::default()
            });
            inputs.push(value_info("ones", &[rows as i64, 1]));
        }
        let m = proto::ModelProto {
            ir_version: 8,
            opset_import: vec![proto::OperatorSetIdProto {
                domain: String::new(),
                version: 22,
            }],
            graph: Some(proto::GraphProto {
                name: "g".into(),
                node: nodes,
                input: inputs,
                output: vec![value_info("y", &[rows as i64, cols as i64])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = kiln_onnx::import_bytes(&m.encode_to_vec(), &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{op}: {e}"));
        let s = Session::with_options(&graph, device, opts).unwrap();
        let mut data = x.to_vec();
        data.resize(rows * cols, 0.0);
        let xa = Array::from_vec(vec![rows, cols], data).unwrap();
        let ones = Array::from_vec(vec![rows, 1], vec![1f32; rows]).unwrap();
        let mut feeds = vec![("x", &xa)];
        if scalar {
            feeds.push(("ones", &ones));
        }
        let out = s.run(&feeds, &["y"]).unwrap().remove(0);
        out.as_slice::<f32>().unwrap()[..n].to_vec()
    }

    fn softplus(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }

    /// `op`'s definition, in f64 (its limit at ±inf).
    fn truth(op: &str, x: f64) -> f64 {
        let (alpha, gamma) = (1.673_263_192_176_818_8, 1.050_701_022_148_132_3);
        if x.is_nan() {
            // The spec's "x if x > alpha, else 0" (and ONNX Runtime's).
            return if op == "ThresholdedRelu" { 0.0 } else { x };
        }
        match op {
            "Softplus" => softplus(x),
            "Softsign" if x.is_infinite() => x.signum(),
            "Softsign" => x / (1.0 + x.abs()),
            "Elu" if x > 0.0 => x,
            "Elu" => x.exp_m1(),
            // The attributes are f32: alpha and gamma as the f32 defaults.
            "Selu" if x > 0.0 => gamma as f32 as f64 * x,
            "Selu" => gamma as f32 as f64 * (alpha as f32 as f64 * x.exp_m1()),
            "Celu" => x.max(0.0) + x.exp_m1().min(0.0),
            "Mish" if x == f64::NEG_INFINITY => 0.0,
            "Mish" => x * softplus(x).tanh(),
            "HardSwish" if x == f64::NEG_INFINITY => 0.0,
            "HardSwish" => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            "ThresholdedRelu" if x > 1.0 => x,
            "ThresholdedRelu" => 0.0,
            _ => unreachable!("{op}"),
        }
    }

    #[test]
    fn composed_activations_over_the_whole_range() {
        let x = sweep();
        // (op with its default attributes, bound in ulps where the true
        // value is normal)
        let cases: [(&str, f64); 8] = [
            ("Softplus", 4.0),
            ("Softsign", 1.5),
            ("Elu", 6.0),
            ("Selu", 8.0),
            ("Celu", 6.0),
            ("Mish", 6.0),
            ("HardSwish", 2.0),
            ("ThresholdedRelu", 0.5),
        ];
        for (op, ulps) in cases {
            let mut line = format!("{op}:");
            for path in paths() {
                let got = run(op, &x, path);
                let mut worst = 0f64;
                for (&xi, &g) in x.iter().zip(&got) {
                    let t = truth(op, xi as f64);
                    let what = || format!("{op}({xi:e}) on {path:?} = {g:e}, true {t:e}");
                    if t.is_nan() || (t as f32).is_infinite() {
                        assert!(g.is_nan() && t.is_nan() || g == t as f32, "{}", what());
                        continue;
                    }
                    assert!(g.is_finite(), "{}", what());
                    let err = (g as f64 - t).abs();
                    // Mish below -80 multiplies x by e^x that is subnormal:
                    // its results (under 2^-100) are exact only absolutely.
                    if op == "Mish" && xi < -80.0 {
                        assert!(t.abs() < 2f64.powi(-100), "{}", what());
                        assert!(err <= f32::MIN_POSITIVE as f64, "{}", what());
                        continue;
                    }
                    if t.abs() < f32::MIN_POSITIVE as f64 {
                        assert!(err <= f32::MIN_POSITIVE as f64, "{}", what());
                        continue;
                    }
                    let e = err / super::ulp32(t);
                    assert!(e <= ulps, "{} ({e:.2} ulps, bound {ulps})", what());
                    worst = worst.max(e);
                }
                line += &format!(" {path:?} {worst:.2} ulp");
            }
            println!("{line}");
        }
    }
}

/// The gradient of `sum(build(x))` (or of `sum(a rem b)`), in f64 on the
/// reference interpreter.
fn gradients_f64(
    xs: &[&[f64]],
    build: impl for<'g> Fn(&[Tensor<'g>]) -> kiln::graph::Result<Tensor<'g>>,
) -> Vec<Vec<f64>> {
    let g = GraphBuilder::new();
    let n = xs[0].len();
    let ps: Vec<Tensor<'_>> = (0..xs.len())
        .map(|i| {
            g.placeholder(&format!("x{i}"), DType::F64, shape![n])
                .unwrap()
        })
        .collect();
    let loss = build(&ps).unwrap().sum_all().unwrap();
    let grads = g.gradients(loss, &ps).unwrap();
    let names: Vec<String> = grads
        .iter()
        .enumerate()
        .map(|(i, t)| t.named(&format!("g{i}")).unwrap().name())
        .collect();
    let s = Session::new(&g.into_graph(), Device::Reference).unwrap();
    let arrays: Vec<Array> = xs
        .iter()
        .map(|x| Array::from_vec(vec![n], x.to_vec()).unwrap())
        .collect();
    let feeds: Vec<(String, &Array)> = arrays
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("x{i}"), a))
        .collect();
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(k, a)| (k.as_str(), *a)).collect();
    let fetch: Vec<&str> = names.iter().map(String::as_str).collect();
    s.run(&refs, &fetch)
        .unwrap()
        .iter()
        .map(|a| a.as_slice::<f64>().unwrap().to_vec())
        .collect()
}

#[test]
fn gradients_of_the_new_ops_are_the_standard_derivatives() {
    use UnaryOp::*;
    let wide: Vec<f64> = (0..41).map(|i| -4.0 + i as f64 * 0.2 + 0.01).collect();
    let unit: Vec<f64> = (0..39).map(|i| -0.95 + i as f64 * 0.05).collect();
    let above1: Vec<f64> = (0..40).map(|i| 1.05 + i as f64 * 0.25).collect();
    type Derivative = fn(f64) -> f64;
    let cases: [(UnaryOp, &[f64], Derivative); 9] = [
        (Tan, &unit, |x| 1.0 / (x.cos() * x.cos())),
        (Asin, &unit, |x| 1.0 / (1.0 - x * x).sqrt()),
        (Acos, &unit, |x| -1.0 / (1.0 - x * x).sqrt()),
        (Atan, &wide, |x| 1.0 / (1.0 + x * x)),
        (Sinh, &wide, |x| x.cosh()),
        (Cosh, &wide, |x| x.sinh()),
        (Asinh, &wide, |x| 1.0 / (x * x + 1.0).sqrt()),
        (Acosh, &above1, |x| 1.0 / (x * x - 1.0).sqrt()),
        (Atanh, &unit, |x| 1.0 / (1.0 - x * x)),
    ];
    for (f, x, d) in cases {
        let got = gradients_f64(&[x], |t| apply(f, t[0])).remove(0);
        for (&xi, &gi) in x.iter().zip(&got) {
            let want = d(xi);
            assert!(
                (gi - want).abs() <= 1e-12 * want.abs().max(1.0),
                "d{f:?}({xi}) = {gi}, want {want}"
            );
        }
    }
    // d(a rem b)/da = 1, d/db = -trunc(a / b).
    let a: Vec<f64> = vec![7.5, -7.5, 7.5, -7.5, 1e4, 0.3];
    let b: Vec<f64> = vec![2.0, 2.0, -2.0, -2.0, 3.3, 0.7];
    let g = gradients_f64(&[&a, &b], |t| t[0].rem(t[1]));
    for i in 0..a.len() {
        assert_eq!(g[0][i], 1.0);
        assert_eq!(
            g[1][i],
            -(a[i] / b[i]).trunc(),
            "d rem / db at {} rem {}",
            a[i],
            b[i]
        );
    }
}

//! Checks the reference interpreter against independent NumPy-computed
//! fixtures (`tests/fixtures/ops.json`, written by `tests/fixtures/gen_ops.py`).
//!
//! Each fixture case is one primitive op (its `Op` exactly as serde writes it)
//! or one layer builder function, with its inputs, the expected output and a
//! tolerance. Every case runs as a one-node graph (plus placeholders) in a
//! `Session` on `Device::Reference`, then on `Device::Cpu`. There is one
//! `#[test]` per op family, so a failure points at the family; its message
//! names each failing case and the first mismatching element. Integers (every
//! integer dtype, u64 above i64::MAX included) are read and compared exactly
//! in their own dtype.
//!
//! Regenerate the fixtures with `python3 tests/fixtures/gen_ops.py`.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use kiln::graph::{Array, DType, Data, Graph, GraphBuilder, Op, Scalar, Shape, SourceLoc, Tensor};
use kiln::{Device, Session};
use serde_json::Value;

const FIXTURES: &str = include_str!("../fixtures/ops.json");

/// Every family a test below runs; a fixture case of another family is an error.
const FAMILIES: &[&str] = &[
    "unary", "binary", "select", "cast", "reduce", "arg", "movement", "matmul", "conv2d", "pool",
    "index", "iota", "random", "layers",
];

fn cases() -> &'static [Value] {
    static CASES: OnceLock<Vec<Value>> = OnceLock::new();
    CASES.get_or_init(|| {
        let doc: Value = serde_json::from_str(FIXTURES).expect("ops.json is valid JSON");
        assert_eq!(doc["version"], 1, "unknown fixture version");
        doc["cases"]
            .as_array()
            .expect("ops.json has a cases array")
            .clone()
    })
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("case field '{key}' must be a string: {case}"))
}

fn case_name(case: &Value) -> &str {
    str_field(case, "name")
}

// ---------------------------------------------------------------- parsing

fn parse_dtype(s: &str) -> DType {
    DType::from_name(s).unwrap_or_else(|| panic!("unknown dtype '{s}'"))
}

/// A float written as a JSON number, or as a string (exact decimal, `nan`, `inf`, `-inf`).
fn parse_float<T: std::str::FromStr>(
    v: &Value,
    from_f64: impl Fn(f64) -> T,
    nan: T,
    inf: T,
    ninf: T,
) -> T {
    match v {
        Value::Number(n) => from_f64(n.as_f64().expect("a float")),
        Value::String(s) => match s.as_str() {
            "nan" => nan,
            "inf" => inf,
            "-inf" => ninf,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad float string '{other}'")),
        },
        other => panic!("expected a float, got {other}"),
    }
}

/// A JSON integer as `T`: read as i64 or, above i64::MAX, as u64, and
/// range-checked against `dtype` (`T`'s dtype); `what` names the item.
fn parse_int<T: TryFrom<i64> + TryFrom<u64>>(x: &Value, dtype: DType, what: &str) -> T {
    let fits = if let Some(i) = x.as_i64() {
        T::try_from(i).ok()
    } else if let Some(u) = x.as_u64() {
        T::try_from(u).ok()
    } else {
        panic!("{what}: expected an integer, got {x}")
    };
    fits.unwrap_or_else(|| panic!("{what}: {x} is out of range for {dtype}"))
}

fn parse_array(v: &Value) -> Array {
    let dtype = parse_dtype(v["dtype"].as_str().expect("tensor dtype"));
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("tensor shape")
        .iter()
        .map(|d| d.as_u64().expect("dims are non-negative integers") as usize)
        .collect();
    let items = v["data"].as_array().expect("tensor data");
    fn ints<T: TryFrom<i64> + TryFrom<u64>>(items: &[Value], dtype: DType) -> Vec<T> {
        items
            .iter()
            .enumerate()
            .map(|(i, x)| parse_int(x, dtype, &format!("{dtype} tensor item {i}")))
            .collect()
    }
    let data = match dtype {
        DType::F32 => Data::F32(
            items
                .iter()
                .map(|x| parse_float(x, |f| f as f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY))
                .collect(),
        ),
        DType::F64 => Data::F64(
            items
                .iter()
                .map(|x| parse_float(x, |f| f, f64::NAN, f64::INFINITY, f64::NEG_INFINITY))
                .collect(),
        ),
        DType::I8 => Data::I8(ints(items, dtype)),
        DType::I16 => Data::I16(ints(items, dtype)),
        DType::I32 => Data::I32(ints(items, dtype)),
        DType::I64 => Data::I64(ints(items, dtype)),
        DType::U8 => Data::U8(ints(items, dtype)),
        DType::U16 => Data::U16(ints(items, dtype)),
        DType::U32 => Data::U32(ints(items, dtype)),
        DType::U64 => Data::U64(ints(items, dtype)),
        DType::Bool => Data::Bool(items.iter().map(|x| x.as_bool().expect("a bool")).collect()),
        DType::F16 | DType::BF16 => panic!("the NumPy fixtures hold no {dtype} tensors"),
    };
    Array::new(shape.clone(), data)
        .unwrap_or_else(|| panic!("data length does not match shape {shape:?}"))
}

// ---------------------------------------------------------------- running

/// Runs one case; `Err` is a build or run error, as text.
fn run_case(case: &Value, inputs: &[Array], device: Device) -> Result<Array, String> {
    let feeds_names: Vec<String> = (0..inputs.len()).map(|i| format!("in{i}")).collect();
    let graph = if let Some(op_json) = case.get("op") {
        let op: Op = serde_json::from_value(op_json.clone())
            .map_err(|e| format!("cannot deserialize op {op_json}: {e}"))?;
        // The fixture must hold the op exactly as serde writes it (no ignored or misspelt fields).
        let back = serde_json::to_value(&op).map_err(|e| e.to_string())?;
        if &back != op_json {
            return Err(format!("op {op_json} serializes back as {back}"));
        }
        let mut g = Graph::new();
        let mut ids = Vec::new();
        for (name, a) in feeds_names.iter().zip(inputs) {
            let ph = Op::Placeholder {
                dtype: a.dtype(),
                shape: Shape::fixed(a.shape()),
            };
            ids.push(
                g.add_node(name, ph, &[], SourceLoc::default())
                    .map_err(|e| e.to_string())?,
            );
        }
        g.add_node("out", op, &ids, SourceLoc::default())
            .map_err(|e| format!("build: {e}"))?;
        g
    } else {
        build_layer(case, inputs).map_err(|e| format!("build: {e}"))?
    };
    let sess = Session::new(&graph, device).map_err(|e| e.to_string())?;
    let feeds: Vec<(&str, &Array)> = feeds_names.iter().map(String::as_str).zip(inputs).collect();
    let mut out = sess
        .run(&feeds, &["out"])
        .map_err(|e| format!("run: {e}"))?;
    Ok(out.remove(0))
}

/// Builds the graph of a layer case: one placeholder per input and the layer.
fn build_layer(case: &Value, inputs: &[Array]) -> kiln::graph::Result<Graph> {
    let g = GraphBuilder::new();
    let mut ins: Vec<Tensor<'_>> = Vec::new();
    for (i, a) in inputs.iter().enumerate() {
        ins.push(g.placeholder(&format!("in{i}"), a.dtype(), a.shape().to_vec())?);
    }
    let axis = || {
        case["axis"]
            .as_i64()
            .expect("layer needs an integer 'axis'")
    };
    let out = match str_field(case, "layer") {
        "softmax" => ins[0].softmax(axis())?,
        "log_softmax" => ins[0].log_softmax(axis())?,
        "gelu" => ins[0].gelu()?,
        "gelu_tanh" => ins[0].gelu_tanh()?,
        "normalize" => {
            let axes: Vec<i64> = case["axes"]
                .as_array()
                .expect("normalize needs 'axes'")
                .iter()
                .map(|a| a.as_i64().unwrap())
                .collect();
            let eps = case["eps"].as_f64().expect("normalize needs 'eps'");
            ins[0].normalize(&axes, ins[1], ins[2], eps)?
        }
        "sparse_softmax_cross_entropy" => {
            kiln::graph::sparse_softmax_cross_entropy(ins[0], ins[1])?
        }
        other => panic!("unknown layer '{other}' in case {}", case_name(case)),
    };
    out.named("out")?;
    Ok(g.graph())
}

// ---------------------------------------------------------------- comparing

fn multi_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
    }
    idx
}

/// `Ok` when `got` matches `want` within the tolerance; else where and how it differs.
fn compare(got: &Array, want: &Array, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "got {}{:?}, expected {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    let at = |i: usize| {
        format!(
            "first mismatch at index {i} {:?}",
            multi_index(i, want.shape())
        )
    };
    // Integers and bools exactly, element by element in their own type (a
    // u64 or i64 beyond 2^53 does not survive a trip through f64).
    if want.dtype().is_int() || want.dtype() == DType::Bool {
        return match (0..want.len()).find(|&i| got.get(i) != want.get(i)) {
            None => Ok(()),
            Some(i) => Err(format!(
                "{}: got {}, expected {} ({} of {} elements differ)",
                at(i),
                scalar_text(got.get(i)),
                scalar_text(want.get(i)),
                (0..want.len())
                    .filter(|&j| got.get(j) != want.get(j))
                    .count(),
                want.len()
            )),
        };
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() || a.is_nan() || a.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= atol + rtol * b.abs()
        };
        if !ok {
            return Err(format!(
                "{}: got {a:e}, expected {b:e} (|diff| {:e}, allowed {:e}; {} of {} elements differ)",
                at(i),
                (a - b).abs(),
                atol + rtol * b.abs(),
                g.iter()
                    .zip(&w)
                    .filter(|(a, b)| !(a == b || (a.is_nan() && b.is_nan()) || (*a - *b).abs() <= atol + rtol * b.abs()))
                    .count(),
                g.len()
            ));
        }
    }
    Ok(())
}

/// An integer or bool element as plain text (`200`, not `U8(200)`).
fn scalar_text(s: Scalar) -> String {
    match s {
        Scalar::I8(v) => v.to_string(),
        Scalar::I16(v) => v.to_string(),
        Scalar::I32(v) => v.to_string(),
        Scalar::I64(v) => v.to_string(),
        Scalar::U8(v) => v.to_string(),
        Scalar::U16(v) => v.to_string(),
        Scalar::U32(v) => v.to_string(),
        Scalar::U64(v) => v.to_string(),
        Scalar::Bool(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

/// Runs and checks one case; `Err` describes the failure.
fn check_case(case: &Value, device: Device) -> Result<(), String> {
    let inputs: Vec<Array> = case["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(parse_array)
        .collect();
    let want = parse_array(&case["expected"]);
    let rtol = case["rtol"].as_f64().expect("rtol");
    let atol = case["atol"].as_f64().expect("atol");
    let got = run_case(case, &inputs, device)?;
    compare(&got, &want, rtol, atol).map_err(|e| format!("on {device}: {e}"))
}

/// Runs every case of `family` and fails listing each failing case.
fn run_family(family: &str) {
    assert!(
        FAMILIES.contains(&family),
        "family '{family}' is not in FAMILIES"
    );
    let mut failures = Vec::new();
    let (mut n, mut known) = (0, 0);
    for case in cases().iter().filter(|c| c["family"] == family) {
        n += 1;
        let name = case_name(case);
        // Every case runs on the reference interpreter and on the CPU backend.
        let result = [Device::Reference, Device::Cpu]
            .into_iter()
            .try_for_each(|d| {
                std::panic::catch_unwind(|| check_case(case, d))
                    .unwrap_or_else(|p| Err(format!("panicked on {d}: {}", panic_text(&p))))
            });
        match (result, case.get("known_bug").and_then(Value::as_str)) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => {
                println!("note: case '{name}' is marked known_bug but now passes; remove the marker in gen_ops.py")
            }
            (Err(e), Some(why)) => {
                known += 1;
                println!("KNOWN BUG, skipped: case '{name}': {e}\n    ({why})")
            }
            (Err(e), None) => failures.push(format!("case '{name}': {e}")),
        }
    }
    assert!(n > 0, "no fixture cases for family '{family}'");
    assert!(
        failures.is_empty(),
        "{} of {n} '{family}' cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "{} of {n} '{family}' cases passed ({known} known bugs skipped)",
        n - known
    );
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic>".into())
}

// ---------------------------------------------------------------- tests

#[test]
fn unary() {
    run_family("unary");
}

#[test]
fn binary() {
    run_family("binary");
}

#[test]
fn select() {
    run_family("select");
}

#[test]
fn cast() {
    run_family("cast");
}

#[test]
fn reduce() {
    run_family("reduce");
}

#[test]
fn arg_reduce() {
    run_family("arg");
}

#[test]
fn movement() {
    run_family("movement");
}

#[test]
fn matmul() {
    run_family("matmul");
}

#[test]
fn conv2d() {
    run_family("conv2d");
}

#[test]
fn pooling() {
    run_family("pool");
}

#[test]
fn gather_scatter() {
    run_family("index");
}

#[test]
fn iota() {
    run_family("iota");
}

#[test]
fn random() {
    run_family("random");
}

#[test]
fn layers() {
    run_family("layers");
}

/// Case names are unique and every case belongs to a tested family.
#[test]
fn fixture_cases_are_well_formed() {
    let mut names = BTreeSet::new();
    for case in cases() {
        let name = case_name(case);
        assert!(names.insert(name), "duplicate case name '{name}'");
        let family = str_field(case, "family");
        assert!(
            FAMILIES.contains(&family),
            "case '{name}' has unknown family '{family}'"
        );
        assert!(
            case.get("op").is_some() != case.get("layer").is_some(),
            "case '{name}' needs exactly one of op, layer"
        );
    }
}

/// The fixtures exercise every primitive op (all unary and binary functions,
/// every reduction) except the stateful ones, and every layer listed.
#[test]
fn fixtures_cover_every_op() {
    let mut seen = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for case in cases() {
        if let Some(op) = case.get("op") {
            let op: Op = serde_json::from_value(op.clone()).expect("op deserializes");
            seen.insert(op.name());
        } else {
            layers.insert(str_field(case, "layer"));
        }
    }
    let want = [
        // sources
        "iota",
        "random_uniform",
        "random_normal",
        // unary
        "neg",
        "abs",
        "sign",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "recip",
        "sin",
        "cos",
        "tanh",
        "sigmoid",
        "erf",
        "floor",
        "ceil",
        "round",
        "not",
        // binary
        "add",
        "sub",
        "mul",
        "div",
        "pow",
        "maximum",
        "minimum",
        "equal",
        "not_equal",
        "less",
        "less_equal",
        "greater",
        "greater_equal",
        "and",
        "or",
        "xor",
        // the rest
        "select",
        "cast",
        "reduce_sum",
        "reduce_prod",
        "reduce_max",
        "reduce_min",
        "argmax",
        "argmin",
        "reshape",
        "permute",
        "broadcast",
        "slice",
        "pad",
        "concat",
        "matmul",
        "conv2d",
        "max_pool2d",
        "avg_pool2d",
        "gather",
        "scatter_add",
    ];
    let missing: Vec<&str> = want.iter().copied().filter(|w| !seen.contains(w)).collect();
    assert!(missing.is_empty(), "ops without fixture cases: {missing:?}");
    for l in [
        "softmax",
        "log_softmax",
        "gelu",
        "gelu_tanh",
        "normalize",
        "sparse_softmax_cross_entropy",
    ] {
        assert!(layers.contains(l), "layer {l} has no fixture case");
    }
}

/// The integer dtypes (the narrow and unsigned ones in every family that
/// takes integers; bitwise not/and/or/xor on every integer dtype) and every
/// cast between the integer dtypes, f32, f64 and bool have fixture cases.
#[test]
fn fixtures_cover_every_integer_dtype() {
    let ints = [
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
    ];
    let mut seen = BTreeSet::new();
    let mut casts = BTreeSet::new();
    for case in cases() {
        let Some(op_json) = case.get("op") else {
            continue;
        };
        let op: Op = serde_json::from_value(op_json.clone()).expect("op deserializes");
        let inputs = case["inputs"].as_array().expect("inputs");
        // The data operand's dtype (a select's first branch, a source's output).
        let data = match op {
            Op::Select => inputs.get(1),
            _ => inputs.first(),
        };
        let dtype = parse_dtype(
            data.unwrap_or(&case["expected"])["dtype"]
                .as_str()
                .expect("dtype"),
        );
        if let Op::Cast { to } = op {
            casts.insert((dtype, to));
        }
        seen.insert((op.name().to_string(), dtype));
    }
    let mut missing = Vec::new();
    for &dt in &ints {
        let narrow = !matches!(dt, DType::I32 | DType::I64);
        let mut want = vec!["not", "and", "or", "xor"];
        if narrow {
            want.extend([
                "neg",
                "abs",
                "sign",
                "add",
                "sub",
                "mul",
                "div",
                "pow",
                "maximum",
                "minimum",
                "equal",
                "not_equal",
                "less",
                "less_equal",
                "greater",
                "greater_equal",
                "select",
                "reduce_sum",
                "reduce_prod",
                "reduce_max",
                "reduce_min",
                "argmax",
                "argmin",
                "matmul",
                "iota",
                "gather",
                "scatter_add",
                "reshape",
                "permute",
                "broadcast",
                "slice",
                "pad",
                "concat",
            ]);
        }
        for op in want {
            if !seen.contains(&(op.to_string(), dt)) {
                missing.push(format!("{op} on {dt}"));
            }
        }
    }
    let cast_dtypes: Vec<DType> = [DType::F32, DType::F64, DType::Bool]
        .into_iter()
        .chain(ints)
        .collect();
    for &from in &cast_dtypes {
        for &to in &cast_dtypes {
            if !casts.contains(&(from, to)) {
                missing.push(format!("cast {from} -> {to}"));
            }
        }
    }
    assert!(missing.is_empty(), "no fixture cases for: {missing:?}");
}

/// Fixture integers are read in their own dtype: u64 values above
/// i64::MAX exactly, and a value out of the dtype's range is an error that
/// names the value and the dtype.
#[test]
fn fixture_integers_parse_exactly_and_in_range() {
    let a = parse_array(&serde_json::json!({
        "dtype": "u64", "shape": [3], "data": [18446744073709551615u64, 9223372036854775809u64, 0]
    }));
    assert_eq!(
        a,
        Array::from_vec(vec![3], vec![u64::MAX, (1u64 << 63) + 1, 0]).unwrap()
    );
    let a = parse_array(&serde_json::json!({"dtype": "i8", "shape": [2], "data": [-128, 127]}));
    assert_eq!(a, Array::from_vec(vec![2], vec![i8::MIN, i8::MAX]).unwrap());
    for (dtype, bad) in [
        ("u8", serde_json::json!(256)),
        ("u8", serde_json::json!(-1)),
        ("i8", serde_json::json!(-129)),
        ("u16", serde_json::json!(65536)),
        ("i16", serde_json::json!(32768)),
        ("u32", serde_json::json!(-5)),
        ("i32", serde_json::json!(2147483648u64)),
        ("i64", serde_json::json!(9223372036854775808u64)),
        ("u64", serde_json::json!(-1)),
    ] {
        let v = serde_json::json!({"dtype": dtype, "shape": [2], "data": [0, bad]});
        let msg = std::panic::catch_unwind(|| parse_array(&v))
            .map(|_| String::new())
            .unwrap_or_else(|p| panic_text(&p));
        let want = format!("{dtype} tensor item 1: {bad} is out of range for {dtype}");
        assert_eq!(msg, want, "{v}");
    }
}

//! The optimizer against the reference interpreter on randomly generated
//! graphs (see `kiln_tests::random_graph`), and the bugs that found, each
//! minimized to a named regression test.
//!
//! For each graph the reference runs the unoptimized graph; the compiled
//! kernel program (full pipeline, no simplification, frozen variables) must
//! give the same outputs and variable updates (within `kiln_tests::compare`'s
//! tolerances; exactly without simplification), twice over bit for bit,
//! with a memory plan between its lower bound and no planning at all. On every
//! fifth graph each graph pass alone must also preserve the results, on the
//! interpreter and compiled. A panic fails only its case; the test lists
//! every failing seed (rerun one with `KILN_RANDOM_SEED=s
//! KILN_RANDOM_GRAPHS=1 KILN_RANDOM_SHOW=1`).
//!
//! Knobs: `KILN_RANDOM_GRAPHS` (how many, default 2000),
//! `KILN_RANDOM_DEVICE` (check only that device, e.g. `cuda`, against the
//! reference),
//! `KILN_RANDOM_SEED` (first seed, default 0), `KILN_RANDOM_SHOW=1` (print
//! each failing graph).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use kiln::graph::{Array, Bindings, Dim, Graph, Op};
use kiln::prelude::*;
use kiln_optimizer::passes::{all_pass_names, default_pipeline};
use kiln_optimizer::{compile, exec, CompileOptions};
use kiln_tests::random_graph::generate;
use kiln_tests::{compare, feeds_for};

/// Outputs of one run and the variable values after it commits.
struct RunResult {
    outputs: Vec<Array>,
    variables: HashMap<String, Array>,
}

fn initial_variables(graph: &Graph) -> HashMap<String, Array> {
    graph
        .variables()
        .into_iter()
        .map(|v| match &graph.node(v).op {
            Op::Variable { init, .. } => (graph.node(v).name.clone(), (*init.0).clone()),
            _ => unreachable!("variables() lists variables"),
        })
        .collect()
}

fn bindings_of(graph: &Graph, feeds: &[(String, Array)]) -> Bindings {
    let mut bindings = Bindings::new();
    for (name, a) in feeds {
        if let Ok(id) = graph.find(name) {
            for (d, &n) in graph.node(id).ty.shape.dims().iter().zip(a.shape()) {
                if let Dim::Sym(s) = d {
                    bindings.insert(s.clone(), n);
                }
            }
        }
    }
    bindings
}

/// The graph's outputs on the reference interpreter, through a session.
fn reference(graph: &Graph, feeds: &[(String, Array)]) -> Result<RunResult, String> {
    session_run(graph, feeds, Device::Reference)
}

/// The graph's outputs and final variables on `device`, through a session.
fn session_run(
    graph: &Graph,
    feeds: &[(String, Array)],
    device: Device,
) -> Result<RunResult, String> {
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let s = Session::new(graph, device).map_err(|e| e.to_string())?;
    let outputs = s
        .run_outputs(&refs)
        .map_err(|e| format!("{device} run failed: {e}"))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let mut variables = HashMap::new();
    for v in graph.variables() {
        let name = &graph.node(v).name;
        variables.insert(
            name.clone(),
            s.variable(name).map_err(|e| e.to_string())?.clone(),
        );
    }
    Ok(RunResult { outputs, variables })
}

/// A pass's output graph on the reference interpreter itself: dead-code
/// elimination may remove the placeholder that binds a symbolic dim other
/// nodes still use, so the sizes come from the original graph's feeds.
fn interpret(
    graph: &Graph,
    feeds: &[(String, Array)],
    bindings: &Bindings,
) -> Result<RunResult, String> {
    use kiln::graph::interp::{run, RunInputs};
    let fed: HashMap<&str, &Array> = feeds
        .iter()
        .filter(|(n, _)| graph.find(n).is_ok())
        .map(|(n, a)| (n.as_str(), a))
        .collect();
    let initial = initial_variables(graph);
    let inputs = RunInputs {
        feeds: &fed,
        variables: &initial,
        bindings,
    };
    let out =
        run(graph, &inputs, graph.outputs()).map_err(|e| format!("reference run failed: {e}"))?;
    let mut variables = initial.clone();
    for (v, a) in out.updates {
        variables.insert(graph.node(v).name.clone(), a);
    }
    Ok(RunResult {
        outputs: out.fetched,
        variables,
    })
}

/// `kiln_tests::compare`, and infinities exactly: there `|g - w| <= atol +
/// rtol * |w|` holds for any `g` when `w` is infinite; and integers exactly
/// in their own dtype (compare goes through f64, where i64 and u64 values
/// beyond 2^53 round together).
fn compare_exact_infinities(want: &Array, got: &Array) -> Result<(), String> {
    compare(want, got)?;
    if want.dtype().is_int() {
        if let Some(i) = (0..want.len()).find(|&i| want.get(i) != got.get(i)) {
            return Err(format!(
                "element {i}: want {:?}, got {:?}",
                want.get(i),
                got.get(i)
            ));
        }
    }
    for (i, (w, g)) in want.to_f64_vec().iter().zip(got.to_f64_vec()).enumerate() {
        if w.is_infinite() && *w != g {
            return Err(format!("element {i}: want {w}, got {g}"));
        }
    }
    Ok(())
}

/// Compares outputs and variables; a variable `got` lacks (a pass removed
/// or froze it) must have kept its initial value.
fn compare_results(
    want: &RunResult,
    got: &RunResult,
    initial: &HashMap<String, Array>,
) -> Result<(), String> {
    if want.outputs.len() != got.outputs.len() {
        return Err(format!(
            "{} outputs, want {}",
            got.outputs.len(),
            want.outputs.len()
        ));
    }
    for (i, (w, g)) in want.outputs.iter().zip(&got.outputs).enumerate() {
        compare_exact_infinities(w, g).map_err(|e| format!("output {i}: {e}"))?;
    }
    for (name, w) in &want.variables {
        let g = got.variables.get(name).unwrap_or(&initial[name]);
        compare_exact_infinities(w, g).map_err(|e| format!("variable {name}: {e}"))?;
    }
    Ok(())
}

/// The CPU backend's outputs against the reference. Its fast f32
/// transcendentals are within ~4e-7 of libm (tests/tests/cpu_math.rs) and its
/// GEMMs and f32 sums round in another order; the generated graphs feed
/// such values through chains of `32 * tanh(..)`, matmuls and cancelling
/// subtractions, which amplify those differences by up to ~1e3. So f32 is
/// compared at rtol = atol = 2e-3 here (the fixed example models hold
/// 1e-4/1e-5); f64, integers, bools, NaN and infinities as everywhere else.
fn compare_cpu(want: &RunResult, got: &RunResult) -> Result<(), String> {
    let vars = want
        .variables
        .iter()
        .map(|(n, w)| (n.clone(), w, &got.variables[n]));
    let outs = want
        .outputs
        .iter()
        .zip(&got.outputs)
        .enumerate()
        .map(|(i, (w, g))| (format!("output {i}"), w, g));
    for (i, w, g) in outs.chain(vars) {
        if w.dtype() != kiln::graph::DType::F32 || w.shape() != g.shape() || g.dtype() != w.dtype()
        {
            compare_exact_infinities(w, g).map_err(|e| format!("{i}: {e}"))?;
            continue;
        }
        let (wv, gv) = (w.to_f64_vec(), g.to_f64_vec());
        for (j, (a, b)) in wv.iter().zip(&gv).enumerate() {
            let ok = (a.is_nan() && b.is_nan())
                || a == b
                || (a.is_finite() && (a - b).abs() <= 2e-3 + 2e-3 * a.abs());
            if !ok {
                return Err(format!("{i}: element {j}: want {a}, got {b}"));
            }
        }
    }
    Ok(())
}

/// Equal values (NaN equal to NaN): without graph passes nothing may round
/// differently, since the executor evaluates every element with the ops'
/// own scalar meaning and every reduction and contraction with their
/// reference meaning.
fn same_values(want: &RunResult, got: &RunResult) -> Result<(), String> {
    let arrays = want
        .outputs
        .iter()
        .zip(&got.outputs)
        .enumerate()
        .map(|(i, (w, g))| (format!("output {i}"), w, g))
        .chain(want.variables.iter().filter_map(|(n, w)| {
            got.variables
                .get(n)
                .map(|g| (format!("variable {n}"), w, g))
        }));
    for (what, w, g) in arrays {
        if w.dtype() != g.dtype() || w.shape() != g.shape() {
            return Err(format!("{what}: type differs"));
        }
        for i in 0..w.len() {
            let (a, b) = (w.get(i), g.get(i));
            if a != b && !(a.to_f64().is_nan() && b.to_f64().is_nan()) {
                return Err(format!(
                    "{what}: element {i}: want {a:?}, got {b:?} (not bit-exact without passes)"
                ));
            }
        }
    }
    Ok(())
}

fn bits_of(a: &Array) -> (kiln::graph::DType, Vec<usize>, Vec<u8>) {
    (a.dtype(), a.shape().to_vec(), a.data().to_le_bytes())
}

/// Compiles and executes `graph` twice; checks the memory plan and that the
/// two runs agree bit for bit.
fn run_compiled(
    graph: &Graph,
    feeds: &[(String, Array)],
    bindings: &Bindings,
    opts: &CompileOptions,
) -> Result<RunResult, String> {
    let compiled = compile(graph, graph.outputs(), bindings, opts)
        .map_err(|e| format!("compile failed: {e}"))?;
    let p = &compiled.program;
    let m = p.memory;
    if m.arena > m.unplanned || m.arena < m.lower_bound {
        return Err(format!("memory plan out of bounds: {m:?}"));
    }
    let inputs: HashMap<String, Array> = feeds.iter().cloned().collect();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut variables = initial_variables(graph);
        let outputs = exec::execute(p, &inputs, &mut variables)
            .map_err(|e| format!("execute failed: {e}\n{p}"))?;
        runs.push(RunResult { outputs, variables });
    }
    let (a, b) = (&runs[0], &runs[1]);
    let same_outputs = a
        .outputs
        .iter()
        .map(bits_of)
        .eq(b.outputs.iter().map(bits_of));
    let same_vars = a.variables.len() == b.variables.len()
        && a.variables
            .iter()
            .all(|(k, v)| b.variables.get(k).map(bits_of) == Some(bits_of(v)));
    if !same_outputs || !same_vars {
        return Err("two executions of one program differ".into());
    }
    Ok(runs.pop().expect("two runs"))
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f`, turning a panic into an error that names where it happened.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    match r {
        Ok(r) => r,
        Err(_) => Err(format!(
            "panicked: {}",
            LAST_PANIC.with(|p| p.borrow().clone())
        )),
    }
}

/// Installs (once) a panic hook that records, instead of printing, panics
/// inside [`guarded`].
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
            } else {
                prev(info)
            }
        }));
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `KILN_RANDOM_DEVICE` (e.g. `cuda`): check only that device's sessions
/// against the reference (how a lent GPU runs this suite).
fn device_under_test() -> Option<Device> {
    let d = std::env::var("KILN_RANDOM_DEVICE").ok()?;
    Some(
        d.parse()
            .unwrap_or_else(|e| panic!("KILN_RANDOM_DEVICE={d}: {e}")),
    )
}

/// Checks one graph; returns the number of cases compared and the failures.
fn check_graph(graph: &Graph, sym: usize, seed: u64, passes: bool) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut cases = 0;
    let feeds = feeds_for(graph, sym, seed);
    let want = match guarded(|| reference(graph, &feeds)) {
        Ok(w) => w,
        Err(e) => return (0, vec![format!("reference: {e}")]),
    };
    if let Some(device) = device_under_test() {
        // Only that device, through a session, twice (scatter-add's
        // atomics may sum in another order each time): each within the CPU
        // backend's tolerance of the reference.
        let r = guarded(|| {
            compare_cpu(&want, &session_run(graph, &feeds, device)?)?;
            compare_cpu(&want, &session_run(graph, &feeds, device)?)
                .map_err(|e| format!("second session: {e}"))
        });
        return (
            1,
            r.err()
                .map(|e| format!("{device}: {e}"))
                .into_iter()
                .collect(),
        );
    }
    let initial = initial_variables(graph);
    let bindings = bindings_of(graph, &feeds);
    let mut configs = vec![
        ("default", CompileOptions::default()),
        (
            "no_simplify",
            CompileOptions {
                no_simplify: true,
                ..Default::default()
            },
        ),
    ];
    if !graph.variables().is_empty() {
        configs.push((
            "freeze_variables",
            CompileOptions {
                freeze_variables: true,
                ..Default::default()
            },
        ));
    }
    for (label, opts) in &configs {
        cases += 1;
        let r = guarded(|| {
            let got = run_compiled(graph, &feeds, &bindings, opts)?;
            compare_results(&want, &got, &initial)?;
            if opts.no_simplify {
                same_values(&want, &got)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            failures.push(format!("{label}: {e}"));
        }
    }
    // The CPU backend (Cranelift JIT) through the public session API, twice:
    // within tolerance of the reference, and bit-identical run to run.
    cases += 1;
    let r = guarded(|| {
        let a = session_run(graph, &feeds, Device::Cpu)?;
        let b = session_run(graph, &feeds, Device::Cpu)?;
        compare_cpu(&want, &a)?;
        if !a
            .outputs
            .iter()
            .map(bits_of)
            .eq(b.outputs.iter().map(bits_of))
        {
            return Err("two CPU runs differ".into());
        }
        Ok(())
    });
    if let Err(e) = r {
        failures.push(format!("cpu: {e}"));
    }
    if passes {
        for pass in all_pass_names() {
            cases += 1;
            let r = guarded(|| {
                let mut p = default_pipeline(true);
                p.only(pass).map_err(|e| e.to_string())?;
                let (opt, _) = p
                    .verify_always()
                    .run(graph)
                    .map_err(|e| format!("pass failed: {e}"))?;
                let interpreted = interpret(&opt, &feeds, &bindings)?;
                compare_results(&want, &interpreted, &initial)
                    .map_err(|e| format!("{e}\nafter the pass:\n{opt}"))?;
                // The pass's output compiles to a program that agrees too,
                // exactly with the interpreter on that output.
                let opts = CompileOptions {
                    no_simplify: true,
                    ..Default::default()
                };
                let got = run_compiled(&opt, &feeds, &bindings, &opts)
                    .map_err(|e| format!("compiled: {e}"))?;
                compare_results(&want, &got, &initial)
                    .and_then(|()| same_values(&interpreted, &got))
                    .map_err(|e| format!("compiled: {e}\nafter the pass:\n{opt}"))
            });
            if let Err(e) = r {
                failures.push(format!("pass {pass}: {e}"));
            }
        }
    }
    (cases, failures)
}

#[test]
fn random_graphs_match_the_reference() {
    install_quiet_hook();
    let count = env_u64("KILN_RANDOM_GRAPHS", 2000);
    let first = env_u64("KILN_RANDOM_SEED", 0);
    let show = std::env::var("KILN_RANDOM_SHOW").is_ok();
    let start = Instant::now();
    let (mut graphs, mut cases, mut nodes) = (0usize, 0usize, 0usize);
    let (mut with_exprs, mut rebound) = (0usize, 0usize);
    let mut op_counts: HashMap<&'static str, usize> = HashMap::new();
    let mut dtype_counts: HashMap<DType, usize> = HashMap::new();
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    for seed in first..first + count {
        let rg = match guarded(|| Ok(generate(seed))) {
            Ok(rg) => rg,
            Err(e) => {
                failures.push((seed, format!("generator: {e}"), String::new()));
                continue;
            }
        };
        graphs += 1;
        nodes += rg.graph.len();
        for k in &rg.ops {
            *op_counts.entry(k).or_default() += 1;
        }
        for n in rg.graph.topo_order() {
            *dtype_counts.entry(rg.graph.node(n).ty.dtype).or_default() += 1;
        }
        let (mut n, mut fails) = check_graph(&rg.graph, rg.sym, seed, seed % 5 == 0);
        // A graph with symbolic dims (and dims that are expressions over
        // them) is checked at a second binding too: one graph, two sizes.
        let symbolic = rg
            .graph
            .placeholders()
            .iter()
            .any(|&p| rg.graph.node(p).ty.shape.is_symbolic());
        let exprs = rg.graph.topo_order().into_iter().any(|n| {
            rg.graph
                .node(n)
                .ty
                .shape
                .dims()
                .iter()
                .any(|d| matches!(d, Dim::Expr(_)))
        });
        with_exprs += exprs as usize;
        rebound += (symbolic && seed % 3 == 0) as usize;
        if symbolic && seed % 3 == 0 {
            // Larger: the generator's constant indices stay in range.
            let other = rg.sym + 1 + (rg.sym == 0) as usize;
            let (n2, f2) = check_graph(&rg.graph, other, seed, false);
            n += n2;
            fails.extend(f2.into_iter().map(|f| format!("with n = {other}: {f}")));
        }
        if device_under_test().is_some() {
            // Progress as it goes: a device run may be cut off by a time limit.
            eprintln!(
                "seed {seed}: {} ({:.1?})",
                if fails.is_empty() { "ok" } else { "FAILED" },
                start.elapsed()
            );
        }
        cases += n;
        for f in fails {
            failures.push((seed, f, rg.graph.to_string()));
        }
    }
    let mut ops: Vec<_> = op_counts.into_iter().collect();
    ops.sort();
    println!(
        "random graphs: {graphs} graphs ({nodes} nodes, n = seeds {first}..{}), {cases} cases checked in {:.1?}",
        first + count,
        start.elapsed()
    );
    println!("generated op kinds: {ops:?}");
    println!(
        "{with_exprs} graphs with dims that are expressions; {rebound} run at a second binding"
    );
    let mut dtypes: Vec<_> = dtype_counts.into_iter().collect();
    dtypes.sort();
    println!("nodes by dtype: {dtypes:?}");
    for (i, (seed, f, g)) in failures.iter().enumerate() {
        eprintln!("seed {seed}: {f}");
        if show || i < 3 {
            eprintln!("{g}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed; seeds: {:?}",
        failures.len(),
        failures.iter().map(|f| f.0).collect::<Vec<_>>()
    );
}

// ---- regressions: bugs the random graphs found, minimized ----
//
// Seeds are not given: they name other graphs as the generator grows.

/// Checks a hand-written graph as the random test checks a generated one:
/// every compile configuration and every pass alone.
fn check(graph: &Graph, sym: usize) {
    install_quiet_hook();
    let (cases, failures) = check_graph(graph, sym, 7, true);
    assert!(cases > 0);
    assert!(failures.is_empty(), "{failures:#?}\n{graph}");
}

/// Lowering a reshape of an empty tensor took a modulo by its zero-sized dim
/// (`attempt to calculate the remainder with a divisor of zero`).
#[test]
fn reshape_of_an_empty_tensor_lowers() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![2, 3]).unwrap();
    let empty = x.slice_axis(1, 3, 3, 1).unwrap(); // [2, 0]
    let y = empty.reshape(shape![0, 4]).unwrap();
    let z = g
        .concat(&[empty.reshape(shape![0, 3]).unwrap(), x], 0)
        .unwrap();
    g.output(y).unwrap();
    g.output(z).unwrap();
    check(&g.into_graph(), 1);
}

/// A cast f32 -> f64 of a dying temporary ran in place (both buffers round
/// up to one 64-byte block), so writing the f64 element 0 clobbered the f32
/// element 1 before it was read.
#[test]
fn widening_cast_does_not_run_in_place() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![4, 4]).unwrap();
    let c = x.min(&[0], false).unwrap().cast(DType::F64).unwrap();
    g.output(c.tanh().unwrap()).unwrap();
    g.output(c.sum(&[0], true).unwrap()).unwrap();
    check(&g.into_graph(), 1);
}

/// A reduction over an empty loop fused with a map of another dtype
/// (`x < max(x)`, bool) took the map's dtype for the reduced values
/// (`execute failed: cannot reduce bool tensors`).
#[test]
fn empty_reduction_with_a_bool_map_executes() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![2, 3]).unwrap();
    let e = x.slice_axis(1, 3, 3, 1).unwrap(); // [2, 0]
    let y = e.lt(e.max(&[1], true).unwrap()).unwrap().not().unwrap();
    g.output(y).unwrap();
    check(&g.into_graph(), 1);
}

/// CSE keyed ops by their JSON, where every non-finite float is `null`, so a
/// pad with -inf, one with +inf and one with NaN of the same value merged.
#[test]
fn pads_with_different_infinities_stay_apart() {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![3]).unwrap();
    let lo = x.pad(&[1], &[1], f64::NEG_INFINITY).unwrap();
    let hi = x.pad(&[1], &[1], f64::INFINITY).unwrap();
    let nan = x.pad(&[1], &[1], f64::NAN).unwrap();
    g.output(lo).unwrap();
    g.output(hi).unwrap();
    g.output(nan).unwrap();
    check(&g.into_graph(), 1);
}

/// Seed 1314 on the CPU backend: an int matmul whose users compare its
/// result fused it as an epilogue with a bool output, and the GEMM wrote
/// i32 results into the bool buffer. Epilogues now keep the anchor's dtype.
#[test]
fn epilogue_keeps_the_contractions_dtype() {
    let g = GraphBuilder::new();
    let a = g.placeholder("a", DType::I32, [4, 2]).unwrap();
    let w = g
        .constant(Array::from_vec(vec![2, 5], (0..10).collect::<Vec<i32>>()).unwrap())
        .unwrap();
    let m = a.matmul(w).unwrap();
    g.output(m.ne(2).unwrap().named("out").unwrap()).unwrap();
    let graph = g.into_graph();
    let feeds = vec![(
        "a".to_string(),
        Array::from_vec(vec![4, 2], vec![1, -2, 3, 0, 0, 1, 2, 2]).unwrap(),
    )];
    let want = reference(&graph, &feeds).unwrap();
    let got = session_run(&graph, &feeds, Device::Cpu).unwrap();
    assert_eq!(want.outputs, got.outputs);
}

//! Which op kinds each engine runs natively, which it hands to the host,
//! and which it refuses (`kiln_codegen::engine`), checked against what the
//! engines really do, and written as the table in ARCHITECTURE.md between
//! the `engine-table` markers: this test fails when the table is stale;
//! `UPDATE_EXPECT=1 cargo test -p kiln-tests --test engines` rewrites it.
//!
//! `every_op_kind` matches `Op` without a catch-all, so a new op kind does
//! not compile here until it has an example, and so a row.

use std::collections::HashMap;
use std::sync::Arc;

use kiln::graph::op::Weight;
use kiln::graph::op::{ArgOp, BinaryOp, ReduceOp, SliceAxis, UnaryOp};
use kiln::graph::{Array, DType, Graph, Op, TensorType, Window2d};
use kiln::prelude::*;
use kiln_codegen::engine::{Placement, Support};
use kiln_codegen::{Engine, Executable};

/// One value of every op kind, with the dtype its row is judged at.
fn every_op_kind() -> Vec<(Op, DType)> {
    let weight = Weight(Arc::new(Array::scalar(1.0f32)));
    let ty = TensorType::new(DType::F32, [2]);
    let window = Window2d::square(2, 2, 0);
    let ops = vec![
        (
            Op::Placeholder {
                dtype: DType::F32,
                shape: [2].into(),
            },
            DType::F32,
        ),
        (
            Op::Constant {
                value: weight.clone(),
            },
            DType::F32,
        ),
        (
            Op::Variable {
                init: weight,
                trainable: true,
            },
            DType::F32,
        ),
        (
            Op::SymbolicConstant {
                dtype: DType::I64,
                shape: vec![],
                values: vec![],
            },
            DType::I64,
        ),
        (
            Op::Iota {
                dtype: DType::I64,
                shape: [2].into(),
                axis: 0,
            },
            DType::I64,
        ),
        (
            Op::RandomUniform {
                dtype: DType::F32,
                shape: [2].into(),
                seed: 0,
                low: 0.0,
                high: 1.0,
            },
            DType::F32,
        ),
        (
            Op::RandomNormal {
                dtype: DType::F32,
                shape: [2].into(),
                seed: 0,
                mean: 0.0,
                std: 1.0,
            },
            DType::F32,
        ),
        (Op::Unary { f: UnaryOp::Exp }, DType::F32),
        (Op::Binary { f: BinaryOp::Add }, DType::F32),
        (Op::Select, DType::F32),
        (Op::Cast { to: DType::F32 }, DType::F32),
        (
            Op::Reduce {
                f: ReduceOp::Sum,
                axes: vec![0],
                keepdims: false,
            },
            DType::F32,
        ),
        (
            Op::ArgReduce {
                f: ArgOp::ArgMax,
                axis: 0,
                keepdims: false,
            },
            DType::I64,
        ),
        (Op::Reshape { shape: [2].into() }, DType::F32),
        (Op::Permute { perm: vec![0] }, DType::F32),
        (Op::Broadcast { shape: [2].into() }, DType::F32),
        (
            Op::Slice {
                axes: vec![SliceAxis {
                    start: 0,
                    end: 1,
                    step: 1,
                }],
            },
            DType::F32,
        ),
        (
            Op::Pad {
                before: vec![1],
                after: vec![1],
                value: 0.0,
            },
            DType::F32,
        ),
        (Op::Concat { axis: 0 }, DType::F32),
        (Op::MatMul, DType::F32),
        (
            Op::Conv2d {
                stride: [1, 1],
                padding: [0; 4],
                dilation: [1, 1],
                groups: 1,
                channels_last: false,
            },
            DType::F32,
        ),
        (Op::MaxPool2d { window }, DType::F32),
        (
            Op::AvgPool2d {
                window,
                count_include_pad: false,
            },
            DType::F32,
        ),
        (Op::Gather { axis: 0 }, DType::F32),
        (Op::ScatterAdd { axis: 0 }, DType::F32),
        (Op::Assign, DType::F32),
        (Op::Group, DType::F32),
        (
            Op::Cond {
                then_fn: 0,
                else_fn: 1,
                index: 0,
                ty: ty.clone(),
            },
            DType::F32,
        ),
        (
            Op::While {
                cond_fn: 0,
                body_fn: 1,
                vars: 1,
                index: 0,
                ty: ty.clone(),
                max_iterations: None,
            },
            DType::F32,
        ),
        (
            Op::WhileGrad {
                cond_fn: 0,
                body_fn: 1,
                grad_fn: 2,
                vars: 1,
                seed: 0,
                index: 0,
                ty,
                max_iterations: None,
            },
            DType::F32,
        ),
    ];
    // Every kind once: this match has no catch-all, so a new kind must be
    // added above before this file compiles.
    let mut seen = HashMap::new();
    for (op, _) in &ops {
        let kind = match op {
            Op::Placeholder { .. } => 0,
            Op::Constant { .. } => 1,
            Op::Variable { .. } => 2,
            Op::SymbolicConstant { .. } => 3,
            Op::Iota { .. } => 4,
            Op::RandomUniform { .. } => 5,
            Op::RandomNormal { .. } => 6,
            Op::Unary { .. } => 7,
            Op::Binary { .. } => 8,
            Op::Select => 9,
            Op::Cast { .. } => 10,
            Op::Reduce { .. } => 11,
            Op::ArgReduce { .. } => 12,
            Op::Reshape { .. } => 13,
            Op::Permute { .. } => 14,
            Op::Broadcast { .. } => 15,
            Op::Slice { .. } => 16,
            Op::Pad { .. } => 17,
            Op::Concat { .. } => 18,
            Op::MatMul => 19,
            Op::Conv2d { .. } => 20,
            Op::MaxPool2d { .. } => 21,
            Op::AvgPool2d { .. } => 22,
            Op::Gather { .. } => 23,
            Op::ScatterAdd { .. } => 24,
            Op::Assign => 25,
            Op::Group => 26,
            Op::Cond { .. } => 27,
            Op::While { .. } => 28,
            Op::WhileGrad { .. } => 29,
        };
        assert!(
            seen.insert(kind, op.name()).is_none(),
            "{} twice",
            op.name()
        );
    }
    assert_eq!(seen.len(), 30);
    ops
}

/// The markdown table: one row per op kind, one column per engine.
fn table() -> String {
    let mut t = String::from("| op | ");
    t.push_str(
        &Placement::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    t.push_str(" |\n|---|");
    t.push_str(&"---|".repeat(Placement::ALL.len()));
    t.push('\n');
    for (op, dtype) in every_op_kind() {
        t.push_str(&format!("| `{}` ({dtype}) |", op.name()));
        for p in Placement::ALL {
            let s = p.supports(&op, dtype);
            t.push_str(&format!(" {}: {} |", s.kind(), s.detail()));
        }
        t.push('\n');
    }
    t
}

#[test]
fn the_engine_table_in_architecture_md_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = ("<!-- engine-table:begin -->\n", "<!-- engine-table:end -->");
    let a = text
        .find(begin)
        .expect("ARCHITECTURE.md has the begin marker")
        + begin.len();
    let b = text.find(end).expect("ARCHITECTURE.md has the end marker");
    let want = table();
    if text[a..b] == want {
        return;
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, format!("{}{want}{}", &text[..a], &text[b..])).unwrap();
        return;
    }
    panic!(
        "ARCHITECTURE.md's engine table is stale; run \
         UPDATE_EXPECT=1 cargo test -p kiln-tests --test engines. It should be:\n{want}"
    );
}

/// Graphs whose one kernel of interest is a scatter-add, a gather, a
/// pooling or a
/// convolution, with the op each shows.
fn opaque_graphs() -> Vec<(&'static str, Graph)> {
    let mut out = Vec::new();
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [4, 3]).unwrap();
    let i = g.placeholder("i", DType::I64, [2]).unwrap();
    let u = g.placeholder("u", DType::F32, [2, 3]).unwrap();
    g.output(x.scatter_add(i, u, 0).unwrap().exp().unwrap())
        .unwrap();
    out.push(("scatter_add", g.into_graph()));
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [4, 3]).unwrap();
    let i = g.placeholder("i", DType::I64, [2]).unwrap();
    g.output(x.gather(i, 0).unwrap().exp().unwrap()).unwrap();
    out.push(("gather", g.into_graph()));
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [1, 2, 4, 4]).unwrap();
    g.output(g.max_pool2d(x, 2, 2, 0).unwrap()).unwrap();
    out.push(("max_pool2d", g.into_graph()));
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [1, 2, 4, 4]).unwrap();
    let w = g.placeholder("w", DType::F32, [3, 2, 3, 3]).unwrap();
    g.output(x.conv2d(w, Conv2dOptions::default()).unwrap())
        .unwrap();
    out.push(("conv2d", g.into_graph()));
    out
}

#[test]
fn the_cpu_engines_place_ops_as_the_table_says() {
    // The JIT's host steps and the object compiler's refusals are what
    // `Placement::Cpu` and `Placement::Aot` answer for each kernel's op.
    for (name, graph) in opaque_graphs() {
        let bindings = Default::default();
        let program = kiln_optimizer::compile(
            &graph,
            graph.outputs(),
            &bindings,
            &kiln_optimizer::CompileOptions::default(),
        )
        .unwrap()
        .program;
        let exe = kiln_codegen::cpu::CpuBackend::default()
            .compile(&program)
            .unwrap();
        let host = exe.host_kernels();
        let aot =
            kiln_codegen::cpu::aot::compile_object(&program, "m", kiln_codegen::cpu::Target::Host);
        let mut refused = false;
        let mut checked = false;
        for (k, kernel) in program.kernels.iter().enumerate() {
            let kiln_optimizer::kernel::Kernel::Op { op, out, .. } = kernel else {
                continue;
            };
            assert_eq!(op.name(), name);
            checked = true;
            let dtype = program.buffer(*out).dtype;
            let cpu = Placement::Cpu.supports(op, dtype);
            assert_eq!(
                matches!(cpu, Support::Host(_)),
                host.contains(&k),
                "{name} ({dtype}) on the cpu: the table says {cpu:?}"
            );
            refused |= matches!(Placement::Aot.supports(op, dtype), Support::Refused(_));
        }
        assert!(checked, "{name}: the program has its op kernel");
        assert_eq!(
            aot.is_err(),
            refused,
            "{name}: compile_object gave {:?}",
            aot.err()
        );
        // And the program runs on the CPU either way.
        let feeds = kiln_tests::feeds_for(&graph, 1, 1);
        let inputs: HashMap<&str, &Array> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        exe.run(&inputs, &HashMap::new()).unwrap();
    }
}

#[test]
fn the_add_an_op_checklist_names_every_exhaustive_match() {
    // A file that names every variant of `Op` matches on all of them; a
    // new op kind must be handled there, so the checklist must say so.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let (begin, end) = ("<!-- op-checklist:begin -->", "<!-- op-checklist:end -->");
    let a = arch.find(begin).expect("ARCHITECTURE.md has the checklist") + begin.len();
    let b = arch.find(end).expect("ARCHITECTURE.md ends the checklist");
    let checklist = &arch[a..b];
    let kinds: Vec<String> = every_op_kind()
        .iter()
        .map(|(op, _)| {
            let debug = format!("{op:?}");
            let name: String = debug
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            format!("Op::{name}")
        })
        .collect();
    let mut exhaustive = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                let top = rel.split('/').next().unwrap_or("");
                if ["rt", "graph", "onnx", "optimizer", "codegen", "runtime"].contains(&top)
                    || ["rt", "graph", "onnx", "optimizer", "codegen", "runtime"]
                        .iter()
                        .any(|c| rel.starts_with(&format!("{c}/")))
                {
                    stack.push(path);
                }
            } else if rel.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let names_all = kinds.iter().all(|k| {
                    text.match_indices(k.as_str()).any(|(i, _)| {
                        !text[i + k.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
                    })
                });
                if names_all {
                    exhaustive.push(rel);
                }
            }
        }
    }
    exhaustive.sort();
    assert!(
        exhaustive.contains(&"graph/src/op.rs".to_string()),
        "the scan finds the op enum's own matches: {exhaustive:?}"
    );
    for f in &exhaustive {
        assert!(
            checklist.contains(&format!("`{f}`")),
            "{f} matches on every op kind but ARCHITECTURE.md's checklist does not name it"
        );
    }
    for named in checklist.split('`').skip(1).step_by(2) {
        if named.ends_with(".rs") && named.contains('/') {
            assert!(
                root.join(named).is_file(),
                "the checklist names {named}, which does not exist"
            );
        }
    }
}

#[test]
fn the_reference_engine_and_the_jit_run_the_same_programs_alike() {
    use kiln_codegen::reference::ReferenceEngine;
    for (name, graph) in kiln_tests::example_models() {
        let bindings = [("batch".to_string(), 3usize)].into_iter().collect();
        let opts = kiln_optimizer::CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = kiln_optimizer::compile(&graph, graph.outputs(), &bindings, &opts)
            .unwrap()
            .program;
        let feeds = kiln_tests::feeds_for(&graph, 3, 2);
        let inputs: HashMap<&str, &Array> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let plain = ReferenceEngine.compile(&program).unwrap();
        let jit = kiln_codegen::cpu::CpuBackend::default()
            .compile(&program)
            .unwrap();
        assert_eq!(
            (ReferenceEngine.name(), jit.program().kernels.len()),
            ("reference", program.kernels.len())
        );
        let want = plain.run(&inputs, &HashMap::new()).unwrap().fetched;
        let got = jit.run(&inputs, &HashMap::new()).unwrap().fetched;
        assert_eq!(want.len(), got.len(), "{name}");
        for (w, g) in want.iter().zip(&got) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn an_engine_that_lacks_an_op_says_which_kernel_op_and_nodes() {
    let (_, graph) = opaque_graphs().remove(0);
    let program = kiln_optimizer::compile(
        &graph,
        graph.outputs(),
        &Default::default(),
        &kiln_optimizer::CompileOptions::default(),
    )
    .unwrap()
    .program;
    let e = Placement::Aot.check(&program).unwrap_err().to_string();
    assert!(
        e.starts_with("the aot engine does not run kernel ")
            && e.contains("a scatter_add (f32) of node(s) ")
            && e.contains("no code in the runtime library"),
        "{e}"
    );
    // The engines that run it say nothing.
    for p in [Placement::Reference, Placement::Cpu, Placement::Cuda] {
        p.check(&program).unwrap();
    }
}

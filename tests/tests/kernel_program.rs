//! The kernel program against the reference interpreter: for every example
//! model, the executed program (fused, scheduled, memory-planned) equals
//! the reference on the unoptimized graph; and the memory plan is tight.

use std::collections::HashMap;

use kiln::graph::{Array, Bindings};
use kiln_optimizer::{compile, exec, CompileOptions};
use kiln_tests::{compare, example_models, feeds_for, run_reference};

fn run_program(
    graph: &kiln::graph::Graph,
    feeds: &[(String, Array)],
    opts: &CompileOptions,
) -> (Vec<Array>, kiln_optimizer::Compiled) {
    let mut bindings = Bindings::new();
    for (name, a) in feeds {
        let p = graph.node(graph.find(name).unwrap());
        for (d, &n) in p.ty.shape.dims().iter().zip(a.shape()) {
            if let kiln::graph::Dim::Sym(s) = d {
                bindings.insert(s.clone(), n);
            }
        }
    }
    let compiled = compile(graph, graph.outputs(), &bindings, opts).unwrap();
    let inputs: HashMap<String, Array> = feeds.iter().cloned().collect();
    let mut vars: HashMap<String, Array> = graph
        .variables()
        .into_iter()
        .map(|v| match &graph.node(v).op {
            kiln::graph::Op::Variable { init, .. } => {
                (graph.node(v).name.clone(), (*init.0).clone())
            }
            _ => unreachable!(),
        })
        .collect();
    let out =
        exec::execute(&compiled.program, &inputs, &mut vars).unwrap_or_else(|e| panic!("{e}"));
    (out, compiled)
}

#[test]
fn example_models_match_the_reference() {
    for freeze in [false, true] {
        for no_simplify in [false, true] {
            let opts = CompileOptions {
                freeze_variables: freeze,
                no_simplify,
                ..Default::default()
            };
            for (name, graph) in example_models() {
                let feeds = feeds_for(&graph, 2, 4);
                let want = run_reference(&graph, &feeds);
                let (got, compiled) = run_program(&graph, &feeds, &opts);
                for (w, g) in want.iter().zip(&got) {
                    compare(w, g).unwrap_or_else(|e| {
                        panic!(
                            "{name} ({opts:?}): {e}\n{:#?}",
                            compiled.program.kernels.len()
                        )
                    });
                }
            }
        }
    }
}

#[test]
fn kernel_counts_show_the_fusion() {
    let opts = CompileOptions::default();
    let count = |graph: &kiln::graph::Graph| {
        let feeds = feeds_for(graph, 2, 4);
        run_program(graph, &feeds, &opts).1.program.kernels.len()
    };
    assert_eq!(count(&kiln_tests::mlp(&[784, 512, 512, 10])), 3);
    assert_eq!(
        count(&kiln_tests::layer_norm_only()),
        4,
        "layer norm 2 + softmax 2"
    );
}

#[test]
fn planned_arena_is_near_the_lower_bound() {
    for (name, graph) in example_models() {
        let feeds = feeds_for(&graph, 8, 4);
        let (_, compiled) = run_program(&graph, &feeds, &CompileOptions::default());
        let m = compiled.program.memory;
        assert!(
            m.arena as f64 <= 1.05 * m.lower_bound as f64,
            "{name}: {m:?}"
        );
        assert!(m.arena <= m.unplanned, "{name}: {m:?}");
    }
}

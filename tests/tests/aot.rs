//! Ahead-of-time code (first part): a program of loop nests compiled into
//! an object file (weights inside) and a C header, linked with `cc` into a
//! C program that calls `model_run`, and run: its outputs match the JIT
//! session's bit for bit, for the host and the x86-64-v3/v4 baselines.
//! Skipped where no C compiler is installed.

use std::fmt::Write;
use std::path::Path;

use kiln::graph::{Bindings, Graph};
use kiln::prelude::*;
use kiln_codegen::cpu::aot::{compile_object, header};
use kiln_codegen::cpu::Target;
use kiln_optimizer::kernel::KernelProgram;
use kiln_optimizer::{compile, CompileOptions};

fn have_cc() -> bool {
    std::process::Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Elementwise chains, a broadcast, reductions (sum, max, a row map),
/// integer casts and a comparison, with constants: only loop nests.
fn model() -> Graph {
    let g = GraphBuilder::with_seed(3);
    let x = g.placeholder("x", DType::F32, shape!["batch", 37]).unwrap();
    let c = g
        .constant(
            Array::from_vec(
                vec![37],
                (0..37).map(|i| i as f32 * 0.25 - 4.0).collect::<Vec<_>>(),
            )
            .unwrap(),
        )
        .unwrap();
    let h = x.mul(2.0).unwrap().add(c).unwrap().relu().unwrap();
    let s = x.sum(&[1], true).unwrap();
    g.output(h.sub(s).unwrap().named("y1").unwrap()).unwrap();
    let r = x
        .abs()
        .unwrap()
        .div(x.mul(x).unwrap().add(1.0).unwrap())
        .unwrap()
        .max(&[0], false)
        .unwrap();
    g.output(r.named("y2").unwrap()).unwrap();
    let centered = x.sub(x.mean(&[1], true).unwrap()).unwrap();
    g.output(centered.named("y3").unwrap()).unwrap();
    g.output(
        x.gt(0.5)
            .unwrap()
            .cast(DType::I32)
            .unwrap()
            .sum(&[1], false)
            .unwrap()
            .named("y4")
            .unwrap(),
    )
    .unwrap();
    g.into_graph()
}

/// A C program calling `model_run` on `input` (embedded as bytes), each
/// output written raw to `out_<i>.bin`.
fn c_main(program: &KernelProgram, input: &Array) -> String {
    let mut c = String::from(
        "#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include \"model.h\"\n\n",
    );
    c.push_str("static const unsigned char input[] __attribute__((aligned(64))) = {");
    for (j, v) in input.as_bytes().iter().enumerate() {
        if j % 32 == 0 {
            c.push('\n');
        }
        let _ = write!(c, "{v},");
    }
    c.push_str("};\n\nint main(void) {\n");
    c.push_str("    const void *inputs[MODEL_INPUTS] = { input };\n");
    let _ = writeln!(c, "    void *outputs[MODEL_OUTPUTS];");
    for (o, b) in program.outputs.iter().enumerate() {
        let _ = writeln!(
            c,
            "    outputs[{o}] = malloc({});",
            program.buffer(*b).size_bytes().max(1)
        );
    }
    c.push_str("    model_run(inputs, outputs);\n");
    for (o, b) in program.outputs.iter().enumerate() {
        let bytes = program.buffer(*b).size_bytes();
        let _ = writeln!(
            c,
            "    {{ FILE *f = fopen(\"out_{o}.bin\", \"wb\"); if (!f) return 1; \
             fwrite(outputs[{o}], 1, {bytes}, f); fclose(f); }}"
        );
    }
    c.push_str("    return 0;\n}\n");
    c
}

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn aot_matches_jit(target: Target, dir: &Path) {
    let graph = model();
    let batch = 5;
    let bindings: Bindings = [("batch".to_string(), batch)].into_iter().collect();
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(&graph, graph.outputs(), &bindings, &opts)
        .unwrap()
        .program;
    let code = compile_object(&program, "model", target).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.o"), &code.bytes).unwrap();
    std::fs::write(dir.join("model.h"), header(&program, &code, "model")).unwrap();
    let feeds = kiln_tests::feeds_for(&graph, batch, 9);
    std::fs::write(dir.join("main.c"), c_main(&program, &feeds[0].1)).unwrap();
    run(
        std::process::Command::new("cc")
            .current_dir(dir)
            .args(["-O1", "-o", "model", "main.c", "model.o", "-lm"]),
        "cc main.c model.o",
    );
    run(
        std::process::Command::new("./model").current_dir(dir),
        "the linked program",
    );
    // The JIT session with the same code paths (no AVX-512 rows, which the
    // object does not use).
    let sopts = SessionOptions {
        avx512: Some(false),
        ..Default::default()
    };
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let want = Session::with_options(&graph, Device::Cpu, sopts)
        .unwrap()
        .run_outputs(&refs)
        .unwrap();
    for (o, (name, w)) in want.iter().enumerate() {
        let bytes = std::fs::read(dir.join(format!("out_{o}.bin"))).unwrap();
        let got = Array::new(
            w.shape().to_vec(),
            kiln::graph::Data::from_le_bytes(w.dtype(), &bytes).unwrap(),
        )
        .unwrap();
        assert!(
            got.same_bits(w),
            "{target:?}, {name}: the object's result differs from the JIT's\n{got:?}\n{w:?}"
        );
    }
}

#[test]
fn a_linked_object_computes_what_the_jit_does() {
    if !have_cc() {
        eprintln!("SKIPPED: no C compiler (cc)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-aot-{}", std::process::id()));
    aot_matches_jit(Target::Host, &dir.join("host"));
    // A named baseline compiles and runs here too (this machine has AVX2).
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        aot_matches_jit(Target::X86_64V3, &dir.join("v3"));
    }
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        aot_matches_jit(Target::X86_64V4, &dir.join("v4"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn programs_needing_the_runtime_library_are_refused_clearly() {
    let graph = kiln_tests::mlp(&[4, 3]);
    let bindings: Bindings = [("batch".to_string(), 2usize)].into_iter().collect();
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(&graph, graph.outputs(), &bindings, &opts)
        .unwrap()
        .program;
    let err = compile_object(&program, "model", Target::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("matmul kernel needs kiln's runtime library"),
        "{err}"
    );
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, [3]).unwrap();
    g.output(x.tanh().unwrap().named("y").unwrap()).unwrap();
    let graph = g.into_graph();
    let program = compile(&graph, graph.outputs(), &Bindings::new(), &opts)
        .unwrap()
        .program;
    let err = compile_object(&program, "model", Target::Host)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Tanh needs kiln's runtime library"), "{err}");
    let err = compile_object(&program, "9lives", Target::Host)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a C identifier"), "{err}");
}

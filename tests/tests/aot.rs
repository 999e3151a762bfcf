//! Ahead-of-time code: programs compiled into an object file (weights
//! inside) and a C header, linked with `cc` and `libkiln_rt.a` into a C
//! program that calls `model_run`, and run. Every example model (MLPs at
//! batch 1 and 5, the CNN block with convolutions and pooling, the
//! attention block, layer norm), a model of loop nests, and one of
//! transcendentals, powers, random ops, f16 storage, f64 and integer
//! products and max pooling:
//! - with the JIT session's AVX-512 switch set so that its long rows take
//!   the row code the object's do (the AVX-512 row code on an AVX-512
//!   target, else AVX2's where the target has AVX2; the packed AVX-512
//!   GEMM unless `KILN_AVX512=0`) the binary matches it bit for bit: the
//!   same kernels and the same executor;
//! - with the other setting, within `kiln_tests::compare`'s tolerance (f32:
//!   1e-4 relative + 1e-5 absolute);
//!
//! and both within that tolerance of the reference interpreter; for the
//! host and, where this machine runs them, the x86-64-v3/v4
//! baselines (the loop-nest model). Without a C compiler (`cc`) these tests
//! fail and say what to install.

use std::fmt::Write;
use std::path::Path;

use kiln::graph::{Bindings, Graph, Window2d};
use kiln::prelude::*;
use kiln_codegen::cpu::aot::{compile_object, header, ObjectCode};
use kiln_codegen::cpu::Target;
use kiln_optimizer::kernel::{KernelProgram, Storage};
use kiln_optimizer::{compile, CompileOptions};

/// Elementwise chains, a broadcast, reductions (sum, max, a row map),
/// integer casts and a comparison, with constants: only loop nests.
fn loop_nests() -> Graph {
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
    // Narrow integers: wrapping arithmetic, unsigned division and
    // comparison, saturating casts from floats, u64 powers (a support call).
    let u8s = x.mul(60.0).unwrap().cast(DType::U8).unwrap();
    let i8s = x.mul(-70.0).unwrap().cast(DType::I8).unwrap();
    let wrapped = u8s
        .mul(u8s)
        .unwrap()
        .add(200u8)
        .unwrap()
        .div(u8s.sub(7u8).unwrap())
        .unwrap();
    g.output(wrapped.named("y5").unwrap()).unwrap();
    let i16s = i8s
        .cast(DType::I16)
        .unwrap()
        .mul(300i16)
        .unwrap()
        .maximum(u8s.cast(DType::I16).unwrap().neg().unwrap())
        .unwrap()
        .xor(0x5a5ai16)
        .unwrap();
    g.output(i16s.sum(&[1], false).unwrap().named("y6").unwrap())
        .unwrap();
    let u64s = u8s
        .cast(DType::U64)
        .unwrap()
        .pow(u8s.cast(DType::U64).unwrap().div(20u64).unwrap())
        .unwrap()
        .min(&[1], false)
        .unwrap();
    g.output(u64s.named("y7").unwrap()).unwrap();
    g.output(i8s.argmin(1, false).unwrap().named("y8").unwrap())
        .unwrap();
    g.into_graph()
}

/// Support functions and the products and pooling the JIT's executor runs:
/// tanh, exp, erf, pow (float and integer), random samples, f16 storage,
/// f64 and i32 matrix products, max pooling with padding.
fn support_and_products() -> Graph {
    let g = GraphBuilder::with_seed(4);
    let x = g.placeholder("x", DType::F32, shape!["batch", 8]).unwrap();
    let t = x
        .tanh()
        .unwrap()
        .add(x.mul(0.3).unwrap().exp().unwrap())
        .unwrap()
        .add(x.erf().unwrap())
        .unwrap();
    g.output(t.named("transcendental").unwrap()).unwrap();
    let p = x
        .abs()
        .unwrap()
        .pow(g.scalar(1.7, DType::F32).unwrap())
        .unwrap();
    let noise = g.random_uniform(DType::F32, [8], 11, -1.0, 1.0).unwrap();
    let n = g.random_normal(DType::F64, [3], 12, 0.5, 2.0).unwrap();
    g.output(p.add(noise).unwrap().named("pow_noise").unwrap())
        .unwrap();
    g.output(n.named("normal").unwrap()).unwrap();
    let ints = x.mul(3.0).unwrap().cast(DType::I32).unwrap();
    let ip = ints
        .pow(g.scalar(3.0, DType::I32).unwrap())
        .unwrap()
        .matmul(ints.transpose().unwrap())
        .unwrap();
    g.output(ip.named("int_product").unwrap()).unwrap();
    let xd = x.cast(DType::F64).unwrap();
    let w = g
        .constant(
            Array::from_vec(
                vec![8, 6],
                (0..48).map(|i| (i as f64 * 0.37).cos()).collect::<Vec<_>>(),
            )
            .unwrap(),
        )
        .unwrap();
    g.output(xd.matmul(w).unwrap().named("f64_product").unwrap())
        .unwrap();
    let h = x
        .cast(DType::F16)
        .unwrap()
        .sigmoid()
        .unwrap()
        .mul(x.cast(DType::F16).unwrap())
        .unwrap();
    g.output(h.named("half").unwrap()).unwrap();
    let img = x.reshape(shape!["batch", 2, 2, 2]).unwrap();
    let pooled = img
        .max_pool2d(Window2d {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [1, 1, 0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        })
        .unwrap();
    g.output(pooled.named("pooled").unwrap()).unwrap();
    // Long rows (the row code where the target has AVX-512 or AVX2): an
    // elementwise chain of transcendentals and a softmax.
    let r = g
        .placeholder("rows", DType::F32, shape!["batch", 300])
        .unwrap();
    let chain = r
        .mul(1.7)
        .unwrap()
        .gelu()
        .unwrap()
        .mul(r.sigmoid().unwrap())
        .unwrap()
        .sub(r.tanh().unwrap())
        .unwrap();
    g.output(chain.named("chain").unwrap()).unwrap();
    g.output(r.softmax(-1).unwrap().named("softmax").unwrap())
        .unwrap();
    g.into_graph()
}

/// A C program calling `model_run` on `inputs` (embedded as bytes, in the
/// program's input order), each output written raw to `out_<i>.bin`.
fn c_main(program: &KernelProgram, inputs: &[&Array]) -> String {
    let mut c = String::from(
        "#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include \"model.h\"\n\n",
    );
    for (i, input) in inputs.iter().enumerate() {
        let _ = write!(
            c,
            "static const unsigned char input{i}[] __attribute__((aligned(64))) = {{0,"
        );
        for (j, v) in input.as_bytes().iter().enumerate() {
            if j % 32 == 0 {
                c.push('\n');
            }
            let _ = write!(c, "{v},");
        }
        c.push_str("};\n");
    }
    c.push_str("\nint main(void) {\n");
    let _ = writeln!(
        c,
        "    const void *inputs[MODEL_INPUTS + 1] = {{ {} 0 }};",
        (0..inputs.len())
            .map(|i| format!("input{i} + 1,"))
            .collect::<String>()
    );
    let _ = writeln!(c, "    void *outputs[MODEL_OUTPUTS];");
    for (o, b) in program.outputs.iter().enumerate() {
        let _ = writeln!(
            c,
            "    outputs[{o}] = malloc({});",
            program.buffer(*b).size_bytes().max(1)
        );
    }
    c.push_str(
        "    if (model_run(inputs, outputs) != 0) { fprintf(stderr, \"%s\\n\", kiln_rt_last_error()); return 2; }\n",
    );
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

/// Compiles `graph` at `batch` for `target` into `dir` (object, header,
/// `libkiln_rt.a`), writes the C `main` that `c` makes for the program's
/// inputs, links the program `model` there, and returns the kernel
/// program and the feeds.
fn link_model(
    name: &str,
    graph: &Graph,
    batch: usize,
    target: Target,
    dir: &Path,
    c: fn(&KernelProgram, &[&Array]) -> String,
) -> (KernelProgram, Vec<(String, Array)>, ObjectCode) {
    let bindings: Bindings = graph
        .placeholders()
        .into_iter()
        .flat_map(|p| graph.node(p).ty.shape.symbols())
        .map(|s| (s.to_string(), batch))
        .collect();
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(graph, graph.outputs(), &bindings, &opts)
        .unwrap()
        .program;
    let code = compile_object(&program, "model", target).unwrap_or_else(|e| panic!("{name}: {e}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.o"), &code.bytes).unwrap();
    std::fs::write(dir.join("model.h"), header(&program, &code, "model")).unwrap();
    kiln::aot::write_runtime_library(dir).unwrap();
    let feeds = kiln_tests::feeds_for(graph, batch, 9);
    let inputs: Vec<&Array> = program
        .buffers
        .iter()
        .filter_map(|b| match &b.storage {
            Storage::Input { name } => Some(&feeds.iter().find(|(n, _)| n == name).unwrap().1),
            _ => None,
        })
        .collect();
    std::fs::write(dir.join("main.c"), c(&program, &inputs)).unwrap();
    run(
        std::process::Command::new("cc")
            .current_dir(dir)
            .args(["-O1", "-o", "model", "main.c", "model.o", "libkiln_rt.a"])
            .args(kiln::aot::SYSTEM_LIBS),
        &format!("{name}: cc main.c model.o libkiln_rt.a"),
    );
    (program, feeds, code)
}

/// Compiles `graph` at `batch` for `target` into `dir`, links and runs it,
/// and compares with the JIT session, with AVX-512 off and on in both: bit
/// for bit where the object's long rows and the session's take the same
/// row code (or none), within tolerance otherwise.
fn aot_matches_jit(name: &str, graph: &Graph, batch: usize, target: Target, dir: &Path) {
    let (_, feeds, code) = link_model(name, graph, batch, target, dir, c_main);
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let reference = kiln_tests::run_reference(graph, &feeds);
    // The object calls the row code in its target's widest ISA (AVX-512 on
    // v4, AVX2 on v3, the host's own on the host); the JIT session in the
    // host's widest, AVX-512 only with `avx512` on. Runs whose rows take
    // the same ISA (or none) in both must match bit for bit.
    let host512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq");
    let host2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let jit_rows = |avx512: bool| {
        if avx512 && host512 {
            Some("avx512")
        } else if host2 {
            Some("avx2")
        } else {
            None
        }
    };
    let object_rows = match target {
        Target::X86_64V4 => Some("avx512"),
        Target::X86_64V3 => Some("avx2"),
        Target::Host => jit_rows(true),
    };
    if name == "support" {
        // Its long rows went to the row code exactly when the target has
        // some ISA of it.
        let has_rows = code.bytes.windows(9).any(|w| w == b"model_row");
        assert_eq!(
            has_rows,
            object_rows.is_some(),
            "{target:?}: row programs in the object"
        );
    }
    for avx512 in [false, true] {
        let exact = jit_rows(avx512) == object_rows;
        let mut cmd = std::process::Command::new("./model");
        cmd.current_dir(dir);
        if !avx512 {
            cmd.env("KILN_AVX512", "0");
        }
        run(&mut cmd, &format!("{name}: the linked program"));
        let sopts = SessionOptions {
            avx512: Some(avx512),
            ..Default::default()
        };
        let want = Session::with_options(graph, Device::Cpu, sopts)
            .unwrap()
            .run_outputs(&refs)
            .unwrap();
        for (o, (out, w)) in want.iter().enumerate() {
            let bytes = std::fs::read(dir.join(format!("out_{o}.bin"))).unwrap();
            let got = Array::new(
                w.shape().to_vec(),
                kiln::graph::Data::from_le_bytes(w.dtype(), &bytes).unwrap(),
            )
            .unwrap();
            if let Err(e) = kiln_tests::compare(&reference[o], &got) {
                panic!(
                    "{name} ({target:?}), {out}: the object's result is off the reference's: {e}"
                );
            }
            if !exact {
                if let Err(e) = kiln_tests::compare(w, &got) {
                    panic!("{name} ({target:?}), {out}: the object's result is off the JIT's: {e}");
                }
            } else {
                assert!(
                    got.same_bits(w),
                    "{name} ({target:?}), {out}: the object's result differs from the JIT's\n{got:?}\n{w:?}"
                );
            }
        }
    }
}

fn temp(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-aot-{what}-{}", std::process::id()))
}

#[test]
fn a_linked_object_of_loop_nests_computes_what_the_jit_does() {
    kiln_tests::require_compiler("cc");
    let dir = temp("loops");
    let g = loop_nests();
    aot_matches_jit("loops", &g, 5, Target::Host, &dir.join("host"));
    // A named baseline compiles and runs here too (this machine has AVX2).
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        aot_matches_jit("loops", &g, 5, Target::X86_64V3, &dir.join("v3"));
    }
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        aot_matches_jit("loops", &g, 5, Target::X86_64V4, &dir.join("v4"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn linked_example_models_compute_what_the_jit_does() {
    kiln_tests::require_compiler("cc");
    let dir = temp("examples");
    for (name, g) in kiln_tests::example_models() {
        for batch in [1, 5] {
            aot_matches_jit(
                name,
                &g,
                batch,
                Target::Host,
                &dir.join(format!("{name}_{batch}")),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn support_functions_products_and_pooling_link_and_match() {
    kiln_tests::require_compiler("cc");
    let dir = temp("support");
    aot_matches_jit("support", &support_and_products(), 3, Target::Host, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Embedding lookups and row selections: gathers of f32 rows by i64 and
/// i32 indices (negative ones too), one with an epilogue, on axes 0 and 1.
fn gathers() -> Graph {
    let g = GraphBuilder::with_seed(8);
    let table = g
        .variable_init("table", DType::F32, &[11, 6], Init::GlorotUniform)
        .unwrap();
    let ids = g
        .placeholder("ids", DType::I64, shape!["batch", 4])
        .unwrap();
    let emb = table.gather(ids.rem(11i64).unwrap(), 0).unwrap();
    g.output(emb.named("emb").unwrap()).unwrap();
    let x = g
        .placeholder("x", DType::F32, shape!["batch", 5, 3])
        .unwrap();
    let cols = g
        .constant(Array::from_vec(vec![3], vec![-1i32, 0, 4]).unwrap())
        .unwrap();
    let picked = x.gather(cols, 1).unwrap().relu().unwrap();
    g.output(picked.named("picked").unwrap()).unwrap();
    g.into_graph()
}

#[test]
fn gathers_link_and_match() {
    kiln_tests::require_compiler("cc");
    let dir = temp("gathers");
    for batch in [1, 3] {
        aot_matches_jit(
            "gathers",
            &gathers(),
            batch,
            Target::Host,
            &dir.join(batch.to_string()),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn programs_with_ops_the_runtime_library_lacks_are_refused_clearly() {
    let g = GraphBuilder::new();
    let t = g.placeholder("t", DType::F32, [5, 3]).unwrap();
    let i = g.placeholder("i", DType::I64, [2]).unwrap();
    let u = g.placeholder("u", DType::F32, [2, 3]).unwrap();
    g.output(t.scatter_add(i, u, 0).unwrap().named("rows").unwrap())
        .unwrap();
    let graph = g.into_graph();
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(&graph, graph.outputs(), &Bindings::new(), &opts)
        .unwrap()
        .program;
    let err = compile_object(&program, "model", Target::Host)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a scatter_add op (f32) has no code in kiln's runtime library"),
        "{err}"
    );
    let err = compile_object(&program, "9lives", Target::Host)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a C identifier"), "{err}");
}

/// A C program that runs the model serially with `model_run`, then from 8
/// threads at once with `model_run_r`, each on its own arena, 25 times
/// each (while one more thread calls `model_run` on the static arena), and
/// checks every threaded result byte for byte against the serial one.
fn c_threaded_main(program: &KernelProgram, inputs: &[&Array]) -> String {
    let mut c = c_main(program, inputs);
    // Keep the embedded inputs; replace `main`.
    c.truncate(c.find("\nint main(void) {").expect("c_main writes main"));
    c.insert_str(
        0,
        "#include <pthread.h>\n#include <string.h>\n#define THREADS 8\n#define ROUNDS 25\n",
    );
    let sizes: Vec<usize> = program
        .outputs
        .iter()
        .map(|b| program.buffer(*b).size_bytes().max(1))
        .collect();
    let _ = writeln!(
        c,
        "\nstatic const size_t sizes[MODEL_OUTPUTS] = {{ {} }};",
        sizes.iter().map(|s| format!("{s},")).collect::<String>()
    );
    let _ = writeln!(
        c,
        "static const void *inputs[MODEL_INPUTS + 1] = {{ {} 0 }};",
        (0..inputs.len())
            .map(|i| format!("input{i} + 1,"))
            .collect::<String>()
    );
    c.push_str(
        r#"static void *want[MODEL_OUTPUTS];

static int run_once(void *arena, int *differs) {
    void *outputs[MODEL_OUTPUTS];
    for (int o = 0; o < MODEL_OUTPUTS; o++) outputs[o] = malloc(sizes[o]);
    int status = arena ? model_run_r(inputs, outputs, arena) : model_run(inputs, outputs);
    for (int o = 0; o < MODEL_OUTPUTS; o++) {
        if (status == 0 && memcmp(outputs[o], want[o], sizes[o]) != 0) *differs = 1;
        free(outputs[o]);
    }
    return status;
}

static void *worker(void *arg) {
    long t = (long)arg;
    void *arena = t < THREADS ? aligned_alloc(64, (model_arena_bytes() + 63) / 64 * 64) : 0;
    int differs = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (run_once(arena, &differs) != 0) return (void *)2;
    }
    free(arena);
    return (void *)(long)differs;
}

int main(void) {
    if (model_arena_bytes() != MODEL_ARENA_BYTES) { fprintf(stderr, "arena size differs\n"); return 3; }
    void *outputs[MODEL_OUTPUTS];
    for (int o = 0; o < MODEL_OUTPUTS; o++) outputs[o] = want[o] = malloc(sizes[o]);
    if (model_run(inputs, outputs) != 0) { fprintf(stderr, "%s\n", kiln_rt_last_error()); return 2; }
    pthread_t threads[THREADS + 1];
    for (long t = 0; t <= THREADS; t++) pthread_create(&threads[t], 0, worker, (void *)t);
    int bad = 0;
    for (long t = 0; t <= THREADS; t++) {
        void *r;
        pthread_join(threads[t], &r);
        if (r == (void *)2) { fprintf(stderr, "thread %ld: %s\n", t, kiln_rt_last_error()); return 2; }
        if (r) { fprintf(stderr, "thread %ld: a result differs from the serial one\n", t); bad = 1; }
    }
    return bad;
}
"#,
    );
    c
}

#[test]
fn the_reentrant_entry_runs_from_many_threads_on_their_own_arenas() {
    kiln_tests::require_compiler("cc");
    let dir = temp("threads");
    // Convolutions (per-run scratch), products and pooling.
    let graph = kiln_tests::cnn_block();
    link_model("cnn_block", &graph, 3, Target::Host, &dir, c_threaded_main);
    run(
        std::process::Command::new(dir.join("model")).current_dir(&dir),
        "the threaded program",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! `kiln-bench --aot`: each inference workload compiled ahead of time
//! (`kiln::aot::compile_c`) into a C timing harness linked with
//! `libkiln_rt.a`, run as a process of its own on the workload's input, and
//! timed the way the JIT session is (a first run, a warm run, then `runs`
//! runs each timed alone); its output is checked against the session's.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use kiln::graph::{Array, Bindings, Data};
use kiln_optimizer::kernel::Storage;

/// The timing of an ahead-of-time binary.
pub struct AotTiming {
    /// Per-run times (ms), sorted.
    pub times: Vec<f64>,
    /// The first run (weights packed, workers started).
    pub first_ms: f64,
    /// The harness executable's size (bytes): model, weights, run-time library.
    pub exe_bytes: u64,
    /// The model object's size (bytes): code, weights, step list.
    pub object_bytes: u64,
    /// The fetched output of the last run.
    pub output: Array,
}

/// The C harness: reads the input's raw bytes, runs the model once (first),
/// once more (warm), `runs` times timed, prints the first-run time then
/// each run's, and writes the first output's raw bytes.
fn harness(name: &str, input_bytes: usize, outputs: &[usize]) -> String {
    let mut c = format!(
        r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "{name}.h"

static double now_ms(void) {{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}}

static void run(const void *const *in, void *const *out) {{
    if ({name}_run(in, out) != 0) {{
        fprintf(stderr, "%s\n", kiln_rt_last_error());
        exit(2);
    }}
}}

int main(int argc, char **argv) {{
    if (argc != 4) {{ fprintf(stderr, "usage: %s RUNS INPUT OUTPUT\n", argv[0]); return 1; }}
    int runs = atoi(argv[1]);
    void *x = aligned_alloc(64, {ib});
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(x, 1, {ib}, f) != {ib}) {{ fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }}
    fclose(f);
    const void *in[1] = {{ x }};
    void *out[{no}];
"#,
        ib = input_bytes,
        no = outputs.len().max(1)
    );
    for (o, bytes) in outputs.iter().enumerate() {
        let _ = writeln!(
            c,
            "    out[{o}] = aligned_alloc(64, {});",
            bytes.div_ceil(64).max(1) * 64
        );
    }
    let _ = write!(
        c,
        r#"    double t = now_ms();
    run(in, out);
    printf("%.6f\n", now_ms() - t);
    run(in, out);
    for (int i = 0; i < runs; i++) {{
        t = now_ms();
        run(in, out);
        printf("%.6f\n", now_ms() - t);
    }}
    f = fopen(argv[3], "wb");
    if (!f || fwrite(out[0], 1, {ob}, f) != {ob}) {{ fprintf(stderr, "cannot write %s\n", argv[3]); return 1; }}
    fclose(f);
    return 0;
}}
"#,
        ob = outputs.first().copied().unwrap_or(0)
    );
    c
}

/// Compiles, links and times workload `w` in `dir`.
pub fn time_aot(w: &kiln_bench::Workload, runs: usize, dir: &Path) -> Result<AotTiming> {
    let graph = &w.graph;
    let fetch = graph.find(&w.output)?;
    let mut bindings = Bindings::new();
    let x = graph.node(graph.find(&w.input.0)?);
    for (d, &n) in x.ty.shape.0.iter().zip(w.input.1.shape()) {
        if let kiln::graph::Dim::Sym(s) = d {
            bindings.insert(s.clone(), n);
        }
    }
    let opts = kiln_optimizer::CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = kiln_optimizer::compile(graph, &[fetch], &bindings, &opts)?.program;
    let inputs: Vec<&str> = program
        .buffers
        .iter()
        .filter_map(|b| match &b.storage {
            Storage::Input { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    ensure!(
        inputs == [w.input.0.as_str()],
        "{}: inputs {inputs:?}",
        w.name
    );
    let model = kiln::aot::compile_c(
        &program,
        "model",
        kiln_codegen::cpu::Target::Host,
        std::slice::from_ref(&w.output),
        dir,
    )?;
    let outputs: Vec<usize> = program
        .outputs
        .iter()
        .map(|&b| program.buffer(b).size_bytes())
        .collect();
    std::fs::write(
        dir.join("harness.c"),
        harness("model", w.input.1.size_bytes(), &outputs),
    )?;
    std::fs::write(dir.join("input.bin"), w.input.1.as_bytes())?;
    let exe = dir.join("harness");
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(dir.join("harness.c"))
        .arg(&model.object)
        .arg(&model.library)
        .args(kiln::aot::SYSTEM_LIBS)
        .output()
        .context("linking the harness needs a C compiler: 'cc' did not run")?;
    ensure!(
        out.status.success(),
        "cc could not link the {} harness:\n{}",
        w.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let res = Command::new(&exe)
        .arg(runs.to_string())
        .arg(dir.join("input.bin"))
        .arg(dir.join("output.bin"))
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    ensure!(
        res.status.success(),
        "the {} harness failed: {}",
        w.name,
        String::from_utf8_lossy(&res.stderr)
    );
    let mut lines = String::from_utf8_lossy(&res.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the harness printed something other than times")?;
    ensure!(
        lines.len() == runs + 1,
        "{}: {} times printed",
        w.name,
        lines.len()
    );
    let first_ms = lines.remove(0);
    lines.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ob = program.buffer(program.outputs[0]);
    let bytes = std::fs::read(dir.join("output.bin"))?;
    let output = Array::new(
        ob.shape.clone(),
        Data::from_le_bytes(ob.dtype, &bytes).context("the harness's output")?,
    )
    .context("the harness output has the wrong size")?;
    Ok(AotTiming {
        times: lines,
        first_ms,
        exe_bytes: std::fs::metadata(&exe)?.len(),
        object_bytes: std::fs::metadata(&model.object)?.len(),
        output,
    })
}

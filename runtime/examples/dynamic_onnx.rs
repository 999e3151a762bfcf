//! Imports an ONNX model exported with dynamic dims once and runs it at
//! several sizes, printing for each run whether it compiled a new program
//! and how long the run took (the first run at a size includes compiling
//! for it), then the median of 20 more runs; and the same for the model
//! imported with those sizes fixed (`ImportOptions::dims`, `kiln import
//! --dim`), in the same process: a dynamic model should run as fast as a
//! fixed one.
//!
//! ```text
//! cargo run --release -p kiln --example dynamic_onnx -- \
//!     tests/onnx/transformers/bert-torchscript.onnx batch=1,seq=1 batch=2,seq=7 batch=2,seq=7
//! ```
//!
//! Inputs are generated: integer inputs (token ids, masks) as small
//! non-negative values below 2, float inputs as a fixed ramp.

use std::time::Instant;

use kiln::graph::ops::elementwise::eval_cast as cast;
use kiln::prelude::*;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: dynamic_onnx MODEL.onnx NAME=N,NAME=N ..."))?;
    let t = Instant::now();
    let graph = Graph::from_onnx(&path)?;
    println!("imported {path} in {:.1?}", t.elapsed());
    let inputs: Vec<(String, TensorType)> = graph
        .placeholders()
        .into_iter()
        .map(|p| (graph.node(p).name.clone(), graph.node(p).ty.clone()))
        .collect();
    for (name, ty) in &inputs {
        println!("  input {name}: {ty}");
    }
    let mut session = Session::new(&graph, Device::Cpu)?;
    for spec in args {
        let mut bindings = kiln::graph::Bindings::new();
        for kv in spec.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("'{kv}' is not NAME=N"))?;
            bindings.insert(k.to_string(), v.parse()?);
        }
        let feeds: Vec<(String, Array)> = inputs
            .iter()
            .map(|(name, ty)| {
                let shape = ty
                    .shape
                    .resolve(&bindings)
                    .map_err(|e| anyhow::anyhow!("input {name}: {e}"))?;
                let n: usize = shape.iter().product();
                let a = if ty.dtype.is_float() {
                    let v: Vec<f32> = (0..n).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
                    Array::from_vec(shape, v)
                } else {
                    let v: Vec<i64> = (0..n).map(|i| (i % 2) as i64).collect();
                    Array::from_vec(shape, v)
                }
                .ok_or_else(|| anyhow::anyhow!("input {name}: bad shape"))?;
                Ok((name.clone(), cast(&a, ty.dtype)))
            })
            .collect::<anyhow::Result<_>>()?;
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let before = session.compiled_programs();
        let t = Instant::now();
        let out = session.run_outputs(&refs)?;
        let took = t.elapsed();
        let compiled = session.compiled_programs() > before;
        let median = median_of_runs(&mut session, &refs)?;
        println!(
            "  {spec}: {} in {took:.1?}, then median {median:.2?}; outputs {}",
            if compiled {
                "compiled and ran"
            } else {
                "ran (program reused)"
            },
            out.iter()
                .map(|(n, a)| format!("{n}{:?}", a.shape()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let options = kiln::onnx::ImportOptions {
            dims: bindings.clone().into_iter().collect(),
            ..Default::default()
        };
        let fixed = Graph::from_onnx_with(&path, &options)?;
        let mut fixed_session = Session::new(&fixed, Device::Cpu)?;
        let t = Instant::now();
        fixed_session.run_outputs(&refs)?;
        let took = t.elapsed();
        let median = median_of_runs(&mut fixed_session, &refs)?;
        println!("    imported with these dims fixed: compiled and ran in {took:.1?}, then median {median:.2?}");
    }
    Ok(())
}

/// The median time of 20 runs.
fn median_of_runs(
    session: &mut Session,
    feeds: &[(&str, &Array)],
) -> anyhow::Result<std::time::Duration> {
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        session.run_outputs(feeds)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

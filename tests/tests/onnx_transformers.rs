//! Transformer ONNX exports with dynamic batch and sequence dims (issue 18):
//! tiny BERT, GPT-2, ViT, DistilBERT, RoBERTa and Llama models with random
//! weights, each exported by both PyTorch exporters (TorchScript, opset 17;
//! dynamo, opset 18) with symbolic `batch` / `seq` dims, plus opset variants
//! (`<model>-<exporter>-opset<NN>`: BERT through TorchScript at opsets 13 and
//! 20, GPT-2 through TorchScript at opset 14 and through dynamo at its highest
//! opset), imported once and run at several (batch, seq) bindings on the
//! reference interpreter and the CPU engine, against ONNX Runtime's outputs.
//! RoBERTa's position ids are a cumulative sum of its non-padding tokens
//! along the symbolic seq axis (its cases pad with the padding id); Llama
//! has rotary position embeddings, grouped-query attention and a causal mask
//! joined with the padding mask.
//!
//! The fixtures live in `tests/onnx/transformers/` and are made by
//! `scripts/transformer-fixtures.sh` (which pins torch, transformers, onnx
//! and ONNX Runtime): `manifest.json` lists each model file with its inputs,
//! outputs and cases; `<fixture>/case<k>/<name>.npy` hold each case's inputs
//! and ONNX Runtime's outputs. `SHAPE_OPS.md` there lists the ONNX ops each
//! export computes shapes with.
//!
//! A fixture the manifest does not list, or whose model or case files are
//! missing, fails its test (nothing here is skipped).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln::graph::Array;
use kiln::{Device, Session};
use serde_json::Value;

/// Outputs must satisfy `|kiln - ort| <= ATOL + RTOL * |ort|` elementwise.
/// RTOL 1e-4 covers float32 reassociation (kiln and ONNX Runtime sum matmuls,
/// softmaxes and layer norms in different orders); ATOL 1e-5 covers values
/// near zero, where a relative bound alone would demand exact agreement
/// (hidden states here are layer-normed, of magnitude about 1).
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// The fixtures' directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/transformers")
}

/// The parsed `manifest.json`.
fn manifest() -> Value {
    let path = root().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by scripts/transformer-fixtures.sh)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest's entry for the fixture `name` (e.g. `bert-dynamo`).
fn entry(manifest: &Value, name: &str) -> Value {
    let fixtures = manifest["fixtures"]
        .as_array()
        .expect("manifest.json: no `fixtures` array");
    let e = fixtures
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name}: not listed in manifest.json"));
    if let Some(err) = e.get("error") {
        panic!("{name}: the exporter failed when the fixtures were made: {err}");
    }
    e.clone()
}

fn str_of<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: manifest has no string `{key}`"))
}

fn names(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: manifest list missing"))
        .iter()
        .map(|io| str_of(io, "name", what).to_string())
        .collect()
}

fn read_npy(path: &Path) -> Array {
    assert!(path.is_file(), "{}: missing fixture file", path.display());
    kiln::npy::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The multi-index of flat index `i` in `shape` (C order).
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// Checks `got` against ONNX Runtime's `want` within RTOL / ATOL; the error
/// names the worst element (the one furthest past its bound).
fn compare(got: &Array, want: &Array) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, ONNX Runtime's {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let mut worst: Option<(usize, f64)> = None;
    let mut bad = 0usize;
    let mut max_abs = 0.0f64;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let diff = (a - b).abs();
        let excess = if a.is_nan() || b.is_nan() {
            if a.is_nan() && b.is_nan() {
                continue;
            }
            f64::INFINITY
        } else if a == b {
            continue;
        } else {
            diff - (ATOL + RTOL * b.abs())
        };
        if diff.is_finite() {
            max_abs = max_abs.max(diff);
        }
        if excess > 0.0 {
            bad += 1;
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{bad} of {} elements off (rtol {RTOL}, atol {ATOL}); worst at {:?}: kiln {}, \
             ONNX Runtime {} (|diff| {}); max |diff| {max_abs}",
            g.len(),
            unravel(i, got.shape()),
            g[i],
            w[i],
            (g[i] - w[i]).abs()
        )),
    }
}

/// Imports fixture `name` once, opens a session on `device`, and runs every
/// case of the manifest, comparing every output with ONNX Runtime's. On the
/// CPU engine, checks one program was compiled per distinct binding of the
/// symbolic dims (and none more when a binding is run again).
fn check(name: &str, device: Device) {
    let manifest = manifest();
    let e = entry(&manifest, name);
    let dir = root();
    let file = dir.join(str_of(&e, "file", name));
    assert!(
        file.is_file(),
        "{name}: model file {} missing (scripts/transformer-fixtures.sh makes it)",
        file.display()
    );
    let graph = kiln_onnx::import(&file).unwrap_or_else(|err| panic!("{name}: import: {err}"));
    let inputs = names(&e["inputs"], name);
    let outputs = names(&e["outputs"], name);
    let fetches: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let cases = e["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: manifest has no `cases`"));
    assert!(
        cases.len() >= 3,
        "{name}: {} cases, want 3 or more",
        cases.len()
    );
    let session =
        Session::new(&graph, device).unwrap_or_else(|err| panic!("{name} on {device}: {err}"));

    let mut bindings = BTreeSet::new();
    let mut first_feeds = None;
    let mut failures = Vec::new();
    for case in cases {
        let case_dir = dir.join(str_of(case, "dir", name));
        let what = format!("{name} {} on {device}", str_of(case, "dir", name));
        let feeds: Vec<(String, Array)> = inputs
            .iter()
            .map(|n| (n.clone(), read_npy(&case_dir.join(format!("{n}.npy")))))
            .collect();
        let expected: Vec<Array> = outputs
            .iter()
            .map(|n| read_npy(&case_dir.join(format!("{n}.npy"))))
            .collect();
        // The binding of the symbolic dims is fixed by the feeds' shapes.
        bindings.insert(
            feeds
                .iter()
                .map(|(_, a)| a.shape().to_vec())
                .collect::<Vec<_>>(),
        );
        let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let got = session
            .run(&feed_refs, &fetches)
            .unwrap_or_else(|err| panic!("{what}: run: {err}"));
        assert_eq!(got.len(), outputs.len(), "{what}: outputs returned");
        for ((out, g), w) in outputs.iter().zip(&got).zip(&expected) {
            if let Err(msg) = compare(g, w) {
                failures.push(format!("{what}: output {out}: {msg}"));
            }
        }
        if first_feeds.is_none() {
            first_feeds = Some(feeds);
        }
    }
    assert!(
        failures.is_empty(),
        "{} output(s) differ from ONNX Runtime:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    if device == Device::Cpu {
        assert_eq!(
            session.compiled_programs(),
            bindings.len(),
            "{name} on {device}: programs compiled for {} distinct bindings",
            bindings.len()
        );
        // A binding seen before reuses its program.
        let feeds = first_feeds.unwrap();
        let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        session
            .run(&feed_refs, &fetches)
            .unwrap_or_else(|err| panic!("{name} on {device}: rerun of case 0: {err}"));
        assert_eq!(
            session.compiled_programs(),
            bindings.len(),
            "{name} on {device}: rerunning a binding compiled a new program"
        );
    }
}

/// Each case of fixture `name` with its dims fixed at import
/// (`ImportOptions::dims`, as `kiln import --dim batch=2 --dim seq=7` does),
/// on the reference interpreter and the CPU engine: the models' numerics
/// without symbolic dims, so that a failure of [`check`] at import tells
/// dynamic-shape trouble from an op computing wrongly.
fn check_fixed_dims(name: &str) {
    let manifest = manifest();
    let e = entry(&manifest, name);
    let dir = root();
    let file = dir.join(str_of(&e, "file", name));
    let inputs = names(&e["inputs"], name);
    let outputs = names(&e["outputs"], name);
    let fetches: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut failures = Vec::new();
    for case in e["cases"].as_array().expect("cases") {
        let case_dir = dir.join(str_of(case, "dir", name));
        let mut options = kiln_onnx::ImportOptions::default();
        options.dims.insert(
            "batch".into(),
            case["batch"].as_u64().expect("batch") as usize,
        );
        if let Some(seq) = case["seq"].as_u64() {
            options.dims.insert("seq".into(), seq as usize);
        }
        let what = format!(
            "{name} {} (dims {:?})",
            str_of(case, "dir", name),
            options.dims
        );
        let graph = kiln_onnx::import_with(&file, &options)
            .unwrap_or_else(|err| panic!("{what}: import: {err}"));
        let feeds: Vec<(String, Array)> = inputs
            .iter()
            .map(|n| (n.clone(), read_npy(&case_dir.join(format!("{n}.npy")))))
            .collect();
        let feed_refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        for device in [Device::Reference, Device::Cpu] {
            let got = Session::new(&graph, device)
                .and_then(|s| s.run(&feed_refs, &fetches))
                .unwrap_or_else(|err| panic!("{what} on {device}: {err}"));
            for (out, g) in outputs.iter().zip(&got) {
                let w = read_npy(&case_dir.join(format!("{out}.npy")));
                if let Err(msg) = compare(g, &w) {
                    failures.push(format!("{what} on {device}: output {out}: {msg}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} output(s) differ from ONNX Runtime:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Every fixture the tests below name is in the manifest, exported, with
/// its model file and every case's files present, and nothing else is listed.
#[test]
fn manifest_lists_every_fixture_and_its_files() {
    let manifest = manifest();
    let listed: BTreeSet<String> = manifest["fixtures"]
        .as_array()
        .expect("manifest.json: no `fixtures` array")
        .iter()
        .map(|f| str_of(f, "name", "fixture").to_string())
        .collect();
    let wanted: BTreeSet<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, wanted, "fixtures in manifest.json");
    for name in FIXTURES {
        let e = entry(&manifest, name);
        let dir = root();
        let file = dir.join(str_of(&e, "file", name));
        assert!(file.is_file(), "{name}: {} missing", file.display());
        // `<model>-<exporter>-opset<NN>` was exported at opset NN.
        if let Some((_, nn)) = name.rsplit_once("-opset") {
            assert_eq!(e["opset"].to_string(), nn, "{name}: the manifest's opset");
        }
        let mut seqs = BTreeSet::new();
        for case in e["cases"].as_array().expect("cases") {
            let case_dir = dir.join(str_of(case, "dir", name));
            for n in names(&e["inputs"], name)
                .into_iter()
                .chain(names(&e["outputs"], name))
            {
                let p = case_dir.join(format!("{n}.npy"));
                assert!(p.is_file(), "{name}: {} missing", p.display());
            }
            seqs.insert(case["seq"].as_u64());
        }
        assert!(
            seqs.len() >= 2 || name.starts_with("vit"),
            "{name}: seqs {seqs:?}"
        );
    }
}

/// The comparison passes values within the bound and names the worst
/// element past it.
#[test]
fn compare_names_the_worst_element() {
    let want = Array::from_vec(vec![2, 2], vec![1.0f32, -2.0, 0.0, 100.0]).unwrap();
    let close = Array::from_vec(vec![2, 2], vec![1.0001f32, -2.0, 5e-6, 100.005]).unwrap();
    compare(&close, &want).unwrap();
    let off = Array::from_vec(vec![2, 2], vec![1.01f32, -2.0, 1e-3, 100.0]).unwrap();
    let msg = compare(&off, &want).unwrap_err();
    assert!(msg.starts_with("2 of 4 elements off"), "{msg}");
    assert!(msg.contains("worst at [0, 0]"), "{msg}");
    let nan = Array::from_vec(vec![2, 2], vec![1.0f32, f32::NAN, 0.0, 100.0]).unwrap();
    assert!(compare(&nan, &want)
        .unwrap_err()
        .contains("worst at [0, 1]"));
    let shape = Array::from_vec(vec![4], vec![1.0f32, -2.0, 0.0, 100.0]).unwrap();
    assert!(compare(&shape, &want).is_err());
}

const FIXTURES: [&str; 16] = [
    "bert-torchscript",
    "bert-dynamo",
    "gpt2-torchscript",
    "gpt2-dynamo",
    "vit-torchscript",
    "vit-dynamo",
    "distilbert-torchscript",
    "distilbert-dynamo",
    "bert-torchscript-opset13",
    "bert-torchscript-opset20",
    "gpt2-torchscript-opset14",
    "gpt2-dynamo-opset22",
    "roberta-torchscript",
    "roberta-dynamo",
    "llama-torchscript",
    "llama-dynamo",
];

macro_rules! fixture_tests {
    ($($test:ident: $name:literal, $device:expr;)*) => {
        $(
            #[test]
            fn $test() {
                assert!(FIXTURES.contains(&$name));
                check($name, $device);
            }
        )*
    };
}

macro_rules! fixed_dims_tests {
    ($($test:ident: $name:literal;)*) => {
        $(
            #[test]
            fn $test() {
                assert!(FIXTURES.contains(&$name));
                check_fixed_dims($name);
            }
        )*
    };
}

fixed_dims_tests! {
    bert_torchscript_fixed_dims: "bert-torchscript";
    bert_dynamo_fixed_dims: "bert-dynamo";
    gpt2_torchscript_fixed_dims: "gpt2-torchscript";
    gpt2_dynamo_fixed_dims: "gpt2-dynamo";
    vit_torchscript_fixed_dims: "vit-torchscript";
    vit_dynamo_fixed_dims: "vit-dynamo";
    distilbert_torchscript_fixed_dims: "distilbert-torchscript";
    distilbert_dynamo_fixed_dims: "distilbert-dynamo";
    bert_torchscript_opset13_fixed_dims: "bert-torchscript-opset13";
    bert_torchscript_opset20_fixed_dims: "bert-torchscript-opset20";
    gpt2_torchscript_opset14_fixed_dims: "gpt2-torchscript-opset14";
    gpt2_dynamo_opset22_fixed_dims: "gpt2-dynamo-opset22";
    roberta_torchscript_fixed_dims: "roberta-torchscript";
    roberta_dynamo_fixed_dims: "roberta-dynamo";
    llama_torchscript_fixed_dims: "llama-torchscript";
    llama_dynamo_fixed_dims: "llama-dynamo";
}

fixture_tests! {
    bert_torchscript_reference: "bert-torchscript", Device::Reference;
    bert_torchscript_cpu: "bert-torchscript", Device::Cpu;
    bert_dynamo_reference: "bert-dynamo", Device::Reference;
    bert_dynamo_cpu: "bert-dynamo", Device::Cpu;
    gpt2_torchscript_reference: "gpt2-torchscript", Device::Reference;
    gpt2_torchscript_cpu: "gpt2-torchscript", Device::Cpu;
    gpt2_dynamo_reference: "gpt2-dynamo", Device::Reference;
    gpt2_dynamo_cpu: "gpt2-dynamo", Device::Cpu;
    vit_torchscript_reference: "vit-torchscript", Device::Reference;
    vit_torchscript_cpu: "vit-torchscript", Device::Cpu;
    vit_dynamo_reference: "vit-dynamo", Device::Reference;
    vit_dynamo_cpu: "vit-dynamo", Device::Cpu;
    distilbert_torchscript_reference: "distilbert-torchscript", Device::Reference;
    distilbert_torchscript_cpu: "distilbert-torchscript", Device::Cpu;
    distilbert_dynamo_reference: "distilbert-dynamo", Device::Reference;
    distilbert_dynamo_cpu: "distilbert-dynamo", Device::Cpu;
    bert_torchscript_opset13_reference: "bert-torchscript-opset13", Device::Reference;
    bert_torchscript_opset13_cpu: "bert-torchscript-opset13", Device::Cpu;
    bert_torchscript_opset20_reference: "bert-torchscript-opset20", Device::Reference;
    bert_torchscript_opset20_cpu: "bert-torchscript-opset20", Device::Cpu;
    gpt2_torchscript_opset14_reference: "gpt2-torchscript-opset14", Device::Reference;
    gpt2_torchscript_opset14_cpu: "gpt2-torchscript-opset14", Device::Cpu;
    gpt2_dynamo_opset22_reference: "gpt2-dynamo-opset22", Device::Reference;
    gpt2_dynamo_opset22_cpu: "gpt2-dynamo-opset22", Device::Cpu;
    roberta_torchscript_reference: "roberta-torchscript", Device::Reference;
    roberta_torchscript_cpu: "roberta-torchscript", Device::Cpu;
    roberta_dynamo_reference: "roberta-dynamo", Device::Reference;
    roberta_dynamo_cpu: "roberta-dynamo", Device::Cpu;
    llama_torchscript_reference: "llama-torchscript", Device::Reference;
    llama_torchscript_cpu: "llama-torchscript", Device::Cpu;
    llama_dynamo_reference: "llama-dynamo", Device::Reference;
    llama_dynamo_cpu: "llama-dynamo", Device::Cpu;
}

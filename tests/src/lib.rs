//! Shared support for kiln's cross-crate tests: the example models, feeds
//! for any graph, and tolerance-aware comparison.

use kiln::graph::{Array, DType, Graph, Scalar};
use kiln::prelude::*;

pub mod fuzz_case;
pub mod onnx_proto;
pub mod random_graph;
pub mod setup;

/// The example models every differential test runs: name and graph.
pub fn example_models() -> Vec<(&'static str, Graph)> {
    vec![
        ("mlp_784_512_512_10", mlp(&[784, 512, 512, 10])),
        ("mlp_small", mlp(&[12, 16, 5])),
        ("cnn_block", cnn_block()),
        ("attention_block", attention_block()),
        ("layer_norm", layer_norm_only()),
    ]
}

/// A ReLU MLP over `x: [batch, sizes[0]]` with outputs named `logits`.
pub fn mlp(sizes: &[usize]) -> Graph {
    let g = GraphBuilder::with_seed(5);
    let mut h = g
        .placeholder("x", DType::F32, shape!["batch", sizes[0]])
        .unwrap();
    let last = sizes.len() - 1;
    for (i, &units) in sizes[1..].iter().enumerate() {
        let act = if i + 1 == last {
            Activation::Identity
        } else {
            Activation::Relu
        };
        h = g.dense(&format!("fc{}", i + 1), h, units, act).unwrap();
    }
    g.output(h.named("logits").unwrap()).unwrap();
    g.into_graph()
}

/// conv3x3 + batch norm + ReLU, a residual conv block, pooling and a linear head.
pub fn cnn_block() -> Graph {
    let g = GraphBuilder::with_seed(6);
    let x = g
        .placeholder("image", DType::F32, shape!["batch", 3, 12, 12])
        .unwrap();
    let same = Conv2dOptions::default().padding(1);
    let c = g
        .conv2d_layer("stem", x, 8, 3, same, Activation::Identity)
        .unwrap();
    let c = g.batch_norm("stem_bn", c, 1e-5).unwrap().relu().unwrap();
    let r = g
        .conv2d_layer("res/conv1", c, 8, 3, same, Activation::Relu)
        .unwrap();
    let r = g
        .conv2d_layer("res/conv2", r, 8, 3, same, Activation::Identity)
        .unwrap();
    let h = r.add(c).unwrap().relu().unwrap();
    let p = g
        .avg_pool2d(h, 2, 2, 0)
        .unwrap()
        .global_avg_pool()
        .unwrap()
        .flatten()
        .unwrap();
    g.output(g.linear("head", p, 4).unwrap().named("logits").unwrap())
        .unwrap();
    g.into_graph()
}

/// A pre-norm transformer encoder block (attention + GELU FFN).
pub fn attention_block() -> Graph {
    let g = GraphBuilder::with_seed(7);
    let x = g
        .placeholder("tokens", DType::F32, shape!["batch", 6, 16])
        .unwrap();
    let a = g
        .multi_head_attention("attn", g.layer_norm("ln1", x, 1e-5).unwrap(), 4, false)
        .unwrap();
    let h = x.add(a).unwrap();
    let f = g
        .dense(
            "ffn1",
            g.layer_norm("ln2", h, 1e-5).unwrap(),
            32,
            Activation::Gelu,
        )
        .unwrap();
    let y = h.add(g.linear("ffn2", f, 16).unwrap()).unwrap();
    g.output(y.named("out").unwrap()).unwrap();
    g.into_graph()
}

/// Layer norm then softmax over the last dim.
pub fn layer_norm_only() -> Graph {
    let g = GraphBuilder::with_seed(8);
    let x = g.placeholder("x", DType::F32, shape!["batch", 10]).unwrap();
    let y = g.layer_norm("ln", x, 1e-5).unwrap().softmax(-1).unwrap();
    g.output(y.named("probs").unwrap()).unwrap();
    g.into_graph()
}

/// Deterministic feeds for every placeholder of `graph`, binding each
/// symbolic dim to `sym`.
pub fn feeds_for(graph: &Graph, sym: usize, seed: u64) -> Vec<(String, Array)> {
    graph
        .placeholders()
        .into_iter()
        .map(|p| {
            let n = graph.node(p);
            let dims: Vec<usize> =
                n.ty.shape
                    .dims()
                    .iter()
                    .map(|d| d.fixed().unwrap_or(sym))
                    .collect();
            let count: usize = dims.iter().product();
            let vals: Vec<f64> = (0..count as u64)
                .map(|i| kiln::graph::rng::uniform_f64(seed ^ p.index() as u64, i) * 4.0 - 2.0)
                .collect();
            let scalars: Vec<Scalar> = vals
                .iter()
                .map(|&v| match n.ty.dtype {
                    DType::I32 | DType::I64 => Scalar::from_f64(n.ty.dtype, (v * 3.0).floor()),
                    // Narrow integers over their whole range (negative
                    // values wrap into the unsigned types' upper half).
                    d if d.is_int() => kiln::graph::ops::elementwise::cast_scalar(
                        Scalar::I64((v * 40.0).floor() as i64),
                        d,
                    ),
                    DType::Bool => Scalar::Bool(v > 0.0),
                    d => Scalar::from_f64(d, v),
                })
                .collect();
            (
                n.name.clone(),
                Array::from_scalars(dims, n.ty.dtype, &scalars).unwrap(),
            )
        })
        .collect()
}

/// Runs `graph`'s outputs on the reference interpreter.
pub fn run_reference(graph: &Graph, feeds: &[(String, Array)]) -> Vec<Array> {
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let s = Session::new(graph, Device::Reference).unwrap();
    s.run_outputs(&refs)
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

/// The ways the CPU backend runs long f32 rows on this host, each with the
/// session options that choose it: the row code in the host's widest ISA
/// (AVX-512, else AVX2), the AVX2 row code with AVX-512 off (only on
/// AVX-512 hosts: elsewhere it is the first), and Cranelift's 128-bit code
/// (the row code off). On a host without AVX2 the first is the 128-bit code
/// too; the AVX2 row code takes only rows with a transcendental (exp, log,
/// tanh, sigmoid, erf), the rest stay in the 128-bit code there.
pub fn row_paths() -> Vec<(&'static str, SessionOptions)> {
    let x86 = |f: &str| match f {
        #[cfg(target_arch = "x86_64")]
        "avx512" => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
        }
        #[cfg(target_arch = "x86_64")]
        "avx2" => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        _ => false,
    };
    let opts = |avx512: bool, wide_rows: bool| SessionOptions {
        avx512: Some(avx512),
        wide_rows: Some(wide_rows),
        ..Default::default()
    };
    let widest = if x86("avx512") {
        "AVX-512 rows"
    } else if x86("avx2") {
        "AVX2 rows"
    } else {
        "128-bit rows (no AVX2 here)"
    };
    let mut v = vec![(widest, opts(true, true))];
    if x86("avx512") {
        v.push(("AVX2 rows (AVX-512 off)", opts(false, true)));
    }
    v.push(("128-bit rows", opts(true, false)));
    v
}

/// Tolerance per dtype for comparing an optimized result with the reference.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-4, 1e-5),
        DType::F64 => (1e-10, 1e-12),
        // One rounding apart at most: f16 has 11 significant bits, bf16 8.
        DType::F16 => (1e-3, 1e-6),
        DType::BF16 => (8e-3, 1e-6),
        _ => (0.0, 0.0),
    }
}

/// Checks `got` against `want` elementwise: `|g - w| <= atol + rtol * |w|`,
/// NaN matching NaN, integers and bools exactly. Returns a description of
/// the first mismatch.
pub fn compare(want: &Array, got: &Array) -> Result<(), String> {
    if want.dtype() != got.dtype() || want.shape() != got.shape() {
        return Err(format!(
            "type {}{:?} vs {}{:?}",
            want.dtype(),
            want.shape(),
            got.dtype(),
            got.shape()
        ));
    }
    if want.dtype().is_int() {
        // Exactly, element by element (u64 and i64 do not fit an f64).
        let w = want.dtype().size_bytes();
        let (a, b) = (want.as_bytes(), got.as_bytes());
        if let Some(i) = (0..want.len()).find(|&i| a[i * w..(i + 1) * w] != b[i * w..(i + 1) * w]) {
            return Err(format!(
                "element {i}: want {:?}, got {:?}",
                want.get(i),
                got.get(i)
            ));
        }
        return Ok(());
    }
    let (rtol, atol) = tolerance(want.dtype());
    let (w, g) = (want.to_f64_vec(), got.to_f64_vec());
    for (i, (a, b)) in w.iter().zip(&g).enumerate() {
        // Infinities must match exactly (the tolerance is infinite there).
        let ok = (a.is_nan() && b.is_nan())
            || a == b
            || (a.is_finite() && (a - b).abs() <= atol + rtol * a.abs());
        if !ok {
            return Err(format!("element {i}: want {a}, got {b}"));
        }
    }
    Ok(())
}

/// Makes NVRTC loadable for `kiln_codegen::cuda` (call before anything
/// there probes for it, as the probe is cached): `KILN_NVRTC_DIR` when set,
/// else the system's libnvrtc (the loader's path or
/// `/usr/local/cuda/lib64`), else the pip package installed into
/// `target/nvrtc-venv` by `scripts/nvrtc.sh`, whose directory is then put
/// in `KILN_NVRTC_DIR`. Panics, saying what to run, when none loads.
pub fn require_nvrtc() {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return;
    }
    const HELP: &str = "The CUDA tests compile every kernel with NVRTC (no GPU needed). \
        Run `scripts/nvrtc.sh target/nvrtc-venv` from the repository root (pip package \
        nvidia-cuda-nvrtc; needs python3 with venv, and network once) and set \
        KILN_NVRTC_DIR to the directory it prints, or install the CUDA toolkit.";
    if std::env::var_os("KILN_NVRTC_DIR").is_none() && !system_nvrtc() {
        let dir = setup::fetch("nvrtc.sh", "target/nvrtc-venv", HELP);
        // Set before the first probe reads it (this lock orders the callers).
        std::env::set_var("KILN_NVRTC_DIR", &dir);
    }
    // The library reads no environment: the paths go down as a session's
    // creation would pass them.
    kiln_codegen::cuda::set_paths(kiln::env::cuda_paths());
    assert!(
        kiln_codegen::cuda::nvrtc_available(),
        "NVRTC does not load (KILN_NVRTC_DIR={:?}).\n{HELP}",
        std::env::var_os("KILN_NVRTC_DIR")
    );
    *ready = true;
}

/// Panics unless `Device::Cuda(0)` opens: the first line of every test
/// marked `#[ignore = "needs a CUDA GPU: run scripts/gpu-check.sh"]` (the
/// runner's summary counts those as ignored, and `scripts/gpu-check.sh`
/// runs them on a GPU machine), so that one asked to run without a GPU fails instead of passing.
pub fn require_gpu() {
    require_nvrtc();
    if let Err(e) = kiln_codegen::cuda::CudaDevice::open(0) {
        panic!("this test needs a CUDA GPU, and cuda:0 does not open: {e}");
    }
}

/// Panics, saying what to install, unless `compiler --version` runs
/// (`cc` links ahead-of-time objects; `c++` builds the CUDA host stand-in).
pub fn require_compiler(compiler: &str) {
    let ok = std::process::Command::new(compiler)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no C/C++ compiler: `{compiler} --version` does not run. Install one \
         (Debian/Ubuntu: `apt-get install build-essential`; Fedora: \
         `dnf install gcc gcc-c++`) and put `{compiler}` on PATH"
    );
}

/// Whether the loader or the CUDA toolkit's usual place has libnvrtc.
fn system_nvrtc() -> bool {
    let in_toolkit = std::fs::read_dir("/usr/local/cuda/lib64").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so"))
    });
    // Names cudarc tries too.
    let names = [
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.1",
    ];
    let on_loader_path = names.iter().any(|name| {
        let c = std::ffi::CString::new(*name).expect("no NUL");
        // SAFETY: dlopen of a library by name, only to see whether the
        // loader finds it; a handle found stays open for the process.
        !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY) }.is_null()
    });
    in_toolkit || on_loader_path
}

/// The UCI digits shipped in `examples/data/digits` (see [`kiln::datasets::digits`]).
pub fn load_digits() -> (Vec<f32>, Vec<i64>) {
    let mut path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/digits/digits.csv.gz");
    if !path.exists() {
        // A test binary carried to another checkout (the GPU machine) and
        // run from its root.
        path = "examples/data/digits/digits.csv.gz".into();
    }
    kiln::datasets::digits(&path).expect("digits data")
}

/// Asserts that `err` is a type error of `op` reported at `file:line` (the
/// caller's `file!()` and line of the failing call), and that its message
/// names that place and mentions every string in `mentions`.
#[track_caller]
pub fn assert_type_error(
    err: kiln::graph::Error,
    op: &str,
    file: &str,
    line: u32,
    mentions: &[&str],
) {
    let msg = err.to_string();
    match &err {
        kiln::graph::Error::Type {
            op: o, location, ..
        } => {
            assert_eq!(o, op, "{msg}");
            assert_eq!(location.file, file, "{msg}");
            assert_eq!(location.line, line, "{msg}");
        }
        other => panic!("expected a type error of {op}, got {other:?}"),
    }
    assert!(
        msg.contains(&format!("{file}:{line}:")),
        "message lacks file:line: {msg}"
    );
    for m in mentions {
        assert!(msg.contains(m), "message lacks '{m}': {msg}");
    }
}

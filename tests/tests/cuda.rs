//! The CUDA backend as far as a machine without a GPU can check it: a CUDA
//! session says exactly what is missing, and the CUDA C of every
//! elementwise and reduction kernel of the example models (and of graphs
//! using every elementwise op and reduction) compiles with NVRTC, which
//! needs no GPU, only libnvrtc (found by the loader, in
//! `/usr/local/cuda/lib64`, or in `KILN_NVRTC_DIR`). Where NVRTC is absent
//! the compile test says so and checks only that every kernel has source.

use kiln::graph::{Bindings, Graph, ReduceOp, Tensor};
use kiln::prelude::*;
use kiln_codegen::cuda;
use kiln_optimizer::{compile, CompileOptions};

#[test]
fn a_cuda_session_says_what_is_missing() {
    let graph = kiln_tests::mlp(&[4, 3]);
    let err = match Session::new(&graph, Device::Cuda(0)) {
        Ok(_) => panic!("the CUDA backend cannot run programs yet, so no session"),
        Err(e) => e.to_string(),
    };
    if !cuda::driver_available() {
        eprintln!("no CUDA driver here: checking the error says so");
        assert!(
            err.contains("cuda:0") && err.contains("no CUDA driver"),
            "{err}"
        );
    } else {
        eprintln!("a CUDA driver is present: {err}");
        assert!(err.contains("cuda:"), "{err}");
    }
    let err = Session::new(&graph, Device::Cuda(99))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cuda:99"), "{err}");
}

#[test]
fn devices_parse() {
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    assert!("cuda:x".parse::<Device>().is_err());
}

/// Graphs whose kernels cover every elementwise op and reduction kind.
fn op_graphs() -> Vec<(String, Graph)> {
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![4, 33]).unwrap();
        let y = g.placeholder("y", dtype, shape![4, 33]).unwrap();
        let mut acc = x.add(y).unwrap();
        let unary: [fn(Tensor<'_>) -> kiln::graph::Result<Tensor<'_>>; 16] = [
            |t| t.neg(),
            |t| t.abs(),
            |t| t.sign(),
            |t| t.exp(),
            |t| t.sqrt(),
            |t| t.rsqrt(),
            |t| t.recip(),
            |t| t.sin(),
            |t| t.cos(),
            |t| t.tanh(),
            |t| t.sigmoid(),
            |t| t.erf(),
            |t| t.floor(),
            |t| t.ceil(),
            |t| t.round(),
            |t| t.log(),
        ];
        let mut names: Vec<String> = Vec::new();
        for (k, f) in unary.into_iter().enumerate() {
            let u = f(x.mul(1.3).unwrap().add(0.2).unwrap()).unwrap();
            u.named(&format!("unary{k}")).unwrap();
            names.push(format!("unary{k}"));
            acc = acc.add(u).unwrap();
        }
        let i32s = x.mul(7.0).unwrap().cast(DType::I32).unwrap();
        let i32b = y.mul(3.0).unwrap().cast(DType::I32).unwrap();
        for (k, t) in [
            i32s.div(i32b).unwrap(),
            i32s.mul(i32b).unwrap().sub(i32s).unwrap(),
            i32s.pow(i32b.abs().unwrap()).unwrap(),
            i32s.sign().unwrap().mul(i32s.neg().unwrap()).unwrap(),
            i32s.maximum(i32b)
                .unwrap()
                .add(i32s.minimum(i32b).unwrap())
                .unwrap(),
        ]
        .into_iter()
        .enumerate()
        {
            t.named(&format!("int{k}")).unwrap();
            names.push(format!("int{k}"));
        }
        let m = g.select(
            x.gt(y).unwrap(),
            x.maximum(y).unwrap(),
            x.minimum(y).unwrap(),
        );
        let m = m.unwrap().pow(y).unwrap().div(acc).unwrap();
        let i = m
            .cast(DType::I32)
            .unwrap()
            .mul(3i32)
            .unwrap()
            .div(2i32)
            .unwrap();
        let j = i
            .cast(DType::I64)
            .unwrap()
            .pow(2i64)
            .unwrap()
            .neg()
            .unwrap()
            .abs()
            .unwrap();
        let b = j
            .ne(0i64)
            .unwrap()
            .and(x.le(y).unwrap())
            .unwrap()
            .not()
            .unwrap();
        b.cast(dtype).unwrap().named("elementwise").unwrap();
        for (k, f) in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min]
            .into_iter()
            .enumerate()
        {
            let r = match f {
                ReduceOp::Sum => m.sum(&[1], true),
                ReduceOp::Prod => m.prod(&[0], false),
                ReduceOp::Max => m.max(&[0, 1], false),
                ReduceOp::Min => m.min(&[1], true),
            };
            r.unwrap().named(&format!("reduce{k}")).unwrap();
        }
        m.softmax(-1).unwrap().named("softmax").unwrap();
        m.argmax(1, false).unwrap().named("argmax").unwrap();
        j.sum(&[1], false).unwrap().named("int_sum").unwrap();
        let mut graph = g.into_graph();
        names.extend(
            [
                "elementwise",
                "reduce0",
                "reduce1",
                "reduce2",
                "reduce3",
                "softmax",
                "argmax",
                "int_sum",
            ]
            .map(String::from),
        );
        let outs = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(outs).unwrap();
        out.push((format!("ops {dtype}"), graph));
    }
    out
}

#[test]
fn every_kernel_has_cuda_c_that_nvrtc_compiles() {
    let nvrtc = cuda::nvrtc_available();
    if !nvrtc {
        eprintln!(
            "NVRTC not found (no toolkit, KILN_NVRTC_DIR unset): checking that every \
             kernel has CUDA C, not compiling it"
        );
    }
    let mut graphs: Vec<(String, Graph)> = kiln_tests::example_models()
        .into_iter()
        .map(|(n, g)| (n.to_string(), g))
        .collect();
    graphs.extend(op_graphs());
    let mut compiled = 0;
    for (name, graph) in graphs {
        let bindings: Bindings = [("batch".to_string(), 2usize)].into_iter().collect();
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = compile(&graph, graph.outputs(), &bindings, &opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .program;
        let sources = cuda::sources(&program).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!sources.is_empty(), "{name}: no kernels emitted");
        if nvrtc {
            for s in &sources {
                cuda::compile(&s.source, "sm_90")
                    .unwrap_or_else(|e| panic!("{name}, {}: {e}\n{}", s.name, s.source));
                compiled += 1;
            }
        }
    }
    if nvrtc {
        eprintln!("compiled {compiled} kernels with NVRTC for sm_90");
    }
}

/// The generated CUDA C, compiled as host C++ (a few definitions stand in
/// for CUDA's built-ins; one thread covers the whole grid-stride loop) and
/// run on the CPU over a copy of the program's memory: this checks what the
/// emitted code computes, not just that it compiles, on machines without a
/// GPU. Only programs made wholly of emitted kernels run this way.
mod host {
    use std::collections::HashMap;
    use std::ffi::CString;

    use kiln::graph::{Array, Data};
    use kiln_codegen::cuda::source;
    use kiln_optimizer::kernel::{BufferId, KernelProgram, Storage};

    const SHIMS: &str = r#"
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
struct KDim { unsigned x; };
static KDim blockIdx = {0}, blockDim = {1}, threadIdx = {0}, gridDim = {1};
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
"#;

    /// Runs `program` by its emitted kernels on the host, or `None` when a
    /// kernel is not emitted (a matmul or primitive op) or no C++ compiler
    /// is found.
    pub fn run(program: &KernelProgram, feeds: &HashMap<String, Array>) -> Option<Vec<Array>> {
        let mut unit = String::from(SHIMS);
        let mut calls = Vec::new();
        for k in 0..program.kernels.len() {
            let matmul = source::emit_matmul(program, k);
            let is_op = matches!(
                program.kernels[k],
                kiln_optimizer::kernel::Kernel::Op { .. }
            );
            if is_op
                || (matmul.is_none()
                    && matches!(
                        program.kernels[k],
                        kiln_optimizer::kernel::Kernel::MatMul { .. }
                    ))
            {
                return None;
            }
            let main = source::emit(program, k).ok()?;
            for s in matmul.into_iter().chain(main) {
                let id = calls.len();
                unit.push_str(&format!("namespace ns{id} {{\n{}\n}}\n", s.source));
                let args: Vec<String> = (0..s.params.len()).map(|i| format!("p[{i}]")).collect();
                unit.push_str(&format!(
                    "extern \"C\" void call_{id}(void** p, long long count) {{ ns{id}::{}({}{}count); }}\n",
                    s.name,
                    args.join(", "),
                    if args.is_empty() { "" } else { ", " }
                ));
                calls.push((id, s));
            }
        }
        let dir = std::env::temp_dir().join(format!("kiln-cuda-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let tag = calls.len() ^ (unit.len() << 8);
        let (src, lib) = (
            dir.join(format!("u{tag}.cpp")),
            dir.join(format!("u{tag}.so")),
        );
        std::fs::write(&src, &unit).ok()?;
        let status = std::process::Command::new("c++")
            .args(["-O1", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .ok()?;
        assert!(
            status.success(),
            "C++ compile of the emitted kernels failed:\n{unit}"
        );
        let path = CString::new(lib.to_str()?).ok()?;
        // SAFETY: loads the library just built.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen of the emitted kernels failed");
        // Host memory for every buffer, in the plan's layout.
        let mut arena = vec![0u64; program.memory.arena.div_ceil(8) + 8];
        let mut own: HashMap<usize, Vec<u64>> = HashMap::new();
        for (i, b) in program.buffers.iter().enumerate() {
            let bytes: Option<Vec<u8>> = match &b.storage {
                Storage::Input { name } => Some(feeds[name].as_bytes().to_vec()),
                Storage::Constant { value } => Some(value.0.as_bytes().to_vec()),
                Storage::Result => Some(vec![0u8; b.size_bytes()]),
                Storage::Variable { .. } => return None,
                Storage::Arena { .. } => None,
            };
            if let Some(bytes) = bytes {
                let mut words = vec![0u64; bytes.len().div_ceil(8) + 1];
                // SAFETY: the words hold at least `bytes.len()` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        words.as_mut_ptr() as *mut u8,
                        bytes.len(),
                    )
                };
                own.insert(i, words);
            }
        }
        let mut ptr = |b: BufferId| -> *mut u8 {
            match &program.buffer(b).storage {
                Storage::Arena { offset } => unsafe {
                    (arena.as_mut_ptr() as *mut u8).add(*offset)
                },
                _ => own.get_mut(&b.0).expect("own memory").as_mut_ptr() as *mut u8,
            }
        };
        for (k, s) in &calls {
            let name = CString::new(format!("call_{k}")).ok()?;
            // SAFETY: the symbol was defined above with this signature.
            let f: extern "C" fn(*mut *mut u8, i64) = unsafe {
                let sym = libc::dlsym(handle, name.as_ptr());
                assert!(!sym.is_null());
                std::mem::transmute(sym)
            };
            let mut params: Vec<*mut u8> = s.params.iter().map(|&b| ptr(b)).collect();
            f(params.as_mut_ptr(), s.count as i64);
        }
        let outs = program
            .outputs
            .iter()
            .map(|&b| {
                let buf = program.buffer(b);
                let p = ptr(b);
                // SAFETY: the buffer holds `size_bytes` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(p, buf.size_bytes()) };
                Array::new(
                    buf.shape.clone(),
                    Data::from_le_bytes(buf.dtype, bytes).expect("bytes"),
                )
                .expect("shape")
            })
            .collect();
        // SAFETY: nothing from the library is used after this.
        unsafe { libc::dlclose(handle) };
        let _ = std::fs::remove_dir_all(&dir);
        Some(outs)
    }
}

#[test]
fn emitted_kernels_compute_what_the_reference_does() {
    if std::process::Command::new("c++")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("no C++ compiler: skipping the host run of the emitted CUDA C");
        return;
    }
    let mut ran = 0;
    for (name, graph) in op_graphs() {
        let bindings: Bindings = Default::default();
        let program = compile(
            &graph,
            graph.outputs(),
            &bindings,
            &CompileOptions::default(),
        )
        .unwrap()
        .program;
        let feeds: std::collections::HashMap<String, Array> = ["x", "y"]
            .iter()
            .enumerate()
            .map(|(s, n)| {
                let node = graph.node(graph.find(n).unwrap());
                // op_graphs' placeholders are all [4, 33].
                let shape = vec![4usize, 33];
                let count: usize = shape.iter().product();
                let v: Vec<f64> = (0..count)
                    .map(|i| ((i * 37 + s * 11) % 23) as f64 / 7.0 - 1.5)
                    .collect();
                let a = match node.ty.dtype {
                    DType::F32 => {
                        Array::from_vec(shape, v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                    }
                    _ => Array::from_vec(shape, v),
                };
                (n.to_string(), a.unwrap())
            })
            .collect();
        let Some(got) = host::run(&program, &feeds) else {
            panic!("{name}: every kernel of this graph should be emitted");
        };
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let fetch: Vec<String> = graph
            .outputs()
            .iter()
            .map(|&o| graph.node(o).name.clone())
            .collect();
        let fetch: Vec<&str> = fetch.iter().map(|s| s.as_str()).collect();
        let want = Session::new(&graph, Device::Reference)
            .unwrap()
            .run(&refs, &fetch)
            .unwrap();
        for ((w, g), f) in want.iter().zip(&got).zip(&fetch) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}, {f}: {e}"));
        }
        ran += 1;
    }
    for (name, graph) in kiln_tests::example_models() {
        let bindings: Bindings = [("batch".to_string(), 3usize)].into_iter().collect();
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = compile(&graph, graph.outputs(), &bindings, &opts)
            .unwrap()
            .program;
        let feeds_v = kiln_tests::feeds_for(&graph, 3, 5);
        let feeds: std::collections::HashMap<String, Array> = feeds_v.iter().cloned().collect();
        let Some(got) = host::run(&program, &feeds) else {
            eprintln!("{name}: has primitive ops (conv, pooling, ...), not run on the host");
            continue;
        };
        let refs: Vec<(&str, &Array)> = feeds_v.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let want = Session::new(&graph, Device::Reference)
            .unwrap()
            .run_outputs(&refs)
            .unwrap();
        for ((f, w), g) in want.iter().zip(&got) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}, {f}: {e}"));
        }
        ran += 1;
    }
    eprintln!("ran the emitted kernels of {ran} programs on the host");
}

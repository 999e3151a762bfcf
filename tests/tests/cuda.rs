//! The CUDA backend as far as a machine without a GPU can check it: a CUDA
//! session says exactly what is missing, and the CUDA C of every
//! elementwise and reduction kernel of the example models (and of graphs
//! using every elementwise op and reduction) compiles with NVRTC, which
//! needs no GPU, only libnvrtc (found by the loader, in
//! `/usr/local/cuda/lib64`, or in `KILN_NVRTC_DIR`; where none is, the
//! tests install the pip package into `target/nvrtc-venv` themselves, see
//! `kiln_tests::require_nvrtc`). The generated CUDA C also runs as host C++
//! against the reference (needs `c++`). The tests that need a GPU are
//! ignored unless asked for, as `scripts/gpu-check.sh` does.

use kiln::graph::{Bindings, Graph, ReduceOp, Tensor};
use kiln::prelude::*;
use kiln_codegen::cuda;
use kiln_optimizer::{compile, CompileOptions};

#[test]
fn a_cuda_session_says_what_is_missing() {
    kiln_tests::require_nvrtc();
    let graph = kiln_tests::mlp(&[4, 3]);
    // Where a GPU is present cuda:0 opens (gpu_runs_match_the_reference
    // runs on it); a device index beyond any machine's is refused anyway.
    if cuda::CudaDevice::open(0).is_err() {
        let err = match Session::new(&graph, Device::Cuda(0)) {
            Ok(_) => panic!("no GPU here, yet a CUDA session opened"),
            Err(e) => e.to_string(),
        };
        eprintln!("no GPU here: {err}");
        assert!(err.contains("cuda:0"), "{err}");
        if !cuda::driver_available() {
            assert!(err.contains("no CUDA driver"), "{err}");
        }
    }
    let err = Session::new(&graph, Device::Cuda(99))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cuda:99"), "{err}");
}

/// The differential suite on a GPU (where one is lent): every case of
/// [`device_cases`] on `Device::Cuda(0)` against the reference, twice (the
/// second run replays the recorded CUDA graph), then an index out of range.
/// Every failing case is listed, not just the first.
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-check.sh"]
fn gpu_runs_match_the_reference() {
    kiln_tests::require_gpu();
    let cases = device_cases();
    let mut failures = Vec::new();
    for (name, graph, _, feeds) in &cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
            let want = Session::new(graph, Device::Reference)
                .and_then(|s| s.run_outputs(&refs))
                .map_err(|e| format!("reference: {e}"))?;
            let mut s = Session::new(graph, Device::Cuda(0)).map_err(|e| e.to_string())?;
            for run in 0..2 {
                let got = s
                    .run_outputs(&refs)
                    .map_err(|e| format!("run {run}: {e}"))?;
                for ((f, w), (_, g)) in want.iter().zip(&got) {
                    kiln_tests::compare(w, g).map_err(|e| format!("{f}, run {run}: {e}"))?;
                }
            }
            // Feeds and results in device memory, twice (recorded, then
            // replayed), then a host run again.
            let dev: Vec<(String, kiln::DeviceTensor)> = feeds
                .iter()
                .map(|(n, a)| Ok((n.clone(), s.to_device(a)?)))
                .collect::<Result<_, kiln::Error>>()
                .map_err(|e| e.to_string())?;
            let drefs: Vec<(&str, &kiln::DeviceTensor)> =
                dev.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
            for run in 0..2 {
                let got = s
                    .run_on_device(&drefs, &names)
                    .map_err(|e| format!("device run {run}: {e}"))?;
                for ((f, w), g) in want.iter().zip(got) {
                    let g = g.to_host().map_err(|e| e.to_string())?;
                    kiln_tests::compare(w, &g)
                        .map_err(|e| format!("{f}, device run {run}: {e}"))?;
                }
            }
            let got = s
                .run_outputs(&refs)
                .map_err(|e| format!("host run after: {e}"))?;
            for ((f, w), (_, g)) in want.iter().zip(&got) {
                kiln_tests::compare(w, g).map_err(|e| format!("{f}, host run after: {e}"))?;
            }
            Ok(())
        }));
        match r {
            Ok(Ok(())) => eprintln!("ok   {name}"),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    for axis in [0usize, 1] {
        let (graph, xa, bad) = gather_graph(axis);
        let s = Session::new(&graph, Device::Cuda(0)).unwrap();
        match s.run_outputs(&[("x", &xa), ("i", &bad)]) {
            Err(e) if e.to_string().contains("out of range") => {}
            other => failures.push(format!(
                "gather axis {axis} out of range: {:?}",
                other.map(|_| "no error")
            )),
        }
    }
    eprintln!(
        "{} of {} cases on {} agree with the reference",
        cases.len() + 2 - failures.len(),
        cases.len() + 2,
        cuda::CudaDevice::open(0)
            .and_then(|d| d.name())
            .unwrap_or_default()
    );
    assert!(
        failures.is_empty(),
        "failing on the GPU:\n{}",
        failures.join("\n")
    );
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
        let idx = g
            .constant(Array::from_vec(vec![3], vec![0i64, -1, 5]).unwrap())
            .unwrap();
        let gathered = m.gather(idx, 1).unwrap();
        gathered.named("gathered").unwrap();
        x.scatter_add(idx, gathered, 1)
            .unwrap()
            .named("scattered")
            .unwrap();
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
                "gathered",
                "scattered",
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
    let cache = std::env::temp_dir().join(format!("kiln-ptx-cache-{}", std::process::id()));
    // Only this test compiles through the cache.
    std::env::set_var("KILN_CACHE_DIR", &cache);
    kiln_tests::require_nvrtc();
    kiln_codegen::cuda::set_paths(kiln::env::cuda_paths());
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
        // Each kernel alone (a failure names it), then the program's
        // whole unit through the cache.
        for s in &sources {
            cuda::compile(&s.source, "sm_90")
                .unwrap_or_else(|e| panic!("{name}, {}: {e}\n{}", s.name, s.source));
            compiled += 1;
        }
        let unit = cuda::source::unit(&sources);
        let ptx = cuda::compile_cached(&unit, "sm_90").unwrap();
        for s in &sources {
            assert!(
                ptx.contains(&s.name),
                "{name}: {} missing from the unit's PTX",
                s.name
            );
        }
        assert_eq!(cuda::compile_cached(&unit, "sm_90").unwrap(), ptx);
        let cached = std::fs::read_dir(cache.join("ptx"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|p| p == ptx));
        assert!(cached, "{name}: the unit's PTX is not in the disk cache");
    }
    eprintln!("compiled {compiled} kernels with NVRTC for sm_90");
    let _ = std::fs::remove_dir_all(&cache);
}

/// A host stand-in for a GPU: the generated CUDA C compiled as C++ (a few
/// definitions stand in for CUDA's built-ins; one thread covers each
/// grid-stride loop) and run on the CPU, with host memory as device
/// memory. With it `DeviceExecutable` (buffers, bindings, host steps,
/// feeds and fetches) and the emitted code are checked against the
/// reference on machines without a GPU.
mod host {
    use std::ffi::CString;

    use kiln::graph::DType;
    use kiln_codegen::cuda::exec::{GemmCall, Gpu};
    use kiln_codegen::cuda::source::KernelSource;
    use kiln_codegen::Result;

    pub const SHIMS: &str = r#"
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
struct KDim { unsigned x; };
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
#ifndef KILN_BLOCKS
// One thread, one block of one thread: a warp of one lane, whose shuffles
// read its own value.
static KDim blockIdx = {0}, blockDim = {1}, threadIdx = {0}, gridDim = {1};
template <typename T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
static inline int atomicAdd(int* p, int v) { unsigned o = (unsigned)*p; *p = (int)(o + (unsigned)v); return (int)o; }
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int) { return v; }
template <typename T> static inline T __shfl_sync(unsigned, T v, int) { return v; }
static inline void __syncwarp(unsigned = 0xffffffffu) {}
#else
// KILN_BLOCKS blocks of one warp each, a thread per lane (see `krun`).
// Warp-wide calls meet at a barrier; lanes that do not all reach it (a
// divergent shuffle, UB on a GPU) abort after a few seconds.
#include <stdio.h>
#include <stdlib.h>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
static thread_local KDim blockIdx = {0}, threadIdx = {0};
static KDim blockDim = {32}, gridDim = {KILN_BLOCKS};
struct KWarp { std::mutex m; std::condition_variable cv; unsigned arrived = 0, gen = 0; unsigned long long slot[32]; };
static KWarp kwarps[KILN_BLOCKS];
static std::mutex katomic;
static inline void kwarp_meet() {
    KWarp& w = kwarps[blockIdx.x];
    std::unique_lock<std::mutex> l(w.m);
    const unsigned g = w.gen;
    if (++w.arrived == 32) { w.arrived = 0; ++w.gen; w.cv.notify_all(); return; }
    if (!w.cv.wait_for(l, std::chrono::seconds(20), [&] { return w.gen != g; })) {
        fprintf(stderr, "block %u lane %u: lanes of a warp diverged at a warp-wide call\n", blockIdx.x, threadIdx.x);
        abort();
    }
}
template <typename T> static inline T kshfl(unsigned mask, T v, int src) {
    if (mask != 0xffffffffu) { fprintf(stderr, "partial shuffle mask %x\n", mask); abort(); }
    static_assert(sizeof(T) <= 8, "a shuffle of at most 8 bytes");
    KWarp& w = kwarps[blockIdx.x];
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    w.slot[threadIdx.x] = b;
    kwarp_meet();
    b = w.slot[src & 31];
    kwarp_meet();
    memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T> static inline T __shfl_xor_sync(unsigned m, T v, int o) { return kshfl(m, v, (int)threadIdx.x ^ o); }
template <typename T> static inline T __shfl_sync(unsigned m, T v, int s) { return kshfl(m, v, s); }
static inline void __syncwarp(unsigned = 0xffffffffu) { kwarp_meet(); }
template <typename T> static inline T atomicAdd(T* p, T v) { std::lock_guard<std::mutex> g(katomic); T old = *p; *p = old + v; return old; }
static inline int atomicAdd(int* p, int v) { std::lock_guard<std::mutex> g(katomic); unsigned o = (unsigned)*p; *p = (int)(o + (unsigned)v); return (int)o; }
// Runs `f` (a kernel launch) on every thread of the grid.
template <typename F> static void krun(F f) {
    std::vector<std::thread> ts;
    for (unsigned b = 0; b < KILN_BLOCKS; ++b)
        for (unsigned l = 0; l < 32; ++l)
            ts.emplace_back([=] { blockIdx.x = b; threadIdx.x = l; f(); });
    for (auto& t : ts) t.join();
}
#endif
"#;

    pub type Call = extern "C" fn(*const u64, i64);

    /// A launch or a matrix product.
    enum Work {
        Launch(usize, Vec<u64>, usize),
        Gemm(GemmCall),
    }

    /// Launches made while recording are kept, not run, and `replay` runs
    /// them: the executable's graph path, as on a GPU. Matrix products go
    /// through a plain column-major GEMM in cuBLAS's terms (checking the
    /// layouts `gemm_of` derives) unless made with [`HostGpu::without_gemm`].
    pub struct HostGpu {
        calls: Vec<Call>,
        handle: Option<usize>,
        recording: std::cell::RefCell<Option<Vec<Work>>>,
        recorded: Vec<Work>,
        gemm: bool,
        /// Recordings still to fail (as one spoiled from outside would).
        pub spoil: std::cell::Cell<usize>,
        /// Recordings made.
        pub records: std::cell::Cell<usize>,
    }

    impl Default for HostGpu {
        fn default() -> HostGpu {
            HostGpu {
                calls: Vec::new(),
                handle: None,
                recording: Default::default(),
                recorded: Vec::new(),
                gemm: true,
                spoil: Default::default(),
                records: Default::default(),
            }
        }
    }

    impl HostGpu {
        /// Matrix products as generated kernels.
        pub fn without_gemm() -> HostGpu {
            let mut g = HostGpu::default();
            g.gemm = false;
            g
        }

        fn run(&self, w: &Work) {
            match w {
                Work::Launch(k, params, count) => (self.calls[*k])(params.as_ptr(), *count as i64),
                Work::Gemm(g) => match g.dtype {
                    DType::F32 => host_gemm::<f32>(g),
                    _ => host_gemm::<f64>(g),
                },
            }
        }
    }

    /// `C = op(A) op(B)` per batch, column-major, summed in f64.
    fn host_gemm<T: Copy + Into<f64> + FromF64>(g: &GemmCall) {
        let (a, b, c) = (g.a as *const T, g.b as *const T, g.c as *mut T);
        for q in 0..g.batch as isize {
            for j in 0..g.n {
                for i in 0..g.m {
                    let mut acc = 0f64;
                    for l in 0..g.k {
                        let ai = if g.trans_a {
                            l + i * g.lda
                        } else {
                            i + l * g.lda
                        };
                        let bi = if g.trans_b {
                            j + l * g.ldb
                        } else {
                            l + j * g.ldb
                        };
                        // SAFETY: the call addresses the executable's buffers.
                        unsafe {
                            let x: f64 = (*a.offset(q * g.stride_a as isize + ai as isize)).into();
                            let y: f64 = (*b.offset(q * g.stride_b as isize + bi as isize)).into();
                            acc += x * y;
                        }
                    }
                    // SAFETY: as above.
                    unsafe {
                        *c.offset(q * g.stride_c as isize + (i + j * g.ldc) as isize) =
                            T::from_f64(acc)
                    };
                }
            }
        }
    }

    trait FromF64 {
        fn from_f64(v: f64) -> Self;
    }
    impl FromF64 for f32 {
        fn from_f64(v: f64) -> f32 {
            v as f32
        }
    }
    impl FromF64 for f64 {
        fn from_f64(v: f64) -> f64 {
            v
        }
    }

    /// Compiles `kernels` (CUDA C) after `prelude` as one C++ shared
    /// library and loads it: kernel `i` is called through `call_i(params,
    /// count)`, whose body `wrap` makes from the plain call. Returns the
    /// library's handle (kept open) and the calls.
    pub fn build_library(
        prelude: &str,
        kernels: &[KernelSource],
        tag: &str,
        flags: &[&str],
        wrap: &dyn Fn(&str) -> String,
    ) -> (usize, Vec<Call>) {
        let mut unit = String::from(prelude);
        for (id, s) in kernels.iter().enumerate() {
            unit.push_str(&format!("namespace ns{id} {{\n{}\n}}\n", s.source));
            let n = s.params.len() + usize::from(s.error_word);
            let args: Vec<String> = (0..n).map(|i| format!("(void*)p[{i}]")).collect();
            let call = format!(
                "ns{id}::{}({}{}count);",
                s.name,
                args.join(", "),
                if args.is_empty() { "" } else { ", " }
            );
            unit.push_str(&format!(
                "extern \"C\" void call_{id}(const unsigned long long* p, long long count) {{ {} }}\n",
                wrap(&call)
            ));
        }
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-cuda-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, lib) = (dir.join("unit.cpp"), dir.join("unit.so"));
        std::fs::write(&src, &unit).unwrap();
        let status = std::process::Command::new("c++")
            .args(flags)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "C++ compile of the emitted kernels failed:\n{unit}"
        );
        let path = CString::new(lib.to_str().unwrap()).unwrap();
        // SAFETY: loads the library just built.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen of the emitted kernels failed");
        let _ = std::fs::remove_dir_all(&dir);
        let calls = (0..kernels.len())
            .map(|id| {
                let name = CString::new(format!("call_{id}")).unwrap();
                // SAFETY: the symbol was defined above with this signature.
                unsafe {
                    let sym = libc::dlsym(handle, name.as_ptr());
                    assert!(!sym.is_null());
                    std::mem::transmute::<*mut libc::c_void, Call>(sym)
                }
            })
            .collect();
        (handle as usize, calls)
    }

    impl Drop for HostGpu {
        fn drop(&mut self) {
            if let Some(h) = self.handle {
                // SAFETY: no function of the library is called after this.
                unsafe { libc::dlclose(h as *mut libc::c_void) };
            }
        }
    }

    impl Gpu for HostGpu {
        type Mem = Vec<u64>;

        fn alloc(&self, bytes: usize) -> Result<Vec<u64>> {
            Ok(vec![0u64; bytes.div_ceil(8) + 1])
        }

        fn address(&self, m: &Vec<u64>) -> u64 {
            m.as_ptr() as u64
        }

        fn upload(&self, dst: u64, bytes: &[u8]) -> Result<()> {
            // SAFETY: callers stay inside an allocation.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
            Ok(())
        }

        fn download(&self, src: u64, out: &mut [u8]) -> Result<()> {
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), out.len()) };
            Ok(())
        }

        fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
            // SAFETY: as above.
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
            Ok(())
        }

        fn has_gemm(&self) -> bool {
            self.gemm
        }

        fn gemm(&self, call: &GemmCall) -> Result<()> {
            match self.recording.borrow_mut().as_mut() {
                Some(r) => r.push(Work::Gemm(*call)),
                None => self.run(&Work::Gemm(*call)),
            }
            Ok(())
        }

        fn load(&mut self, kernels: &[KernelSource]) -> Result<()> {
            let (handle, calls) =
                build_library(SHIMS, kernels, "host", &["-O1"], &|call| call.to_string());
            self.handle = Some(handle);
            self.calls.extend(calls);
            Ok(())
        }

        fn launch(&self, k: usize, params: &[u64], count: usize) -> Result<()> {
            let w = Work::Launch(k, params.to_vec(), count);
            match self.recording.borrow_mut().as_mut() {
                Some(r) => r.push(w),
                None => self.run(&w),
            }
            Ok(())
        }

        fn synchronize(&self) -> Result<()> {
            Ok(())
        }

        fn record(&mut self, launches: &dyn Fn(&Self) -> Result<()>) -> Result<bool> {
            if self.spoil.get() > 0 {
                self.spoil.set(self.spoil.get() - 1);
                return Err(kiln_codegen::Error::Cuda("capture invalidated".into()));
            }
            self.records.set(self.records.get() + 1);
            *self.recording.borrow_mut() = Some(Vec::new());
            let r = launches(self);
            self.recorded = self.recording.borrow_mut().take().unwrap_or_default();
            r.map(|()| true)
        }

        fn replay(&self) -> Result<()> {
            for w in &self.recorded {
                self.run(w);
            }
            Ok(())
        }
    }
}

/// Runs `graph` through `DeviceExecutable` on the host stand-in and
/// against the reference, with `feeds`.
fn agree_on_host(
    name: &str,
    graph: &Graph,
    bindings: &Bindings,
    feeds: &[(String, Array)],
    gpu: host::HostGpu,
) {
    use cuda::exec::DeviceRef;
    use std::collections::HashMap;
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(graph, graph.outputs(), bindings, &opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .program;
    let mut exe =
        cuda::exec::DeviceExecutable::new(gpu, &program).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs: HashMap<&str, &Array> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let reference = Session::new(graph, Device::Reference).unwrap();
    let want = reference.run_outputs(&refs).unwrap();
    let mut names: Vec<String> = graph
        .variables()
        .iter()
        .map(|&v| graph.node(v).name.clone())
        .collect();
    names.sort();
    let initial: Vec<Array> = names
        .iter()
        .map(|n| {
            Session::new(graph, Device::Reference)
                .unwrap()
                .variable(n)
                .unwrap()
                .clone()
        })
        .collect();
    let want_vars: Vec<Array> = names
        .iter()
        .map(|n| reference.variable(n).unwrap().clone())
        .collect();
    // "Device" memory: host blocks, addressed by pointer.
    let block = |bytes: &[u8]| -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8) + 1];
        // SAFETY: `v` holds at least `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
        };
        v
    };
    let to_array = |v: &[u64], dtype, shape: &[usize]| {
        let n: usize = shape.iter().product::<usize>() * kiln::graph::DType::size_bytes(dtype);
        // SAFETY: the block holds at least `n` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, n) };
        Array::new(
            shape.to_vec(),
            kiln::graph::Data::from_le_bytes(dtype, bytes).unwrap(),
        )
        .unwrap()
    };
    // The variables' state, reset to the initial values before each run and
    // compared with the reference's after it.
    let mut var_blocks: Vec<Vec<u64>> = initial.iter().map(|a| block(a.as_bytes())).collect();
    let var_refs: HashMap<&str, DeviceRef> = names
        .iter()
        .zip(&var_blocks)
        .zip(&initial)
        .map(|((n, v), a)| {
            (
                n.as_str(),
                DeviceRef {
                    address: v.as_ptr() as u64,
                    dtype: a.dtype(),
                    shape: a.shape().to_vec(),
                },
            )
        })
        .collect();
    let reset = |blocks: &mut Vec<Vec<u64>>| {
        for (v, a) in blocks.iter_mut().zip(&initial) {
            // SAFETY: each block holds its variable's bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    a.as_bytes().as_ptr(),
                    v.as_mut_ptr() as *mut u8,
                    a.size_bytes(),
                )
            };
        }
    };
    let check_vars = |blocks: &Vec<Vec<u64>>, when: &str| {
        for ((n, v), w) in names.iter().zip(blocks).zip(&want_vars) {
            let g = to_array(v, w.dtype(), w.shape());
            kiln_tests::compare(w, &g)
                .unwrap_or_else(|e| panic!("{name}, variable {n}, {when}: {e}"));
        }
    };
    // Twice: the first run records the launches (where nothing runs on the
    // host), the second replays them.
    for run in 0..2 {
        reset(&mut var_blocks);
        // SAFETY: every variable's block is live and of its size.
        let got = unsafe { exe.run(&inputs, &var_refs) }.unwrap_or_else(|e| panic!("{name}: {e}"));
        for ((f, w), g) in want.iter().zip(&got) {
            kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}, {f}, run {run}: {e}"));
        }
        check_vars(&var_blocks, &format!("run {run}"));
    }
    // Feeds and results in device memory, bound where they lie: twice
    // with the same addresses (recorded, then replayed), once with new
    // result addresses (recorded again), then a host run (unbound).
    let fed: Vec<(String, Vec<u64>, &Array)> = feeds
        .iter()
        .map(|(n, a)| (n.clone(), block(a.as_bytes()), a))
        .collect();
    let dinputs: HashMap<&str, DeviceRef> = fed
        .iter()
        .map(|(n, v, a)| {
            (
                n.as_str(),
                DeviceRef {
                    address: v.as_ptr() as u64,
                    dtype: a.dtype(),
                    shape: a.shape().to_vec(),
                },
            )
        })
        .collect();
    for round in 0..3 {
        let outs: Vec<Vec<u64>> = program
            .outputs
            .iter()
            .map(|&o| block(&vec![0u8; program.buffer(o).size_bytes()]))
            .collect();
        let orefs: Vec<DeviceRef> = program
            .outputs
            .iter()
            .zip(&outs)
            .map(|(&o, v)| DeviceRef {
                address: v.as_ptr() as u64,
                dtype: program.buffer(o).dtype,
                shape: program.buffer(o).shape.clone(),
            })
            .collect();
        for run in 0..if round == 0 { 2 } else { 1 } {
            reset(&mut var_blocks);
            // SAFETY: every address is a live block of the right size.
            unsafe { exe.run_device(&dinputs, &orefs, &var_refs) }
                .unwrap_or_else(|e| panic!("{name}, device run: {e}"));
            for (((f, w), &o), v) in want.iter().zip(&program.outputs).zip(&outs) {
                let b = program.buffer(o);
                let g = to_array(v, b.dtype, &b.shape);
                kiln_tests::compare(w, &g)
                    .unwrap_or_else(|e| panic!("{name}, {f}, device round {round} run {run}: {e}"));
            }
            check_vars(&var_blocks, &format!("device round {round} run {run}"));
        }
    }
    reset(&mut var_blocks);
    // SAFETY: as above.
    let got = unsafe { exe.run(&inputs_host(feeds), &var_refs) }.unwrap();
    for ((f, w), g) in want.iter().zip(&got) {
        kiln_tests::compare(w, g)
            .unwrap_or_else(|e| panic!("{name}, {f}, host run after device runs: {e}"));
    }
    check_vars(&var_blocks, "host run after device runs");
}

fn inputs_host(feeds: &[(String, Array)]) -> std::collections::HashMap<&str, &Array> {
    feeds.iter().map(|(n, a)| (n.as_str(), a)).collect()
}

/// One differential case: a name, a graph, its bindings and feeds.
type Case = (String, Graph, Bindings, Vec<(String, Array)>);

/// The programs both the host stand-in and a GPU run against the
/// reference: every elementwise op and reduction, convolutions and pooling
/// over their options, gather, scatter-add, and the example models.
fn device_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for (name, graph) in op_graphs() {
        let feeds: Vec<(String, Array)> = ["x", "y"]
            .iter()
            .enumerate()
            .map(|(s, n)| {
                let dtype = graph.node(graph.find(n).unwrap()).ty.dtype;
                // op_graphs' placeholders are all [4, 33].
                let v: Vec<f64> = (0..4 * 33)
                    .map(|i| ((i * 37 + s * 11) % 23) as f64 / 7.0 - 1.5)
                    .collect();
                let a = match dtype {
                    DType::F32 => Array::from_vec(
                        vec![4, 33],
                        v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    ),
                    _ => Array::from_vec(vec![4, 33], v),
                };
                (n.to_string(), a.unwrap())
            })
            .collect();
        cases.push((name, graph, Bindings::default(), feeds));
    }
    cases.extend(long_row_cases());
    cases.extend(narrow_int_cases());
    // Convolutions and pooling as generated kernels, over their options.
    for dtype in [DType::F32, DType::F64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![2, 4, 9, 11]).unwrap();
        let w1 = g.placeholder("w1", dtype, shape![6, 2, 3, 2]).unwrap();
        let conv = x
            .conv2d(
                w1,
                Conv2dOptions {
                    stride: [2, 1],
                    padding: [1, 0, 2, 1],
                    dilation: [1, 2],
                    groups: 2,
                },
            )
            .unwrap();
        conv.named("conv").unwrap();
        let win = |k: usize, s: usize, p: [usize; 4], ceil: bool| Window2d {
            kernel: [k, k],
            stride: [s, s],
            padding: p,
            dilation: [1, 1],
            ceil_mode: ceil,
        };
        x.max_pool2d(win(3, 2, [1, 1, 1, 1], true))
            .unwrap()
            .named("max")
            .unwrap();
        x.avg_pool2d(win(2, 2, [1, 0, 1, 1], false), true)
            .unwrap()
            .named("avg_pad")
            .unwrap();
        x.avg_pool2d(win(3, 1, [1, 1, 1, 1], true), false)
            .unwrap()
            .named("avg")
            .unwrap();
        let mut graph = g.into_graph();
        let outs = ["conv", "max", "avg_pad", "avg"]
            .iter()
            .map(|n| graph.find(n).unwrap())
            .collect();
        graph.set_outputs(outs).unwrap();
        let vals = |n: usize, seed: usize| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if i % 29 == 3 {
                        f64::NAN
                    } else {
                        ((i * 31 + seed) % 17) as f64 / 5.0 - 1.6
                    }
                })
                .collect()
        };
        let arr = |shape: Vec<usize>, v: Vec<f64>| {
            match dtype {
                DType::F32 => {
                    Array::from_vec(shape, v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                }
                _ => Array::from_vec(shape, v),
            }
            .unwrap()
        };
        let feeds = vec![
            (
                "x".to_string(),
                arr(vec![2, 4, 9, 11], vals(2 * 4 * 9 * 11, 1)),
            ),
            (
                "w1".to_string(),
                arr(vec![6, 2, 3, 2], vals(6 * 2 * 3 * 2, 2)),
            ),
        ];
        cases.push((
            format!("conv and pooling {dtype}"),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    // Convolutions of one group (im2col + GEMM where cuBLAS is), with
    // stride, asymmetric padding and dilation, and a strided 1x1.
    for dtype in [DType::F32, DType::F64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![2, 3, 9, 11]).unwrap();
        let w = g.placeholder("w", dtype, shape![5, 3, 3, 2]).unwrap();
        let p = g.placeholder("p", dtype, shape![4, 3, 1, 1]).unwrap();
        let opts = Conv2dOptions {
            stride: [2, 1],
            padding: [1, 0, 2, 1],
            dilation: [1, 2],
            groups: 1,
        };
        x.conv2d(w, opts)
            .unwrap()
            .relu()
            .unwrap()
            .named("conv")
            .unwrap();
        x.conv2d(p, Conv2dOptions::default().stride(2))
            .unwrap()
            .named("proj")
            .unwrap();
        let mut graph = g.into_graph();
        let outs = ["conv", "proj"]
            .iter()
            .map(|n| graph.find(n).unwrap())
            .collect();
        graph.set_outputs(outs).unwrap();
        let feeds = kiln_tests::feeds_for(&graph, 1, 11);
        cases.push((
            format!("conv one group {dtype}"),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    // A large elementwise kernel (several elements per thread and step),
    // its count no multiple of the step.
    {
        let g = GraphBuilder::new();
        let x = g
            .placeholder("x", DType::F32, shape![(1 << 20) + 3])
            .unwrap();
        x.mul(1.7)
            .unwrap()
            .add(0.3)
            .unwrap()
            .tanh()
            .unwrap()
            .named("y")
            .unwrap();
        let mut graph = g.into_graph();
        let y = graph.find("y").unwrap();
        graph.set_outputs(vec![y]).unwrap();
        let feeds = kiln_tests::feeds_for(&graph, 1, 13);
        cases.push((
            "large elementwise".to_string(),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    // Half types (stored in 16 bits, computed in f32): elementwise chains,
    // casts between every float type and integers, a reduction, softmax,
    // a matrix product and a convolution.
    {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", DType::F16, shape![4, 40]).unwrap();
        let y = g.placeholder("y", DType::BF16, shape![4, 40]).unwrap();
        let w = g.placeholder("w", DType::F16, shape![40, 5]).unwrap();
        let img = g
            .placeholder("img", DType::BF16, shape![1, 2, 6, 6])
            .unwrap();
        let k = g.placeholder("k", DType::BF16, shape![3, 2, 3, 3]).unwrap();
        let e = x.mul(1.5).unwrap().add(0.25).unwrap().tanh().unwrap();
        e.named("chain").unwrap();
        y.cast(DType::F16)
            .unwrap()
            .add(x)
            .unwrap()
            .named("mixed")
            .unwrap();
        x.cast(DType::I32).unwrap().named("ints").unwrap();
        x.mul(1000.0)
            .unwrap()
            .cast(DType::I64)
            .unwrap()
            .cast(DType::BF16)
            .unwrap()
            .cast(DType::F64)
            .unwrap()
            .named("back")
            .unwrap();
        y.sum(&[1], false).unwrap().named("rowsum").unwrap();
        x.softmax(-1).unwrap().named("softmax").unwrap();
        x.matmul(w).unwrap().named("mm").unwrap();
        img.conv2d(k, Conv2dOptions::default().padding(1))
            .unwrap()
            .relu()
            .unwrap()
            .named("conv")
            .unwrap();
        x.gt(0.5).unwrap().named("gt").unwrap();
        x.mul(300.0).unwrap().named("overflow").unwrap();
        let mut graph = g.into_graph();
        let names = [
            "chain", "mixed", "ints", "back", "rowsum", "softmax", "mm", "conv", "gt", "overflow",
        ];
        let outs = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(outs).unwrap();
        let feeds = kiln_tests::feeds_for(&graph, 1, 19);
        cases.push(("half types".to_string(), graph, Bindings::default(), feeds));
    }
    // Gather along each axis, with negative indices.
    for axis in [0usize, 1] {
        let (graph, x, _) = gather_graph(axis);
        let ok = Array::from_vec(vec![2, 2], vec![0i64, -1, 3, 1]).unwrap();
        let feeds = vec![("x".to_string(), x), ("i".to_string(), ok)];
        cases.push((
            format!("gather axis {axis}"),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    // Scatter-add with repeated and negative indices, f32 and i64.
    for dtype in [DType::F32, DType::I64] {
        let g = GraphBuilder::new();
        let d = g.placeholder("d", dtype, shape![5, 3]).unwrap();
        let i = g.placeholder("i", DType::I32, shape![4]).unwrap();
        let u = g.placeholder("u", dtype, shape![4, 3]).unwrap();
        d.scatter_add(i, u, 0).unwrap().named("s").unwrap();
        let mut graph = g.into_graph();
        let out = graph.find("s").unwrap();
        graph.set_outputs(vec![out]).unwrap();
        let arr = |shape: Vec<usize>, v: Vec<f64>| {
            match dtype {
                DType::F32 => {
                    Array::from_vec(shape, v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                }
                _ => Array::from_vec(shape, v.iter().map(|&x| x as i64).collect::<Vec<_>>()),
            }
            .unwrap()
        };
        let feeds = vec![
            (
                "d".to_string(),
                arr(vec![5, 3], (0..15).map(|v| v as f64 * 1.5).collect()),
            ),
            (
                "i".to_string(),
                Array::from_vec(vec![4], vec![1i32, -1, 1, 0]).unwrap(),
            ),
            (
                "u".to_string(),
                arr(vec![4, 3], (0..12).map(|v| 10.0 + v as f64).collect()),
            ),
        ];
        cases.push((
            format!("scatter_add {dtype}"),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    // The example models: matrix products, epilogues, convolutions.
    for (name, graph) in kiln_tests::example_models() {
        for batch in [1usize, 3] {
            let bindings: Bindings = [("batch".to_string(), batch)].into_iter().collect();
            let feeds = kiln_tests::feeds_for(&graph, batch, 5);
            cases.push((
                format!("{name} batch {batch}"),
                graph.clone(),
                bindings,
                feeds,
            ));
        }
    }
    cases
}

/// `x[5, 7]` gathered by `i[2, 2]` along `axis`, times 2; with `x`'s
/// values and indices out of range.
fn gather_graph(axis: usize) -> (Graph, Array, Array) {
    let g = GraphBuilder::new();
    let x = g.placeholder("x", DType::F32, shape![5, 7]).unwrap();
    let i = g.placeholder("i", DType::I64, shape![2, 2]).unwrap();
    x.gather(i, axis as i64)
        .unwrap()
        .mul(2.0)
        .unwrap()
        .named("y")
        .unwrap();
    let mut graph = g.into_graph();
    let y = graph.find("y").unwrap();
    graph.set_outputs(vec![y]).unwrap();
    let xa = Array::from_vec(
        vec![5, 7],
        (0..35).map(|v| v as f32 * 0.5).collect::<Vec<_>>(),
    )
    .unwrap();
    let bad = Array::from_vec(vec![2, 2], vec![0i64, 9, 1, 1]).unwrap();
    (graph, xa, bad)
}

#[test]
fn emitted_kernels_compute_what_the_reference_does() {
    kiln_tests::require_compiler("c++");
    kiln_tests::require_nvrtc();
    let cases = device_cases();
    for (name, graph, bindings, feeds) in &cases {
        agree_on_host(name, graph, bindings, feeds, host::HostGpu::default());
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = compile(graph, graph.outputs(), bindings, &opts)
            .unwrap()
            .program;
        let unit = cuda::source::unit(&cuda::sources(&program).unwrap());
        cuda::compile(&unit, "sm_90").unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Matrix products as generated kernels too (where cuBLAS is missing).
    for (name, graph, bindings, feeds) in &cases {
        if name.contains("batch 3") {
            agree_on_host(name, graph, bindings, feeds, host::HostGpu::without_gemm());
        }
    }
    // An index out of range is an error, not a wild read.
    for axis in [0usize, 1] {
        let (graph, xa, bad) = gather_graph(axis);
        let program = compile(
            &graph,
            graph.outputs(),
            &Bindings::default(),
            &CompileOptions::default(),
        )
        .unwrap()
        .program;
        let mut exe =
            cuda::exec::DeviceExecutable::new(host::HostGpu::default(), &program).unwrap();
        let inputs: std::collections::HashMap<&str, &Array> =
            [("x", &xa), ("i", &bad)].into_iter().collect();
        // SAFETY: the program has no variables.
        let err = unsafe { exe.run(&inputs, &Default::default()) }
            .expect_err("an index out of range is an error")
            .to_string();
        assert!(err.contains("out of range"), "{err}");
    }
    eprintln!(
        "ran {} programs through DeviceExecutable on the host stand-in",
        cases.len()
    );
}

/// Every elementwise op and reduction on each narrow integer dtype (and
/// u32, u64), with values that wrap around, divide by zero and by -1, and
/// casts from floats beyond the type's range (which saturate).
fn narrow_int_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for dtype in [
        DType::I8,
        DType::I16,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
    ] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![4, 40]).unwrap();
        let y = g.placeholder("y", dtype, shape![4, 40]).unwrap();
        let f = g.placeholder("f", DType::F32, shape![4, 40]).unwrap();
        let outs: Vec<(&str, Tensor<'_>)> = vec![
            ("add", x.add(y).unwrap()),
            ("sub", x.sub(y).unwrap()),
            ("mul", x.mul(y).unwrap()),
            ("div", x.div(y).unwrap()),
            ("pow", x.pow(y.minimum(9i32).unwrap()).unwrap()),
            ("max", x.maximum(y).unwrap()),
            ("min", x.minimum(y).unwrap()),
            ("neg", x.neg().unwrap()),
            ("abs", x.abs().unwrap()),
            ("sign", x.sign().unwrap()),
            ("not", x.not().unwrap()),
            ("and", x.and(y).unwrap()),
            ("or", x.or(y).unwrap()),
            ("xor", x.xor(y).unwrap()),
            ("lt", x.lt(y).unwrap().and(x.ge(3i32).unwrap()).unwrap()),
            ("sel", g.select(x.gt(y).unwrap(), x, y).unwrap()),
            ("from_f32", f.mul(97.5).unwrap().cast(dtype).unwrap()),
            ("to_f32", x.cast(DType::F32).unwrap()),
            ("to_f64", x.cast(DType::F64).unwrap()),
            ("to_i64", x.cast(DType::I64).unwrap()),
            (
                "from_i64",
                x.cast(DType::I64)
                    .unwrap()
                    .mul(1000i64)
                    .unwrap()
                    .cast(dtype)
                    .unwrap(),
            ),
            ("sum", x.sum(&[1], false).unwrap()),
            ("prod", x.prod(&[0], false).unwrap()),
            ("rmax", x.max(&[1], true).unwrap()),
            ("rmin", x.min(&[0, 1], false).unwrap()),
            ("argmax", x.argmax(1, false).unwrap()),
            ("argmin", x.argmin(0, false).unwrap()),
        ];
        let names: Vec<&str> = outs.iter().map(|(n, _)| *n).collect();
        for (n, t) in outs {
            t.named(n).unwrap();
        }
        let mut graph = g.into_graph();
        let ids = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(ids).unwrap();
        // Values over the whole range of the type: extremes, zeros, -1.
        let bits = dtype.size_bytes() * 8;
        let pattern = |i: usize, s: usize| -> i64 {
            let k = (i * 37 + s * 11) % 23;
            match k {
                0 => 0,
                1 => -1,
                2 => 1i64 << (bits - 1).min(62),
                3 => (1i64 << (bits - 1).min(62)) - 1,
                _ => (k as i64 - 11) * (i as i64 + 3),
            }
        };
        let feed = |s: usize| {
            let v = Array::from_vec(
                vec![4, 40],
                (0..160).map(|i| pattern(i, s)).collect::<Vec<_>>(),
            )
            .unwrap();
            kiln::graph::ops::elementwise::eval_cast(&v, dtype)
        };
        let fv: Vec<f32> = (0..160)
            .map(|i| match i % 7 {
                0 => f32::NAN,
                1 => 1e30,
                2 => -1e30,
                _ => (i as f32 - 80.0) * 13.7,
            })
            .collect();
        let feeds = vec![
            ("x".to_string(), feed(0)),
            ("y".to_string(), feed(1)),
            ("f".to_string(), Array::from_vec(vec![4, 40], fv).unwrap()),
        ];
        cases.push((format!("ints {dtype}"), graph, Bindings::default(), feeds));
    }
    cases
}

/// Reductions over rows long enough for a warp per kept element (100 and
/// 257 wide, not multiples of 32, and 33 in `op_graphs`): sums, products,
/// max and min, arg reductions with ties and NaNs, softmax and layer norm
/// over the last axis, reductions over leading and middle axes, a whole
/// tensor; integers wrapping.
fn long_row_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![6, 257]).unwrap();
        let z = g.placeholder("z", dtype, shape![3, 100, 5]).unwrap();
        let outs: Vec<(&str, Tensor<'_>)> = vec![
            ("sum", x.sum(&[1], false).unwrap()),
            ("max", x.max(&[1], false).unwrap()),
            ("min", x.min(&[1], true).unwrap()),
            (
                "prod",
                x.mul(0.1)
                    .unwrap()
                    .add(1.0)
                    .unwrap()
                    .prod(&[1], false)
                    .unwrap(),
            ),
            ("mean", x.mean(&[-1], false).unwrap()),
            ("argmax", x.argmax(1, false).unwrap()),
            ("argmin", x.argmin(1, true).unwrap()),
            ("softmax", x.softmax(-1).unwrap()),
            ("log_softmax", x.log_softmax(-1).unwrap()),
            ("layer_norm", g.layer_norm("ln", x, 1e-5).unwrap()),
            ("all", x.sum(&[0, 1], false).unwrap()),
            ("middle_sum", z.sum(&[1], false).unwrap()),
            ("middle_argmin", z.argmin(1, false).unwrap()),
            ("leading_max", z.max(&[0, 1], false).unwrap()),
            ("middle_softmax", z.softmax(1).unwrap()),
        ];
        let names: Vec<&str> = outs.iter().map(|(n, _)| *n).collect();
        for (n, t) in outs {
            t.named(n).unwrap();
        }
        let mut graph = g.into_graph();
        let ids = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(ids).unwrap();
        // Few distinct values (ties everywhere); row 0 constant; NaNs in
        // rows 2 (two, the later one first in lane order) and 3 (last
        // element only); infinities in row 4.
        let xv: Vec<f64> = (0..6 * 257)
            .map(|i| {
                let (r, c) = (i / 257, i % 257);
                match (r, c) {
                    (0, _) => 0.25,
                    (2, 150) | (2, 90) | (3, 256) => f64::NAN,
                    (4, 7) => f64::INFINITY,
                    (4, 200) => f64::NEG_INFINITY,
                    _ => ((i * 37 + r * 11) % 23) as f64 / 7.0 - 1.5,
                }
            })
            .collect();
        let zv: Vec<f64> = (0..3 * 100 * 5)
            .map(|i| ((i * 13) % 29) as f64 / 9.0 - 1.2)
            .collect();
        let arr = |shape: Vec<usize>, v: &[f64]| {
            match dtype {
                DType::F32 => {
                    Array::from_vec(shape, v.iter().map(|&x| x as f32).collect::<Vec<_>>())
                }
                _ => Array::from_vec(shape, v.to_vec()),
            }
            .unwrap()
        };
        let feeds = vec![
            ("x".to_string(), arr(vec![6, 257], &xv)),
            ("z".to_string(), arr(vec![3, 100, 5], &zv)),
        ];
        cases.push((
            format!("long rows {dtype}"),
            graph,
            Bindings::default(),
            feeds,
        ));
    }
    for dtype in [DType::I32, DType::I64] {
        let g = GraphBuilder::new();
        let x = g.placeholder("x", dtype, shape![5, 100]).unwrap();
        let outs: Vec<(&str, Tensor<'_>)> = vec![
            ("sum", x.sum(&[1], false).unwrap()),
            ("prod", x.prod(&[1], false).unwrap()),
            ("max", x.max(&[1], false).unwrap()),
            ("min", x.min(&[1], false).unwrap()),
            ("argmax", x.argmax(1, false).unwrap()),
            ("argmin", x.argmin(1, false).unwrap()),
            ("column_sum", x.sum(&[0], false).unwrap()),
            ("all_prod", x.prod(&[0, 1], false).unwrap()),
        ];
        let names: Vec<&str> = outs.iter().map(|(n, _)| *n).collect();
        for (n, t) in outs {
            t.named(n).unwrap();
        }
        let mut graph = g.into_graph();
        let ids = names.iter().map(|n| graph.find(n).unwrap()).collect();
        graph.set_outputs(ids).unwrap();
        // Large odd values, so sums and products wrap; row 0 constant.
        let v: Vec<i64> = (0..500i64)
            .map(|i| {
                if i < 100 {
                    -3
                } else {
                    ((i * 2_654_435_761 % 4_000_000_007) - 2_000_000_003) | 1
                }
            })
            .collect();
        let a = match dtype {
            DType::I32 => Array::from_vec(vec![5, 100], v.iter().map(|&x| x as i32).collect()),
            _ => Array::from_vec(vec![5, 100], v),
        }
        .unwrap();
        cases.push((
            format!("long rows {dtype}"),
            graph,
            Bindings::default(),
            vec![("x".to_string(), a)],
        ));
    }
    cases
}

/// Runs `graph`'s program with every kernel's CUDA C compiled as C++
/// under the shims' threaded form: `blocks` blocks of one 32-lane warp,
/// a thread per lane, shuffles exchanging through memory between
/// barriers, so the lanes of a warp really combine their parts (the
/// stand-in of `host`, one thread, runs a warp of one lane). Only programs
/// of elementwise and reduction kernels; `false` for others.
fn agree_on_threaded_host(
    name: &str,
    graph: &Graph,
    bindings: &Bindings,
    feeds: &[(String, Array)],
    blocks: usize,
) -> bool {
    use kiln_optimizer::kernel::{Kernel, Storage};
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(graph, graph.outputs(), bindings, &opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .program;
    if program
        .kernels
        .iter()
        .any(|k| !matches!(k, Kernel::Elementwise { .. } | Kernel::Reduce { .. }))
    {
        return false;
    }
    let sources = cuda::sources(&program).unwrap_or_else(|e| panic!("{name}: {e}"));
    if blocks == 1 {
        for s in &sources {
            cuda::compile(&s.source, "sm_90")
                .unwrap_or_else(|e| panic!("{name}, {}: {e}\n{}", s.name, s.source));
        }
    }
    let prelude = format!("#define KILN_BLOCKS {blocks}\n{}", host::SHIMS);
    let (handle, calls) =
        host::build_library(&prelude, &sources, "warp", &["-O1", "-pthread"], &|call| {
            format!("krun([=] {{ {call} }});")
        });
    // Memory as the executable lays it out: one arena, the rest apart.
    let arena_len = program
        .buffers
        .iter()
        .filter_map(|b| match b.storage {
            Storage::Arena { offset } => Some(offset + b.size_bytes()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut arena = vec![0u64; arena_len.div_ceil(8) + 1];
    let mut own: Vec<Vec<u64>> = Vec::new();
    let mut addr: Vec<u64> = Vec::new();
    for buf in &program.buffers {
        let bytes: Option<&[u8]> = match &buf.storage {
            Storage::Input { name } => Some(
                feeds
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{name}: no feed"))
                    .1
                    .as_bytes(),
            ),
            Storage::Constant { value } => Some(value.0.as_bytes()),
            Storage::Variable { name: v } => panic!("{name}: variable {v} not frozen"),
            Storage::Result | Storage::Arena { .. } => None,
        };
        if let Storage::Arena { offset } = buf.storage {
            addr.push(arena.as_mut_ptr() as u64 + offset as u64);
            continue;
        }
        let mut m = vec![0u64; buf.size_bytes().div_ceil(8) + 1];
        if let Some(bytes) = bytes {
            assert_eq!(bytes.len(), buf.size_bytes(), "{name}: feed size");
            // SAFETY: `m` holds at least `bytes.len()` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    m.as_mut_ptr() as *mut u8,
                    bytes.len(),
                )
            };
        }
        addr.push(m.as_mut_ptr() as u64);
        own.push(m);
    }
    let mut error = 0i32;
    for (s, f) in sources.iter().zip(&calls) {
        let mut params: Vec<u64> = s.params.iter().map(|b| addr[b.0]).collect();
        if s.error_word {
            params.push(&mut error as *mut i32 as u64);
        }
        f(params.as_ptr(), s.count as i64);
    }
    assert_eq!(error, 0, "{name}: error word set");
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let want = Session::new(graph, Device::Reference)
        .unwrap()
        .run_outputs(&refs)
        .unwrap();
    assert_eq!(want.len(), program.outputs.len(), "{name}: outputs");
    for ((f, w), o) in want.iter().zip(&program.outputs) {
        let buf = program.buffer(*o);
        // SAFETY: `addr[o]` points at the buffer's `size_bytes` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(addr[o.0] as *const u8, buf.size_bytes()) };
        let data = kiln::graph::Data::from_le_bytes(buf.dtype, bytes).unwrap();
        let got = Array::new(buf.shape.clone(), data).unwrap();
        kiln_tests::compare(w, &got).unwrap_or_else(|e| panic!("{name}, {f}: {e}"));
    }
    // SAFETY: no function of the library is called after this.
    unsafe { libc::dlclose(handle as *mut libc::c_void) };
    drop(own);
    true
}

/// The warp form of reductions with its lanes really running together:
/// the long-row cases and the op graphs (33-wide rows) on the threaded
/// shims, on one warp and on three (a grid-stride step of several warps).
#[test]
fn warp_reductions_combine_their_lanes() {
    kiln_tests::require_compiler("c++");
    kiln_tests::require_nvrtc();
    let mut ran = 0;
    let mut cases = long_row_cases();
    cases.extend(
        device_cases()
            .into_iter()
            .filter(|(n, ..)| n.starts_with("ops")),
    );
    for (name, graph, bindings, feeds) in &cases {
        for blocks in [1, 3] {
            ran += usize::from(agree_on_threaded_host(name, graph, bindings, feeds, blocks));
        }
    }
    eprintln!("ran {ran} programs with 32-lane warps on host threads");
    assert!(
        ran >= 8,
        "too few programs of elementwise and reduction kernels"
    );
}

/// f32 matrix products on tensor cores (TF32, BF16, F16 inputs, f32
/// accumulation): within the inputs' precision of the reference, and not
/// bit-identical to strict FP32 (so the mode took effect).
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-check.sh"]
fn gpu_matmul_precisions() {
    kiln_tests::require_gpu();
    let graph = kiln_tests::mlp(&[256, 512, 512, 64]);
    let feeds = kiln_tests::feeds_for(&graph, 64, 3);
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let want = Session::new(&graph, Device::Reference)
        .unwrap()
        .run_outputs(&refs)
        .unwrap();
    let run = |p: kiln::MatmulPrecision| {
        let opts = kiln::SessionOptions {
            matmul_precision: Some(p),
            ..Default::default()
        };
        let s = Session::with_options(&graph, Device::Cuda(0), opts).unwrap();
        s.run_outputs(&refs).unwrap().remove(0).1
    };
    let strict = run(kiln::MatmulPrecision::Highest);
    kiln_tests::compare(&want[0].1, &strict).unwrap();
    for (p, tol) in [
        (kiln::MatmulPrecision::Tf32, 5e-3),
        (kiln::MatmulPrecision::Bf16, 5e-2),
        (kiln::MatmulPrecision::F16, 5e-3),
    ] {
        let got = run(p);
        let (w, g) = (want[0].1.to_f64_vec(), got.to_f64_vec());
        let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = w
            .iter()
            .zip(&g)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{p:?}: max |error| {err:.3e} of max |value| {scale:.3e}");
        assert!(
            err <= tol * scale,
            "{p:?}: max error {err} over {tol} x {scale}"
        );
        assert!(!got.same_bits(&strict), "{p:?} gave strict FP32's bits");
    }
}

/// Random graphs (`kiln_tests::random_graph`) through `DeviceExecutable`
/// on the host stand-in against the reference: `KILN_HOST_RANDOM` of them
/// (default 20; each compiles its CUDA C as C++, and with NVRTC). Graphs
/// with a kernel that has no CUDA form would be counted and skipped, but
/// not all of them.
#[test]
fn random_graphs_on_the_host_stand_in() {
    kiln_tests::require_compiler("c++");
    kiln_tests::require_nvrtc();
    let count: u64 = std::env::var("KILN_HOST_RANDOM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut ran, mut skipped, mut failures) = (0, 0, Vec::new());
    for seed in 0..count {
        let rg = kiln_tests::random_graph::generate(seed);
        let feeds = kiln_tests::feeds_for(&rg.graph, rg.sym, seed);
        let mut bindings = Bindings::new();
        for (name, a) in &feeds {
            for (d, &n) in rg
                .graph
                .node(rg.graph.find(name).unwrap())
                .ty
                .shape
                .dims()
                .iter()
                .zip(a.shape())
            {
                if let kiln::graph::Dim::Sym(s) = d {
                    bindings.insert(s.clone(), n);
                }
            }
        }
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = match compile(&rg.graph, rg.graph.outputs(), &bindings, &opts) {
            Ok(c) => c.program,
            Err(e) => {
                failures.push(format!("seed {seed}: compile: {e}"));
                continue;
            }
        };
        match cuda::sources(&program) {
            Err(e) => {
                eprintln!("seed {seed}: skipped ({e})");
                skipped += 1;
                continue;
            }
            // What a GPU would load: the program's unit through NVRTC.
            Ok(sources) if !sources.is_empty() => {
                if let Err(e) = cuda::compile(&cuda::source::unit(&sources), "sm_90") {
                    failures.push(format!("seed {seed}: {e}"));
                    continue;
                }
            }
            Ok(_) => {}
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            agree_on_host(
                &format!("seed {seed}"),
                &rg.graph,
                &bindings,
                &feeds,
                host::HostGpu::default(),
            )
        }));
        match r {
            Ok(()) => ran += 1,
            Err(e) => failures.push(format!(
                "seed {seed}: {}",
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        }
    }
    eprintln!("{ran} random graphs agree on the host stand-in, {skipped} skipped");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        count == 0 || ran > 0,
        "none of {count} random graphs ran on the host stand-in"
    );
}

/// A recording spoiled from outside (another thread synchronizing the
/// device) costs the run nothing: its steps run directly, and a later run
/// records again.
#[test]
fn a_spoiled_recording_runs_the_steps_directly() {
    kiln_tests::require_compiler("c++");
    let graph = kiln_tests::mlp(&[8, 16, 4]);
    let feeds = kiln_tests::feeds_for(&graph, 3, 1);
    let bindings: Bindings = [("batch".to_string(), 3usize)].into_iter().collect();
    let opts = CompileOptions {
        freeze_variables: true,
        ..Default::default()
    };
    let program = compile(&graph, graph.outputs(), &bindings, &opts)
        .unwrap()
        .program;
    let gpu = host::HostGpu::default();
    gpu.spoil.set(2);
    let mut exe = cuda::exec::DeviceExecutable::new(gpu, &program).unwrap();
    let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
    let want = Session::new(&graph, Device::Reference)
        .unwrap()
        .run_outputs(&refs)
        .unwrap();
    for run in 0..4 {
        // SAFETY: the program has no variables.
        let got = unsafe { exe.run(&inputs_host(&feeds), &Default::default()) }.unwrap();
        kiln_tests::compare(&want[0].1, &got[0]).unwrap_or_else(|e| panic!("run {run}: {e}"));
    }
    assert_eq!(
        exe.gpu().records.get(),
        1,
        "recorded once the spoiling stopped"
    );
}

/// The CUDA engine's `Executable` (`cuda::program::DeviceProgram`, host
/// arrays in and out, variables uploaded per run and their new values
/// downloaded) on the host stand-in: every device case, shared by two
/// threads at once, against the reference's outputs and variables.
#[test]
fn device_programs_behind_the_engine_interface_match_the_reference() {
    use kiln_codegen::cuda::program::DeviceProgram;
    use kiln_codegen::Executable;
    use std::collections::HashMap;
    kiln_tests::require_compiler("c++");
    kiln_tests::require_nvrtc();
    fn shared<T: Send + Sync>() {}
    shared::<DeviceProgram<cuda::exec::CudaGpu>>();
    // A step that assigns a variable, so that updates come back too.
    let g = GraphBuilder::new();
    let w = g
        .variable(
            "w",
            Array::from_vec(vec![4], vec![1.0f32, -2.0, 0.5, 3.0]).unwrap(),
        )
        .unwrap();
    let x = g.placeholder("x", DType::F32, [4]).unwrap();
    let loss = w.mul(x).unwrap().sum(&[0], false).unwrap();
    let step = w.assign(w.sub(x.mul(0.1).unwrap()).unwrap()).unwrap();
    g.output(loss.named("loss").unwrap()).unwrap();
    g.output(step.named("step").unwrap()).unwrap();
    let x = Array::from_vec(vec![4], vec![0.5f32, 1.0, -1.0, 2.0]).unwrap();
    let mut cases = device_cases();
    cases.push((
        "assigning step".into(),
        g.into_graph(),
        Bindings::new(),
        vec![("x".into(), x)],
    ));
    let mut assigned = 0;
    for (name, graph, bindings, feeds) in cases {
        let opts = CompileOptions {
            freeze_variables: true,
            ..Default::default()
        };
        let program = compile(&graph, graph.outputs(), &bindings, &opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .program;
        let exe = DeviceProgram::new(host::HostGpu::default(), &program)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let refs: Vec<(&str, &Array)> = feeds.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let reference = Session::new(&graph, Device::Reference).unwrap();
        let initial: HashMap<String, Array> =
            reference.variables_by_name().unwrap().into_iter().collect();
        let want = reference.run_outputs(&refs).unwrap();
        let inputs: HashMap<&str, &Array> = refs.iter().copied().collect();
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| exe.run(&inputs, &initial)))
                .collect();
            for r in runs {
                let out = r
                    .join()
                    .expect("a run panicked")
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                for ((f, w), g) in want.iter().zip(&out.fetched) {
                    kiln_tests::compare(w, g).unwrap_or_else(|e| panic!("{name}, {f}: {e}"));
                }
                assigned += out.updates.len();
                for (var, value) in &out.updates {
                    let w = reference.variable(var).unwrap();
                    kiln_tests::compare(&w, value)
                        .unwrap_or_else(|e| panic!("{name}, variable {var}: {e}"));
                }
            }
        });
    }
    assert_eq!(assigned, 2, "the assigning step's two runs each return w");
}

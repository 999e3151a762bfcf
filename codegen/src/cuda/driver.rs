//! The [`Gpu`] of NVIDIA GPUs, through cudarc: `CudaGpu` (the session's
//! context and stream, its loaded modules, cuBLAS, recorded CUDA graphs)
//! and the precision of its f32 matrix products (`MatmulPrecision`).

use std::time::Duration;

use kiln_graph::DType;

use super::exec::{GemmCall, Gpu};
use super::source::{self, KernelSource};
use crate::error::{Error, Result};

/// How f32 matrix products run on the GPU. `Highest` is strict FP32 (the
/// default, what the reference checks against); the others use tensor
/// cores with f32 inputs, outputs and accumulation, rounding the inputs to
/// TF32, BF16 or F16 on the fly (cuBLAS's `CUBLAS_COMPUTE_32F_FAST_*`):
/// faster for matmul-heavy models, at that input precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// FP32 throughout.
    #[default]
    Highest,
    /// Inputs rounded to TF32 (10-bit mantissa).
    Tf32,
    /// Inputs rounded to BF16 (7-bit mantissa).
    Bf16,
    /// Inputs rounded to F16 (10-bit mantissa, 5-bit exponent).
    F16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<MatmulPrecision> {
        Ok(match s {
            "highest" | "f32" | "fp32" => MatmulPrecision::Highest,
            "tf32" => MatmulPrecision::Tf32,
            "bf16" => MatmulPrecision::Bf16,
            "f16" | "fp16" => MatmulPrecision::F16,
            other => {
                return Err(Error::Input(format!(
                    "unknown matmul precision '{other}': highest, tf32, bf16 or f16"
                )))
            }
        })
    }
}

/// An NVIDIA GPU through cudarc: the session's context and stream (so
/// every program of a session, and its device tensors, are ordered on one
/// stream), its modules, and cuBLAS where the library is present.
pub struct CudaGpu {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    arch: &'static str,
    functions: Vec<cudarc::driver::CudaFunction>,
    graph: Option<cudarc::driver::CudaGraph>,
    blas: Option<std::sync::Arc<super::Blas>>,
    precision: MatmulPrecision,
    settings: super::CudaSettings,
}

// SAFETY: the one member that is not `Send`, the recorded CUDA graph, is
// a driver handle that cudarc uses after binding its context to the
// calling thread (launch and drop both do), and the CUDA driver API may be
// called from any thread. A session keeps its GPU programs behind a lock,
// so a graph is never launched from two threads at once.
unsafe impl Send for CudaGpu {}

fn cuda_err(e: impl std::fmt::Display) -> Error {
    Error::Cuda(format!("CUDA: {e}"))
}

impl CudaGpu {
    /// A GPU checked by [`super::CudaDevice::open`], its f32 matrix
    /// products at `precision`.
    pub fn new(device: &super::CudaDevice, precision: MatmulPrecision) -> Result<CudaGpu> {
        let arch: &'static str = Box::leak(device.arch()?.into_boxed_str());
        Ok(CudaGpu {
            ctx: device.ctx.clone(),
            stream: device.stream.clone(),
            arch,
            functions: Vec::new(),
            graph: None,
            blas: device.blas()?,
            precision,
            settings: device.settings(),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err)
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        // Unloading modules may synchronize the device (see `serial`).
        let _serial = super::serial();
        self.graph = None;
        self.functions.clear();
    }
}

impl Gpu for CudaGpu {
    type Mem = cudarc::driver::CudaSlice<u8>;

    fn settings(&self) -> super::CudaSettings {
        self.settings
    }

    fn alloc(&self, bytes: usize) -> Result<Self::Mem> {
        self.stream.alloc_zeros::<u8>(bytes).map_err(cuda_err)
    }

    fn address(&self, m: &Self::Mem) -> u64 {
        use cudarc::driver::DevicePtr;
        let (p, _sync) = m.device_ptr(&self.stream);
        p
    }

    fn upload(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `dst` is device memory of at least `bytes.len()` bytes
        // (the executable's buffers); from pageable memory the call returns
        // once `bytes` has been read.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst, bytes, self.stream.cu_stream())
                .map_err(cuda_err)
        }
    }

    fn download(&self, src: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: as for `upload`; the stream is synchronized before `out`
        // is used.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(out, src, self.stream.cu_stream())
                .map_err(cuda_err)?;
        }
        self.synchronize()
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both are device memory of at least `bytes` bytes.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream())
                .map_err(cuda_err)
        }
    }

    fn load(&mut self, kernels: &[KernelSource]) -> Result<()> {
        if kernels.is_empty() {
            return Ok(());
        }
        // One unit, one NVRTC call (or a cache hit), one module.
        let ptx = super::compile_cached(&source::unit(kernels), self.arch)?;
        let _serial = super::serial();
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(cuda_err)?;
        for k in kernels {
            self.functions
                .push(module.load_function(&k.name).map_err(cuda_err)?);
        }
        Ok(())
    }

    fn launch(&self, k: usize, params: &[u64], count: usize) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        let threads = 256usize;
        let blocks = count.div_ceil(threads).clamp(1, 1 << 16) as u32;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let count = count as i64;
        let mut b = self.stream.launch_builder(&self.functions[k]);
        for p in params {
            b.arg(p);
        }
        b.arg(&count);
        // SAFETY: the parameters are the device addresses and count the
        // kernel was generated for.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(cuda_err)
    }

    fn has_gemm(&self) -> bool {
        self.blas.is_some()
    }

    fn gemm(&self, g: &GemmCall) -> Result<()> {
        use cudarc::cublas::{result, sys};
        let Some(blas) = &self.blas else {
            return Err(Error::Cuda("cuBLAS is not loaded".into()));
        };
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let h = *blas.handle.handle();
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let (lda, ldb, ldc, batch) = (g.lda as i32, g.ldb as i32, g.ldc as i32, g.batch as i32);
        self.bind()?;
        let fast = match self.precision {
            MatmulPrecision::Highest => None,
            MatmulPrecision::Tf32 => Some(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32),
            MatmulPrecision::Bf16 => Some(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF),
            MatmulPrecision::F16 => Some(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16F),
        };
        // One plain strided batched product of element type `$t`.
        macro_rules! strided {
            ($f:ident, $t:ty) => {
                result::$f(
                    h,
                    op(g.trans_a),
                    op(g.trans_b),
                    m,
                    n,
                    k,
                    &(1.0 as $t),
                    g.a as *const $t,
                    lda,
                    g.stride_a,
                    g.b as *const $t,
                    ldb,
                    g.stride_b,
                    &(0.0 as $t),
                    g.c as *mut $t,
                    ldc,
                    g.stride_c,
                    batch,
                )
            };
        }
        // SAFETY: `gemm_of` derived the call from the program's buffers,
        // which hold every element it reads and writes; the sizes fit i32.
        let r = unsafe {
            let f32t = sys::cudaDataType::CUDA_R_32F;
            match (g.dtype, fast) {
                (DType::F32, Some(compute)) => result::gemm_strided_batched_ex(
                    h,
                    op(g.trans_a),
                    op(g.trans_b),
                    m,
                    n,
                    k,
                    (&1.0f32) as *const f32 as *const std::ffi::c_void,
                    g.a as *const std::ffi::c_void,
                    f32t,
                    lda,
                    g.stride_a,
                    g.b as *const std::ffi::c_void,
                    f32t,
                    ldb,
                    g.stride_b,
                    (&0.0f32) as *const f32 as *const std::ffi::c_void,
                    g.c as *mut std::ffi::c_void,
                    f32t,
                    ldc,
                    g.stride_c,
                    batch,
                    compute,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
                (DType::F32, None) => strided!(sgemm_strided_batched, f32),
                (DType::F64, _) => strided!(dgemm_strided_batched, f64),
                (other, _) => return Err(Error::Cuda(format!("no GEMM for {other}"))),
            }
        };
        r.map_err(|e| Error::Cuda(format!("cuBLAS: {e:?}")))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err)
    }

    fn record(&mut self, launches: &dyn Fn(&Self) -> Result<()>) -> Result<bool> {
        use cudarc::driver::sys;
        // No module load or stream creation of another kiln session (each
        // may synchronize the device) while this stream records.
        let _serial = super::serial();
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err)?;
        let launched = launches(self);
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err)?;
        launched?;
        self.graph = graph;
        Ok(self.graph.is_some())
    }

    fn replay(&self) -> Result<()> {
        match &self.graph {
            Some(g) => g.launch().map_err(cuda_err),
            None => Err(Error::Cuda("no recorded graph".into())),
        }
    }

    fn time(&self, work: &dyn Fn(&Self) -> Result<()>) -> Result<Duration> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(flags).map_err(cuda_err)?;
        work(self)?;
        let end = self.stream.record_event(flags).map_err(cuda_err)?;
        let ms = start.elapsed_ms(&end).map_err(cuda_err)?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }
}

//! The CUDA backend (first version): kernel programs as CUDA C compiled by
//! NVRTC, launched through cudarc. cudarc loads the CUDA libraries at run
//! time (so kiln builds without a toolkit) and panics on first use when one
//! is missing, so every entry point here checks for the library first and
//! returns a clear error instead.
//!
//! What exists: the CUDA C of every elementwise, reduction, matmul,
//! convolution, pooling, gather and scatter-add kernel and epilogue
//! (`source.rs`), NVRTC compilation with a PTX cache (which needs no GPU,
//! only libnvrtc), the checks that make `Device::Cuda(n)` fail with a
//! message saying which library or device is missing, and the executable
//! (`exec.rs`, with CUDA graph replay), matrix products through cuBLAS
//! (strict FP32: no TF32), and device-resident feeds and fetches. What does
//! not yet: control flow on the device, f16/bf16, cuBLASLt epilogues.
//! `scripts/gpu-check.sh` runs the GPU checks on a lent machine.

pub mod conv;
pub mod driver;
pub mod exec;
mod op_source;
pub mod program;
pub mod source;

use std::sync::OnceLock;

use kiln_optimizer::kernel::KernelProgram;

use crate::error::{Error, Result};

/// How CUDA programs are made and run: from the edge (`kiln::SessionOptions`
/// and the CLI read `KILN_CUDA_CONV`, `KILN_CUDA_GRAPHS`, `KILN_CUDA_ILP`
/// and `KILN_CUBLAS`); nothing in this crate reads the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaSettings {
    /// Convolutions as im2col + cuBLAS where cuBLAS is present (`false`:
    /// direct kernels).
    pub conv_gemm: bool,
    /// Programs without host steps replay a recorded CUDA graph (`false`:
    /// kernels are launched one by one).
    pub graphs: bool,
    /// Elements per thread and step of large elementwise kernels (1 to 8).
    pub ilp: usize,
    /// Matrix products through cuBLAS where it is present (`false`:
    /// generated kernels).
    pub cublas: bool,
}

impl Default for CudaSettings {
    fn default() -> Self {
        CudaSettings {
            conv_gemm: true,
            graphs: true,
            ilp: 4,
            cublas: true,
        }
    }
}

/// Where the CUDA libraries and the kernel cache are, for the process
/// (set by the edge from `KILN_NVRTC_DIR` and `KILN_CACHE_DIR`, else the
/// XDG cache; [`set_paths`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaPaths {
    /// A directory with libnvrtc, searched when the loader does not find
    /// it (the pip package `nvidia-cuda-nvrtc` puts it under
    /// `site-packages/nvidia/cu13/lib`).
    pub nvrtc_dir: Option<std::path::PathBuf>,
    /// Where compiled kernels are kept between processes (`None`: in
    /// memory only).
    pub cache_dir: Option<std::path::PathBuf>,
}

static PATHS: std::sync::RwLock<CudaPaths> = std::sync::RwLock::new(CudaPaths {
    nvrtc_dir: None,
    cache_dir: None,
});

/// Sets the process's CUDA paths (before the first NVRTC use for
/// `nvrtc_dir` to count).
pub fn set_paths(paths: CudaPaths) {
    *PATHS.write().unwrap_or_else(|e| e.into_inner()) = paths;
}

fn paths() -> CudaPaths {
    PATHS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Directories searched for libnvrtc when the loader does not find it:
/// [`CudaPaths::nvrtc_dir`] first, then the toolkit's usual place.
fn nvrtc_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = paths().nvrtc_dir {
        dirs.push(d);
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs
}

/// Loads the libraries in `dir` whose names start with one of `prefixes`
/// (in that order), globally, so that a later load by soname finds them.
fn preload(dir: &std::path::Path, prefixes: &[&str]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut names: Vec<std::path::PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    let mut loaded = false;
    for prefix in prefixes {
        for p in &names {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if n.starts_with(prefix) && n.contains(".so") {
                let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                    continue;
                };
                // SAFETY: dlopen of a shared library by path; the handle is
                // kept for the process's life.
                let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
                loaded |= !h.is_null();
                break;
            }
        }
    }
    loaded
}

/// True when NVRTC can be loaded (looking in [`nvrtc_dirs`] too).
pub fn nvrtc_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: only probes for the library.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return true;
        }
        for dir in nvrtc_dirs() {
            // The builtins first: libnvrtc loads them by name.
            if preload(&dir, &["libnvrtc-builtins", "libnvrtc.so"])
                // SAFETY: as above.
                && unsafe { cudarc::nvrtc::sys::is_culib_present() }
            {
                return true;
            }
        }
        false
    })
}

/// True when the CUDA driver library can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only probes for the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// PTX for CUDA C `source`, compiled by NVRTC for `arch` (e.g. `sm_90`).
pub fn compile(source: &str, arch: &'static str) -> Result<String> {
    if !nvrtc_available() {
        return Err(Error::Cuda(
            "NVRTC not found: install the CUDA toolkit or the pip package \
             nvidia-cuda-nvrtc and set KILN_NVRTC_DIR to its lib directory"
                .into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts)
        .map(|p| p.to_src())
        .map_err(|e| Error::Codegen {
            kernel: usize::MAX,
            reason: format!("NVRTC: {e}"),
        })
}

/// PTX for `source`, from the cache when this source was compiled for
/// `arch` before: in memory for the process, and on disk in
/// [`cache_dir`] (`KILN_CACHE_DIR`, default `$XDG_CACHE_HOME/kiln` or
/// `~/.cache/kiln`, as the edge sets it),
/// under `ptx/`, named by a hash of source and arch. A cache that cannot be
/// read or written is skipped, never an error.
pub fn compile_cached(source: &str, arch: &'static str) -> Result<String> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::sync::Mutex;
    static MEMORY: OnceLock<Mutex<HashMap<u64, String>>> = OnceLock::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (source, arch, "kiln-ptx-1").hash(&mut h);
    let key = h.finish();
    let memory = MEMORY.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let file = cache_dir().map(|d| d.join("ptx").join(format!("{key:016x}-{arch}.ptx")));
    let ptx = match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(p) => p,
        None => {
            let p = compile(source, arch)?;
            if let Some(f) = &file {
                // Written whole then renamed, so a reader never sees half.
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                let written = f
                    .parent()
                    .map(std::fs::create_dir_all)
                    .transpose()
                    .and_then(|_| std::fs::write(&tmp, &p))
                    .and_then(|_| std::fs::rename(&tmp, f));
                if written.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            p
        }
    };
    memory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, ptx.clone());
    Ok(ptx)
}

/// Where compiled kernels are kept between processes ([`CudaPaths`]).
pub fn cache_dir() -> Option<std::path::PathBuf> {
    paths().cache_dir
}

/// The CUDA C of every kernel of `program` that is emitted as source, in
/// launch order (a matrix product, then its epilogue).
pub fn sources(program: &KernelProgram) -> Result<Vec<source::KernelSource>> {
    sources_with(program, &CudaSettings::default())
}

/// [`sources`] with `settings` (the elementwise kernels' ILP).
pub fn sources_with(
    program: &KernelProgram,
    settings: &CudaSettings,
) -> Result<Vec<source::KernelSource>> {
    let mut out = Vec::new();
    for k in 0..program.kernels.len() {
        out.extend(source::emit_matmul(program, k));
        out.extend(conv::im2col_gemm(program, k).map(|c| c.0));
        out.extend(source::emit_scatter_add(program, k).into_iter().flatten());
        out.extend(source::emit_op(program, k));
        match source::emit(program, k, settings.ilp) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(source::Unsupported(reason)) => return Err(Error::Codegen { kernel: k, reason }),
        }
    }
    Ok(out)
}

/// Held while a stream records a CUDA graph, and around the operations of
/// kiln that may synchronize the whole device (loading a module, making a
/// stream): such a synchronization from another thread would spoil the
/// recording.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CUDA device, checked: the driver library loads, the device exists.
/// It holds the stream every program and device tensor of its session is
/// ordered on, and (made on first use) the cuBLAS handle they share.
pub struct CudaDevice {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    blas: OnceLock<Option<std::sync::Arc<Blas>>>,
    settings: CudaSettings,
}

/// A cuBLAS handle on a session's stream, with the workspace it uses (one
/// of its own, so that matrix products can be recorded in CUDA graphs).
pub struct Blas {
    handle: cudarc::cublas::CudaBlas,
    _workspace: cudarc::driver::CudaSlice<u8>,
}

/// cuBLAS's workspace: 32 MiB, what NVIDIA advises for Hopper.
const BLAS_WORKSPACE: usize = 32 << 20;

impl CudaDevice {
    /// Device `ordinal`, or an error saying what is missing.
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        CudaDevice::open_with(ordinal, CudaSettings::default())
    }

    /// [`CudaDevice::open`], its programs made and run with `settings`.
    pub fn open_with(ordinal: usize, settings: CudaSettings) -> Result<CudaDevice> {
        if !driver_available() {
            return Err(Error::Cuda(format!(
                "no CUDA driver on this machine (libcuda.so.1 not found), so no cuda:{ordinal}"
            )));
        }
        let count = cudarc::driver::CudaContext::device_count()
            .map_err(|e| Error::Cuda(format!("CUDA driver: {e}")))?;
        if ordinal as i64 >= count as i64 {
            return Err(Error::Cuda(format!(
                "no cuda:{ordinal}: this machine has {count} CUDA device(s)"
            )));
        }
        let _serial = serial();
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| Error::Cuda(format!("opening cuda:{ordinal}: {e}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::Cuda(format!("a stream on cuda:{ordinal}: {e}")))?;
        Ok(CudaDevice {
            ctx,
            stream,
            blas: OnceLock::new(),
            settings,
        })
    }

    /// `sm_XY` for the device's compute capability.
    pub fn arch(&self) -> Result<String> {
        let (major, minor) = self
            .ctx
            .compute_capability()
            .map_err(|e| Error::Cuda(format!("CUDA driver: {e}")))?;
        Ok(format!("sm_{major}{minor}"))
    }

    /// The device's name.
    pub fn name(&self) -> Result<String> {
        self.ctx
            .name()
            .map_err(|e| Error::Cuda(format!("CUDA driver: {e}")))
    }

    /// How this device's programs are made and run.
    pub fn settings(&self) -> CudaSettings {
        self.settings
    }

    /// The session's stream.
    pub fn stream(&self) -> &std::sync::Arc<cudarc::driver::CudaStream> {
        &self.stream
    }

    /// The shared cuBLAS handle, or `None` where libcublas is missing or
    /// turned off in the settings (matrix products are then generated
    /// kernels).
    pub fn blas(&self) -> Result<Option<std::sync::Arc<Blas>>> {
        if let Some(b) = self.blas.get() {
            return Ok(b.clone());
        }
        let off = !self.settings.cublas;
        // SAFETY: only probes for the library.
        let blas = if off || !unsafe { cudarc::cublas::sys::is_culib_present() } {
            None
        } else {
            let err = |e: &dyn std::fmt::Display| Error::Cuda(format!("cuBLAS: {e}"));
            let _serial = serial();
            let handle = cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| err(&e))?;
            let workspace = self
                .stream
                .alloc_zeros::<u8>(BLAS_WORKSPACE)
                .map_err(|e| err(&e))?;
            {
                use cudarc::driver::DevicePtr;
                let (p, _sync) = workspace.device_ptr(&self.stream);
                // SAFETY: the workspace lives as long as the handle (both
                // in `Blas`) and is used only on this stream.
                unsafe {
                    cudarc::cublas::sys::cublasSetWorkspace_v2(
                        *handle.handle(),
                        p as *mut std::ffi::c_void,
                        BLAS_WORKSPACE,
                    )
                }
                .result()
                .map_err(|e| err(&format!("{e:?}")))?;
            }
            Some(std::sync::Arc::new(Blas {
                handle,
                _workspace: workspace,
            }))
        };
        Ok(self.blas.get_or_init(|| blas).clone())
    }
}

/// A tensor in a GPU's memory: made by [`CudaDevice::tensor`] (a copy of
/// a host array) or returned by a session's device run; copied back with
/// [`DeviceTensor::to_host`].
pub struct DeviceTensor {
    dtype: kiln_graph::DType,
    shape: Vec<usize>,
    mem: cudarc::driver::CudaSlice<u8>,
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    ordinal: usize,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceTensor({}{:?} on cuda:{})",
            self.dtype, self.shape, self.ordinal
        )
    }
}

impl DeviceTensor {
    /// Element type.
    pub fn dtype(&self) -> kiln_graph::DType {
        self.dtype
    }

    /// Dims.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The GPU it is on (`cuda:N`'s N).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Its address and type, for [`exec::DeviceExecutable::run_device`].
    pub fn device_ref(&self) -> exec::DeviceRef {
        use cudarc::driver::DevicePtr;
        let (address, _sync) = self.mem.device_ptr(&self.stream);
        exec::DeviceRef {
            address,
            dtype: self.dtype,
            shape: self.shape.clone(),
        }
    }

    /// A copy in host memory (waits for the work that writes it).
    pub fn to_host(&self) -> Result<kiln_graph::Array> {
        let mut a = kiln_graph::Array::zeros(self.dtype, &self.shape);
        let bytes = a.size_bytes();
        if bytes > 0 {
            // SAFETY: `a` owns `bytes` bytes of plain elements; the device
            // holds valid elements of the same type (bools as 0 or 1).
            let out = unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr(), bytes) };
            self.stream
                .memcpy_dtoh(&self.mem.slice(0..bytes), out)
                .map_err(|e| Error::Cuda(format!("CUDA: {e}")))?;
            self.stream
                .synchronize()
                .map_err(|e| Error::Cuda(format!("CUDA: {e}")))?;
        }
        Ok(a)
    }

    /// Overwrites it with `a`, which must have its dtype and shape.
    pub fn write(&mut self, a: &kiln_graph::Array) -> Result<()> {
        if a.dtype() != self.dtype || a.shape() != self.shape.as_slice() {
            return Err(Error::Input(format!(
                "writing {}{:?} to a device tensor of {}{:?}",
                a.dtype(),
                a.shape(),
                self.dtype,
                self.shape
            )));
        }
        let bytes = a.size_bytes();
        if bytes > 0 {
            let mut view = self.mem.slice_mut(0..bytes);
            self.stream
                .memcpy_htod(a.as_bytes(), &mut view)
                .map_err(|e| Error::Cuda(format!("CUDA: {e}")))?;
            self.stream
                .synchronize()
                .map_err(|e| Error::Cuda(format!("CUDA: {e}")))?;
        }
        Ok(())
    }
}

impl CudaDevice {
    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// A zeroed tensor in this device's memory.
    pub fn zeros(&self, dtype: kiln_graph::DType, shape: &[usize]) -> Result<DeviceTensor> {
        let bytes = kiln_graph::array::checked_product(shape)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| Error::Input(format!("a tensor of {shape:?} is too large")))?;
        let mem = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(|e| {
            Error::Cuda(format!(
                "allocating {bytes} bytes on cuda:{}: {e}",
                self.ordinal()
            ))
        })?;
        Ok(DeviceTensor {
            dtype,
            shape: shape.to_vec(),
            mem,
            stream: self.stream.clone(),
            ordinal: self.ordinal(),
        })
    }

    /// A copy of `a` in this device's memory.
    pub fn tensor(&self, a: &kiln_graph::Array) -> Result<DeviceTensor> {
        let mut t = self.zeros(a.dtype(), a.shape())?;
        t.write(a)?;
        Ok(t)
    }
}

//! The environment, read at kiln's edge and nowhere below: when a
//! [`Session`](crate::Session) is created ([`SessionOptions::from_env`]
//! fills the options left unset) and by the CLI. The libraries under it
//! (kiln-rt, kiln-codegen) take these settings as values. The one other
//! reader is kiln-rt's `abi`, the edge of ahead-of-time binaries, through
//! the same `kiln_rt::settings::Settings::from_env`.
//!
//! | variable | setting |
//! |---|---|
//! | `KILN_NUM_THREADS` | [`SessionOptions::threads`] |
//! | `KILN_AVX512=0` | [`SessionOptions::avx512`] |
//! | `KILN_WIDE_ROWS=0` | [`SessionOptions::wide_rows`] |
//! | `KILN_SPLIT=0`/`1` | [`SessionOptions::split`] |
//! | `KILN_CONV=gemm`/`direct`/`winograd` | [`SessionOptions::conv`] |
//! | `KILN_CHANNELS_LAST=0`/`1` | [`SessionOptions::channels_last`] |
//! | `KILN_CHECK_BOUNDS=1` | [`SessionOptions::bounds_checks`] |
//! | `KILN_DUMP_CLIF`, `KILN_DUMP_ASM`, `KILN_DUMP_ROWS` | [`SessionOptions::dumps`] |
//! | `KILN_MAX_ARENA_BYTES` | [`SessionOptions::max_arena_bytes`] |
//! | `KILN_MATMUL_PRECISION` | [`SessionOptions::matmul_precision`] |
//! | `KILN_CUDA_CONV=direct`, `KILN_CUDA_GRAPHS=0`, `KILN_CUDA_ILP`, `KILN_CUBLAS=0` | [`SessionOptions::cuda`] |
//! | `KILN_NVRTC_DIR`, `KILN_CACHE_DIR` (else `$XDG_CACHE_HOME/kiln`, `~/.cache/kiln`) | [`cuda_paths`], for the process |
//! | `KILN_TUNE_MALLOC=0` | the allocator tuning of the first CPU session |

use std::path::PathBuf;

use kiln_codegen::cpu::{ConvPath, Dumps};
use kiln_codegen::cuda::exec::MatmulPrecision;
use kiln_codegen::cuda::{CudaPaths, CudaSettings};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::session::SessionOptions;

/// Variable `name`, `None` when unset; text that is not Unicode is an error.
fn var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(bad(name, &v.to_string_lossy(), "not text")),
    }
}

fn bad(name: &str, value: &str, why: &str) -> Error {
    Error::Device {
        device: Device::Cpu.to_string(),
        reason: format!("{name}={value}: {why}"),
    }
}

/// Whether the variable is set at all (the dump switches).
fn set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

impl SessionOptions {
    /// Options from the environment (the table in `kiln::env`'s docs), each
    /// where the variable is set. A value that is not one the variable
    /// takes is an error naming it.
    pub fn from_env() -> Result<SessionOptions> {
        SessionOptions::default().with_env(None)
    }

    /// These options, with each one left unset taken from the environment
    /// (the GPU's matrix precision only for a CUDA `device`, or when no
    /// device is named).
    pub(crate) fn with_env(self, device: Option<Device>) -> Result<SessionOptions> {
        let cpu_err = |reason: String| Error::Device {
            device: Device::Cpu.to_string(),
            reason,
        };
        let rt = kiln_codegen::cpu::Settings::from_env().map_err(cpu_err)?;
        let threads = match self.threads {
            Some(t) => Some(t),
            None => kiln_codegen::cpu::env_threads().map_err(cpu_err)?,
        };
        let max_arena_bytes = match (self.max_arena_bytes, var("KILN_MAX_ARENA_BYTES")?) {
            (Some(b), _) => Some(b),
            (None, Some(v)) => Some(
                v.parse()
                    .map_err(|_| bad("KILN_MAX_ARENA_BYTES", &v, "not a byte count"))?,
            ),
            (None, None) => None,
        };
        let gpu = device.is_none_or(|d| matches!(d, Device::Cuda(_)));
        let matmul_precision = match (self.matmul_precision, var("KILN_MATMUL_PRECISION")?) {
            (Some(p), _) => Some(p),
            (None, Some(v)) if gpu => Some(v.parse::<MatmulPrecision>()?),
            (None, _) => None,
        };
        let cuda = match self.cuda {
            Some(c) => c,
            None => {
                let ilp = match var("KILN_CUDA_ILP")? {
                    Some(v) => v
                        .parse::<usize>()
                        .map_err(|_| bad("KILN_CUDA_ILP", &v, "not a count from 1 to 8"))?
                        .clamp(1, 8),
                    None => CudaSettings::default().ilp,
                };
                CudaSettings {
                    conv_gemm: var("KILN_CUDA_CONV")?.is_none_or(|v| v != "direct"),
                    graphs: var("KILN_CUDA_GRAPHS")?.is_none_or(|v| v != "0"),
                    ilp,
                    cublas: var("KILN_CUBLAS")?.is_none_or(|v| v != "0"),
                }
            }
        };
        Ok(SessionOptions {
            threads,
            avx512: self.avx512.or(var("KILN_AVX512")?.map(|_| rt.avx512)),
            wide_rows: self.wide_rows.or(var("KILN_WIDE_ROWS")?.map(|v| v != "0")),
            split: self.split.or(rt.split),
            conv: self
                .conv
                .or((rt.conv != ConvPath::Measured).then_some(rt.conv)),
            channels_last: self
                .channels_last
                .or(var("KILN_CHANNELS_LAST")?.map(|v| v != "0")),
            bounds_checks: self
                .bounds_checks
                .or(var("KILN_CHECK_BOUNDS")?.map(|v| v != "0")),
            dumps: self.dumps.or(Some(dumps())),
            max_arena_bytes,
            matmul_precision,
            cuda: Some(cuda),
            max_programs: self.max_programs,
        })
    }
}

/// The CUDA library and cache paths from `KILN_NVRTC_DIR` and
/// `KILN_CACHE_DIR` (else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`).
pub fn cuda_paths() -> CudaPaths {
    let cache_dir = std::env::var_os("KILN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kiln")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("kiln")));
    CudaPaths {
        nvrtc_dir: std::env::var_os("KILN_NVRTC_DIR").map(PathBuf::from),
        cache_dir,
    }
}

/// Sets the process's CUDA paths from the environment, once (the first
/// CUDA session or CLI command that needs them).
pub(crate) fn init_cuda_paths() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| kiln_codegen::cuda::set_paths(cuda_paths()));
}

/// The dump switches: `KILN_DUMP_CLIF`, `KILN_DUMP_ASM`, `KILN_DUMP_ROWS`
/// (set to anything).
pub fn dumps() -> Dumps {
    Dumps {
        clif: set("KILN_DUMP_CLIF"),
        asm: set("KILN_DUMP_ASM"),
        rows: set("KILN_DUMP_ROWS"),
    }
}

/// Whether the allocator tuning is wanted (`KILN_TUNE_MALLOC=0`: not).
pub(crate) fn tune_malloc() -> bool {
    std::env::var("KILN_TUNE_MALLOC").map_or(true, |v| v != "0")
}

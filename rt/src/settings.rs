//! How the executor chooses, passed down from the edge: a `Session`'s
//! options and the CLI (`kiln::env`), or, for ahead-of-time binaries,
//! which have no other edge, the environment read once at their first
//! call ([`Settings::from_env`], from `abi`). Nothing below reads the
//! environment.

use crate::executor::{parse_threads, MAX_THREADS};

/// How convolutions pick between the direct AVX-512 kernel and im2col +
/// GEMM (`KILN_CONV`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvPath {
    /// By the measured rule (`Conv::direct_pays`).
    #[default]
    Measured,
    /// Always im2col + GEMM.
    Gemm,
    /// The direct kernel wherever it applies.
    Direct,
    /// Winograd F(2x2, 3x3) wherever it applies (3x3, stride 1).
    Winograd,
}

/// The executor's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Products and convolutions may use AVX-512 where the host has it,
    /// and so may the long f32 rows of JIT code (`KILN_AVX512=0` turns it
    /// off; those rows then take the AVX2 row code). An ahead-of-time
    /// object's rows call the ISA its target chose when it was compiled.
    pub avx512: bool,
    /// Split kernels across threads always (`Some(true)`), never
    /// (`Some(false)`), or as measured (`KILN_SPLIT`).
    pub split: Option<bool>,
    /// The convolution path.
    pub conv: ConvPath,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            avx512: true,
            split: None,
            conv: ConvPath::Measured,
        }
    }
}

/// An environment variable's value, `None` when unset; not Unicode is
/// an error naming it.
fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(format!("{name}={}: not valid text", v.to_string_lossy()))
        }
    }
}

impl Settings {
    /// `KILN_AVX512` (`0`: off), `KILN_SPLIT` (`0`: never, else always)
    /// and `KILN_CONV` (`gemm`, `direct`, `winograd`; anything else:
    /// measured).
    pub fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            avx512: var("KILN_AVX512")?.is_none_or(|v| v != "0"),
            split: var("KILN_SPLIT")?.map(|v| v != "0"),
            conv: match var("KILN_CONV")?.as_deref() {
                Some("gemm") => ConvPath::Gemm,
                Some("direct") => ConvPath::Direct,
                Some("winograd") => ConvPath::Winograd,
                _ => ConvPath::Measured,
            },
        })
    }
}

/// `KILN_NUM_THREADS`, checked by [`parse_threads`]; `None` when unset.
pub fn env_threads() -> Result<Option<usize>, String> {
    var("KILN_NUM_THREADS")
        .map_err(|_| "KILN_NUM_THREADS: not a thread count".to_string())?
        .map(|v| parse_threads(&v).map_err(|e| format!("KILN_NUM_THREADS={v}: {e}")))
        .transpose()
}

/// Threads from `KILN_NUM_THREADS`, else every available core (at most
/// [`MAX_THREADS`]); an error when the variable is set to something other
/// than a thread count.
pub fn default_threads() -> Result<usize, String> {
    Ok(env_threads()?
        .unwrap_or_else(crate::executor::core_threads)
        .min(MAX_THREADS))
}

//! Devices a session can run on.

use std::fmt;
use std::str::FromStr;

/// Where a [`crate::Session`] executes its graph.
///
/// `Cpu` compiles the graph (optimizer passes, fusion, memory planning,
/// Cranelift JIT) the first time each fetch set and feed shape is run;
/// `Reference` interprets it op by op. `Cuda(n)` is the n-th NVIDIA GPU:
/// a session on it checks that the CUDA driver and the device exist (and
/// says which is missing), then compiles each program's kernels to CUDA C
/// with NVRTC (see `kiln_codegen::cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The reference interpreter: slow, simple, the definition of every op.
    Reference,
    /// JIT-compiled machine code for the host CPU.
    #[default]
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Reference => f.write_str("reference"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Device> {
        match s {
            "reference" | "ref" => Ok(Device::Reference),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(crate::Error::Device {
                    device: other.into(),
                    reason: "unknown device; available: cpu, reference, cuda, cuda:N".into(),
                }),
            },
        }
    }
}

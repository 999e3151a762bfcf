//! Devices a session can run on.

use std::fmt;
use std::str::FromStr;

/// Where a [`crate::Session`] executes its graph.
///
/// Today every session runs on the reference interpreter; compiled backends
/// (`Cpu` through Cranelift, `Cuda(n)` through cudarc) are added as variants
/// here, and the session API stays the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Device {
    /// The reference interpreter: slow, simple, the definition of every op.
    #[default]
    Reference,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Reference => f.write_str("reference"),
        }
    }
}

impl FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Device> {
        match s {
            "reference" | "ref" => Ok(Device::Reference),
            other => Err(crate::Error::Device {
                device: other.into(),
                reason: "unknown device; available: reference".into(),
            }),
        }
    }
}

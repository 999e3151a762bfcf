//! What each engine runs natively, and what it hands back: one answer per
//! engine and op kind ([`Placement::supports`]), from the same rules the
//! engines compile by, so `Session`, `kiln compile` and the table in
//! ARCHITECTURE.md (written by `tests/tests/engines.rs`) say the same.
//!
//! The engines: the plain-loop executor of the kernel program (the check
//! of lowering), the CPU JIT, ahead-of-time objects (the CPU engine's
//! code in an object file, without kiln's interpreter beside it), and
//! CUDA. The graph interpreter (`Device::Reference`) is the oracle all of
//! them are tested against and runs every op.

use kiln_graph::{DType, Op};
use kiln_optimizer::fuse::{class, Class};
use kiln_optimizer::kernel::{Kernel, KernelProgram};

use crate::error::{Error, Result};

/// How an engine runs an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Compiled code of the engine's own (how, in a few words).
    Native(&'static str),
    /// Between compiled steps, by the op's reference meaning on the host
    /// (why).
    Host(&'static str),
    /// The engine refuses programs with it (why).
    Refused(&'static str),
}

impl Support {
    /// `native`, `host` or `refused`.
    pub fn kind(self) -> &'static str {
        match self {
            Support::Native(_) => "native",
            Support::Host(_) => "host",
            Support::Refused(_) => "refused",
        }
    }

    /// The few words that say how or why.
    pub fn detail(self) -> &'static str {
        match self {
            Support::Native(s) | Support::Host(s) | Support::Refused(s) => s,
        }
    }
}

/// The engines, for [`Placement::supports`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `kiln_optimizer::exec`: every kernel as plain loops.
    Reference,
    /// The Cranelift JIT (`cpu::CpuBackend`).
    Cpu,
    /// Ahead-of-time objects (`cpu::aot`).
    Aot,
    /// CUDA (`cuda`).
    Cuda,
}

impl Placement {
    /// Every engine, in table order.
    pub const ALL: [Placement; 4] = [
        Placement::Reference,
        Placement::Cpu,
        Placement::Aot,
        Placement::Cuda,
    ];

    /// The engine's name.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Reference => "reference",
            Placement::Cpu => "cpu",
            Placement::Aot => "aot",
            Placement::Cuda => "cuda",
        }
    }

    /// How this engine runs `op` with result type `dtype` (half types are
    /// widened to f32 before any engine sees them).
    pub fn supports(self, op: &Op, dtype: DType) -> Support {
        let fused = "fused loop nest";
        match (self, class(op)) {
            (_, Class::Source) => Support::Native("buffer"),
            (Placement::Reference, _) => Support::Native("plain loops"),
            (_, Class::Elementwise | Class::Movement | Class::Reduce) => Support::Native(fused),
            (_, Class::Assign) if self == Placement::Aot => {
                Support::Refused("objects take frozen graphs (no training)")
            }
            (_, Class::Assign) => Support::Native("result committed after the run"),
            (Placement::Cpu | Placement::Aot, Class::MatMul) => match dtype {
                DType::Bool => Support::Refused("no bool matrix products"),
                DType::F32 => Support::Native("packed AVX-512 GEMM, gemm crate or GEMV"),
                _ => Support::Native("gemm crate or GEMV"),
            },
            (Placement::Cuda, Class::MatMul) => match dtype {
                DType::Bool => Support::Refused("no bool matrix products"),
                DType::F32 | DType::F64 => Support::Native("cuBLAS, else a tiled kernel"),
                _ => Support::Native("tiled kernel"),
            },
            (Placement::Cpu | Placement::Aot, Class::Opaque) => self.cpu_opaque(op),
            (Placement::Cuda, Class::Opaque) => match op {
                Op::Conv2d {
                    channels_last: true,
                    ..
                } => Support::Refused("channels-last convolutions are the CPU compiler's"),
                Op::Conv2d { .. } => Support::Native("direct kernel or im2col + cuBLAS"),
                Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => Support::Native("pooling kernel"),
                Op::Gather { .. } => Support::Native("gather kernel"),
                Op::ScatterAdd { .. } if dtype == DType::Bool => {
                    Support::Host("no atomic add of bools")
                }
                Op::ScatterAdd { .. } => Support::Native("copy + atomic adds"),
                _ => Support::Host("control flow runs on the host"),
            },
        }
    }

    /// [`Error::Unsupported`] naming the first kernel of `program` that
    /// this engine refuses (its op, result type and graph nodes), else
    /// `Ok`: the one error every engine gives for an op it lacks.
    pub fn check(self, program: &KernelProgram) -> Result<()> {
        for (k, kernel) in program.kernels.iter().enumerate() {
            let (op, out) = match kernel {
                Kernel::Op { op, out, .. } => (op, *out),
                Kernel::MatMul { out, .. } => (&Op::MatMul, *out),
                Kernel::Elementwise { .. } | Kernel::Reduce { .. } => continue,
            };
            let dtype = program.buffer(out).dtype;
            if let Support::Refused(reason) = self.supports(op, dtype) {
                return Err(Error::Unsupported {
                    engine: self.name(),
                    kernel: k,
                    op: format!("a {} ({dtype})", op.name()),
                    nodes: program
                        .kernel_nodes
                        .get(k)
                        .map(|n| n.join(", "))
                        .unwrap_or_default(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The CPU engines' opaque ops: the executor's kernels (convolution
    /// and pooling take f32 and f64 only, which is what their shape rules
    /// admit), else the interpreter (JIT) or a refusal (objects, which
    /// have no interpreter).
    fn cpu_opaque(self, op: &Op) -> Support {
        let native = match op {
            Op::Conv2d {
                channels_last: true,
                ..
            } => Some("pointwise GEMM, depthwise kernel, or im2col + GEMM, channels-last"),
            Op::Conv2d { .. } => Some("direct AVX-512, direct grouped, or im2col + GEMM"),
            Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => Some("pooling kernel"),
            Op::Gather { .. } => Some("row copies"),
            _ => None,
        };
        match (native, self) {
            (Some(how), _) => Support::Native(how),
            (None, Placement::Aot) => {
                Support::Refused("no code in the runtime library (the JIT interprets it)")
            }
            (None, _) if op.is_control_flow() => {
                Support::Host("interpreted; its bodies are compiled on first use")
            }
            (None, _) => Support::Host("interpreted between compiled steps"),
        }
    }
}

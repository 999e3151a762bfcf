//! kiln-codegen: backends that turn the optimizer's kernel program into
//! code — Cranelift JIT for the CPU, Cranelift object files for
//! ahead-of-time binaries, CUDA C compiled by NVRTC for NVIDIA GPUs.
//!
//! Role (being built): each backend is a thin implementation of one trait
//! over the kernel program. Until the first backend lands, sessions run on
//! the reference interpreter in `kiln-graph`.
//!
//! Architecture invariant: backends know nothing of sessions, feeds or files.

pub use kiln_optimizer as optimizer;

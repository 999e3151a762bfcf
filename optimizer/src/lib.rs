//! kiln-optimizer: passes over the graph IR and the backend-neutral kernel
//! program.
//!
//! Graph passes (`passes/`) simplify: constant folding, CSE, dead-code
//! elimination, algebraic identities, folding scales (batch norm) into conv
//! and matmul weights. They run in a [`pass::Pipeline`] that verifies the
//! graph between passes. Fusion into a kernel program, loop reshaping,
//! scheduling and memory planning come next, as named steps
//! (`lowering.rs`) with the program verified between them (`verify.rs`);
//! every backend in `kiln-codegen` consumes their output.
//!
//! Architecture invariant: this crate knows nothing of Cranelift, CUDA or
//! any other backend, and its passes do no I/O.
#![warn(missing_docs)]

pub mod compile;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod index;
pub mod kernel;
pub mod loops;
pub mod lower;
pub mod lowering;
pub mod pass;
pub mod passes;
pub mod plan;
pub mod rewrite;
pub mod svg;
pub mod text;
pub mod verify;
pub mod widen;

pub use compile::{compile, compile_observed, CompileOptions, Compiled};
pub use error::{Error, Result};
pub use kernel::KernelProgram;
pub use kiln_graph as graph;
pub use pass::{verify, Pass, PassReport, Pipeline};

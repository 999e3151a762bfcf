//! kiln-optimizer: passes over the graph IR and the backend-neutral kernel
//! program.
//!
//! Role (being built): simplification (constant folding, CSE, dead-code
//! elimination, algebraic identities), fusion of ops into kernels,
//! scheduling for low peak memory, and memory planning into one arena. The
//! output, the kernel program, is what every backend in `kiln-codegen`
//! consumes.
//!
//! Architecture invariant: this crate knows nothing of Cranelift, CUDA or
//! any other backend, and its passes do no I/O.

pub use kiln_graph as graph;

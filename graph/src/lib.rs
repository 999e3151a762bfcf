//! kiln-graph: the IR of kiln. Ops, dtypes and shapes (with symbolic dims),
//! the define-then-run builder with build-time type checking, the reference
//! interpreter that defines what every op means, and the `.kiln` file format.
#![warn(missing_docs)]
// Tensor methods named add, sub, neg, ... return `Result` (types are checked at
// the call), so they cannot be the std operator traits.
#![allow(clippy::should_implement_trait)]

pub mod array;
pub mod autodiff;
pub mod builder;
pub mod dim_expr;
pub mod dtype;
pub mod error;
pub mod format;
pub mod graph;
pub mod init;
pub mod interp;
pub mod layers;
pub mod op;
pub mod ops;
pub mod optim;
pub use kiln_rt::rng;
pub mod shape;
pub mod tensor_ops;
pub mod text;
pub mod text_parse;

pub use array::{Array, Data, Elem, Scalar};
pub use builder::{GraphBuilder, Tensor};
pub use dim_expr::DimExpr;
pub use dtype::DType;
pub use error::{Error, FileErrorKind, OriginGuard, Result, SourceLoc};
pub use graph::{Graph, Node, NodeId};
pub use init::Init;
pub use layers::{
    one_hot, softmax_cross_entropy, sparse_softmax_cross_entropy, Activation, BatchNormOptions,
};
pub use op::{ArgOp, BinaryOp, Op, ReduceOp, SliceAxis, UnaryOp, Window2d};
pub use optim::Optimizer;
pub use shape::{Bindings, Dim, Shape, TensorType};
pub use tensor_ops::{Conv2dOptions, Operand};
